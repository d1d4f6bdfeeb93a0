"""`esrs-fix check`: run what the ESRS check runs through a customer's proxy, plus probes that tell the faults apart.

Per port: (1) absolute-form `GET https://HOST:PORT/` (what CECT / NetworkCheck send), (2) CONNECT then TLS then
`GET /`, (3) CONNECT then plaintext `GET /` (does the port speak TLS?), and (4) with `--direct`, TLS straight to
the server.  Every answer gets a `Shape` (what kind of answer it is: the raw TLS record, squid's HTTP/0.9
wrapping, the proxy's own refusal, ...), and the verdict says which hop is at fault, in words.

Proxy authentication (`proxyauth.py`): the first request goes without credentials; a 407 names the schemes the
proxy takes, and the check authenticates as a browser would (Negotiate, NTLM, Basic, the first that gets through),
each probe on its own connection: NTLM's and Negotiate's steps (the first token, the 407 with the challenge, the
answer with the request) on one kept-alive connection, which then carries the request or becomes the tunnel. The
scheme that worked is used at once by the next probes. The password never appears in anything this module returns:
every answer is scrubbed as it is read (`_read`), before any text, hex or JSON is made of it, of the password and of
every token sent for it, and no sentence here formats the password. Without credentials, a proxy that offers
Negotiate gets the Kerberos ticket in the cache (single sign-on, as a browser); its tokens are scrubbed the same way.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import html
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core import findings
from ..core.findings import Finding, Kind
from ..core.names import hostport, url_host
from ..core.records import hexdump
from . import proxyauth
from .proxyauth import AuthError, AuthHandshake, Credentials, Offer, Scheme, challenges, shown_user, token_of
from .wire import Answer, describe, not_tls_reason, send_and_read


class CheckOutcome(enum.IntEnum):
    """Also the exit status of `esrs-fix check`."""

    PASS = 0
    FAIL = 1
    UNTESTED = 3  # could not test: the proxy is unreachable, or wants credentials we do not have


class Shape(enum.StrEnum):
    """What kind of answer came back, whatever its bytes: the `shape` of a probe and of a port in --json."""

    HTTP_OK = "http_ok"  # an HTTP 200 that is what it says
    RAW_TLS = "raw_tls"  # TLS records where HTTP was expected: plaintext reached a TLS port (the field failure)
    WRAPPED_HTTP09 = "wrapped_http09"  # squid's HTTP/0.9 head (X-Transformed-From) around the TLS records
    TLS_IN_BODY = "tls_in_body"  # an HTTP head with nothing but TLS records as the body
    SERVER_PLAIN_HTTP_400 = "server_plain_http_400"  # the server's own "plain HTTP to an HTTPS port" page
    PROXY_REFUSED = "proxy_refused"  # the proxy's own 4xx: it will not fetch absolute https:// URLs
    PROXY_AUTH_REQUIRED = "proxy_auth_required"  # 407
    PROXY_UPSTREAM_ERROR = "proxy_upstream_error"  # 502/503/504: the proxy could not reach or verify the server
    HTTP_OTHER = "http_other"  # any other HTTP status
    MANGLED = "mangled"  # bytes that look like a TLS record but are not one
    NOT_HTTP = "not_http"  # bytes that are neither HTTP nor TLS
    CLOSED = "closed"  # the connection closed without a byte
    TIMEOUT = "timeout"  # no answer within the timeout
    TLS_OK = "tls_ok"  # (tunnels) the TLS handshake through the tunnel worked, and GET / was answered
    TLS_FAILED = "tls_failed"  # (tunnels) the TLS handshake failed
    UNREACHABLE = "unreachable"  # nothing to talk to: the proxy (or, direct, the server) refused the connection


#: 4xx statuses by which a proxy refuses a request itself (407 has its own shape).  408: the proxy gave up waiting
#: for a request it did not take as complete; its own answer, never the server's.
_REFUSALS = frozenset({400, 403, 405, 408, 501})
_UPSTREAM_ERRORS = frozenset({500, 502, 503, 504})  # 500: tinyproxy's "Unable to connect", among others


@dataclass
class Probe:
    name: str
    what: str  # one line: what came back
    ok: bool
    finding: Finding | None = None
    status: int | None = None
    #: The proxy could not be reached at all: nothing was tested.
    unreachable: bool = False
    shape: Shape = Shape.HTTP_OTHER
    answer: Answer | None = field(default=None, repr=False)  # as shown: scrubbed of the credentials
    #: The proxy authentication scheme this probe's request got through with (None: it went without).
    scheme: Scheme | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "probe": self.name,
            "ok": self.ok,
            "shape": str(self.shape),
            "status": self.status,
            "what": self.what,
            "auth_scheme": str(self.scheme) if self.scheme else None,
            "finding": self.finding.to_dict() if self.finding else None,
        }


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


@dataclass
class PortResult:
    host: str
    port: int
    outcome: CheckOutcome
    verdict: str
    probes: list[Probe] = field(default_factory=list)
    auth: ProxyAuth | None = None

    @property
    def shape(self) -> Shape:
        """The shape of the answer to what the check sends (the first probe)."""
        return self.probes[0].shape if self.probes else Shape.UNREACHABLE

    def to_dict(self) -> dict[str, Any]:
        first = self.probes[0].answer if self.probes else None
        return {
            "url": f"https://{hostport(self.host, self.port)}/",
            "outcome": self.outcome.name.lower(),
            "shape": str(self.shape),
            "verdict": self.verdict,
            # who answered what the check sends, as its answer names itself (Server, Proxy-agent, Via)
            "product": product(first),
            "auth": self.auth.to_dict() if self.auth else None,
            "probes": [p.to_dict() for p in self.probes],
        }


def shape_of(a: Answer, f: Finding | None) -> Shape:
    """The kind of answer `a` is (with its finding from `describe`)."""
    if f is not None:
        if f.kind in (Kind.TLS_RECORDS, Kind.TLS_INCOMPLETE):
            return Shape.RAW_TLS
        if f.kind is Kind.TLS_WRAPPED_HTTP09:
            return Shape.WRAPPED_HTTP09
        if f.kind is Kind.TLS_IN_BODY:
            return Shape.TLS_IN_BODY
        if f.kind is Kind.PLAIN_HTTP_400:
            return Shape.SERVER_PLAIN_HTTP_400
    if a.status is not None:
        if findings.is_http09_wrapping(a.header("x-transformed-from")):
            return Shape.WRAPPED_HTTP09  # the proxy's own head around whatever came back: never a success
        if a.status == 200:
            return Shape.HTTP_OK
        if a.status == 407:
            return Shape.PROXY_AUTH_REQUIRED
        if a.status in _REFUSALS:
            return Shape.PROXY_REFUSED
        if a.status in _UPSTREAM_ERRORS:
            return Shape.PROXY_UPSTREAM_ERROR
        return Shape.HTTP_OTHER
    if a.raw:
        return Shape.MANGLED if not_tls_reason(a.raw) else Shape.NOT_HTTP
    if a.timed_out:
        return Shape.TIMEOUT
    return Shape.CLOSED


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


# -- a request to the proxy, authenticated the way it asks ----------------------------------------------------------


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


def check_port(
    proxy: tuple[str, int],
    host: str,
    port: int,
    timeout: float,
    direct: bool = False,
    credentials: Credentials | None = None,
) -> PortResult:
    auth = ProxyAuth(credentials)
    absolute = probe_absolute(proxy, host, port, timeout, auth)
    probes = [absolute]
    if absolute.unreachable:
        return PortResult(host, port, CheckOutcome.UNTESTED, f"could not test: {absolute.what}", probes, auth)
    tunnel = probe_connect_tls(proxy, host, port, timeout, auth)
    plain = probe_connect_plain(proxy, host, port, timeout, auth)
    probes += [tunnel, plain]
    if direct:
        probes.append(probe_direct(host, port, timeout))
    outcome, verdict = _verdict(absolute, tunnel, auth, timeout, plain)
    return PortResult(host, port, outcome, verdict + _authenticated(auth, probes), probes, auth)


def _authenticated(auth: ProxyAuth, probes: list[Probe]) -> str:
    """The verdict's last words when the probes authenticated: the scheme, the user, what was tried before it."""
    used = list(dict.fromkeys(p.scheme for p in probes if p.scheme is not None))
    if not used or auth.using is None:
        return ""
    schemes = [_scheme_words(s, auth.mechanism) for s in used]
    if auth.principal is not None:
        whom = f"as {auth.principal}, single sign-on with the Kerberos ticket in the cache"
    else:
        whom = f"as user {shown_user(auth.using.user)}"
    text = f" (authenticated to the proxy with {' and '.join(schemes)} {whom}"
    if others := [f"{s} ({how})" for s, how in auth.tried.items() if s not in used]:
        text += f"; tried first: {'; '.join(others)}"
    return text + ")"


def _scheme_words(scheme: Scheme, mechanism: str | None) -> str:
    """A scheme that got through, with what Negotiate carried: `Negotiate (Kerberos)`, `NTLM inside Negotiate`."""
    if scheme is not Scheme.NEGOTIATE or not mechanism:
        return str(scheme)
    return f"{mechanism} inside Negotiate" if mechanism == "NTLM" else f"Negotiate ({mechanism})"


# -- who answered, and what their page says ---------------------------------------------------------------------

_VIA_PRODUCT = re.compile(r"\(([^()]+)\)\s*$")


def product(a: Answer | None) -> str | None:
    """The proxy's product name as its answer gives it: `Server`, `Proxy-agent`, or the comment in `Via`."""
    if a is None:
        return None
    for name in ("server", "proxy-agent"):
        if value := a.header(name):
            return value
    if via := a.header("via"):
        m = _VIA_PRODUCT.search(via)
        return m.group(1) if m else via
    return None


_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.I | re.S)
_PARAGRAPH = re.compile(rb"<(p|h1|h2)\b[^>]*>(.*?)</\1\s*>", re.I | re.S)  # not <pre>: it may echo the request
_TAG = re.compile(r"<[^>]+>")
#: Lines of error pages that say nothing about this error (squid's, tinyproxy's).
_BOILERPLATE = ("Generated ", "Your cache administrator", "The following error was encountered")


def _text(fragment: bytes) -> str:
    return " ".join(html.unescape(_TAG.sub(" ", fragment.decode("utf-8", "replace"))).split())


def page_summary(a: Answer | None, limit: int = 160) -> str:
    """The error page in a line: its title and first paragraphs (HTML), or its first line (text)."""
    if a is None or not a.body:
        return ""
    body = a.body[:65536]
    if b"<" in body[:512]:
        parts: list[str] = []
        if m := _TITLE.search(body):
            parts.append(_text(m.group(1)))
        for m in _PARAGRAPH.finditer(body):
            text = _text(m.group(2))
            if text and not any(text in part for part in parts) and not text.startswith(_BOILERPLATE):
                parts.append(text)
            if len(parts) >= 3:
                break
        summary = ": ".join(parts)
    else:
        summary = next((line.strip() for line in body.decode("utf-8", "replace").splitlines() if line.strip()), "")
    return summary if len(summary) <= limit else summary[: limit - 1] + "…"


def _answered_by(a: Answer | None) -> str:
    name = product(a)
    return f"the proxy ({name})" if name else "the proxy (it does not name itself)"


def _page(a: Answer | None) -> str:
    details = []
    if a is not None and a.status in (301, 302, 303, 307, 308) and (location := a.header("location")):
        details.append(f"Location: {location}: probably the proxy's login or consent page")
    if a is not None and a.status == 405 and (allow := a.header("allow")):
        details.append(f"Allow: {allow}")  # the methods it takes: CONNECT, if it tunnels
    if a is not None and (squid := a.header("x-squid-error")):
        details.append(f"X-Squid-Error: {squid}")
    if summary := page_summary(a):
        details.append(f'page: "{summary}"')
    return f" ({'; '.join(details)})" if details else ""


def _auth_verdict(probe: Probe, auth: ProxyAuth) -> tuple[CheckOutcome, str]:
    """The 407 that no scheme got past: what the proxy offers, what was tried and how it ended, what to do."""
    offer = auth.offer or Offer.of([])
    credentials = auth.credentials
    missing = " and ".join(offer.need_spnego)
    install = (
        f"{missing} need{'s' if len(offer.need_spnego) == 1 else ''} the Python package {proxyauth.SPNEGO_PACKAGE}"
    )
    negotiate = any(proxyauth.known(proxyauth.scheme_of(c)) is Scheme.NEGOTIATE for c in offer.offered)
    ticket_refused = credentials is None and auth.tried.get(Scheme.NEGOTIATE, "").startswith("the Kerberos ticket of ")
    if ticket_refused:
        said = "the Kerberos ticket in the cache did not get through, and no credentials were given"
    elif credentials is None:
        said = "the proxy requires authentication and no credentials were given" + (
            " (nor a Kerberos ticket for its Negotiate)" if negotiate else ""
        )
    elif auth.tried:
        said = f"the proxy rejected the credentials given for user {shown_user(credentials.user)}"
    elif offer.need_spnego:
        said = (
            f"the proxy asks for {missing}, which esrs-fix check speaks only with {proxyauth.SPNEGO_PACKAGE} installed"
        )
    else:
        said = (
            "the proxy takes none of the schemes esrs-fix check speaks, so those given for user "
            f"{shown_user(credentials.user)} could not work"
        )
    text = f"could not test: {said} (HTTP 407 from {_answered_by(probe.answer)}); it offers: "
    text += "; ".join(offer.offered) if offer.offered else "no Proxy-Authenticate challenge at all"
    if auth.tried:
        text += "; tried: " + "; ".join(f"{scheme} ({how})" for scheme, how in auth.tried.items())
    if offer.unsupported:
        speaks = ", ".join(s for s in proxyauth.BROWSER_ORDER if s not in offer.need_spnego)
        text += f"; not supported by esrs-fix check: {', '.join(offer.unsupported)} (it speaks {speaks})"
    if offer.need_spnego:
        text += f"; {install}: {proxyauth.spnego_install()}"
    how = []
    if credentials is None and negotiate and not ticket_refused:
        how.append(
            "for Negotiate (Kerberos single sign-on, as a browser signs on), get a ticket first: kinit USER "
            "(USER@REALM for a realm other than the default one), then run the check again with the same KRB5CCNAME"
            + ("" if proxyauth.kerberos_available() else f" ({proxyauth.kerberos_install()})")
        )
    if offer.usable and (credentials is None or auth.tried):
        how.append(
            "give the right user and password: --proxy http://USER:PASSWORD@HOST:PORT (a domain user as "
            "DOMAIN%5CUSER), or --proxy-user USER (or 'DOMAIN\\USER') with the password in ESRS_FIX_PROXY_PASSWORD, "
            "in --proxy-password-file or at the prompt"
        )
    if how:
        text += "; " + "; or ".join(how)
    elif not offer.need_spnego:
        text += "; test from a host the proxy lets through without authentication"
    return CheckOutcome.UNTESTED, text


def _verdict(
    absolute: Probe,
    tunnel: Probe,
    auth: ProxyAuth | None = None,
    timeout: float = 10.0,
    plain: Probe | None = None,
) -> tuple[CheckOutcome, str]:
    if absolute.shape is Shape.PROXY_AUTH_REQUIRED:
        return _auth_verdict(absolute, auth or ProxyAuth())
    if tunnel.ok:
        connect = "CONNECT works, so the server is reachable"
    elif tunnel.shape is Shape.TLS_FAILED:
        connect = f"CONNECT works, but the TLS handshake with the server failed ({tunnel.what})"
    else:
        connect = f"CONNECT does not work either ({tunnel.what})"
    fix = (
        "fix the proxy's handling of https:// URLs or bypass the check"
        if tunnel.ok or tunnel.shape is Shape.TLS_FAILED
        else "fix the proxy"
    )
    f = absolute.finding
    a = absolute.answer
    shape = absolute.shape
    if shape is Shape.HTTP_OK:
        return CheckOutcome.PASS, "the check would pass: the proxy answers GET https:// with HTTP 200"
    same_answer = tunnel.ok and absolute.status is not None and tunnel.status == absolute.status
    if same_answer and shape in (Shape.PROXY_REFUSED, Shape.PROXY_UPSTREAM_ERROR, Shape.HTTP_OTHER):
        return CheckOutcome.FAIL, (
            f"the server itself answers {absolute.what}{_page(a)}: through CONNECT and TLS it says the same "
            f"(HTTP {tunnel.status}), so the proxy fetched https:// correctly (or a TLS-inspecting proxy answers "
            "both); the check fails on the server's answer to GET /, not on the proxy"
        )
    if shape is Shape.WRAPPED_HTTP09 and f is not None:
        tls = f.what_came
        return CheckOutcome.FAIL, (
            f"the HTTP {absolute.status} is no success: {_answered_by(a)} sent the request in plaintext to a TLS "
            f"port, got the server's TLS answer ({f.summary}) and wrapped it in an HTTP/0.9 answer of its own "
            f"(X-Transformed-From: HTTP/0.9): the {absolute.status} is the proxy's wrapping of {tls}, not the server's "
            f"answer; {connect}: {fix}"
        )
    if shape is Shape.WRAPPED_HTTP09:
        return CheckOutcome.FAIL, (
            f"the HTTP {absolute.status} is no success: {_answered_by(a)} got an answer that is not HTTP and wrapped "
            f"it in an HTTP/0.9 answer of its own (X-Transformed-From: HTTP/0.9): {_wrapped_body(a)}; it is not the "
            f"server's answer to GET https://; {connect}"
        )
    if shape is Shape.TLS_IN_BODY and f is not None:
        return CheckOutcome.FAIL, (
            f"the HTTP {absolute.status} is no success: its body is the server's raw TLS answer ({f.summary}): "
            f"{_answered_by(a)} sent the request in plaintext to a TLS port; {connect}: {fix}"
        )
    if shape is Shape.RAW_TLS and f is not None:
        return CheckOutcome.FAIL, (
            "the proxy forwarded the request in plaintext to a TLS port and relayed the server's answer "
            f"({f.summary}); {connect}: {fix}"
        )
    if shape is Shape.SERVER_PLAIN_HTTP_400 and f is not None:
        return CheckOutcome.FAIL, (
            f"the proxy sent the request in plaintext and the server said so ({f.detail}); {connect}: {fix}"
        )
    if shape is Shape.PROXY_REFUSED:
        way = (
            "CONNECT works, so the server is reachable: the proxy will not fetch this https:// URL itself but "
            "tunnels it; make the check tunnel (CONNECT), or bypass the proxy for the check"
            if tunnel.ok
            else connect
        )
        said = a.status_line if a else absolute.what
        if absolute.status == 408:
            return CheckOutcome.FAIL, (
                f"{_answered_by(a)} gave up waiting for the request: {said}{_page(a)}; the 408 is the proxy's own "
                "answer, not the server's: it did not take GET https:// as a complete request within its own timeout "
                f"(it may not read absolute https:// URLs, or waits for more), so it never reached the server; {way}"
            )
        return (
            CheckOutcome.FAIL,
            f"{_answered_by(a)} refused GET https:// itself: {said}{_page(a)}; it never reached the server; {way}",
        )
    if shape is Shape.PROXY_UPSTREAM_ERROR:
        text = (
            f"{_answered_by(a)} answered with its own error page instead of the server's: {absolute.what}{_page(a)}; "
            f"it could not reach, verify or read the server; {connect}"
        )
        if plain is not None and plain.ok:
            text += (
                "; the port speaks TLS (CONNECT then plaintext got TLS back): a proxy that sends GET https:// in "
                "plaintext and cannot read the TLS answer fails this way too"
            )
        return CheckOutcome.FAIL, text
    if shape is Shape.MANGLED:
        return CheckOutcome.FAIL, (
            f"no HTTP answer to GET https://: {absolute.what}; something on the way damaged the answer, or the "
            f"port speaks neither HTTP nor TLS; {connect}"
        )
    if shape is Shape.CLOSED:
        return CheckOutcome.FAIL, (
            "the proxy closed the connection without a byte: it dropped the request, or forwarded it in "
            "plaintext to a TLS server that closes silently (OpenSSL 3 does); " + connect
        )
    if shape is Shape.TIMEOUT:
        return CheckOutcome.FAIL, f"no answer to GET https:// within {timeout:g} s; {connect}"
    if absolute.status is not None:
        return CheckOutcome.FAIL, f"{_answered_by(a)} answered {absolute.what}{_page(a)} instead of 200; {connect}"
    return CheckOutcome.FAIL, f"no HTTP answer to GET https:// ({absolute.what}); {connect}"


def _wrapped_body(a: Answer | None) -> str:
    """What a proxy's HTTP/0.9 wrapping held, when it was no TLS record: in words, with its first bytes."""
    body = a.body if a is not None else b""
    if not body:
        return "it held no bytes (the upstream closed without answering)"
    raw = f"raw bytes {hexdump(body, 16)}"
    if reason := not_tls_reason(body):
        return f"it held {raw}, which look like a TLS record but are not one ({reason}): damaged on the way"
    return f"it held {raw}, neither HTTP nor TLS"


def overall(results: list[PortResult]) -> CheckOutcome:
    if any(r.outcome is CheckOutcome.UNTESTED for r in results):
        return CheckOutcome.UNTESTED
    return CheckOutcome.FAIL if any(r.outcome is CheckOutcome.FAIL for r in results) else CheckOutcome.PASS
