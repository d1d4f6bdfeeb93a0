"""Write pcap / pcapng captures of TCP conversations, for the pcap tests and the benchmark (test-only). Needs dpkt."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

#: How one payload goes on the wire: (side, payload) -> its segments in sending order, as (offset, bytes) with
#: the offset into the payload; segments may repeat (retransmissions) or overlap. Side 0 is the client.
Segmenter = Callable[[int, bytes], list[tuple[int, bytes]]]


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
    pipeline: int = 1  # the client sends this many requests before the first of their answers (in order) comes
    segmenter: Segmenter | None = None  # replaces segment / swap_segments / retransmit
    #: (side, payload) sent in this order instead of `turns` (0: the client): a request in the middle of an answer
    script: list[tuple[int, bytes]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    isn: tuple[int, int] = (1000, 5000)  # the initial sequence numbers of client and server
    syn_data: bool = False  # TCP Fast Open: the first request rides in the SYN
    handshake: bool = True  # False: the capture missed the SYN and SYN-ACK (it began later, or lost them)
    fin_early: int = 0  # the server's FIN is captured before this many of its last data segments (reordered)
    client_rst: bool = False  # after the turns the client resets the connection (after the server's FIN, if any)


#: The link types `write_capture` can wrap the IP packets in, and their pcap numbers.
#: "raw" is LINKTYPE_RAW; "raw12" and "raw14" are DLT_RAW as most systems and OpenBSD number it; "ipv4" and "ipv6"
#: (LINKTYPE_IPV4 / _IPV6) hold packets of that IP version only.
LINKS = {
    "ethernet": 1,
    "vlan": 1,
    "sll": 113,
    "sll2": 276,
    "null": 0,
    "raw": 101,
    "raw12": 12,
    "raw14": 14,
    "ipv4": 228,
    "ipv6": 229,
}


def _ip(src: str, dst: str, tcp: Any) -> tuple[bytes, int]:
    """The IP packet around a TCP segment, and its ethertype."""
    import dpkt

    if ":" in src:
        ip6 = dpkt.ip6.IP6(
            src=socket.inet_pton(socket.AF_INET6, src), dst=socket.inet_pton(socket.AF_INET6, dst), nxt=6, hlim=64
        )
        ip6.data = tcp
        ip6.plen = len(bytes(tcp))
        return bytes(ip6), dpkt.ethernet.ETH_TYPE_IP6
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, ttl=64)
    ip.data = tcp
    ip.len = len(ip)  # type: ignore[arg-type]
    return bytes(ip), dpkt.ethernet.ETH_TYPE_IP


def _frame(packet: bytes, eth_type: int, link: str) -> bytes:
    """An IP packet wrapped for the link type (see LINKS)."""
    macs = b"\x04" * 6 + b"\x02" * 6
    if link == "ethernet":
        return macs + struct.pack(">H", eth_type) + packet
    if link == "vlan":  # one 802.1Q tag, VLAN 42
        return macs + struct.pack(">HHH", 0x8100, 42, eth_type) + packet
    if link == "sll":  # Linux cooked: packet type, ARPHRD_ETHER, address length, address, protocol
        return struct.pack(">HHH8sH", 4, 1, 6, b"\x02" * 6, eth_type) + packet
    if link == "sll2":  # Linux cooked v2: protocol, reserved, interface, ARPHRD_ETHER, type, length, address
        return struct.pack(">HHiHBB8s", eth_type, 0, 1, 1, 4, 6, b"\x02" * 6) + packet
    if link == "null":  # BSD loopback: the address family in host byte order
        return struct.pack("=I", 2 if eth_type == 0x0800 else 24) + packet
    if link.startswith("raw") or link in ("ipv4", "ipv6"):
        return packet
    raise ValueError(f"unknown link type {link!r}")


def _segments(c: Conversation, side: int, payload: bytes) -> list[tuple[int, bytes]]:
    if c.segmenter is not None:
        return c.segmenter(side, payload)
    positions = [(i, payload[i : i + c.segment]) for i in range(0, len(payload), c.segment)]
    if side == 1 and c.swap_segments and len(positions) > 1:
        positions[0], positions[1] = positions[1], positions[0]
    if side == 1 and c.retransmit and positions:
        positions.insert(1, positions[0])
    return positions


def frames(c: Conversation, link: str = "ethernet") -> Iterator[tuple[float, bytes]]:
    """The frames of a conversation: handshake, turns (or pipelined groups of them), closes."""
    import dpkt

    seq = {0: c.isn[0], 1: c.isn[1]}  # 0: client, 1: server
    ends = {0: c.client, 1: c.server}
    out: list[tuple[int, int, bytes]] = []  # (side, flags, frame) in capture order

    def packet(side: int, flags: int, payload: bytes = b"", at: int | None = None) -> None:
        src, dst = ends[side], ends[1 - side]
        tcp = dpkt.tcp.TCP(
            sport=src[1], dport=dst[1], seq=seq[side] if at is None else at, ack=seq[1 - side], flags=flags, win=65535
        )
        tcp.data = payload
        out.append((side, flags, _frame(*_ip(src[0], dst[0], tcp), link)))

    def send(side: int, payload: bytes) -> None:
        base = seq[side]
        for offset, chunk in _segments(c, side, payload):
            packet(side, psh | ack, chunk, at=(base + offset) & 0xFFFFFFFF)
        seq[side] = (base + len(payload)) & 0xFFFFFFFF

    syn, ack, psh, fin, rst = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH, dpkt.tcp.TH_FIN, dpkt.tcp.TH_RST
    turns = list(c.turns) if c.script is None else []
    first = turns[0][0] if c.syn_data and turns else b""
    packet(0, syn, first)
    seq[0] += 1 + len(first)
    packet(1, syn | ack)
    seq[1] += 1
    packet(0, ack)
    if not c.handshake:
        del out[:2]
    if c.script is not None:
        for side, payload in c.script:
            send(side, payload)
    for at in range(0, len(turns), c.pipeline):
        group = turns[at : at + c.pipeline]
        for n, (request, _) in enumerate(group):
            if not (first and at == n == 0):  # sent in the SYN
                send(0, request)
        for _, answer in group:
            send(1, answer)
    if c.server_fin:
        packet(1, fin | ack)
        seq[1] += 1
        if c.fin_early:  # the FIN overtakes the server's last data segments
            data = [i for i, (side, flags, _) in enumerate(out) if side == 1 and not flags & (syn | fin)]
            out.insert(data[-min(c.fin_early, len(data))], out.pop())
        if not c.client_rst:
            packet(0, fin | ack)
    if c.client_rst:
        packet(0, rst | ack)
    for n, (_, _, frame) in enumerate(out):
        yield c.start + 0.0005 * (n + 1), frame


def write_capture(path: Path, conversations: Iterable[Conversation], fmt: str = "pcap", link: str = "ethernet") -> None:
    """Write the conversations one after another into a pcap or pcapng file, framed for `link` (see LINKS)."""

    with open(path, "wb") as f:
        writer = _writer(f, fmt, LINKS[link])
        for c in conversations:
            for ts, frame in frames(c, link):
                writer.writepkt(frame, ts=ts)


def _writer(f: BinaryIO, fmt: str, linktype: int) -> Any:
    import dpkt

    if fmt == "pcapng":
        return dpkt.pcapng.Writer(f, linktype=linktype)
    if fmt == "pcap":
        return dpkt.pcap.Writer(f, linktype=linktype)
    raise ValueError(f"unknown capture format {fmt!r}")
