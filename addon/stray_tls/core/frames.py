"""Find the TCP payload in a whole frame (pure: no mitmproxy, no I/O).

What an engineer copies out of Wireshark is the frame, headers and all: Ethernet II (with 802.1Q or 802.1ad
tags), Linux cooked capture (SLL, SLL2), BSD loopback, or raw IPv4/IPv6, then IP, then TCP, then the bytes that
matter. `find_payload` reads those headers and says where the payload starts and who sent it to whom.

It answers only on evidence, so that a bare payload is never taken for a frame: an IPv4 header with a right
checksum (or, where checksum offload left it zero, lengths that end exactly where the frame does), an IPv6
header whose payload length ends where the frame does (or, in a frame cut short, goes beyond it), a TCP header
whose data offset and options fit. A frame cut short says how many payload bytes it lacks (`missing`). A TLS
payload cannot pass for raw IP at all: its first byte (0x14-0x18, or >= 0x80) has no IP version 4 or 6.

The link-layer readers (`at_ethernet`, ...) are also the capture reader's, and `tcp_segment` reads its IP and TCP
headers: one place reads frames. The capture's reading is lenient where `find_payload` is strict: a capture's frame is
a frame (checksums are often offloaded, frames cut at the snap length), whereas pasted bytes must prove they are one.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from .names import hostport

#: Ethertypes of IPv4 and IPv6, and the IP version each carries.
IP_TYPES = {b"\x08\x00": 4, b"\x86\xdd": 6}
#: Ethertypes of a VLAN tag: 802.1Q, 802.1ad (QinQ's outer tag), and the pre-standard QinQ values.
VLAN_TYPES = (b"\x81\x00", b"\x88\xa8", b"\x91\x00", b"\x92\x00")
#: BSD loopback's address family (AF_INET, and AF_INET6 as Linux, the BSDs and macOS number it), either byte order.
NULL_FAMILIES = {
    **{fam.to_bytes(4, "big"): version for fam, version in ((2, 4), (24, 6), (28, 6), (30, 6))},
    **{fam.to_bytes(4, "little"): version for fam, version in ((2, 4), (24, 6), (28, 6), (30, 6))},
}
#: VLAN tags followed, at most (802.1ad stacks two).
MAX_VLAN_TAGS = 2
#: An Ethernet frame's frame check sequence, which some captures keep after the IP packet.
FCS_LEN = 4
#: The shortest Ethernet frame without its FCS: shorter IP packets are padded up to it.
ETHERNET_MIN = 60

TCP = 6
#: IPv6 extension headers followed to reach TCP (hop-by-hop, routing, destination options); a fragment is not.
IPV6_EXTENSIONS = (0, 43, 60)
TCP_FLAGS = ((0x02, "SYN"), (0x01, "FIN"), (0x04, "RST"), (0x08, "PSH"), (0x10, "ACK"), (0x20, "URG"))

# Where the IP packet starts in a frame: (offset, IP version), or None. Short frames raise IndexError.
LinkReader = Callable[[bytes], "tuple[int, int] | None"]


def at_ethernet(buf: bytes) -> tuple[int, int] | None:
    """Ethernet II, with up to two VLAN tags."""
    kind = buf[12:14]
    off = 14
    for _ in range(MAX_VLAN_TAGS):
        if kind not in VLAN_TYPES:
            break
        kind = buf[off + 2 : off + 4]
        off += 4
    version = IP_TYPES.get(kind)
    return None if version is None else (off, version)


def at_sll(buf: bytes) -> tuple[int, int] | None:
    """Linux cooked capture v1: packet type, ARPHRD type, address length, address (8), protocol."""
    version = IP_TYPES.get(buf[14:16])
    return None if version is None else (16, version)


def at_sll2(buf: bytes) -> tuple[int, int] | None:
    """Linux cooked capture v2: protocol first, then reserved, interface, ARPHRD type, ..., 20 bytes in all."""
    version = IP_TYPES.get(buf[0:2])
    return None if version is None else (20, version)


def at_null(buf: bytes) -> tuple[int, int] | None:
    """BSD loopback: a 4-byte address family."""
    version = NULL_FAMILIES.get(buf[0:4])
    return None if version is None else (4, version)


def at_raw(buf: bytes) -> tuple[int, int] | None:
    """No link layer: the IP version nibble."""
    version = buf[0] >> 4
    return (0, version) if version in (4, 6) else None


#: The link layers a pasted frame may have, in the order they are tried (the first with a valid IP and TCP
#: header wins), with the name said to the user. Raw IP comes last: it has the least evidence of its own.
LINKS: tuple[tuple[str, LinkReader], ...] = (
    ("Ethernet", at_ethernet),
    ("Linux cooked (SLL2)", at_sll2),
    ("Linux cooked (SLL)", at_sll),
    ("BSD loopback", at_null),
    ("raw IP", at_raw),
)


@dataclass(frozen=True)
class Frame:
    """A TCP segment found in a frame: where its payload is, and who sent it to whom."""

    link: str  # "Ethernet", "Linux cooked (SLL2)", ...
    vlans: tuple[int, ...]  # VLAN ids, outermost first
    ip_version: int
    src: str  # `192.168.1.20:443`, `[fd00::1]:443`
    dst: str
    flags: int  # TCP flags
    offset: int  # where the TCP payload starts in the frame
    payload: bytes
    missing: int = 0  # payload bytes the IP header announces beyond the end of what was pasted

    @property
    def flag_names(self) -> str:
        """`PSH, ACK`: the TCP flags as Wireshark lists them."""
        return ", ".join(name for bit, name in TCP_FLAGS if self.flags & bit) or "none"

    @property
    def layers(self) -> str:
        """`Ethernet, VLAN 42, IPv4, TCP`."""
        vlans = "".join(f", VLAN {v}" for v in self.vlans)
        return f"{self.link}{vlans}, IPv{self.ip_version}, TCP"

    def to_dict(self) -> dict[str, object]:
        return {
            "link": self.link,
            "vlans": list(self.vlans),
            "ip_version": self.ip_version,
            "src": self.src,
            "dst": self.dst,
            "tcp_flags": self.flag_names,
            "payload_offset": self.offset,
            "payload_bytes": len(self.payload),
            "payload_missing": self.missing,
        }


def endpoint(addr: bytes, port: int) -> str:
    """`10.0.0.1:443`, `[fd00::1]:443` (`[::ffff:10.0.0.1]:443` for a v4-mapped address, as Wireshark says it)."""
    return hostport(socket.inet_ntop(socket.AF_INET6 if len(addr) == 16 else socket.AF_INET, addr), port)


def find_payload(data: bytes) -> Frame | None:
    """The TCP segment in `data` when it is a whole frame (see the module docstring), else None."""
    for link, reader in LINKS:
        try:
            where = reader(data)
        except IndexError:
            continue
        if where is None:
            continue
        frame = _ip_tcp(data, link, *where)
        if frame is not None:
            return frame
    return None


def _vlans(data: bytes, link: str, ip_at: int) -> tuple[int, ...]:
    if link != "Ethernet":
        return ()
    return tuple(struct.unpack_from(">H", data, at)[0] & 0x0FFF for at in range(14, ip_at, 4))


def _ip_tcp(data: bytes, link: str, off: int, version: int) -> Frame | None:
    """The TCP segment of the IP packet at `off`, when its headers hold together."""
    n = len(data)
    if off + 20 > n:
        return None
    if version == 4:
        if data[off] >> 4 != 4:
            return None
        ihl = (data[off] & 15) * 4
        total = int.from_bytes(data[off + 2 : off + 4], "big")
        fragment = int.from_bytes(data[off + 6 : off + 8], "big") & 0x3FFF  # MF and the fragment offset
        if ihl < 20 or off + ihl > n or data[off + 9] != TCP or fragment or total < ihl + 20:
            return None
        checksum = int.from_bytes(data[off + 10 : off + 12], "big")
        if checksum:
            if _ones_complement_sum(data[off : off + ihl]) != 0xFFFF:
                return None
        elif not _ends_here(data, off + total, link):  # left zero by checksum offload: the lengths must agree
            return None
        t = off + ihl
        src, dst = data[off + 12 : off + 16], data[off + 16 : off + 20]
    else:
        if data[off] >> 4 != 6 or off + 40 > n:
            return None
        total = 40 + int.from_bytes(data[off + 4 : off + 6], "big")
        # no checksum: the length is the evidence, that the packet ends where the frame does, or (a frame cut
        # short, as IPv4's checksum allows) that it announces more than is there, with a hop limit a sender sets
        cut = off + total > n and data[off + 7] > 0
        if not (cut or _ends_here(data, off + total, link)):
            return None
        nxt, t = data[off + 6], off + 40
        while nxt in IPV6_EXTENSIONS and t + 8 <= min(off + total, n):
            nxt, t = data[t], t + (data[t + 1] + 1) * 8
        if nxt != TCP:
            return None
        src, dst = data[off + 8 : off + 24], data[off + 24 : off + 40]
    end = off + total
    if t + 20 > min(end, n):
        return None
    doff = (data[t + 12] >> 4) * 4
    if doff < 20 or t + doff > min(end, n) or not _options_fit(data[t + 20 : t + doff]):
        return None
    sport, dport = struct.unpack_from(">HH", data, t)
    start = t + doff
    return Frame(
        link=link,
        vlans=_vlans(data, link, off),
        ip_version=version,
        src=endpoint(src, sport),
        dst=endpoint(dst, dport),
        flags=data[t + 13],
        offset=start,
        payload=data[start : min(end, n)],
        missing=max(0, end - n),
    )


def _ends_here(data: bytes, end: int, link: str) -> bool:
    """The IP packet ends where the frame does, but for what a link adds: Ethernet's padding (zeros up to the
    minimum frame) and a frame check sequence."""
    trailer = len(data) - end
    if trailer == 0:
        return True
    if trailer < 0 or link != "Ethernet":
        return False
    padding = max(0, ETHERNET_MIN - end)
    return trailer in (padding, padding + FCS_LEN) and not any(data[end : end + padding])


def _options_fit(options: bytes) -> bool:
    """TCP options that parse: kinds 0 (end) and 1 (no-op) alone, every other with a length that fits."""
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:
            return True
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(options) or options[i + 1] < 2:
            return False
        i += options[i + 1]
    return i == len(options)


def _ones_complement_sum(header: bytes) -> int:
    """The Internet checksum's sum over a header (RFC 1071): 0xFFFF when its checksum field is right."""
    total = sum(struct.unpack(f">{len(header) // 2}H", header[: len(header) // 2 * 2]))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


_IP4 = struct.Struct(">BxH2xHxB").unpack_from  # version+IHL, total length, flags+fragment offset, protocol
_TCP_FIELDS = struct.Struct(">4xIIBB").unpack_from  # sequence number, acknowledgment number, data offset, flags
_PORTS = struct.Struct(">HH")


def tcp_segment(buf: bytes, off: int, version: int) -> tuple[bytes, int, int, int, int, int] | None:
    """A capture's TCP segment in the IP packet at `off` (a link reader's answer): (stream key: source and
    destination addresses then ports, as they stand in the headers; sequence number; acknowledgment number; flags;
    where the payload starts; where it ends), or None for what is no segment to follow (another protocol, a
    fragment, headers that do not fit the frame). Raises LookupError for an IPv6 packet with extension headers,
    which a capture leaves to dpkt. Most packets of a capture cost these few header reads and nothing more."""
    try:
        if version == 4:
            vhl, total, fragment, proto = _IP4(buf, off)
            ihl = (vhl & 15) << 2
            if proto != TCP or vhl >> 4 != 4 or ihl < 20 or fragment & 0x1FFF:
                return None
            t = off + ihl
            end = min(off + total, len(buf)) if total else len(buf)
            key = buf[off + 12 : t + 4] if ihl == 20 else buf[off + 12 : off + 20] + buf[t : t + 4]
        else:
            if buf[off + 6] != TCP:  # extension headers
                raise LookupError
            t = off + 40
            total = buf[off + 4] << 8 | buf[off + 5]
            end = min(t + total, len(buf)) if total else len(buf)
            key = buf[off + 8 : t + 4]
        if end - t < 20:
            return None
        seq, ack, doff, flags = _TCP_FIELDS(buf, t)
        doff = (doff >> 4) << 2
        if doff < 20:
            return None
        return key, seq, ack, flags, t + doff, end
    except (IndexError, struct.error):  # a truncated or odd frame
        return None


def reverse_key(key: bytes) -> bytes:
    """The stream key of the other direction: addresses and ports swapped."""
    half = (len(key) - 4) // 2
    return key[half : 2 * half] + key[:half] + key[-2:] + key[-4:-2]


def key_endpoints(key: bytes) -> tuple[str, str]:
    """The source and destination of a stream key, as `endpoint` says them."""
    half = (len(key) - 4) // 2
    sport, dport = _PORTS.unpack_from(key, 2 * half)
    return endpoint(key[:half], sport), endpoint(key[half : 2 * half], dport)


def stream_key(src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    """The stream key of a segment read some other way (dpkt)."""
    return src + dst + _PORTS.pack(sport, dport)
