"""Evidence before action (issue 22, item 1), with real mitmdump and plain-HTTP servers that count what reaches them.

A phrase in a body is no evidence: a plain-HTTP API whose 400 reflects nginx's words gets no TLS attempt, its client
gets the server's own 400, and nothing is remembered. A TLS attempt that gets no TLS back is evidence the other way:
a plain server serving nginx's whole page gets one attempt per request, its client gets that page as it came (as with
stock mitmproxy), and nothing is remembered against it.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from stray_tls.fieldkit.wire import Answer, exchange
from stray_tls.lab.servers import ALERT_TLS10, NGINX_400_BODY, free_port

from .plainpeer import PlainServer

pytestmark = pytest.mark.e2e

TIMEOUT = 20.0  # a bound on each client, not a speed claim
PHRASE = "The plain HTTP request was sent to HTTPS port"
#: nginx's whole page as nginx sends it (tests/realpeers.py's nginx, its Date and version left out).
NGINX_PAGE = (
    b"HTTP/1.1 400 Bad Request\r\nServer: nginx\r\nContent-Type: text/html\r\nContent-Length: %d\r\n"
    b"Connection: close\r\n\r\n%s" % (len(NGINX_400_BODY), NGINX_400_BODY)
)
#: A plain-HTTP API's 400: it reflects the field that was wrong, which here holds nginx's phrase.
REFLECTED = json.dumps({"error": "invalid value for 'note'", "value": PHRASE}).encode()
REFLECTED_400 = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
    % (len(REFLECTED), REFLECTED)
)
UPGRADE = ["--set", "esrs_upgrade=true", "--set", "esrs_upgrade_timeout=10", "--set", "esrs_upgrade_retry_after=30"]


def via_proxy(proxy_port: int, server_port: int, method: str, body: bytes = b"") -> tuple[Answer, bytes]:
    """A request through the proxy in regular mode; the answer, and the request the server should see."""
    head = (
        f"{method} http://127.0.0.1:{server_port}/notes HTTP/1.1\r\nHost: api.example\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return exchange(("127.0.0.1", proxy_port), head.encode() + body, TIMEOUT), body


def start(start_server: Callable, answer: bytes, on_hello: str = "http") -> PlainServer:
    server = PlainServer(lambda _request: answer, on_hello)
    start_server(server)
    return server


def test_a_reflected_phrase_in_a_plain_apis_400_is_passed_on_and_never_tried_over_tls(start_server, mitmdump) -> None:
    api = start(start_server, REFLECTED_400)
    m = mitmdump(["-p", str(port := free_port()), *UPGRADE])
    post = json.dumps({"note": PHRASE}).encode()
    first, _ = via_proxy(port, api.port, "POST", post)
    assert first.raw == REFLECTED_400  # the server's own 400, byte for byte
    assert len(api.requests) == 1 and api.requests[0].endswith(post)
    assert api.hellos == 0  # no TLS attempt: a phrase in a body is no evidence
    # the next request goes out as any other: nothing was remembered (no 30 s of 502s)
    second, _ = via_proxy(port, api.port, "POST", post)
    assert second.raw == REFLECTED_400
    assert len(api.requests) == 2 and api.hellos == 0
    assert not m.addon_warnings()[1:], m.log_tail()  # nothing detected (the first line says the addon loaded)


@pytest.mark.parametrize("on_hello", ["http", "close"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_plain_server_serving_nginxs_whole_page_gets_its_page_passed_on(
    start_server, mitmdump, on_hello: str, method: str
) -> None:
    """The page is nginx's, whole: the TLS attempt is made, gets no TLS back (a plaintext 400, or a close before
    any handshake message), and that is the evidence: the page goes to the client as it came, nothing remembered."""
    plain = start(start_server, NGINX_PAGE, on_hello)
    stock_server = start(start_server, NGINX_PAGE, on_hello)
    m = mitmdump(["-p", str(port := free_port()), *UPGRADE])
    mitmdump(["-p", str(stock_port := free_port())], addon=False)
    body = b'{"a": 1}' if method == "POST" else b""
    for n in (1, 2):
        answer, _ = via_proxy(port, plain.port, method, body)
        assert answer.raw == NGINX_PAGE, (n, answer.raw, m.log_tail())  # byte for byte, status and headers
        assert plain.hellos == n  # one attempt per request: the failure is not remembered, nor a success learned
        assert len(plain.requests) == n  # the next request reached the server: no blackout
        stock_answer, _ = via_proxy(stock_port, stock_server.port, method, body)
        assert stock_answer.raw == answer.raw
    assert plain.requests == stock_server.requests  # the server's plaintext requests, as stock sends them
    assert stock_server.hellos == 0
    why = "the server answered the ClientHello in plaintext" if on_hello == "http" else "before any TLS handshake"
    lines = [line for line in m.addon_warnings() if "got no TLS back" in line]
    assert len(lines) == 2 and all(why in line and "the server's own answer passed on" in line for line in lines)
    assert "learned" not in m.log() and "failed moments ago" not in m.log()


def test_tls_records_then_no_tls_back_keep_the_labelled_answer_and_nothing_is_remembered(
    start_server, mitmdump
) -> None:
    """The plaintext answer was a TLS alert, the TLS attempt got plaintext: the labelled 502 as before, saying so."""
    odd = start(start_server, ALERT_TLS10, "http")
    m = mitmdump(["-p", str(port := free_port()), *UPGRADE])
    for n in (1, 2):
        answer, _ = via_proxy(port, odd.port, "GET")
        assert answer.status == 502 and "got no TLS back" in (answer.label or ""), answer.raw
        assert (len(odd.requests), odd.hellos) == (n, n), m.log_tail()  # not remembered: the next one goes out
