"""`esrs-fix pcap`: find HTTP requests answered by TLS records (and the other faces) in a pcap or pcapng file.

Streaming: packets are read one at a time (their link layers by `frames`), TCP payload is reassembled in order per
direction (`reassembly`: a FIN counts where it stands in the stream, a SYN's payload is kept, and an address pair
reused by a new connection, after a SYN or a jump in sequence numbers, is followed afresh), and each direction
is followed as HTTP/1 (`streams`): the client's requests (pipelined or one after another on a keep-alive connection) are
queued in order, and each answer is framed as `check`'s client frames it (`http1`, RFC 9112) so that every answer
is paired with its own request line and judged (`findings`).
Only the first bytes of each answer are kept (enough to decide), the queue of outstanding requests is bounded,
and the bytes of a body already decided on are counted, not looked at, so memory stays flat however large the
capture and most packets cost a few header reads (`frames.tcp_segment`). dpkt reads the file formats (and decodes
the rare frames the header reads do not cover). A truncated or corrupt file ends the scan with a clear message, and
what was read so far is still reported. Needs dpkt (the `pcap` extra).

Every exchange carries its Wireshark coordinates, so that it can be looked at there: `frame`, the frame number
(1-based, every frame of the file counted) of the packet holding the answer's first byte (the request's first byte
when no answer came), and `tcp_stream`, Wireshark's `tcp.stream` index, counted as Wireshark counts it
(`conversations`): independently of how long this reader follows a connection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ..core import frames
from . import reassembly
from .conversations import Conversations
from .results import ScanResult
from .streams import Stream

#: Streams followed at once; the least recently active beyond this are dropped.
MAX_STREAMS = 50_000
#: Streams closed lately whose ends are remembered, so that a late retransmission of theirs begins no new stream.
MAX_FINISHED = 4096
#: Capture seconds after which an idle stream is finished.
IDLE_SECONDS = 300.0

_SEQ = reassembly.SEQ_MASK
_SYN, _FIN, _RST, _ACK = reassembly.SYN, reassembly.FIN, reassembly.RST, reassembly.ACK


class CaptureError(Exception):
    """The file cannot be read as a capture at all; the message is a sentence for the user."""


def scan(path: Path, on_progress: Callable[[int, int], None] | None = None) -> ScanResult:
    """Scan a capture file; raises CaptureError when it is not readable as a capture at all."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed in the finally below
    except OSError as e:
        raise CaptureError(f"cannot open {path}: {e.strerror or e}") from e
    scanner = _Scanner()
    try:
        scanner.read(_CutDetector(f), on_progress)
    finally:
        f.close()
    return scanner.finish()


class _Scanner:
    """The packets of one file, in order: each TCP segment to its stream (a new one for a new connection)."""

    def __init__(self) -> None:
        self.result = ScanResult()
        #: both directions' keys -> (stream, the side that sends with that key); insertion order is creation order
        self.streams: dict[bytes, tuple[Stream, int]] = {}
        #: the streams closed last (the key of their side 0) -> where each side had got to: a late retransmission of
        #: theirs begins no new stream
        self.finished: dict[bytes, tuple[int | None, int | None]] = {}
        self.conversation = Conversations().index

    def read(self, cut: _CutDetector, on_progress: Callable[[int, int], None] | None) -> None:
        import dpkt

        result = self.result
        packets, decode = _packets(cut)  # type: ignore[arg-type]
        # where the IP packet starts, read from the raw bytes: None leaves the frame to dpkt (MPLS, PPPoE, ...)
        at = {
            dpkt.ethernet.Ethernet: frames.at_ethernet,
            dpkt.sll.SLL: frames.at_sll,
            dpkt.sll2.SLL2: frames.at_sll2,
            dpkt.loopback.Loopback: frames.at_null,
            dpkt.ip.IP: frames.at_raw,
            dpkt.ip6.IP6: frames.at_raw,
        }[decode]  # type: ignore[index]
        count = 0
        while True:
            try:
                ts, buf = next(packets)
            except StopIteration:
                break
            except (dpkt.NeedData, dpkt.UnpackError, ValueError, EOFError) as e:
                result.damaged = f"the capture is truncated or corrupt after packet {count} ({_reason(e)})"
                break
            count += 1
            if count % 10_000 == 0:
                result.packets = count
                if on_progress and count % 100_000 == 0:
                    on_progress(count, cut.tell())
                self.close_idle(ts)
            try:
                where = at(buf)
            except IndexError:
                continue  # a truncated or odd frame: skip it, keep going
            try:
                if where is None:
                    raise LookupError
                segment = frames.tcp_segment(buf, *where)
                if segment is None:
                    continue
                key, seq, ack, flags, start, end = segment
            except LookupError:  # left to dpkt
                slow = _dpkt_tcp(decode, buf)
                if slow is None:
                    continue
                key, seq, ack, flags, buf = slow
                start, end = 0, len(buf)
            self.segment(count, ts, key, seq, ack, flags, buf[start:end] if end > start else b"")
        result.packets = count
        if cut.cut and not result.damaged:
            # inside the last packet, or inside a block after it (pcapng's statistics): the reader cannot tell
            result.damaged = f"the capture is truncated: it ends inside packet {result.packets} or a block after it"

    def segment(self, frame: int, ts: float, key: bytes, seq: int, ack: int, flags: int, payload: bytes) -> None:
        """One TCP segment, to its stream."""
        found = self.stream_of(ts, key, seq, ack, flags, len(payload))
        if found is None:
            return
        stream, side = found
        stream.last = ts
        stream.frame, stream.frame_time = frame, ts
        size = len(payload)
        if not flags & 0x07:  # no SYN, FIN or RST
            if not size:
                return
            skip = stream.skip[side]
            # in order, nothing in it to look at, no later segment waiting for it, no FIN waiting for it
            if skip > size and seq == stream.nxt[side] and not stream.pending[side] and stream.fin[side] is None:
                stream.skip[side] = skip - size
                stream.nxt[side] = (seq + size) & _SEQ
                return
        stream.segment(side, seq, flags, payload, ts)
        if stream.pending[side]:
            stream.hold(side, (seq + 1) & _SEQ if flags & _SYN else seq)
        if flags & _RST:  # a reset ends the connection where it stands in the capture
            self.close(key, by_server=side != stream.client)
        elif stream.closing:  # the server's FIN, and every byte before it, have gone on
            self.close(key, by_server=True)

    def stream_of(self, ts: float, key: bytes, seq: int, ack: int, flags: int, size: int) -> tuple[Stream, int] | None:
        """The stream a segment belongs to, and its side; a new one for a new connection; None for a segment of no
        stream to follow (the last ACK or FIN of one finished, a late retransmission)."""
        entry = self.streams.get(key)
        if entry is not None:
            stream, side = entry
            if flags & _SYN or stream.unsettled:  # a SYN may begin a new conversation; the first packets set bases
                number, settled = self.conversation(key, seq, ack, flags)
                if (number != stream.tcp_stream and flags & (_SYN | _ACK) == _SYN) or (
                    seq != stream.nxt[side] and stream.jumped(side, seq, ack, flags)
                ):
                    self.close(key)  # the pair reused by a new connection: what the old one left is not carried on
                else:
                    stream.tcp_stream, stream.unsettled = number, not settled
                    return entry
            elif seq != stream.nxt[side] and stream.jumped(side, seq, ack, flags):
                self.close(key)  # a new connection whose SYN the capture missed: the same tcp.stream to Wireshark
                number, settled = stream.tcp_stream, True
            else:
                return entry
        else:
            number, settled = self.conversation(key, seq, ack, flags)  # Wireshark numbers every packet's pair
        if not (size or flags & _SYN) or (not flags & _SYN and self.late(key, seq, size)):
            return None  # the last ACK or FIN of a stream already finished, or a late retransmission of its bytes
        return self.begin(ts, key, flags, number, settled)

    def begin(self, ts: float, key: bytes, flags: int, number: int, settled: bool) -> tuple[Stream, int]:
        stream = Stream(*frames.key_endpoints(key), self.result, number)
        stream.last = ts
        if flags & _SYN:  # SYN: this side connects; SYN-ACK: the other side did
            stream.client = 1 if flags & _ACK else 0
        stream.unsettled = not settled
        streams = self.streams
        streams[key] = (stream, 0)
        streams[frames.reverse_key(key)] = (stream, 1)
        self.result.tcp_streams += 1
        if len(streams) > 2 * MAX_STREAMS:
            idle = sorted((s.last, k) for k, (s, d) in streams.items() if d == 0)
            for _, k in idle[: max(1, MAX_STREAMS // 16)]:
                if k != key:
                    self.close(k)
        return stream, 0

    def close(self, key: bytes, by_server: bool = False) -> None:
        streams, finished = self.streams, self.finished
        stream, side = streams.pop(key)
        del streams[frames.reverse_key(key)]
        stream.finish(by_server)
        if len(finished) >= MAX_FINISHED:
            del finished[next(iter(finished))]
        finished[frames.reverse_key(key) if side else key] = (stream.nxt[0], stream.nxt[1])

    def close_idle(self, now: float) -> None:
        for k in [k for k, (s, side) in self.streams.items() if side == 0 and now - s.last > IDLE_SECONDS]:
            self.close(k)

    def late(self, key: bytes, seq: int, size: int) -> bool:
        """The segment holds only bytes of a stream closed lately, that it had already got to (a retransmission)."""
        ends = self.finished.get(key)
        side = 0
        if ends is None:
            ends, side = self.finished.get(frames.reverse_key(key)), 1
        end = None if ends is None else ends[side]
        return end is not None and (end - (seq + size)) & _SEQ < reassembly.JUMP

    def finish(self) -> ScanResult:
        for k in [k for k, (s, side) in self.streams.items() if side == 0]:
            self.close(k)
        self.result.exchanges.sort(key=lambda e: e.time)
        return self.result


class _CutDetector:
    """A file wrapper that notices a short read: a cut capture ends inside a record, a whole one between them.

    dpkt hands out a truncated last packet without complaint; this is how the scan tells the user.
    """

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.cut = False
        self.name = getattr(f, "name", "")

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        if n > 0 and 0 < len(data) < n:
            self.cut = True
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _packets(f: BinaryIO) -> tuple[Iterator[tuple[float, bytes]], Callable[[bytes], Any]]:
    """The file's frames, and dpkt's decoder for its link type."""
    import dpkt

    magic = f.read(4)
    f.seek(0)
    try:
        if magic == b"\x0a\x0d\x0d\x0a":
            reader: Any = dpkt.pcapng.Reader(f)
        elif magic in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"):
            reader = dpkt.pcap.Reader(f)
        else:
            raise CaptureError(f"not a pcap or pcapng file (it starts with {magic.hex(' ') or 'nothing'})")
    except (ValueError, dpkt.UnpackError, dpkt.NeedData) as e:
        raise CaptureError(f"the capture's header is damaged ({_reason(e)})") from e
    link = reader.datalink()
    decoders: dict[int, Callable[[bytes], Any]] = {
        dpkt.pcap.DLT_EN10MB: dpkt.ethernet.Ethernet,
        dpkt.pcap.DLT_LINUX_SLL: dpkt.sll.SLL,
        276: dpkt.sll2.SLL2,  # DLT_LINUX_SLL2
        dpkt.pcap.DLT_NULL: dpkt.loopback.Loopback,
        dpkt.pcap.DLT_LOOP: dpkt.loopback.Loopback,
        101: dpkt.ip.IP,  # LINKTYPE_RAW: what libpcap writes for a raw-IP interface (tun, some VPNs)
        12: dpkt.ip.IP,  # DLT_RAW on most systems
        14: dpkt.ip.IP,  # DLT_RAW on OpenBSD
        228: dpkt.ip.IP,  # LINKTYPE_IPV4
        229: dpkt.ip6.IP6,  # LINKTYPE_IPV6
    }
    if link not in decoders:
        raise CaptureError(f"link type {link} is not supported (Ethernet, Linux cooked, loopback and raw IP are)")
    return iter(reader), decoders[link]


def _reason(e: BaseException) -> str:
    """dpkt's words for a read error, or the error's name where it has none."""
    return str(e) or type(e).__name__


def _dpkt_tcp(decode: Callable[[bytes], Any], buf: bytes) -> tuple[bytes, int, int, int, bytes] | None:
    """The slow way, for the frames `_at_*` leave to dpkt: (stream key, seq, ack, flags, payload) of a TCP segment."""
    import dpkt

    try:
        layer = decode(buf)
    except (dpkt.UnpackError, dpkt.NeedData, ValueError):
        return None  # a truncated or odd frame: skip it, keep going
    for _ in range(4):  # walk down from the link layer to the IP packet
        if isinstance(layer, dpkt.ip.IP | dpkt.ip6.IP6):
            break
        layer = getattr(layer, "data", None)
        if layer is None or isinstance(layer, bytes):
            return None
    else:
        return None
    tcp = layer.data
    if not isinstance(tcp, dpkt.tcp.TCP):
        return None
    key = frames.stream_key(bytes(layer.src), bytes(layer.dst), tcp.sport, tcp.dport)
    return key, tcp.seq, tcp.ack, tcp.flags, bytes(tcp.data)
