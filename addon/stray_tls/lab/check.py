"""A stand-in for the ESRS connectivity check (CECT / Unity NetworkCheck).

It does what the check does: absolute-form `GET https://host:port/` through an HTTP proxy, PASS on HTTP 200.
Anything else is a FAIL with what came back, decoded when it is TLS.  A 200 that only wraps TLS records (squid's
HTTP/0.9 answer of its own, or TLS as the body) is a FAIL too, and says so: a check that looks at the status
alone would pass there, and the ESRS connection would still fail.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..core.findings import Finding
from ..fieldkit.shapes import Shape, product, shape_of
from ..fieldkit.wire import Answer, describe, exchange

#: Answers whose HTTP status is a proxy's, around the server's answer: their 200 is no success.
WRAPPING = (Shape.WRAPPED_HTTP09, Shape.TLS_IN_BODY)


@dataclass
class CheckResult:
    url: str
    passed: bool
    answer: Answer
    finding: Finding | None
    saw: str  # what the check saw, from describe()
    seconds: float = 0.0  # from connect to the answer's end: what a latency costs, against the check's timeout


def run_check(proxy: tuple[str, int], host: str, port: int, timeout: float = 10.0) -> CheckResult:
    """One probe of the check: absolute-form `GET https://host:port/` through `proxy`."""
    url = f"https://{host}:{port}/"
    request = f"GET {url} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: esrs-fix-lab-check\r\n\r\n".encode()
    return _timed(url, proxy, request, timeout)


def run_plain_get(proxy: tuple[str, int], host: str, port: int, timeout: float = 10.0) -> CheckResult:
    """A plaintext client's request: absolute-form `GET http://host:port/` through `proxy` (lab scenario G)."""
    url = f"http://{host}:{port}/"
    request = f"GET {url} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: esrs-fix-lab-client\r\n\r\n".encode()
    return _timed(url, proxy, request, timeout)


def _timed(url: str, proxy: tuple[str, int], request: bytes, timeout: float) -> CheckResult:
    start = time.monotonic()
    answer = exchange(proxy, request, timeout)
    result = _result(url, answer)
    result.seconds = time.monotonic() - start
    return result


def _result(url: str, answer: Answer) -> CheckResult:
    saw, finding = describe(answer)
    shape = shape_of(answer, finding)
    if answer.status == 200 and shape in WRAPPING:
        who = product(answer) or "the proxy"
        held = finding.what_came if finding is not None else "an answer that is not HTTP"
        saw = f"the 200 is {who}'s wrapping of {held}, not the server's answer: {saw}"
    return CheckResult(url, shape is Shape.HTTP_OK, answer, finding, saw)
