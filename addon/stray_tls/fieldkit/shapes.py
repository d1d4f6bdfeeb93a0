"""What kind of answer a probe of `esrs-fix check` got (`Shape`), whatever its bytes; who answered, and what their
page says. Pure: the probes (`probes.py`) make the answers, the verdicts (`verdicts.py`) read the shapes."""

from __future__ import annotations

import enum
import html
import re
from dataclasses import dataclass, field
from typing import Any

from ..core import findings
from ..core.findings import Finding, Kind
from .proxyauth import Scheme
from .wire import Answer, not_tls_reason


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


def answered_by(a: Answer | None) -> str:
    name = product(a)
    return f"the proxy ({name})" if name else "the proxy (it does not name itself)"


def page_of(a: Answer | None) -> str:
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
