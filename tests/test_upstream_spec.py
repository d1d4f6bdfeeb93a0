"""`--mode upstream:https://PROXY` where PROXY speaks plain HTTP (mitmproxy issues 5399 and 6900): real mitmdump, real
squid on loopback.

Stock mitmproxy answers `The remote server does not speak TLS`. esrs-fix's line used to say `answered by unknown ...:
TLS sent to a port that speaks plain HTTP ... check the URL's scheme and port` for an `http://` URL: the wrong thing
to check. It names the upstream proxy, and the spec that works; the client's answer stays stock's.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable

import pytest

from stray_tls import compat
from stray_tls.core.findings import Kind
from stray_tls.lab import proxies, servers
from stray_tls.lab.mitm import Mitmdump

from .realproxies import RealProxies

ORIGIN_BODY = b"origin: plain HTTP\n"


@pytest.fixture
def squid(real_proxies: RealProxies) -> proxies.RealProxy:
    """A real squid on loopback, speaking plain HTTP, as a corporate proxy on port 3128 does (the session's)."""
    return real_proxies.get("squid")


@pytest.fixture
def origin(start_server: Callable[[servers.TCPServer], servers.TCPServer]) -> servers.TCPServer:
    """A plain HTTP server the request is for."""
    page = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(ORIGIN_BODY), ORIGIN_BODY)
    return start_server(servers.ScriptedServer(lambda head: page))


def through(port: int, url: str, curl: str) -> str:
    """What curl gets for `url` through the proxy on `port` (head and body)."""
    p = subprocess.run(
        [curl, "-sS", "-i", "-k", "--max-time", "30", "-x", f"http://127.0.0.1:{port}", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return p.stdout


def the_line(m: Mitmdump, url: str) -> str:
    [line] = [line for line in m.addon_warnings() if url in line and "upstream_not_tls" in line]
    return line


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_an_upstream_proxy_given_as_https_that_speaks_plain_http_is_named_with_the_spec_that_works(
    mitmdump: Callable[..., Mitmdump],
    squid: proxies.RealProxy,
    origin: servers.TCPServer,
    curl: str,
    scheme: str,
) -> None:
    proxy = f"127.0.0.1:{squid.port}"
    port = servers.free_port()
    m = mitmdump(["-p", str(port), "--mode", f"upstream:https://{proxy}", "--set", "ssl_insecure=true"])
    url = f"{scheme}://127.0.0.1:{origin.port}/status"
    answer = through(port, url, curl)
    # the client gets what stock mitmproxy gives it
    assert re.search(r"HTTP/\S+ 502", answer) and "The remote server does not speak TLS" in answer, answer
    line = the_line(m, url)
    assert f"TLS sent to the upstream proxy {proxy}, which speaks plain HTTP" in line
    assert f"`--mode upstream:https://{proxy}`" in line and f"`--mode upstream:http://{proxy}`" in line
    assert "unknown" not in line and "answered by" not in line and "check the URL's scheme" not in line


def test_the_spec_the_line_gives_works(
    mitmdump: Callable[..., Mitmdump], squid: proxies.RealProxy, origin: servers.TCPServer, curl: str
) -> None:
    port = servers.free_port()
    m = mitmdump(["-p", str(port), "--mode", f"upstream:https://127.0.0.1:{squid.port}"])
    url = f"http://127.0.0.1:{origin.port}/"
    through(port, url, curl)
    [spec] = re.findall(r"`--mode (upstream:http://[^`]+)`", the_line(m, url))
    fixed = servers.free_port()
    mitmdump(["-p", str(fixed), "--mode", spec])
    answer = through(fixed, url, curl)
    assert re.search(r"HTTP/\S+ 200", answer) and answer.endswith(ORIGIN_BODY.decode()), answer


# -- the words, unit by unit


@pytest.mark.parametrize(
    "message", ["The remote server does not speak TLS.", "[('SSL routines', '', 'wrong version number')]"]
)
@pytest.mark.parametrize("proxy", ["proxy.corp:3128", "[fd00::1]:3128"])
def test_the_proxys_plaintext_answer_names_the_proxy_and_the_spec(message: str, proxy: str) -> None:
    f = compat.finding_from_tls_error(message, proxy)
    assert f is not None and f.kind is Kind.UPSTREAM_NOT_TLS and not f.rewritable and not f.upgradable("GET")
    assert f.summary == f"TLS sent to the upstream proxy {proxy}, which speaks plain HTTP: {message}"
    assert (
        f"`--mode upstream:https://{proxy}`" in f.explanation and f"`--mode upstream:http://{proxy}`" in f.explanation
    )
    assert f.extra["upstream_proxy_spec"] == f"upstream:http://{proxy}"
    assert "check the URL's scheme" not in f.explanation
    # the server's port, not the proxy's: the words stay the URL's
    server = compat.finding_from_tls_error(message)
    assert server is not None and "check the URL's scheme and port" in server.explanation


def test_other_tls_failures_with_the_proxy_keep_their_own_words() -> None:
    message = "[('SSL routines', '', 'tlsv1 alert protocol version')]"
    assert compat.finding_from_tls_error(message, "proxy.corp:3128") == compat.finding_from_tls_error(message)
