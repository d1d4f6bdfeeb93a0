"""Why a TLS attempt failed (`mitm/causes.py`): mitmproxy's, OpenSSL's and esrs-fix's own words read back as causes,
and one line and one piece of advice for every cause."""

from __future__ import annotations

import pytest

from stray_tls.compat import End, Unanswered
from stray_tls.mitm import causes
from stray_tls.mitm.causes import AttemptCause, attempt_cause, failure, words_for


def test_a_tls_attempt_that_got_no_tls_back_is_its_own_cause() -> None:
    """mitmproxy's words when the server answered the ClientHello in ASCII, or closed while the handshake began."""
    assert attempt_cause("The remote server does not speak TLS.")[0] is AttemptCause.NOT_TLS
    assert attempt_cause("connection closed")[0] is AttemptCause.NOT_TLS
    # a close after the handshake, or one that ended an answer, is no such evidence
    ended = f"{causes.ENDED_UNANSWERED} (closed by the server)"
    assert attempt_cause(ended)[0] is AttemptCause.CLOSED
    assert attempt_cause("Connection reset by peer")[0] is AttemptCause.RESET
    assert AttemptCause.NOT_TLS.about_the_target  # shared with the waiters of the one attempt


@pytest.mark.parametrize(
    ("unanswered", "cause"),
    [
        (Unanswered(End.NOT_RESENDABLE, 3), AttemptCause.NOT_RESENDABLE),
        (Unanswered(End.ENDED, 3, "closed by the server"), AttemptCause.CLOSED),
        (Unanswered(End.HELD_ANSWER, 3), AttemptCause.HELD),
        (Unanswered(End.HELD_REQUEST, 3, "an intercept"), AttemptCause.HELD),
        (Unanswered(End.TIMED_OUT, 3), AttemptCause.TIMEOUT),
    ],
)
def test_esrs_fix_reads_back_the_words_it_wrote_for_a_replay_that_ended_unanswered(
    unanswered: Unanswered, cause: AttemptCause
) -> None:
    assert attempt_cause(words_for(unanswered)) == (cause, words_for(unanswered))


def test_every_end_of_a_replay_has_words() -> None:
    assert {e for e in End} == {u.end for u in (Unanswered(e, 1) for e in End) if words_for(u)}


def test_every_cause_has_its_line_and_advice() -> None:
    assert set(causes.ADVICE) == set(AttemptCause)
    for cause in AttemptCause:
        f = failure(cause, "DETAIL")
        assert f.cause is cause and "DETAIL" in f.message and f.advice.endswith((".", ")"))


def test_a_held_answer_gets_other_advice_than_a_held_request() -> None:
    answer = failure(AttemptCause.HELD, words_for(Unanswered(End.HELD_ANSWER, 2)))
    request = failure(AttemptCause.HELD, words_for(Unanswered(End.HELD_REQUEST, 2, "another addon's hook")))
    assert "the server had answered" in answer.advice and "never asked" in request.advice
    assert "not sent" in request.message and "had been sent" in answer.message
