"""`esrs-fix check`: run what the ESRS check runs through a customer's proxy, plus probes that tell the faults apart.

Per port: (1) absolute-form `GET https://HOST:PORT/` (what CECT / NetworkCheck send), (2) CONNECT then TLS then
`GET /`, (3) CONNECT then plaintext `GET /` (does the port speak TLS?), and (4) with `--direct`, TLS straight to
the server.  The verdict says which hop is at fault, in words.
"""

from __future__ import annotations

import enum
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from . import findings
from .findings import Finding, Kind
from .wire import Answer, describe, send_and_read


class Outcome(enum.IntEnum):
    """Also the exit status of `esrs-fix check`."""

    PASS = 0
    FAIL = 1
    UNTESTED = 3  # could not test: the proxy is unreachable


@dataclass
class Probe:
    name: str
    what: str  # one line: what came back
    ok: bool
    finding: Finding | None = None
    status: int | None = None
    #: The proxy could not be reached at all: nothing was tested.
    unreachable: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "probe": self.name,
            "ok": self.ok,
            "status": self.status,
            "what": self.what,
            "finding": self.finding.to_dict() if self.finding else None,
        }


@dataclass
class PortResult:
    host: str
    port: int
    outcome: Outcome
    verdict: str
    probes: list[Probe] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": f"https://{self.host}:{self.port}/",
            "outcome": self.outcome.name.lower(),
            "verdict": self.verdict,
            "probes": [p.to_dict() for p in self.probes],
        }


def _connect(proxy: tuple[str, int], timeout: float) -> socket.socket | str:
    try:
        return socket.create_connection(proxy, timeout=timeout)
    except OSError as e:
        return f"cannot connect to the proxy {proxy[0]}:{proxy[1]}: {e.strerror or e}"


def probe_absolute(proxy: tuple[str, int], host: str, port: int, timeout: float) -> Probe:
    sock = _connect(proxy, timeout)
    if isinstance(sock, str):
        return Probe("GET https:// (as the check)", sock, False, unreachable=True)
    request = f"GET https://{host}:{port}/ HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: esrs-fix-check\r\n\r\n"
    with sock:
        a = send_and_read(sock, request.encode(), time.monotonic() + timeout)
    what, f = describe(a)
    return Probe("GET https:// (as the check)", what, a.status == 200, f, a.status)


def _tunnel(proxy: tuple[str, int], host: str, port: int, timeout: float) -> tuple[socket.socket | None, str]:
    sock = _connect(proxy, timeout)
    if isinstance(sock, str):
        return None, sock
    a = send_and_read(
        sock,
        f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode(),
        time.monotonic() + timeout,
        head_only=True,
    )
    if a.status != 200:
        sock.close()
        what, _ = describe(a)
        return None, f"CONNECT refused: {what}"
    return sock, a.status_line


def _tls_get(sock: socket.socket, host: str, timeout: float) -> tuple[Answer | None, str]:
    """TLS over `sock`, then `GET /`: the answer (None when the handshake failed) and what TLS said."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # reachability, not trust: the customer's CA is not ours to judge
    try:
        tls = context.wrap_socket(sock, server_hostname=host)
    except (ssl.SSLError, OSError) as e:
        f = findings.from_tls_error(str(e))
        return None, f"TLS handshake failed: {f.summary if f else e}"
    with tls:
        version = tls.version() or "TLS"
        a = send_and_read(tls, f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(), time.monotonic() + timeout)
    return a, f"{version} handshake done"


def probe_connect_tls(proxy: tuple[str, int], host: str, port: int, timeout: float) -> Probe:
    sock, said = _tunnel(proxy, host, port, timeout)
    if sock is None:
        return Probe("CONNECT, then TLS", said, False)
    with sock:
        a, tls_said = _tls_get(sock, host, timeout)
    if a is None:
        return Probe("CONNECT, then TLS", f"{said}; {tls_said}", False)
    what, f = describe(a)
    return Probe("CONNECT, then TLS", f"{said}; {tls_said}; {what}", a.status is not None, f, a.status)


def probe_connect_plain(proxy: tuple[str, int], host: str, port: int, timeout: float) -> Probe:
    sock, said = _tunnel(proxy, host, port, timeout)
    if sock is None:
        return Probe("CONNECT, then plaintext", said, False)
    with sock:
        a = send_and_read(sock, f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(), time.monotonic() + timeout)
    what, f = describe(a)
    # "ok" here means: the port answered plaintext the way a TLS port does
    speaks_tls = f is not None and f.kind in (Kind.TLS_RECORDS, Kind.PLAIN_HTTP_400)
    return Probe("CONNECT, then plaintext", f"{said}; {what}", speaks_tls, f, a.status)


def probe_direct(host: str, port: int, timeout: float) -> Probe:
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        return Probe("direct TLS (no proxy)", f"cannot connect: {e.strerror or e}", False)
    with sock:
        a, tls_said = _tls_get(sock, host, timeout)
    if a is None:
        return Probe("direct TLS (no proxy)", tls_said, False)
    what, f = describe(a)
    return Probe("direct TLS (no proxy)", f"{tls_said}; {what}", a.status is not None, f, a.status)


def check_port(proxy: tuple[str, int], host: str, port: int, timeout: float, direct: bool = False) -> PortResult:
    absolute = probe_absolute(proxy, host, port, timeout)
    probes = [absolute]
    if absolute.unreachable:
        return PortResult(host, port, Outcome.UNTESTED, f"could not test: {absolute.what}", probes)
    tunnel = probe_connect_tls(proxy, host, port, timeout)
    plain = probe_connect_plain(proxy, host, port, timeout)
    probes += [tunnel, plain]
    if direct:
        probes.append(probe_direct(host, port, timeout))
    return PortResult(host, port, *_verdict(absolute, tunnel), probes)


def _verdict(absolute: Probe, tunnel: Probe) -> tuple[Outcome, str]:
    connect = (
        "CONNECT works, so the server is reachable" if tunnel.ok else f"CONNECT does not work either ({tunnel.what})"
    )
    if absolute.ok:
        return Outcome.PASS, "the check would pass: the proxy answers GET https:// with HTTP 200"
    f = absolute.finding
    if f is not None and f.kind in (Kind.TLS_RECORDS, Kind.TLS_INCOMPLETE, Kind.TLS_IN_BODY):
        fix = "fix the proxy's handling of https:// URLs or bypass the check" if tunnel.ok else "fix the proxy"
        return Outcome.FAIL, (
            "the proxy forwarded the request in plaintext to a TLS port and relayed the server's answer "
            f"({f.summary}); {connect}: {fix}"
        )
    if f is not None and f.kind is Kind.PLAIN_HTTP_400:
        return Outcome.FAIL, f"the proxy sent the request in plaintext and the server said so ({f.detail}); {connect}"
    if absolute.status is not None:
        return Outcome.FAIL, f"the proxy answered {absolute.what} instead of 200; {connect}"
    return Outcome.FAIL, f"no HTTP answer to GET https:// ({absolute.what}); {connect}"


def overall(results: list[PortResult]) -> Outcome:
    if any(r.outcome is Outcome.UNTESTED for r in results):
        return Outcome.UNTESTED
    return Outcome.FAIL if any(r.outcome is Outcome.FAIL for r in results) else Outcome.PASS
