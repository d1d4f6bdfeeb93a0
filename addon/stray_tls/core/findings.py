"""What an upstream's answer means: one small classifier per face of "plaintext reached a TLS port" (pure).

Every consumer (the addon, the report, the CLI, the lab) speaks `Finding`; none parses bytes its own way.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any

from . import records as tls
from .names import clip
from .records import Record, Records

CHECK_ADVICE = (
    "The server is reachable: tunnel https:// through CONNECT, fix the proxy's handling of https:// URLs, "
    "or bypass the connectivity check."
)


class Kind(enum.StrEnum):
    TLS_RECORDS = "tls_records"  # the answer to an HTTP request was TLS records
    TLS_INCOMPLETE = "tls_incomplete"  # it began like a TLS record that never completed
    TLS_IN_BODY = "tls_in_body"  # an HTTP head, then TLS records as the body
    PLAIN_HTTP_400 = "plain_http_400"  # the server's own "plain HTTP sent to HTTPS port" page
    TLS_WRAPPED_HTTP09 = "tls_wrapped_http09"  # a proxy's invented HTTP/0.9 head (squid) around TLS records
    SILENT_CLOSE = "silent_close"  # no bytes at all, then close (OpenSSL 3 on plaintext)
    TLS_HANDSHAKE_ALERT = "tls_handshake_alert"  # mitmproxy's own TLS handshake to the upstream failed
    UPSTREAM_NOT_TLS = "upstream_not_tls"  # the opposite fault: TLS sent to a port that speaks plain HTTP


#: The kinds a synthetic status may stand in for (`esrs_rewrite`): an allow-list, so that a kind added later is
#: not rewritable by accident. Not a silent close (too ambiguous), not TLS inside a body (that answer has a real
#: HTTP status), not a proxy's HTTP/0.9 wrapping (its 200 already passes a check), and never the opposite fault
#: (TLS to a plaintext port): a success there would hide a different misconfiguration.
REWRITABLE: frozenset[Kind] = frozenset(
    {Kind.TLS_RECORDS, Kind.TLS_INCOMPLETE, Kind.PLAIN_HTTP_400, Kind.TLS_HANDSHAKE_ALERT}
)
#: The kinds that prove the server never processed the plaintext request (it answered it as a TLS port does),
#: so that the same request, of any method, may be sent again over TLS (`esrs_upgrade`).
UPGRADABLE: frozenset[Kind] = frozenset(
    {Kind.TLS_RECORDS, Kind.TLS_INCOMPLETE, Kind.PLAIN_HTTP_400, Kind.TLS_WRAPPED_HTTP09}
)
#: A silent close proves nothing of the kind: only requests that are safe to repeat are sent again after one.
UPGRADABLE_IF_SAFE: frozenset[Kind] = frozenset({Kind.SILENT_CLOSE})
SAFE_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS"})


#: The caps on what a finding says, whatever the upstream sent (an alert repeated 9,000 times is 63 KB): the summary's
#: characters (records: `records.DESCRIBED_RECORDS` named, then a count), the records listed and the raw bytes kept
#: in the report line and the flow's metadata. What is left out is counted there (`records_omitted`, `raw_truncated`).
SUMMARY_CHARS = 512
LISTED_RECORDS = 8
RAW_BYTES = 1024


class Confidence(enum.StrEnum):
    HIGH = "high"  # the bytes say it: TLS records, or the server's page says it in words
    MEDIUM = "medium"  # consistent with it, but another cause is possible
    LOW = "low"  # a symptom it shares with ordinary failures


@dataclass(frozen=True)
class Finding:
    kind: Kind
    confidence: Confidence
    explanation: str
    records: tuple[Record, ...] = ()
    raw: bytes = b""
    #: For findings without records: what was seen, in words (the 400 page's phrase, the TLS error).
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        """The one-line summary: the decoded records (the first few, then how many more), or what was seen; at most
        SUMMARY_CHARS characters, for it goes into the label header, the log line and the report line."""
        return clip(tls.describe_all(self.records) if self.records else self.detail, SUMMARY_CHARS)

    @property
    def rewritable(self) -> bool:
        """Whether a synthetic status may stand in for this answer (see REWRITABLE)."""
        return self.kind in REWRITABLE

    @property
    def what_came(self) -> str:
        """The records in words for a sentence: "a TLS alert" when one of them is an alert."""
        if not self.records:
            return "an incomplete TLS record" if self.raw else "no bytes at all"
        return "a TLS alert" if any(r.alert is not None for r in self.records) else "TLS records without an alert"

    def upgradable(self, method: str) -> bool:
        """Whether the request may be sent again over TLS after this answer (see UPGRADABLE)."""
        return self.kind in UPGRADABLE or (self.kind in UPGRADABLE_IF_SAFE and method.upper() in SAFE_METHODS)

    def to_dict(self, *, listed: bool = True) -> dict[str, Any]:
        """The finding as the report and the flow's metadata hold it, bounded whatever the upstream sent: the first
        LISTED_RECORDS records and RAW_BYTES raw bytes, and how many of each were left out (`records_omitted`,
        `raw_truncated`). `listed=False` lists neither (a line that refers to another flow's, which has them)."""
        shown = self.records[:LISTED_RECORDS] if listed else ()
        raw = self.raw[:RAW_BYTES] if listed else b""
        d = {
            "kind": str(self.kind),
            "confidence": str(self.confidence),
            "summary": self.summary,
            "explanation": self.explanation,
            "records": [r.to_dict() for r in shown],
            "records_omitted": len(self.records) - len(shown),
            "raw_hex": raw.hex(),
            "raw_truncated": len(self.raw) - len(raw),
            **self.extra,
        }
        trailing = d.get("trailing_hex")
        budget = 2 * RAW_BYTES if listed else 0
        if isinstance(trailing, str) and len(trailing) > budget:  # what followed the records: capped alike
            d["trailing_hex"] = trailing[:budget]
            d["trailing_truncated"] = (len(trailing) - budget) // 2
        return d


def _explain_records(found: tuple[Record, ...]) -> str:
    first = found[0]
    alert = first.alert
    if alert is not None and alert.description == 10:
        cause = (
            "The upstream answered a plaintext HTTP request with a TLS alert: the port speaks TLS and "
            "rejected the clear-text request as an unexpected message. A proxy that forwards "
            "`GET https://...` in clear to a TLS port and relays the raw answer produces exactly this "
            "(the ESRS CECT / NetworkCheck failure)."
        )
    elif alert is not None:
        cause = (
            f"The upstream answered a plaintext HTTP request with a TLS alert ({alert.description_name}): "
            "the port speaks TLS, not HTTP."
        )
    elif first.sslv2:
        cause = "The upstream answered a plaintext HTTP request with an SSLv2-framed record: a legacy TLS port."
    else:
        cause = (
            f"The upstream answered a plaintext HTTP request with a TLS {first.content_type_name} record: "
            "the port speaks TLS, not HTTP."
        )
    return f"{cause} {CHECK_ADVICE}"


def from_response_head(data: bytes | bytearray) -> Finding | None:
    """The bytes where an HTTP status line was expected; a finding when they are complete TLS records."""
    decoded = tls.decode(data)
    if not isinstance(decoded, Records):
        return None
    extra: dict[str, Any] = {}
    if decoded.rest:
        extra["trailing_hex"] = decoded.rest.hex()
        extra["trailing_incomplete"] = decoded.rest_incomplete
    return Finding(
        Kind.TLS_RECORDS,
        Confidence.HIGH,
        _explain_records(decoded.records),
        decoded.records,
        bytes(data),
        extra=extra,
    )


def from_incomplete_head(data: bytes | bytearray) -> Finding | None:
    """The upstream stopped (closed, or ran out of time) part-way through something that began like TLS."""
    decoded = tls.decode(data)
    if not isinstance(decoded, tls.NeedMore) or not data:
        return None
    return Finding(
        Kind.TLS_INCOMPLETE,
        Confidence.MEDIUM,
        "The upstream's answer began like a TLS record but the record never completed "
        f"({decoded.buffered} of {decoded.needed} bytes arrived). The port most likely speaks TLS. " + CHECK_ADVICE,
        raw=bytes(data),
        detail=_incomplete_detail(bytes(data), decoded),
    )


def _incomplete_detail(data: bytes, decoded: tls.NeedMore) -> str:
    return f"incomplete TLS record: {tls.hexdump(data, 16)} ({decoded.buffered} of {decoded.needed} bytes)"


def silent_close() -> Finding:
    return Finding(
        Kind.SILENT_CLOSE,
        Confidence.LOW,
        "The upstream closed the connection without a byte. TLS servers built on OpenSSL 3 do this when a "
        "plaintext request reaches a TLS port; an overloaded or idle-closing server does it too. If the port "
        "is a TLS port (443, 8443), treat it as one: " + CHECK_ADVICE,
        detail="upstream closed the connection without answering",
    )


@dataclass(frozen=True)
class PlainHttpPage:
    """A real server's whole answer to plaintext on its TLS port, as that server makes it (see tests/realpeers.py).

    Evidence is the page as a whole, never a phrase somewhere in a body: a JSON error that reflects the phrase, a
    document quoting it, a honeypot's copy are no sign of a TLS port (and a copy that matches whole is caught by the
    TLS attempt, which then gets no TLS back).
    """

    server: str
    #: The words that say it, quoted in the finding's detail.
    phrase: bytes
    #: The whole body, matched in full (the parts a configuration changes, such as a version, left open).
    body: re.Pattern[bytes]
    #: The media type of its Content-Type header (lower case, no parameters), or None: the server sends none.
    media_type: str | None


def _page(server: str, phrase: bytes, body: bytes, media_type: str | None) -> PlainHttpPage:
    return PlainHttpPage(server, phrase, re.compile(body), media_type)


#: Real servers' pages for plaintext on a TLS port (nginx 1.22, Apache httpd 2.4.71, Tomcat 10.1, Go 1.19 as Debian
#: ships them; tests/test_real_servers.py meets each one).
PLAIN_HTTP_PAGES: tuple[PlainHttpPage, ...] = (
    _page(
        "nginx",  # ngx_http_error_497_page, the tail naming the server (server_tokens), MSIE/Chrome padding or not
        b"The plain HTTP request was sent to HTTPS port",
        rb"<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port</title></head>\r\n<body>\r\n"
        rb"<center><h1>400 Bad Request</h1></center>\r\n<center>The plain HTTP request was sent to HTTPS port</center>"
        rb"\r\n<hr><center>[^<\r\n]{1,64}</center>\r\n</body>\r\n</html>\r\n"
        rb"(?:<!-- a padding to disable MSIE and Chrome friendly error page -->\r\n){0,6}",
        "text/html",
    ),
    _page(
        # the canned 400 (HTML 2.0, or 4.01 in later 2.4), mod_ssl's note, a signature (ServerSignature) or none
        "Apache httpd",
        b"speaking plain HTTP to an SSL-enabled server port",
        rb'<!DOCTYPE HTML PUBLIC "[^"\n]{1,64}"(?: "[^"\n]{1,128}")?>\n<html><head>\n<title>400 Bad Request</title>\n'
        rb"</head><body>\n<h1>Bad Request</h1>\n<p>Your browser sent a request that this server could not "
        rb"understand.<br />\nReason: You're speaking plain HTTP to an SSL-enabled server port.<br />\n Instead use "
        rb"the HTTPS scheme to access this URL, please.<br />\n</p>\n(?:<hr>\n<address>[^\n]{0,512}</address>\n)?"
        rb"</body></html>\n",
        "text/html",
    ),
    _page(
        "Apache Tomcat",  # TLSClientHelloExtractor.USE_TLS_RESPONSE; Spring Boot's embedded Tomcat too
        b"This combination of host and port requires TLS.",
        rb"Bad Request\r?\nThis combination of host and port requires TLS\.\r?\n",
        "text/plain",
    ),
    _page(
        "Go net/http",  # written raw by the server, as HTTP/1.0 with no header at all
        b"Client sent an HTTP request to an HTTPS server.",
        rb"Client sent an HTTP request to an HTTPS server\.\n",
        None,
    ),
)
#: No page above is longer (nginx's with its padding is the longest): a longer body is no such page.
PLAIN_HTTP_PAGE_MAX = 2048


def _media_type(content_type: str | None) -> str | None:
    return None if content_type is None else content_type.split(";", 1)[0].strip().lower()


def plain_http_page(body: bytes, content_type: str | None) -> PlainHttpPage | None:
    """The server whose own "plain HTTP to an HTTPS port" page a 400's body is, whole, with its Content-Type."""
    if len(body) > PLAIN_HTTP_PAGE_MAX:
        return None
    media_type = _media_type(content_type)
    for page in PLAIN_HTTP_PAGES:
        if page.media_type == media_type and page.body.fullmatch(body):
            return page
    return None


#: squid's header on an answer it could not parse as HTTP and passed on under an HTTP/0.9 head of its own.
TRANSFORMED_FROM_HTTP09 = "HTTP/0.9"


def is_http09_wrapping(transformed_from: str | None) -> bool:
    """Whether an `X-Transformed-From` value says the head is a proxy's invention around a non-HTTP answer."""
    return (transformed_from or "").strip().upper() == TRANSFORMED_FROM_HTTP09


def from_response(
    status_code: int, body: bytes | None, transformed_from: str | None = None, content_type: str | None = None
) -> Finding | None:
    """A complete HTTP response that is really the TLS port's answer: a real server's 400 page, or TLS as the body.

    `transformed_from` is the response's `X-Transformed-From` header: squid's mark on a head it invented.
    `content_type` is its Content-Type header (None: it had none), part of what makes a 400 a server's own page.
    """
    if not body:
        return None
    if status_code == 400:
        page = plain_http_page(body, content_type)
        if page is None:
            return None
        return Finding(
            Kind.PLAIN_HTTP_400,
            Confidence.HIGH,
            f"The upstream ({page.server}) says a plain HTTP request reached its HTTPS port. {CHECK_ADVICE}",
            raw=body,
            detail=f'HTTP 400 from {page.server}: "{page.phrase.decode()}"',
            extra={"server_software": page.server},
        )
    if tls.could_start_tls(body[0]):
        decoded = tls.decode(body)
        wrapped = is_http09_wrapping(transformed_from)
        if wrapped and isinstance(decoded, tls.NeedMore):
            # the upstream stopped part-way through a record, and squid wrapped what had arrived
            return Finding(
                Kind.TLS_WRAPPED_HTTP09,
                Confidence.MEDIUM,
                f"The HTTP {status_code} is not the server's: a proxy (squid) sent the request in plaintext, got "
                "back the start of a TLS record that never completed, and wrapped it in an HTTP/0.9 answer of its "
                f"own (X-Transformed-From: HTTP/0.9). The port most likely speaks TLS; the {status_code} is no "
                f"success. {CHECK_ADVICE}",
                raw=body,
                detail=_incomplete_detail(body, decoded),
                extra={"http_status": status_code},
            )
        if not isinstance(decoded, Records):
            return None
        if wrapped:
            # squid keeps whatever follows, so a trailing partial record is still its wrapping of a TLS answer
            return Finding(
                Kind.TLS_WRAPPED_HTTP09,
                Confidence.HIGH,
                f"The HTTP {status_code} is not the server's: a proxy (squid) sent the request in plaintext to a TLS "
                "port, got TLS records back, and wrapped them in an HTTP/0.9 answer of its own "
                f"(X-Transformed-From: HTTP/0.9). The {status_code} is no success. {CHECK_ADVICE}",
                decoded.records,
                body,
                extra={"http_status": status_code},
            )
        if not decoded.rest:
            return Finding(
                Kind.TLS_IN_BODY,
                Confidence.MEDIUM,
                "An HTTP head arrived, but its body is nothing but TLS records: something on the way (often a "
                "proxy that answered for the server) relayed a TLS port's raw answer. " + CHECK_ADVICE,
                decoded.records,
                body,
                extra={"http_status": status_code},
            )
    return None


_OPENSSL_ALERT = re.compile(r"alert ([a-z][a-z ]*[a-z])", re.I)
_ALERT_CODES = {name.removesuffix("_RESERVED"): code for code, name in tls.registry.ALERT_DESCRIPTIONS.items()}
#: OpenSSL's words when the upstream answered a ClientHello with something that is not TLS.
_NOT_TLS_WORDS = ("wrong version number", "packet length too long", "record layer failure")
#: OpenSSL's words when the upstream offers only versions this side refuses.
_NO_SHARED_VERSION_WORDS = ("unsupported protocol", "no protocols available")


#: How the summary of a failed TLS handshake with the upstream begins.
HANDSHAKE_FAILED_PREFIX = "TLS handshake with the upstream failed: "


def tls_alert(code: int, message: str) -> Finding:
    """The TLS handshake with the upstream ended in alert `code`; `message` is the TLS stack's own text."""
    name = tls.registry.alert_description_name(code)
    if code == 70:
        cause = (
            "The upstream and mitmproxy share no TLS version (for instance a TLS-1.0-only server, which "
            "OpenSSL refuses by default). Enable the old version on the server, or let mitmproxy accept it "
            "(`--set tls_version_server_min=TLS1`), or bypass the check."
        )
    elif code in (40, 71):
        cause = (
            "The upstream and mitmproxy agreed on no cipher suite or parameters (an old TLS stack). "
            "Update the server, or widen mitmproxy's ciphers (`ciphers_server`), or bypass the check."
        )
    else:
        cause = "The upstream rejected mitmproxy's TLS handshake."
    return Finding(
        Kind.TLS_HANDSHAKE_ALERT,
        Confidence.HIGH,
        cause,
        detail=f"{HANDSHAKE_FAILED_PREFIX}alert {name} ({code})",
        extra={"alert": {"description": code, "description_name": name}, "tls_error": message.strip()},
    )


def upstream_not_tls(message: str, proxy: str | None = None) -> Finding:
    """The opposite fault: TLS was sent to a port that answered in plaintext (`message`: the TLS stack's words).

    `proxy` (`host:port`): the port was the upstream proxy's, given as `--mode upstream:https://`: the request's URL
    is not at fault, the proxy's scheme is (mitmproxy issues 5399 and 6900)."""
    if proxy is not None:
        return Finding(
            Kind.UPSTREAM_NOT_TLS,
            Confidence.HIGH,
            f"mitmproxy was told to speak TLS to its upstream proxy (`--mode upstream:https://{proxy}`), and the "
            "proxy answered in plaintext: it speaks plain HTTP, not TLS. The request's URL is not at fault, and no "
            "request reached the proxy. Give the proxy as it speaks: `--mode "
            f"upstream:http://{proxy}` (https:// URLs still go to it through CONNECT, then TLS to the server).",
            detail=f"TLS sent to the upstream proxy {proxy}, which speaks plain HTTP: {message.strip()}",
            extra={"tls_error": message.strip(), "upstream_proxy_spec": f"upstream:http://{proxy}"},
        )
    return Finding(
        Kind.UPSTREAM_NOT_TLS,
        Confidence.HIGH,
        "The opposite fault: mitmproxy spoke TLS to the upstream (an https:// URL), and the port answered in "
        "plaintext: it speaks plain HTTP, not TLS. This is not the ESRS failure, and no synthetic answer is given "
        "for it: check the URL's scheme and port, or the server's TLS configuration on that port.",
        detail=f"TLS sent to a port that speaks plain HTTP: {message.strip()}",
        extra={"tls_error": message.strip()},
    )


def from_tls_error(message: str) -> Finding | None:
    """A TLS handshake with the upstream failed, in OpenSSL's words: name the alert the way the registry does."""
    if m := _OPENSSL_ALERT.search(message):
        code = _ALERT_CODES.get(m.group(1).lower().replace(" ", "_"))
        if code is not None:
            return tls_alert(code, message)
    lowered = message.lower()
    if any(words in lowered for words in _NOT_TLS_WORDS):
        return upstream_not_tls(message)
    if any(words in lowered for words in _NO_SHARED_VERSION_WORDS):
        return Finding(
            Kind.TLS_HANDSHAKE_ALERT,
            Confidence.MEDIUM,
            "The upstream offers only TLS versions that mitmproxy refuses (for instance TLS 1.0 alone).",
            detail=f"{HANDSHAKE_FAILED_PREFIX}{message.strip()}",
        )
    return None
