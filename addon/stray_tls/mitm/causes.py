"""Why a TLS attempt (esrs_upgrade) failed: the causes, the words esrs-fix writes for an attempt that ended
without an answer, how a failed attempt's error is read, and the advice for each cause, as one table.

mitmproxy's own texts are read through `compat` (which only says what they mean); OpenSSL's and the system's words
are read here, as are esrs-fix's own (`words_for`), which the attempt's flow carries as its error.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .. import compat
from ..compat import End, Unanswered
from ..core.names import OPT_UPGRADE_TIMEOUT, UPGRADE_BODY_CAP

#: Seconds a TLS attempt's server connection may be closed, with no answer and no error, before the attempt counts
#: as ended: mitmproxy's replay never completes when the server ends TLS after the handshake (TLS 1.3's
#: certificate_required alert), and its own error hook, when there is one, comes well within this.
ENDED_GRACE = 0.5


class AttemptCause(enum.StrEnum):
    """Why a TLS attempt failed."""

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


@dataclass(frozen=True, eq=False)
class Failure:
    """Why a TLS attempt failed: the cause, one line for labels and logs, and what to do about it.

    Compared by identity: the remembered failure is the very one the attempt's flow got (see `FlowRecord.same_as`)."""

    cause: AttemptCause
    message: str
    advice: str

    def __str__(self) -> str:
        return self.message


#: esrs-fix's words for an attempt that ended without an answer and without an error of mitmproxy's, by how it
#: ended; `attempt_cause` reads them back by their start.
ENDED_UNANSWERED = "the TLS connection ended without an answer"
NO_ANSWER_WITHIN = "no complete answer over TLS within"
HELD_BEFORE_SENDING = "the TLS attempt was held before it went out"
HELD_AFTER_SENDING = "the TLS attempt's answer was held"
NOT_RESENDABLE = "not sent again: this flow came through a listener other than the first --mode"


def words_for(unanswered: Unanswered) -> str:
    """The attempt's error, in esrs-fix's words, for how mitmproxy's replay ended without an answer."""
    seconds = f"{unanswered.timeout:g} s"
    return {
        End.NOT_RESENDABLE: f"{NOT_RESENDABLE}: mitmproxy's replay follows the first --mode only",
        End.ENDED: f"{ENDED_UNANSWERED} ({unanswered.detail})",
        End.HELD_ANSWER: f"{HELD_AFTER_SENDING} by an intercept past {seconds}; the request had been sent",
        End.HELD_REQUEST: f"{HELD_BEFORE_SENDING} by {unanswered.detail} for {seconds}; not sent",
        End.TIMED_OUT: f"{NO_ANSWER_WITHIN} {seconds}",
    }[unanswered.end]


#: OpenSSL's words for "no TLS version in common", whichever side found out (mitmproxy's own: `compat`).
_VERSION_WORDS = ("unsupported protocol", "alert protocol version", "no protocols")
#: The server's alerts about mitmproxy's client certificate (OpenSSL's words, as mitmproxy passes them on).
_CLIENT_CERTIFICATE_WORDS = ("alert unknown ca", "alert bad certificate", "certificate required")
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
    if problem := compat.certificate_problem(message):
        return AttemptCause.CERTIFICATE, problem
    if compat.says_not_tls(message):
        return AttemptCause.NOT_TLS, "the server answered the ClientHello in plaintext: the port speaks plain HTTP"
    if compat.says_closed_in_handshake(message):  # the server's close, or an upstream proxy's at its CONNECT
        return AttemptCause.NOT_TLS, "the connection closed before any TLS handshake message: no sign of a TLS port"
    lowered = message.lower()
    if any(word in lowered for word in _CLIENT_CERTIFICATE_WORDS):
        return AttemptCause.CLIENT_CERTIFICATE, message
    if compat.says_too_large(message):
        return AttemptCause.TOO_LARGE, message
    if compat.says_no_tls_version(message) or any(word in lowered for word in _VERSION_WORDS):
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


_HOLD_ADVICE = (
    f"Release intercepted replays sooner, exempt esrs-fix's attempts from the hold, or raise {OPT_UPGRADE_TIMEOUT}."
)
_CLOSED_ADVICE = (
    "The server (or a middlebox on the way) ended the TLS connection without an answer: it may want a client "
    "certificate (client_certs) or refuse this client; compare with a direct https:// request."
)

#: Each cause's one line (`{detail}`: what was read from the error) and its advice.
ADVICE: dict[AttemptCause, tuple[str, str]] = {
    AttemptCause.CERTIFICATE: (
        "certificate verification failed: {detail}",
        "Certificate checks are never weakened on your behalf: trust the server's CA "
        "(ssl_verify_upstream_trusted_ca or ssl_verify_upstream_trusted_confdir) or fix its certificate.",
    ),
    AttemptCause.TLS_VERSION: (
        "no TLS version in common with the server: {detail}",
        "The server speaks only TLS versions that mitmproxy refuses by default. If that is acceptable, "
        "lower tls_version_server_min (for example --set tls_version_server_min=TLS1); better, upgrade the "
        "server's TLS.",
    ),
    AttemptCause.TIMEOUT: (
        "{detail}",
        "The server, or the path to it, did not complete the handshake and the answer in time: raise "
        f"{OPT_UPGRADE_TIMEOUT} if it is only far away, or check that it answers over TLS at all.",
    ),
    AttemptCause.HELD: (
        "{detail}",
        "Another addon (a script's request hook) or an intercept held the TLS attempt's request until its time "
        "was up: the server was never asked, and the held request will not be sent. " + _HOLD_ADVICE,
    ),
    AttemptCause.NOT_RESENDABLE: (
        "{detail}",
        "With several --modes, mitmproxy's replay (which makes the TLS attempt) follows the first mode only; "
        "this flow came through another listener, so it was not sent again. Nothing is remembered against the "
        "target. Give this listener a mitmproxy of its own, or put its mode first.",
    ),
    AttemptCause.ROUTE: (
        "the TLS attempt did not reach the server: {detail}",
        "Check the route to the server over TLS: the upstream proxy's CONNECT policy for this port, its "
        "credentials (upstream_auth), name resolution.",
    ),
    AttemptCause.CLIENT_CERTIFICATE: (
        "the server refused mitmproxy's client certificate: {detail}",
        "The server wants a client certificate it trusts: give mitmproxy one (client_certs), as for any "
        "https:// request to it.",
    ),
    AttemptCause.TOO_LARGE: (
        "{detail}",
        "esrs-fix holds the first answer whole before the client gets it: raise body_size_limit (its cap is "
        f"{UPGRADE_BODY_CAP} bytes when body_size_limit is unset). The target is learned all the same: later "
        "requests go over TLS at once, their bodies streamed as mitmproxy streams them.",
    ),
    AttemptCause.NOT_TLS: (
        "the TLS attempt got no TLS back: {detail}",
        "Nothing is remembered against the target. A server's page that came back to the plaintext request is "
        "passed on as it came, as without esrs-fix; TLS records get the labelled 502.",
    ),
    AttemptCause.CLOSED: ("{detail}", _CLOSED_ADVICE),
    AttemptCause.RESET: ("{detail}", _CLOSED_ADVICE),
    AttemptCause.BUSY: (
        "{detail}",
        "Too many new targets at once: each slot is held while an attempt starts (a few seconds at most); try "
        f"again in a moment, or raise {OPT_UPGRADE_TIMEOUT} for a burst this large.",
    ),
    AttemptCause.OTHER: ("{detail}", "Compare with a direct https:// request to the same host and port."),
}
#: HELD's advice when the server had answered and an intercept held the answer.
_HELD_ANSWER_ADVICE = (
    "An intercept held the TLS attempt's answer until its time was up (the server had answered): " + _HOLD_ADVICE
)


def failure(cause: AttemptCause, detail: str) -> Failure:
    """The failure in one line, with the advice that fits its cause."""
    line, advice = ADVICE[cause]
    if cause is AttemptCause.HELD and detail.startswith(HELD_AFTER_SENDING):
        advice = _HELD_ANSWER_ADVICE
    return Failure(cause, line.format(detail=detail), advice)
