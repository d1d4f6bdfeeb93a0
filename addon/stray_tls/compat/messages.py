"""mitmproxy's own error messages, turned into findings, and read for what they say about a failed TLS attempt
(the causes and their wording are the upgrade's: `mitm/causes.py`).

Each format is produced by mitmproxy, not written here from memory: `tests/test_compat.py` pins every one on both
majors (an unwrapped `Http1Client` fed the upstream's bytes, and a real mitmdump meeting real upstreams). OpenSSL's
own words (`tlsv1 alert ...`, `wrong version number`) are read in `findings.py`: `esrs-fix check` meets them too.
"""

from __future__ import annotations

import ast
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


def says_not_tls(message: str) -> bool:
    """The TLS layer's rewording of OpenSSL's "wrong version number" for an answer in ASCII."""
    return _NOT_TLS in message


def says_closed_in_handshake(message: str) -> bool:
    """The TLS layer's words, exactly, when the server (or an upstream proxy at its CONNECT) closed the connection
    while the handshake was being established."""
    return message.strip() == _CLOSED_IN_HANDSHAKE


def says_no_tls_version(message: str) -> bool:
    """The TLS layer's rewording of OpenSSL's "tlsv1 alert protocol version"."""
    return _NO_TLS_VERSION.lower() in message.lower()


def says_too_large(message: str) -> bool:
    """mitmproxy's words when an answer's body is over `body_size_limit`."""
    return "body_size_limit" in message.lower()


#: mitmproxy's words for a flow that ended because its client went away or a user killed it (not the server's doing).
_CLIENT_GONE = ("Client disconnected.", "Connection killed.")


def client_gone(message: str) -> bool:
    """Whether a flow's error (`flow.error.msg`) says its client went away or it was killed, not that the server or
    the TLS connection to it failed."""
    return message.strip() in _CLIENT_GONE
