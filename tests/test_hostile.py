"""Hostile upstreams, odd but valid HTTP, concurrency and faults: the addon never breaks the proxy, never lies.

Each case runs through a real mitmdump; one mitmdump serves many upstreams through reverse listeners.
"""

from __future__ import annotations

import hashlib
import http.client
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from stray_tls.fieldkit.wire import exchange
from stray_tls.lab import servers
from stray_tls.lab.servers import ALERT_TLS10, ScriptedServer, split_at

from .conftest import SUMMARY, reverse_modes

pytestmark = pytest.mark.e2e

CLOSE_NOTIFY = bytes.fromhex("15 03 01 00 02 01 00")
TIMEOUT = 10.0  # a bound on each client, not a speed claim


def get(port: int, path: bytes = b"/") -> tuple[int | None, str | None, bytes]:
    a = exchange(("127.0.0.1", port), b"GET %s HTTP/1.1\r\nHost: up\r\n\r\n" % path, TIMEOUT)
    return a.status, a.label, a.body


# (name, what the upstream writes, the summary the client must be told)
STRAY_SHAPES: list[tuple[str, Callable[[bytes], bytes | list[bytes]], str]] = [
    *[(f"split at {k}", lambda h, k=k: split_at(ALERT_TLS10, k), SUMMARY) for k in range(1, 7)],
    ("drip-fed byte by byte", lambda h: [bytes([b]) for b in ALERT_TLS10], SUMMARY),
    (
        "two records in one write",
        lambda h: ALERT_TLS10 + CLOSE_NOTIFY,
        f"{SUMMARY}; TLS alert: warning close_notify (0), record version TLS 1.0",
    ),
    ("a record, then HTTP text", lambda h: ALERT_TLS10 + b"HTTP/1.1 200 OK\r\n\r\n", SUMMARY),
    ("a record, then garbage", lambda h: ALERT_TLS10 + b"\x00\xff garbage", SUMMARY),
    ("an SSLv2-framed error", lambda h: bytes.fromhex("80 03 00 00 01"), "SSLv2 error: no_cipher (0x0001)"),
    (
        "TLS 1.2 protocol_version",
        lambda h: bytes.fromhex("15 03 03 00 02 02 46"),
        "TLS alert: fatal protocol_version (70), record version TLS 1.2",
    ),
]


@pytest.mark.parametrize("keep_open", [False, True], ids=["then close", "then keep open"])
def test_every_shape_of_a_stray_record_is_decoded_and_answered(start_server, mitmdump, keep_open: bool) -> None:
    upstreams = [
        start_server(ScriptedServer(shape, keep_alive=False, hold=30 if keep_open else 0))
        for _, shape, _ in STRAY_SHAPES
    ]
    args, ports = reverse_modes([f"http://127.0.0.1:{u.port}" for u in upstreams])
    m = mitmdump(args, listeners=len(ports))
    for (name, _, summary), port in zip(STRAY_SHAPES, ports, strict=True):
        status, label, _ = get(port)
        assert (status, label) == (502, f"detected; {summary}"), name
    lines = m.addon_warnings()
    assert len(lines) == len(STRAY_SHAPES)


def stock_and_addon(start_server, mitmdump, answer: Callable[[bytes], bytes | list[bytes]], **kw) -> tuple[int, int]:
    origin = start_server(ScriptedServer(answer, **kw))
    target = f"http://127.0.0.1:{origin.port}"
    a_args, (stock,) = reverse_modes([target])
    b_args, (with_addon,) = reverse_modes([target])
    mitmdump(a_args, addon=False)
    mitmdump([*b_args, "--set", "esrs_rewrite=true"])
    return stock, with_addon


@pytest.mark.parametrize(
    "upstream_bytes",
    [
        b"\x15\x04\x01\x00\x02\x02\x0a",  # content type 21 with major version 4
        b"\x16\x03\x01\xff\xff" + b"x" * 20,  # a length no record may have
        b"\x15\x03\x01\x00\x00",  # an empty alert
        b"\x00\x01\x02 binary",
    ],
    ids=["bad version", "bad length", "empty alert", "binary"],
)
def test_bytes_that_only_look_like_tls_are_left_to_mitmproxy(start_server, mitmdump, upstream_bytes: bytes) -> None:
    stock, with_addon = stock_and_addon(start_server, mitmdump, lambda h: upstream_bytes, keep_alive=False)
    request = b"GET / HTTP/1.1\r\nHost: up\r\n\r\n"
    a = exchange(("127.0.0.1", stock), request, TIMEOUT)
    b = exchange(("127.0.0.1", with_addon), request, TIMEOUT)
    assert a.raw == b.raw and b.label is None


ORDINARY = {
    b"/continue": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    # a TLS record as a chunked 200 body: reported (tls_in_body) but never rewritten, so the bytes stay identical
    b"/chunked-tls": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n" + ALERT_TLS10 + b"\r\n0\r\n\r\n",
    b"/binary-0x16": b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n\x16\x03\x01\x00\x10x",
    b"/empty": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"/close-delimited": b"HTTP/1.0 200 OK\r\n\r\nuntil close",
}


@pytest.mark.parametrize("path", list(ORDINARY))
def test_ordinary_http_is_byte_identical_to_stock(start_server, mitmdump, path: bytes) -> None:
    stock, with_addon = stock_and_addon(start_server, mitmdump, lambda h: ORDINARY[path], keep_alive=False)
    request = b"GET %s HTTP/1.1\r\nHost: up\r\nConnection: close\r\n\r\n" % path
    a = exchange(("127.0.0.1", stock), request, TIMEOUT)
    b = exchange(("127.0.0.1", with_addon), request, TIMEOUT)
    assert a.raw and a.raw == b.raw


def test_a_huge_streamed_body_passes_untouched(start_server, mitmdump) -> None:
    size = 64 * 1024 * 1024
    block = bytes(range(256)) * 4096  # 1 MiB; starts with 0x00 0x01 ...
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size
    origin = start_server(ScriptedServer(lambda h: [head, *([block] * (size // len(block)))], gap=0, keep_alive=False))
    args, (port,) = reverse_modes([f"http://127.0.0.1:{origin.port}"])
    mitmdump([*args, "--set", "stream_large_bodies=1m", "--set", "esrs_rewrite=true"])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/huge")
    response = conn.getresponse()
    digest, received = hashlib.sha256(), 0
    while chunk := response.read(1 << 20):
        digest.update(chunk)
        received += len(chunk)
    conn.close()
    assert response.status == 200 and "X-ESRS-Fix" not in response.headers
    assert received == size and digest.hexdigest() == hashlib.sha256(block * (size // len(block))).hexdigest()


def test_hundreds_of_mixed_flows_each_get_their_own_answer(start_server, mitmdump, esrs) -> None:
    """300 requests on 30 keep-alive client connections, a third stray-and-close, a third stray-and-open."""
    echo = start_server(
        ScriptedServer(lambda h: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(h.split()[1]), h.split()[1]))
    )
    closing, keeping = esrs(servers.Plaintext.ALERT), esrs(servers.Plaintext.ALERT_KEEP_OPEN)
    targets = [f"http://127.0.0.1:{u.port}" for u in (echo, closing, keeping)]
    args, ports = reverse_modes(targets)
    mitmdump([*args, "--set", "esrs_rewrite=true", "--set", f"esrs_filter=~u :{keeping.port}/"], listeners=3)
    failures: list[str] = []

    def client(n: int) -> None:
        conns = [http.client.HTTPConnection("127.0.0.1", p, timeout=TIMEOUT) for p in ports]
        try:
            for i in range(10):
                kind = (n + i) % 3
                path = f"/c{n}-r{i}"
                conns[kind].request("GET", path)
                response = conns[kind].getresponse()
                body = response.read()
                label = response.headers.get("X-ESRS-Fix")
                ok = (
                    (response.status, body, label) == (200, path.encode(), None)
                    if kind == 0
                    else (response.status, label) == (502, f"detected; {SUMMARY}")
                    if kind == 1
                    else (response.status, label) == (200, f"synthetic 200; {SUMMARY}")
                )
                if not ok:
                    failures.append(f"{path} via {kind}: {response.status} {label} {body[:60]!r}")
        except Exception as e:
            failures.append(f"client {n}: {type(e).__name__}: {e}")
        finally:
            for c in conns:
                c.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert failures == []


FAULT_MISSING_INTERNAL = """
# Simulates a mitmproxy release that moved an internal name: stock mitmproxy keeps its own reference.
from mitmproxy.proxy.layers.http import _base
del _base.ReceiveHttp
"""

FAULT_DECODER_RAISES = """
# Simulates a bug in the addon's hot path that surfaces only in traffic: the decoder works for the behaviour
# check at install (its first call), then raises on every call.
from stray_tls.core import records

calls = []
decode = records.decode

def broken(data):
    calls.append(1)
    if len(calls) > 1:
        raise RuntimeError("simulated decoder bug")
    return decode(data)

records.decode = broken
"""

FAULT_DECODER_BROKEN_AT_INSTALL = """
# Simulates a mitmproxy or addon change that breaks the early path before any traffic: the decoder always raises.
from stray_tls.core import records

def broken(data):
    raise RuntimeError("simulated decoder bug")

records.decode = broken
"""


def run_with_fault(tmp_path: Path, fault: str, start_server, esrs) -> tuple[str, list[tuple[int | None, str | None]]]:
    from stray_tls.lab.mitm import Mitmdump
    from stray_tls.launch import script_path

    script = tmp_path / "fault.py"
    script.write_text(fault)
    upstream = esrs(servers.Plaintext.ALERT)
    clean = start_server(ScriptedServer(lambda h: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    args, (p_stray, p_clean) = reverse_modes([f"http://127.0.0.1:{upstream.port}", f"http://127.0.0.1:{clean.port}"])
    m = Mitmdump(["-s", str(script), "-s", str(script_path()), *args], tmp_path / "fault.log", addon=False, listeners=2)
    with m:
        answers = [get(p_stray)[:2], get(p_stray)[:2], get(p_clean)[:2]]
        return m.log(), answers


def test_missing_internals_warn_once_and_detection_goes_on(tmp_path, start_server, esrs) -> None:
    log, answers = run_with_fault(tmp_path, FAULT_MISSING_INTERNAL, start_server, esrs)
    assert log.count("early detection is off") == 1 and "ReceiveHttp" in log
    assert answers[0] == (502, None) and answers[1] == (502, None)  # mitmproxy's own 502s
    assert answers[2] == (200, None)
    assert log.count(f"{SUMMARY} [tls_records") == 2  # still detected, through the error hook


def test_an_exception_on_the_hot_path_is_logged_once_and_the_flow_goes_on(tmp_path, start_server, esrs) -> None:
    log, answers = run_with_fault(tmp_path, FAULT_DECODER_RAISES, start_server, esrs)
    assert log.count("early detection failed (RuntimeError: simulated decoder bug)") == 1
    assert answers == [(502, None), (502, None), (200, None)]  # as stock mitmproxy: its own 502s, no label


def test_a_behaviour_check_that_fails_at_install_keeps_early_detection_off(tmp_path, start_server, esrs) -> None:
    log, answers = run_with_fault(tmp_path, FAULT_DECODER_BROKEN_AT_INSTALL, start_server, esrs)
    assert log.count("early detection is off") == 1
    assert "does not behave as early detection expects (RuntimeError: simulated decoder bug)" in log
    assert "early detection failed" not in log  # the check speaks through the one warning, not an error line
    assert answers == [(502, None), (502, None), (200, None)]  # mitmproxy's own 502s; the proxy goes on
