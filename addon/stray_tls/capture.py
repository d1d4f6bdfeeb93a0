"""`esrs-fix pcap`: find HTTP requests answered by TLS records (and the other faces) in a pcap or pcapng file.

Streaming: packets are read one at a time, TCP payload is reassembled in order per direction, and only the
first bytes of each answer are kept (enough to decide), so memory stays flat however large the capture.
A truncated or corrupt file ends the scan with a clear message, and what was read so far is still reported.
Needs dpkt (`pip install esrs-fix[pcap]`).
"""

from __future__ import annotations

import datetime
import functools
import socket
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from . import findings, records
from .findings import Finding

#: How much of an answer is kept to decide on it: a TLS record head, or a 400 page's phrase.
ANSWER_PREFIX = 4096
#: How much of a request is kept: its request line.
REQUEST_PREFIX = 300
#: Out-of-order segments kept per direction before the gap is given up.
MAX_PENDING = 64
#: Streams followed at once; the least recently active beyond this are dropped.
MAX_STREAMS = 50_000
#: Capture seconds after which an idle stream is finished.
IDLE_SECONDS = 300.0

METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE ")


class CaptureError(Exception):
    """The file cannot be read as a capture at all; the message is a sentence for the user."""


@dataclass
class Exchange:
    """One HTTP request whose answer was not HTTP (or was the server's plain-HTTP complaint)."""

    time: float
    client: str
    server: str
    request_line: str
    finding: Finding

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": _iso(self.time),
            "client": self.client,
            "server": self.server,
            "request_line": self.request_line,
            **self.finding.to_dict(),
        }


@dataclass
class ScanResult:
    packets: int = 0
    tcp_streams: int = 0
    requests: int = 0
    exchanges: list[Exchange] = field(default_factory=list)
    damaged: str = ""  # why the scan stopped early, if it did


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _endpoint(addr: bytes, port: int) -> str:
    if len(addr) == 16:
        return f"[{socket.inet_ntop(socket.AF_INET6, addr)}]:{port}"
    return f"{socket.inet_ntop(socket.AF_INET, addr)}:{port}"


class _Direction:
    """In-order reassembly of one direction of a TCP stream, delivering bytes to a callback."""

    __slots__ = ("next_seq", "pending")

    def __init__(self) -> None:
        self.next_seq: int | None = None
        self.pending: dict[int, bytes] = {}

    def feed(self, seq: int, payload: bytes, syn: bool, deliver: Callable[[bytes], None]) -> None:
        if syn:
            self.next_seq = (seq + 1) & 0xFFFFFFFF
            return
        if not payload:
            return
        if self.next_seq is None:  # the capture began mid-stream
            self.next_seq = seq
        offset = (seq - self.next_seq) & 0xFFFFFFFF
        if offset >= 0x80000000:  # before next_seq: a retransmission, maybe partly new
            overlap = (self.next_seq - seq) & 0xFFFFFFFF
            if overlap >= len(payload):
                return
            payload, seq = payload[overlap:], self.next_seq
            offset = 0
        if offset:
            if len(self.pending) < MAX_PENDING:
                self.pending[seq] = payload
            else:  # a gap that will not fill: skip it
                self.pending.clear()
                self.next_seq = seq
                self.feed(seq, payload, False, deliver)
            return
        deliver(payload)
        self.next_seq = (seq + len(payload)) & 0xFFFFFFFF
        while self.next_seq in self.pending:
            chunk = self.pending.pop(self.next_seq)
            deliver(chunk)
            self.next_seq = (self.next_seq + len(chunk)) & 0xFFFFFFFF


class _Stream:
    """One TCP connection: which side asks, what it asked, and the first bytes of each answer."""

    __slots__ = (
        "a",
        "answer",
        "asking",
        "b",
        "client",
        "decided",
        "deliver",
        "dirs",
        "last",
        "on_request",
        "report",
        "request",
        "request_time",
    )

    def __init__(self, a: str, b: str, report: Callable[[Exchange], None], on_request: Callable[[], None]) -> None:
        self.a, self.b = a, b  # the first packet's source and destination
        self.dirs = (_Direction(), _Direction())
        self.client: int | None = None  # 0: a is the client; 1: b is (known from the SYN, else from a method)
        self.request = bytearray()  # the start of the current request, for its request line
        self.asking = False  # the client is still sending the current request
        self.request_time = 0.0
        self.answer = bytearray()
        self.decided = True  # no request outstanding
        self.last = 0.0
        self.report = report
        self.on_request = on_request
        self.deliver = (functools.partial(self.data, 0), functools.partial(self.data, 1))

    @property
    def request_line(self) -> str:
        return bytes(self.request).split(b"\r\n", 1)[0].decode("latin-1")

    def data(self, side: int, payload: bytes) -> None:
        if self.client is None:  # no SYN seen: the first side to send an HTTP method asks
            if not payload.startswith(METHODS):
                return
            self.client = side
        if side == self.client:
            if not self.asking:  # a new request: the previous answer has begun, or there was none
                self.finish()
                self.asking = True
                self.request.clear()
                self.request_time = self.last
                self.answer.clear()
                self.decided = False
                self.on_request()
            self.request += payload[: REQUEST_PREFIX - len(self.request)]
            return
        self.asking = False
        if self.decided:
            return
        self.answer += payload[: ANSWER_PREFIX - len(self.answer)]
        self.decide(final=False)

    def decide(self, final: bool) -> None:
        """Decide on the answer so far; `final` when no more bytes will come."""
        data = bytes(self.answer)
        finding: Finding | None = None
        if not data:
            if not final:
                return
            finding = findings.silent_close()
        elif records.could_start_tls(data[0]):
            decoded = records.decode(data)
            if not final and len(data) < ANSWER_PREFIX and not isinstance(decoded, records.NotTLS):
                return  # unlike the proxy, a reader can wait for the whole answer and report every record
            if isinstance(decoded, records.NeedMore):
                finding = findings.from_incomplete_head(data)
            else:
                finding = findings.from_response_head(data)
        elif data.startswith(b"HTTP/"):
            head, sep, body = data.partition(b"\r\n\r\n")
            if not sep:
                if not final and len(data) < ANSWER_PREFIX:
                    return
            else:
                status = head[9:12]
                if status == b"400" or (body and records.could_start_tls(body[0])):
                    if not final and len(data) < ANSWER_PREFIX and not _body_complete(head, body):
                        return
                    finding = findings.from_response(int(status) if status.isdigit() else 0, body)
        self.decided = True
        if finding is not None:
            client, server = (self.a, self.b) if self.client == 0 else (self.b, self.a)
            self.report(Exchange(self.request_time, client, server, self.request_line, finding))

    def finish(self) -> None:
        if not self.decided:
            self.decide(final=True)


def _body_complete(head: bytes, body: bytes) -> bool:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return len(body) >= int(value.strip())
    return False


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
        raise CaptureError(f"the capture's header is damaged: {e}") from e
    link = reader.datalink()
    decoders: dict[int, Callable[[bytes], Any]] = {
        dpkt.pcap.DLT_EN10MB: dpkt.ethernet.Ethernet,
        dpkt.pcap.DLT_LINUX_SLL: dpkt.sll.SLL,
        276: dpkt.sll2.SLL2,  # DLT_LINUX_SLL2
        dpkt.pcap.DLT_NULL: dpkt.loopback.Loopback,
        dpkt.pcap.DLT_LOOP: dpkt.loopback.Loopback,
        dpkt.pcap.DLT_RAW: dpkt.ip.IP,
        12: dpkt.ip.IP,  # DLT_RAW on some systems
        228: dpkt.ip.IP,  # LINKTYPE_IPV4
        229: dpkt.ip6.IP6,  # LINKTYPE_IPV6
    }
    if link not in decoders:
        raise CaptureError(f"link type {link} is not supported (Ethernet, Linux cooked, loopback and raw IP are)")
    return iter(reader), decoders[link]


def _ip_of(frame: Any) -> Any:
    """Walk down from the link layer to the IP packet, or None."""
    import dpkt

    layer = frame
    for _ in range(4):
        if isinstance(layer, dpkt.ip.IP | dpkt.ip6.IP6):
            return layer
        layer = getattr(layer, "data", None)
        if layer is None or isinstance(layer, bytes):
            return None
    return None


def scan(path: Path, on_progress: Callable[[int, int], None] | None = None) -> ScanResult:
    """Scan a capture file; raises CaptureError when it is not readable as a capture at all."""
    import dpkt

    result = ScanResult()
    streams: OrderedDict[tuple[bytes, int, bytes, int], _Stream] = OrderedDict()

    def count_request() -> None:
        result.requests += 1

    def close(key: tuple[bytes, int, bytes, int]) -> None:
        streams.pop(key).finish()

    try:
        f = open(path, "rb")  # noqa: SIM115 - closed in the finally below
    except OSError as e:
        raise CaptureError(f"cannot open {path}: {e.strerror or e}") from e
    cut = _CutDetector(f)
    try:
        packets, link = _packets(cut)  # type: ignore[arg-type]
        while True:
            try:
                item = next(packets)
            except StopIteration:
                break
            except (dpkt.NeedData, dpkt.UnpackError, ValueError, EOFError) as e:
                result.damaged = (
                    f"the capture is truncated or corrupt after packet {result.packets} ({e or type(e).__name__})"
                )
                break
            ts, buf = item
            result.packets += 1
            if on_progress and result.packets % 100_000 == 0:
                on_progress(result.packets, f.tell())
            try:
                ip = _ip_of(link(buf))
            except (dpkt.UnpackError, dpkt.NeedData, ValueError):
                continue  # a truncated or odd frame: skip it, keep going
            if ip is None or not isinstance(ip.data, dpkt.tcp.TCP):
                continue
            tcp = ip.data
            src, dst = bytes(ip.src), bytes(ip.dst)
            key, side = (src, tcp.sport, dst, tcp.dport), 0
            stream = streams.get(key)
            if stream is None:
                rkey = (dst, tcp.dport, src, tcp.sport)
                stream = streams.get(rkey)
                if stream is not None:
                    key, side = rkey, 1
                elif not (tcp.data or tcp.flags & dpkt.tcp.TH_SYN):
                    continue  # the last ACK or FIN of a stream already finished
                else:
                    stream = _Stream(
                        _endpoint(src, tcp.sport), _endpoint(dst, tcp.dport), result.exchanges.append, count_request
                    )
                    if tcp.flags & dpkt.tcp.TH_SYN:  # SYN: this side connects; SYN-ACK: the other side did
                        stream.client = 1 if tcp.flags & dpkt.tcp.TH_ACK else 0
                    streams[key] = stream
                    result.tcp_streams += 1
            streams.move_to_end(key)
            stream.last = ts
            flags = tcp.flags
            stream.dirs[side].feed(tcp.seq, bytes(tcp.data), bool(flags & dpkt.tcp.TH_SYN), stream.deliver[side])
            if flags & (dpkt.tcp.TH_FIN | dpkt.tcp.TH_RST) and (side != stream.client or flags & dpkt.tcp.TH_RST):
                close(key)
            if len(streams) > MAX_STREAMS:
                close(next(iter(streams)))
            if result.packets % 10_000 == 0:
                for k in [k for k, s in streams.items() if ts - s.last > IDLE_SECONDS]:
                    close(k)
        if cut.cut and not result.damaged:
            result.damaged = f"the capture is truncated: it ends inside packet {result.packets}"
    finally:
        f.close()
    for k in list(streams):
        close(k)
    result.exchanges.sort(key=lambda e: e.time)
    return result
