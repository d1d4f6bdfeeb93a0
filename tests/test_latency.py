"""The lab's latency relay: bytes intact and in order, each one late by the delay, ends passed on, nothing left over.

Times are only ever asserted from below (an answer took at least so long): the machine is shared, and a test that
asks for speed fails when it is busy.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stray_tls.lab import servers
from stray_tls.lab.latency import LatencyRelay


def _flip(data: bytes) -> bytes:
    """The echo server's answer: each byte inverted, so that a direction mixed up with the other shows."""
    return bytes(b ^ 0xFF for b in data)


class FlipEcho(servers.TCPServer):
    """Sends back every chunk inverted as it comes; on the client's end, ends its own side and records what it got."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.received: list[bytes] = []
        self.ended_at: list[float] = []
        self.done = threading.Event()

    def handle(self, conn: socket.socket) -> None:
        got = b""
        while chunk := conn.recv(65536):
            got += chunk
            conn.sendall(_flip(chunk))
        self.ended_at.append(time.monotonic())
        self.received.append(got)
        conn.shutdown(socket.SHUT_WR)
        self.done.set()


@pytest.fixture
def relay() -> Iterator[Callable[..., LatencyRelay]]:
    started: list[LatencyRelay] = []

    def start(target: tuple[str, int], delay: float, **kw: object) -> LatencyRelay:
        r = LatencyRelay(target, delay, **kw).start()  # type: ignore[arg-type]
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


def _read_to_end(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(65536):  # a TimeoutError here: the end never came through
        data += chunk
    return data


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=5000), min_size=1, max_size=12),
    pauses=st.lists(st.sampled_from([0.0, 0.0, 0.002, 0.01]), min_size=12, max_size=12),
)
def test_bytes_arrive_intact_and_in_order_both_ways(chunks: list[bytes], pauses: list[float], start_server) -> None:
    """Any chunking, any pauses: the server gets exactly what was sent, the client exactly what the server sent."""
    echo = start_server(FlipEcho())
    with LatencyRelay(("127.0.0.1", echo.port), 0.01) as r, socket.create_connection(("127.0.0.1", r.port), 30) as s:
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(_read_to_end(s)))
        reader.start()  # reads while the client writes: the echo never blocks on a full buffer
        for chunk, pause in zip(chunks, pauses, strict=False):
            s.sendall(chunk)
            time.sleep(pause)
        s.shutdown(socket.SHUT_WR)
        reader.join(timeout=60)
    sent = b"".join(chunks)
    assert echo.received == [sent]
    assert got == [_flip(sent)]


def test_a_round_trip_costs_twice_the_delay_and_a_fresh_connection_twice_that(start_server, relay) -> None:
    echo = start_server(FlipEcho())
    delay = 0.2
    bare = relay(("127.0.0.1", echo.port), delay, connect_delay=False)
    with socket.create_connection(("127.0.0.1", bare.port), 30) as s:
        for _ in range(2):  # the second on the same connection: the pipeline's steady state, not a first-time cost
            t0 = time.monotonic()
            s.sendall(b"ping")
            assert s.recv(10) == _flip(b"ping")
            assert time.monotonic() - t0 >= 2 * delay
    field = relay(("127.0.0.1", echo.port), delay)  # the connect's round trip too: SYN, SYN-ACK, then the bytes
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", field.port), 30) as s:
        s.sendall(b"ping")
        assert s.recv(10) == _flip(b"ping")
        assert time.monotonic() - t0 >= 4 * delay


class Sink(servers.TCPServer):
    """Reads to the end and answers nothing: what the relay holds in flight is then one direction's alone."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.received: list[bytes] = []

    def handle(self, conn: socket.socket) -> None:
        got = b""
        while chunk := conn.recv(65536):
            got += chunk
        self.received.append(got)


def test_chunks_travel_as_a_pipeline_not_one_delay_at_a_time(start_server, relay) -> None:
    """Five chunks sent 10 ms apart are all in flight at once: throughput is not divided by the delay."""
    sink = start_server(Sink())
    r = relay(("127.0.0.1", sink.port), 3.0, connect_delay=False)
    sent = b"".join(b"chunk %d;" % n for n in range(5))
    with socket.create_connection(("127.0.0.1", r.port), 30) as s:
        for n in range(5):
            s.sendall(b"chunk %d;" % n)
            time.sleep(0.01)
        deadline = time.monotonic() + 30
        while r.in_flight < len(sent) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert r.in_flight == len(sent)  # all read, none sent yet: a relay that waits per chunk holds one at a time
        s.shutdown(socket.SHUT_WR)
        assert _read_to_end(s) == b""
    assert sink.received == [sent]


def test_a_half_close_passes_through_late_both_ways(start_server, relay) -> None:
    """The client's end reaches the server a delay later, and the client still gets the answer after its end."""
    echo = start_server(FlipEcho())
    delay = 0.2
    r = relay(("127.0.0.1", echo.port), delay, connect_delay=False)
    with socket.create_connection(("127.0.0.1", r.port), 30) as s:
        s.sendall(b"question")
        assert s.recv(100) == _flip(b"question")  # nothing in flight now: the end travels alone
        ended = time.monotonic()
        s.shutdown(socket.SHUT_WR)
        assert echo.done.wait(30) and echo.ended_at[0] - ended >= delay
        assert _read_to_end(s) == b""  # the server's own end, after its answer (TimeoutError: not passed on)
        assert time.monotonic() - ended >= 2 * delay


class Resetter(servers.TCPServer):
    """Reads the request, then resets the connection (SO_LINGER 0), as a server that refuses does."""

    def handle(self, conn: socket.socket) -> None:
        conn.recv(100)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_a_servers_reset_is_passed_on_as_a_close(start_server, relay) -> None:
    server = start_server(Resetter())
    r = relay(("127.0.0.1", server.port), 0.05)
    with socket.create_connection(("127.0.0.1", r.port), 30) as s:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert s.recv(100) == b""  # a close, not ConnectionResetError; TimeoutError: the end was not passed on


def test_a_refused_target_resets_the_client_after_the_connects_round_trip(relay) -> None:
    delay = 0.1
    r = relay(("127.0.0.1", servers.free_port()), delay)  # nobody listens there
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", r.port), 30) as s:
        with pytest.raises(ConnectionResetError):
            s.recv(100)
        assert time.monotonic() - t0 >= 2 * delay


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_connection_that_ends_frees_its_threads_and_sockets_at_once(start_server) -> None:
    """A long lab run makes many connections: each one's threads and sockets go when it ends, not at stop()."""
    echo = start_server(FlipEcho())
    with LatencyRelay(("127.0.0.1", echo.port), 0.01) as r:
        fds = _open_fds()
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", r.port), 30) as s:
                s.sendall(b"x")
                s.shutdown(socket.SHUT_WR)
                assert _read_to_end(s) == _flip(b"x")
        deadline = time.monotonic() + 30
        while (r.threads or _open_fds() != fds) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (r.threads, _open_fds()) == (0, fds)


def test_stop_ends_every_held_connection_and_leaves_no_thread_or_socket(start_server) -> None:
    echo = start_server(servers.ScriptedServer(lambda head: b"HTTP/1.1 204 No Content\r\n\r\n"))  # keeps alive
    fds = _open_fds()
    r = LatencyRelay(("127.0.0.1", echo.port), 0.05).start()
    clients = [socket.create_connection(("127.0.0.1", r.port), 30) for _ in range(3)]
    try:
        for c in clients:
            c.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert servers.read_head(c) == b"HTTP/1.1 204 No Content\r\n\r\n"
        assert r.threads == 3 * 4  # four per connection, all busy holding it
        r.stop()
        for c in clients:
            assert c.recv(100) == b""  # the relay ended it (TimeoutError: it still holds it)
        assert r.threads == 0
    finally:
        for c in clients:
            c.close()
    assert _open_fds() == fds  # the listener, the three accepted and the three upstream sockets are all closed


def test_a_negative_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        LatencyRelay(("127.0.0.1", 1), -0.1)
