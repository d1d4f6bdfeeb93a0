"""`esrs-fix pcap` on captures the tests write themselves (dpkt), including damaged ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("dpkt")

from stray_tls import capture
from stray_tls.findings import Kind
from stray_tls.lab.servers import ALERT_TLS10, NGINX_400_BODY
from tests.capgen import Conversation, write_capture

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
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%s" % (len(NGINX_400_BODY), NGINX_400_BODY),
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
