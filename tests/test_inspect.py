"""What engineers look at: the "TLS records" content view, the esrs.decode command, the report, saved flows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import contentviews, http, io
from mitmproxy.test import taddons, tflow

from stray_tls.core import records
from stray_tls.core.names import METADATA_KEY
from stray_tls.fieldkit.wire import exchange
from stray_tls.lab.servers import Plaintext
from stray_tls.mitm import contentview
from stray_tls.mitm.addon import EsrsFix

from .conftest import FIELD_ALERT, SUMMARY, hook, reverse_modes


def auto_view(flow: http.HTTPFlow, message: http.Message) -> tuple[str, str]:
    """(view name, text) as mitmproxy's automatic view selection renders the message, on 11 and 12."""
    if hasattr(contentviews, "prettify_message"):  # 12
        result = contentviews.prettify_message(message, flow)
        return result.view_name or "", result.text
    description, lines, _ = contentviews.get_message_content_view("auto", message, flow)  # 11
    return description, "\n".join("".join(t for _, t in line) for line in lines)


def assert_every_line_fits(rendered: str) -> None:
    too_wide = [line for line in rendered.splitlines() if len(line) > contentview.WRAP]
    assert not too_wide, f"lines wider than {contentview.WRAP}: {too_wide}"


def response_flow(body: bytes, content_type: str = "application/octet-stream") -> http.HTTPFlow:
    f = tflow.tflow(resp=True)
    assert f.response is not None
    f.response.headers["content-type"] = content_type
    f.response.content = body
    return f


def test_view_wins_for_tls_bodies_and_stays_out_of_the_way_otherwise(addon: EsrsFix) -> None:
    with taddons.context(addon):
        f = response_flow(FIELD_ALERT + bytes.fromhex("16 03 03 00 04 0e 00 00 00"))
        assert f.response is not None
        name, rendered = auto_view(f, f.response)
        assert "TLS records" in name
        assert "description   unexpected_message (10)" in rendered
        assert "handshake     server_hello_done (14)" in rendered
        assert_every_line_fits(rendered)
        for body, ctype in [
            (b"\x15\x03\x01 ordinary binary that merely starts like TLS", "application/octet-stream"),
            (
                b"\x16\x03\x01\x00\x05ab",
                "application/octet-stream",
            ),  # a record that claims 5 bytes, has 2, then no more
            (b'{"a": 1}', "application/json"),
            (b"", "text/plain"),
        ]:
            g = response_flow(body, ctype)
            assert g.response is not None
            assert contentview.priority(body, g, g.response) < 0
            assert "TLS records" not in auto_view(g, g.response)[0]


def test_view_renders_the_addons_own_answer_from_the_flow_metadata(addon: EsrsFix) -> None:
    with taddons.context(addon):
        f = tflow.tflow()
        f.request = http.Request.make("GET", "http://esrs.example:443/")
        f.response = addon.detection._on_records(f.request, FIELD_ALERT, True)
        hook(addon, "response", f)
        assert f.response is not None
        name, rendered = auto_view(f, f.response)
        assert "TLS records" in name
        assert f"esrs-fix: {SUMMARY}" in rendered and "level         fatal (2)" in rendered
        assert f"record at offset 0:\n  {SUMMARY}\n" in rendered  # 84 characters on one line: the summary goes under
        assert_every_line_fits(rendered)
        # the request of the same flow is not the view's business
        assert contentview.priority(f.request.content or b"", f, f.request) < 0


def test_console_command_decodes_like_the_cli(addon: EsrsFix) -> None:
    with taddons.context(addon) as tctx:
        out = tctx.master.commands.execute("esrs.decode 15 03 01 00 02 02 0a")
        assert "description   unexpected_message (10)" in out and "version       TLS 1.0 (0x0301)" in out
        cli = subprocess.run(
            [sys.executable, "-m", "stray_tls.main", "decode", "15", "03", "01", "00", "02", "02", "0a"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.strip() == cli.stdout.strip()
        with pytest.raises(Exception, match="not hex"):
            tctx.master.commands.execute("esrs.decode zz")


def test_report_path_that_cannot_be_opened_is_an_option_error(addon: EsrsFix, tmp_path) -> None:
    from mitmproxy import exceptions

    with taddons.context(addon) as tctx, pytest.raises(exceptions.OptionsError, match="esrs_report: cannot open"):
        tctx.configure(addon, esrs_report=str(tmp_path / "missing-dir" / "r.jsonl"))


@pytest.mark.e2e
def test_report_lines_are_complete_after_sigkill(esrs, mitmdump, tmp_path) -> None:
    upstream = esrs(Plaintext.ALERT_KEEP_OPEN)
    report = tmp_path / "report.jsonl"
    args, (port,) = reverse_modes([f"http://127.0.0.1:{upstream.port}"])
    m = mitmdump([*args, "--set", f"esrs_report={report}", "--set", "esrs_rewrite=true"])
    for n in range(3):
        answer = exchange(("127.0.0.1", port), b"GET /%d HTTP/1.1\r\nHost: esrs\r\n\r\n" % n, 8)
        assert answer.status == 200
    assert m.process is not None
    os.kill(m.process.pid, signal.SIGKILL)  # our own process, by its id
    m.process.wait(timeout=10)
    lines = report.read_text().splitlines()
    assert len(lines) == 3
    entries = [json.loads(line) for line in lines]
    assert [e["url"] for e in entries] == [f"http://127.0.0.1:{upstream.port}/{n}" for n in range(3)]
    for e in entries:
        assert e["summary"] == SUMMARY and e["raw_hex"] == "1503010002020a" and e["kind"] == "tls_records"
        assert e["rewritten"] is True and e["rewritten_status"] == 200
        assert e["client"].startswith("127.0.0.1:") and e["upstream"] == f"127.0.0.1:{upstream.port}"
        assert e["time"].endswith("+00:00") and e["records"][0]["alert"]["description"] == 10


@pytest.mark.e2e
def test_an_unwritable_report_is_logged_once_and_the_proxy_keeps_working(esrs, mitmdump) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full to make writes fail")
    upstream = esrs(Plaintext.ALERT)
    args, (port,) = reverse_modes([f"http://127.0.0.1:{upstream.port}"])
    m = mitmdump([*args, "--set", "esrs_report=/dev/full"])  # opens fine, every write fails (ENOSPC)
    for _ in range(3):
        answer = exchange(("127.0.0.1", port), b"GET / HTTP/1.1\r\nHost: esrs\r\n\r\n", 8)
        assert answer.status == 502 and (answer.label or "").startswith("detected;")
    log = m.log()
    assert log.count("cannot write the report /dev/full") == 1
    assert len([line for line in m.addon_warnings() if SUMMARY in line and "answered by" in line]) == 3


@pytest.mark.e2e
def test_saved_flows_keep_the_decode_and_render_again(esrs, mitmdump, tmp_path) -> None:
    upstream = esrs(Plaintext.ALERT)
    saved = tmp_path / "flows.mitm"
    args, (port,) = reverse_modes([f"http://127.0.0.1:{upstream.port}"])
    m = mitmdump([*args, "-w", str(saved)])
    assert exchange(("127.0.0.1", port), b"GET / HTTP/1.1\r\nHost: esrs\r\n\r\n", 8).status == 502
    m.stop()
    with open(saved, "rb") as f:
        (flow,) = list(io.FlowReader(f).stream())
    assert isinstance(flow, http.HTTPFlow)
    assert (
        flow.marked == ":warning:"
        and flow.comment == f"esrs-fix: detected {SUMMARY}; the client got esrs-fix's labelled 502"
    )
    assert flow.metadata[METADATA_KEY]["raw_hex"] == "1503010002020a"
    # read back by a colleague's mitmdump with the addon: the view renders the decode again
    from stray_tls.launch import mitmproxy_command

    p = subprocess.run(
        [*mitmproxy_command(), "-n", "-r", str(saved), "--flow-detail", "3"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert "description   unexpected_message (10)" in p.stdout, p.stdout + p.stderr


@pytest.mark.e2e
def test_reading_saved_flows_back_keeps_what_they_recorded(esrs, start_server, mitmdump, tmp_path) -> None:
    """`-w`, then `-r ... -w copy -s addon` as a colleague would run it: nothing renamed, rewritten or re-annotated."""
    from stray_tls.lab.servers import NGINX_400_BODY, ScriptedServer

    upstream = esrs(Plaintext.ALERT)
    page = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n%s" % (
        len(NGINX_400_BODY),
        NGINX_400_BODY,
    )
    nginx = start_server(ScriptedServer(lambda head: page))
    saved, copy = tmp_path / "saved.flows", tmp_path / "copy.flows"
    args, (p_stray, p_page) = reverse_modes([f"http://127.0.0.1:{upstream.port}", f"http://127.0.0.1:{nginx.port}"])
    m = mitmdump([*args, "-w", str(saved)], listeners=2)
    assert exchange(("127.0.0.1", p_stray), b"GET / HTTP/1.1\r\nHost: esrs\r\n\r\n", 8).status == 502
    assert exchange(("127.0.0.1", p_page), b"GET / HTTP/1.1\r\nHost: esrs\r\n\r\n", 8).status == 400
    m.stop()
    from stray_tls.launch import mitmproxy_command

    p = subprocess.run(
        [*mitmproxy_command(), "-n", "-r", str(saved), "-w", str(copy), "--set", "esrs_rewrite=true"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "X-ESRS-Fix-Upstream" not in p.stdout + p.stderr and "answered by" not in p.stdout + p.stderr

    def states(path) -> list[dict]:
        with open(path, "rb") as f:
            return [flow.get_state() for flow in io.FlowReader(f).stream()]

    before, after = states(saved), states(copy)
    assert len(before) == 2 and after == before  # byte for byte what was recorded, label and 400 page included
    stray = next(s for s in after if s["response"]["status_code"] == 502)
    assert (b"X-ESRS-Fix", f"detected; {SUMMARY}".encode()) in stray["response"]["headers"]
    assert (
        stray["comment"] == f"esrs-fix: detected {SUMMARY}; the client got esrs-fix's labelled 502"
    )  # one annotation, not two


def test_view_of_a_upgraded_flow_shows_both_answers_and_leaves_the_body_to_its_own_view(addon: EsrsFix) -> None:
    with taddons.context(addon):
        f = response_flow(b'{"status": "ok"}', "application/json")
        assert f.response is not None
        f.metadata[METADATA_KEY] = {
            "kind": "tls_records",
            "confidence": "high",
            "summary": SUMMARY,
            "explanation": "word " * 60,
            "raw_hex": FIELD_ALERT.hex(),
            "upgraded": True,
            "learned": False,
            "upgrade": {
                "status": 200,
                "reason": "OK",
                "url": "https://esrs.lab/",
                "tls_version": "TLSv1.3",
                "sni": "esrs.lab",
            },
        }
        assert contentview.priority(f.response.content or b"", f, f.response) < 0  # JSON stays the automatic view
        rendered = contentview.render(f.response.content or b"", f, f.response) or ""
        assert "upgraded over TLS" in rendered
        assert "the client got the server's own answer over TLS: HTTP 200 OK" in rendered
        assert "what the plaintext attempt got (7 bytes):\n  15 03 01 00 02 02 0a\n" in rendered
        assert "description   unexpected_message (10)" in rendered
        assert len([line for line in rendered.splitlines() if line.startswith("word")]) > 1  # the explanation, wrapped
        assert_every_line_fits(rendered)


record_streams = st.lists(
    st.tuples(st.sampled_from([20, 21, 22, 23]), st.sampled_from([0x0301, 0x0303, 0xFEFF]), st.binary(max_size=48)),
    max_size=6,
).map(lambda fields: b"".join(records.encode_record(*f) for f in fields))


@settings(max_examples=200, deadline=None)
@given(
    raw=record_streams | st.binary(max_size=300),
    tail=st.binary(max_size=4),
    words=st.text(max_size=300),
    url=st.text(min_size=1, max_size=200),
    upgraded=st.booleans(),
)
def test_every_line_of_the_view_fits_in_wrap(raw: bytes, tail: bytes, words: str, url: str, upgraded: bool) -> None:
    """Whatever the finding holds (long summaries, URLs, errors, 300 bytes of raw answer, records of any size),
    and whatever the body is, no line is wider than WRAP: mitmweb's response pane never scrolls sideways."""
    f = response_flow(b"<html>a page</html>", "text/html")
    assert f.response is not None
    f.metadata[METADATA_KEY] = {
        "kind": "tls_records",
        "confidence": "high",
        "summary": words,
        "explanation": words * 2,
        "raw_hex": (raw + tail).hex(),
        "rewritten": not upgraded,
        "rewritten_status": 200,
        "upgraded": upgraded,
        "learned": upgraded,
        "upgrade": {"status": 200, "reason": words[:40], "url": url, "tls_version": "TLSv1.3", "sni": url},
        "upgrade_error": words,
    }
    for body, message in ((b"<html>a page</html>", f.response), (raw + tail, None)):
        rendered = contentview.render(body, f, message)
        if rendered is not None:
            assert_every_line_fits(rendered)
