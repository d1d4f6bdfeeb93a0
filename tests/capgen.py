"""Write pcap / pcapng captures of TCP conversations, for the pcap tests and the benchmark (test-only). Needs dpkt."""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO


@dataclass
class Conversation:
    """One TCP connection: the client's requests and the server's answers, in turn."""

    client: tuple[str, int]
    server: tuple[str, int]
    turns: list[tuple[bytes, bytes]]  # (request, answer) pairs on one connection
    segment: int = 1400  # split payloads into segments of this size
    swap_segments: bool = False  # deliver the first two segments of each answer out of order
    retransmit: bool = False  # send the first segment of each answer twice
    server_fin: bool = True
    start: float = 1_490_000_000.0
    extra: dict[str, Any] = field(default_factory=dict)


def _ip(src: str, dst: str, tcp: Any) -> Any:
    import dpkt

    if ":" in src:
        ip6 = dpkt.ip6.IP6(
            src=socket.inet_pton(socket.AF_INET6, src), dst=socket.inet_pton(socket.AF_INET6, dst), nxt=6, hlim=64
        )
        ip6.data = tcp
        ip6.plen = len(bytes(tcp))
        return ip6, dpkt.ethernet.ETH_TYPE_IP6
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, ttl=64)
    ip.data = tcp
    ip.len = len(ip)  # type: ignore[arg-type]
    return ip, dpkt.ethernet.ETH_TYPE_IP


def frames(c: Conversation) -> Iterator[tuple[float, bytes]]:
    """The Ethernet frames of a conversation: handshake, turns, closes."""
    import dpkt

    t = c.start
    seq = {0: 1000, 1: 5000}  # 0: client, 1: server
    ends = {0: c.client, 1: c.server}

    def packet(side: int, flags: int, payload: bytes = b"", at: int | None = None) -> tuple[float, bytes]:
        nonlocal t
        t += 0.0005
        src, dst = ends[side], ends[1 - side]
        tcp = dpkt.tcp.TCP(
            sport=src[1], dport=dst[1], seq=seq[side] if at is None else at, ack=seq[1 - side], flags=flags, win=65535
        )
        tcp.data = payload
        ip, eth_type = _ip(src[0], dst[0], tcp)
        eth = dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=eth_type, data=ip)
        return t, bytes(eth)

    syn, ack, psh, fin = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH, dpkt.tcp.TH_FIN
    yield packet(0, syn)
    seq[0] += 1
    yield packet(1, syn | ack)
    seq[1] += 1
    yield packet(0, ack)
    for request, answer in c.turns:
        for side, payload in ((0, request), (1, answer)):
            chunks = [payload[i : i + c.segment] for i in range(0, len(payload), c.segment)]
            positions = []
            for chunk in chunks:
                positions.append((seq[side], chunk))
                seq[side] += len(chunk)
            if side == 1 and c.swap_segments and len(positions) > 1:
                positions[0], positions[1] = positions[1], positions[0]
            for n, (at, chunk) in enumerate(positions):
                yield packet(side, psh | ack, chunk, at=at)
                if side == 1 and c.retransmit and n == 0:
                    yield packet(side, psh | ack, chunk, at=at)
    if c.server_fin:
        yield packet(1, fin | ack)
        seq[1] += 1
        yield packet(0, fin | ack)


def write_capture(path: Path, conversations: Iterable[Conversation], fmt: str = "pcap") -> None:
    """Write the conversations one after another into a pcap or pcapng file."""

    with open(path, "wb") as f:
        writer = _writer(f, fmt)
        for c in conversations:
            for ts, frame in frames(c):
                writer.writepkt(frame, ts=ts)


def _writer(f: BinaryIO, fmt: str) -> Any:
    import dpkt

    if fmt == "pcapng":
        return dpkt.pcapng.Writer(f)
    if fmt == "pcap":
        return dpkt.pcap.Writer(f)
    raise ValueError(f"unknown capture format {fmt!r}")
