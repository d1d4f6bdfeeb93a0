"""One TCP connection of a capture followed as HTTP/1 (`esrs-fix pcap`): the client's requests, in order, and the
start of each answer, framed as check's client frames it (`http1.AnswerFramer`) and judged as it comes.

`Stream` takes the reassembled bytes (`reassembly.Connection`) and hands each direction to its side: `Requests`
queues the client's requests (pipelined or one after another, their bodies counted or de-chunked), `Answers` pairs
each answer with the request at the head of the queue and judges it (`findings`). Only the first bytes of an answer
are kept (enough to decide); the rest of a body already decided on is counted, not looked at (`skip`).
"""

from __future__ import annotations

from collections import deque

from ..core import findings, http1, records
from ..core.findings import Finding
from . import reassembly
from .results import ScanResult, StrayExchange

#: How much of an answer is kept to decide on it: a TLS record head, or a 400 page's phrase.
ANSWER_PREFIX = 4096
#: How much of a request is kept: its request line.
REQUEST_PREFIX = 300
#: The longest HTTP head (request or answer) followed; a longer one ends the following of that direction.
MAX_HEAD = http1.MAX_HEAD
#: Requests kept per connection waiting for their answers (pipelining); the request lines beyond are not kept.
MAX_OUTSTANDING = 64

METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE ")

#: The request line reported for an answer whose request was beyond MAX_OUTSTANDING.
UNKEPT_LINE = f"(request line not kept: more than {MAX_OUTSTANDING} requests outstanding)"

_SEQ = reassembly.SEQ_MASK
_IGNORE = reassembly.IGNORE  # a direction's `skip` when nothing more it sends matters


def _header(head: bytes, name: bytes) -> str | None:
    """The value of header `name` (lower-case) in an HTTP head, or None."""
    return next((value.decode("latin-1") for key, value in http1.fields(head) if key == name), None)


class Request:
    __slots__ = ("at", "line", "method", "time")

    def __init__(self, time: float, at: tuple[int, int]) -> None:
        self.time = time
        self.at = at  # the frame holding its first byte, and its tcp.stream
        self.line = b""  # the first REQUEST_PREFIX bytes of the request, once its head is complete
        self.method: bytes | None = None  # known once its head is complete: HEAD and CONNECT frame the answer


class Stream(reassembly.Connection):
    """One TCP connection: the reassembly's bytes in order, each direction to its side (`requests`, `answers`)."""

    __slots__ = ("a", "answers", "at_frame", "at_time", "b", "client", "closing", "frame", "frame_time", "held",
                 "requests", "result", "tcp_stream", "unsettled")  # fmt: skip

    def __init__(self, a: str, b: str, result: ScanResult, tcp_stream: int) -> None:
        self.a, self.b = a, b  # the first packet's source and destination
        self.result = result
        self.tcp_stream = tcp_stream  # Wireshark's index (a new one when the address pair is reused after a SYN)
        self.unsettled = True  # Wireshark's bases of the conversation are not both known yet
        super().__init__()
        self.frame = 0  # the frame number of the segment being handed in (set by the scan loop)
        self.frame_time = 0.0  # and its capture time
        self.at_frame = 0  # the frame that carried the bytes being handed on
        self.at_time = 0.0  # and its capture time
        #: per side, the frame numbers and times of segments held out of order, by sequence number: their bytes go on
        #: later
        self.held: tuple[dict[int, tuple[int, float]], dict[int, tuple[int, float]]] = ({}, {})
        self.client: int | None = None  # 0: a is the client; 1: b is (known from the SYN, else from a method)
        self.closing = False  # the server's FIN has taken effect (where it stands in the stream): close the stream
        self.requests = Requests(self)
        self.answers = Answers(self)

    @property
    def client_side(self) -> int:
        assert self.client is not None
        return self.client

    # -- what the reassembly hands on

    def hold(self, side: int, seq: int) -> None:
        """The segment at `seq` just handed in was kept out of order: remember its frame for when it goes on."""
        if seq in self.pending[side]:
            self.held[side].setdefault(seq, (self.frame, self.frame_time))

    def deliver(self, side: int, data: bytes, ts: float) -> None:
        held = self.held[side]
        if held:  # bytes kept out of order may be going on now, from an earlier frame than the current one
            nxt = self.nxt[side]
            assert nxt is not None
            self.at_frame, self.at_time = held.pop((nxt - len(data)) & _SEQ, (self.frame, self.frame_time))
            if not self.pending[side]:
                held.clear()
        else:
            self.at_frame, self.at_time = self.frame, self.frame_time
        super().deliver(side, data, ts)

    def stream_bytes(self, side: int, data: bytes, ts: float) -> None:
        if self.client is None:  # no SYN seen: the first side to send an HTTP method asks
            if not data.startswith(METHODS):
                return
            self.client = side
        if side == self.client:
            self.requests.take(data, ts)
        else:
            self.answers.take(data)

    def gap(self, side: int, size: int, absorbed: bool) -> None:
        """Bytes of `side` missing from the capture were stepped over. Inside a body whose length is counted, the
        following goes on after the gap; anywhere else the framing of that direction is lost, and its later answers
        (or requests) are not read."""
        self.result.gaps += 1
        if absorbed:
            return
        if side != self.client and self.answers.pass_over(size):
            return
        self.result.gaps_unread += 1
        if side == self.client:
            self.requests.lose_track()
        else:
            self.answers.judge_what_arrived()
            self.answers.gone()

    def closed(self, side: int) -> None:
        """A FIN has taken effect: the server's ends the connection (the client's only half: answers may follow)."""
        if side != self.client:
            self.closing = True

    def skipped(self, side: int) -> None:
        """The counted-down body of `side` has ended."""
        if side != self.client:
            self.answers.done()
        # a request body: the client's side simply reads the next request

    def finish(self, closed_by_server: bool = False) -> None:
        """The connection closed (`closed_by_server`: a FIN or RST from the server), or the capture ended, or the
        stream was dropped."""
        self.flush()
        # a FIN of the server's still waiting for the bytes before it (at the end of the capture) counts as well
        closed_by_server = closed_by_server or any(self.ended[side] for side in (0, 1) if side != self.client)
        self.answers.finish(closed_by_server)


class Requests:
    """The client's side of a stream: its requests, queued until their answers end (oldest first)."""

    __slots__ = ("buf", "chunks", "lost", "queue", "receiving", "stream", "unkept")

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.buf = bytearray()  # the head of the request being received
        self.chunks: http1.ChunkedReader | None = None  # its chunked body, being read
        self.lost = False  # the client sent something that is not HTTP: no more requests are read
        self.receiving: Request | None = None  # the request whose head is being received
        self.queue: deque[Request] = deque()  # requests waiting for (the end of) their answers, oldest first
        self.unkept = 0  # requests outstanding after the queue whose lines were not kept

    def outstanding(self) -> bool:
        return bool(self.queue or self.unkept)

    def take(self, data: bytes, ts: float) -> None:
        """In-order bytes from the client."""
        stream = self.stream
        skip = stream.skip
        pos, n = 0, len(data)
        while pos < n:
            if self.lost:
                return
            if skip[side := stream.client_side]:  # a Content-Length request body
                k = min(skip[side], n - pos)
                skip[side] -= k
                pos += k
                continue
            if self.chunks is not None:
                try:
                    pos, done = self.chunks.feed(data, pos, None)
                except http1.FramingError:
                    stream.result.unframed += 1
                    self.lose_track()
                    return
                if done:
                    self.chunks = None
                continue
            buf = self.buf
            if not buf:  # a new request begins (empty lines between requests are allowed)
                while pos < n and data[pos] in b"\r\n":
                    pos += 1
                if pos == n:
                    return
                if not 65 <= data[pos] <= 90:  # a method starts with a capital letter; TLS, a tunnel's bytes, ...
                    self.lose_track()
                    return
                self.begin(ts)
            old = len(buf)
            buf += data[pos : pos + MAX_HEAD - old]
            end = buf.find(b"\r\n\r\n", max(0, old - 3))
            if end < 0:
                if len(buf) >= MAX_HEAD:
                    self.lose_track()
                return
            end += 4
            pos += end - old
            head = bytes(buf[:end])
            buf.clear()
            self.head(head)

    def lose_track(self) -> None:
        """Nothing more the client sends is read (not HTTP, a tunnel, framing lost)."""
        stream = self.stream
        self.lost = True
        stream.skip[stream.client_side] = _IGNORE
        if self.receiving is not None:
            self.receiving.line = bytes(self.buf[:REQUEST_PREFIX])
            self.receiving = None
        self.buf.clear()
        if not self.outstanding() and stream.answers.waiting:
            stream.answers.gone()

    def begin(self, ts: float) -> None:
        stream = self.stream
        stream.result.requests += 1
        request = Request(ts, (stream.at_frame, stream.tcp_stream))
        self.receiving = request
        if self.unkept or len(self.queue) >= MAX_OUTSTANDING:
            self.unkept += 1
            stream.result.requests_unkept += 1
        else:
            self.queue.append(request)
        if stream.answers.reading_no_http and len(self.queue) + self.unkept > 1:
            # bytes that are no HTTP have no end of their own: they end when the client asks again. A close-delimited
            # body does not: it ends at the close and only there (RFC 9112, 6.3), whoever sends what meanwhile.
            stream.answers.done()

    def head(self, head: bytes) -> None:
        stream = self.stream
        request = self.receiving
        assert request is not None
        self.receiving = None
        request.line = head[:REQUEST_PREFIX]
        request.method = head.split(b" ", 1)[0]
        framing = http1.request_framing(head)
        stream.result.framing_conflicts += framing.conflict
        if framing.body is http1.Body.CHUNKED:
            self.chunks = http1.ChunkedReader()
        elif framing.body is http1.Body.LENGTH:
            stream.skip[stream.client_side] = framing.length
        elif framing.body is http1.Body.INVALID:
            stream.result.unframed += 1
            self.lose_track()

    def line(self, request: Request) -> str:
        data = bytes(self.buf[:REQUEST_PREFIX]) if request is self.receiving else request.line
        return data.split(b"\r\n", 1)[0].decode("latin-1")

    def answered(self) -> None:
        """The answer to the oldest request has ended."""
        if self.queue:
            self.queue.popleft()
        elif self.unkept:
            self.unkept -= 1


# what the server's side is doing: waiting for an answer to begin, reading one (`Answers.framer`), or no longer read
_START, _ANSWER, _GONE = range(3)


class Answers:
    """The server's side of a stream: the answer to the oldest request, framed and judged as it comes."""

    __slots__ = ("answer_at", "answer_time", "answered", "body", "decided", "framer", "limit", "raw", "state", "status",
                 "stream")  # fmt: skip

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.state = _START
        self.framer = http1.AnswerFramer()  # where the answer's head, body and end are
        self.raw = bytearray()  # the first bytes of an answer that is no HTTP
        self.status = 0  # the HTTP answer's status (0: none that reads)
        self.body = bytearray()  # the start of an HTTP answer's body, while it is needed to decide
        self.limit = 0  # how much of the body is kept
        self.decided = False  # the answer being read has been judged (and reported, if it is a finding)
        self.answered = False  # bytes of an answer to the oldest request have arrived
        #: the frame holding the first byte of the answer being read, and its tcp.stream (the answer may be judged
        #: after a SYN has begun a new conversation on the same addresses)
        self.answer_at = (0, 0)
        self.answer_time = 0.0  # the capture time of that frame

    @property
    def waiting(self) -> bool:
        """No answer is being read."""
        return self.state == _START

    @property
    def reading_no_http(self) -> bool:
        return self.state == _ANSWER and self.framer.not_http

    def _skip_rest(self, count: int) -> None:
        stream = self.stream
        stream.skip[1 - stream.client_side] = count

    def take(self, data: bytes) -> None:
        """In-order bytes from the server."""
        pos, n = 0, len(data)
        framer, requests = self.framer, self.stream.requests
        while True:
            if self.state == _GONE:
                return
            if self.state == _START:
                if pos >= n or not requests.outstanding():
                    return  # nothing more, or bytes nobody asked for
                self.answered = True
                self.state = _ANSWER
                framer.expect(requests.queue[0].method if requests.queue else None)
            if framer.fresh and pos < n:  # the answer (or the final one after a 1xx) begins here
                self.answer_at = (self.stream.at_frame, self.stream.tcp_stream)
                self.answer_time = self.stream.at_time
            step, pos = framer.step(data, pos)
            if step is http1.Step.MORE:
                return
            if step is http1.Step.NOT_HTTP:
                self.raw += framer.taken
            elif step is http1.Step.HEAD:
                self.head(bytes(framer.head))
            elif step is http1.Step.END:
                self.done()
            elif step is http1.Step.BODY and framer.not_http:
                room = ANSWER_PREFIX - len(self.raw)
                if room > 0 and not self.decided:
                    self.raw += framer.taken[:room]
                    self.decide_raw(final=False)
                if self.decided:
                    self._skip_rest(_IGNORE)  # until the client asks again, or closes
                return
            elif step is http1.Step.BODY:
                self.take_body(framer.taken)
                if self.decided and not framer.ending:
                    if framer.counting:  # the rest is counted, not looked at
                        self._skip_rest(framer.left)
                        framer.pass_over(framer.left)
                        return
                    if framer.chunks is None:  # until the close: nothing more to look at
                        self._skip_rest(_IGNORE)
                        return
                    framer.keep = False  # chunks: read to their end, not kept
            elif step is http1.Step.TOO_LONG or step is http1.Step.BROKEN:
                self.stream.result.unframed += step is http1.Step.BROKEN
                self.decide_http(final=True)
                self.gone()
                return

    def pass_over(self, size: int) -> bool:
        """`size` bytes missing from the capture inside a counted body: counted as gone by; whether they were."""
        framer = self.framer
        if not (self.state == _ANSWER and framer.counting and framer.left >= size):
            return False
        framer.pass_over(size)
        if not framer.counting:
            self.done()
        return True

    def head(self, head: bytes) -> None:
        """A complete head of an HTTP answer to the oldest request: how its body is framed, whether it is needed."""
        stream = self.stream
        self.status = http1.status_code(head)
        self.limit = max(0, ANSWER_PREFIX - len(head))
        framing = self.framer.framing
        assert framing is not None
        stream.result.framing_conflicts += framing.conflict
        body = framing.body
        if body is http1.Body.TUNNEL:
            self.decide_http(final=True)
            self.gone()  # neither side speaks HTTP any more
            stream.requests.lost = True
            stream.skip[stream.client_side] = _IGNORE
            return
        if body is http1.Body.NONE:
            self.done()
            return
        stream.result.unframed += body is http1.Body.INVALID  # read as what comes until the close
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
        complete = self.state == _START  # done() has been called on it
        if not self.limit:  # the head alone filled what is kept
            final = True
        if status != 400:
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
            self.report(
                findings.from_response(
                    status, bytes(body), _header(head, b"x-transformed-from"), _header(head, b"content-type")
                )
            )

    def report(self, finding: Finding | None) -> None:
        if finding is None:
            return
        stream, requests = self.stream, self.stream.requests
        if requests.queue:
            first = requests.queue[0]
            time, line, at = first.time, requests.line(first), first.at
        else:
            time, line, at = stream.last, UNKEPT_LINE, (0, stream.tcp_stream)
        answered = self.answer_time if self.answered else None
        if self.answered:
            at = self.answer_at
        client, server = (stream.a, stream.b) if stream.client == 0 else (stream.b, stream.a)
        stream.result.exchanges.append(StrayExchange(time, client, server, line, finding, *at, answered))

    def done(self) -> None:
        """The answer to the oldest request has ended: judge it if not yet, and expect the next request's."""
        state, self.state = self.state, _START
        framer, stream = self.framer, self.stream
        if not self.decided:
            if state == _ANSWER and framer.not_http:
                self.decide_raw(final=True)
            elif not (state == _ANSWER and framer.in_prefix):
                self.decide_http(final=True)
        stream.requests.answered()
        self.raw.clear()
        self.body.clear()
        self.status = 0
        self.decided = self.answered = False
        if stream.client is not None:
            stream.skip[1 - stream.client] = 0
        if stream.requests.lost and not stream.requests.outstanding():
            self.gone()

    def gone(self) -> None:
        """Nothing more the server sends is read: a tunnel, a stream that is not HTTP, or framing lost."""
        self.state = _GONE
        if self.stream.client is not None:
            self._skip_rest(_IGNORE)

    def finish(self, closed_by_server: bool) -> None:
        """No more of the connection will be seen: judge the answer being read, and count the requests left."""
        requests, result = self.stream.requests, self.stream.result
        state = self.state
        if state == _GONE or not requests.outstanding():
            return
        waiting = len(requests.queue) + requests.unkept
        if state == _START and not self.answered and not closed_by_server:
            # the capture ended (or the client closed) before any answer: no evidence of anything
            result.requests_unanswered += waiting
        else:
            if state == _START and not self.answered:
                self.report(findings.silent_close())
            else:
                self.judge_what_arrived()
            result.requests_unanswered += waiting - 1  # those asked after it: no answer came on this connection
        self.state = _GONE

    def judge_what_arrived(self) -> None:
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
