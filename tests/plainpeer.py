"""A plain-HTTP upstream that records what reaches it: each plaintext request whole, and each TLS ClientHello.

Shared by the evidence tests and the differential test against stock mitmproxy. It never speaks TLS: a connection
whose first byte is 0x16 (a TLS handshake record) is counted as a ClientHello and answered as `on_hello` says, the
way plain servers do (an HTTP 400 in plaintext, or a close).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from stray_tls.lab import servers

#: What a plain HTTP server says to a ClientHello: its own 400 for a request line it cannot read.
HELLO_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 11\r\nConnection: close\r\n\r\n"
)
HELLO_ANSWER += b"Bad Request"


def read_request(conn: socket.socket) -> bytes:
    """One whole request (head and Content-Length or chunked body), or b"" when the client closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])}
    if b"content-length" in fields:
        need = int(fields[b"content-length"])
        while len(body) < need:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
    elif fields.get(b"transfer-encoding", b"").lower() == b"chunked":
        while not body.endswith(b"0\r\n\r\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
    return head + b"\r\n\r\n" + body


class PlainServer(servers.TCPServer):
    """Answers every plaintext request with `answer(request)`, then closes; records requests and ClientHellos.

    `on_hello`: "http" answers a ClientHello with `HELLO_ANSWER` (the ClientHello read as a bad request line),
    "close" closes at once without a byte.
    """

    def __init__(self, answer: Callable[[bytes], bytes], on_hello: str = "http", **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.answer = answer
        self.on_hello = on_hello
        self.requests: list[bytes] = []
        self.hellos = 0
        self._record = threading.Lock()

    def reset(self) -> None:
        with self._record:
            self.requests.clear()
            self.hellos = 0

    def handle(self, conn: socket.socket) -> None:
        first = conn.recv(1, socket.MSG_PEEK)
        if not first:
            return
        if first[0] == 0x16:
            with self._record:
                self.hellos += 1
            conn.recv(65536)
            if self.on_hello == "http":
                conn.sendall(HELLO_ANSWER)
            return
        request = read_request(conn)
        if not request:
            return
        with self._record:
            self.requests.append(request)
        conn.sendall(self.answer(request))
        conn.shutdown(socket.SHUT_WR)
