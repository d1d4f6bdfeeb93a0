"""mitmproxy's own error messages, turned into findings, and the causes of a failed TLS attempt read from them.

Each format is produced by mitmproxy, not written here from memory: `tests/test_compat.py` pins every one on both
majors (an unwrapped `Http1Client` fed the upstream's bytes, and a real mitmdump meeting real upstreams). OpenSSL's
own words (`tlsv1 alert ...`, `wrong version number`) are read in `findings.py`: `esrs-fix check` meets them too.
"""

from __future__ import annotations

import ast
import enum
import re

from ..core import findings
from ..core import records as tls
from ..core.findings import Finding

#: Http1Client, when the upstream closed after bytes that were no HTTP head.
_UNEXPECTED = re.compile(r"unexpected server response: (b(['\"]).*\2)\s*$", re.S)
#: Http1Client, when a line ending arrived and the bytes before it were no status line.
_BAD_LINE = re.compile(r"Bad HTTP response line: (b(['\"]).*\2)", re.S)
#: Http1Client, when the upstream closed without a byte.
SERVER_CLOSED = "server closed connection"
#: The TLS layer's words (exactly these) when the server closed the connection while the handshake was being
#: established: had a TLS message come back (an alert, a hello, a record of the wrong kind), OpenSSL would name it.
_CLOSED_IN_HANDSHAKE = "connection closed"
#: The TLS layer's rewording of OpenSSL's "tlsv1 alert protocol version".
_NO_TLS_VERSION = "cannot agree on a TLS version"
#: The TLS layer's rewording of OpenSSL's "wrong version number" when the upstream answered in ASCII.
_NOT_TLS = "does not speak TLS"
#: The TLS layer's message for a certificate that failed verification, with OpenSSL's reason after the colon.
_VERIFY_FAILED = re.compile(r"Certificate verify failed: (.+)", re.S)


def _bytes_literal(text: str) -> bytes | None:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    return value if isinstance(value, bytes) else None


def finding_from_error(message: str) -> Finding | None:
    """A finding from mitmproxy's `flow.error.msg`, for when early detection was not there to see the bytes.

    Two forms carry the bytes: `unexpected server response: b'...'` (the upstream closed), and `Cannot parse
    HTTP response: Bad HTTP response line: b'...'`, where the HTTP parser has eaten the final line ending, which
    may have been the alert's own 0x0a: so both endings are tried.
    """
    if m := _UNEXPECTED.search(message):
        data = _bytes_literal(m.group(1))
        if data is not None:
            return findings.from_response_head(data) or findings.from_incomplete_head(data)
    if m := _BAD_LINE.search(message):
        data = _bytes_literal(m.group(1))
        if data is not None:
            for ending in (b"", b"\n", b"\r\n"):
                decoded = tls.decode(data + ending)
                if isinstance(decoded, tls.Records) and not decoded.rest:
                    return findings.from_response_head(data + ending)
            return findings.from_response_head(data)
    if message.strip() == SERVER_CLOSED:
        return findings.silent_close()
    return finding_from_tls_error(message)


def finding_from_tls_error(message: str, proxy: str | None = None) -> Finding | None:
    """A finding from a failed TLS handshake with the upstream, in mitmproxy's words or OpenSSL's; `proxy`
    (`host:port`) when the handshake was with the upstream proxy of `--mode upstream:https://`, not the server."""
    if _NOT_TLS in message:
        finding: Finding | None = findings.upstream_not_tls(message.strip())
    elif _NO_TLS_VERSION in message:
        finding = findings.tls_alert(70, message.strip())
    else:
        finding = findings.from_tls_error(message)
    if proxy is not None and finding is not None and finding.kind is findings.Kind.UPSTREAM_NOT_TLS:
        return findings.upstream_not_tls(message.strip(), proxy)
    return finding


def certificate_problem(message: str) -> str | None:
    """OpenSSL's reason when mitmproxy refused the upstream's certificate (`self-signed certificate`), else None."""
    if m := _VERIFY_FAILED.search(message):
        return m.group(1).strip()
    return None


#: The words of a TLS attempt that ended without an answer, and of one that timed out: `replay` writes them where
#: mitmproxy has no error of its own, and `attempt_cause` reads them back.
ENDED_UNANSWERED = "the TLS connection ended without an answer"
NO_ANSWER_WITHIN = "no complete answer over TLS within"
#: The words of a TLS attempt whose request a hook (another addon, an intercept) held until the deadline, unsent.
HELD_BEFORE_SENDING = "the TLS attempt was held before it went out"
#: ... and of one whose answer an intercept held until the deadline (the request had reached the server).
HELD_AFTER_SENDING = "the TLS attempt's answer was held"
#: The words of a flow whose listener is not the one mitmproxy's replay follows (the first --mode).
NOT_RESENDABLE = "not sent again: this flow came through a listener other than the first --mode"


class AttemptCause(enum.StrEnum):
    """Why a TLS attempt (esrs_upgrade) failed, read from mitmproxy's words for it."""

    CERTIFICATE = "certificate"
    #: The server refused mitmproxy's client certificate (or wanted one and got none).
    CLIENT_CERTIFICATE = "client_certificate"
    TLS_VERSION = "tls_version"
    TIMEOUT = "timeout"
    CLOSED = "closed"
    RESET = "reset"
    #: The TLS attempt got no TLS back: the server answered the ClientHello in plaintext, or closed before any TLS
    #: handshake message. Evidence against a TLS port: nothing is remembered against the target.
    NOT_TLS = "not_tls"
    ROUTE = "route"
    #: The answer over TLS came, but was larger than esrs-fix (or mitmproxy's body_size_limit) would hold.
    TOO_LARGE = "too_large"
    #: Too many attempts to other targets were in flight for this one to start in time.
    BUSY = "busy"
    #: A hook (another addon, an intercept) held the attempt's request until its time was up: never sent.
    HELD = "held"
    #: The flow's listener is not the one mitmproxy's replay follows (several --modes): this flow cannot be re-sent.
    NOT_RESENDABLE = "not_resendable"
    OTHER = "other"

    @property
    def about_the_target(self) -> bool:
        """Whether this cause says something about the target (any request to it would fail the same way now), so
        that other requests may share the failure; otherwise it was this request's, or this moment's."""
        return self not in _NOT_ABOUT_THE_TARGET


_NOT_ABOUT_THE_TARGET = frozenset(
    {AttemptCause.TOO_LARGE, AttemptCause.BUSY, AttemptCause.HELD, AttemptCause.NOT_RESENDABLE, AttemptCause.OTHER}
)


#: OpenSSL's and the TLS layer's words for "no TLS version in common", whichever side found out.
_VERSION_WORDS = ("cannot agree on a tls version", "unsupported protocol", "alert protocol version", "no protocols")
#: The server's alerts about mitmproxy's client certificate (OpenSSL's words, as mitmproxy passes them on).
_CLIENT_CERTIFICATE_WORDS = ("alert unknown ca", "alert bad certificate", "certificate required")
#: mitmproxy's words when an answer's body is over body_size_limit.
_TOO_LARGE_WORDS = ("body_size_limit",)
#: Connecting, or the upstream proxy's CONNECT, failed: the TLS attempt never reached the server.
_ROUTE_WORDS = (
    "error establishing server connection",
    "connect call failed",
    "connection refused",
    "name or service not known",
    "no address associated",
    "temporary failure in name resolution",
    "network is unreachable",
    "no route to host",
    "refused http connect",
    "upstream proxy",
)


def attempt_cause(message: str) -> tuple[AttemptCause, str]:
    """What a failed TLS attempt's error message (`flow.error.msg`) says failed, and the detail worth quoting.

    The certificate's detail is OpenSSL's reason alone (`self-signed certificate`); otherwise the message itself.
    """
    if problem := certificate_problem(message):
        return AttemptCause.CERTIFICATE, problem
    if _NOT_TLS in message:  # mitmproxy's rewording of OpenSSL's "wrong version number" for an answer in ASCII
        return AttemptCause.NOT_TLS, "the server answered the ClientHello in plaintext: the port speaks plain HTTP"
    if message.strip() == _CLOSED_IN_HANDSHAKE:  # the server's close, or an upstream proxy's at its CONNECT
        return AttemptCause.NOT_TLS, "the connection closed before any TLS handshake message: no sign of a TLS port"
    lowered = message.lower()
    if any(word in lowered for word in _CLIENT_CERTIFICATE_WORDS):
        return AttemptCause.CLIENT_CERTIFICATE, message
    if any(word in lowered for word in _TOO_LARGE_WORDS):
        return AttemptCause.TOO_LARGE, message
    if any(word in lowered for word in _VERSION_WORDS):
        return AttemptCause.TLS_VERSION, message
    if message.startswith(NOT_RESENDABLE):
        return AttemptCause.NOT_RESENDABLE, message
    if message.startswith((HELD_BEFORE_SENDING, HELD_AFTER_SENDING)):
        return AttemptCause.HELD, message
    if message.startswith(NO_ANSWER_WITHIN):
        return AttemptCause.TIMEOUT, message
    if "reset by peer" in lowered or "connection reset" in lowered:
        return AttemptCause.RESET, message
    if any(word in lowered for word in _ROUTE_WORDS):
        return AttemptCause.ROUTE, message
    if message.startswith(ENDED_UNANSWERED) or "closed" in lowered or "unexpected eof" in lowered:
        return AttemptCause.CLOSED, message
    return AttemptCause.OTHER, message


#: mitmproxy's words for a flow that ended because its client went away or a user killed it (not the server's doing).
_CLIENT_GONE = ("Client disconnected.", "Connection killed.")


def client_gone(message: str) -> bool:
    """Whether a flow's error (`flow.error.msg`) says its client went away or it was killed, not that the server or
    the TLS connection to it failed."""
    return message.strip() in _CLIENT_GONE
