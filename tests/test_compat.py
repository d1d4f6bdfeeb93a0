"""Every mitmproxy message and API the public fallback depends on, pinned on the running major (11 or 12).

The messages are produced by mitmproxy itself, never copied: an unwrapped `Http1Client` fed the upstream's
bytes by `compat.Http1ClientDriver`, and a real mitmdump whose TLS layer meets real upstreams on loopback.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import contentviews, options
from mitmproxy.test import taddons, tflow

from stray_tls import compat
from stray_tls.core.findings import Finding, Kind
from stray_tls.fieldkit.wire import Answer, exchange
from stray_tls.lab import servers
from stray_tls.lab.servers import EsrsBehaviour, EsrsServer, TCPServer

from .conftest import FIELD_ALERT, SUMMARY

TIMEOUT = 10.0  # a bound on each client, not a speed claim


@pytest.fixture
def driver() -> compat.Http1ClientDriver:
    """A stock Http1Client (no EarlyDetection installed), a request already sent."""
    read_headers = compat._Internals().Http1Client.read_headers
    assert not getattr(read_headers, "__esrs_fix__", False), "a test left early detection installed"
    d = compat.Http1ClientDriver()
    d.request()
    return d


def error_of(said: list[compat.Said]) -> str:
    errors = [w[1] for w in said if w[0] == "error"]
    assert len(errors) == 1, said
    return str(errors[0])


def finding(message: str) -> Finding:
    found = compat.finding_from_error(message)
    assert found is not None, f"no finding from mitmproxy's message {message!r}"
    return found


# -- Http1Client's messages


def test_the_alert_then_close_is_recovered_from_unexpected_server_response(driver) -> None:
    assert driver.receive(FIELD_ALERT) == []  # stock waits for a blank line
    message = error_of(driver.close())
    assert message.startswith("unexpected server response: b")
    f = finding(message)
    assert (f.kind, f.summary, f.raw) == (Kind.TLS_RECORDS, SUMMARY, FIELD_ALERT)


@pytest.mark.parametrize("ending", [b"\r\n", b"\n", b"\r\n\r\n"], ids=["CRLF", "LF", "CRLF CRLF"])
def test_the_alert_then_a_line_ending_is_recovered_from_bad_http_response_line(driver, ending: bytes) -> None:
    said = driver.receive(FIELD_ALERT + ending)
    assert ("close",) in said
    message = error_of(said)
    assert "Bad HTTP response line: b" in message  # the parser ate the alert's own 0x0a
    f = finding(message)
    assert (f.kind, f.summary, f.raw) == (Kind.TLS_RECORDS, SUMMARY, FIELD_ALERT)


def test_a_close_without_a_byte_is_server_closed_connection(driver) -> None:
    message = error_of(driver.close())
    assert message == compat.SERVER_CLOSED
    assert finding(message).kind is Kind.SILENT_CLOSE


def test_an_incomplete_record_then_close_is_recovered_as_incomplete(driver) -> None:
    driver.receive(FIELD_ALERT[:3])
    f = finding(error_of(driver.close()))
    assert f.kind is Kind.TLS_INCOMPLETE
    assert f.summary == "incomplete TLS record: 15 03 01 (3 of 5 bytes)"


@pytest.mark.parametrize(
    ("record", "quoted"),
    [
        (b"\x16\x03\x03\x00\x02''", 'b"'),  # a single quote inside: repr switches to double quotes
        (b"\x16\x03\x03\x00\x04'\"'\"", "\\'"),  # both inside: single quotes, the inner ones escaped
    ],
    ids=["double-quoted repr", "escaped quotes"],
)
def test_quote_characters_in_the_bytes_survive_mitmproxys_repr(driver, record: bytes, quoted: str) -> None:
    driver.receive(record)
    message = error_of(driver.close())
    assert quoted in message
    f = finding(message)
    assert f.kind is Kind.TLS_RECORDS and f.raw == record


@pytest.mark.parametrize(
    "answer",
    [b"garbage", b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort", b"\x15\x03\x09abc"],
    ids=["garbage", "a short body", "TLS-looking but not TLS"],
)
def test_what_is_not_tls_gives_no_finding(driver, answer: bytes) -> None:
    said = driver.receive(answer) + driver.close()
    message = error_of(said)
    assert compat.finding_from_error(message) is None, message


# -- options: mitmproxy's deferred --set values


def test_deferred_values_reads_mitmproxys_deferred_set_values() -> None:
    opts = options.Options()
    assert compat.deferred_values(opts, "esrs_rewrite") is None
    opts.set("esrs_rewrite=maybe", "esrs_filter=~d a", "esrs_filter=~d b", defer=True)
    assert compat.deferred_values(opts, "esrs_rewrite") == ["maybe"]
    assert compat.deferred_values(opts, "esrs_filter") == ["~d a", "~d b"]
    assert compat.deferred_values(opts, "esrs_status") is None
    opts.update_defer(esrs_status=201)  # the other way a value gets deferred: already a Python value
    assert compat.deferred_values(opts, "esrs_status") == ["201"]


def test_deferred_values_are_gone_once_mitmproxy_has_applied_them() -> None:
    opts = options.Options()
    opts.set("esrs_hold_timeout=7", defer=True)
    opts.add_option("esrs_hold_timeout", int, 5, "help")
    opts.process_deferred()
    assert opts.esrs_hold_timeout == 7
    assert compat.deferred_values(opts, "esrs_hold_timeout") is None
    opts.set("esrs_hold_timeout=9", defer=True)  # a known option is set at once, never deferred
    assert opts.esrs_hold_timeout == 9 and compat.deferred_values(opts, "esrs_hold_timeout") is None


@pytest.mark.parametrize(
    ("setting", "size"),
    [(None, None), ("512", 512), ("100k", 100 * 1024), ("3m", 3 * 1024**2), ("1g", 1024**3)],
)
def test_body_size_limit_is_read_as_mitmproxy_reads_it(setting: str | None, size: int | None) -> None:
    from mitmproxy.addons import proxyserver

    with taddons.context(proxyserver.Proxyserver()) as tctx:  # the addon that declares body_size_limit
        tctx.options.update(body_size_limit=setting)
        assert compat.body_size_limit(tctx.options) == size


# -- content views: 11's View, 12's Contentview

PROBE_VIEW = "esrs compat probe"
PROBE_BODY = b"esrs-compat-probe"
DECLINED_BODY = b"esrs-compat-declined"  # the view claims it by priority, then declines to render it


def _render(data: bytes, flow: object, message: object) -> str | None:
    if data != PROBE_BODY:
        return None
    return f"probe saw {len(data)} bytes; flow {flow is not None}; message {message is not None}"


def _priority(data: bytes, flow: object, message: object) -> float:
    return 50.0 if data in (PROBE_BODY, DECLINED_BODY) else -1  # never wins for anything else


def shown(message: Any, flow: Any) -> tuple[str, str]:
    """(the description of the view mitmproxy chose, its text), through the running major's public API."""
    if hasattr(contentviews, "prettify_message"):  # 12
        result = contentviews.prettify_message(message, flow)  # type: ignore[attr-defined,arg-type]
        return f"{result.view_name} {result.description}", result.text
    description, lines, _ = contentviews.get_message_content_view("auto", message, flow)  # type: ignore[attr-defined]
    return description, "\n".join("".join(text for _, text in line) for line in lines)


def views_named(name: str) -> int:
    if hasattr(contentviews, "registry"):  # 12
        return int(name.lower() in contentviews.registry)  # type: ignore[attr-defined]
    return sum(1 for v in contentviews.views if v.name == name)  # type: ignore[attr-defined]


def test_register_view_round_trip() -> None:
    flow = tflow.tflow(resp=True)
    assert flow.response is not None
    with taddons.context():
        first = compat.register_view(PROBE_VIEW, _render, _priority)
        view = compat.register_view(PROBE_VIEW, _render, _priority)  # a script reload: replaced, not refused
        try:
            assert views_named(PROBE_VIEW) == 1
            flow.response.content = PROBE_BODY
            description, text = shown(flow.response, flow)
            assert description.lower().startswith(PROBE_VIEW)
            assert text == f"probe saw {len(PROBE_BODY)} bytes; flow True; message True"
            flow.response.content = b'{"a": 1}'
            description, _ = shown(flow.response, flow)
            assert PROBE_VIEW not in description.lower()  # its priority keeps it out of the way
            flow.response.content = DECLINED_BODY
            description, text = shown(flow.response, flow)  # chosen, then declines: no crash, the bytes shown
            if hasattr(contentviews, "Contentview"):  # 12: raw, with the failure in the description
                assert "failed to parse as esrs compat probe" in description and text == "esrs-compat-declined"
            else:  # 11: the view's own "not applicable" with a hexdump
                assert description == f"{PROBE_VIEW}: not applicable" and text.startswith("65 73 72 73 2d")
        finally:
            compat.unregister_view(view)
            compat.unregister_view(first)
        # 11 removes it; 12 has no removal (a reload replaces the view of the same name).
        assert views_named(PROBE_VIEW) == (1 if hasattr(contentviews, "Contentview") else 0)


# -- mitmproxy's TLS layer, through a real mitmdump


class PlainHttpServer(TCPServer):
    """A port that speaks plain HTTP: whatever arrives (a ClientHello too), it answers with a 400 page."""

    def handle(self, conn: socket.socket) -> None:
        if conn.recv(65536):
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 11\r\nConnection: close\r\n\r\nbad request")


def proxy_get(proxy_port: int, target_port: int) -> Answer:
    """`GET https://127.0.0.1:PORT/` in absolute form, as a client configured with an HTTP proxy sends it."""
    request = b"GET https://127.0.0.1:%d/ HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (target_port, target_port)
    return exchange(("127.0.0.1", proxy_port), request, TIMEOUT)


def report_lines(path: Path, at_least: int, wait: float = 5.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + wait
    while True:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        lines = [json.loads(line) for line in text.splitlines()]
        if len(lines) >= at_least or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


@pytest.mark.e2e
def test_tls_to_a_plain_http_port_is_reported_and_never_rewritten(mitmdump, start_server, tmp_path: Path) -> None:
    upstream = start_server(PlainHttpServer())
    port, report = servers.free_port(), tmp_path / "report.jsonl"
    m = mitmdump(
        ["-p", str(port), "--set", "ssl_insecure=true", "--set", f"esrs_report={report}", "--set", "esrs_rewrite=true"]
    )
    answer = proxy_get(port, upstream.port)
    # The opposite fault is not the ESRS failure: no synthetic success hides it, even with esrs_rewrite on.
    assert answer.status == 502, answer
    assert answer.label is None
    assert b"does not speak TLS" in answer.body  # mitmproxy's own page
    assert "The remote server does not speak TLS." in m.log()  # mitmproxy's words, pinned
    (entry,) = report_lines(report, 1)
    assert entry["kind"] == "upstream_not_tls"
    assert "The remote server does not speak TLS." in str(entry["summary"])
    assert entry["rewritten"] is False
    assert "The remote server does not speak TLS." in str(entry["tls_error"])
    assert entry["url"] == f"https://127.0.0.1:{upstream.port}/"


@pytest.mark.e2e
def test_a_tls10_only_server_is_a_protocol_version_alert(mitmdump, start_server, cert, tmp_path: Path) -> None:
    upstream = start_server(EsrsServer(cert, EsrsBehaviour(tls10_only=True)))
    port, report = servers.free_port(), tmp_path / "report.jsonl"
    m = mitmdump(["-p", str(port), "--set", "ssl_insecure=true", "--set", f"esrs_report={report}"])
    answer = proxy_get(port, upstream.port)
    assert answer.status == 502
    assert "cannot agree on a TLS version" in m.log()  # mitmproxy's words, pinned
    (entry,) = report_lines(report, 1)
    assert entry["kind"] == "tls_handshake_alert"
    assert entry["summary"] == "TLS handshake with the upstream failed: alert protocol_version (70)"
    assert "cannot agree on a TLS version" in str(entry["tls_error"])
    assert b"cannot agree on a TLS version" in answer.body  # without esrs_rewrite: mitmproxy's own 502


def text_lines(path: Path, at_least: int, wait: float = 5.0) -> list[str]:
    """The file's complete lines, once there are `at_least` of them or `wait` has passed."""
    deadline = time.monotonic() + wait
    while True:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        lines = text.splitlines()[: text.count("\n")]  # a line still being written is not one yet
        if len(lines) >= at_least or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


@pytest.mark.e2e
def test_an_untrusted_certificate_gives_openssls_reason_and_is_left_alone(mitmdump, esrs, tmp_path: Path) -> None:
    upstream = esrs()  # a self-signed certificate, and no ssl_insecure
    port, report, errors = servers.free_port(), tmp_path / "report.jsonl", tmp_path / "errors.txt"
    script = tmp_path / "flow_errors.py"
    script.write_text(
        "def error(flow):\n"
        f"    with open({str(errors)!r}, 'a', encoding='utf-8') as f:\n"
        "        f.write(flow.error.msg + '\\n')\n",
        encoding="utf-8",
    )
    mitmdump(["-p", str(port), "-s", str(script), "--set", f"esrs_report={report}", "--set", "esrs_rewrite=true"])
    answer = proxy_get(port, upstream.port)
    assert answer.status == 502 and answer.label is None  # never rescued: a certificate check stays a failure
    (message,) = text_lines(errors, 1)
    assert compat.certificate_problem(message) == "self-signed certificate"
    assert compat.finding_from_error(message) is None
    # Nothing reported for it, asserted only once a report line is seen for a later flow: lines are written in the
    # order flows are handled, so a line for the refused flow, written however late in its handling, comes first.
    plain = b"GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (upstream.port, upstream.port)
    later = exchange(("127.0.0.1", port), plain, TIMEOUT)
    assert later.status == 200 and (later.label or "").startswith("synthetic"), later  # the same upstream's alert
    assert [entry["url"] for entry in report_lines(report, 1)] == [f"http://127.0.0.1:{upstream.port}/"]
    # The server's counters move (the later flow reached it in plaintext), and no request reached it over TLS.
    assert (upstream.tls_requests, upstream.plaintext_requests) == (0, 1)
