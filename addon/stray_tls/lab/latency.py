"""A userspace relay that puts field latency between a proxy and a server, on loopback.

The upgrade fails in the field where it works on loopback because a far server's handshake takes hundreds of
milliseconds (issue 16).  `tc netem` would reproduce that, but it needs root and changes the machine for every
process on it; this relay changes nothing but the path of the connections sent through it.

Each connection gets four threads (the accepting one among them): a reader and a writer per direction.  A reader
stamps every chunk with the time it is due (its arrival plus `delay`) and queues it; the writer sends it when it
is due.  So chunks travel as a pipeline (throughput is not limited by the delay, only latency is), order is kept,
and a round trip costs `2 * delay`.  An end (EOF) is passed on as a half-close after the same delay; a reset is
passed on as a close, as the lab's faulty proxy does.  `stop()` ends every connection and joins every thread.

The TCP connect costs a round trip in the field, and the relay charges it too (`connect_delay=True`, the default):
it dials the target `delay` after the client connected (the SYN's way there), and counts the client's bytes as
sent no earlier than `2 * delay` after it connected (when the SYN-ACK would have come back), plus their `delay`.
A fresh connection's first answer therefore takes `4 * delay`, as in the field, and a TLS handshake on it
`2 * delay` per round trip more.  A target that refuses is passed on as a reset of the client's connection,
`2 * delay` after it connected.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from .servers import TCPServer

#: The most chunks a direction holds in flight: a slow reader pushes back on the sender instead of filling memory.
MAX_QUEUED = 256
CHUNK = 65536


class _End:
    """The queue's marker for the end of a direction: a close or a reset of the sending side."""


_END = _End()


class _Direction:
    """One direction of one connection: chunks read from `src` are written to `dst`, each `delay` after it arrived."""

    def __init__(self, relay: LatencyRelay, src: socket.socket, sent_from: float = 0.0) -> None:
        self.relay = relay
        self.src = src
        #: bytes count as sent no earlier than this (monotonic): the client's, once the connect's round trip is over
        self.sent_from = sent_from
        self.chunks: queue.Queue[tuple[float, bytes | _End]] = queue.Queue(MAX_QUEUED)

    def read(self) -> None:
        """Stamp and queue what `src` sends until it ends (EOF or reset, both passed on as an end)."""
        while True:
            try:
                chunk = self.src.recv(CHUNK)
            except OSError:
                chunk = b""
            due = max(time.monotonic(), self.sent_from) + self.relay.delay
            self.relay._count(len(chunk))
            if not self._put((due, chunk or _END)) or not chunk:
                return

    def _put(self, item: tuple[float, bytes | _End]) -> bool:
        while not self.relay.stopped.is_set():
            try:
                self.chunks.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def write(self, dst: socket.socket) -> None:
        """Send each chunk to `dst` when it is due; on the end, half-close `dst`.  Stops at once on `stop()`."""
        broken = False
        while not self.relay.stopped.is_set():
            try:
                due, chunk = self.chunks.get(timeout=0.2)
            except queue.Empty:
                continue
            wait = due - time.monotonic()
            if wait > 0 and self.relay.stopped.wait(wait):
                return
            if isinstance(chunk, _End):
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            try:
                if not broken:
                    dst.sendall(chunk)
            except OSError:  # dst has gone: stop reading what was meant for it, and drop what is in flight
                broken = True
                with contextlib.suppress(OSError):
                    self.src.shutdown(socket.SHUT_RD)
            finally:  # a broken direction keeps draining, so that its reader is never blocked on a full queue
                self.relay._count(-len(chunk))


class LatencyRelay(TCPServer):
    """Listens on `host`, relays each connection to `target`, every chunk `delay` seconds late, both ways.

    `connect_delay`: charge the TCP connect's round trip too (see the module's docstring); off, the target is dialled
    at once and only the bytes are delayed.
    """

    def __init__(
        self,
        target: tuple[str, int],
        delay: float,
        host: str = "127.0.0.1",
        *,
        connect_delay: bool = True,
        **kw: Any,
    ) -> None:
        if delay < 0:
            raise ValueError(f"delay must not be negative: {delay}")
        super().__init__(host=host, **kw)
        self.target = target
        self.delay = delay
        self.connect_delay = connect_delay
        self.stopped = self._stopped  # the writers' clock: a wait on it ends at once on stop()
        self._threads: set[threading.Thread] = set()
        self._in_flight = 0

    def start(self) -> LatencyRelay:
        super().start()
        return self

    def __enter__(self) -> LatencyRelay:
        return self.start()

    def _count(self, n: int) -> None:
        with self._lock:
            self._in_flight += n

    @property
    def in_flight(self) -> int:
        """Bytes read and not yet sent on (or dropped): more than one chunk's worth shows the pipeline at work."""
        with self._lock:
            return self._in_flight

    def _spawn(self, target: Callable[..., None], *args: Any, name: str) -> threading.Thread:
        t = threading.Thread(target=target, args=args, name=f"{name}:{self.port}", daemon=True)
        with self._lock:
            self._threads.add(t)
        t.start()
        return t

    def handle(self, conn: socket.socket) -> None:
        with self._lock:
            self._threads.add(threading.current_thread())
        try:
            self._relay(conn)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _relay(self, conn: socket.socket) -> None:
        accepted = time.monotonic()
        conn.settimeout(None)  # an idle connection is not an error: the relay holds it until a side ends, or stop()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rtt = 2 * self.delay if self.connect_delay else 0.0
        up = _Direction(self, conn, sent_from=accepted + rtt)
        up_reader = self._spawn(up.read, name="latency-read-up")
        workers = [up_reader]
        try:
            if self.connect_delay and self._stopped.wait(self.delay):  # the SYN's way to the server
                return
            try:
                upstream = socket.create_connection(self.target, timeout=self.timeout)
            except OSError:
                if not self._stopped.wait(max(0.0, accepted + rtt - time.monotonic())):  # the refusal's way back
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            upstream.settimeout(None)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                stopping = self._stopped.is_set()
                self._conns.add(upstream)  # stop() shuts it down with the client connections
            try:
                if stopping:
                    return
                down = _Direction(self, upstream)
                workers.append(self._spawn(up.write, upstream, name="latency-write-up"))
                workers.append(self._spawn(down.read, name="latency-read-down"))
                down.write(conn)
                for t in workers:
                    t.join()  # each ends on its side's end, or at once on stop()
            finally:
                self._close(upstream)
        finally:
            with contextlib.suppress(OSError):  # wakes the reader if it still waits for the client; sends nothing,
                conn.shutdown(socket.SHUT_RD)  # so that a refused target's reset is not preceded by a FIN
            for t in workers:
                t.join(timeout=2)
                with self._lock:
                    self._threads.discard(t)

    def stop(self) -> None:
        """Stop listening, end every connection it holds, and wait for every thread it started."""
        super().stop()
        deadline = time.monotonic() + 5
        while True:
            with self._lock:
                alive = [t for t in self._threads if t.is_alive() and t is not threading.current_thread()]
            if not alive or time.monotonic() > deadline:
                return
            alive[0].join(timeout=max(0.0, deadline - time.monotonic()))

    @property
    def threads(self) -> int:
        """The relay's connection threads still running (0 after `stop()`): the tests' leak check."""
        with self._lock:
            return sum(t.is_alive() for t in self._threads)
