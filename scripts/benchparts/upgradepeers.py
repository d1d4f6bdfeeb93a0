"""The upgrade part's peers, in a process of their own: many TLS stand-ins (one new target each) and a clean origin.

- `count` EsrsServers on 127.0.0.1, each on a port of its own: a target is (host, port), so every port is a target
  esrs-fix has not learned until it upgrades a request to it;
- one keep-alive stand-in (`KeepAliveEsrs`): as EsrsServer, but its TLS side serves request after request on one
  connection without `Connection: close`, so that a keep-alive client keeps its connections on both hops;
- a plain HTTP origin (ScriptedServer) that echoes the request's path, for clean traffic;
- the crowd's targets (`CountingEsrs`, one per case in `CROWD_CASES`): stand-ins that count, at the server, the
  plaintext requests, the TLS handshakes (ClientHellos), those that began before the first answer over TLS went
  out, and the requests answered over TLS; one whose handshake sleeps (a slow server), one behind the lab's
  `LatencyRelay` (a far one: every byte late, both ways, the TCP connect's round trip included).

The bench talks to this process over a pipe: `("counts", case)` is answered with that case's counts (and resets
them), `"stop"` ends it.

Started with the "spawn" method (a fresh interpreter), so that it does not matter which threads the bench has.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

from stray_tls.lab import servers
from stray_tls.lab.latency import LatencyRelay

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


#: The crowd's targets: case -> (the stand-in's handshake delay, the relay's delay each way), in seconds.
CROWD_CASES = {"slow_handshake": (1.0, 0.0), "far": (0.0, 0.15)}


class CountingEsrs(servers.EsrsServer):
    """The stand-in (plaintext: the field report's alert and close; TLS: `GET` -> 200 `OK_BODY`, close), counting.

    `handshake_delay`: seconds it waits before it answers a ClientHello (a slow server, a slow path).
    """

    def __init__(self, cert: tuple[Path, Path], handshake_delay: float = 0.0) -> None:
        super().__init__(cert, timeout=60.0)
        self.handshake_delay = handshake_delay
        self._counting = threading.Lock()
        self._counts = self._zero()

    @staticmethod
    def _zero() -> dict[str, int]:
        return {"plaintext_requests": 0, "handshakes": 0, "handshakes_before_first_answer": 0, "tls_answers": 0}

    def take(self) -> dict[str, int]:
        """The counts so far, and start again from zero."""
        with self._counting:
            counts, self._counts = self._counts, self._zero()
        return counts

    def _add(self, key: str) -> None:
        with self._counting:
            self._counts[key] += 1
            if key == "handshakes" and not self._counts["tls_answers"]:
                self._counts["handshakes_before_first_answer"] += 1

    def handle(self, conn: socket.socket) -> None:
        first = conn.recv(1, socket.MSG_PEEK)
        if not first:
            return
        if first[0] != 0x16:
            if servers.read_head(conn):
                self._add("plaintext_requests")
                servers.answer_plaintext(conn, self.behaviour)
            return
        self._add("handshakes")
        time.sleep(self.handshake_delay)
        with self.context.wrap_socket(conn, server_side=True) as tls_conn:
            if b"\r\n\r\n" not in servers.read_head(tls_conn):
                return
            tls_conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (len(servers.OK_BODY), servers.OK_BODY)
            )
            self._add("tls_answers")


def serve(pipe: Any, workdir: str, count: int) -> None:
    """Start the peers, send (cert path, origin port, keep-alive port, [stand-in ports], {crowd case: port}), then
    answer the bench's requests for counts until it says stop."""
    cert = servers.make_certificate(Path(workdir))
    started: list[servers.TCPServer] = []
    counting: dict[str, CountingEsrs] = {}
    crowd_ports: dict[str, int] = {}
    try:
        origin = servers.ScriptedServer(echo_answer).start()
        started.append(origin)
        keep = KeepAliveEsrs(cert, timeout=60.0).start()
        started.append(keep)
        pool = [servers.EsrsServer(cert).start() for _ in range(count)]
        started += pool
        for case, (handshake_delay, relay_delay) in CROWD_CASES.items():
            counting[case] = CountingEsrs(cert, handshake_delay)
            started.append(counting[case].start())
            crowd_ports[case] = counting[case].port
            if relay_delay:
                relay = LatencyRelay(("127.0.0.1", counting[case].port), relay_delay, timeout=60.0)
                started.append(relay.start())
                crowd_ports[case] = relay.port
        pipe.send((str(cert[0]), origin.port, keep.port, [s.port for s in pool], crowd_ports))
        while (message := pipe.recv()) != "stop":  # until the bench says stop
            pipe.send(counting[message[1]].take())
    finally:
        for s in reversed(started):  # a relay before the stand-in behind it
            s.stop()
