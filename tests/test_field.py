"""esrs_upgrade as the field has it: slow handshakes, far servers, proxy credentials, crowds, honest failures.

Real mitmdump (both majors under scripts/test), TLS servers on loopback that behave as far ones do: a handshake
that completes seconds after the ClientHello, a server that accepts TLS and never answers, a TLS-1.0-only one, one
whose certificate is not trusted. Each server counts what reached it (plaintext requests, TLS handshakes, the heads
of TLS requests), so that a test sees how many attempts a crowd cost and what the origin was sent.

`field`: one mitmdump in reverse mode, a listener per server, esrs_upgrade on; each check has a target of its own,
so that what one check learned does not change another's.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import io as mitmio

from stray_tls.fieldkit.wire import Answer, exchange
from stray_tls.lab import servers
from stray_tls.lab.latency import LatencyRelay
from stray_tls.lab.mitm import Mitmdump

from .realproxies import PASSWORD, USER
from .test_upgrade import FIELD_ALERT_SUMMARY, plaintext, report_lines, reverse_mitmdump, server_context

pytestmark = pytest.mark.e2e

BODY = b"the far server: OK\n"
#: esrs_upgrade_timeout in `field`: long enough for the 2 s handshake on a busy machine, short for the mute server.
UPGRADE_TIMEOUT = 8
CROWD = 64


class FieldServer(servers.TCPServer):
    """A TLS port as a far ESRS server is: plaintext gets the field report's alert; over TLS, `GET /` gets `BODY`.

    `handshake_delay`: seconds before the server answers the ClientHello (a far server, a slow path).
    `mute`: the handshake completes, the request is read, and no answer ever comes. `tls10_only`: TLS 1.0 only.
    """

    def __init__(
        self,
        cert: tuple[Path, Path],
        *,
        handshake_delay: float = 0.0,
        mute: bool = False,
        tls10_only: bool = False,
    ) -> None:
        super().__init__(timeout=60.0)
        self.context = server_context(cert)
        if tls10_only:
            self.context.set_ciphers("DEFAULT:@SECLEVEL=0")
            self.context.minimum_version = self.context.maximum_version = ssl.TLSVersion.TLSv1
        self.handshake_delay = handshake_delay
        self.mute = mute
        self.plaintext_requests = 0
        self.handshakes = 0  # ClientHellos that arrived
        self.tls_heads: list[bytes] = []
        self._count = threading.Lock()

    def handle(self, conn: socket.socket) -> None:
        first = conn.recv(1, socket.MSG_PEEK)
        if not first:
            return
        if first != b"\x16":
            if servers.read_head(conn):
                with self._count:
                    self.plaintext_requests += 1
                conn.sendall(servers.ALERT_TLS10)
            return
        with self._count:
            self.handshakes += 1
        time.sleep(self.handshake_delay)
        with self.context.wrap_socket(conn, server_side=True) as tls:
            head = servers.read_head(tls)
            if not head:
                return
            with self._count:
                self.tls_heads.append(head)
            if self.mute:
                with contextlib.suppress(OSError):
                    while tls.recv(4096):
                        pass
                return
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(BODY), BODY))


@dataclass
class Field:
    m: Mitmdump
    ports: dict[str, int]
    servers: dict[str, FieldServer]
    report: Path


@pytest.fixture(scope="module")
def field(cert: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Field]:
    tmp = tmp_path_factory.mktemp("field")
    (tmp / "untrusted").mkdir()
    untrusted = servers.make_certificate(tmp / "untrusted")  # a CA mitmdump was not told to trust
    made = {
        "slow": FieldServer(cert, handshake_delay=2.0),
        "crowd": FieldServer(cert, handshake_delay=1.0),
        "untrusted": FieldServer(untrusted, handshake_delay=0.2),
        "mute": FieldServer(cert, mute=True),
        "tls10": FieldServer(cert, tls10_only=True),
        "warm": FieldServer(cert),
    }
    report = tmp / "report.jsonl"
    with contextlib.ExitStack() as stack:
        for server in made.values():
            stack.enter_context(server)
        targets = {name: f"http://127.0.0.1:{s.port}" for name, s in made.items()}
        options = {
            "esrs_upgrade": "true",
            "esrs_upgrade_timeout": UPGRADE_TIMEOUT,
            "ssl_verify_upstream_trusted_ca": cert[0],
            "esrs_report": report,
            "connection_strategy": "lazy",
        }
        with reverse_mitmdump(targets, options, tmp / "mitmdump.log") as (m, ports):
            # One upgrade first, so that no test meets a cold mitmdump: its first flow takes long enough (imports, TLS
            # contexts) for a whole crowd to be sent in plaintext before the first stray answer is seen.
            warm = plaintext(ports["warm"])
            assert (warm.status, warm.body) == (200, BODY), m.log_tail()
            yield Field(m, ports, made, report)


def test_a_handshake_that_takes_seconds_is_upgraded_then_learned(field: Field) -> None:
    """The server completes its TLS handshake 2 s after the ClientHello: slow is not closed. Upgraded on the first
    request, served as learned on the second."""
    server, port = field.servers["slow"], field.ports["slow"]
    first = plaintext(port)
    assert (first.status, first.body) == (200, BODY), (first.label, field.m.log_tail())
    assert (first.label or "").startswith(f"upgraded; {FIELD_ALERT_SUMMARY}"), first.label
    second = plaintext(port)
    assert (second.status, second.body) == (200, BODY), (second.label, field.m.log_tail())
    assert (second.label or "").startswith("upgraded (learned); "), second.label
    assert (server.plaintext_requests, len(server.tls_heads)) == (1, 2)


def crowd(port: int, n: int = CROWD, gap: float = 0.0) -> list[Answer]:
    """`n` clients, each its own connection and request, started `gap` seconds apart; their answers in order."""
    answers: list[Answer | None] = [None] * n

    def one(i: int) -> None:
        answers[i] = plaintext(port)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
        time.sleep(gap)
    for t in threads:
        t.join(timeout=60)
    assert all(a is not None for a in answers), "a client did not finish"
    return [a for a in answers if a is not None]


def test_a_crowd_to_a_new_slow_target_costs_one_attempt(field: Field) -> None:
    """64 requests 10 ms apart to a new target whose handshake takes 1 s: every client gets the server's answer,
    and the server saw at most 2 plaintext requests (the others waited for the first TLS attempt)."""
    server, port = field.servers["crowd"], field.ports["crowd"]
    answers = crowd(port, gap=0.01)
    wrong = [(a.status, a.label, a.error) for a in answers if (a.status, a.body) != (200, BODY)]
    assert not wrong, (wrong[:3], field.m.log_tail())
    assert all((a.label or "").startswith("upgraded") for a in answers)
    assert server.plaintext_requests <= 2, server.plaintext_requests
    assert len(server.tls_heads) == CROWD  # each request reached the server once over TLS


def test_a_crowd_to_an_untrusted_target_shares_one_failure(field: Field) -> None:
    """64 concurrent first requests to a target whose certificate is not trusted: 64 labelled failures naming the
    certificate, and the server saw at most 2 TLS handshakes."""
    server, port = field.servers["untrusted"], field.ports["untrusted"]
    answers = crowd(port)
    labels = [a.label or "" for a in answers]
    assert all(a.status == 502 for a in answers), (labels[:3], field.m.log_tail())
    assert all(label.startswith("upgrade failed: certificate verification failed: ") for label in labels), labels[:3]
    assert all(b"ssl_verify_upstream_trusted_ca" in a.body for a in answers)
    assert server.handshakes <= 2, server.handshakes
    assert server.tls_heads == []  # nothing went over an unverified connection


def test_a_server_that_never_answers_fails_at_the_upgrade_timeout(field: Field) -> None:
    """TLS is accepted, the request is read, nothing comes back: the labelled failure names the time limit and the
    option that sets it."""
    server, port = field.servers["mute"], field.ports["mute"]
    started = time.monotonic()
    answer = plaintext(port)
    waited = time.monotonic() - started
    assert answer.status == 502, (answer.label, field.m.log_tail())
    assert (answer.label or "").startswith(
        f"upgrade failed: no complete answer over TLS within {UPGRADE_TIMEOUT} s; "
    ), answer.label
    assert b"esrs_upgrade_timeout" in answer.body
    assert waited >= UPGRADE_TIMEOUT  # a lower bound only: it waited the whole limit, not a grace period
    assert len(server.tls_heads) == 1


def test_a_tls10_only_server_names_tls_version_server_min(field: Field) -> None:
    """The field report's alert is a TLS 1.0 record; a server that speaks only TLS 1.0 is refused by mitmproxy's
    default tls_version_server_min: the failure says so and names the option, not the certificate."""
    answer = plaintext(field.ports["tls10"])
    assert answer.status == 502, (answer.label, field.m.log_tail())
    assert (answer.label or "").startswith("upgrade failed: no TLS version in common with the server: "), answer.label
    assert b"tls_version_server_min" in answer.body
    assert b"trusted_ca" not in answer.body  # advice that fits the cause: nothing about trusting a CA
    (entry,) = [e for e in report_lines(field.report) if f":{field.servers['tls10'].port}/" in e["url"]]
    assert entry["upgrade_cause"] == "tls_version"


# -- flows saved with -w: the learned flow's record has the upgraded flow's keys


def read_flows(path: Path) -> list[Any]:
    with path.open("rb") as f:
        return list(mitmio.FlowReader(f).stream())


def test_tls10_upgrades_with_tls_version_server_min(cert: tuple[Path, Path], tmp_path: Path, start_server) -> None:
    """With tls_version_server_min=TLS1 the TLS-1.0-only server is upgraded, then served as learned."""
    server = start_server(FieldServer(cert, tls10_only=True))
    options = {
        "esrs_upgrade": "true",
        "ssl_verify_upstream_trusted_ca": cert[0],
        "tls_version_server_min": "TLS1",
        "connection_strategy": "lazy",
    }
    with reverse_mitmdump({"tls10": f"http://127.0.0.1:{server.port}"}, options, tmp_path / "m.log") as (m, ports):
        first, second = plaintext(ports["tls10"]), plaintext(ports["tls10"])
    assert (first.status, first.body) == (200, BODY), (first.label, m.log_tail())
    assert (first.label or "").startswith("upgraded; "), first.label
    assert (second.label or "").startswith("upgraded (learned); "), second.label
    assert (server.plaintext_requests, len(server.tls_heads)) == (1, 2)


def test_learned_and_upgraded_flows_have_one_record(cert: tuple[Path, Path], tmp_path: Path, start_server) -> None:
    """Read back from -w: the upgraded flow and the learned one carry the same esrs_fix keys; the learned one says
    what taught it (kind, confidence, the flow) and when."""
    server = start_server(FieldServer(cert))
    saved = tmp_path / "flows.mitm"
    args = ["--mode", f"reverse:http://127.0.0.1:{server.port}@{servers.free_port()}", "-w", str(saved)]
    args += ["--set", "esrs_upgrade=true", "--set", f"ssl_verify_upstream_trusted_ca={cert[0]}"]
    with Mitmdump(args, tmp_path / "m.log") as m:
        port = int(args[1].rsplit("@", 1)[1])
        assert (plaintext(port).label or "").startswith("upgraded; "), m.log_tail()
        assert (plaintext(port).label or "").startswith("upgraded (learned); "), m.log_tail()
    flows = [f for f in read_flows(saved) if "esrs_fix" in f.metadata]
    upgraded, learned = (f.metadata["esrs_fix"] for f in flows[:2])
    assert set(upgraded) == set(learned)
    assert (upgraded["learned"], learned["learned"]) == (False, True)
    assert learned["confidence"] == upgraded["confidence"] == "high"
    assert (learned["kind"], learned["summary"]) == (upgraded["kind"], upgraded["summary"])
    assert learned["taught_by"] == flows[0].id and learned["learned_at"]
    assert learned["upgrade"]["status"] == 200


# -- upstream mode through a proxy that wants credentials


class HeadRecorder(FieldServer):
    """A FieldServer that also keeps the heads of its plaintext requests."""

    def __init__(self, cert: tuple[Path, Path]) -> None:
        super().__init__(cert)
        self.plaintext_heads: list[bytes] = []

    def handle(self, conn: socket.socket) -> None:
        first = conn.recv(1, socket.MSG_PEEK)
        if first and first != b"\x16":
            head = servers.read_head(conn)
            if head:
                with self._count:
                    self.plaintext_heads.append(head)
                    self.plaintext_requests += 1
                conn.sendall(servers.ALERT_TLS10)
            return
        super().handle(conn)


def test_upstream_credentials_never_reach_the_origin(cert, start_server, real_proxies, mitmdump) -> None:
    """Upstream mode through squid that wants Basic credentials (upstream_auth set): upgraded through CONNECT, then
    learned, and no request that reached the origin, over TLS or not, carried a Proxy-* header."""
    squid = real_proxies.get("squid-auth")
    origin = start_server(HeadRecorder(cert))
    port = servers.free_port()
    args = ["-p", str(port), "--mode", f"upstream:{squid.url}", "--set", f"upstream_auth={USER}:{PASSWORD}"]
    m = mitmdump([*args, "--set", "esrs_upgrade=true", "--set", f"ssl_verify_upstream_trusted_ca={cert[0]}"])
    url = f"http://127.0.0.1:{origin.port}/"
    request = f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\nProxy-Connection: keep-alive\r\n\r\n"
    first = exchange(("127.0.0.1", port), request.encode(), 20)
    assert (first.status, first.body) == (200, BODY), (first.label, m.log_tail(), squid.log_tail())
    assert (first.label or "").startswith("upgraded; "), first.label
    second = exchange(("127.0.0.1", port), request.encode(), 20)
    assert (second.status, second.body) == (200, BODY) and (second.label or "").startswith("upgraded (learned)")
    heads = origin.plaintext_heads + origin.tls_heads
    assert len(origin.tls_heads) == 2, heads
    leaked = [h for h in heads if b"\r\nproxy-" in h.lower()]
    assert not leaked, leaked


# -- a real TLS server far away: the lab's latency relay in front of the real JSSE server


def test_a_real_server_150_ms_away_is_upgraded_then_learned(real_server, tmp_path: Path) -> None:
    """The real JSSE server (Java) behind the lab's latency relay, 150 ms each way (about Tokyo to the US east
    coast): the first request is upgraded, the second served as learned, each with the server's own answer."""
    peer = real_server("jsse")
    with LatencyRelay(peer.address, 0.150) as relay:
        options = {
            "esrs_upgrade": "true",
            "ssl_verify_upstream_trusted_ca": real_server.workspace.cert,
            "connection_strategy": "lazy",
        }
        with reverse_mitmdump({"far": f"http://127.0.0.1:{relay.port}"}, options, tmp_path / "m.log") as (m, ports):
            first, second = plaintext(ports["far"]), plaintext(ports["far"])
    assert first.status == 200 and peer.serves(first.body), (first.label, m.log_tail())
    assert (first.label or "").startswith("upgraded; "), first.label
    assert second.status == 200 and peer.serves(second.body), (second.label, m.log_tail())
    assert (second.label or "").startswith("upgraded (learned); "), second.label


# -- a slow TCP connect: the TLS attempt's SYN is dropped once (a full accept queue), as on a lossy far path


class SlowConnectServer(FieldServer):
    """A FieldServer whose accept queue is full when the TLS attempt connects: Linux drops that SYN, and the client
    connects only when its SYN is sent again, a second or more later (a lossy or congested path does the same).

    Its listener has the smallest backlog; after answering a plaintext request, it stops accepting for
    `stall` seconds and fills the queue with connections of its own, so the next connect (the TLS attempt's) waits.
    """

    def __init__(self, cert: tuple[Path, Path], stall: float = 2.5) -> None:
        super().__init__(cert)
        self._listener.listen(0)
        self.stall = stall
        self._accepting = threading.Event()
        self._accepting.set()
        self._plugs: list[socket.socket] = []

    def _serve(self) -> None:
        while not self._stopped.is_set():
            self._accepting.wait()
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            if conn.getpeername()[1] in {p.getsockname()[1] for p in self._plugs}:
                conn.close()
                continue
            conn.settimeout(self.timeout)
            with self._lock:
                self._conns.add(conn)
                self.connections += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        first = conn.recv(1, socket.MSG_PEEK)
        if first and first != b"\x16" and servers.read_head(conn):
            with self._count:
                self.plaintext_requests += 1
            self._accepting.clear()  # from now on the queue fills up: the next connect's SYN is dropped
            for _ in range(2):
                plug = socket.socket()
                plug.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    plug.connect((self.host, self.port))
                self._plugs.append(plug)
            conn.sendall(servers.ALERT_TLS10)
            threading.Timer(self.stall, self._accepting.set).start()
            return
        super().handle(conn)

    def stop(self) -> None:
        self._accepting.set()
        for plug in self._plugs:
            plug.close()
        super().stop()


def test_a_tls_attempt_whose_connect_takes_seconds_is_upgraded(cert: tuple[Path, Path], tmp_path: Path) -> None:
    """The TLS attempt's TCP connect completes only after a SYN retransmission (seconds): slow is not closed, the
    first request is upgraded."""
    server = SlowConnectServer(cert)
    with server:
        options = {"esrs_upgrade": "true", "ssl_verify_upstream_trusted_ca": cert[0], "connection_strategy": "lazy"}
        with reverse_mitmdump({"slow": f"http://127.0.0.1:{server.port}"}, options, tmp_path / "m.log") as (m, ports):
            started = time.monotonic()
            answer = plaintext(ports["slow"])
            waited = time.monotonic() - started
    assert (answer.status, answer.body) == (200, BODY), (answer.label, m.log_tail())
    assert waited >= 1.0  # a lower bound: the connect really was slow (the SYN was sent again)


# -- what one request's failure may and may not say about its target (fresh-eyes review of the upgrade)


class SilentOncePlainServer(servers.TCPServer):
    """A plain HTTP server (no TLS at all) that closes its first connection without a byte, as an overloaded or
    idle-closing server may, and answers every later request with 200 and `BODY`."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[bytes] = []

    def handle(self, conn: socket.socket) -> None:
        head = servers.read_head(conn)
        if not head:
            return
        self.requests.append(head)
        if len(self.requests) == 1:
            return  # closed without a byte
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(BODY), BODY))


def test_a_silent_close_from_a_plain_server_is_not_remembered(tmp_path: Path) -> None:
    """A silent close proves nothing: the failed TLS attempt after it (the server speaks no TLS) is not remembered
    against the server, and the next requests, POST included, reach it as usual."""
    server = SilentOncePlainServer()
    with server:
        options = {"esrs_upgrade": "true", "connection_strategy": "lazy"}
        with reverse_mitmdump({"plain": f"http://127.0.0.1:{server.port}"}, options, tmp_path / "m.log") as (m, ports):
            first = plaintext(ports["plain"])
            second, third = plaintext(ports["plain"]), plaintext(ports["plain"], "POST")
    assert first.status == 502 and not (first.label or "").startswith("upgrade failed"), (first.label, m.log_tail())
    assert (second.status, second.body, second.label) == (200, BODY, None), (second.label, m.log_tail())
    assert (third.status, third.body, third.label) == (200, BODY, None), third.label
    assert len(server.requests) >= 3  # (the TLS attempt's ClientHello may count as one)
    assert "failed moments ago" not in m.log()  # no request was answered from a remembered failure


def test_an_answer_too_large_to_hold_fails_that_request_only_and_teaches_the_target(
    cert: tuple[Path, Path], tmp_path: Path, start_server
) -> None:
    """body_size_limit=1k and a first answer over it: that request gets the labelled failure naming body_size_limit,
    but TLS worked, so the target is learned and the next request is served over TLS, not refused."""
    big = b"x" * 4096

    class Sized(FieldServer):
        def handle(self, conn: socket.socket) -> None:
            first = conn.recv(1, socket.MSG_PEEK)
            if first != b"\x16":
                return super().handle(conn)
            with self.context.wrap_socket(conn, server_side=True) as tls:
                head = servers.read_head(tls)
                self.tls_heads.append(head)
                body = big if head.startswith(b"GET /big") else BODY
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))

    server = Sized(cert)
    start_server(server)
    options = {"esrs_upgrade": "true", "ssl_verify_upstream_trusted_ca": cert[0], "body_size_limit": "1k"}
    with reverse_mitmdump({"sized": f"http://127.0.0.1:{server.port}"}, options, tmp_path / "m.log") as (m, ports):
        head = "GET /big HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        first = exchange(("127.0.0.1", ports["sized"]), head.encode(), 20)
        second = plaintext(ports["sized"])
    assert first.status == 502 and (first.label or "").startswith("upgrade failed: "), (first.label, m.log_tail())
    assert b"body_size_limit" in first.body
    assert (second.status, second.body) == (200, BODY), (second.label, m.log_tail())
    assert (second.label or "").startswith("upgraded (learned); "), second.label
    assert server.plaintext_requests == 1


def test_a_remembered_failure_with_rewrite_on_gets_the_synthetic_status(
    cert: tuple[Path, Path], tmp_path: Path
) -> None:
    """esrs_upgrade and esrs_rewrite on, an untrusted certificate: every request within esrs_upgrade_retry_after
    gets what the first got (the synthetic status), by the same decision, not a 502."""
    (tmp_path / "other").mkdir()
    server = FieldServer(servers.make_certificate(tmp_path / "other"))
    with server:
        options = {"esrs_upgrade": "true", "esrs_rewrite": "true", "ssl_verify_upstream_trusted_ca": cert[0]}
        with reverse_mitmdump({"u": f"http://127.0.0.1:{server.port}"}, options, tmp_path / "m.log") as (m, ports):
            answers = [plaintext(ports["u"]) for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 200], ([a.label for a in answers], m.log_tail())
    assert all((a.label or "").startswith("synthetic 200; ") for a in answers), [a.label for a in answers]
    assert server.handshakes == 1  # the later two were answered from the remembered failure


def test_a_client_that_leaves_mid_handshake_does_not_make_the_target_forgotten(
    cert: tuple[Path, Path], tmp_path: Path
) -> None:
    """A learned target's handshake takes 1.5 s and the client leaves after 0.3 s: the client's going is no TLS
    failure, so the target stays learned and the next request goes over TLS at once."""
    server = FieldServer(cert, handshake_delay=1.5)
    with server:
        options = {"esrs_upgrade": "true", "ssl_verify_upstream_trusted_ca": cert[0], "connection_strategy": "lazy"}
        with reverse_mitmdump({"far": f"http://127.0.0.1:{server.port}"}, options, tmp_path / "m.log") as (m, ports):
            assert (plaintext(ports["far"]).label or "").startswith("upgraded; "), m.log_tail()
            head = b"GET /impatient HTTP/1.1\r\nHost: localhost\r\n\r\n"
            impatient = exchange(("127.0.0.1", ports["far"]), head, 0.3)
            assert impatient.timed_out
            again = plaintext(ports["far"])
    assert (again.status, again.body) == (200, BODY), (again.label, m.log_tail())
    assert (again.label or "").startswith("upgraded (learned); "), again.label
    assert server.plaintext_requests == 1
    assert "it is forgotten" not in m.log()
