"""mitmweb as engineers use it: its JSON API, and a real browser (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mitmproxy import version as mitmproxy_version
from mitmproxy.utils import emoji

from stray_tls.core.names import ATTEMPT_MARKER, FAILED_MARKER, LEARNED_MARKER, MARKER, UPGRADED_MARKER
from stray_tls.fieldkit.wire import exchange
from stray_tls.lab import servers
from stray_tls.lab.mitm import Mitmweb
from stray_tls.lab.servers import Plaintext

from .conftest import SUMMARY, reverse_modes

pytestmark = pytest.mark.e2e
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


@pytest.fixture
def mitmweb_with_a_stray_alert(esrs, start_server, tmp_path):
    """A running mitmweb with two flows: a stray alert (reported) and a clean one."""
    upstream = esrs(Plaintext.ALERT)
    clean = start_server(servers.ScriptedServer(lambda head: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    args, (p_stray, p_clean) = reverse_modes([f"http://127.0.0.1:{upstream.port}", f"http://127.0.0.1:{clean.port}"])
    web = Mitmweb(args, tmp_path / "mitmweb.log", web_port=servers.free_port(), listeners=2)
    web.start()
    try:
        assert exchange(("127.0.0.1", p_stray), b"GET /stray HTTP/1.1\r\nHost: esrs\r\n\r\n", 8).status == 502
        assert exchange(("127.0.0.1", p_clean), b"GET /clean HTTP/1.1\r\nHost: ok\r\n\r\n", 8).status == 200
        yield web
    finally:
        web.stop()


def flows_by_path(web: Mitmweb) -> dict[str, dict]:
    deadline = time.monotonic() + 10
    while True:
        flows = {f["request"]["path"]: f for f in json.loads(web.api("/flows"))}
        if {"/stray", "/clean"} <= set(flows) or time.monotonic() > deadline:
            return flows
        time.sleep(0.1)


def test_the_api_shows_marker_comment_and_the_tls_records_view(mitmweb_with_a_stray_alert: Mitmweb) -> None:
    web = mitmweb_with_a_stray_alert
    flows = flows_by_path(web)
    stray, clean = flows["/stray"], flows["/clean"]
    assert stray["marked"] in (":warning:", "\u26a0")  # mitmweb sends the marker as its emoji
    assert stray["comment"] == f"esrs-fix: detected {SUMMARY}; the client got esrs-fix's labelled 502"
    assert not clean["marked"] and not clean["comment"]
    view = urllib.parse.quote("tls records")
    rendered = web.api(f"/flows/{stray['id']}/response/content/{view}.json").decode()
    assert "unexpected_message (10)" in rendered and "level         fatal (2)" in rendered
    auto = web.api(f"/flows/{stray['id']}/response/content/auto.json").decode()
    assert "TLS records" in auto  # automatic selection picks the view for the addon's answer
    clean_auto = web.api(f"/flows/{clean['id']}/response/content/auto.json").decode()
    assert "TLS records" not in clean_auto  # ordinary flows keep their usual views


BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it); browser test skipped")
    return path


def test_a_real_browser_shows_the_marker_comment_and_decode(mitmweb_with_a_stray_alert: Mitmweb) -> None:
    browser_path = chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    web = mitmweb_with_a_stray_alert
    ARTIFACTS.mkdir(exist_ok=True)
    base = f"http://127.0.0.1:{web.web_port}/"
    if web.password:
        base += f"?token={web.password}"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=browser_path,
            args=BROWSER_ARGS,
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(base, timeout=30_000)
            page.get_by_text("/stray").first.click(timeout=30_000)  # select the flow in the list
            page.get_by_text("Response", exact=True).first.click(timeout=10_000)
            page.wait_for_function("() => document.body.innerText.includes('unexpected_message (10)')", timeout=30_000)
            text = page.inner_text("body")
            page.screenshot(path=str(ARTIFACTS / "mitmweb-stray-alert.png"), full_page=True)
            page.get_by_text("Comment", exact=True).first.click(timeout=10_000)
            page.wait_for_function(
                "() => [...document.querySelectorAll('textarea, input, div')].some("
                "e => (e.value || e.innerText || '').includes('esrs-fix: detected TLS alert'))",
                timeout=30_000,
            )
            comment_shown = page.evaluate(
                "() => [...document.querySelectorAll('textarea, input')].map(e => e.value).join('\\n')"
                " + document.body.innerText"
            )
            page.screenshot(path=str(ARTIFACTS / "mitmweb-stray-alert-comment.png"), full_page=True)
        finally:
            browser.close()
    assert "description   unexpected_message (10)" in text and "level         fatal (2)" in text  # the view
    assert "\u26a0" in text  # the marker, in the flow list
    assert f"esrs-fix: detected {SUMMARY}" in comment_shown  # the comment, on the Comment tab


#: What each flow of `mitmweb_with_every_annotation` must show: its marker (mitmweb sends the glyph) and the start
#: of its comment. The paths: the request's path; "attempt of /x" for the TLS attempt serving /x.
EXPECTED = {
    "/detected": (MARKER, f"esrs-fix: detected {SUMMARY}; the client got esrs-fix's labelled 502"),
    "/upgraded": (UPGRADED_MARKER, f"esrs-fix: upgraded over TLS; plaintext got {SUMMARY}"),
    "/learned": (LEARNED_MARKER, "esrs-fix: learned: the client asked for http://127.0.0.1:"),
    "/failed": (FAILED_MARKER, "esrs-fix: upgrade failed: certificate verification failed: "),
    "attempt of /upgraded": (ATTEMPT_MARKER, "esrs-fix: TLS attempt for flow "),
    "attempt of /failed": (ATTEMPT_MARKER, "esrs-fix: TLS attempt for flow "),
}


Annotated = tuple[Mitmweb, Callable[[], dict[str, dict]]]


@pytest.fixture
def mitmweb_with_every_annotation(cert, esrs, start_server, tmp_path) -> Iterator[Annotated]:
    """mitmweb with esrs_upgrade on, and what makes a flow of each kind esrs-fix annotates: a detection (outside
    esrs_filter), an upgrade and its TLS attempt, a learned flow, a failed upgrade (an untrusted certificate) and
    its attempt. Yields mitmweb and the function that sends the requests and returns the flows (from /flows) by the
    names of `EXPECTED` (a browser opened first sees them arrive, as mitmweb pushes them)."""
    trusted = esrs(Plaintext.ALERT)
    untrusted = start_server(servers.EsrsServer(servers.make_certificate(tmp_path, "untrusted")))
    args, (p_trusted, p_untrusted) = reverse_modes([f"http://127.0.0.1:{s.port}" for s in (trusted, untrusted)])
    options = [
        *("--set", "esrs_upgrade=true", "--set", f"ssl_verify_upstream_trusted_ca={cert[0]}"),
        *("--set", "esrs_filter=!~u /detected"),
    ]
    web = Mitmweb([*args, *options], tmp_path / "mitmweb.log", web_port=servers.free_port(), listeners=2)

    def make_flows() -> dict[str, dict]:
        for port, path, status in (
            (p_trusted, "/detected", 502),
            (p_trusted, "/upgraded", 200),
            (p_trusted, "/learned", 200),
            (p_untrusted, "/failed", 502),
        ):
            answer = exchange(("127.0.0.1", port), f"GET {path} HTTP/1.1\r\nHost: esrs\r\n\r\n".encode(), 20)
            assert answer.status == status, (path, web.log_tail())
        deadline = time.monotonic() + 10
        while True:
            flows = json.loads(web.api("/flows"))
            named: dict[str, dict] = {}
            for f in flows:
                served = next((o for o in flows if o["id"] in f.get("comment", "") and o is not f), None)
                if f.get("is_replay") == "request" and served is not None:
                    named[f"attempt of {served['request']['path']}"] = f
                elif not f.get("is_replay"):
                    named[f["request"]["path"]] = f
            ended = all(
                "answered" in f["comment"] or "failed" in f["comment"] for k, f in named.items() if k.startswith("att")
            )
            if (set(EXPECTED) <= set(named) and ended) or time.monotonic() > deadline:
                return named
            time.sleep(0.1)

    with web:
        yield web, make_flows


def glyph(marker: str) -> str:
    return emoji.emoji[marker]


def test_every_annotated_flow_says_what_esrs_fix_did(mitmweb_with_every_annotation) -> None:
    """The API (what mitmweb's page is made from): each flow's marker and comment; the attempts never pending."""
    _, make_flows = mitmweb_with_every_annotation
    flows = make_flows()
    for name, (marker, comment) in EXPECTED.items():
        assert flows[name]["marked"] == glyph(marker), name
        assert flows[name]["comment"].startswith(comment), (name, flows[name]["comment"])
    upgraded, failed = flows["/upgraded"], flows["/failed"]
    ok_attempt, failed_attempt = flows["attempt of /upgraded"], flows["attempt of /failed"]
    assert upgraded["id"] in ok_attempt["comment"] and failed["id"] in failed_attempt["comment"]
    assert ok_attempt["id"] in upgraded["comment"] and failed_attempt["id"] in failed["comment"]
    assert ok_attempt["response"]["contentLength"] == len(servers.OK_BODY)
    assert ok_attempt["comment"].endswith(f"esrs-fix: answered 200 OK; flow {upgraded['id']}'s client got this answer")
    # the failed attempt ended: its error is there (mitmweb's error icon), and its comment says why
    assert failed_attempt["error"] and "certificate" in failed_attempt["error"]["msg"].lower()
    assert "\nesrs-fix: failed: certificate verification failed: " in failed_attempt["comment"]
    assert "/learned" in flows["/learned"]["comment"] and flows["/learned"]["request"]["scheme"] == "https"


def test_a_real_browser_shows_every_marker_and_comment(mitmweb_with_every_annotation) -> None:
    """Screenshots of the flow list and of each flow's comment, in Debian's chromium with its default fonts; the
    page shows each marker's glyph in the list and each comment in the flow's detail."""
    browser_path = chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    web, make_flows = mitmweb_with_every_annotation
    ARTIFACTS.mkdir(exist_ok=True)
    major = mitmproxy_version.VERSION.split(".")[0]
    base = f"http://127.0.0.1:{web.web_port}/"
    if web.password:
        base += f"?token={web.password}"
    shown: dict[str, str] = {}
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(base, timeout=30_000)
            # connected to mitmweb's updates (the list is empty: no table yet)
            page.locator(".connection-indicator.established").wait_for(state="attached", timeout=30_000)
            flows = make_flows()  # from here on, the page has only what mitmweb pushed to it
            page.wait_for_function(
                "(c) => document.body.innerText.includes(c)", arg=flows["/failed"]["request"]["path"], timeout=30_000
            )
            page.wait_for_timeout(500)  # updates pushed after the last flow arrived (the attempts' outcomes)
            page.screenshot(path=str(ARTIFACTS / f"mitmweb{major}-annotations-list.png"))
            listed = page.inner_text(".flow-table")
            for name, (_, comment) in EXPECTED.items():
                flow = flows[name]
                _row_of(page, flow).click(timeout=10_000)
                page.get_by_text("Comment", exact=True).first.click(timeout=10_000)
                page.wait_for_function(
                    "(c) => [...document.querySelectorAll('textarea, input, div')].some("
                    "e => (e.value || e.innerText || '').includes(c))",
                    arg=comment,
                    timeout=30_000,
                )
                shown[name] = page.evaluate(
                    "() => [...document.querySelectorAll('textarea, input')].map(e => e.value).join('\\n')"
                    " + document.body.innerText"
                )
                slug = name.replace("attempt of /", "attempt-").strip("/")
                page.screenshot(path=str(ARTIFACTS / f"mitmweb{major}-annotations-{slug}.png"))
        finally:
            browser.close()
    for name, (marker, _) in EXPECTED.items():
        assert glyph(marker) in listed, (name, marker)
        # the whole comment, as mitmweb shows it (its lines run together in one paragraph)
        assert " ".join(flows[name]["comment"].split()) in " ".join(shown[name].split()), name


def _row_of(page, flow: dict):
    """The flow's row in mitmweb's list: its path and its scheme's marker tell the TLS attempt from the flow it
    serves (same path), the learned flow's https:// from its http:// neighbours."""
    glyph_of_flow = flow["marked"]
    return page.locator(".flow-table tr", has_text=flow["request"]["path"]).filter(has_text=glyph_of_flow).first


def test_the_tls_attempts_own_flow_shows_the_body_it_received(cert, esrs, tmp_path) -> None:
    """esrs_upgrade's TLS attempt is a flow of its own in mitmweb (a replay): it shows the server's answer with its
    body, not an empty 200 (the body was kept for the client as it streamed in)."""
    upstream = esrs(Plaintext.ALERT)
    args, (port,) = reverse_modes([f"http://127.0.0.1:{upstream.port}"])
    args += ["--set", "esrs_upgrade=true", "--set", f"ssl_verify_upstream_trusted_ca={cert[0]}"]
    web = Mitmweb(args, tmp_path / "mitmweb.log", web_port=servers.free_port())
    web.start()
    try:
        answer = exchange(("127.0.0.1", port), b"GET /upgraded HTTP/1.1\r\nHost: esrs\r\n\r\n", 20)
        assert (answer.status, answer.body) == (200, servers.OK_BODY), web.log_tail()
        deadline = time.monotonic() + 10
        while True:
            attempts = [f for f in json.loads(web.api("/flows")) if f["request"]["scheme"] == "https"]
            if attempts or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        (attempt,) = attempts
        assert attempt["is_replay"] == "request" and attempt["response"]["status_code"] == 200
        assert attempt["response"]["contentLength"] == len(servers.OK_BODY)
        assert web.api(f"/flows/{attempt['id']}/response/content.data") == servers.OK_BODY
    finally:
        web.stop()
