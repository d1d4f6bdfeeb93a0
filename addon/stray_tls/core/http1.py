"""HTTP/1 message framing by RFC 9112, section 6 (pure, sans-IO): where a message's body ends.

One reading for both of esrs-fix's HTTP/1 readers, `check`'s client (`wire`) and the capture reader (`capture`),
so that they cannot disagree on where an answer ends:

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
