"""The verdict table of `esrs-fix check` (`fieldkit/verdicts.py`): every shape of a failing answer has its words, or
the general ones on purpose; the real answers behind each shape are tested end to end in test_diagnose.py."""

from __future__ import annotations

import pytest

from stray_tls.core import findings
from stray_tls.fieldkit import verdicts
from stray_tls.fieldkit.shapes import CheckOutcome, Probe, Shape
from stray_tls.fieldkit.wire import Answer

ALERT = bytes.fromhex("15 03 01 00 02 02 0a")

#: The shapes said by a table entry of their own, and the words each verdict begins with.
OWN_WORDS = {
    Shape.WRAPPED_HTTP09: "the HTTP 200 is no success",
    Shape.TLS_IN_BODY: "the HTTP 200 is no success: its body is the server's raw TLS answer",
    Shape.RAW_TLS: "the proxy forwarded the request in plaintext to a TLS port",
    Shape.SERVER_PLAIN_HTTP_400: "the proxy sent the request in plaintext and the server said so",
    Shape.PROXY_REFUSED: "the proxy (it does not name itself) refused GET https:// itself",
    Shape.PROXY_UPSTREAM_ERROR: "the proxy (it does not name itself) answered with its own error page",
    Shape.MANGLED: "no HTTP answer to GET https://: ",
    Shape.CLOSED: "the proxy closed the connection without a byte",
    Shape.TIMEOUT: "no answer to GET https:// within 7 s",
}
#: Shapes that are no failure of their own (a pass, the 407, the tunnel probes', nothing to talk to), and those said
#: in the general words (an HTTP status that is not 200, bytes that are neither HTTP nor TLS).
NOT_IN_THE_TABLE = {
    Shape.HTTP_OK,
    Shape.PROXY_AUTH_REQUIRED,
    Shape.TLS_OK,
    Shape.TLS_FAILED,
    Shape.UNREACHABLE,
    Shape.HTTP_OTHER,
    Shape.NOT_HTTP,
}


def test_every_shape_is_in_the_table_or_left_out_on_purpose() -> None:
    assert set(verdicts._VERDICTS) == set(OWN_WORDS)
    assert set(OWN_WORDS) | NOT_IN_THE_TABLE == set(Shape) and not set(OWN_WORDS) & NOT_IN_THE_TABLE


def _probe(shape: Shape) -> Probe:
    answer = Answer(b"", status_line="HTTP/1.1 200 OK", status=200)
    finding = None
    if shape in (Shape.RAW_TLS, Shape.TLS_IN_BODY, Shape.WRAPPED_HTTP09):
        finding = findings.from_response_head(ALERT)
    elif shape is Shape.SERVER_PLAIN_HTTP_400:
        finding = findings.Finding(findings.Kind.PLAIN_HTTP_400, findings.Confidence.HIGH, "x", detail="the page")
    if shape is Shape.PROXY_REFUSED:
        answer = Answer(b"", status_line="HTTP/1.1 403 Forbidden", status=403)
    elif shape is Shape.PROXY_UPSTREAM_ERROR:
        answer = Answer(b"", status_line="HTTP/1.1 502 Bad Gateway", status=502)
    status = answer.status if shape not in (Shape.MANGLED, Shape.CLOSED, Shape.TIMEOUT) else None
    return Probe("absolute", "what came", False, finding, status, shape=shape, answer=answer)


@pytest.mark.parametrize("shape", sorted(OWN_WORDS))
def test_each_failing_shape_gets_its_own_words(shape: Shape) -> None:
    tunnel = Probe("connect", "HTTP 204 over TLS", True, status=204, shape=Shape.TLS_OK)  # not the same answer
    outcome, text = verdicts.verdict(_probe(shape), tunnel, timeout=7)
    assert outcome is CheckOutcome.FAIL
    assert text.startswith(OWN_WORDS[shape]), text
    if shape is not Shape.PROXY_REFUSED:  # a refusal says how to get through instead
        assert text.endswith(("CONNECT works, so the server is reachable", "or bypass the check")), text


def test_a_pass_and_the_general_words() -> None:
    tunnel = Probe("connect", "refused", False, status=None, shape=Shape.CLOSED)
    ok = Probe("absolute", "HTTP 200", True, status=200, shape=Shape.HTTP_OK)
    assert verdicts.verdict(ok, tunnel)[0] is CheckOutcome.PASS
    other = Probe("absolute", "HTTP 418", False, status=418, shape=Shape.HTTP_OTHER)
    assert verdicts.verdict(other, tunnel)[1].endswith(
        "answered HTTP 418 instead of 200; CONNECT does not work either (refused)"
    )
    junk = Probe("absolute", "raw bytes 00", False, shape=Shape.NOT_HTTP)
    assert (
        verdicts.verdict(junk, tunnel)[1]
        == "no HTTP answer to GET https:// (raw bytes 00); CONNECT does not work either (refused)"
    )
