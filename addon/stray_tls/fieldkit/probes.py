"""The probes of `esrs-fix check` through a proxy, each on its own connection, authenticated the way the proxy asks.

The first request goes without credentials; a 407 names the schemes the proxy takes, and the probe authenticates as
a browser would (Negotiate, NTLM, Basic, the first that gets through): NTLM's and Negotiate's steps (the first token,
the 407 with the challenge, the answer with the request) on one kept-alive connection, which then carries the request
or becomes the tunnel. The scheme that worked is used at once by the next probes. Every answer is scrubbed of the
password and of every token sent for it as it is read (`_read`), before any text, hex or JSON is made of it.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core import findings
from ..core.findings import Finding, Kind
from ..core.names import hostport, url_host
from . import proxyauth
from .proxyauth import AuthError, AuthHandshake, Credentials, Offer, Scheme, challenges, token_of
from .shapes import Probe, Shape, shape_of
from .wire import Answer, describe, send_and_read


@dataclass
class ProxyAuth:
    """What one port's check learns of the proxy's authentication, shared by its probes: what the proxy offers
    (from its first 407), the scheme that got through (the next probes use it at once), and each scheme tried that
    did not, with how it ended."""

    credentials: Credentials | None = None
    offer: Offer | None = None
    scheme: Scheme | None = None
    tried: dict[Scheme, str] = field(default_factory=dict)
    #: Single sign-on, without credentials given: the Kerberos ticket in the cache, and the tokens sent for it.
    ticket: Credentials = field(default_factory=Credentials.ticket)
    #: Whose ticket got through (single sign-on), as its principal names it (`esrsuser@LAB.TEST`).
    principal: str | None = None
    #: What Negotiate carried when it got through: `Kerberos`, or `NTLM` inside it.
    mechanism: str | None = None

    @property
    def using(self) -> Credentials | None:
        """What the scheme that got through was given: the credentials, or the ticket (single sign-on)."""
        if self.scheme is None:
            return None
        return self.ticket if self.principal is not None else self.credentials

    @property
    def hide(self) -> Credentials | None:
        """What every answer is scrubbed of: the credentials given, else the tokens sent for the ticket, if any."""
        return self.credentials or (self.ticket if self.ticket.sent else None)

    def saw(self, r: _Read) -> None:
        """A 407 without a challenge token: what the proxy offers (judged on the answer as it came, shown scrubbed:
        a short password must not hide `Basic`, nor be shown in a realm)."""
        if self.offer is None:
            offer = Offer.of(challenges(r.seen.all("proxy-authenticate")))
            shown = self.credentials.redact_text if self.credentials else str
            offered, unsupported = [shown(c) for c in offer.offered], [shown(n) for n in offer.unsupported]
            self.offer = Offer(offered, offer.usable, unsupported, offer.need_spnego)

    def to_dict(self) -> dict[str, Any] | None:
        if self.offer is None and self.scheme is None:
            return None
        offer = self.offer or Offer.of([])
        return {
            "offered": offer.offered,
            "unsupported": offer.unsupported,
            "used": str(self.scheme) if self.scheme else None,
            "mechanism": self.mechanism,
            "ticket": self.principal,
            "tried": {str(s): how for s, how in self.tried.items()},
        }


def _connect(proxy: tuple[str, int], timeout: float) -> socket.socket | str:
    try:
        return socket.create_connection(proxy, timeout=timeout)
    except (OSError, UnicodeError) as e:  # UnicodeError: a host name the IDNA codec refuses (`proxy..corp`)
        return f"cannot connect to the proxy {hostport(*proxy)}: {getattr(e, 'strerror', None) or e}"


@dataclass(frozen=True)
class _Read:
    """One answer twice: as it came, which its shape is judged on, and scrubbed of the credentials, which is shown.

    A proxy's page may echo `Proxy-Authorization` (or the password itself); with credentials, every form of them is
    `***` in `shown` before anything is made of it (a page summary cut short, the raw hex, the JSON). Judging `seen`
    keeps a short password from changing the verdict (a password `http` would otherwise hide squid's `HTTP/0.9`).
    """

    seen: Answer
    shown: Answer

    @functools.cached_property
    def _shown_described(self) -> tuple[str, Finding | None]:
        return describe(self.shown)

    @functools.cached_property
    def seen_finding(self) -> Finding | None:
        """The finding in the answer as it came, decoded once (once in all when nothing was scrubbed)."""
        return self._shown_described[1] if self.seen is self.shown else describe(self.seen)[1]

    def judged(self) -> tuple[str, Finding | None, Shape]:
        """What to print and the finding to show (both from `shown`), and the shape (from `seen`)."""
        what, f = self._shown_described
        return what, f, shape_of(self.seen, self.seen_finding)


def _read(sock: socket.socket, request: bytes, timeout: float, hide: Credentials | None) -> _Read:
    """Send `request` and read the answer (to a CONNECT: its whole body but for a 2xx, as its framing says, so that
    the connection stays in step for the next message): the one place where the password (and the tokens sent) are
    taken out of what is shown."""
    a = send_and_read(sock, request, time.monotonic() + timeout)
    return _Read(a, a.redacted(hide.redact) if hide else a)


@dataclass
class _Asked:
    """The answer to one request to the proxy, after any authentication: the connection, open (for a tunnel), the
    final answer, and the scheme it got through with; or, with no connection at all, why (`unreachable`)."""

    sock: socket.socket | None
    read: _Read | None
    scheme: Scheme | None = None
    unreachable: str = ""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _kept_open(a: Answer) -> bool:
    """Whether the connection that brought answer `a` may carry another request: the whole answer read as its framing
    says (Content-Length, chunked to its end), and no `Connection: close`; HTTP/1.0 only with `keep-alive`."""
    if a.status is None or a.timed_out or a.error or not a.complete or a.framing_problem:
        return False
    tokens = {t.strip().lower() for n in ("connection", "proxy-connection") for t in (a.header(n) or "").split(",")}
    return "close" not in tokens and (not a.status_line.startswith("HTTP/1.0") or "keep-alive" in tokens)


def _ask(proxy: tuple[str, int], build: Callable[[str], bytes], timeout: float, auth: ProxyAuth) -> _Asked:
    """Send the request `build(proxy_authorization_lines)` makes to the proxy and read its answer, authenticating as
    the proxy asks: first without credentials (or at once in the scheme that got through before); after a 407, in
    each scheme it offers that esrs-fix speaks, in a browser's order, until one gets through; without credentials,
    in Negotiate with the Kerberos ticket in the cache, as a browser signs on (a 2xx to a CONNECT leaves the
    connection open for the tunnel)."""
    if (using := auth.using) is not None and auth.scheme is not None:
        return _authenticate(proxy, build, timeout, auth, auth.scheme, using)
    sock = _connect(proxy, timeout)
    if isinstance(sock, str):
        return _Asked(None, None, unreachable=sock)
    r = _read(sock, build(""), timeout, auth.hide)
    asked = _Asked(sock, r)
    if r.seen.status != 407:
        return asked
    asked.close()
    auth.saw(r)
    if auth.offer is None:
        return asked
    if auth.credentials is None:
        return _single_sign_on(proxy, build, timeout, auth) or asked
    for scheme in auth.offer.usable:
        if scheme in auth.tried:
            continue
        attempt = _authenticate(proxy, build, timeout, auth, scheme, auth.credentials)
        if attempt.unreachable or attempt.scheme is not None:
            return attempt  # through, or the proxy could not be reached again
        if attempt.read is not None:
            asked = attempt  # refused: the 407 to show, unless a scheme later in the order gets through
    return asked


def _single_sign_on(
    proxy: tuple[str, int], build: Callable[[str], bytes], timeout: float, auth: ProxyAuth
) -> _Asked | None:
    """Negotiate with the Kerberos ticket in the cache, when the proxy offers it and no credentials were given; once
    per port: `auth.tried` says why there was no ticket to send, or how the proxy took it. None: nothing to show but
    the first 407."""
    assert auth.offer is not None
    offered = {proxyauth.known(proxyauth.scheme_of(c)) for c in auth.offer.offered}
    if Scheme.NEGOTIATE not in offered or Scheme.NEGOTIATE in auth.tried:
        return None
    principal, why = proxyauth.cached_ticket()
    if principal is None:
        auth.tried[Scheme.NEGOTIATE] = why
        return None
    attempt = _authenticate(proxy, build, timeout, auth, Scheme.NEGOTIATE, auth.ticket)
    if attempt.scheme is not None:
        auth.principal = principal
    elif Scheme.NEGOTIATE in auth.tried:
        how = f"the Kerberos ticket of {principal}: {auth.tried[Scheme.NEGOTIATE]}"
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(proxy[0])
            # the service ticket is asked for HTTP/<the name the proxy was given by>: an address names no service
            how += f"; a Kerberos ticket is for the proxy's name (HTTP/NAME): give --proxy by its name, not {proxy[0]}"
        auth.tried[Scheme.NEGOTIATE] = how
    return attempt if attempt.unreachable or attempt.read is not None else None


def _authenticate(
    proxy: tuple[str, int],
    build: Callable[[str], bytes],
    timeout: float,
    auth: ProxyAuth,
    scheme: Scheme,
    credentials: Credentials,
) -> _Asked:
    """One attempt in `scheme` on a connection of its own: Basic in one request; NTLM and Negotiate in two on the one
    kept-alive connection (the first token, the 407 with the proxy's challenge, the answer to it with the request
    again; Kerberos in one, its ticket in the first token). `scheme` is set in the result when the request got
    through; otherwise `auth.tried` says how it ended."""
    sock = _connect(proxy, timeout)
    if isinstance(sock, str):
        return _Asked(None, None, unreachable=sock)

    def refused(r: _Read, how: str) -> _Asked:
        sock.close()
        auth.tried[scheme] = how
        return _Asked(None, r)

    def send(value: str) -> _Read:
        return _read(sock, build(f"Proxy-Authorization: {value}\r\n"), timeout, credentials)

    try:
        exchange = AuthHandshake(scheme, credentials, proxy[0])
        r = send(exchange.first())
        if r.seen.status == 407 and scheme.connection_bound:
            challenge = token_of(challenges(r.seen.all("proxy-authenticate")), scheme)
            if challenge is None:
                return refused(r, f"refused: the proxy answered its first {scheme} message with a 407 and no challenge")
            if not _kept_open(r.seen):
                return refused(
                    r,
                    f"the proxy did not keep the connection open after its challenge ({scheme} needs one connection "
                    "from the challenge to the answer)",
                )
            first = r
            r = send(exchange.answer(challenge))
            if r.seen.status is None:  # closed or timed out instead of answering the answer
                return refused(first, f"no answer to the {scheme} answer to the proxy's challenge: {r.judged()[0]}")
    except AuthError as e:
        sock.close()
        auth.tried[scheme] = str(e)
        return _Asked(None, None)
    if r.seen.status == 407:
        return refused(r, "refused: the proxy answered the credentials with a 407")
    auth.scheme = scheme
    auth.mechanism = exchange.mechanism
    auth.tried.pop(scheme, None)
    return _Asked(sock, r, scheme)


def probe_absolute(proxy: tuple[str, int], host: str, port: int, timeout: float, auth: ProxyAuth) -> Probe:
    name = "GET https:// (as the check)"
    target = hostport(host, port)

    def request(authorization: str) -> bytes:
        head = f"GET https://{target}/ HTTP/1.1\r\nHost: {target}\r\nUser-Agent: esrs-fix-check\r\n"
        return f"{head}{authorization}\r\n".encode()

    asked = _ask(proxy, request, timeout, auth)
    asked.close()
    if asked.read is None:
        return Probe(name, _no_answer(asked, auth), False, unreachable=True, shape=Shape.UNREACHABLE)
    r = asked.read
    what, f, shape = r.judged()
    return Probe(name, what, shape is Shape.HTTP_OK, f, r.seen.status, shape=shape, answer=r.shown, scheme=asked.scheme)


def _no_answer(asked: _Asked, auth: ProxyAuth) -> str:
    """Why a request got no answer to show: the proxy unreachable, or esrs-fix unable to make its next token."""
    if asked.unreachable:
        return asked.unreachable
    return "; ".join(f"{s}: {how}" for s, how in auth.tried.items()) or "no answer"


@dataclass
class _Tunnel:
    sock: socket.socket | None
    said: str  # the CONNECT answer's status line, or why there is no tunnel
    shape: Shape = Shape.HTTP_OK
    answer: Answer | None = None
    scheme: Scheme | None = None


def _tunnel(proxy: tuple[str, int], host: str, port: int, timeout: float, auth: ProxyAuth) -> _Tunnel:
    target = hostport(host, port)

    def request(authorization: str) -> bytes:
        return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{authorization}\r\n".encode()

    asked = _ask(proxy, request, timeout, auth)
    if asked.read is None:
        return _Tunnel(None, _no_answer(asked, auth), Shape.UNREACHABLE)
    r = asked.read
    if r.seen.status != 200:
        asked.close()
        what, _, shape = r.judged()
        return _Tunnel(None, f"CONNECT refused: {what}", shape, r.shown)
    return _Tunnel(asked.sock, r.shown.status_line, Shape.HTTP_OK, r.shown, asked.scheme)


def _tls_get(
    sock: socket.socket, host: str, timeout: float, credentials: Credentials | None = None
) -> tuple[_Read | None, str]:
    """TLS over `sock`, then `GET /`: the answer (None when the handshake failed) and what TLS said."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # reachability, not trust: the customer's CA is not ours to judge
    with contextlib.suppress(ssl.SSLError, ValueError):  # and old servers too (TLS 1.0 only): reachable is reachable
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    sock.settimeout(timeout)  # the handshake's own budget, not what reading the CONNECT answer left over
    try:
        tls = context.wrap_socket(sock, server_hostname=host)
    except (ssl.SSLError, OSError, UnicodeError) as e:
        f = findings.from_tls_error(str(e))
        said = f.summary.removeprefix(findings.HANDSHAKE_FAILED_PREFIX) if f else str(e)
        return None, f"TLS handshake failed: {said}"
    with tls:
        version = tls.version() or "TLS"
        r = _read(tls, f"GET / HTTP/1.1\r\nHost: {url_host(host)}\r\n\r\n".encode(), timeout, credentials)
    return r, f"{version} handshake done"


def probe_connect_tls(proxy: tuple[str, int], host: str, port: int, timeout: float, auth: ProxyAuth) -> Probe:
    name = "CONNECT, then TLS"
    t = _tunnel(proxy, host, port, timeout, auth)
    if t.sock is None:
        return Probe(name, t.said, False, shape=t.shape, answer=t.answer)
    with t.sock:
        r, tls_said = _tls_get(t.sock, host, timeout, auth.hide)
    if r is None:
        return Probe(name, f"{t.said}; {tls_said}", False, shape=Shape.TLS_FAILED, scheme=t.scheme)
    what, f, shape = r.judged()
    ok = r.seen.status is not None
    shape = Shape.TLS_OK if ok else shape
    return Probe(name, f"{t.said}; {tls_said}; {what}", ok, f, r.seen.status, shape=shape, scheme=t.scheme)


def probe_connect_plain(proxy: tuple[str, int], host: str, port: int, timeout: float, auth: ProxyAuth) -> Probe:
    name = "CONNECT, then plaintext"
    t = _tunnel(proxy, host, port, timeout, auth)
    if t.sock is None:
        return Probe(name, t.said, False, shape=t.shape, answer=t.answer)
    with t.sock:
        request = f"GET / HTTP/1.1\r\nHost: {url_host(host)}\r\n\r\n".encode()
        r = _read(t.sock, request, timeout, auth.hide)
    what, f, shape = r.judged()
    # "ok" here means: the port answered plaintext the way a TLS port does (judged on the answer as it came)
    seen = r.seen_finding
    speaks_tls = seen is not None and seen.kind in (Kind.TLS_RECORDS, Kind.PLAIN_HTTP_400)
    return Probe(name, f"{t.said}; {what}", speaks_tls, f, r.seen.status, shape=shape, scheme=t.scheme)


def probe_direct(host: str, port: int, timeout: float) -> Probe:
    name = "direct TLS (no proxy)"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except (OSError, UnicodeError) as e:
        return Probe(name, f"cannot connect: {getattr(e, 'strerror', None) or e}", False, shape=Shape.UNREACHABLE)
    with sock:
        r, tls_said = _tls_get(sock, host, timeout)
    if r is None:
        return Probe(name, tls_said, False, shape=Shape.TLS_FAILED)
    what, f, shape = r.judged()
    ok = r.seen.status is not None
    return Probe(name, f"{tls_said}; {what}", ok, f, r.seen.status, shape=Shape.TLS_OK if ok else shape)
