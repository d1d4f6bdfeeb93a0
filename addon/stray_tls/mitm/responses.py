"""The responses esrs-fix gives in place of the upstream's: the labelled 502, the synthetic status, the failed upgrade.

Each says, in its body, what came back instead of HTTP (the one-line summary and the raw bytes) and why; each is
labelled with the X-ESRS-Fix header, so that nobody takes it for the server's. Both are bounded whatever the upstream
sent (the finding's summary is capped, the body shows the first 64 raw bytes): the label at LABEL_CHARS characters,
escaped (`printable`) so that it is one header line a client reads.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from http import HTTPStatus
from typing import Protocol

from mitmproxy import http

from ..core import records
from ..core.findings import Finding
from ..core.names import LABEL_HEADER, printable
from .causes import Failure

_LABEL_NAME = LABEL_HEADER.lower().encode()

#: Characters of the X-ESRS-Fix label at most: curl, browsers and proxies refuse heads far smaller than an upstream
#: can make a summary (9,000 records once made a 594 KB header).
LABEL_CHARS = 1024


def label(text: str) -> str:
    """The X-ESRS-Fix value: control bytes escaped (no header injection), at most LABEL_CHARS characters."""
    return printable(text, LABEL_CHARS)


def lowercase_label(response: http.Response) -> None:
    """Give the label header its lower-case name (`x-esrs-fix`), for an HTTP/2 or HTTP/3 client: header names
    are lower case there, and mitmproxy logs a line for every upper-case name it has to lowercase itself."""
    fields = response.headers.fields
    if any(name.lower() == _LABEL_NAME and name != _LABEL_NAME for name, _ in fields):
        response.headers.fields = tuple(
            (_LABEL_NAME if name.lower() == _LABEL_NAME else name, value) for name, value in fields
        )


def _body(finding: Finding, headline: str) -> bytes:
    lines: Sequence[str] = [
        headline,
        "",
        f"What the upstream sent: {finding.summary}",
        f"Raw bytes: {records.hexdump(finding.raw, 64)}" if finding.raw else "Raw bytes: (none)",
        "",
        finding.explanation,
        "",
    ]
    return "\n".join(lines).encode()


def error_response(finding: Finding) -> http.Response:
    """The default answer: a 502 that says what came back instead of HTTP."""
    return http.Response.make(
        502,
        _body(finding, "esrs-fix: the upstream did not answer with HTTP (502 from the proxy, not from the server)."),
        {
            "Content-Type": "text/plain; charset=utf-8",
            LABEL_HEADER: label(f"detected; {finding.summary}"),
        },
    )


def rewritten_response(finding: Finding, status: int, upgrade_failure: Failure | None = None) -> http.Response:
    """The answer when rewriting is on: labelled as synthetic so that nobody takes it for the server's."""
    status_line = f"{status} {reason}" if (reason := _reason_phrase(status)) else str(status)
    headline = f"esrs-fix: SYNTHETIC {status_line}: made by the proxy, not sent by the server (esrs_rewrite is on)."
    if upgrade_failure:
        headline += f"\nThe TLS attempt (esrs_upgrade) failed first: {upgrade_failure}."
    return http.Response.make(
        status,
        _body(finding, headline),
        {
            "Content-Type": "text/plain; charset=utf-8",
            LABEL_HEADER: label(f"synthetic {status}; {finding.summary}"),
        },
    )


def _reason_phrase(status: int) -> str:
    """The standard reason phrase of `status` (the stdlib's table), or "" for a code it does not name."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def upgrade_failed_response(finding: Finding, failure: Failure) -> http.Response:
    """The answer when the port proved to speak TLS but the TLS attempt failed: the cause, and advice that fits it."""
    return http.Response.make(
        502,
        _body(
            finding,
            "esrs-fix: the upstream speaks TLS, and the request sent again over TLS failed (502 from the proxy, "
            f"not from the server): {failure}.\n{failure.advice}",
        ),
        {
            "Content-Type": "text/plain; charset=utf-8",
            LABEL_HEADER: label(f"upgrade failed: {failure}; {finding.summary}"),
        },
    )


class _Early(Protocol):
    @property
    def active(self) -> bool: ...


class ErrorResponses:
    """Answers for flows that mitmproxy fails before any response exists, by request: the early detection's send
    wrapper (HTTP/1 clients) writes one in place of mitmproxy's own 502, and only while it is installed."""

    def __init__(self) -> None:
        self._answers: weakref.WeakKeyDictionary[http.Request, http.Response] = weakref.WeakKeyDictionary()
        #: The early detection whose send wrapper claims the answers (set by the detection addon).
        self.early: _Early | None = None

    @property
    def active(self) -> bool:
        """Whether an answer put here can reach the client (the early detection is installed)."""
        return self.early is not None and self.early.active

    def put(self, request: http.Request, response: http.Response) -> None:
        self._answers[request] = response

    def claim(self, request: http.Request) -> http.Response | None:
        """The answer for `request`, once (the send wrapper's `ErrorAnswer`)."""
        return self._answers.pop(request, None)
