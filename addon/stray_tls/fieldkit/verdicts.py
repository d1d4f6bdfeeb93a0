"""The verdict of `esrs-fix check` on a port, from its probes' shapes: which hop is at fault, in words, as one table
by shape (`_VERDICTS`); and the verdict when the proxy's authentication could not be passed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..core.findings import Finding
from ..core.records import hexdump
from . import proxyauth
from .probes import ProxyAuth
from .proxyauth import Offer, Scheme, shown_user
from .shapes import CheckOutcome, Probe, Shape, answered_by, page_of
from .wire import Answer, not_tls_reason


def authenticated(auth: ProxyAuth, probes: list[Probe]) -> str:
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
    text = f"could not test: {said} (HTTP 407 from {answered_by(probe.answer)}); it offers: "
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


@dataclass(frozen=True)
class _Case:
    """What a port's verdict is said from: what the check sends got (`absolute`), the tunnel probes, the timeout."""

    absolute: Probe
    tunnel: Probe
    plain: Probe | None
    timeout: float

    @property
    def a(self) -> Answer | None:
        return self.absolute.answer

    @property
    def f(self) -> Finding | None:
        return self.absolute.finding

    @property
    def by(self) -> str:
        return answered_by(self.a)

    @property
    def connect(self) -> str:
        """What the CONNECT probe says about the server: most verdicts end with it."""
        tunnel = self.tunnel
        if tunnel.ok:
            return "CONNECT works, so the server is reachable"
        if tunnel.shape is Shape.TLS_FAILED:
            return f"CONNECT works, but the TLS handshake with the server failed ({tunnel.what})"
        return f"CONNECT does not work either ({tunnel.what})"

    @property
    def fix(self) -> str:
        if self.tunnel.ok or self.tunnel.shape is Shape.TLS_FAILED:
            return "fix the proxy's handling of https:// URLs or bypass the check"
        return "fix the proxy"


def _wrapped(c: _Case) -> str:
    status = c.absolute.status
    if c.f is not None:
        return (
            f"the HTTP {status} is no success: {c.by} sent the request in plaintext to a TLS port, got the server's "
            f"TLS answer ({c.f.summary}) and wrapped it in an HTTP/0.9 answer of its own (X-Transformed-From: "
            f"HTTP/0.9): the {status} is the proxy's wrapping of {c.f.what_came}, not the server's answer; "
            f"{c.connect}: {c.fix}"
        )
    return (
        f"the HTTP {status} is no success: {c.by} got an answer that is not HTTP and wrapped it in an HTTP/0.9 "
        f"answer of its own (X-Transformed-From: HTTP/0.9): {_wrapped_body(c.a)}; it is not the server's answer to "
        f"GET https://; {c.connect}"
    )


def _tls_in_body(c: _Case) -> str | None:
    if c.f is None:
        return None
    return (
        f"the HTTP {c.absolute.status} is no success: its body is the server's raw TLS answer ({c.f.summary}): "
        f"{c.by} sent the request in plaintext to a TLS port; {c.connect}: {c.fix}"
    )


def _raw_tls(c: _Case) -> str | None:
    if c.f is None:
        return None
    return (
        "the proxy forwarded the request in plaintext to a TLS port and relayed the server's answer "
        f"({c.f.summary}); {c.connect}: {c.fix}"
    )


def _server_plain_http_400(c: _Case) -> str | None:
    if c.f is None:
        return None
    return f"the proxy sent the request in plaintext and the server said so ({c.f.detail}); {c.connect}: {c.fix}"


def _refused(c: _Case) -> str:
    way = (
        "CONNECT works, so the server is reachable: the proxy will not fetch this https:// URL itself but "
        "tunnels it; make the check tunnel (CONNECT), or bypass the proxy for the check"
        if c.tunnel.ok
        else c.connect
    )
    said = c.a.status_line if c.a else c.absolute.what
    if c.absolute.status == 408:
        return (
            f"{c.by} gave up waiting for the request: {said}{page_of(c.a)}; the 408 is the proxy's own "
            "answer, not the server's: it did not take GET https:// as a complete request within its own timeout "
            f"(it may not read absolute https:// URLs, or waits for more), so it never reached the server; {way}"
        )
    return f"{c.by} refused GET https:// itself: {said}{page_of(c.a)}; it never reached the server; {way}"


def _upstream_error(c: _Case) -> str:
    text = (
        f"{c.by} answered with its own error page instead of the server's: {c.absolute.what}{page_of(c.a)}; "
        f"it could not reach, verify or read the server; {c.connect}"
    )
    if c.plain is not None and c.plain.ok:
        text += (
            "; the port speaks TLS (CONNECT then plaintext got TLS back): a proxy that sends GET https:// in "
            "plaintext and cannot read the TLS answer fails this way too"
        )
    return text


#: A failed check's verdict by the shape of what the check sends got (None: nothing particular to say, the general
#: words below follow).
_VERDICTS: dict[Shape, Callable[[_Case], str | None]] = {
    Shape.WRAPPED_HTTP09: _wrapped,
    Shape.TLS_IN_BODY: _tls_in_body,
    Shape.RAW_TLS: _raw_tls,
    Shape.SERVER_PLAIN_HTTP_400: _server_plain_http_400,
    Shape.PROXY_REFUSED: _refused,
    Shape.PROXY_UPSTREAM_ERROR: _upstream_error,
    Shape.MANGLED: lambda c: (
        f"no HTTP answer to GET https://: {c.absolute.what}; something on the way damaged the answer, or the "
        f"port speaks neither HTTP nor TLS; {c.connect}"
    ),
    Shape.CLOSED: lambda c: (
        "the proxy closed the connection without a byte: it dropped the request, or forwarded it in "
        "plaintext to a TLS server that closes silently (OpenSSL 3 does); " + c.connect
    ),
    Shape.TIMEOUT: lambda c: f"no answer to GET https:// within {c.timeout:g} s; {c.connect}",
}
#: Shapes of an answer that may be the server's own, said the same through CONNECT and TLS.
_MAYBE_THE_SERVERS = frozenset({Shape.PROXY_REFUSED, Shape.PROXY_UPSTREAM_ERROR, Shape.HTTP_OTHER})


def verdict(
    absolute: Probe,
    tunnel: Probe,
    auth: ProxyAuth | None = None,
    timeout: float = 10.0,
    plain: Probe | None = None,
) -> tuple[CheckOutcome, str]:
    """A port's outcome and verdict, from its probes: which hop is at fault, in words."""
    if absolute.shape is Shape.PROXY_AUTH_REQUIRED:
        return _auth_verdict(absolute, auth or ProxyAuth())
    if absolute.shape is Shape.HTTP_OK:
        return CheckOutcome.PASS, "the check would pass: the proxy answers GET https:// with HTTP 200"
    c = _Case(absolute, tunnel, plain, timeout)
    same_answer = tunnel.ok and absolute.status is not None and tunnel.status == absolute.status
    if same_answer and absolute.shape in _MAYBE_THE_SERVERS:
        return CheckOutcome.FAIL, (
            f"the server itself answers {absolute.what}{page_of(c.a)}: through CONNECT and TLS it says the same "
            f"(HTTP {tunnel.status}), so the proxy fetched https:// correctly (or a TLS-inspecting proxy answers "
            "both); the check fails on the server's answer to GET /, not on the proxy"
        )
    if (say := _VERDICTS.get(absolute.shape)) is not None and (text := say(c)) is not None:
        return CheckOutcome.FAIL, text
    if absolute.status is not None:
        return CheckOutcome.FAIL, f"{c.by} answered {absolute.what}{page_of(c.a)} instead of 200; {c.connect}"
    return CheckOutcome.FAIL, f"no HTTP answer to GET https:// ({absolute.what}); {c.connect}"


def _wrapped_body(a: Answer | None) -> str:
    """What a proxy's HTTP/0.9 wrapping held, when it was no TLS record: in words, with its first bytes."""
    body = a.body if a is not None else b""
    if not body:
        return "it held no bytes (the upstream closed without answering)"
    raw = f"raw bytes {hexdump(body, 16)}"
    if reason := not_tls_reason(body):
        return f"it held {raw}, which look like a TLS record but are not one ({reason}): damaged on the way"
    return f"it held {raw}, neither HTTP nor TLS"
