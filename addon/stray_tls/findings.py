"""What an upstream's answer means: one small classifier per face of "plaintext reached a TLS port" (pure).

Every consumer (the addon, the report, the CLI, the lab) speaks `Finding`; none parses bytes its own way.
"""

from __future__ import annotations

import ast
import enum
import re
from dataclasses import dataclass, field
from typing import Any

from . import records as tls
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
    SILENT_CLOSE = "silent_close"  # no bytes at all, then close (OpenSSL 3 on plaintext)
    TLS_HANDSHAKE_ALERT = "tls_handshake_alert"  # mitmproxy's own TLS handshake to the upstream failed


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
        """The one-line summary: the decoded records, or what was seen."""
        if self.records:
            return tls.describe_all(self.records)
        return self.detail

    @property
    def rewritable(self) -> bool:
        """Whether a synthetic status may stand in for this answer.

        Not for a silent close (too ambiguous), nor for TLS inside a body: that answer has a real HTTP status,
        and a rewrite exists to replace answers that have none (or the server's own "wrong port" 400).
        """
        return self.kind not in (Kind.SILENT_CLOSE, Kind.TLS_IN_BODY)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind),
            "confidence": str(self.confidence),
            "summary": self.summary,
            "explanation": self.explanation,
            "records": [r.to_dict() for r in self.records],
            "raw_hex": self.raw.hex(),
            **self.extra,
        }


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
        detail=f"incomplete TLS record: {tls.hexdump(bytes(data), 16)} ({decoded.buffered} of {decoded.needed} bytes)",
    )


_UNEXPECTED = re.compile(r"unexpected server response: (b(['\"]).*\2)\s*$", re.S)
_BAD_LINE = re.compile(r"Bad HTTP response line: (b(['\"]).*\2)", re.S)


def _literal(text: str) -> bytes | None:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    return value if isinstance(value, bytes) else None


def from_error_message(message: str) -> Finding | None:
    """Recover a finding from mitmproxy's `flow.error.msg` when the early detection was not there.

    Two forms carry the bytes: `unexpected server response: b'...'` (the upstream closed), and
    `Cannot parse HTTP response: Bad HTTP response line: b'...'`, where the HTTP parser has eaten the
    final line ending, which may have been the alert's own 0x0a: so both endings are tried.
    """
    if m := _UNEXPECTED.search(message):
        data = _literal(m.group(1))
        if data is not None:
            return from_response_head(data) or from_incomplete_head(data)
    if m := _BAD_LINE.search(message):
        data = _literal(m.group(1))
        if data is not None:
            for ending in (b"", b"\n", b"\r\n"):
                decoded = tls.decode(data + ending)
                if isinstance(decoded, Records) and not decoded.rest:
                    return from_response_head(data + ending)
            return from_response_head(data)
    if message.strip() == "server closed connection":
        return silent_close()
    return from_tls_error(message)


def silent_close() -> Finding:
    return Finding(
        Kind.SILENT_CLOSE,
        Confidence.LOW,
        "The upstream closed the connection without a byte. TLS servers built on OpenSSL 3 do this when a "
        "plaintext request reaches a TLS port; an overloaded or idle-closing server does it too. If the port "
        "is a TLS port (443, 8443), treat it as one: " + CHECK_ADVICE,
        detail="upstream closed the connection without answering",
    )


#: Phrases of real servers' answers to plaintext on a TLS port, and who says them.
PLAIN_HTTP_PAGES: tuple[tuple[bytes, str], ...] = (
    (b"The plain HTTP request was sent to HTTPS port", "nginx"),
    (b"Client sent an HTTP request to an HTTPS server", "Go net/http"),
    (b"speaking plain HTTP to an SSL-enabled server port", "Apache httpd"),
    (b"This combination of host and port requires TLS", "Apache httpd"),
)


def from_response(status_code: int, body: bytes | None) -> Finding | None:
    """A complete HTTP response that is really the TLS port's answer: a known 400 page, or TLS as the body."""
    if not body:
        return None
    if status_code == 400:
        for phrase, server in PLAIN_HTTP_PAGES:
            if phrase in body:
                return Finding(
                    Kind.PLAIN_HTTP_400,
                    Confidence.HIGH,
                    f"The upstream ({server}) says a plain HTTP request reached its HTTPS port. {CHECK_ADVICE}",
                    raw=body[:4096],
                    detail=f'HTTP 400 from {server}: "{phrase.decode()}"',
                    extra={"server_software": server},
                )
        return None
    if tls.could_start_tls(body[0]):
        decoded = tls.decode(body)
        if isinstance(decoded, Records) and not decoded.rest:
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
_TLS_FAILURES: tuple[tuple[str, str], ...] = (
    (
        "wrong version number",
        "The upstream did not answer mitmproxy's TLS handshake with TLS: the port probably speaks plain HTTP.",
    ),
    (
        "does not speak tls",
        "The upstream did not answer mitmproxy's TLS handshake with TLS: the port probably speaks plain HTTP.",
    ),
    (
        "unsupported protocol",
        "The upstream offers only TLS versions that mitmproxy refuses (for instance TLS 1.0 alone).",
    ),
    (
        "no protocols available",
        "The upstream offers only TLS versions that mitmproxy refuses (for instance TLS 1.0 alone).",
    ),
)


#: mitmproxy rewords some OpenSSL errors (proxy/layers/tls.py); these say which alert stood behind them.
_MITMPROXY_ALERT_PHRASES: tuple[tuple[str, int], ...] = (
    ("cannot agree on a TLS version", 70),  # from "tlsv1 alert protocol version"
)


def _alert_code(message: str) -> int | None:
    if m := _OPENSSL_ALERT.search(message):
        code = _ALERT_CODES.get(m.group(1).lower().replace(" ", "_"))
        if code is not None:
            return code
    return next((code for phrase, code in _MITMPROXY_ALERT_PHRASES if phrase in message), None)


def from_tls_error(message: str) -> Finding | None:
    """mitmproxy's TLS handshake with the upstream failed; name the alert the way the registry does."""
    if (code := _alert_code(message)) is not None:
        name = tls.registry.ALERT_DESCRIPTIONS[code]
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
            detail=f"TLS handshake with the upstream failed: alert {name} ({code})",
            extra={"alert": {"description": code, "description_name": name}, "tls_error": message.strip()},
        )
    lowered = message.lower()
    for needle, cause in _TLS_FAILURES:
        if needle in lowered:
            return Finding(
                Kind.TLS_HANDSHAKE_ALERT,
                Confidence.MEDIUM,
                cause,
                detail=f"TLS handshake with the upstream failed: {message.strip()}",
            )
    return None
