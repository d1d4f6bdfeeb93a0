"""A real Python `ssl` server for the tests: python python_ssl_server.py PORT CERT KEY BODYFILE.

http.server on 127.0.0.1 with each connection wrapped in TLS in its own thread (a plaintext client cannot stall
the listener). OpenSSL 3 answers a plaintext request with nothing and the connection closes: a silent close.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: TLSServer

    def do_GET(self) -> None:
        body = self.server.body
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class TLSServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, context: ssl.SSLContext, body: bytes) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.context, self.body = context, body

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(10)
        try:
            conn = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            print(f"handshake failed: {e}", flush=True)
            return
        with conn:
            Handler(conn, client_address, self)
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


def main() -> None:
    port, cert, key, body_file = sys.argv[1:]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = TLSServer(int(port), context, Path(body_file).read_bytes())
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
