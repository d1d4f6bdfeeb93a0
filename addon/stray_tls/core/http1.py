"""HTTP/1 message framing by RFC 9112, section 6 (pure, sans-IO): where a message's body ends.

One reading for both of esrs-fix's HTTP/1 readers, `check`'s client (`wire`) and the capture reader (`capture`),
so that they cannot disagree on where an answer ends: both follow answers with `AnswerFramer`, and:

- a response to HEAD, an interim 1xx, 204 and 304 have no body; 101 and a 2xx to CONNECT end HTTP on the connection;
- `Transfer-Encoding` ending in `chunked` frames the body in chunks and wins over `Content-Length`; a message with
  both is read as chunked and flagged (`Framing.conflict`): RFC 9112 calls it a possible smuggling attempt;
- otherwise a valid `Content-Length` (digits; repeated only with the same value) counts the body;
- otherwise a response's body ends at the close, and only there; a request has none;
- a `Content-Length` that is no number, or a request whose transfer coding does not end in chunked, cannot be
  framed at all (`Framing.problem`).

A chunk size is hex digits only (no sign, no `0x`, no `_`: what `int(x, 16)` would also take), at most
`MAX_CHUNK_SIZE_DIGITS` of them. Lines end in CRLF; a bare LF is taken too (RFC 9112, 2.2).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

#: The most hex digits a chunk size may have: 2**64 - 1 fits, leading zeros beyond that are no size.
MAX_CHUNK_SIZE_DIGITS = 16
#: The longest chunk-size line or trailer line followed (extensions included).
MAX_LINE = 65536
_HEXDIGITS = b"0123456789abcdefABCDEF"
_DIGITS = frozenset(b"0123456789")


class FramingError(ValueError):
    """Bytes that break the framing (a chunk size that is none, a line without end): the rest cannot be read.

    `at` is where the offending line began in the bytes last fed (negative when it began in earlier ones).
    """

    def __init__(self, message: str, at: int = 0) -> None:
        super().__init__(message)
        self.at = at


class Body(enum.Enum):
    NONE = "none"  # no body: the next message follows at once
    LENGTH = "length"  # `Framing.length` bytes
    CHUNKED = "chunked"
    CLOSE = "close"  # until the connection closes
    TUNNEL = "tunnel"  # 101 or a 2xx to CONNECT: what follows is no HTTP
    INVALID = "invalid"  # cannot be framed (`Framing.problem` says why)


@dataclass(frozen=True, slots=True)
class Framing:
    body: Body
    length: int = 0
    #: Both Transfer-Encoding (read: chunked) and Content-Length: read as chunked, but not to be trusted.
    conflict: bool = False
    problem: str = ""


NO_BODY = Framing(Body.NONE)


def fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """A head's header fields after its start line, in order: (lower-cased name, value without surrounding
    whitespace); lines without a colon are passed over."""
    out = []
    for line in head.split(b"\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            out.append((name.strip().lower(), value.strip()))
    return out


def status_code(head: bytes) -> int:
    """The status of a response head (`HTTP/1.1 200 OK`), or 0 when its status line has none."""
    code = head[9:12]
    return int(code) if len(code) == 3 and code.isdigit() and head[12:13] in (b" ", b"\r", b"\n", b"") else 0


def is_interim(code: int) -> bool:
    """An interim answer (100 Continue, 103 Early Hints): the real one follows. 101 is final."""
    return 100 <= code < 200 and code != 101


def response_framing(head: bytes, method: bytes | None = None) -> Framing:
    """How the body of the response `head` (to a request with `method`, when known) is framed."""
    code = status_code(head)
    if code == 101 or (method == b"CONNECT" and 200 <= code < 300):
        return Framing(Body.TUNNEL)
    if 100 <= code < 200 or code in (204, 304) or method == b"HEAD":
        return NO_BODY
    return _framing(head, request=False)


def request_framing(head: bytes) -> Framing:
    """How the body of the request `head` is framed: no framing header means no body."""
    return _framing(head, request=True)


def _framing(head: bytes, request: bool) -> Framing:
    codings: list[bytes] = []
    lengths: set[bytes] = set()
    for name, value in fields(head):
        if name == b"transfer-encoding":
            codings += [c.strip().lower() for c in value.split(b",") if c.strip()]
        elif name == b"content-length":
            lengths |= {v.strip() for v in value.split(b",")}
    if codings:
        if codings[-1] != b"chunked":
            if request:
                return Framing(Body.INVALID, problem=f"a request's transfer coding {_text(codings[-1])} is not chunked")
            return Framing(Body.CLOSE, conflict=bool(lengths))
        return Framing(Body.CHUNKED, conflict=bool(lengths))
    if lengths:
        if len(lengths) > 1 or not all(v and set(v) <= _DIGITS for v in lengths):
            shown = ", ".join(sorted(_text(v) for v in lengths))
            return Framing(Body.INVALID, problem=f"Content-Length {shown} is not one number")
        length = int(lengths.pop())
        return Framing(Body.LENGTH, length) if length else NO_BODY
    return NO_BODY if request else Framing(Body.CLOSE)


def _text(value: bytes) -> str:
    return repr(value.decode("latin-1")[:40])


class ChunkedReader:
    """A streaming reader of a chunked body: feed it bytes, it says where the body (trailers included) ended.

    Raises FramingError where the bytes are not a chunked body; from then on nothing more of the message is read.
    """

    __slots__ = ("left", "line", "state")

    SIZE, DATA, DATA_END, TRAILER = range(4)

    def __init__(self) -> None:
        self.state = self.SIZE
        self.left = 0
        self.line = bytearray()

    def feed(self, data: bytes, pos: int = 0, sink: Callable[[bytes], object] | None = None) -> tuple[int, bool]:
        """Consume `data` from `pos`, handing chunk data to `sink`; (where the consumed part ends, whether the body
        ended there: then the bytes from that position belong to what follows the message)."""
        n = len(data)
        while pos < n:
            state = self.state
            if state == self.DATA:
                k = min(self.left, n - pos)
                if sink is not None:
                    sink(data[pos : pos + k])
                pos += k
                self.left -= k
                if not self.left:
                    self.state = self.DATA_END
                continue
            if state == self.DATA_END and not self.line and data.startswith(b"\r\n", pos):  # the common case
                pos += 2
                self.state = self.SIZE
                continue
            at = pos - len(self.line)  # where the line began
            i = data.find(b"\n", pos)
            if i < 0:
                self.line += data[pos:]
                if len(self.line) > MAX_LINE:
                    raise FramingError("a chunk-size or trailer line without end", at)
                return n, False
            if self.line:
                line = bytes(self.line) + data[pos:i]
                self.line.clear()
            else:
                line = data[pos:i]
            pos = i + 1
            if state == self.SIZE:
                try:
                    self.left = chunk_size(line)
                except FramingError as e:
                    e.at = at
                    raise
                self.state = self.DATA if self.left else self.TRAILER
            elif line not in (b"", b"\r"):
                if state == self.DATA_END:
                    raise FramingError(f"chunk data is followed by {_text(line)}, not by a line end", at)
            elif state == self.DATA_END:
                self.state = self.SIZE
            else:  # the empty line after the trailers
                return pos, True
        return pos, False


def chunk_size(line: bytes) -> int:
    """The size in a chunk-size line (`1a`, `1a;name=value`, `1a ; name`, with or without its CR); FramingError
    for anything else."""
    size = line.partition(b";")[0].rstrip(b" \t\r")
    if not size or len(size) > MAX_CHUNK_SIZE_DIGITS or size.strip(_HEXDIGITS):
        raise FramingError(f"chunk size {_text(line)} is not 1 to {MAX_CHUNK_SIZE_DIGITS} hex digits")
    return int(size, 16)


#: The longest answer head followed; a longer one loses the framing (`Step.TOO_LONG`).
MAX_HEAD = 65536


class Step(enum.Enum):
    """What `AnswerFramer.step` found."""

    MORE = "more"  # every byte given was taken, and the answer goes on
    NOT_HTTP = "not_http"  # the answer does not begin with "HTTP/" (`taken`: its first bytes); no HTTP follows
    INTERIM = "interim"  # an interim head (1xx, not 101) was passed over (`head`): the final answer follows
    HEAD = "head"  # the final answer's head is complete (`head`, `framing`)
    BODY = "body"  # bytes of the body (`taken`; de-chunked), or of an answer that is no HTTP
    END = "end"  # the answer ended where its framing says (after its head, its length or its last chunk)
    TOO_LONG = "too_long"  # the head grew past `max_head`: the framing is lost
    BROKEN = "broken"  # a chunked body that is none (`error`, where the bad line began: `error.at`; `taken`: the
    # body read before it)


# what an AnswerFramer is reading
_PREFIX, _HEAD, _NOT_HTTP, _LENGTH, _CHUNKED, _UNTIL_CLOSE, _ENDING, _ENDED, _LOST = range(9)


class AnswerFramer:
    """Where an answer's head, body and end are, by RFC 9112 (`response_framing`), fed bytes as they arrive (sans-IO).

    The one reading of HTTP/1 answers for check's client (`wire`) and the capture reader (`capture`): interim 1xx
    heads are passed over; 101 and a 2xx to CONNECT end with their head (what follows is no HTTP), as do 204, 304
    and an answer to HEAD; a body is counted, de-chunked, or read until the close. An answer that does not begin
    with `HTTP/` is no HTTP: its bytes are handed on as they come, with no end of its own (the caller ends it).
    `step(data, pos)` reads from `pos` up to the next thing worth saying and returns it with where it stopped; the
    caller says `expect(method)` before each answer. `keep = False` counts a chunked body without handing it on.
    """

    __slots__ = ("chunks", "error", "framing", "head", "keep", "left", "max_head", "method", "state", "taken")

    def __init__(self, method: bytes | None = None, max_head: int = MAX_HEAD) -> None:
        self.max_head = max_head
        self.head = bytearray()
        self.taken = b""
        self.error: FramingError | None = None
        self.expect(method)

    def expect(self, method: bytes | None) -> None:
        """The next answer, to a request with `method` (None: not known) begins with the next byte fed."""
        self.method = method
        self.state = _PREFIX
        self.head = bytearray()
        self.framing: Framing | None = None
        self.left = 0  # body bytes still to come, when counted
        self.chunks: ChunkedReader | None = None
        self.keep = True

    @property
    def fresh(self) -> bool:
        """Nothing of the answer has come yet."""
        return self.state == _PREFIX and not self.head

    @property
    def in_prefix(self) -> bool:
        """The answer so far (perhaps nothing yet) could still begin `HTTP/`."""
        return self.state == _PREFIX

    @property
    def not_http(self) -> bool:
        """The answer did not begin with `HTTP/`."""
        return self.state == _NOT_HTTP

    @property
    def ending(self) -> bool:
        """The answer's last byte has been read: the next `step` says `END`."""
        return self.state == _ENDING

    @property
    def counting(self) -> bool:
        """The body is being counted (`left` bytes to come): the caller may count the rest without feeding it."""
        return self.state == _LENGTH

    def pass_over(self, size: int) -> None:
        """`size` bytes of a counted body went by unread (the caller counts them itself, or they are missing from a
        capture); at its end the answer has ended."""
        self.left -= size
        if self.left <= 0:
            self.left, self.state = 0, _ENDED

    def step(self, data: bytes, pos: int = 0) -> tuple[Step, int]:
        """Read `data` from `pos` until something is worth saying; returns it and where reading stopped."""
        n = len(data)
        state = self.state
        if state == _ENDING:
            self.state = _ENDED
            return Step.END, pos
        while pos < n:
            if state == _PREFIX:  # as long as the answer so far could begin "HTTP/"
                head = self.head
                take = min(5 - len(head), n - pos)
                head += data[pos : pos + take]
                pos += take
                if not b"HTTP/".startswith(head):
                    self.state, self.taken = _NOT_HTTP, bytes(head)
                    return Step.NOT_HTTP, pos
                if len(head) == 5:
                    state = self.state = _HEAD
            elif state == _HEAD:
                head = self.head
                old = len(head)
                head += data[pos : pos + self.max_head - old]
                end = head.find(b"\r\n\r\n", max(0, old - 3))
                if end < 0:
                    if len(head) >= self.max_head:
                        self.state = _LOST
                        return Step.TOO_LONG, n
                    return Step.MORE, n
                end += 4
                pos += end - old
                del head[end:]
                return self._head_done(bytes(head)), pos
            elif state == _LENGTH:
                k = min(self.left, n - pos)
                self.taken = data[pos : pos + k]
                self.left -= k
                if not self.left:
                    self.state = _ENDING
                return Step.BODY, pos + k
            elif state == _CHUNKED:
                assert self.chunks is not None
                pieces: list[bytes] = []
                try:
                    pos, done = self.chunks.feed(data, pos, pieces.append if self.keep else None)
                except FramingError as e:
                    self.state, self.error, self.taken = _LOST, e, b"".join(pieces)
                    return Step.BROKEN, n
                if done:
                    self.state = _ENDING
                self.taken = b"".join(pieces)
                return Step.BODY, pos
            elif state in (_UNTIL_CLOSE, _NOT_HTTP):
                self.taken = data[pos:]
                return Step.BODY, n
            else:  # ended or lost: nothing more of this answer is read
                return Step.MORE, n
        return Step.MORE, pos

    def _head_done(self, head: bytes) -> Step:
        if is_interim(status_code(head)):
            self.head = bytearray()
            self.state = _PREFIX
            self.taken = head
            return Step.INTERIM
        framing = self.framing = response_framing(head, self.method)
        body = framing.body
        if body in (Body.NONE, Body.TUNNEL):
            self.state = _ENDING
        elif body is Body.CHUNKED:
            self.state, self.chunks = _CHUNKED, ChunkedReader()
        elif body is Body.LENGTH:
            self.state, self.left = _LENGTH, framing.length
        else:  # CLOSE, or INVALID: a body no header frames is read as what comes until the close
            self.state = _UNTIL_CLOSE
        return Step.HEAD
