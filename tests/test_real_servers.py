"""Real TLS servers (tests/realpeers.py) answer a plaintext request the way the product's classifiers say they do.

The expectations are written here, apart from the registry, so that a wrong entry there fails here: what a
plaintext `GET / HTTP/1.1` to each TLS port gets, through stray_tls.core.findings; what a TLS `GET /` gets; and that
mitmproxy verifies every peer with the lab certificate as its trust anchor.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stray_tls.core import findings
from stray_tls.core.findings import Kind
from stray_tls.fieldkit import wire as check
from stray_tls.fieldkit.wire import Answer

from .conftest import reverse_modes
from .realpeers import SPECS, Launch, Peer, PeerFailed, PeerUnavailable, RealServers, Spec, Workspace

pytestmark = pytest.mark.e2e

PLAINTEXT_GET = b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: esrs-fix-test\r\n\r\n"
TLS_GET = b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: esrs-fix-test\r\nConnection: close\r\n\r\n"

#: Peers whose TLS port answers plaintext with a "plain HTTP to HTTPS port" 400 page: the software findings names.
PLAIN_HTTP_400 = {
    "nginx": "nginx",
    "apache2": "Apache httpd",
    "tomcat": "Apache Tomcat",
    "go": "Go net/http",
}
#: Peers that answer with TLS records: the exact bytes, and their one-line summary.
ALERT_TLS12 = ("15 03 03 00 02 02 0a", "TLS alert: fatal unexpected_message (10), record version TLS 1.2")
TLS_RECORDS = {"jsse": ALERT_TLS12, "gnutls": ALERT_TLS12}
#: Peers that send no byte and close: whether the close is a TCP reset (the request left unread) or a FIN.
SILENT_CLOSE = {"jdk-httpsserver": False, "openssl": False, "python-ssl": True}


def plaintext_answer(peer: Peer) -> tuple[Answer, float]:
    started = time.monotonic()
    answer = check.exchange(peer.address, PLAINTEXT_GET, timeout=5)
    return answer, time.monotonic() - started


def tls_get(peer: Peer, server_hostname: str = "localhost") -> Answer:
    """GET / over TLS, verifying the peer with its certificate as the only trust anchor."""
    with (
        socket.create_connection(peer.address, timeout=5) as raw,
        peer.tls_context().wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        return check.send_and_read(tls, TLS_GET, time.monotonic() + 5)


def test_every_peer_has_an_expectation() -> None:
    assert set(SPECS) == set(PLAIN_HTTP_400) | set(TLS_RECORDS) | set(SILENT_CLOSE)


@pytest.mark.parametrize(("name", "software"), PLAIN_HTTP_400.items())
def test_plaintext_gets_the_plain_http_400_page(real_server: RealServers, name: str, software: str) -> None:
    peer = real_server(name)
    answer, _ = plaintext_answer(peer)
    assert answer.status == 400, answer.raw
    found = findings.from_response(answer.status, answer.body, content_type=answer.header("content-type"))
    assert found is not None, answer.body
    assert found.kind is Kind.PLAIN_HTTP_400
    assert found.extra["server_software"] == software
    assert f"HTTP 400 from {software}:" in found.detail
    # what the registry records about this peer agrees with what it does
    assert (peer.plaintext, peer.software) == (Kind.PLAIN_HTTP_400, software)
    assert peer.plaintext_answer in answer.body


@pytest.mark.parametrize(("name", "expected"), TLS_RECORDS.items())
def test_plaintext_gets_tls_records(real_server: RealServers, name: str, expected: tuple[str, str]) -> None:
    peer = real_server(name)
    answer, _ = plaintext_answer(peer)
    raw_hex, summary = expected
    assert answer.raw == bytes.fromhex(raw_hex)
    assert not answer.timed_out
    found = findings.from_response_head(answer.raw)
    assert found is not None
    assert found.kind is Kind.TLS_RECORDS
    assert found.summary == summary
    assert (peer.plaintext, peer.plaintext_answer) == (Kind.TLS_RECORDS, answer.raw)


@pytest.mark.parametrize(("name", "reset"), SILENT_CLOSE.items())
def test_plaintext_gets_a_silent_close(real_server: RealServers, name: str, reset: bool) -> None:
    peer = real_server(name)
    answer, seconds = plaintext_answer(peer)
    assert answer.raw == b""
    assert not answer.timed_out and seconds < 3  # closed, not merely quiet
    if reset:
        assert "reset" in answer.error.lower()
    else:
        assert answer.error == ""
        assert check.describe(answer)[0] == "connection closed without a byte"
    assert (peer.plaintext, peer.plaintext_answer, peer.plaintext_reset) == (Kind.SILENT_CLOSE, b"", reset)


@pytest.mark.parametrize("name", list(SPECS))
def test_tls_get_answers_the_peers_body(real_server: RealServers, name: str) -> None:
    peer = real_server(name)
    for hostname in ("localhost", "esrs.lab", "127.0.0.1"):  # every name the certificate is good for
        answer = tls_get(peer, hostname)
        assert answer.status == 200, (hostname, answer.raw[:200])
        assert peer.serves(answer.body), (hostname, answer.body[:200])
    if peer.body_exact:
        assert peer.body == f"esrs-fix real peer: {name}\n".encode()


def test_mitmproxy_verifies_every_peer_with_the_lab_certificate(real_server: RealServers, mitmdump) -> None:
    """A plain GET through mitmdump in reverse mode reaches each peer over TLS, certificate verified."""
    peers = [p for p in (real_server.optional(n) for n in real_server.names) if p is not None]
    if not peers:
        pytest.skip("no real peer can run here")
    targets = [f"https://{host}:{p.port}" for p in peers for host in ("localhost", "127.0.0.1")]
    args, ports = reverse_modes(targets)
    cert = peers[0].cert
    assert all(p.cert == cert for p in peers)
    mitmdump([*args, "--set", f"ssl_verify_upstream_trusted_ca={cert}"], addon=False, listeners=len(targets))
    for target, port in zip(targets, ports, strict=True):
        peer = peers[targets.index(target) // 2]
        answer = check.exchange(("127.0.0.1", port), PLAINTEXT_GET, timeout=10)
        assert answer.status == 200, (target, answer.raw[:300])
        assert peer.serves(answer.body), (target, answer.body[:200])


def test_a_peer_starts_once_and_stops_by_its_pid(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    workspace = Workspace(tmp_path / "ws", {"python-ssl": SPECS["python-ssl"]})
    try:
        peer = workspace.get("python-ssl")
        assert workspace.get("python-ssl") is peer
        assert peer.process.poll() is None
    finally:
        workspace.stop_all()
    assert peer.process.poll() is not None
    with pytest.raises(OSError):
        socket.create_connection(peer.address, timeout=2).close()


def test_a_peer_that_cannot_run_says_why(tmp_path: Path) -> None:
    def crash(ws: Workspace, d: Path, port: int) -> Launch:
        return Launch([sys.executable, "-c", "print('esrs-peer-boom', flush=True); raise SystemExit(3)"], d)

    specs = {
        "absent": Spec("absent", "x", Kind.SILENT_CLOSE, b"", (("esrs-no-such-program", "apt-get install x"),), crash),
        "crashes": Spec("crashes", "x", Kind.SILENT_CLOSE, b"", (), crash),
    }
    (tmp_path / "ws").mkdir()
    workspace = Workspace(tmp_path / "ws", specs)
    with pytest.raises(PeerUnavailable, match=r"esrs-no-such-program is not installed \(apt-get install x\)"):
        workspace.get("absent")
    with pytest.raises(PeerFailed, match=r"(?s)exited with status 3.*esrs-peer-boom"):
        workspace.get("crashes")
    with pytest.raises(PeerFailed, match="exited with status 3"):  # remembered, not retried
        workspace.get("crashes")
    assert not workspace.peers


def test_no_peer_listens_beyond_loopback(real_server: RealServers) -> None:
    """gnutls-serv binds the wildcard address unless its bind shim works: check what every peer listens on."""
    peers = [p for p in (real_server.optional(n) for n in real_server.names) if p is not None]  # all started first
    if not peers:
        pytest.skip("no real peer can run here")
    ss = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=False)
    if ss.returncode != 0:
        pytest.skip("ss is not available (apt-get install iproute2)")
    for peer in peers:
        local = [line.split()[3] for line in ss.stdout.splitlines() if f"pid={peer.pid}," in line]
        assert local, (peer.name, ss.stdout)
        for address in local:
            ip = ipaddress.ip_address(address.rsplit(":", 1)[0].strip("[]"))
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:  # Java binds ::ffff:127.0.0.1
                ip = ip.ipv4_mapped
            assert ip.is_loopback, (peer.name, address)
