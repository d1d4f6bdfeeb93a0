"""mitmweb as engineers use it: its JSON API, and a real browser (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
from pathlib import Path

import pytest

from stray_tls.lab import servers
from stray_tls.lab.mitm import Mitmweb
from stray_tls.lab.servers import Plaintext
from stray_tls.wire import exchange

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
    assert stray["comment"] == f"esrs-fix: {SUMMARY}"
    assert not clean["marked"] and not clean["comment"]
    view = urllib.parse.quote("tls records")
    rendered = web.api(f"/flows/{stray['id']}/response/content/{view}.json").decode()
    assert "unexpected_message (10)" in rendered and "level         fatal (2)" in rendered
    auto = web.api(f"/flows/{stray['id']}/response/content/auto.json").decode()
    assert "TLS records" in auto  # automatic selection picks the view for the addon's answer
    clean_auto = web.api(f"/flows/{clean['id']}/response/content/auto.json").decode()
    assert "TLS records" not in clean_auto  # ordinary flows keep their usual views


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
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
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
                "e => (e.value || e.innerText || '').includes('esrs-fix: TLS alert'))",
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
    assert f"esrs-fix: {SUMMARY}" in comment_shown  # the comment, on the Comment tab


def test_the_marker_tells_a_upgraded_flow_from_a_failed_one(cert, esrs, start_server, tmp_path) -> None:
    """esrs_upgrade in mitmweb: the upgraded flow carries the bandage, a failed one (untrusted) the warning sign."""
    trusted = esrs(Plaintext.ALERT)
    untrusted = start_server(servers.EsrsServer(servers.make_certificate(tmp_path, "untrusted")))
    args, (p_upgraded, p_failed) = reverse_modes([f"http://127.0.0.1:{s.port}" for s in (trusted, untrusted)])
    options = ["--set", "esrs_upgrade=true", "--set", f"ssl_verify_upstream_trusted_ca={cert[0]}"]
    web = Mitmweb([*args, *options], tmp_path / "mitmweb.log", web_port=servers.free_port(), listeners=2)
    with web:
        upgraded = exchange(("127.0.0.1", p_upgraded), b"GET /upgraded HTTP/1.1\r\nHost: esrs\r\n\r\n", 8)
        failed = exchange(("127.0.0.1", p_failed), b"GET /failed HTTP/1.1\r\nHost: esrs\r\n\r\n", 8)
        assert upgraded.status == 200 and failed.status == 502
        deadline = time.monotonic() + 10
        while True:
            flows = json.loads(web.api("/flows"))
            live = {f["request"]["path"]: f for f in flows if not f.get("is_replay")}
            if {"/upgraded", "/failed"} <= set(live) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert live["/upgraded"]["marked"] in (":adhesive_bandage:", "\U0001fa79")
    assert live["/failed"]["marked"] in (":warning:", "\u26a0")
    assert live["/upgraded"]["comment"].startswith("esrs-fix: upgraded over TLS; plaintext got TLS alert")
    replays = [f for f in flows if f.get("is_replay") == "request"]  # the TLS attempts are flows of their own
    assert any(f["request"]["path"] == "/upgraded" and f["request"]["scheme"] == "https" for f in replays)


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
