"""`esrs-fix pcap`'s Wireshark coordinates (frame, tcp.stream) against tshark's own, on written and real captures.

The oracle does not ask tshark where an answer begins (that is what is under test): the scenario knows how far into
its connection each answer (or, with no answer, each request) begins; the n-th SYN of an address pair gives that
connection's initial sequence number, so the frame holding that byte, and its `tcp.stream`, are read from tshark's
per-frame table.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("dpkt")

from stray_tls.fieldkit import capture
from stray_tls.lab.servers import ALERT_TLS10, free_port
from tests.capgen import Conversation, frames
from tests.test_capture import OK, PROXY, REQ, conversations


@dataclass
class Row:
    number: int
    stream: int
    src: tuple[str, int]
    dst: tuple[str, int]
    seq: int  # raw
    size: int
    syn: bool


def tshark() -> str:
    path = shutil.which("tshark")
    if path is None:
        pytest.skip("tshark is not installed (.ci/run installs it)")
    return path


def tshark_rows(path: Path) -> list[Row]:
    fields = ["frame.number", "tcp.stream", "ip.src", "ipv6.src", "tcp.srcport", "ip.dst", "ipv6.dst", "tcp.dstport"]
    fields += ["tcp.seq_raw", "tcp.len", "tcp.flags.syn"]
    p = subprocess.run(
        [tshark(), "-r", str(path), "-T", "fields", "-E", "separator=/t", *(a for f in fields for a in ("-e", f))],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = []
    for text in p.stdout.splitlines():
        n, stream, src4, src6, sport, dst4, dst6, dport, seq, size, syn = text.split("\t")
        if stream:  # a TCP frame
            rows.append(
                Row(
                    int(n),
                    int(stream),
                    (src4 or src6, int(sport)),
                    (dst4 or dst6, int(dport)),
                    int(seq),
                    int(size),
                    syn in ("1", "True"),
                )
            )
    return rows


def frame_times(path: Path) -> dict[int, float]:
    """Each frame's capture time, as tshark reads it (seconds since the epoch)."""
    p = subprocess.run(
        [tshark(), "-r", str(path), "-T", "fields", "-e", "frame.number", "-e", "frame.time_epoch"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return {int(n): float(t) for n, t in (line.split("\t") for line in p.stdout.splitlines())}


def seconds(iso: str) -> float:
    return datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def where(
    rows: list[Row], sender: tuple[str, int], to: tuple[str, int], connection: int, offset: int
) -> tuple[int, int]:
    """(frame, tcp.stream) of the first frame `sender` sent to `to` holding the byte at `offset` of its data in the
    `connection`-th connection (0-based) between them: counted by `sender`'s SYNs (or SYN-ACKs), each of which sets
    the base of the frames after it."""
    syns = [r for r in rows if r.syn and (r.src, r.dst) == (sender, to)]
    syn = syns[connection]
    want = (syn.seq + 1 + offset) & 0xFFFFFFFF
    for r in rows:
        if r.number > syn.number and (r.src, r.dst) == (sender, to) and r.size and (want - r.seq) & 0xFFFFFFFF < r.size:
            return r.number, r.stream
    raise AssertionError(f"no frame from {sender} holds byte {offset} of connection {connection}")


def said(path: Path) -> list[dict]:
    """The exchanges as `esrs-fix pcap --json` reports them."""
    p = subprocess.run(
        [sys.executable, "-m", "stray_tls.main", "pcap", "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    return list(json.loads(p.stdout)["exchanges"])


def endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


# -- a written capture: the field's faces, a reused port pair (same and new ISN), frames that are not TCP


def _shift(frame: bytes, client: tuple[str, int], delta: int) -> bytes:
    """An Ethernet/IPv4 frame of `client`'s connection with the client's sequence numbers moved by `delta` (a new
    initial sequence number: the same port pair reused by a new connection)."""
    import dpkt

    eth = dpkt.ethernet.Ethernet(frame)
    ip, tcp = eth.data, eth.data.data
    if tcp.sport == client[1]:
        tcp.seq = (tcp.seq + delta) & 0xFFFFFFFF
    elif tcp.flags & dpkt.tcp.TH_ACK:
        tcp.ack = (tcp.ack + delta) & 0xFFFFFFFF
    tcp.sum = ip.sum = 0
    return bytes(eth)


def _not_tcp(n: int) -> bytes:
    """An Ethernet frame holding a UDP datagram: a frame Wireshark counts that belongs to no TCP stream."""
    return b"\x04" * 6 + b"\x02" * 6 + b"\x08\x00" + bytes.fromhex("45000020000000004011") + bytes(10) + bytes(n + 8)


def written_capture(path: Path) -> list[tuple[tuple[str, int], tuple[str, int], int, int, int]]:
    """Writes the capture; returns, in the order the exchanges are reported, what locates each: (sender, receiver,
    connection on that pair, offset of the answer's first byte in the sender's data, tcp_stream Wireshark gives)."""
    import dpkt

    field = conversations()
    reused = ("10.0.0.20", 41000)
    again = [Conversation(reused, PROXY, [(REQ, ALERT_TLS10)], start=1_490_001_000.0 + 10 * i) for i in range(3)]
    again[1].server_fin = False  # the reader still follows it when the new SYN comes
    out: list[tuple[float, bytes]] = []
    # a pure ACK of a connection whose start the capture missed: its own tcp.stream, no stream for the reader
    stray = Conversation(("10.0.0.30", 42000), PROXY, [(REQ, OK)], start=1_489_999_990.0)
    out.append(list(frames(stray))[2])
    # two pipelined answers, the second's first segment ahead of the first's last: held, then handed on later
    two = REQ.replace(b":443", b":8443")
    cut = len(OK) - 3

    def ahead(side: int, payload: bytes) -> list[tuple[int, bytes]]:
        if side == 0:
            return [(0, payload)]
        return [(0, payload[:cut]), (len(OK), payload[len(OK) :]), (cut, payload[cut : len(OK)])]

    held = Conversation(
        ("10.0.0.12", 40010), PROXY, [], script=[(0, REQ + two), (1, OK + ALERT_TLS10)], segmenter=ahead
    )
    held.start += 200
    for n, c in enumerate([*field, held]):
        out += list(frames(c))
        out.append((c.start + 5, _not_tcp(n)))
    for i, c in enumerate(again):  # the same numbers twice (a retransmitted SYN to Wireshark), then new ones
        out += [(ts, _shift(f, reused, 77_777) if i == 2 else f) for ts, f in frames(c)]
    with open(path, "wb") as f:
        writer = dpkt.pcap.Writer(f, linktype=1)
        for ts, frame in out:
            writer.writepkt(frame, ts=ts)
    server6 = ("fd00::1", 8080)
    ok = len(OK)
    return [
        (PROXY, ("10.0.0.5", 40002), 0, 0, 2),
        (PROXY, ("10.0.0.6", 40003), 0, 0, 3),  # answered out of order, with a retransmission
        (("10.0.0.7", 40004), PROXY, 0, 0, 4),  # silent close: the request's first frame
        (PROXY, ("10.0.0.8", 40005), 0, 0, 5),
        (PROXY, ("10.0.0.9", 40006), 0, ok, 6),  # keep-alive: the second answer
        (server6, ("fd00::5", 40007), 0, 0, 7),
        (PROXY, ("10.0.0.10", 40008), 0, 0, 8),
        (PROXY, ("10.0.0.11", 40009), 0, 0, 9),
        (PROXY, ("10.0.0.12", 40010), 0, ok, 10),  # the frame that carried it ahead, not the one that filled the gap
        (PROXY, reused, 0, 0, 11),
        (PROXY, reused, 1, 0, 11),  # the same numbers again: the same stream to Wireshark (a retransmitted SYN)
        (PROXY, reused, 2, 0, 12),  # new numbers: a new stream
    ]


def test_frames_and_streams_are_tsharks_on_a_written_capture(tmp_path: Path) -> None:
    path = tmp_path / "field.pcap"
    expected = written_capture(path)
    rows = tshark_rows(path)
    got = said(path)
    assert len(got) == len(expected)
    times = frame_times(path)
    for e, (sender, to, connection, offset, stream) in zip(got, expected, strict=True):
        assert (e["frame"], e["tcp_stream"]) == where(rows, sender, to, connection, offset), e
        assert e["tcp_stream"] == stream  # the scenario's own count: a stray ACK first, reuse with the same ISN
        # the answer's own time is its first frame's, as tshark reads it (the one that carried it ahead, when held)
        if e["kind"] == "silent_close":
            assert e["answer_time"] is None, e
        else:
            assert abs(seconds(e["answer_time"]) - times[e["frame"]]) < 1e-6, e
    # the text output names the same place, in words Wireshark takes
    p = subprocess.run(
        [sys.executable, "-m", "stray_tls.main", "pcap", str(path)], capture_output=True, text=True, timeout=120
    )
    first = got[0]
    assert (
        f"    wireshark: frame {first['frame']}  filter: tcp.stream eq {first['tcp_stream']}" in p.stdout.splitlines()
    )
    # the filter, pasted into tshark, selects that frame's stream
    picked = subprocess.run(
        [tshark(), "-r", str(path), "-Y", f"tcp.stream eq {first['tcp_stream']}", "-T", "fields", "-e", "frame.number"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    assert str(first["frame"]) in picked


def test_scan_result_carries_the_coordinates(tmp_path: Path) -> None:
    """The scan's own objects (not only the CLI's JSON): the stray ACK's pair took index 0."""
    path = tmp_path / "field.pcap"
    written_capture(path)
    result = capture.scan(path)
    assert [e.tcp_stream for e in result.exchanges][:2] == [2, 3]
    assert all(e.frame > 0 for e in result.exchanges)


# -- a real capture on loopback: tcpdump records a server and clients, one client port reused


def _tcpdump() -> str:
    """tcpdump (not tshark: dumpcap says it is capturing before its first packets are)."""
    path = shutil.which("tcpdump") or shutil.which("tcpdump", path="/usr/sbin:/sbin")
    if path is None:
        pytest.skip("tcpdump is not installed (.ci/run installs it)")
    if os.geteuid() != 0:
        pytest.skip("capturing on loopback needs root")
    return path


@contextlib.contextmanager
def recording(path: Path, port: int) -> Iterator[None]:
    """Packets to and from `port` on loopback, written to `path` while the block runs (at most 60 s).

    --immediate-mode: each packet as it comes (else the last ring-buffer block is lost at the stop); -Z root: write
    into the test's folder, which the user tcpdump drops to may not."""
    argv = [_tcpdump(), "-i", "lo", "-U", "--immediate-mode", "-Z", "root", "-w", str(path), f"tcp port {port}"]
    proc = subprocess.Popen(["timeout", "60", *argv], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        seen = proc.stderr.readline()
        if "listening on" not in seen:
            raise AssertionError(f"tcpdump did not start: {seen}")
        yield
        time.sleep(0.5)  # let the last packets reach the file
    finally:
        proc.send_signal(signal.SIGINT)  # timeout passes it on; tcpdump writes what it holds and ends
        proc.wait(timeout=30)


def serve(listener: socket.socket, answers: list[list[bytes | None]]) -> None:
    """The i-th connection gets answers[i], one per request; None: close without answering."""
    for script in answers:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            for answer in script:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                if answer is None:
                    break
                conn.sendall(answer)


def test_frames_and_streams_are_tsharks_on_a_real_loopback_capture(tmp_path: Path) -> None:
    tshark()
    port = free_port()
    path = tmp_path / "lo.pcap"
    two = REQ.replace(b":443", b":8443")
    answers: list[list[bytes | None]] = [[ALERT_TLS10], [OK, ALERT_TLS10], [None], [ALERT_TLS10], [ALERT_TLS10]]
    requests = [[REQ], [REQ, two], [REQ], [REQ], [REQ]]
    listener = socket.create_server(("127.0.0.1", port))
    server = threading.Thread(target=serve, args=(listener, answers), daemon=True)
    reused = free_port()
    with recording(path, port):
        server.start()
        for i, asks in enumerate(requests):
            s = socket.socket()
            s.settimeout(10)
            if i >= 3:  # the last two from one client port: the pair reused, after a reset (no TIME_WAIT)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", reused))
            s.connect(("127.0.0.1", port))
            for ask in asks:
                s.sendall(ask)
                time.sleep(0.05)
            with contextlib.suppress(OSError):
                while s.recv(4096):
                    pass
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        server.join(timeout=30)
    listener.close()
    rows = tshark_rows(path)
    got = said(path)
    server_end = ("127.0.0.1", port)
    assert [e["kind"] for e in got] == ["tls_records", "tls_records", "silent_close", "tls_records", "tls_records"]
    streams = []
    for n, e in enumerate(got):
        client = endpoint(e["client"])
        connection = 1 if n == 4 else 0
        if e["kind"] == "silent_close":
            frame = where(rows, client, server_end, connection, 0)
        else:
            frame = where(rows, server_end, client, connection, len(OK) if n == 1 else 0)
        assert (e["frame"], e["tcp_stream"]) == frame, e
        streams.append(e["tcp_stream"])
    assert streams == [0, 1, 2, 3, 4]  # the reused pair: a new stream, as tshark says
