"""The heal part's peers, in a process of their own: many TLS stand-ins (one new target each) and a clean origin.

- `count` EsrsServers on 127.0.0.1, each on a port of its own: a target is (host, port), so every port is a target
  esrs-fix has not learned until it heals a request to it;
- one keep-alive stand-in (`KeepAliveEsrs`): as EsrsServer, but its TLS side serves request after request on one
  connection without `Connection: close`, so that a keep-alive client keeps its connections on both hops;
- a plain HTTP origin (ScriptedServer) that echoes the request's path, for clean traffic.

Started with the "spawn" method (a fresh interpreter), so that it does not matter which threads the bench has.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from stray_tls.lab import servers

from .lab import echo_answer


class KeepAliveEsrs(servers.EsrsServer):
    """The stand-in with a keep-alive TLS side: `GET` -> 200 "ESRS stand-in: OK", as long as the client sends."""

    def handle(self, conn: socket.socket) -> None:
        first = conn.recv(1, socket.MSG_PEEK)
        if not first:
            return
        if first[0] != 0x16:
            servers.read_head(conn)
            servers.answer_plaintext(conn, self.behaviour)
            return
        with self.context.wrap_socket(conn, server_side=True) as tls_conn:
            while head := servers.read_head(tls_conn):
                if b"\r\n\r\n" not in head:
                    return
                tls_conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(servers.OK_BODY), servers.OK_BODY)
                )


def serve(pipe: Any, workdir: str, count: int) -> None:
    """Start the peers, send (cert path, origin port, keep-alive port, [stand-in ports]), serve until told to stop."""
    cert = servers.make_certificate(Path(workdir))
    started: list[servers.TCPServer] = []
    try:
        origin = servers.ScriptedServer(echo_answer).start()
        started.append(origin)
        keep = KeepAliveEsrs(cert, timeout=60.0).start()
        started.append(keep)
        for _ in range(count):
            started.append(servers.EsrsServer(cert).start())
        pipe.send((str(cert[0]), origin.port, keep.port, [s.port for s in started[2:]]))
        pipe.recv()  # until the bench says stop
    finally:
        for s in started:
            s.stop()
