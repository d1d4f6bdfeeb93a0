"""esrs_upgrade against real TLS servers: the client gets the server's own answer, then the target is learned.

Real mitmdump, real servers from Debian (tests/realpeers.py) and the lab's stand-ins, on loopback; regular,
reverse and upstream mode (squid in front of the real JSSE server too); esrs_filter scopes upgrading; esrs_upgrade
beats esrs_rewrite; a POST is sent again after a TLS alert but not after a silent close; a learned target whose TLS
fails is forgotten; an untrusted certificate or one for another name fails closed, unless ssl_insecure is set;
an answer that is valid HTTP (TLS records as its body) is never upgraded.

Each mitmdump serves several checks: `upgrader` (reverse mode, a listener per real server and per stand-in),
`lenient` (esrs_rewrite, esrs_filter and ssl_insecure on) and `silent_upgrader` (the silently closing servers). Every
check there has a target of its own, so that what one check learned does not change another's.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from stray_tls.core.findings import Kind
from stray_tls.fieldkit.wire import Answer, exchange, send_and_read
from stray_tls.lab import servers
from stray_tls.lab.mitm import Mitmdump

from .conftest import reverse_modes
from .realpeers import Peer, RealServers

pytestmark = pytest.mark.e2e

PEERS = ["nginx", "apache2", "tomcat", "go", "jsse", "gnutls", "jdk-httpsserver", "openssl", "python-ssl"]
#: The servers that answer plaintext with a silent close.
SILENT = ["openssl", "python-ssl", "jdk-httpsserver"]
#: Those of them that answer HEAD over TLS (`openssl s_server -www` waits for a GET line, and would hold the attempt).
ANSWER_HEAD = {"python-ssl", "jdk-httpsserver"}
TIMEOUT = 20.0  # a bound on each client, not a speed claim
#: esrs_upgrade_retry_after in `upgrader`: a failed attempt is remembered this long (seconds).
RETRY_AFTER = 2
#: A request header that puts a flow outside `lenient`'s esrs_filter.
OUT_OF_SCOPE = "X-Esrs-Test: out-of-scope"
FIELD_ALERT_SUMMARY = "TLS alert: fatal unexpected_message (10), record version TLS 1.0"


def plaintext(
    port: int, method: str = "GET", host: str = "localhost", *, body: bytes | None = None, header: str = ""
) -> Answer:
    body = (b"x=1" if method == "POST" else b"") if body is None else body
    extra = f"{header}\r\n" if header else ""
    head = f"{method} / HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    return exchange(("127.0.0.1", port), head.encode() + body, TIMEOUT)


def direct_tls(peer: Peer, method: str = "GET") -> Answer:
    """What the same request gets from the server over TLS, without any proxy."""
    with (
        socket.create_connection(peer.address, timeout=TIMEOUT) as raw,
        peer.tls_context().wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        request = f"{method} / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        return send_and_read(tls, request.encode(), time.monotonic() + TIMEOUT)


def report_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def replayed(m: Mitmdump, method: str, port: int) -> bool:
    """Whether mitmdump's log shows esrs-fix's TLS attempt (a replayed flow) of `method` to `port`."""
    return any(
        line.startswith("[replay]") and f": {method} https://" in line and f":{port}/" in line
        for line in m.log().splitlines()
    )


def eventually(check: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Whether `check()` holds within `seconds` (a log line may land a moment after the client's answer)."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@contextlib.contextmanager
def reverse_mitmdump(
    targets: dict[str, str], options: Mapping[str, object], log: Path
) -> Iterator[tuple[Mitmdump, dict[str, int]]]:
    """One mitmdump with a reverse-mode listener per target (by name), the addon's options set; its ports by name."""
    args, ports = reverse_modes(list(targets.values()))
    settings = [a for k, v in options.items() for a in ("--set", f"{k}={v}")]
    with Mitmdump(args + settings, log, listeners=len(ports)) as m:
        yield m, dict(zip(targets, ports, strict=True))


def server_context(cert: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert[0]), str(cert[1]))
    return context


class RecordingServer(servers.TCPServer):
    """A TLS port answering TLS requests with `body`, and plaintext with the field alert (like the stand-in); it
    keeps every request's body, plaintext and TLS apart, so that a test sees what reached the server and how."""

    def __init__(self, cert: tuple[Path, Path], body: bytes, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self.body = body
        self.context = server_context(cert)
        self.plaintext_bodies: list[bytes] = []
        self.tls_requests: list[tuple[str, bytes]] = []  # (method, body)

    @property
    def tls_count(self) -> int:
        return len(self.tls_requests)

    @staticmethod
    def read_request(conn: socket.socket) -> tuple[bytes, bytes]:
        """The head (empty when the client sent nothing) and the Content-Length body of one request."""
        head = servers.read_head(conn)
        if not head:
            return b"", b""
        length = int(next((v for k, v in (line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
                           if k.strip().lower() == b"content-length"), b"0"))  # fmt: skip
        received = head.split(b"\r\n\r\n", 1)[1]
        while len(received) < length and (more := conn.recv(4096)):
            received += more
        return head, received[:length]

    def handle(self, conn: socket.socket) -> None:
        if conn.recv(1, socket.MSG_PEEK) != b"\x16":
            head, body = self.read_request(conn)
            if not head:  # reverse mode's eager connection, closed unused (the request went over TLS)
                return
            self.plaintext_bodies.append(body)
            conn.sendall(servers.ALERT_TLS10)
            return
        with self.context.wrap_socket(conn, server_side=True) as tls:
            head, body = self.read_request(tls)
            self.tls_requests.append((head.split(b" ", 1)[0].decode(), body))
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(self.body))
            tls.sendall(self.body)


# -- upgrader: one mitmdump in reverse mode, a listener per real server and per stand-in, esrs_upgrade on


@dataclass
class Upgrader:
    peers: dict[str, Peer]
    #: Why each real server that is not in `peers` could not run here (what to install).
    missing: dict[str, str]
    m: Mitmdump
    ports: dict[str, int]
    report: Path
    #: Stand-ins, each the target of one check: a POST is sent again after an alert, the body reaches it once.
    post: RecordingServer
    #: A learned target whose certificate is swapped for an untrusted one.
    swap: servers.EsrsServer
    #: A trusted certificate, but not for the address it is reached at (127.0.0.2).
    other_name: servers.EsrsServer
    #: A valid HTTP 200 whose body is TLS records: never upgraded.
    tls_body: servers.ScriptedServer
    #: Upgraded by `witness()` only: its TLS attempt, seen in the log, shows that earlier attempts would be seen too.
    witness: servers.EsrsServer

    def witness_replay(self) -> bool:
        """Upgrade a fresh request to the witness and wait until its TLS attempt shows in the log: after it, an attempt
        that an earlier request had caused would show too (the log is written in order)."""
        path = f"/witness-{time.monotonic_ns()}"
        head = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        answer = exchange(("127.0.0.1", self.ports["witness"]), head.encode(), TIMEOUT)
        assert answer.status == 200, (answer.label, self.m.log_tail())
        attempt = f"https://127.0.0.1:{self.witness.port}{path}"
        return eventually(
            lambda: any(line.startswith("[replay]") and attempt in line for line in self.m.log().splitlines())
        )


#: The answer of `Upgrader.tls_body`: an HTTP head, then the field alert as its body (tls_in_body).
TLS_BODY_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
    % (len(servers.ALERT_TLS10), servers.ALERT_TLS10)
)
POST_ANSWER = b"the real server: posted\n"


@pytest.fixture(scope="module")
def upgrader(real_server: RealServers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upgrader]:
    peers = {name: p for name in PEERS if (p := real_server.optional(name)) is not None}
    missing = {name: real_server.why_not(name) for name in PEERS if name not in peers}
    tmp = tmp_path_factory.mktemp("upgrade")
    trusted = (real_server.workspace.cert, real_server.workspace.key)  # the real servers' certificate, trusted below
    post = RecordingServer(trusted, POST_ANSWER)
    swap = servers.EsrsServer(trusted)
    other_name = servers.EsrsServer(trusted, host="127.0.0.2")  # the certificate names 127.0.0.1, not .2
    tls_body = servers.ScriptedServer(lambda head: TLS_BODY_ANSWER, keep_alive=False)
    witness = servers.EsrsServer(trusted)
    with contextlib.ExitStack() as stack:
        for server in (post, swap, other_name, tls_body, witness):
            stack.enter_context(server)
        targets = {name: f"http://127.0.0.1:{p.port}" for name, p in peers.items()}
        named: dict[str, servers.TCPServer] = {
            "post": post,
            "swap": swap,
            "other_name": other_name,
            "tls_body": tls_body,
            "witness": witness,
        }
        for name, stand_in in named.items():
            targets[name] = f"http://{stand_in.host}:{stand_in.port}"
        report = tmp / "report.jsonl"
        # lazy: `openssl s_server` serves one connection at a time, and the plaintext connection that reverse mode
        # opens eagerly for a learned request (which goes over TLS instead) would hold it. Eager mode is covered
        # below.
        options = {
            "esrs_upgrade": "true",
            "ssl_verify_upstream_trusted_ca": trusted[0],
            "esrs_report": report,
            "connection_strategy": "lazy",
            "esrs_upgrade_retry_after": RETRY_AFTER,
        }
        with reverse_mitmdump(targets, options, tmp / "mitmdump.log") as (m, ports):
            yield Upgrader(peers, missing, m, ports, report, post, swap, other_name, tls_body, witness)


@pytest.mark.parametrize("name", PEERS)
def test_a_real_server_is_upgraded_then_served_as_learned(upgrader: Upgrader, name: str) -> None:
    peer = upgrader.peers.get(name)
    if peer is None:
        pytest.skip(upgrader.missing[name])
    port = upgrader.ports[name]
    real = direct_tls(peer)
    first = plaintext(port)
    # the same status and body as a direct https:// request (openssl -www's page differs per connection)
    same = (first.status, first.body if peer.body_exact else b"") == (
        real.status,
        real.body if peer.body_exact else b"",
    )
    assert same, upgrader.m.log_tail()
    assert peer.serves(first.body) and peer.serves(real.body)
    assert (first.label or "").startswith("upgraded; "), first.label
    if peer.plaintext is Kind.PLAIN_HTTP_400:
        assert f"HTTP 400 from {peer.software}" in (first.label or "")
    # the TLS attempt is a replayed flow of its own: the counterpart of "no replay" for a POST after a silent close
    assert eventually(lambda: replayed(upgrader.m, "GET", peer.port)), upgrader.m.log_tail()
    second = plaintext(port)
    assert second.status == real.status and peer.serves(second.body)
    assert (second.label or "").startswith("upgraded (learned); "), second.label
    lines = [e for e in report_lines(upgrader.report) if f":{peer.port}/" in e["url"]]
    assert [(e["upgraded"], e["learned"]) for e in lines] == [(True, False), (True, True)]
    assert lines[0]["kind"] == str(peer.plaintext) and lines[0]["upgrade"]["status"] == real.status
    if peer.plaintext is Kind.TLS_RECORDS:
        assert bytes.fromhex(lines[0]["raw_hex"]) == peer.plaintext_answer  # what the plaintext attempt got


def test_a_post_is_sent_again_over_tls_after_a_tls_alert(upgrader: Upgrader) -> None:
    """The alert proves that the server never processed the request: the POST, body and all, goes again over TLS,
    once; the client gets the server's answer. Once learned, the next POST goes over TLS at once."""
    server, port = upgrader.post, upgrader.ports["post"]
    body = b"name=esrs&attempt=1"
    first = plaintext(port, "POST", body=body)
    assert first.status == 200 and first.body == POST_ANSWER, upgrader.m.log_tail()
    assert (first.label or "").startswith(f"upgraded; {FIELD_ALERT_SUMMARY}"), first.label
    assert server.plaintext_bodies == [body]  # the plaintext attempt, answered with the alert
    assert server.tls_requests == [("POST", body)]  # over TLS, once, with its body
    second = plaintext(port, "POST", body=b"name=esrs&attempt=2")
    assert second.body == POST_ANSWER and (second.label or "").startswith("upgraded (learned); "), second.label
    assert server.plaintext_bodies == [body]  # no plaintext attempt first
    assert server.tls_requests == [("POST", body), ("POST", b"name=esrs&attempt=2")]


def test_a_learned_target_whose_tls_fails_is_forgotten(upgrader: Upgrader, cert: tuple[Path, Path]) -> None:
    """TLS to a learned target fails (its certificate is no longer trusted): a labelled 502, a log line that it is
    forgotten, and the next request tries plaintext first; once TLS works again, it is upgraded and learned anew."""
    server, port = upgrader.swap, upgrader.ports["swap"]
    target = f"127.0.0.1:{server.port}"
    assert (plaintext(port).label or "").startswith("upgraded; ")
    assert (plaintext(port).label or "").startswith("upgraded (learned); ")
    assert (server.plaintext_requests, server.tls_requests) == (1, 2)
    trusted, server.context = server.context, server_context(cert)  # a certificate mitmdump does not trust
    try:
        failed = plaintext(port)
        assert failed.status == 502, upgrader.m.log_tail()
        assert (failed.label or "").startswith(
            f"upgrade failed: certificate verification failed: self-signed certificate; {FIELD_ALERT_SUMMARY}"
        ), failed.label
        assert b"never weakened" in failed.body
        assert server.plaintext_requests == 1  # it went over TLS at once, as learned
        forgotten = f"TLS to learned target {target} failed"
        assert eventually(lambda: forgotten in upgrader.m.log()), upgrader.m.log_tail()
        assert "it is forgotten, and the next request tries plaintext first" in upgrader.m.log()
        connections = server.connections + 2  # this request's plaintext connection and its TLS attempt's
        again = plaintext(port)  # forgotten: plaintext first, then the TLS attempt, which fails the same way
        assert again.status == 502 and (again.label or "").startswith("upgrade failed: "), again.label
        assert (server.plaintext_requests, server.tls_requests) == (2, 2)
    finally:
        server.context = trusted
    remembered = plaintext(port)  # within esrs_upgrade_retry_after: the same failure at once, no attempt at all
    assert remembered.status == 502 and remembered.label == again.label, remembered.label
    assert (server.plaintext_requests, server.tls_requests, server.connections) == (2, 2, connections)
    time.sleep(RETRY_AFTER)  # a lower bound: the failure is no longer remembered after it
    upgraded = plaintext(port)
    assert upgraded.status == 200 and (upgraded.label or "").startswith("upgraded; "), upgraded.label
    assert (server.plaintext_requests, server.tls_requests) == (3, 3)
    assert upgrader.m.log().count(f"learned {target}: it speaks TLS") == 2


def test_a_certificate_for_another_name_fails_closed(upgrader: Upgrader) -> None:
    """The certificate is trusted, but names 127.0.0.1, localhost and esrs.lab, not 127.0.0.2 where the server is:
    a labelled 502 naming the mismatch, no request over that connection, nothing learned."""
    server, port = upgrader.other_name, upgrader.ports["other_name"]
    for _ in range(2):
        answer = plaintext(port)
        assert answer.status == 502, upgrader.m.log_tail()
        label = answer.label or ""
        assert label.startswith("upgrade failed: certificate verification failed: IP address mismatch; "), label
        assert b"never weakened" in answer.body
    assert server.tls_requests == 0  # no request went over the unverified connection
    # nothing was learned; the second request got the remembered failure at once, without a plaintext attempt
    assert server.plaintext_requests == 1
    assert "learned 127.0.0.2" not in upgrader.m.log()


def test_tls_records_in_the_body_of_a_valid_http_answer_are_not_upgraded(upgrader: Upgrader) -> None:
    """An HTTP 200 whose body is TLS records is valid HTTP: reported (tls_in_body), never sent again over TLS."""
    server, port = upgrader.tls_body, upgrader.ports["tls_body"]
    answer = plaintext(port)
    assert (answer.status, answer.body, answer.label) == (200, servers.ALERT_TLS10, None), upgrader.m.log_tail()
    assert upgrader.witness_replay()  # a later TLS attempt is in the log: one for this answer would be there before it
    assert server.connections == 1  # no TLS attempt
    assert not replayed(upgrader.m, "GET", server.port)
    (entry,) = [e for e in report_lines(upgrader.report) if f":{server.port}/" in e["url"]]
    assert (entry["kind"], entry["upgraded"], entry["upgrade"]) == ("tls_in_body", False, None)


# -- lenient: esrs_rewrite, esrs_filter and ssl_insecure on, each stand-in's certificate untrusted


@dataclass
class Lenient:
    m: Mitmdump
    ports: dict[str, int]
    #: The target of the esrs_filter check.
    scoped: servers.EsrsServer
    #: The target of the esrs_upgrade-beats-esrs_rewrite check.
    upgraded: servers.EsrsServer


@pytest.fixture(scope="module")
def lenient(cert: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lenient]:
    tmp = tmp_path_factory.mktemp("upgrade-lenient")
    scoped, upgraded = servers.EsrsServer(cert), servers.EsrsServer(cert)
    with scoped, upgraded:
        targets = {"scoped": f"http://127.0.0.1:{scoped.port}", "upgraded": f"http://127.0.0.1:{upgraded.port}"}
        options = {
            "esrs_upgrade": "true",
            "esrs_rewrite": "true",
            "esrs_filter": f"!~hq {OUT_OF_SCOPE.split(': ')[1]}",
            "ssl_insecure": "true",  # and no trusted CA: only this lets the stand-ins' certificate through
        }
        with reverse_mitmdump(targets, options, tmp / "mitmdump.log") as (m, ports):
            yield Lenient(m, ports, scoped, upgraded)


def test_esrs_filter_scopes_upgrading(lenient: Lenient) -> None:
    """Outside esrs_filter: today's labelled 502 (neither upgraded nor rewritten), before and after the target was
    learned by a flow inside it; inside: upgraded, then learned."""
    server, port = lenient.scoped, lenient.ports["scoped"]
    outside = plaintext(port, header=OUT_OF_SCOPE)
    assert outside.status == 502 and (outside.label or "").startswith(f"detected; {FIELD_ALERT_SUMMARY}"), outside.label
    assert (server.plaintext_requests, server.tls_requests) == (1, 0)
    inside = plaintext(port)
    assert inside.status == 200 and inside.body == servers.OK_BODY, lenient.m.log_tail()
    assert (inside.label or "").startswith("upgraded; "), inside.label
    assert (server.plaintext_requests, server.tls_requests) == (2, 1)
    outside = plaintext(port, header=OUT_OF_SCOPE)  # learned now, but outside the filter: plaintext, as before
    assert outside.status == 502 and (outside.label or "").startswith("detected; "), outside.label
    assert (server.plaintext_requests, server.tls_requests) == (3, 1)
    inside = plaintext(port)
    assert inside.body == servers.OK_BODY and (inside.label or "").startswith("upgraded (learned); "), inside.label
    assert (server.plaintext_requests, server.tls_requests) == (3, 2)


def test_with_rewrite_on_too_a_upgrade_answers_with_the_real_answer(lenient: Lenient) -> None:
    """esrs_upgrade and esrs_rewrite both on: the upgrade is tried first, and when it works the client gets the
    server's own answer, not the synthetic status. The certificate is untrusted: ssl_insecure lets it upgrade."""
    server, port = lenient.upgraded, lenient.ports["upgraded"]
    answer = plaintext(port)
    assert answer.status == 200 and answer.body == servers.OK_BODY, lenient.m.log_tail()
    assert (answer.label or "").startswith(f"upgraded; {FIELD_ALERT_SUMMARY}"), answer.label
    assert b"SYNTHETIC" not in answer.body
    assert (server.plaintext_requests, server.tls_requests) == (1, 1)


# -- silent_upgrader: the silently closing real servers, one mitmdump


@dataclass
class SilentUpgrader:
    peers: dict[str, Peer]
    missing: dict[str, str]
    m: Mitmdump | None  # None when no silently closing server could run here
    ports: dict[str, int]
    report: Path


@pytest.fixture(scope="module")
def silent_upgrader(real_server: RealServers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SilentUpgrader]:
    peers = {name: p for name in SILENT if (p := real_server.optional(name)) is not None}
    missing = {name: real_server.why_not(name) for name in SILENT if name not in peers}
    tmp = tmp_path_factory.mktemp("upgrade-silent")
    report = tmp / "report.jsonl"
    if not peers:
        yield SilentUpgrader(peers, missing, None, {}, report)
        return
    targets = {name: f"http://127.0.0.1:{p.port}" for name, p in peers.items()}
    options = {
        "esrs_upgrade": "true",
        "ssl_verify_upstream_trusted_ca": real_server.workspace.cert,
        "esrs_report": report,
        "connection_strategy": "lazy",  # openssl s_server: one connection at a time (see `upgrader`)
    }
    with reverse_mitmdump(targets, options, tmp / "mitmdump.log") as (m, ports):
        yield SilentUpgrader(peers, missing, m, ports, report)


@pytest.mark.parametrize("name", SILENT)
def test_a_post_after_a_silent_close_is_not_sent_again(silent_upgrader: SilentUpgrader, name: str) -> None:
    """A silent close proves nothing: a POST is not sent again; HEAD (where the server answers it) and GET are."""
    peer, m = silent_upgrader.peers.get(name), silent_upgrader.m
    if peer is None or m is None:
        pytest.skip(silent_upgrader.missing[name])
    port = silent_upgrader.ports[name]
    posted = plaintext(port, "POST")
    assert posted.status == 502 and posted.label is None, m.log_tail()  # mitmproxy's own 502, as without the addon
    (entry,) = [e for e in report_lines(silent_upgrader.report) if f":{peer.port}/" in e["url"]]
    assert (entry["kind"], entry["upgraded"], entry["upgrade"]) == ("silent_close", False, None)
    if name in ANSWER_HEAD:  # a safe method is sent again, and only once it succeeded is it learned
        real = direct_tls(peer, "HEAD")
        head = plaintext(port, "HEAD")
        assert (head.status, head.body) == (real.status, b""), m.log_tail()
        assert (head.label or "").startswith("upgraded; "), head.label
    got = plaintext(port, "GET")  # upgraded, or (after HEAD) learned
    assert got.status == 200 and peer.serves(got.body), m.log_tail()
    assert (got.label or "").startswith("upgraded (learned); " if name in ANSWER_HEAD else "upgraded; "), got.label
    upgraded = "HEAD" if name in ANSWER_HEAD else "GET"
    assert eventually(lambda: replayed(m, upgraded, peer.port)), m.log_tail()  # the counterpart of "no replay" above
    assert not replayed(m, "POST", peer.port)


def test_regular_mode_plain_get_to_a_tls_port_is_upgraded(real_server: RealServers, mitmdump) -> None:
    peer = real_server("nginx")
    port = servers.free_port()
    mitmdump(["-p", str(port), "--set", "esrs_upgrade=true", "--set", f"ssl_verify_upstream_trusted_ca={peer.cert}"])
    request = f"GET http://localhost:{peer.port}/ HTTP/1.1\r\nHost: localhost:{peer.port}\r\n\r\n".encode()
    for label in ("upgraded; ", "upgraded (learned); "):
        answer = exchange(("127.0.0.1", port), request, TIMEOUT)
        assert answer.status == 200 and peer.serves(answer.body) and (answer.label or "").startswith(label)


def test_upstream_mode_upgrades_through_connect_on_the_same_proxy(cert, start_server, mitmdump) -> None:
    """The plaintext request goes through the faulty upstream proxy; the upgraded one uses CONNECT through it."""
    server = start_server(servers.EsrsServer(cert))
    faulty = start_server(servers.FaultyProxy({("esrs.lab", 443): ("127.0.0.1", server.port)}))
    port = servers.free_port()
    mode = f"upstream:http://127.0.0.1:{faulty.port}"
    m = mitmdump(["-p", str(port), "--mode", mode, "--set", "esrs_upgrade=true", "--set",
                  f"ssl_verify_upstream_trusted_ca={cert[0]}"])  # fmt: skip
    request = b"GET http://esrs.lab:443/ HTTP/1.1\r\nHost: esrs.lab:443\r\n\r\n"
    first = exchange(("127.0.0.1", port), request, TIMEOUT)
    assert first.status == 200 and first.body == servers.OK_BODY and (first.label or "").startswith("upgraded; ")
    assert (server.plaintext_requests, server.tls_requests) == (1, 1)
    second = exchange(("127.0.0.1", port), request, TIMEOUT)
    assert second.body == servers.OK_BODY and (second.label or "").startswith("upgraded (learned); ")
    assert (server.plaintext_requests, server.tls_requests) == (1, 2)  # no plaintext attempt first
    assert f"learned esrs.lab:443 via 127.0.0.1:{faulty.port}" in m.log()


def test_an_untrusted_certificate_fails_closed(cert, esrs, mitmdump) -> None:
    server = esrs()
    args, (port,) = reverse_modes([f"http://127.0.0.1:{server.port}"])
    mitmdump([*args, "--set", "esrs_upgrade=true"])  # no trusted CA: the self-signed cert is refused
    for _ in range(2):
        answer = plaintext(port)
        assert answer.status == 502
        assert answer.label is not None and answer.label.startswith(
            "upgrade failed: certificate verification failed: self-signed certificate; TLS alert: "
        )
        assert b"never weakened" in answer.body
    assert server.tls_requests == 0  # no request went over an unverified connection
    # nothing was learned; the second request got the remembered failure at once, without a plaintext attempt
    assert server.plaintext_requests == 1


def test_an_untrusted_certificate_with_rewrite_falls_back_to_the_synthetic_status(esrs, mitmdump) -> None:
    server = esrs()
    args, (port,) = reverse_modes([f"http://127.0.0.1:{server.port}"])
    mitmdump([*args, "--set", "esrs_upgrade=true", "--set", "esrs_rewrite=true"])
    answer = plaintext(port)
    assert answer.status == 200 and (answer.label or "").startswith("synthetic 200; ")
    assert b"The TLS attempt (esrs_upgrade) failed first: certificate verification failed" in answer.body
    assert server.tls_requests == 0


def test_squids_wrapped_200_is_upgraded_through_connect_on_squid(real_proxies, jsse_esrs, cert, mitmdump) -> None:
    """squid (cache_peer to a JSSE-like TLS port) wraps the raw alert in `HTTP/1.1 200` + X-Transformed-From:
    HTTP/0.9; that 200 is squid's invention, so the request is sent again over TLS, through CONNECT on squid."""
    squid = real_proxies.get("squid-peer")
    port = servers.free_port()
    m = mitmdump(["-p", str(port), "--mode", f"upstream:{squid.url}", "--set", "esrs_upgrade=true", "--set",
                  f"ssl_verify_upstream_trusted_ca={cert[0]}"])  # fmt: skip
    url = f"http://localhost:{jsse_esrs.port}/"
    request = f"GET {url} HTTP/1.1\r\nHost: localhost:{jsse_esrs.port}\r\n\r\n".encode()
    before = (jsse_esrs.plaintext_requests, jsse_esrs.tls_requests)
    first = exchange(("127.0.0.1", port), request, TIMEOUT)
    assert first.status == 200 and first.body == servers.OK_BODY, m.log_tail()
    assert (first.label or "").startswith("upgraded; TLS alert: fatal unexpected_message (10), record version TLS 1.2")
    assert (jsse_esrs.plaintext_requests, jsse_esrs.tls_requests) == (before[0] + 1, before[1] + 1)
    assert "[tls_wrapped_http09, confidence high; upgraded to TLS" in m.log()
    second = exchange(("127.0.0.1", port), request, TIMEOUT)
    assert second.body == servers.OK_BODY and (second.label or "").startswith("upgraded (learned); ")
    assert (jsse_esrs.plaintext_requests, jsse_esrs.tls_requests) == (before[0] + 1, before[1] + 2)


def test_squid_in_front_of_the_real_jsse_server_is_upgraded(real_server: RealServers, real_proxies, mitmdump) -> None:
    """squid, its cache_peer the real JSSE server (Java), wraps JSSE's own alert in `HTTP/1.1 200` + X-Transformed-From:
    HTTP/0.9; the client gets what a direct https:// request to that server gets, then the target is learned."""
    jsse = real_server("jsse")
    squid = real_proxies.get("squid-jsse")
    port = servers.free_port()
    m = mitmdump(["-p", str(port), "--mode", f"upstream:{squid.url}", "--set", "esrs_upgrade=true", "--set",
                  f"ssl_verify_upstream_trusted_ca={jsse.cert}"])  # fmt: skip
    request = f"GET http://localhost:{jsse.port}/ HTTP/1.1\r\nHost: localhost:{jsse.port}\r\n\r\n".encode()
    real = direct_tls(jsse)
    first = exchange(("127.0.0.1", port), request, TIMEOUT)
    assert (first.status, first.body) == (real.status, real.body), m.log_tail()
    assert jsse.serves(first.body)
    assert (first.label or "").startswith("upgraded; TLS alert: fatal unexpected_message (10), record version TLS 1.2")
    assert "[tls_wrapped_http09, confidence high; upgraded to TLS" in m.log()
    second = exchange(("127.0.0.1", port), request, TIMEOUT)
    assert (second.status, second.body) == (real.status, real.body), m.log_tail()
    assert (second.label or "").startswith("upgraded (learned); "), second.label
    assert f"learned localhost:{jsse.port} via 127.0.0.1:{squid.port}" in m.log()


class ClientCertServer(servers.EsrsServer):
    """The stand-in, asking every TLS client for a certificate signed by `client_ca`."""

    def __init__(self, cert: tuple[Path, Path], client_ca: Path) -> None:
        super().__init__(cert)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.load_verify_locations(str(client_ca))


def test_the_tls_attempt_presents_mitmproxys_client_certificate(cert, start_server, mitmdump, tmp_path) -> None:
    client_cert, client_key = servers.make_certificate(tmp_path, "esrs-fix-client")
    bundle = tmp_path / "client.pem"  # mitmproxy's client_certs: certificate and key in one PEM file
    bundle.write_bytes(client_cert.read_bytes() + client_key.read_bytes())
    server = start_server(ClientCertServer(cert, client_cert))
    trusted = ["--set", "esrs_upgrade=true", "--set", f"ssl_verify_upstream_trusted_ca={cert[0]}"]
    args, (with_cert,) = reverse_modes([f"http://127.0.0.1:{server.port}"])
    mitmdump([*args, *trusted, "--set", f"client_certs={bundle}"])
    upgraded = plaintext(with_cert)
    assert (
        upgraded.status == 200 and upgraded.body == servers.OK_BODY and (upgraded.label or "").startswith("upgraded; ")
    )
    assert server.tls_requests == 1
    args, (without,) = reverse_modes([f"http://127.0.0.1:{server.port}"])
    mitmdump([*args, *trusted])
    refused = plaintext(without)
    assert refused.status == 502 and (refused.label or "").startswith("upgrade failed: "), refused.label
    assert server.tls_requests == 1  # the server refused the TLS client without a certificate


def test_a_large_answer_is_upgraded_whole_when_mitmproxy_streams_bodies(cert, start_server, mitmdump) -> None:
    """With stream_large_bodies, the TLS attempt's body streams; it is kept, not dropped, and the client gets it."""
    body = bytes(range(256)) * 1024  # 256 KiB
    server = start_server(RecordingServer(cert, body))
    args, (port,) = reverse_modes([f"http://127.0.0.1:{server.port}"])
    mitmdump([*args, "--set", "esrs_upgrade=true", "--set", f"ssl_verify_upstream_trusted_ca={cert[0]}",
              "--set", "stream_large_bodies=1k"])  # fmt: skip
    for label in ("upgraded; ", "upgraded (learned); "):
        answer = plaintext(port)
        assert answer.status == 200 and (answer.label or "").startswith(label), answer.label
        assert answer.body == body
    assert server.tls_count == 2


def test_a_body_over_body_size_limit_is_not_upgraded(cert, start_server, mitmdump) -> None:
    server = start_server(RecordingServer(cert, b"x" * 200_000))
    args, (port,) = reverse_modes([f"http://127.0.0.1:{server.port}"])
    mitmdump([*args, "--set", "esrs_upgrade=true", "--set", f"ssl_verify_upstream_trusted_ca={cert[0]}",
              "--set", "body_size_limit=100k"])  # fmt: skip
    answer = plaintext(port)
    assert answer.status == 502 and (answer.label or "").startswith("upgrade failed: "), answer.label


def test_a_post_whose_body_mitmproxy_streamed_is_not_sent_again(cert, start_server, mitmdump, tmp_path) -> None:
    """mitmproxy keeps no copy of a streamed request body: re-sending would send the request without it."""
    server = start_server(RecordingServer(cert, b"ok"))
    report = tmp_path / "report.jsonl"
    args, (port,) = reverse_modes([f"http://127.0.0.1:{server.port}"])
    # 2k: the 4,000-byte request body streams, the addon's 502 for the alert (about 650 bytes) does not
    mitmdump([*args, "--set", "esrs_upgrade=true", "--set", f"ssl_verify_upstream_trusted_ca={cert[0]}",
              "--set", "stream_large_bodies=2k", "--set", f"esrs_report={report}"])  # fmt: skip
    body = b"x" * 4000
    head = b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4000\r\nConnection: close\r\n\r\n"
    answer = exchange(("127.0.0.1", port), head + body, TIMEOUT)
    assert answer.status == 502 and (answer.label or "").startswith("detected; "), answer.label
    assert server.tls_count == 0 and server.plaintext_bodies == [body]
    (entry,) = report_lines(report)
    assert entry["upgraded"] is False and entry["upgrade"] is None
