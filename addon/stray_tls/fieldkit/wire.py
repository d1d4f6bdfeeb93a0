"""A small HTTP/1 client on a plain socket: send one request, read one answer, say what came back.

`esrs-fix check` and the lab's stand-in check both use it; it parses only as far as the answer is HTTP, keeps
the raw bytes, and never raises for what a proxy or server sends.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..core import findings, http1, records
from ..core.findings import Finding, Kind
from ..core.names import LABEL_HEADER

_LABEL = LABEL_HEADER.lower()


@dataclass
class Answer:
    """What came back over one connection, parsed as far as it is HTTP."""

    raw: bytes
    status: int | None = None
    status_line: str = ""
    headers: dict[str, str] | None = None
    #: Every header field in order, names lower-cased: a proxy may send several Proxy-Authenticate fields.
    fields: list[tuple[str, str]] = field(default_factory=list)
    #: The body, de-chunked when the answer was `Transfer-Encoding: chunked` (squid's HTTP/0.9 wrapping is).
    body: bytes = b""
    timed_out: bool = False
    error: str = ""
    #: Why the body's framing is not to be trusted (both Transfer-Encoding and Content-Length, a chunk size that
    #: is none, a Content-Length that is no number); empty when it is sound.
    framing_problem: str = ""
    #: The whole answer came, as its framing says (its body to the end): the connection may carry the next message.
    complete: bool = False
    #: Seconds from sending the request to the last byte read (or the timeout, or the error); None: nothing was sent.
    seconds: float | None = None
    #: The bytes of the request this answers.
    sent: int = 0

    @property
    def label(self) -> str | None:
        """The X-ESRS-Fix header: present only when esrs-fix made (or flagged) the answer."""
        return (self.headers or {}).get(_LABEL)

    def header(self, name: str) -> str | None:
        return (self.headers or {}).get(name.lower())

    def all(self, name: str) -> list[str]:
        """Every value of header `name`, in order."""
        name = name.lower()
        return [value for n, value in self.fields if n == name]

    def redacted(self, hide: Callable[[bytes], bytes]) -> Answer:
        """This answer with `hide` applied to every byte and text it holds (a password taken out), status and header
        names kept (a header is found by its name: a short password must not turn `Server` into `S***rv***r`)."""

        def head(value: str) -> str:  # decoded as latin-1 from the bytes that came: back to those bytes
            return hide(value.encode("latin-1")).decode("latin-1")

        return replace(
            self,
            raw=hide(self.raw),
            status_line=head(self.status_line),
            headers=None if self.headers is None else {k: head(v) for k, v in self.headers.items()},
            fields=[(k, head(v)) for k, v in self.fields],
            body=hide(self.body),
            framing_problem=hide(self.framing_problem.encode("latin-1", "replace")).decode("latin-1"),
            error=hide(self.error.encode("utf-8", "surrogateescape")).decode("utf-8", "surrogateescape"),
        )


def exchange(address: tuple[str, int], request: bytes, timeout: float) -> Answer:
    """Connect, send `request`, read one HTTP response (or raw bytes until close / timeout)."""
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection(address, timeout=timeout)
    except OSError as e:
        return Answer(b"", error=f"cannot connect to {address[0]}:{address[1]}: {e.strerror or e}")
    with sock:
        return send_and_read(sock, request, deadline)


#: How much of an answer is read at most: enough for any head and error page, and the output stays readable.
MAX_ANSWER = 1 << 20


def send_and_read(sock: socket.socket, request: bytes, deadline: float, *, head_only: bool = False) -> Answer:
    """Send `request` on a connected socket (plain or TLS) and read one answer before `deadline`.

    `head_only` stops at the end of the head. An answer to CONNECT is read a byte at a time up to the end of its head,
    so that a 2xx eats no tunnel byte; any other answer to it (a 407 with its challenge) is read to the end of its
    body as its framing says, so that the connection stays in step for the next request. At most `MAX_ANSWER` bytes
    are read.
    """
    method = request.split(b" ", 1)[0]
    reader = AnswerReader(method, head_only=head_only)
    connect = method == b"CONNECT"
    timed_out, error = False, ""
    started = time.monotonic()
    try:
        sock.sendall(request)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            sock.settimeout(remaining)
            # a CONNECT answer must not eat tunnel bytes: a byte at a time until its head tells its framing
            chunk = sock.recv(1 if head_only or (connect and reader.framing is None) else 65536)
            if not chunk or reader.feed(chunk) or len(reader.data) >= MAX_ANSWER:
                break
    except TimeoutError:
        timed_out = True
    except OSError as e:
        error = f"connection error: {e.strerror or e}"
    return replace(reader.answer(timed_out, error), seconds=time.monotonic() - started, sent=len(request))


class AnswerReader:
    """One answer, fed as it arrives (sans-IO): `feed` says when it is complete, as `http1.AnswerFramer` frames it;
    `answer` parses what arrived, complete or not, as far as it is HTTP.

    With `head_only` every answer ends with its first head (an interim one too); a close-delimited body, one no
    header frames, or an answer that is no HTTP is complete only when the peer closes.
    """

    def __init__(self, method: bytes = b"GET", *, head_only: bool = False) -> None:
        self.head_only = head_only
        self.data = bytearray()
        self.framer = http1.AnswerFramer(method, max_head=MAX_ANSWER)
        self.read = 0  # how much of `data` the framer has read
        self.start = 0  # where the answer being read (after any interim ones) begins
        self.chunked_body = bytearray()
        self.broken_at = -1  # where the chunked body stopped being one (the rest is shown as it came)
        self.error = ""  # why the chunked body could not be read
        self.done = False

    @property
    def framing(self) -> http1.Framing | None:
        """How the final answer's body is framed, once its head is complete."""
        return self.framer.framing

    def feed(self, chunk: bytes) -> bool:
        """Take the next bytes; whether the answer is now complete (what follows it is not read)."""
        self.data += chunk
        data = bytes(self.data)
        while not self.done:
            step, self.read = self.framer.step(data, self.read)
            if step is http1.Step.MORE or step is http1.Step.NOT_HTTP:
                break  # more to come, or no HTTP: read until the close
            if step is http1.Step.INTERIM:
                self.start = self.read
                self.done = self.head_only
            elif step is http1.Step.HEAD:
                self.done = self.head_only
            elif step is http1.Step.BODY:
                if self.framing is not None and self.framing.body is http1.Body.CHUNKED:
                    self.chunked_body += self.framer.taken
            elif step is http1.Step.END:
                self.done = True
            elif step is http1.Step.BROKEN:
                assert self.framer.error is not None
                self.chunked_body += self.framer.taken
                self.error = str(self.framer.error)  # read on until the close: shown as it came from the bad line
                self.broken_at = self.framer.error.at
                break
            else:  # TOO_LONG: read on until the close
                break
        return self.done

    def answer(self, timed_out: bool, error: str = "") -> Answer:
        """What arrived, parsed as far as it is HTTP."""
        data = bytes(self.data)
        answer = Answer(data, timed_out=timed_out, error=error, complete=self.done)
        if not data.startswith(b"HTTP/"):
            return answer
        final = data[self.start :]
        head, _, rest = final.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        answer.status_line = lines[0].decode("latin-1")
        parts = answer.status_line.split(" ", 2)
        if len(parts) >= 2 and parts[1].isdigit():
            answer.status = int(parts[1])
        answer.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key, text = name.strip().lower().decode("latin-1"), value.strip().decode("latin-1")
            answer.fields.append((key, text))
            answer.headers[key] = text
        framing = self.framing
        if framing is None:
            answer.body = rest
        elif framing.body is http1.Body.CHUNKED:
            # what was read of it; after a chunk that is none, the rest as it came
            answer.body = bytes(self.chunked_body) + (data[self.broken_at :] if self.error else b"")
        elif framing.body is http1.Body.LENGTH:
            answer.body = rest[: framing.length]
        elif framing.body in (http1.Body.NONE, http1.Body.TUNNEL):
            answer.body = b""  # what follows the head is the next answer, or no HTTP at all
        else:
            answer.body = rest
        if framing is not None:
            answer.framing_problem = (
                self.error
                or framing.problem
                or (
                    "both Transfer-Encoding and Content-Length: read as chunked (RFC 9112), not to be trusted"
                    if framing.conflict
                    else ""
                )
            )
        return answer


def describe(a: Answer) -> tuple[str, Finding | None]:
    """What came back, in one line as an engineer writes it in a ticket (decoded when it is TLS), and its finding."""
    if a.error and not a.raw:
        return a.error, None
    if a.status is not None:
        f = findings.from_response(a.status, a.body, a.header("x-transformed-from"), a.header("content-type"))
        label = f" [X-ESRS-Fix: {a.label}]" if a.label else ""
        if a.framing_problem:  # said with the status: the body read behind it is not to be trusted
            label += f" [framing: {a.framing_problem}]"
        if f is not None and f.kind in (Kind.TLS_WRAPPED_HTTP09, Kind.TLS_IN_BODY):
            wrapped = " (X-Transformed-From: HTTP/0.9)" if f.kind is Kind.TLS_WRAPPED_HTTP09 else ""
            body = f"body: raw bytes {records.hexdump(f.raw, 16)}, decoded {f.summary}"
            return f"{a.status_line}{label}{wrapped}, {body}", f
        if f is None and findings.is_http09_wrapping(a.header("x-transformed-from")):
            body = f"body: raw bytes {records.hexdump(a.body, 16)}" if a.body else "empty body"
            return f"{a.status_line}{label} (X-Transformed-From: HTTP/0.9), {body}", None
        return f"{a.status_line}{label}" + (f" ({f.detail})" if f else ""), f
    if not a.raw:
        return ("no answer within the timeout" if a.timed_out else "connection closed without a byte"), None
    f = findings.from_response_head(a.raw) or findings.from_incomplete_head(a.raw)
    text = f"no HTTP status: raw bytes {records.hexdump(a.raw, 16)}"
    if f is None and (reason := not_tls_reason(a.raw)):
        return f"{text}: they look like a TLS record but are not one ({reason})", None
    return (f"{text}, decoded {f.summary}" if f else text), f


def not_tls_reason(data: bytes) -> str | None:
    """Why bytes that begin like a TLS record (a content type byte, or SSLv2's high bit) are not one; else None."""
    if not data or not records.could_start_tls(data[0]):
        return None
    decoded = records.decode(data)
    return decoded.reason if isinstance(decoded, records.NotTLS) else None
