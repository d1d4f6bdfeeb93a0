"""The page for the ticket (`esrs-fix pcap FILE --html OUT`): the pure renderer, and the page as a user makes it,
rendered by a real browser (Debian's chromium, driven by Playwright) with no request leaving the page."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, ClassVar

import pytest

from stray_tls.core import findings
from stray_tls.fieldkit import ticket
from stray_tls.lab.servers import ALERT_TLS10
from tests.capgen import Conversation, write_capture
from tests.test_mitmweb import ARTIFACTS, BROWSER_ARGS, chromium


@contextlib.contextmanager
def browser_page(**options: Any) -> Iterator[Any]:
    """A new page in Debian's chromium (headless, through playwright), closed with its browser afterwards."""
    browser_path = chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path, args=BROWSER_ARGS)
        try:
            yield browser.new_page(**options)
        finally:
            browser.close()


REQ = b"GET https://esrs.example:443/ HTTP/1.1\r\nHost: esrs.example:443\r\n\r\n"
HOSTILE_LINE = 'GET /<script>alert("x")</script><img src=x onerror=y> HTTP/1.1'
PROXY = ("10.0.0.1", 8080)
CHECK = [sys.executable, "-m", "stray_tls.main", "check", "--timeout", "5"]


def alert_finding() -> findings.Finding:
    finding = findings.from_response_head(ALERT_TLS10)
    assert finding is not None
    return finding


def strays() -> list[ticket.Stray]:
    alert = alert_finding()
    return [
        ticket.Stray(
            "2017-03-20T08:53:20Z",
            "10.0.0.5:40002",
            "10.0.0.1:8080",
            REQ.split(b"\r\n")[0].decode(),
            alert,
            7,
            1,
            "2017-03-20T08:53:20.150000Z",
        ),
        ticket.Stray(
            "2017-03-20T08:53:30Z", "10.0.0.7:40004", "10.0.0.1:8080", HOSTILE_LINE, findings.silent_close(), 12, 3
        ),
    ]


class _Tags(HTMLParser):
    """Every start tag with its attributes; errors surface as exceptions or unclosed tags."""

    VOID: ClassVar[set[str]] = {"meta", "br", "img", "line", "polygon", "input", "link"}

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes {self.open[-1:]}"
        self.open.pop()


def parsed(page: str) -> _Tags:
    p = _Tags()
    p.feed(page)
    p.close()
    assert not p.open, f"unclosed: {p.open}"
    return p


def test_one_ladder_per_stray_exchange_with_frame_filter_decode_and_advice() -> None:
    made = strays()
    page = ticket.page("esrs-fix: 2 stray exchanges", "field.pcap", made, ["5 packets"])
    tags = parsed(page)
    assert [t for t, _ in tags.tags].count("svg") == len(made)
    ladders = re.findall(r"<svg.*?</svg>", page, re.S)
    for s, svg in zip(made, ladders, strict=True):
        assert f"frame {s.frame}" in svg and f"tcp.stream eq {s.tcp_stream}" in svg  # on the answer's arrow
        assert s.client in svg and s.server in svg  # the lanes
        # the findings' own words, escaped as the page escapes every text
        assert ticket._t(s.finding.summary) in page and ticket._t(s.finding.explanation) in page
    assert "15 03 01 00 02 02 0a" in page  # the answer's first bytes on its arrow
    # each arrow has its own time: the answer's is its first packet's, and a silent close has none
    assert re.search(r"<text[^>]*>2017-03-20T08:53:20.150000Z  answer: 7 bytes kept", ladders[0]), ladders[0]
    assert "answer:" not in ladders[1] and made[1].answer_time is None


def test_hostile_capture_text_is_escaped_and_nothing_external_is_referenced() -> None:
    page = ticket.page("t", "<b>evil.pcap</b>", strays())
    tags = parsed(page)
    names = [t for t, _ in tags.tags]
    assert "script" not in names and "img" not in names and "b" not in names
    assert "&lt;script&gt;" in page
    for _, attrs in tags.tags:
        for name, value in attrs:
            assert not name.startswith("on"), name
            if name in ("src", "href", "xlink:href", "action"):
                assert not re.match(r"\s*(https?:|//)", value or ""), value
    assert "http://" not in page.split("<body>")[0]  # no stylesheet or font fetched from anywhere


def test_control_bytes_from_the_capture_do_not_reach_the_page_raw() -> None:
    s = strays()[0]
    page = ticket.page(
        "t", "f", [ticket.Stray(s.time, s.client, s.server, "GET /\x00\x1b[31m HTTP/1.1", s.finding, 1, 0)]
    )
    assert "\x00" not in page and "\x1b" not in page and "\\x00\\x1b[31m" in page


def test_the_page_from_a_capture_renders_in_chromium_with_no_request_leaving_it(tmp_path: Path) -> None:
    """As a user makes it: a capture with the field report's alert and a hostile request line, `esrs-fix pcap F
    --html out.html`, then the page opened in Debian's chromium: it loads, every request it makes is the file itself,
    no script ran, and the ladder's text is on the screen."""
    cap = tmp_path / "field.pcap"
    hostile = HOSTILE_LINE.encode() + b"\r\nHost: x\r\n\r\n"
    write_capture(
        cap,
        [
            Conversation(("10.0.0.5", 40002), PROXY, [(REQ, ALERT_TLS10)]),
            Conversation(("10.0.0.7", 40004), PROXY, [(hostile, ALERT_TLS10)], start=1_490_000_010.0),
            Conversation(("10.0.0.8", 40005), PROXY, [(REQ, b"")], start=1_490_000_020.0),  # a silent close
        ],
    )
    out = tmp_path / "out.html"
    p = subprocess.run(  # run where the capture is, so that the page names it as the user typed it
        [sys.executable, "-m", "stray_tls.main", "pcap", cap.name, "--html", out.name],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    assert "tcp.stream eq 1" in p.stdout  # the text output is unchanged beside the page
    parsed(out.read_text())

    requests: list[str] = []
    with browser_page(viewport={"width": 900, "height": 1000}) as page:
        page.on("request", lambda r: requests.append(r.url))
        dialogs: list[str] = []

        def dialog(d: Any) -> None:  # an alert() would mean the hostile line ran as script
            dialogs.append(d.message)
            d.dismiss()

        page.on("dialog", dialog)
        page.goto(out.as_uri(), timeout=30_000)
        page.wait_for_load_state("load")
        text = page.inner_text("body")
        ladder_text = " ".join(page.locator("svg").first.locator("text").all_text_contents())
        assert page.locator("svg").count() == 3
        assert page.locator("svg text", has_text="tcp.stream eq 0").first.is_visible()
        assert page.locator("script").count() == 0 and not dialogs
        page.screenshot(path=str(ARTIFACTS / "ticket-page.png"), full_page=True)
    assert requests == [out.as_uri()], requests
    assert "unexpected_message" in text and "tcp.stream eq 1" in text
    assert "<script>" in text  # shown as text, not run
    assert "GET https://esrs.example:443/ HTTP/1.1" in ladder_text and "15 03 01 00 02 02 0a" in ladder_text


def test_the_page_prints_whole_and_reads_without_colour(tmp_path: Path) -> None:
    """Printed (chromium's print media, then a PDF): no section is cut across pages, no margin is wasted, and every
    text is black on white, so that a black-and-white print or fax of the ticket loses nothing."""
    out = tmp_path / "page.html"
    out.write_text(ticket.page("esrs-fix: 2 stray exchanges", "field.pcap", strays(), ["5 packets"]), encoding="utf-8")
    with browser_page() as page:
        page.goto(out.as_uri(), timeout=30_000)
        page.emulate_media(media="print")
        styles = page.evaluate(
            """() => ({
                sections: [...document.querySelectorAll('section')].map(e => getComputedStyle(e).breakInside),
                margin: getComputedStyle(document.body).margin,
                colours: [...new Set([...document.querySelectorAll('body *')].map(e =>
                    e instanceof SVGElement ? getComputedStyle(e).fill : getComputedStyle(e).color))],
                background: getComputedStyle(document.body).backgroundColor,
            })"""
        )
        pdf = page.pdf(format="A4")
    assert styles["sections"] == ["avoid", "avoid"], styles
    assert styles["margin"] == "0px" and styles["background"] == "rgb(255, 255, 255)", styles
    assert set(styles["colours"]) <= {"rgb(0, 0, 0)"}, styles["colours"]
    assert pdf.startswith(b"%PDF") and pdf.count(b"/Type /Page") >= 1


# -- `esrs-fix check --html`


def test_check_page_has_a_ladder_per_probe_with_its_words_and_the_verdict() -> None:
    alert = alert_finding()
    hostile = "<script>alert(1)</script>"
    ports = [
        ticket.PortCheck(
            "https://esrs.lab:443/",
            "FAIL",
            "tls_records",
            "the proxy forwarded the request in plaintext " + hostile,
            [
                ticket.ProbeStep(
                    "GET https:// (as the check)", "TLS records " + hostile, False, False, alert, ALERT_TLS10
                ),
                ticket.ProbeStep("CONNECT, then TLS", "HTTP/1.1 200; TLSv1.3 handshake done", True, False),
                ticket.ProbeStep("direct TLS (no proxy)", "TLSv1.3 handshake done", True, True),
            ],
        )
    ]
    page = ticket.check_page("esrs-fix check", "127.0.0.1:3128", "esrs.lab", ports)
    tags = parsed(page)
    assert [t for t, _ in tags.tags].count("svg") == 3 and "script" not in [t for t, _ in tags.tags]
    ladders = re.findall(r"<svg.*?</svg>", page, re.S)
    assert "GET https:// (as the check)" in ladders[0] and "15 03 01 00 02 02 0a" in ladders[0]
    assert alert.summary in ladders[0] and "proxy 127.0.0.1:3128" in ladders[0]
    # the direct probe's arrow ends on the server's lane, the others on the proxy's
    assert 'points="700,' in ladders[2] and 'points="700,' not in ladders[1]
    assert ticket._t(ports[0].verdict) in page


def test_check_page_from_a_real_check_renders_in_chromium(cert, start_server, tmp_path: Path) -> None:
    """`esrs-fix check --html` against the lab's faulty proxy (the field report's Blue Coat behaviour): the page
    holds each probe's ladder and the verdict, and chromium shows it with no request leaving the page."""
    from stray_tls.lab import servers

    a, b = start_server(servers.EsrsServer(cert)), start_server(servers.EsrsServer(cert))
    routes = {("esrs.lab", 443): ("127.0.0.1", a.port), ("esrs.lab", 8443): ("127.0.0.1", b.port)}
    proxy = start_server(servers.FaultyProxy(routes))
    out = tmp_path / "check.html"
    p = subprocess.run(
        [*CHECK, "--proxy", f"http://127.0.0.1:{proxy.port}", "esrs.lab", "--port", "443", "--html", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 1, p.stdout + p.stderr
    verdict = p.stdout.split("verdict: ", 1)[1].strip()
    html_text = out.read_text()
    parsed(html_text)
    assert ticket._t(verdict) in html_text
    # each answer's arrow has its size and time: the relayed alert is 7 bytes
    assert re.search(r">7 bytes after \d+ ms<", html_text), html_text
    assert re.search(r">GET https:// \(as the check\) \(\d+ bytes\)<", html_text), html_text  # the request's size

    requests: list[str] = []
    with browser_page(viewport={"width": 900, "height": 1000}) as page:
        page.on("request", lambda r: requests.append(r.url))
        page.goto(out.as_uri(), timeout=30_000)
        assert page.locator("svg").count() == 3  # the check's three probes through the proxy
        assert page.locator("svg text", has_text="GET https:// (as the check)").first.is_visible()
        text = page.inner_text("body")
        page.screenshot(path=str(ARTIFACTS / "ticket-check-page.png"), full_page=True)
    assert requests == [out.as_uri()], requests
    assert "unexpected_message" in text and "fix the proxy's handling of https:// URLs" in text
