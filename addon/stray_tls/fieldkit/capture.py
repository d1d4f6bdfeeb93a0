"""`esrs-fix pcap`: find HTTP requests answered by TLS records (and the other faces) in a pcap or pcapng file.

Streaming: packets are read one at a time (their link layers by `frames`), TCP payload is reassembled in order per
direction (`reassembly`: a FIN counts where it stands in the stream, a SYN's payload is kept, and an address pair
reused by a new connection, after a SYN or a jump in sequence numbers, is followed afresh), and each direction
is followed as HTTP/1: the client's requests (pipelined or one after another on a keep-alive connection) are
queued in order, and each answer is framed as `check`'s client frames it (`http1`, RFC 9112) so that every answer
is paired with its own request line and judged (`findings`).
Only the first bytes of each answer are kept (enough to decide), the queue of outstanding requests is bounded,
and the bytes of a body already decided on are counted, not looked at, so memory stays flat however large the
capture and most packets cost a few header reads. dpkt reads the file formats (and decodes the rare frames the
header reads here do not cover). A truncated or corrupt file ends the scan with a clear message, and what was
read so far is still reported. Needs dpkt (the `pcap` extra).

Every exchange carries its Wireshark coordinates, so that it can be looked at there: `frame`, the frame number
(1-based, every frame of the file counted) of the packet holding the answer's first byte (the request's first byte
when no answer came), and `tcp_stream`, Wireshark's `tcp.stream` index, counted as Wireshark counts it
(`_Conversations`): independently of how long this reader follows a connection.
"""

from __future__ import annotations

import datetime
import struct
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..core import findings, frames, http1, records
from ..core.findings import Finding
from . import reassembly

#: How much of an answer is kept to decide on it: a TLS record head, or a 400 page's phrase.
ANSWER_PREFIX = 4096
#: How much of a request is kept: its request line.
REQUEST_PREFIX = 300
#: The longest HTTP head (request or answer) followed; a longer one ends the following of that direction.
MAX_HEAD = http1.MAX_HEAD
#: Requests kept per connection waiting for their answers (pipelining); the request lines beyond are not kept.
MAX_OUTSTANDING = 64
#: Streams followed at once; the least recently active beyond this are dropped.
MAX_STREAMS = 50_000
#: Streams closed lately whose ends are remembered, so that a late retransmission of theirs begins no new stream.
MAX_FINISHED = 4096
#: Capture seconds after which an idle stream is finished.
IDLE_SECONDS = 300.0
#: Address/port pairs remembered for Wireshark's `tcp.stream` numbering (about 150 bytes each); beyond this the older
#: half is forgotten, and a late packet of a forgotten pair would be counted as a new conversation.
MAX_CONVERSATIONS = 250_000
_BASE = (1 << 33) - 1  # one base in `_Conversations`' packed int

METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE ")

#: The request line reported for an answer whose request was beyond MAX_OUTSTANDING.
UNKEPT_LINE = f"(request line not kept: more than {MAX_OUTSTANDING} requests outstanding)"

_SEQ = reassembly.SEQ_MASK
_IGNORE = reassembly.IGNORE  # a direction's `skip` when nothing more it sends matters
_SYN, _FIN, _RST, _ACK = reassembly.SYN, reassembly.FIN, reassembly.RST, reassembly.ACK


class CaptureError(Exception):
    """The file cannot be read as a capture at all; the message is a sentence for the user."""


@dataclass
class StrayExchange:
    """One HTTP request whose answer was not HTTP (or was the server's plain-HTTP complaint)."""

    time: float
    client: str
    server: str
    request_line: str
    finding: Finding
    #: Wireshark's frame number of the answer's first packet (of the request's when no answer came).
    frame: int = 0
    #: Wireshark's `tcp.stream` index of the connection.
    tcp_stream: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": _iso(self.time),
            "client": self.client,
            "server": self.server,
            "request_line": self.request_line,
            "frame": self.frame,
            "tcp_stream": self.tcp_stream,
            **self.finding.to_dict(),
        }


@dataclass
class ScanResult:
    packets: int = 0
    tcp_streams: int = 0
    requests: int = 0
    exchanges: list[StrayExchange] = field(default_factory=list)
    damaged: str = ""  # why the scan stopped early, if it did
    requests_unkept: int = 0  # requests beyond MAX_OUTSTANDING on one connection: counted, line not kept
    #: Requests still waiting for an answer when the capture ended or the client closed: no finding either way.
    requests_unanswered: int = 0
    #: Bytes missing from the capture (a lost segment) that were stepped over, and how many of those lost the
    #: framing of their direction, so that later answers on that connection were not read.
    gaps: int = 0
    gaps_unread: int = 0
    #: Messages with both Transfer-Encoding and Content-Length: read as chunked (RFC 9112), but a sign of a broken or
    #: smuggling hop.
    framing_conflicts: int = 0
    #: Messages whose framing could not be read (a Content-Length that is no number, a chunk size that is none): the
    #: rest of that direction is not read.
    unframed: int = 0


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _header(head: bytes, name: bytes) -> str | None:
    """The value of header `name` (lower-case) in an HTTP head, or None."""
    for line in head.split(b"\r\n")[1:]:
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == name:
            return value.strip().decode("latin-1")
    return None


class _Request:
    __slots__ = ("at", "line", "method", "time")

    def __init__(self, time: float, at: tuple[int, int]) -> None:
        self.time = time
        self.at = at  # the frame holding its first byte, and its tcp.stream
        self.line = b""  # the first REQUEST_PREFIX bytes of the request, once its head is complete
        self.method: bytes | None = None  # known once its head is complete: HEAD and CONNECT frame the answer


# what the server's side of a stream is doing: waiting for an answer to begin, reading one (`_Stream.framer`), or
# no longer read
_START, _ANSWER, _GONE = range(3)


class _Stream(reassembly.Connection):
    """One TCP connection followed as HTTP/1: its requests, and the start of each answer (judged as it comes).

    The reassembly (`reassembly.Connection`) hands on each direction's bytes in order; `skip` is set here to the
    rest of a body already decided on, so that those bytes are counted, not looked at.
    """

    __slots__ = (
        "a",
        "answer_at",
        "answered",
        "at_frame",
        "b",
        "body",
        "client",
        "closing",
        "decided",
        "frame",
        "framer",
        "held",
        "limit",
        "queue",
        "raw",
        "receiving",
        "req_buf",
        "req_chunks",
        "req_lost",
        "result",
        "state",
        "status",
        "tcp_stream",
        "unkept",
        "unsettled",
    )

    def __init__(self, a: str, b: str, result: ScanResult, tcp_stream: int) -> None:
        self.a, self.b = a, b  # the first packet's source and destination
        self.result = result
        self.tcp_stream = tcp_stream  # Wireshark's index (a new one when the address pair is reused after a SYN)
        self.unsettled = True  # Wireshark's bases of the conversation are not both known yet
        super().__init__()
        self.frame = 0  # the frame number of the segment being handed in (set by the scan loop)
        self.at_frame = 0  # the frame that carried the bytes being handed on
        #: per side, the frame numbers of segments held out of order, by sequence number: their bytes go on later
        self.held: tuple[dict[int, int], dict[int, int]] = ({}, {})
        #: the frame holding the first byte of the answer being read, and its tcp.stream (the answer may be judged
        #: after a SYN has begun a new conversation on the same addresses)
        self.answer_at = (0, 0)
        self.client: int | None = None  # 0: a is the client; 1: b is (known from the SYN, else from a method)
        self.closing = False  # the server's FIN has taken effect (where it stands in the stream): close the stream
        # the client's side
        self.req_buf = bytearray()  # the head of the request being received
        self.req_chunks: http1.ChunkedReader | None = None  # its chunked body, being read
        self.req_lost = False  # the client sent something that is not HTTP: no more requests are read
        self.receiving: _Request | None = None  # the request whose head is being received
        self.queue: deque[_Request] = deque()  # requests waiting for (the end of) their answers, oldest first
        self.unkept = 0  # requests outstanding after the queue whose lines were not kept
        # the server's side: the answer to queue[0]
        self.state = _START
        self.framer = http1.AnswerFramer()  # where the answer's head, body and end are
        self.raw = bytearray()  # the first bytes of an answer that is no HTTP
        self.status = b""
        self.body = bytearray()  # the start of an HTTP answer's body, while it is needed to decide
        self.limit = 0  # how much of the body is kept
        self.decided = False  # the answer being read has been judged (and reported, if it is a finding)
        self.answered = False  # bytes of an answer to queue[0] have arrived

    # -- what the reassembly hands on

    def hold(self, side: int, seq: int) -> None:
        """The segment at `seq` just handed in was kept out of order: remember its frame for when it goes on."""
        if seq in self.pending[side]:
            self.held[side].setdefault(seq, self.frame)

    def deliver(self, side: int, data: bytes, ts: float) -> None:
        held = self.held[side]
        if held:  # bytes kept out of order may be going on now, from an earlier frame than the current one
            nxt = self.nxt[side]
            assert nxt is not None
            self.at_frame = held.pop((nxt - len(data)) & _SEQ, self.frame)
            if not self.pending[side]:
                held.clear()
        else:
            self.at_frame = self.frame
        super().deliver(side, data, ts)

    def stream_bytes(self, side: int, data: bytes, ts: float) -> None:
        if self.client is None:  # no SYN seen: the first side to send an HTTP method asks
            if not data.startswith(METHODS):
                return
            self.client = side
        if side == self.client:
            self.client_bytes(data, ts)
        else:
            self.server_bytes(data)

    def gap(self, side: int, size: int, absorbed: bool) -> None:
        """Bytes of `side` missing from the capture were stepped over. Inside a body whose length is counted, the
        following goes on after the gap; anywhere else the framing of that direction is lost, and its later answers
        (or requests) are not read."""
        self.result.gaps += 1
        if absorbed:
            return
        framer = self.framer
        if side != self.client and self.state == _ANSWER and framer.counting and framer.left >= size:
            framer.pass_over(size)
            if not framer.counting:
                self.answer_done()
        else:
            self.result.gaps_unread += 1
            if side == self.client:
                self._client_lost()
            else:
                self._judge_what_arrived()
                self.server_gone()

    def closed(self, side: int) -> None:
        """A FIN has taken effect: the server's ends the connection (the client's only half: answers may follow)."""
        if side != self.client:
            self.closing = True

    def skipped(self, side: int) -> None:
        """The counted-down body of `side` has ended."""
        if side != self.client:
            self.answer_done()
        # a request body: the client's side simply reads the next request

    # -- the client's side: requests

    def client_bytes(self, data: bytes, ts: float) -> None:
        pos, n = 0, len(data)
        while pos < n:
            if self.req_lost:
                return
            if self.skip[side := self._client_side()]:  # a Content-Length request body
                k = min(self.skip[side], n - pos)
                self.skip[side] -= k
                pos += k
                continue
            if self.req_chunks is not None:
                try:
                    pos, done = self.req_chunks.feed(data, pos, None)
                except http1.FramingError:
                    self.result.unframed += 1
                    self._client_lost()
                    return
                if done:
                    self.req_chunks = None
                continue
            buf = self.req_buf
            if not buf:  # a new request begins (empty lines between requests are allowed)
                while pos < n and data[pos] in b"\r\n":
                    pos += 1
                if pos == n:
                    return
                if not 65 <= data[pos] <= 90:  # a method starts with a capital letter; TLS, a tunnel's bytes, ...
                    self._client_lost()
                    return
                self.begin_request(ts)
            old = len(buf)
            buf += data[pos : pos + MAX_HEAD - old]
            end = buf.find(b"\r\n\r\n", max(0, old - 3))
            if end < 0:
                if len(buf) >= MAX_HEAD:
                    self._client_lost()
                return
            end += 4
            pos += end - old
            head = bytes(buf[:end])
            buf.clear()
            self.request_head(head)

    def _client_side(self) -> int:
        assert self.client is not None
        return self.client

    def _client_lost(self) -> None:
        self.req_lost = True
        self.skip[self._client_side()] = _IGNORE
        if self.receiving is not None:
            self.receiving.line = bytes(self.req_buf[:REQUEST_PREFIX])
            self.receiving = None
        self.req_buf.clear()
        if not self.queue and not self.unkept and self.state == _START:
            self.server_gone()

    def begin_request(self, ts: float) -> None:
        self.result.requests += 1
        request = _Request(ts, (self.at_frame, self.tcp_stream))
        self.receiving = request
        if self.unkept or len(self.queue) >= MAX_OUTSTANDING:
            self.unkept += 1
            self.result.requests_unkept += 1
        else:
            self.queue.append(request)
        if self.state == _ANSWER and self.framer.not_http and len(self.queue) + self.unkept > 1:
            # bytes that are no HTTP have no end of their own: they end when the client asks again. A close-delimited
            # body does not: it ends at the close and only there (RFC 9112, 6.3), whoever sends what meanwhile.
            self.answer_done()

    def request_head(self, head: bytes) -> None:
        request = self.receiving
        assert request is not None
        self.receiving = None
        request.line = head[:REQUEST_PREFIX]
        method = head.split(b" ", 1)[0]
        request.method = method
        framing = http1.request_framing(head)
        self.result.framing_conflicts += framing.conflict
        if framing.body is http1.Body.CHUNKED:
            self.req_chunks = http1.ChunkedReader()
        elif framing.body is http1.Body.LENGTH:
            self.skip[self._client_side()] = framing.length
        elif framing.body is http1.Body.INVALID:
            self.result.unframed += 1
            self._client_lost()

    # -- the server's side: answers

    def outstanding(self) -> bool:
        return bool(self.queue or self.unkept)

    def server_bytes(self, data: bytes) -> None:
        pos, n = 0, len(data)
        framer = self.framer
        while True:
            if self.state == _GONE:
                return
            if self.state == _START:
                if pos >= n or not self.outstanding():
                    return  # nothing more, or bytes nobody asked for
                self.answered = True
                self.state = _ANSWER
                framer.expect(self.queue[0].method if self.queue else None)
            if framer.fresh and pos < n:  # the answer (or the final one after a 1xx) begins here
                self.answer_at = (self.at_frame, self.tcp_stream)
            step, pos = framer.step(data, pos)
            if step is http1.Step.MORE:
                return
            if step is http1.Step.NOT_HTTP:
                self.raw += framer.taken
            elif step is http1.Step.HEAD:
                self.answer_head(bytes(framer.head))
            elif step is http1.Step.END:
                self.answer_done()
            elif step is http1.Step.BODY and framer.not_http:
                room = ANSWER_PREFIX - len(self.raw)
                if room > 0 and not self.decided:
                    self.raw += framer.taken[:room]
                    self.decide_raw(final=False)
                if self.decided:
                    self.skip[1 - self._client_side()] = _IGNORE  # until the client asks again, or closes
                return
            elif step is http1.Step.BODY:
                self.take_body(framer.taken)
                if self.decided and not framer.ending:
                    if framer.counting:  # the rest is counted, not looked at
                        self.skip[1 - self._client_side()] = framer.left
                        framer.pass_over(framer.left)
                        return
                    if framer.chunks is None:  # until the close: nothing more to look at
                        self.skip[1 - self._client_side()] = _IGNORE
                        return
                    framer.keep = False  # chunks: read to their end, not kept
            elif step is http1.Step.TOO_LONG or step is http1.Step.BROKEN:
                self.result.unframed += step is http1.Step.BROKEN
                self.decide_http(final=True)
                self.server_gone()
                return

    def answer_head(self, head: bytes) -> None:
        """A complete head of an HTTP answer to queue[0]: how its body is framed, and whether it is needed."""
        self.status = head[9:12]
        self.limit = max(0, ANSWER_PREFIX - len(head))
        framing = self.framer.framing
        assert framing is not None
        self.result.framing_conflicts += framing.conflict
        body = framing.body
        if body is http1.Body.TUNNEL:
            self.decide_http(final=True)
            self.server_gone()  # neither side speaks HTTP any more
            self.req_lost = True
            self.skip[self._client_side()] = _IGNORE
            return
        if body is http1.Body.NONE:
            self.answer_done()
            return
        self.result.unframed += body is http1.Body.INVALID  # read as what comes until the close
        self.decide_http(final=False)

    def take_body(self, data: bytes) -> None:
        if not self.decided:
            self.body += data[: self.limit - len(self.body)]
            self.decide_http(final=False)

    def decide_raw(self, final: bool) -> None:
        """Decide on an answer that is not HTTP; `final` when no more of it will come."""
        data = bytes(self.raw)
        finding: Finding | None = None
        if records.could_start_tls(data[0]):
            decoded = records.decode(data)
            if not final and len(data) < ANSWER_PREFIX and not isinstance(decoded, records.NotTLS):
                return  # unlike the proxy, a reader can wait for the whole answer and report every record
            if isinstance(decoded, records.NeedMore):
                finding = findings.from_incomplete_head(data)
            else:
                finding = findings.from_response_head(data)
        self.decided = True
        self.report(finding)

    def decide_http(self, final: bool) -> None:
        """Decide on an HTTP answer from its status and the start of its body; `final` when no more will come."""
        if self.decided:
            return
        body, status = self.body, self.status
        complete = self.state == _START  # answer_done() has been called on it
        if not self.limit:  # the head alone filled what is kept
            final = True
        if status != b"400":
            if not body:
                if not (final or complete):
                    return
            elif not records.could_start_tls(body[0]):
                final = True  # nothing in it to report
        if not (final or complete or len(body) >= self.limit):
            return
        self.decided = True
        head = bytes(self.framer.head)
        if head.endswith(b"\r\n\r\n"):  # the head is complete
            code = int(status) if status.isdigit() else 0
            self.report(
                findings.from_response(
                    code, bytes(body), _header(head, b"x-transformed-from"), _header(head, b"content-type")
                )
            )

    def report(self, finding: Finding | None) -> None:
        if finding is None:
            return
        if self.queue:
            time, line, at = self.queue[0].time, self._line(self.queue[0]), self.queue[0].at
        else:
            time, line, at = self.last, UNKEPT_LINE, (0, self.tcp_stream)
        if self.answered:
            at = self.answer_at
        client, server = (self.a, self.b) if self.client == 0 else (self.b, self.a)
        self.result.exchanges.append(StrayExchange(time, client, server, line, finding, *at))

    def _line(self, request: _Request) -> str:
        data = bytes(self.req_buf[:REQUEST_PREFIX]) if request is self.receiving else request.line
        return data.split(b"\r\n", 1)[0].decode("latin-1")

    def answer_done(self) -> None:
        """The answer to queue[0] has ended: judge it if not yet, and expect the next request's."""
        state, self.state = self.state, _START
        framer = self.framer
        if not self.decided:
            if state == _ANSWER and framer.not_http:
                self.decide_raw(final=True)
            elif not (state == _ANSWER and framer.in_prefix):
                self.decide_http(final=True)
        if self.queue:
            self.queue.popleft()
        elif self.unkept:
            self.unkept -= 1
        self.raw.clear()
        self.body.clear()
        self.status = b""
        self.decided = self.answered = False
        if self.client is not None:
            self.skip[1 - self.client] = 0
        if self.req_lost and not self.outstanding():
            self.server_gone()

    def server_gone(self) -> None:
        """Nothing more the server sends is read: a tunnel, a stream that is not HTTP, or framing lost."""
        self.state = _GONE
        if self.client is not None:
            self.skip[1 - self.client] = _IGNORE

    def finish(self, closed_by_server: bool = False) -> None:
        """The connection closed (`closed_by_server`: a FIN or RST from the server), or the capture ended, or the
        stream was dropped."""
        self.flush()
        # a FIN of the server's still waiting for the bytes before it (at the end of the capture) counts as well
        closed_by_server = closed_by_server or any(self.ended[side] for side in (0, 1) if side != self.client)
        state = self.state
        if state == _GONE or not self.outstanding():
            return
        waiting = len(self.queue) + self.unkept
        if state == _START and not self.answered and not closed_by_server:
            # the capture ended (or the client closed) before any answer: no evidence of anything
            self.result.requests_unanswered += waiting
        else:
            if state == _START and not self.answered:
                self.report(findings.silent_close())
            else:
                self._judge_what_arrived()
            self.result.requests_unanswered += waiting - 1  # those asked after it: no answer came on this connection
        self.state = _GONE

    def _judge_what_arrived(self) -> None:
        """No more of the answer being read will be seen: decide on what of it arrived."""
        state, framer = self.state, self.framer
        if state == _ANSWER and framer.in_prefix:
            if framer.head:  # fewer than five bytes, all of them "HTTP/" so far: judged as they are
                self.raw += framer.head
                self.decide_raw(final=True)
        elif state != _START and not self.decided:
            if state == _ANSWER and framer.not_http:
                self.decide_raw(final=True)
            else:
                self.decide_http(final=True)


# -- Wireshark's tcp.stream


class _Conversations:
    """Wireshark's `tcp.stream` numbering (its TCP dissector, checked against tshark 4.0 in the tests).

    Any TCP packet of an address/port pair not seen before begins a conversation, numbered from 0 in order of
    appearance; so does a SYN (without ACK) whose sequence number differs from the base Wireshark keeps for that
    direction (the port pair reused: a retransmitted SYN, same number, is not). The base of a direction is set by its
    first packet (a SYN's own number, else the number less one) or, before that, by the other direction's first ACK
    (the number acknowledged less one). Kept apart from the streams this reader follows: those are dropped when
    closed or idle, while Wireshark's stay for the whole file.
    """

    __slots__ = ("count", "known")

    def __init__(self) -> None:
        #: the pair as first seen (either direction's key finds it) -> its index and the two bases in one int (the
        #: smallest Python object for them: this table grows with the connections, not with what is followed):
        #: index << 66 | (base of that direction + 1) << 33 | (base of the other + 1), 0 for a base not known yet
        self.known: dict[bytes, int] = {}
        self.count = 0

    def index(self, key: bytes, seq: int, ack: int, flags: int) -> tuple[int, bool]:
        """The `tcp.stream` of a packet whose stream key is `key`, and whether both its bases are known now."""
        known = self.known
        mine, theirs = 33, 0  # where this packet's direction keeps its base, and where the other does
        at = key
        packed = known.get(key)
        if packed is None:
            at = _reverse(key)
            packed = known.get(at)
            mine, theirs = 0, 33
        base = -1 if packed is None else (packed >> mine & _BASE) - 1
        if packed is None or (flags & (_SYN | _ACK) == _SYN and base >= 0 and seq != base):
            if packed is not None:
                del known[at]
            if len(known) >= MAX_CONVERSATIONS:  # the older half goes: their pairs seldom come back
                for old in list(known)[: MAX_CONVERSATIONS // 2]:
                    del known[old]
            at, packed, mine, theirs, base = key, self.count << 66, 33, 0, -1
            self.count += 1
        if base < 0:
            packed |= ((seq if flags & _SYN else (seq - 1) & _SEQ) + 1) << mine
        if not packed >> theirs & _BASE and flags & _ACK:
            packed |= (((ack - 1) & _SEQ) + 1) << theirs
        known[at] = packed
        return packed >> 66, bool(packed >> theirs & _BASE)


# -- reading frames


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


_IP4 = struct.Struct(">BxH2xHxB").unpack_from  # version+IHL, total length, flags+fragment offset, protocol
_TCP = struct.Struct(">4xIIBB").unpack_from  # sequence number, acknowledgment number, data offset, flags
_PORTS = struct.Struct(">HH")


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
    key = bytes(layer.src) + bytes(layer.dst) + _PORTS.pack(tcp.sport, tcp.dport)
    return key, tcp.seq, tcp.ack, tcp.flags, bytes(tcp.data)


def _reason(e: BaseException) -> str:
    """dpkt's words for a read error, or the error's name where it has none."""
    return str(e) or type(e).__name__


def _reverse(key: bytes) -> bytes:
    """The stream key of the other direction: addresses and ports swapped."""
    half = (len(key) - 4) // 2
    return key[half : 2 * half] + key[:half] + key[-2:] + key[-4:-2]


def scan(path: Path, on_progress: Callable[[int, int], None] | None = None) -> ScanResult:
    """Scan a capture file; raises CaptureError when it is not readable as a capture at all."""
    import dpkt

    result = ScanResult()
    # both directions' keys -> (stream, the side that sends with that key); insertion order is creation order
    streams: dict[bytes, tuple[_Stream, int]] = {}

    #: the streams closed last (the key of their side 0) -> where each side had got to: a late retransmission of
    #: theirs begins no new stream
    finished: dict[bytes, tuple[int | None, int | None]] = {}

    def close(key: bytes, by_server: bool = False) -> None:
        stream, side = streams.pop(key)
        del streams[_reverse(key)]
        stream.finish(by_server)
        if len(finished) >= MAX_FINISHED:
            del finished[next(iter(finished))]
        finished[_reverse(key) if side else key] = (stream.nxt[0], stream.nxt[1])

    def late(key: bytes, seq: int, size: int) -> bool:
        """The segment holds only bytes of a stream closed lately, that it had already got to (a retransmission)."""
        ends = finished.get(key)
        side = 0
        if ends is None:
            ends, side = finished.get(_reverse(key)), 1
        end = None if ends is None else ends[side]
        return end is not None and (end - (seq + size)) & _SEQ < reassembly.JUMP

    try:
        f = open(path, "rb")  # noqa: SIM115 - closed in the finally below
    except OSError as e:
        raise CaptureError(f"cannot open {path}: {e.strerror or e}") from e
    cut = _CutDetector(f)
    try:
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
        ip4, tcp_fields, get = _IP4, _TCP, streams.get
        conversation = _Conversations().index
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
                    on_progress(count, f.tell())
                for k in [k for k, (s, side) in streams.items() if side == 0 and ts - s.last > IDLE_SECONDS]:
                    close(k)
            # the TCP segment, from the raw bytes: its stream key, sequence number, flags, and payload's bounds
            try:
                where = at(buf)
                if where is None:
                    raise LookupError
                off, version = where
                if version == 4:
                    vhl, total, fragment, proto = ip4(buf, off)
                    ihl = (vhl & 15) << 2
                    if proto != 6 or vhl >> 4 != 4 or ihl < 20 or fragment & 0x1FFF:
                        continue
                    t = off + ihl
                    end = min(off + total, len(buf)) if total else len(buf)
                    key = buf[off + 12 : t + 4] if ihl == 20 else buf[off + 12 : off + 20] + buf[t : t + 4]
                else:
                    if buf[off + 6] != 6:  # extension headers: left to dpkt
                        raise LookupError
                    t = off + 40
                    total = buf[off + 4] << 8 | buf[off + 5]
                    end = min(t + total, len(buf)) if total else len(buf)
                    key = buf[off + 8 : t + 4]
                if end - t < 20:
                    continue
                seq, ack, doff, flags = tcp_fields(buf, t)
                doff = (doff >> 4) << 2
                if doff < 20:
                    continue
                start = t + doff
            except (IndexError, struct.error):
                continue  # a truncated or odd frame: skip it, keep going
            except LookupError:
                slow = _dpkt_tcp(decode, buf)
                if slow is None:
                    continue
                key, seq, ack, flags, buf = slow
                start, end = 0, len(buf)
            size = end - start if end > start else 0
            entry = get(key)
            if entry is not None:
                stream, side = entry
                if flags & _SYN or stream.unsettled:  # a SYN may begin a new conversation; the first packets set bases
                    number, settled = conversation(key, seq, ack, flags)
                    if (number != stream.tcp_stream and flags & (_SYN | _ACK) == _SYN) or (
                        seq != stream.nxt[side] and stream.jumped(side, seq, ack, flags)
                    ):
                        close(key)  # the pair reused by a new connection: what the old one left is not carried on
                        entry = None
                    else:
                        stream.tcp_stream, stream.unsettled = number, not settled
                elif seq != stream.nxt[side] and stream.jumped(side, seq, ack, flags):
                    close(key)  # a new connection whose SYN the capture missed: the same tcp.stream to Wireshark
                    entry, number, settled = None, stream.tcp_stream, True
            else:
                number, settled = conversation(key, seq, ack, flags)  # Wireshark numbers every packet's pair
            if entry is None:
                if not (size or flags & _SYN) or (not flags & _SYN and late(key, seq, size)):
                    continue  # the last ACK or FIN of a stream already finished, or a late retransmission of its bytes
                half = (len(key) - 4) // 2
                sport, dport = _PORTS.unpack_from(key, 2 * half)
                stream = _Stream(
                    frames.endpoint(key[:half], sport), frames.endpoint(key[half : 2 * half], dport), result, number
                )
                if flags & _SYN:  # SYN: this side connects; SYN-ACK: the other side did
                    stream.client = 1 if flags & _ACK else 0
                stream.unsettled = not settled
                streams[key] = (stream, 0)
                streams[_reverse(key)] = (stream, 1)
                result.tcp_streams += 1
                side = 0
                stream.last = ts
                if len(streams) > 2 * MAX_STREAMS:
                    idle = sorted((s.last, k) for k, (s, d) in streams.items() if d == 0)
                    for _, k in idle[: max(1, MAX_STREAMS // 16)]:
                        if k != key:
                            close(k)
            stream.last = ts
            stream.frame = count
            if not flags & 0x07:  # no SYN, FIN or RST
                if not size:
                    continue
                skip = stream.skip[side]
                # in order, nothing in it to look at, no later segment waiting for it, no FIN waiting for it
                if skip > size and seq == stream.nxt[side] and not stream.pending[side] and stream.fin[side] is None:
                    stream.skip[side] = skip - size
                    stream.nxt[side] = (seq + size) & _SEQ
                    continue
            stream.segment(side, seq, flags, buf[start:end], ts)
            if stream.pending[side]:
                stream.hold(side, (seq + 1) & _SEQ if flags & _SYN else seq)
            if flags & _RST:  # a reset ends the connection where it stands in the capture
                close(key, by_server=side != stream.client)
            elif stream.closing:  # the server's FIN, and every byte before it, have gone on
                close(key, by_server=True)
        result.packets = count
        if cut.cut and not result.damaged:
            # inside the last packet, or inside a block after it (pcapng's statistics): the reader cannot tell
            result.damaged = f"the capture is truncated: it ends inside packet {result.packets} or a block after it"
    finally:
        f.close()
    for k in [k for k, (s, side) in streams.items() if side == 0]:
        close(k)
    result.exchanges.sort(key=lambda e: e.time)
    return result
