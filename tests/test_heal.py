"""esrs_upgrade against real TLS servers: the client gets the server's own answer, then the target is learned.

Real mitmdump, real servers from Debian (tests/realpeers.py) and the lab's stand-ins, on loopback; regular,
reverse and upstream mode; the untrusted certificate fails closed; a POST after a silent close is not re-sent.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stray_tls.findings import Kind
from stray_tls.lab import servers
from stray_tls.lab.mitm import Mitmdump
from stray_tls.wire import Answer, exchange, send_and_read

from .conftest import reverse_modes
from .realpeers import Peer, RealServers

pytestmark = pytest.mark.e2e

PEERS = ["nginx", "apache2", "tomcat", "go", "jsse", "gnutls", "jdk-httpsserver", "openssl", "python-ssl"]
TIMEOUT = 20.0  # a bound on each client, not a speed claim


def plaintext(port: int, method: str = "GET", host: str = "localhost") -> Answer:
    body = b"x=1" if method == "POST" else b""
    head = f"{method} / HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    return exchange(("127.0.0.1", port), head.encode() + body, TIMEOUT)


def direct_tls(peer: Peer) -> Answer:
    """What the same request gets from the server over TLS, without any proxy."""
    with (
        socket.create_connection(peer.address, timeout=TIMEOUT) as raw,
        peer.tls_context().wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        request = b"GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        return send_and_read(tls, request, time.monotonic() + TIMEOUT)


def report_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class Healer:
    """One mitmdump in reverse mode with a listener per available real server, esrs_upgrade on."""

    def __init__(self, peers: dict[str, Peer], m: Mitmdump, ports: dict[str, int], report: Path) -> None:
        self.peers, self.m, self.ports, self.report = peers, m, ports, report


@pytest.fixture(scope="module")
def healer(real_server: RealServers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Healer]:
    peers = {name: p for name in PEERS if (p := real_server.optional(name)) is not None}
    if not peers:
        pytest.skip("no real TLS server could run here (see tests/test_real_servers.py for what is missing)")
    tmp = tmp_path_factory.mktemp("heal")
    args, ports = reverse_modes([f"http://127.0.0.1:{p.port}" for p in peers.values()])
    ca = next(iter(peers.values())).cert
    report = tmp / "report.jsonl"
    # lazy: `openssl s_server` serves one connection at a time, and the plaintext connection that reverse mode
    # opens eagerly for a learned request (which goes over TLS instead) would hold it. Eager mode is covered below.
    options = {
        "esrs_upgrade": "true",
        "ssl_verify_upstream_trusted_ca": ca,
        "esrs_report": report,
        "connection_strategy": "lazy",
    }
    m = Mitmdump(
        args + [a for k, v in options.items() for a in ("--set", f"{k}={v}")],
        tmp / "mitmdump.log",
        listeners=len(ports),
    )
    with m:
        yield Healer(peers, m, dict(zip(peers, ports, strict=True)), report)


@pytest.mark.parametrize("name", PEERS)
def test_a_real_server_is_healed_then_served_as_learned(healer: Healer, name: str) -> None:
    peer = healer.peers.get(name)
    if peer is None:
        pytest.skip(f"{name} could not run here (see tests/test_real_servers.py)")
    port = healer.ports[name]
    real = direct_tls(peer)
    first = plaintext(port)
    # the same status and body as a direct https:// request (openssl -www's page differs per connection)
    same = (first.status, first.body if peer.body_exact else b"") == (
        real.status,
        real.body if peer.body_exact else b"",
    )
    assert same, healer.m.log_tail()
    assert peer.serves(first.body) and peer.serves(real.body)
    assert (first.label or "").startswith("upgraded; "), first.label
    if peer.plaintext is Kind.PLAIN_HTTP_400:
        assert f"HTTP 400 from {peer.software}" in (first.label or "")
    second = plaintext(port)
    assert second.status == real.status and peer.serves(second.body)
    assert (second.label or "").startswith("upgraded (learned); "), second.label
    lines = [e for e in report_lines(healer.report) if f":{peer.port}/" in e["url"]]
    assert [(e["upgraded"], e["learned"]) for e in lines] == [(True, False), (True, True)]
    assert lines[0]["kind"] == str(peer.plaintext) and lines[0]["upgrade"]["status"] == real.status
    if peer.plaintext is Kind.TLS_RECORDS:
        assert bytes.fromhex(lines[0]["raw_hex"]) == peer.plaintext_answer  # what the plaintext attempt got


@pytest.fixture
def silent(real_server: RealServers) -> Peer:
    for name in ("openssl", "python-ssl", "jdk-httpsserver"):
        if (peer := real_server.optional(name)) is not None:
            return peer
    pytest.skip("no silently closing TLS server could run here")


def test_a_post_after_a_silent_close_is_not_sent_again(silent: Peer, mitmdump, tmp_path: Path) -> None:
    report = tmp_path / "report.jsonl"
    args, (port,) = reverse_modes([f"http://127.0.0.1:{silent.port}"])
    m = mitmdump([*args, "--set", "esrs_upgrade=true", "--set", f"ssl_verify_upstream_trusted_ca={silent.cert}",
                  "--set", f"esrs_report={report}"])  # fmt: skip
    posted = plaintext(port, "POST")
    assert posted.status == 502 and posted.label is None  # mitmproxy's own 502, as without the addon
    (entry,) = report_lines(report)
    assert (entry["kind"], entry["upgraded"], entry["upgrade"]) == ("silent_close", False, None)
    assert "[replay]" not in m.log()  # no TLS attempt was made
    healed = plaintext(port, "GET")  # a safe method is sent again, and only once it succeeded is it learned
    assert healed.status == 200 and silent.serves(healed.body) and (healed.label or "").startswith("upgraded; ")


def test_regular_mode_plain_get_to_a_tls_port_is_healed(real_server: RealServers, mitmdump) -> None:
    peer = real_server("nginx")
    port = servers.free_port()
    mitmdump(["-p", str(port), "--set", "esrs_upgrade=true", "--set", f"ssl_verify_upstream_trusted_ca={peer.cert}"])
    request = f"GET http://localhost:{peer.port}/ HTTP/1.1\r\nHost: localhost:{peer.port}\r\n\r\n".encode()
    for label in ("upgraded; ", "upgraded (learned); "):
        answer = exchange(("127.0.0.1", port), request, TIMEOUT)
        assert answer.status == 200 and peer.serves(answer.body) and (answer.label or "").startswith(label)


def test_upstream_mode_heals_through_connect_on_the_same_proxy(cert, start_server, mitmdump) -> None:
    """The plaintext request goes through the faulty upstream proxy; the healed one uses CONNECT through it."""
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
    assert server.plaintext_requests == 2  # nothing was learned: each request tried plaintext first


def test_an_untrusted_certificate_with_rewrite_falls_back_to_the_synthetic_status(esrs, mitmdump) -> None:
    server = esrs()
    args, (port,) = reverse_modes([f"http://127.0.0.1:{server.port}"])
    mitmdump([*args, "--set", "esrs_upgrade=true", "--set", "esrs_rewrite=true"])
    answer = plaintext(port)
    assert answer.status == 200 and (answer.label or "").startswith("synthetic 200; ")
    assert b"The TLS attempt (esrs_upgrade) failed first: certificate verification failed" in answer.body
    assert server.tls_requests == 0


def test_squids_wrapped_200_is_healed_through_connect_on_squid(real_proxies, jsse_esrs, cert, mitmdump) -> None:
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
    healed = plaintext(with_cert)
    assert healed.status == 200 and healed.body == servers.OK_BODY and (healed.label or "").startswith("upgraded; ")
    assert server.tls_requests == 1
    args, (without,) = reverse_modes([f"http://127.0.0.1:{server.port}"])
    mitmdump([*args, *trusted])
    refused = plaintext(without)
    assert refused.status == 502 and (refused.label or "").startswith("upgrade failed: "), refused.label
    assert server.tls_requests == 1  # the server refused the TLS client without a certificate


class BigBodyServer(servers.TCPServer):
    """A TLS port answering `GET` over TLS with `body`, and plaintext with the field alert (like the stand-in)."""

    def __init__(self, cert: tuple[Path, Path], body: bytes) -> None:
        super().__init__()
        self.body = body
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert[0]), str(cert[1]))
        self.tls_requests = 0
        self.plaintext_bodies: list[bytes] = []

    def handle(self, conn: socket.socket) -> None:
        if conn.recv(1, socket.MSG_PEEK) != b"\x16":
            head = servers.read_head(conn)
            if not head:  # reverse mode's eager connection, closed unused (the request went over TLS)
                return
            length = int(next((v for k, v in (line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
                               if k.strip().lower() == b"content-length"), b"0"))  # fmt: skip
            received = head.split(b"\r\n\r\n", 1)[1]
            while len(received) < length and (more := conn.recv(4096)):
                received += more
            self.plaintext_bodies.append(received[:length])
            conn.sendall(servers.ALERT_TLS10)
            return
        with self.context.wrap_socket(conn, server_side=True) as tls:
            servers.read_head(tls)
            self.tls_requests += 1
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(self.body))
            tls.sendall(self.body)


def test_a_large_answer_is_healed_whole_when_mitmproxy_streams_bodies(cert, start_server, mitmdump) -> None:
    """With stream_large_bodies, the TLS attempt's body streams; it is kept, not dropped, and the client gets it."""
    body = bytes(range(256)) * 1024  # 256 KiB
    server = start_server(BigBodyServer(cert, body))
    args, (port,) = reverse_modes([f"http://127.0.0.1:{server.port}"])
    mitmdump([*args, "--set", "esrs_upgrade=true", "--set", f"ssl_verify_upstream_trusted_ca={cert[0]}",
              "--set", "stream_large_bodies=1k"])  # fmt: skip
    for label in ("upgraded; ", "upgraded (learned); "):
        answer = plaintext(port)
        assert answer.status == 200 and (answer.label or "").startswith(label), answer.label
        assert answer.body == body
    assert server.tls_requests == 2


def test_a_body_over_body_size_limit_is_not_healed(cert, start_server, mitmdump) -> None:
    server = start_server(BigBodyServer(cert, b"x" * 200_000))
    args, (port,) = reverse_modes([f"http://127.0.0.1:{server.port}"])
    mitmdump([*args, "--set", "esrs_upgrade=true", "--set", f"ssl_verify_upstream_trusted_ca={cert[0]}",
              "--set", "body_size_limit=100k"])  # fmt: skip
    answer = plaintext(port)
    assert answer.status == 502 and (answer.label or "").startswith("upgrade failed: "), answer.label


def test_a_post_whose_body_mitmproxy_streamed_is_not_sent_again(cert, start_server, mitmdump, tmp_path) -> None:
    """mitmproxy keeps no copy of a streamed request body: re-sending would send the request without it."""
    server = start_server(BigBodyServer(cert, b"ok"))
    report = tmp_path / "report.jsonl"
    args, (port,) = reverse_modes([f"http://127.0.0.1:{server.port}"])
    # 2k: the 4,000-byte request body streams, the addon's 502 for the alert (about 650 bytes) does not
    mitmdump([*args, "--set", "esrs_upgrade=true", "--set", f"ssl_verify_upstream_trusted_ca={cert[0]}",
              "--set", "stream_large_bodies=2k", "--set", f"esrs_report={report}"])  # fmt: skip
    body = b"x" * 4000
    head = b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4000\r\nConnection: close\r\n\r\n"
    answer = exchange(("127.0.0.1", port), head + body, TIMEOUT)
    assert answer.status == 502 and (answer.label or "").startswith("detected; "), answer.label
    assert server.tls_requests == 0 and server.plaintext_bodies == [body]
    (entry,) = report_lines(report)
    assert entry["upgraded"] is False and entry["upgrade"] is None
