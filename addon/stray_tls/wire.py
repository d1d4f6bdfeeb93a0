"""A small HTTP/1 client on a plain socket: send one request, read one answer, say what came back.

`esrs-fix check` and the lab's stand-in check both use it; it parses only as far as the answer is HTTP, keeps
the raw bytes, and never raises for what a proxy or server sends.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from . import findings, records
from .findings import Finding, Kind
from .names import LABEL_HEADER

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

    `head_only` stops at the end of the head (a CONNECT answer, after which the tunnel begins). At most
    `MAX_ANSWER` bytes are read.
    """
    data = b""
    timed_out = False
    try:
        sock.sendall(request)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            sock.settimeout(remaining)
            chunk = sock.recv(1 if head_only else 65536)  # a CONNECT answer must not eat tunnel bytes
            if not chunk:
                break
            data += chunk
            if (head_only and data.endswith(b"\r\n\r\n")) or (not head_only and _complete(data)):
                break
            if len(data) >= MAX_ANSWER:
                break
    except TimeoutError:
        timed_out = True
    except OSError as e:
        return _parse(data, timed_out, error=f"connection error: {e.strerror or e}")
    return _parse(data, timed_out)


def _final(data: bytes) -> bytes:
    """`data` from its final answer on: interim 1xx heads (100 Continue, 103 Early Hints) skipped; 101 is final."""
    while data[9:10] == b"1" and data[9:12] != b"101" and data.startswith(b"HTTP/"):
        head_end = data.find(b"\r\n\r\n")
        if head_end < 0:
            return data
        data = data[head_end + 4 :]
    return data


def _complete(data: bytes) -> bool:
    data = _final(data)
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep or not data.startswith(b"HTTP/"):
        return False
    status = head[9:12]
    if status in (b"101", b"204", b"304"):
        return True
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding" and b"chunked" in value.lower():
            return _dechunk(body)[1]
        if name == b"content-length":
            try:
                return len(body) >= int(value.strip())
            except ValueError:
                return False
    return False


def _dechunk(body: bytes) -> tuple[bytes, bool]:
    """A chunked body's content, and whether the last chunk has arrived; what cannot be parsed is kept as is."""
    out = b""
    pos = 0
    while True:
        line_end = body.find(b"\r\n", pos)
        if line_end < 0:
            return out, False
        size_text = body[pos:line_end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return out + body[pos:], False
        if size == 0:
            return out, True
        start = line_end + 2
        if len(body) < start + size + 2:
            return out + body[start : start + size], False
        out += body[start : start + size]
        pos = start + size + 2


def _parse(data: bytes, timed_out: bool, error: str = "") -> Answer:
    answer = Answer(data, timed_out=timed_out, error=error)
    if not data.startswith(b"HTTP/"):
        return answer
    head, _, body = _final(data).partition(b"\r\n\r\n")
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
    chunked = "chunked" in answer.headers.get("transfer-encoding", "").lower()
    answer.body = _dechunk(body)[0] if chunked else body
    return answer


def describe(a: Answer) -> tuple[str, Finding | None]:
    """What came back, in one line as an engineer writes it in a ticket (decoded when it is TLS), and its finding."""
    if a.error and not a.raw:
        return a.error, None
    if a.status is not None:
        f = findings.from_response(a.status, a.body, a.header("x-transformed-from"))
        label = f" [X-ESRS-Fix: {a.label}]" if a.label else ""
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
