"""End to end: a real mitmdump with the addon, real servers on loopback, real clients (curl, http.client)."""

from __future__ import annotations

import http.client
import socket
import subprocess

import pytest

from stray_tls.fieldkit.wire import exchange
from stray_tls.lab import servers
from stray_tls.lab.servers import Plaintext

from .conftest import SUMMARY, reverse_modes

pytestmark = pytest.mark.e2e

# The clients' timeout. Not a speed claim: it is far below the keep-open server's 30 s and mitmproxy's 600 s
# idle timeout, so a client that gets its answer at all within it was answered by the addon, not by a timeout.
PROMPT = 8.0


def get(port: int, path: str = "/", timeout: float = PROMPT) -> tuple[http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", path)
    response = conn.getresponse()
    return response, response.read()


STRAYS = [Plaintext.ALERT, Plaintext.ALERT_KEEP_OPEN, Plaintext.ALERT_SPLIT]


def test_stray_alert_closed_kept_open_or_split_is_answered_at_once(esrs, mitmdump) -> None:
    upstreams = [esrs(p) for p in STRAYS]
    args, ports = reverse_modes([f"http://127.0.0.1:{u.port}" for u in upstreams])
    m = mitmdump(args, listeners=len(ports))
    for behaviour, port in zip(STRAYS, ports, strict=True):
        response, body = get(port)
        assert response.status == 502, behaviour
        assert response.headers["X-ESRS-Fix"] == f"detected; {SUMMARY}"
        assert SUMMARY.encode() in body and b"15 03 01 00 02 02 0a" in body
    warnings = m.addon_warnings()
    assert len(warnings) == len(STRAYS)
    # one line per upstream, naming the URL the flow asked for (reverse mode: the upstream's own address)
    for upstream in upstreams:
        (line,) = [w for w in warnings if f"http://127.0.0.1:{upstream.port}/ answered by" in w]
        assert SUMMARY in line and "not rewritten" in line


def test_rewrite_with_filter_answers_inside_and_reports_outside(esrs, mitmdump, curl) -> None:
    inside, outside = esrs(Plaintext.ALERT_KEEP_OPEN), esrs(Plaintext.ALERT)
    args, (p_in, p_out) = reverse_modes([f"http://127.0.0.1:{inside.port}", f"http://127.0.0.1:{outside.port}"])
    m = mitmdump(
        [
            *args,
            "--set",
            "esrs_rewrite=true",
            "--set",
            "esrs_status=200",
            "--set",
            f"esrs_filter=~d 127.0.0.1 & ~u :{inside.port}/",
        ],
        listeners=2,
    )
    out = subprocess.run(
        [curl, "-s", "-i", "--max-time", str(PROMPT), f"http://127.0.0.1:{p_in}/"], capture_output=True, check=False
    ).stdout
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert f"X-ESRS-Fix: synthetic 200; {SUMMARY}".encode() in out
    assert b"SYNTHETIC 200 OK" in out
    response, _ = get(p_out)
    assert response.status == 502 and response.headers["X-ESRS-Fix"].startswith("detected;")
    lines = m.addon_warnings()
    assert any("rewritten to a synthetic 200" in line for line in lines)
    assert any("not rewritten" in line for line in lines)


def test_client_connection_stays_usable_after_a_rewrite(esrs, mitmdump) -> None:
    upstream = esrs(Plaintext.ALERT_KEEP_OPEN)
    args, (port,) = reverse_modes([f"http://127.0.0.1:{upstream.port}"])
    mitmdump([*args, "--set", "esrs_rewrite=true"])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PROMPT)
    sockets = []
    for _ in range(3):
        conn.request("GET", "/")
        response = conn.getresponse()
        response.read()
        assert response.status == 200 and response.headers["X-ESRS-Fix"].startswith("synthetic 200;")
        assert not response.will_close
        sockets.append(conn.sock)
    assert sockets[0] is not None and all(s is sockets[0] for s in sockets)  # one client connection throughout
    conn.close()
    assert upstream.plaintext_requests == 3  # each request reached the upstream on a fresh connection


def test_a_record_that_never_completes_is_answered_after_the_hold_timeout(esrs, mitmdump) -> None:
    stalled = esrs(Plaintext.ALERT_KEEP_OPEN, alert=b"\x15\x03\x01")  # three bytes, then silence
    args, (port,) = reverse_modes([f"http://127.0.0.1:{stalled.port}"])
    m = mitmdump([*args, "--set", "esrs_hold_timeout=1"])
    response, body = get(port)  # the server holds for 30 s and mitmproxy would wait 600 s: an answer ends the hold
    assert response.status == 502
    assert response.headers["X-ESRS-Fix"] == "detected; incomplete TLS record: 15 03 01 (3 of 5 bytes)"
    assert b"never completed" in body
    (line,) = m.addon_warnings()
    assert "[tls_incomplete, confidence medium; not rewritten]" in line


# -- clean traffic: byte-identical with and without the addon

CLEAN_ANSWERS: dict[bytes, bytes] = {
    b"/length": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Case: Kept\r\n\r\nhello",
    b"/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"/tls-looking-body": b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 9\r\n\r\n"
    b"\x15\x03\x01\x00\x02\x02\x0a\x00\x01",
    b"/no-content": b"HTTP/1.1 204 No Content\r\n\r\n",
    b"/not-modified": b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n',
    b"/bad-request": b"HTTP/1.1 400 Bad Request\r\nContent-Length: 11\r\n\r\nbad request",
}
CLEAN_BODIES = {"/length": b"hello", "/chunked": b"hello", "/tls-looking-body": b"\x15\x03\x01\x00\x02\x02\x0a\x00\x01"}
FORGED_LABEL = b"HTTP/1.1 200 OK\r\nX-ESRS-Fix: synthetic 200; forged\r\nContent-Length: 2\r\n\r\nok"


def clean_answer(head: bytes) -> bytes:
    path = head.split(b" ", 2)[1]
    return CLEAN_ANSWERS.get(path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")


def test_clean_traffic_is_byte_identical_with_and_without_the_addon(start_server, mitmdump) -> None:
    origin = start_server(servers.ScriptedServer(clean_answer))
    target = f"http://127.0.0.1:{origin.port}"
    args_stock, (stock,) = reverse_modes([target])
    args_addon, (with_addon,) = reverse_modes([target])
    mitmdump(args_stock, addon=False)
    m = mitmdump([*args_addon, "--set", "esrs_rewrite=true"])
    for path in CLEAN_ANSWERS:
        request = b"GET %s HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n" % path
        a = exchange(("127.0.0.1", stock), request, PROMPT)
        b = exchange(("127.0.0.1", with_addon), request, PROMPT)
        assert a.raw and a.raw == b.raw, path
        assert b.label is None
    # HEAD of a resource: no body, no detection
    a = exchange(("127.0.0.1", stock), b"HEAD /length HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n", PROMPT)
    b = exchange(("127.0.0.1", with_addon), b"HEAD /length HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n", PROMPT)
    assert a.raw == b.raw and a.status == 200
    assert m.addon_warnings() == []


def test_an_upstream_label_is_renamed_and_flagged(start_server, mitmdump) -> None:
    origin = start_server(servers.ScriptedServer(lambda head: FORGED_LABEL))
    args, (port,) = reverse_modes([f"http://127.0.0.1:{origin.port}"])
    m = mitmdump([*args, "--set", "stream_large_bodies=1"])  # streamed: the rename must happen at the head
    answer = exchange(("127.0.0.1", port), b"GET / HTTP/1.1\r\nHost: o\r\n\r\n", PROMPT)
    assert answer.status == 200 and answer.body == b"ok"
    assert answer.label is None
    assert (answer.headers or {})["x-esrs-fix-upstream"] == "synthetic 200; forged"
    (line,) = m.addon_warnings()
    assert "the upstream sent its own X-ESRS-Fix header" in line


def test_keep_alive_clean_requests_through_the_addon(start_server, mitmdump) -> None:
    origin = start_server(servers.ScriptedServer(clean_answer))
    args, (port,) = reverse_modes([f"http://127.0.0.1:{origin.port}"])
    mitmdump(args)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PROMPT)
    for path in ("/length", "/chunked", "/tls-looking-body", "/length"):
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200 and "X-ESRS-Fix" not in response.headers
        assert body == CLEAN_BODIES[path]
    conn.close()
    assert origin.connections == 1


# -- other modes and faces


def test_regular_proxy_mode_plain_request_to_a_tls_port(esrs, mitmdump, curl) -> None:
    upstream = esrs(Plaintext.ALERT)
    port = servers.free_port()
    m = mitmdump(["-p", str(port)])
    out = subprocess.run(
        [
            curl,
            "-s",
            "-i",
            "--max-time",
            str(PROMPT),
            "-x",
            f"http://127.0.0.1:{port}",
            f"http://127.0.0.1:{upstream.port}/",
        ],
        capture_output=True,
        check=False,
    ).stdout
    assert out.startswith(b"HTTP/1.1 502") and SUMMARY.encode() in out
    assert any(SUMMARY in line for line in m.addon_warnings())


def test_upstream_mode_through_the_faulty_proxy(esrs, start_server, mitmdump) -> None:
    """mitmproxy forwards `GET http://` to the upstream proxy as-is; `GET https://` becomes CONNECT + TLS."""
    upstream = esrs(Plaintext.ALERT)
    faulty = start_server(servers.FaultyProxy({("esrs.lab", 443): ("127.0.0.1", upstream.port)}))
    port = servers.free_port()
    m = mitmdump(["-p", str(port), "--mode", f"upstream:http://127.0.0.1:{faulty.port}", "--set", "ssl_insecure=true"])
    plain = exchange(("127.0.0.1", port), b"GET http://esrs.lab:443/ HTTP/1.1\r\nHost: esrs.lab:443\r\n\r\n", PROMPT)
    assert plain.status == 502 and plain.label == f"detected; {SUMMARY}"
    (line,) = m.addon_warnings()
    assert f"via upstream proxy 127.0.0.1:{faulty.port}" in line
    tunnelled = exchange(
        ("127.0.0.1", port), b"GET https://esrs.lab:443/ HTTP/1.1\r\nHost: esrs.lab:443\r\n\r\n", PROMPT
    )
    assert tunnelled.status == 200 and tunnelled.body == servers.OK_BODY and tunnelled.label is None


def test_tls_handshake_alert_from_a_tls10_only_server_is_named(cert, start_server, mitmdump) -> None:
    old = start_server(servers.EsrsServer(cert, servers.EsrsBehaviour(tls10_only=True)))
    faulty = start_server(servers.FaultyProxy({("esrs.lab", 443): ("127.0.0.1", old.port)}))
    port = servers.free_port()
    m = mitmdump(["-p", str(port), "--mode", f"upstream:http://127.0.0.1:{faulty.port}", "--set", "ssl_insecure=true"])
    answer = exchange(("127.0.0.1", port), b"GET https://esrs.lab:443/ HTTP/1.1\r\nHost: esrs.lab:443\r\n\r\n", PROMPT)
    assert answer.status == 502
    lines = m.addon_warnings()
    assert any("TLS handshake with the upstream failed: alert protocol_version (70)" in line for line in lines), lines


def test_tls_handshake_alert_is_rewritten_on_request_and_the_client_connection_lives(
    cert, start_server, mitmdump
) -> None:
    old = start_server(servers.EsrsServer(cert, servers.EsrsBehaviour(tls10_only=True)))
    faulty = start_server(servers.FaultyProxy({("esrs.lab", 443): ("127.0.0.1", old.port)}))
    port = servers.free_port()
    upstream = f"upstream:http://127.0.0.1:{faulty.port}"
    m = mitmdump(["-p", str(port), "--mode", upstream, "--set", "ssl_insecure=true", "--set", "esrs_rewrite=true"])
    with socket.create_connection(("127.0.0.1", port), timeout=PROMPT) as sock:
        reader = sock.makefile("rb")
        for _ in range(2):
            sock.sendall(b"GET https://esrs.lab:443/ HTTP/1.1\r\nHost: esrs.lab:443\r\n\r\n")
            status = reader.readline()
            headers = {}
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = reader.read(int(headers["content-length"]))
            assert status == b"HTTP/1.1 200 OK\r\n"
            assert headers["x-esrs-fix"].startswith("synthetic 200; TLS handshake with the upstream failed: alert ")
            assert b"protocol_version (70)" in body
    assert sum("rewritten to a synthetic 200" in line for line in m.addon_warnings()) == 2


def test_nginx_400_page_is_recognised_and_silent_close_reported(esrs, mitmdump) -> None:
    nginx, silent = esrs(Plaintext.NGINX_400), esrs(Plaintext.SILENT_CLOSE)
    args, (p_nginx, p_silent) = reverse_modes([f"http://127.0.0.1:{nginx.port}", f"http://127.0.0.1:{silent.port}"])
    m = mitmdump(args, listeners=2)
    response, body = get(p_nginx)
    assert response.status == 400 and b"plain HTTP request was sent to HTTPS port" in body
    response, _ = get(p_silent)
    assert response.status == 502
    lines = m.addon_warnings()
    assert any("HTTP 400 from nginx" in line and "confidence high" in line for line in lines), lines
    assert any("without answering" in line and "confidence low" in line for line in lines), lines


def test_public_hooks_only_when_early_detection_is_off(esrs, mitmdump) -> None:
    upstream = esrs(Plaintext.ALERT)
    args, (port,) = reverse_modes([f"http://127.0.0.1:{upstream.port}"])
    m = mitmdump([*args, "--set", "esrs_early=false"])
    response, _ = get(port)
    assert response.status == 502 and "X-ESRS-Fix" not in response.headers  # mitmproxy's own 502
    assert any(SUMMARY in line for line in m.addon_warnings())


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ("esrs_status=abc", "esrs_status"),
        ("esrs_status=700", "esrs_status"),
        ("esrs_rewrite=maybe", "esrs_rewrite"),
        ("esrs_filter=~d [", "esrs_filter"),
        ("esrs_hold_timeout=0", "esrs_hold_timeout"),
    ],
)
def test_a_bad_option_stops_mitmdump_naming_the_option(tmp_path, setting: str, words: str) -> None:
    from stray_tls.lab.mitm import Mitmdump

    m = Mitmdump(["-p", str(servers.free_port()), "--set", setting], tmp_path / "bad.log")
    proc = subprocess.run(m.command(), capture_output=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    output = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode != 0, output
    assert words in output


def test_ipv6_loopback_upstream(cert, start_server, mitmdump) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        upstream = start_server(servers.EsrsServer(cert, host="::1"))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    args, (port,) = reverse_modes([f"http://[::1]:{upstream.port}"])
    m = mitmdump(args)
    response, _ = get(port)
    assert response.status == 502
    # where the addon names the upstream, bracketed (mitmproxy's pretty_url here is http://::1:PORT/, unbracketed)
    assert any(f" answered by [::1]:{upstream.port}: " in line for line in m.addon_warnings()), m.addon_warnings()
