"""`esrs-fix pcap` on captures the tests write themselves (dpkt), including damaged ones."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("dpkt")

from stray_tls.core.findings import Kind
from stray_tls.fieldkit import capture, results, streams
from stray_tls.lab.servers import ALERT_TLS10, NGINX_400_BODY
from tests.capgen import LINKS, Conversation, frames, write_capture

REQ = b"GET https://esrs.example:443/ HTTP/1.1\r\nHost: esrs.example:443\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
PROXY = ("10.0.0.1", 8080)


def conversations() -> list[Conversation]:
    """One conversation per face, ten capture seconds apart, in the order of EXPECTED."""
    made = [
        Conversation(("10.0.0.5", 40001), PROXY, [(REQ, OK)]),  # clean
        Conversation(("10.0.0.5", 40002), PROXY, [(REQ, ALERT_TLS10)]),  # the field report
        # an alert + close_notify split into 3-byte segments, delivered out of order, with a retransmission
        Conversation(
            ("10.0.0.6", 40003),
            PROXY,
            [(REQ, ALERT_TLS10 + bytes.fromhex("15 03 01 00 02 01 00"))],
            segment=3,
            swap_segments=True,
            retransmit=True,
        ),
        Conversation(("10.0.0.7", 40004), PROXY, [(REQ, b"")]),  # silent close
        Conversation(
            ("10.0.0.8", 40005),
            PROXY,
            [
                (
                    REQ,
                    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(NGINX_400_BODY), NGINX_400_BODY),
                )
            ],
        ),
        # keep-alive: the first request is fine, the second meets the alert
        Conversation(("10.0.0.9", 40006), PROXY, [(REQ, OK), (REQ.replace(b":443", b":8443"), ALERT_TLS10)]),
        Conversation(("fd00::5", 40007), ("fd00::1", 8080), [(REQ, ALERT_TLS10)]),  # IPv6
        # an HTTP head, then the alert as the body
        Conversation(
            ("10.0.0.10", 40008), PROXY, [(REQ, b"HTTP/1.0 200 OK\r\nContent-Length: 7\r\n\r\n" + ALERT_TLS10)]
        ),
        # begins like a record, never completes
        Conversation(("10.0.0.11", 40009), PROXY, [(REQ, ALERT_TLS10[:4])]),
    ]
    for n, c in enumerate(made):
        c.start += 10 * n
    return made


EXPECTED = [
    ("10.0.0.5:40002", Kind.TLS_RECORDS, "TLS alert: fatal unexpected_message (10), record version TLS 1.0"),
    (
        "10.0.0.6:40003",
        Kind.TLS_RECORDS,
        "TLS alert: fatal unexpected_message (10), record version TLS 1.0; "
        "TLS alert: warning close_notify (0), record version TLS 1.0",
    ),
    ("10.0.0.7:40004", Kind.SILENT_CLOSE, "upstream closed the connection without answering"),
    ("10.0.0.8:40005", Kind.PLAIN_HTTP_400, 'HTTP 400 from nginx: "The plain HTTP request was sent to HTTPS port"'),
    ("10.0.0.9:40006", Kind.TLS_RECORDS, "TLS alert: fatal unexpected_message (10), record version TLS 1.0"),
    ("[fd00::5]:40007", Kind.TLS_RECORDS, "TLS alert: fatal unexpected_message (10), record version TLS 1.0"),
    ("10.0.0.10:40008", Kind.TLS_IN_BODY, "TLS alert: fatal unexpected_message (10), record version TLS 1.0"),
    ("10.0.0.11:40009", Kind.TLS_INCOMPLETE, "incomplete TLS record: 15 03 01 00 (4 of 5 bytes)"),
]


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_finds_every_face_and_nothing_else(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"field.{fmt}"
    write_capture(path, conversations(), fmt)
    result = capture.scan(path)
    assert result.damaged == ""
    assert result.tcp_streams == 9 and result.requests == 10
    got = [(e.client, e.finding.kind, e.finding.summary) for e in result.exchanges]
    assert got == EXPECTED
    keep_alive = next(e for e in result.exchanges if e.client == "10.0.0.9:40006")
    assert keep_alive.request_line == "GET https://esrs.example:8443/ HTTP/1.1" and keep_alive.server == "10.0.0.1:8080"
    assert result.exchanges[0].finding.raw == ALERT_TLS10


def test_truncated_capture_reports_what_was_read(tmp_path: Path) -> None:
    path = tmp_path / "cut.pcap"
    write_capture(path, conversations()[:3])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 30])  # cut inside the last packets
    p = subprocess.run(
        [sys.executable, "-m", "stray_tls.main", "pcap", "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 3, p.stderr
    assert "the capture is truncated" in p.stderr and "Traceback" not in p.stderr
    out = json.loads(p.stdout)
    assert out["damaged"] and [e["client"] for e in out["exchanges"]][:1] == ["10.0.0.5:40002"]


def test_not_a_capture_and_missing_file(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("15 03 01 00 02 02 0a\n")
    for target, words in ((junk, "not a pcap or pcapng file"), (tmp_path / "missing.pcap", "cannot open")):
        p = subprocess.run(
            [sys.executable, "-m", "stray_tls.main", "pcap", str(target)], capture_output=True, text=True, timeout=60
        )
        assert p.returncode == 2 and words in p.stderr and "Traceback" not in p.stderr


def test_cli_text_output(tmp_path: Path) -> None:
    path = tmp_path / "one.pcap"
    write_capture(path, conversations()[1:2])
    p = subprocess.run(
        [sys.executable, "-m", "stray_tls.main", "pcap", str(path)], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0
    lines = p.stdout.splitlines()
    assert lines[0].endswith("10.0.0.5:40002 -> 10.0.0.1:8080  'GET https://esrs.example:443/ HTTP/1.1'")
    assert lines[0].startswith("2017-03-20T")
    assert (
        "TLS alert: fatal unexpected_message (10), record version TLS 1.0  [tls_records, confidence high]" in lines[1]
    )
    assert lines[2] == "    raw: 15 03 01 00 02 02 0a"
    assert (
        lines[-1] == "7 packets, 1 TCP streams, 1 HTTP requests, 1 answered by TLS or a plain-HTTP-to-HTTPS complaint"
    )


# -- several requests on one connection: keep-alive and pipelining

CLOSE_NOTIFY = bytes.fromhex("15 03 01 00 02 01 00")
ALERT_SUMMARY = "TLS alert: fatal unexpected_message (10), record version TLS 1.0"


def request(path: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} https://esrs.example:443{path} HTTP/1.1\r\nHost: esrs.example:443\r\n{extra}\r\n".encode()


def line(req: bytes) -> str:
    return req.split(b"\r\n", 1)[0].decode()


def answer(status: str, body: bytes = b"", headers: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\n{headers}Content-Length: {len(body)}\r\n\r\n".encode() + body


def scan_one(tmp_path: Path, conversation: Conversation, link: str = "ethernet") -> results.ScanResult:
    path = tmp_path / f"one-{link}.pcap"
    write_capture(path, [conversation], link=link)
    result = capture.scan(path)
    assert result.damaged == "" and result.tcp_streams == 1
    return result


def test_407_then_the_alert_on_one_keep_alive_connection(tmp_path: Path) -> None:
    first = request("/", extra="Proxy-Connection: keep-alive\r\n")
    second = request("/", extra="Proxy-Authorization: Basic ZXNyczpzZWNyZXQ=\r\n")
    page = b"<html><body>" + b"Proxy Authentication Required. " * 100 + b"</body></html>"  # 3 kB: 3 segments
    denied = answer("407 Proxy Authentication Required", page, 'Proxy-Authenticate: Basic realm="proxy"\r\n')
    conversation = Conversation(("10.0.0.5", 41001), PROXY, [(first, denied), (second, ALERT_TLS10)])
    result = scan_one(tmp_path, conversation)
    assert result.requests == 2
    [found] = result.exchanges
    assert (found.finding.kind, found.finding.summary) == (Kind.TLS_RECORDS, ALERT_SUMMARY)
    asked_again = next(t for t, frame in frames(conversation) if second in frame)
    assert found.time == pytest.approx(asked_again, abs=1e-5) and found.request_line == line(second)


def test_three_pipelined_requests_the_second_answered_by_the_alert(tmp_path: Path) -> None:
    asks = [request(f"/{n}") for n in (1, 2, 3)]
    conversation = Conversation(
        ("10.0.0.5", 41002), PROXY, [(asks[0], OK), (asks[1], ALERT_TLS10), (asks[2], b"")], pipeline=3
    )
    result = scan_one(tmp_path, conversation)
    assert result.requests == 3
    assert [(e.request_line, e.finding.summary) for e in result.exchanges] == [(line(asks[1]), ALERT_SUMMARY)]


def test_a_chunked_200_then_the_alert(tmp_path: Path) -> None:
    tricky = b"HTTP/1.1 200 OK\r\n\r\n\x15\x03\x01\x00\x02"  # chunk data that looks like a head, then TLS
    body = b"5\r\nhello\r\n%x;ext=1\r\n%s\r\n0\r\nX-Trailer: 1\r\n\r\n" % (len(tricky), tricky)
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    asks = [request("/chunked"), request("/next")]
    conversation = Conversation(("10.0.0.5", 41003), PROXY, [(asks[0], chunked), (asks[1], ALERT_TLS10)], pipeline=2)
    result = scan_one(tmp_path, conversation)
    assert result.requests == 2
    assert [(e.request_line, e.finding.summary) for e in result.exchanges] == [(line(asks[1]), ALERT_SUMMARY)]


def test_a_head_answered_without_body_then_the_alert(tmp_path: Path) -> None:
    asks = [request("/", method="HEAD"), request("/next")]
    no_body = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"  # the length of the body a GET would get
    conversation = Conversation(("10.0.0.5", 41004), PROXY, [(asks[0], no_body), (asks[1], ALERT_TLS10)], pipeline=2)
    result = scan_one(tmp_path, conversation)
    assert result.requests == 2
    assert [(e.request_line, e.finding.summary) for e in result.exchanges] == [(line(asks[1]), ALERT_SUMMARY)]


def test_100_continue_then_200_then_the_alert(tmp_path: Path) -> None:
    post = request("/upload", method="POST", extra="Expect: 100-continue\r\nContent-Length: 5\r\n")
    then = request("/next")
    conversation = Conversation(
        ("10.0.0.5", 41005),
        PROXY,
        # the client sends the body and, pipelined behind it, the next request; the 200 and the alert come together
        [(post, b"HTTP/1.1 100 Continue\r\n\r\n"), (b"hello" + then, answer("200 OK", b"ok") + ALERT_TLS10)],
    )
    result = scan_one(tmp_path, conversation)
    assert result.requests == 2
    assert [(e.request_line, e.finding.summary) for e in result.exchanges] == [(line(then), ALERT_SUMMARY)]


def test_tls_inside_a_connect_tunnel_is_no_finding(tmp_path: Path) -> None:
    connect = b"CONNECT esrs.example:443 HTTP/1.1\r\nHost: esrs.example:443\r\n\r\n"
    client_hello = bytes.fromhex("16 03 01 00 05 01 00 00 01 00")
    server_hello = bytes.fromhex("16 03 03 00 05 02 00 00 01 00")
    conversation = Conversation(
        ("10.0.0.5", 41006),
        PROXY,
        [(connect, b"HTTP/1.1 200 Connection established\r\n\r\n"), (client_hello, server_hello + ALERT_TLS10)],
    )
    result = scan_one(tmp_path, conversation)
    assert result.requests == 1 and result.exchanges == []


def test_requests_beyond_the_outstanding_bound_are_counted_and_still_paired(tmp_path: Path) -> None:
    n = streams.MAX_OUTSTANDING + 6
    asks = [request(f"/{i}") for i in range(n)]
    turns = [(ask, OK) for ask in asks[:-1]] + [(asks[-1], ALERT_TLS10)]
    conversation = Conversation(("10.0.0.5", 41007), PROXY, turns, pipeline=n)
    result = scan_one(tmp_path, conversation)
    assert result.requests == n and result.requests_unkept == 6
    assert [(e.request_line, e.finding.summary) for e in result.exchanges] == [(streams.UNKEPT_LINE, ALERT_SUMMARY)]


@pytest.mark.parametrize("link", sorted(set(LINKS) - {"ipv4", "ipv6"}))
def test_every_link_type_read_from_raw_bytes(tmp_path: Path, link: str) -> None:
    path = tmp_path / f"{link}.pcap"
    write_capture(path, conversations()[:3] + conversations()[6:7], link=link)  # IPv4 and IPv6
    result = capture.scan(path)
    assert result.damaged == "" and result.tcp_streams == 4 and result.requests == 4
    assert [(e.client, e.finding.kind, e.finding.summary) for e in result.exchanges] == [
        EXPECTED[0],
        EXPECTED[1],
        EXPECTED[5],
    ]


@pytest.mark.parametrize(("link", "made", "expected"), [("ipv4", slice(0, 3), [0, 1]), ("ipv6", slice(6, 7), [5])])
def test_the_link_types_of_one_ip_version(tmp_path: Path, link: str, made: slice, expected: list[int]) -> None:
    path = tmp_path / f"{link}.pcap"
    write_capture(path, conversations()[made], link=link)
    result = capture.scan(path)
    assert result.damaged == ""
    assert [(e.client, e.finding.kind, e.finding.summary) for e in result.exchanges] == [EXPECTED[i] for i in expected]


# -- reassembly: however the bytes are cut into segments, the findings are the same


def keep_alive_and_pipelined(pipeline: int) -> Conversation:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nsome\r\n0\r\n\r\n"
    denied = answer("407 Proxy Authentication Required", b"<html>" + b"x" * 600 + b"</html>")
    return Conversation(
        ("10.0.0.5", 41010),
        PROXY,
        [
            (request("/1"), chunked),
            (request("/2", method="POST", extra="Content-Length: 11\r\n") + b"hello world", denied),
            (request("/3", method="HEAD"), b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"),
            (request("/4"), ALERT_TLS10 + CLOSE_NOTIFY),
        ],
        pipeline=pipeline,
    )


def findings_of(result: results.ScanResult) -> list[tuple[str, str, Kind, str, bytes]]:
    return [(e.client, e.request_line, e.finding.kind, e.finding.summary, e.finding.raw) for e in result.exchanges]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), pipeline=st.integers(1, 4))
def test_findings_do_not_depend_on_how_the_stream_is_cut(tmp_path: Path, data: st.DataObject, pipeline: int) -> None:
    whole = keep_alive_and_pipelined(pipeline)
    whole.segment = 1 << 16
    expected = findings_of(scan_one(tmp_path, whole))
    assert [(e[1], e[3]) for e in expected] == [
        (line(request("/4")), ALERT_SUMMARY + "; TLS alert: warning close_notify (0), record version TLS 1.0")
    ]

    def cut(side: int, payload: bytes) -> list[tuple[int, bytes]]:
        if len(payload) < 2:
            return [(0, payload)]
        points = sorted(data.draw(st.sets(st.integers(1, len(payload) - 1), max_size=8), label="cuts"))
        bounds = [0, *points, len(payload)]
        segments = [(a, payload[a:b]) for a, b in itertools.pairwise(bounds)]
        if len(segments) > 1 and data.draw(st.booleans(), label="swap"):
            i = data.draw(st.integers(0, len(segments) - 2), label="swapped")
            segments[i], segments[i + 1] = segments[i + 1], segments[i]
        if data.draw(st.booleans(), label="retransmit"):  # a copy of a stretch, late and not aligned to the cuts
            a = data.draw(st.integers(0, len(payload) - 1), label="from")
            b = data.draw(st.integers(a + 1, len(payload)), label="to")
            segments.insert(data.draw(st.integers(0, len(segments)), label="when"), (a, payload[a:b]))
        return segments

    split = keep_alive_and_pipelined(pipeline)
    split.segmenter = cut
    split.fin_early = data.draw(st.integers(0, 12), label="segments the server's FIN overtakes")
    assert findings_of(scan_one(tmp_path, split)) == expected


def test_cli_says_how_many_request_lines_were_not_kept(tmp_path: Path) -> None:
    n = streams.MAX_OUTSTANDING + 3
    asks = [request(f"/{i}") for i in range(n)]
    path = tmp_path / "deep.pcap"
    write_capture(path, [Conversation(("10.0.0.5", 41008), PROXY, [(a, OK) for a in asks], pipeline=n)])
    cli = [sys.executable, "-m", "stray_tls.main", "pcap"]
    out = json.loads(subprocess.run([*cli, "--json", str(path)], capture_output=True, text=True, timeout=60).stdout)
    assert (out["http_requests"], out["requests_unkept"]) == (n, 3)
    text = subprocess.run([*cli, str(path)], capture_output=True, text=True, timeout=60).stdout
    assert f"3 requests waited behind {streams.MAX_OUTSTANDING} others on one connection" in text


# -- squid's HTTP/0.9 wrapping, missing segments, answers the capture never saw

WRAPPED = "HTTP/1.1 200 OK\r\nX-Transformed-From: HTTP/0.9\r\nServer: squid/5.7\r\n"


def test_squids_wrapping_is_named_as_the_addon_and_check_name_it(tmp_path: Path) -> None:
    whole = answer("200 OK", ALERT_TLS10, WRAPPED.split("\r\n", 1)[1])
    with_partial = answer("200 OK", ALERT_TLS10 + b"\x15\x03", WRAPPED.split("\r\n", 1)[1])
    conversation = Conversation(
        ("10.0.0.5", 41020), PROXY, [(request("/1"), whole), (request("/2"), with_partial)], pipeline=2
    )
    result = scan_one(tmp_path, conversation)
    assert [(e.request_line, e.finding.kind, e.finding.summary) for e in result.exchanges] == [
        (line(request("/1")), Kind.TLS_WRAPPED_HTTP09, ALERT_SUMMARY),
        (line(request("/2")), Kind.TLS_WRAPPED_HTTP09, ALERT_SUMMARY),
    ]


def drop(side: int, which: int) -> Callable[[int, bytes], list[tuple[int, bytes]]]:
    """A segmenter that loses segment `which` of each payload of `side` (1000-byte segments)."""

    def cut(s: int, payload: bytes) -> list[tuple[int, bytes]]:
        segments = [(i, payload[i : i + 1000]) for i in range(0, len(payload), 1000)]
        if s == side and len(segments) > which:
            del segments[which]
        return segments

    return cut


def test_a_segment_lost_inside_a_counted_body_loses_no_later_answer(tmp_path: Path) -> None:
    big = answer("200 OK", b"x" * 10_000)
    conversation = Conversation(
        ("10.0.0.5", 41021), PROXY, [(request("/1"), big), (request("/2"), ALERT_TLS10)], segmenter=drop(1, 3)
    )
    result = scan_one(tmp_path, conversation)
    assert [(e.request_line, e.finding.summary) for e in result.exchanges] == [(line(request("/2")), ALERT_SUMMARY)]
    assert (result.gaps, result.gaps_unread) == (1, 0)


def test_a_segment_lost_inside_a_head_is_counted_as_unread(tmp_path: Path) -> None:
    long_head = answer("200 OK", b"ok", "X-Padding: " + "p" * 2500 + "\r\n")
    conversation = Conversation(
        ("10.0.0.5", 41022), PROXY, [(request("/1"), long_head), (request("/2"), ALERT_TLS10)], segmenter=drop(1, 1)
    )
    result = scan_one(tmp_path, conversation)
    assert result.exchanges == [] and (result.gaps, result.gaps_unread) == (1, 1)
    path = tmp_path / "gap.pcap"
    write_capture(path, [conversation])
    cli = [sys.executable, "-m", "stray_tls.main", "pcap"]
    out = json.loads(subprocess.run([*cli, "--json", str(path)], capture_output=True, text=True, timeout=60).stdout)
    assert (out["gaps"], out["gaps_unread"]) == (1, 1)
    text = subprocess.run([*cli, str(path)], capture_output=True, text=True, timeout=60).stdout
    assert "1 gaps in the capture" in text and "answers there may be missing" in text


def test_a_request_the_capture_saw_no_answer_to_is_no_silent_close(tmp_path: Path) -> None:
    cut_short = Conversation(("10.0.0.5", 41023), PROXY, [(request("/1"), b"")], server_fin=False)
    result = scan_one(tmp_path, cut_short)
    assert result.exchanges == [] and result.requests_unanswered == 1
    closed = Conversation(("10.0.0.5", 41024), PROXY, [(request("/1"), b"")])  # the server's FIN, no byte before
    assert [e.finding.kind for e in scan_one(tmp_path, closed).exchanges] == [Kind.SILENT_CLOSE]


@pytest.mark.parametrize("keep", [28, 100, 5000])
def test_a_cut_pcapng_says_why_in_words(tmp_path: Path, keep: int) -> None:
    path = tmp_path / "cut.pcapng"
    write_capture(path, conversations(), "pcapng")
    path.write_bytes(path.read_bytes()[:keep])
    p = subprocess.run(
        [sys.executable, "-m", "stray_tls.main", "pcap", str(path)], capture_output=True, text=True, timeout=60
    )
    assert p.returncode in (2, 3) and "Traceback" not in p.stderr
    message = p.stderr.strip().splitlines()[-1]
    assert "()" not in message and not message.endswith(":"), message


# -- HTTP framing, each rule on its own (a review found each could be broken without a test failing)


def test_two_raw_alerts_on_one_connection_are_two_answers(tmp_path: Path) -> None:
    # a raw TLS answer has no end of its own: it ends when the client asks again
    asks = [request("/1"), request("/2")]
    conversation = Conversation(("10.0.0.5", 41030), PROXY, [(asks[0], ALERT_TLS10), (asks[1], ALERT_TLS10)])
    result = scan_one(tmp_path, conversation)
    assert [(e.request_line, e.finding.summary) for e in result.exchanges] == [
        (line(asks[0]), ALERT_SUMMARY),
        (line(asks[1]), ALERT_SUMMARY),
    ]


def test_after_101_switching_protocols_nothing_is_http(tmp_path: Path) -> None:
    upgrade = request("/ws", extra="Connection: Upgrade\r\nUpgrade: websocket\r\n")
    switched = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    conversation = Conversation(("10.0.0.5", 41031), PROXY, [(upgrade, switched), (b"\x81\x02hi", ALERT_TLS10)])
    result = scan_one(tmp_path, conversation)
    assert result.requests == 1 and result.exchanges == []


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
def test_204_and_304_have_no_body_whatever_their_length_says(tmp_path: Path, status: str) -> None:
    asks = [request("/1"), request("/2")]
    no_body = f"HTTP/1.1 {status}\r\nContent-Length: 5000\r\n\r\n".encode()
    conversation = Conversation(("10.0.0.5", 41032), PROXY, [(asks[0], no_body), (asks[1], ALERT_TLS10)], pipeline=2)
    result = scan_one(tmp_path, conversation)
    assert [(e.request_line, e.finding.summary) for e in result.exchanges] == [(line(asks[1]), ALERT_SUMMARY)]


def test_a_chunked_request_body_is_stepped_over(tmp_path: Path) -> None:
    post = request("/up", method="POST", extra="Transfer-Encoding: chunked\r\n")
    body = b"4\r\nGET \r\n1a\r\n" + b"x" * 26 + b"\r\n0\r\n\r\n"  # chunk data that looks like a request
    asks = [post + body, request("/next")]
    conversation = Conversation(("10.0.0.5", 41033), PROXY, [(asks[0], OK), (asks[1], ALERT_TLS10)], pipeline=2)
    result = scan_one(tmp_path, conversation)
    assert result.requests == 2
    assert [(e.request_line, e.finding.summary) for e in result.exchanges] == [(line(asks[1]), ALERT_SUMMARY)]


def test_a_400_page_whose_phrase_comes_in_a_later_segment(tmp_path: Path) -> None:
    page = answer("400 Bad Request", NGINX_400_BODY, "Server: nginx\r\nContent-Type: text/html\r\n")
    conversation = Conversation(("10.0.0.5", 41034), PROXY, [(request("/"), page)], segment=40)
    [found] = scan_one(tmp_path, conversation).exchanges
    assert found.finding.kind is Kind.PLAIN_HTTP_400


def test_more_segments_out_of_order_than_kept_end_in_a_counted_gap(tmp_path: Path) -> None:
    big = answer("200 OK", b"x" * 100_000) + ALERT_TLS10

    def backwards(side: int, payload: bytes) -> list[tuple[int, bytes]]:
        segments = [(i, payload[i : i + 1000]) for i in range(0, len(payload), 1000)]
        return segments[::-1] if side == 1 else segments

    conversation = Conversation(("10.0.0.5", 41035), PROXY, [(request("/"), big)], segmenter=backwards)
    result = scan_one(tmp_path, conversation)
    # the head came last and was stepped over: nothing of this answer can be judged, and the scan says so
    assert result.exchanges == [] and result.gaps >= 1 and result.gaps_unread == 1


# -- FIN, SYN and reused address pairs: where each stands in the stream (compared with tshark's reading)


def tshark_frames(path: Path) -> list[tuple[int, int, int, int, bytes]]:
    """(frame number, tcp.stream, source port, TCP flags, payload) of each TCP frame, as tshark reads the file."""
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed (.ci/run installs it)")
    fields = ("frame.number", "tcp.stream", "tcp.srcport", "tcp.flags", "tcp.payload")
    p = subprocess.run(
        [tshark, "-r", str(path), "-T", "fields", "-E", "separator=/t", *(a for f in fields for a in ("-e", f))],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = [line.split("\t") for line in p.stdout.splitlines()]
    return [
        (int(n), int(s), int(port), int(flags, 16), bytes.fromhex(data.replace(":", "")))
        for n, s, port, flags, data in rows
        if s
    ]


def tshark_follow(path: Path, stream: int) -> tuple[bytes, bytes]:
    """The client's and the server's bytes of `tcp.stream eq stream` as tshark's Follow TCP Stream reassembles them
    (in sequence order: its reading of where each byte stands)."""
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed (.ci/run installs it)")
    p = subprocess.run(
        [tshark, "-r", str(path), "-q", "-z", f"follow,tcp,hex,{stream}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    sides = [bytearray(), bytearray()]
    for text in p.stdout.splitlines():
        m = re.match(r"(\t?)[0-9A-F]{8}  ((?:[0-9a-f]{2} {1,2}){1,16})", text)
        if m:
            sides[bool(m.group(1))] += bytes.fromhex(m.group(2))
    return bytes(sides[0]), bytes(sides[1])


def first_frame_with(rows: list[tuple[int, int, int, int, bytes]], port: int, data: bytes) -> tuple[int, int]:
    """(frame, tcp.stream) of the first frame from `port` whose payload begins with `data`."""
    return next((n, s) for n, s, p, _, payload in rows if p == port and payload.startswith(data))


def test_a_server_fin_captured_before_the_data_it_follows_waits_for_it(tmp_path: Path) -> None:
    # the alert's last segment comes after the FIN: tshark puts the FIN after it; so must the reader
    for segment in (1400, 3):
        path = tmp_path / f"fin-early-{segment}.pcap"
        c = Conversation(("10.0.0.5", 41040), PROXY, [(REQ, ALERT_TLS10)], segment=segment, fin_early=1)
        write_capture(path, [c])
        [found] = capture.scan(path).exchanges
        assert (found.finding.kind, found.finding.summary) == (Kind.TLS_RECORDS, ALERT_SUMMARY)
        assert tshark_follow(path, found.tcp_stream) == (REQ, found.finding.raw) == (REQ, ALERT_TLS10)
        rows = tshark_frames(path)
        assert found.frame == first_frame_with(rows, PROXY[1], ALERT_TLS10[:segment])[0]
        fin = next(n for n, _, port, flags, _ in rows if port == PROXY[1] and flags & 0x01)
        assert fin < max(n for n, _, port, _, payload in rows if port == PROXY[1] and payload)  # captured before it


def test_a_retransmission_after_the_close_begins_no_stream(tmp_path: Path) -> None:
    # the alert, its FIN, then the alert again (a retransmission the capture saw after the FIN took effect)
    c = Conversation(("10.0.0.5", 41042), PROXY, [(REQ, ALERT_TLS10)], retransmit=True, fin_early=1)
    result = scan_one(tmp_path, c)  # one TCP stream, as tshark counts them
    assert [e.finding.summary for e in result.exchanges] == [ALERT_SUMMARY]
    path = tmp_path / "late.pcap"
    write_capture(path, [c])
    assert {stream for _, stream, _, _, _ in tshark_frames(path)} == {0}


def test_a_fin_whose_data_the_capture_lost_is_a_gap_not_a_silent_close(tmp_path: Path) -> None:
    lost = Conversation(("10.0.0.5", 41041), PROXY, [(REQ, ALERT_TLS10)], segmenter=drop(1, 0))
    result = scan_one(tmp_path, lost)
    assert result.exchanges == [] and (result.gaps, result.gaps_unread) == (1, 1)


REUSED = ("10.0.0.5", 41050)
#: an answer whose body the first connection never finished (it vanished: no FIN or RST in the capture)
UNFINISHED = answer("200 OK", b"x" * 100_000)[:1500]


@pytest.mark.parametrize(
    ("first", "again"),
    [
        (Conversation(REUSED, PROXY, [(REQ, OK)]), {}),  # closed by FINs
        (Conversation(REUSED, PROXY, [(REQ, OK)], server_fin=False, client_rst=True), {}),  # reset by the client
        # neither: a new SYN, its numbers near the old ones (Linux derives them from the clock and the addresses)
        (Conversation(REUSED, PROXY, [(REQ, UNFINISHED)], server_fin=False), {"isn": (1000 + 2**20, 5000 + 2**21)}),
        (Conversation(REUSED, PROXY, [(REQ, UNFINISHED)], server_fin=False), {"handshake": False}),  # no SYN seen
    ],
    ids=["fin", "rst", "syn-without-close", "sequence-jump"],
)
def test_a_reused_address_pair_starts_afresh(tmp_path: Path, first: Conversation, again: dict[str, Any]) -> None:
    second = Conversation(REUSED, PROXY, [(REQ, ALERT_TLS10)], **{"isn": (3_000_000_000, 2_000_000_000), **again})
    second.start = first.start + 10
    path = tmp_path / "reused.pcap"
    write_capture(path, [first, second])
    result = capture.scan(path)
    [found] = result.exchanges
    assert (found.finding.kind, found.finding.summary) == (Kind.TLS_RECORDS, ALERT_SUMMARY)
    assert found.time > second.start and found.request_line == line(REQ)
    # the frame and tcp.stream tshark gives the alert; tshark's own reassembly of that stream ends with it
    rows = tshark_frames(path)
    assert (found.frame, found.tcp_stream) == first_frame_with(rows, PROXY[1], ALERT_TLS10)
    assert tshark_follow(path, found.tcp_stream)[1].endswith(found.finding.raw)
    assert found.tcp_stream == (0 if "handshake" in again else 1)  # without a SYN, Wireshark's stream goes on too


def test_a_fast_open_syn_carries_the_request(tmp_path: Path) -> None:
    c = Conversation(("10.0.0.5", 41060), PROXY, [(REQ, ALERT_TLS10), (request("/2"), OK)], syn_data=True)
    result = scan_one(tmp_path, c)
    assert result.requests == 2
    [found] = result.exchanges
    assert (found.request_line, found.finding.summary) == (line(REQ), ALERT_SUMMARY)
    path = tmp_path / "tfo.pcap"
    write_capture(path, [c])
    rows = tshark_frames(path)
    assert rows[0][3:] == (0x002, REQ)  # tshark, too, reads the request in the SYN
    assert tshark_follow(path, 0)[0] == REQ + request("/2")
    assert found.frame == first_frame_with(rows, PROXY[1], ALERT_TLS10)[0]
