"""A stand-in for the ESRS connectivity check (CECT / Unity NetworkCheck).

It does what the check does: absolute-form `GET https://host:port/` through an HTTP proxy, PASS on HTTP 200.
Anything else is a FAIL with what came back, decoded when it is TLS.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..findings import Finding
from ..wire import Answer, describe, exchange


@dataclass
class CheckResult:
    url: str
    passed: bool
    answer: Answer
    finding: Finding | None
    saw: str  # what the check saw, from describe()


def run_check(proxy: tuple[str, int], host: str, port: int, timeout: float = 10.0) -> CheckResult:
    """One probe of the check: absolute-form `GET https://host:port/` through `proxy`."""
    url = f"https://{host}:{port}/"
    request = f"GET {url} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: esrs-fix-lab-check\r\n\r\n".encode()
    answer = exchange(proxy, request, timeout)
    saw, finding = describe(answer)
    return CheckResult(url, answer.status == 200, answer, finding, saw)


def run_plain_get(proxy: tuple[str, int], host: str, port: int, timeout: float = 10.0) -> CheckResult:
    """A plaintext client's request: absolute-form `GET http://host:port/` through `proxy` (lab scenario G)."""
    url = f"http://{host}:{port}/"
    request = f"GET {url} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: esrs-fix-lab-client\r\n\r\n".encode()
    answer = exchange(proxy, request, timeout)
    saw, finding = describe(answer)
    return CheckResult(url, answer.status == 200, answer, finding, saw)
