"""`esrs-fix check` against the lab's faulty proxy, its well-behaved mode, and nothing at all."""

from __future__ import annotations

import base64
import html
import json
import os
import pty
import re
import select
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest

from stray_tls.fieldkit.diagnose import Credentials
from stray_tls.lab import proxies, servers
from stray_tls.lab.check import run_check
from tests.realproxies import PASSWORD, USER

pytestmark = pytest.mark.e2e


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stray_tls.main", "check", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def routes(cert, start_server) -> dict[tuple[str, int], tuple[str, int]]:
    a, b = start_server(servers.EsrsServer(cert)), start_server(servers.EsrsServer(cert))
    return {("esrs.lab", 443): ("127.0.0.1", a.port), ("esrs.lab", 8443): ("127.0.0.1", b.port)}


def test_faulty_proxy_is_diagnosed(routes, start_server) -> None:
    proxy = start_server(servers.FaultyProxy(routes))
    p = check("--proxy", f"http://127.0.0.1:{proxy.port}", "esrs.lab", "--timeout", "5")
    assert p.returncode == 1, p.stdout + p.stderr
    assert p.stdout.count(": FAIL") == 2
    assert (
        "verdict: the proxy forwarded the request in plaintext to a TLS port and relayed the server's answer "
        "(TLS alert: fatal unexpected_message (10), record version TLS 1.0); CONNECT works, so the server is "
        "reachable: fix the proxy's handling of https:// URLs or bypass the check"
    ) in p.stdout
    assert "TLSv1.3 handshake done; HTTP/1.1 200 OK" in p.stdout


def test_well_behaved_proxy_passes_and_json_agrees(routes, start_server) -> None:
    proxy = start_server(servers.FaultyProxy(routes, well_behaved=True))
    p = check("--proxy", f"127.0.0.1:{proxy.port}", "esrs.lab", "--json", "--port", "8443")
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads(p.stdout)
    assert out["outcome"] == "pass"
    (port,) = out["ports"]
    assert port["url"] == "https://esrs.lab:8443/" and port["probes"][0]["status"] == 200
    # the plaintext probe proves the port speaks TLS
    assert port["probes"][2]["finding"]["records"][0]["alert"]["description"] == 10


def test_nothing_listening_is_could_not_test() -> None:
    p = check("--proxy", f"http://127.0.0.1:{servers.free_port()}", "esrs.lab", "--port", "443")
    assert p.returncode == 3
    assert "could not test: cannot connect to the proxy 127.0.0.1:" in p.stdout and "Traceback" not in p.stderr


def test_bad_arguments_get_a_sentence() -> None:
    p = check("--proxy", "nonsense", "esrs.lab")
    assert p.returncode == 2 and "expected http://HOST:PORT" in p.stderr
    p = check("--proxy", "127.0.0.1:1", "esrs.lab", "--timeout", "0")
    assert p.returncode == 2 and "--timeout must be a positive number of seconds" in p.stderr


# -- real proxies, measured: what each answers to `GET https://127.0.0.1:PORT/` and to CONNECT ----------------------

JSSE_HEX = "15 03 03 00 02 02 0a"
JSSE_SUMMARY = "TLS alert: fatal unexpected_message (10), record version TLS 1.2"


def check_real(proxy_url: str, port: int, *extra: str, env: dict[str, str] | None = None, host: str = "127.0.0.1"):
    args = ["--proxy", proxy_url, host, "--port", str(port), "--timeout", "5", *extra]
    text = subprocess.run(
        [sys.executable, "-m", "stray_tls.main", "check", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    as_json = subprocess.run(
        [sys.executable, "-m", "stray_tls.main", "check", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert text.returncode == as_json.returncode, text.stdout + as_json.stdout
    return text, json.loads(as_json.stdout), as_json


def _port(out: dict) -> dict:
    (port,) = out["ports"]
    return port


@pytest.mark.parametrize("name", ["proxy.py", "pproxy"])
def test_proxies_that_relay_the_raw_alert(name, real_proxies, jsse_esrs) -> None:
    proxy = real_proxies.get(name)
    p, out, _ = check_real(proxy.url, jsse_esrs.port)
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"GET https:// (as the check)  no HTTP status: raw bytes {JSSE_HEX}, decoded {JSSE_SUMMARY}" in p.stdout
    assert (
        "verdict: the proxy forwarded the request in plaintext to a TLS port and relayed the server's answer "
        f"({JSSE_SUMMARY}); CONNECT works, so the server is reachable" in p.stdout
    )
    port = _port(out)
    assert port["outcome"] == "fail" and port["shape"] == "raw_tls"
    assert [probe["shape"] for probe in port["probes"]] == ["raw_tls", "tls_ok", "raw_tls"]
    assert port["probes"][0]["finding"]["raw_hex"] == "150303000202" + "0a"


def test_squid_with_a_cache_peer_wraps_the_alert_in_a_200_that_is_no_success(real_proxies, jsse_esrs) -> None:
    proxy = real_proxies.get("squid-peer")
    p, out, _ = check_real(proxy.url, jsse_esrs.port)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "the check would pass" not in p.stdout
    assert "HTTP/1.1 200 OK (X-Transformed-From: HTTP/0.9), body: raw bytes 15 03 03 00 02 02 0a" in p.stdout
    assert "verdict: the HTTP 200 is no success: the proxy (squid/" in p.stdout
    assert "the 200 is the proxy's wrapping of a TLS alert, not the server's answer" in p.stdout
    port = _port(out)
    assert port["outcome"] == "fail" and port["shape"] == "wrapped_http09"
    assert port["probes"][0]["status"] == 200 and port["probes"][0]["ok"] is False
    assert port["probes"][0]["finding"]["kind"] == "tls_wrapped_http09"
    assert port["probes"][1]["shape"] == "tls_ok"


def test_squids_wrapping_of_what_is_no_tls_record_is_no_success_either(start_server) -> None:
    # squid (cache_peer) wraps whatever it cannot parse as HTTP in its own 200, TLS or not: one squid, one peer each
    answers = {
        b"\x15\x03\x03\x00\x00": "which look like a TLS record but are not one (empty alert record",
        b"SSH-2.0-OpenSSH_9\r\n": "neither HTTP nor TLS",
    }
    origins = {_scripted(start_server, answer).port: words for answer, words in answers.items()}
    work = Path(tempfile.mkdtemp(prefix="esrs-squid-"))
    work.chmod(0o755)  # squid runs as the user 'proxy', which must reach its directory
    try:
        peers = [("127.0.0.1", port) for port in origins]
        squid = proxies.start("squid", work / "squid", servers.free_port(), peers=peers)
    except proxies.ProxyMissing as e:
        pytest.skip(str(e))
    try:
        for port, words in origins.items():
            p, out, _ = check_real(squid.url, port, "--timeout", "2")  # the TLS probes meet no TLS: they time out
            assert p.returncode == 1, p.stdout + p.stderr
            assert "the check would pass" not in p.stdout
            assert "HTTP/1.1 200 OK (X-Transformed-From: HTTP/0.9), body: raw bytes" in p.stdout
            assert "verdict: the HTTP 200 is no success: the proxy (squid/" in p.stdout and words in p.stdout
            result = _port(out)
            assert result["outcome"] == "fail" and result["shape"] == "wrapped_http09"
            assert result["probes"][0]["ok"] is False
    finally:
        squid.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_a_wrapped_incomplete_record_is_still_squids_wrapping(start_server) -> None:
    proxy = _scripted(
        start_server, b"HTTP/1.1 200 OK\r\nX-Transformed-From: HTTP/0.9\r\nContent-Length: 4\r\n\r\n\x15\x03\x03\x00"
    )
    p, out, _ = check_real(f"127.0.0.1:{proxy.port}", 443)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "the 200 is the proxy's wrapping of an incomplete TLS record, not the server's answer" in p.stdout
    assert _port(out)["probes"][0]["finding"]["kind"] == "tls_wrapped_http09"


def test_the_labs_check_fails_on_a_wrapping_of_bytes_that_are_no_tls_record(start_server) -> None:
    wrapped = b"HTTP/1.1 200 OK\r\nX-Transformed-From: HTTP/0.9\r\nContent-Length: 5\r\n\r\n\x15\x03\x03\x00\x00"
    proxy = _scripted(start_server, wrapped)
    result = run_check(("127.0.0.1", proxy.port), "esrs.lab", 443, timeout=5)
    assert not result.passed and result.finding is None
    assert result.saw.startswith("the 200 is the proxy's wrapping of an answer that is not HTTP, not the server's")


def test_squid_direct_speaks_tls_itself_and_answers_with_its_error_page(real_proxies, jsse_esrs) -> None:
    # measured: squid (5.7, GnuTLS) does TLS to https:// URLs itself; the stand-in closes without close_notify
    # and squid answers 502 with X-Squid-Error: ERR_READ_ERROR
    proxy = real_proxies.get("squid")
    p, out, _ = check_real(proxy.url, jsse_esrs.port)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "verdict: the proxy (squid/" in p.stdout and "answered with its own error page" in p.stdout
    assert "X-Squid-Error: ERR_" in p.stdout and "CONNECT works" in p.stdout
    port = _port(out)
    assert port["shape"] == "proxy_upstream_error" and port["probes"][0]["status"] == 502


def test_tinyproxy_refuses_its_own_address_and_fails_to_read_the_alert(real_proxies, jsse_esrs) -> None:
    proxy = real_proxies.get("tinyproxy")
    # 127.0.0.1 is tinyproxy's own address: it refuses the request itself (400)
    p, out, _ = check_real(proxy.url, jsse_esrs.port)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "verdict: the proxy (tinyproxy/" in p.stdout and "refused GET https:// itself: HTTP/1.1 400" in p.stdout
    assert "You tried to connect to the machine the proxy is running on" in p.stdout
    assert "the proxy will not fetch this https:// URL itself but tunnels it" in p.stdout
    assert _port(out)["shape"] == "proxy_refused"
    # by name, it fetches the URL in plaintext, cannot parse the alert, and says 503
    p, out, _ = check_real(proxy.url, jsse_esrs.port, host="localhost")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "HTTP/1.1 503 Could not retrieve all the headers" in p.stdout
    assert "the port speaks TLS (CONNECT then plaintext got TLS back)" in p.stdout
    assert _port(out)["shape"] == "proxy_upstream_error"
    # a port where nothing listens: its own 500, a failure to reach the server like a 502
    p, out, _ = check_real(proxy.url, servers.free_port(), host="localhost")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "HTTP/1.1 500 Unable to connect" in p.stdout and "it could not reach, verify or read the server" in p.stdout
    assert _port(out)["shape"] == "proxy_upstream_error" and _port(out)["product"].startswith("tinyproxy/")


def test_privoxy_refuses_absolute_https_urls(real_proxies, jsse_esrs) -> None:
    proxy = real_proxies.get("privoxy")
    p, out, _ = check_real(proxy.url, jsse_esrs.port)
    assert p.returncode == 1, p.stdout + p.stderr
    assert (
        "verdict: the proxy (it does not name itself) refused GET https:// itself: "
        "HTTP/1.1 400 Invalid header received from client" in p.stdout
    )
    port = _port(out)
    assert port["shape"] == "proxy_refused" and port["probes"][1]["shape"] == "tls_ok"


# -- credentials ---------------------------------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ESRS_FIX_PROXY_PASSWORD"}
    # no Kerberos ticket of the caller's: Negotiate's single sign-on finds an empty cache, whoever runs the tests
    return {**env, "KRB5CCNAME": "FILE:/nonexistent/esrs-fix-no-ticket", **extra}


def _no_password(password: str, *runs: subprocess.CompletedProcess[str]) -> None:
    """Neither the password, nor its percent-encoding, nor the user:password pair, nor the Basic token that carries
    it; nor any of them in hex (a finding's raw_hex in --json)."""
    pair = f"{USER}:{password}"
    token = base64.b64encode(pair.encode()).decode()
    for run in runs:
        for stream in (run.stdout, run.stderr):
            for secret in (password, quote(password, safe=""), pair, token):
                assert secret not in stream
                assert secret.encode().hex() not in stream


@pytest.mark.parametrize(("name", "shape"), [("squid-auth", "proxy_upstream_error"), ("proxy.py-auth", "raw_tls")])
def test_right_credentials_pass_through(name, shape, real_proxies, jsse_esrs) -> None:
    proxy = real_proxies.get(name)
    url = f"http://{quote(USER)}:{quote(PASSWORD, safe='')}@127.0.0.1:{proxy.port}"
    p, out, j = check_real(url, jsse_esrs.port, env=_env())
    assert p.returncode == 1, p.stdout + p.stderr
    assert _port(out)["shape"] == shape and "HTTP/1.1 407" not in p.stdout  # not "407": the port may hold it
    assert f"as user '{USER}'" in p.stderr
    _no_password(PASSWORD, p, j)
    # the same with --proxy-user and the password in the environment
    p, out, j = check_real(proxy.url, jsse_esrs.port, "--proxy-user", USER, env=_env(ESRS_FIX_PROXY_PASSWORD=PASSWORD))
    assert p.returncode == 1 and _port(out)["shape"] == shape, p.stdout + p.stderr
    _no_password(PASSWORD, p, j)


@pytest.mark.parametrize(("name", "challenge"), [("squid-auth", 'Basic realm="esrs-lab"'), ("proxy.py-auth", "Basic")])
def test_missing_or_wrong_credentials_get_the_407_verdict(name, challenge, real_proxies, jsse_esrs) -> None:
    proxy = real_proxies.get(name)
    p, out, j = check_real(proxy.url, jsse_esrs.port, env=_env())
    assert p.returncode == 3, p.stdout + p.stderr
    assert "could not test: the proxy requires authentication and no credentials were given" in p.stdout
    assert f"it offers: {challenge}; give the right user and password" in p.stdout
    assert _port(out)["shape"] == "proxy_auth_required" and _port(out)["outcome"] == "untested"
    wrong = "wr0ng:pa@ss"
    url = f"http://{USER}:{quote(wrong, safe='')}@127.0.0.1:{proxy.port}"
    p, out, j2 = check_real(url, jsse_esrs.port, env=_env())
    assert p.returncode == 3, p.stdout + p.stderr
    assert f"could not test: the proxy rejected the credentials given for user '{USER}' (HTTP 407" in p.stdout
    _no_password(wrong, p, j2)
    _no_password(PASSWORD, p, j, j2)


def test_proxy_user_without_a_password_is_a_sentence_not_a_prompt() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "stray_tls.main", "check", "--proxy", "127.0.0.1:1", "--proxy-user", "bob", "h"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 2 and "no password for proxy user 'bob': set ESRS_FIX_PROXY_PASSWORD" in p.stderr
    p = check("--proxy", "http://u:pw@127.0.0.1:1", "--proxy-user", "bob", "h")
    assert p.returncode == 2 and "not both" in p.stderr


def test_a_malformed_proxy_url_never_echoes_its_password() -> None:
    p = check("--proxy", "http://bob:hunter2@proxy.example", "esrs.lab")
    assert p.returncode == 2 and "http://bob:***@proxy.example" in p.stderr
    assert "hunter2" not in p.stderr + p.stdout


def _echoing(page: Callable[[str, str], bytes]) -> Callable[[bytes], bytes]:
    """A scripted proxy's answer that echoes the credentials it was sent: `page(token, password)`."""

    def answer(head: bytes) -> bytes:
        m = re.search(rb"Proxy-Authorization: Basic (\S+)", head)
        if m is None:  # credentials go only where a proxy asks for them
            return _ASK_BASIC
        token = m.group(1).decode()
        return page(token, base64.b64decode(token).decode().partition(":")[2])

    return answer


_ASK_BASIC = (
    b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="x"\r\nContent-Length: 0\r\n'
    b"Connection: close\r\n\r\n"
)


def _http(status: bytes, headers: bytes, body: str) -> bytes:
    data = body.encode()
    return b"HTTP/1.1 %s\r\n%sContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (status, headers, len(data), data)


def _text_400(token: str, password: str) -> bytes:
    # the echoed token straddles the summary's 160-character cut: only a scrub before the cut leaves no piece of it
    first = f"Rejected {USER}:{password} ({quote(password, safe='')}) for a bad request line; "
    first += "x" * (139 - len(first)) + f" Proxy-Authorization: Basic {token}"
    return _http(b"400 Bad Request", b"Server: EchoGate/1\r\nContent-Type: text/plain\r\n", first + "\nbye\n")


def _html_502(token: str, password: str) -> bytes:
    page = (
        f"<html><title>502 Bad Gateway</title><h1>Proxy-Authorization: Basic {token}</h1>"
        f"<p>user {USER} with password {html.escape(password)} could not reach the server</p></html>"
    )
    return _http(b"502 Bad Gateway", f"Via: 1.1 gw (EchoGate {password})\r\n".encode(), page)


def _plain_http_400(token: str, password: str) -> bytes:
    # nginx's phrase, but not nginx's page (that never echoes anything): a 400 of the proxy's own, not the server's
    page = f"<html><h1>400</h1><p>The plain HTTP request was sent to HTTPS port</p><pre>Basic {token} {password}</pre>"
    return _http(b"400 Bad Request", b"Server: nginx\r\n", page)


@pytest.mark.parametrize(
    ("page", "shape", "scrubbed"),
    [
        (
            _text_400,
            "proxy_refused",
            ['page: "Rejected *** (***) for a bad request line; xxx', 'xxx Proxy-Authorization: Basic ***")'],
        ),
        (
            _html_502,
            "proxy_upstream_error",
            [
                "the proxy (EchoGate ***) answered with its own error page instead of the server's: HTTP/1.1 502",
                'page: "502 Bad Gateway: Proxy-Authorization: Basic ***: user esrsuser with password *** could not',
            ],
        ),
        (_plain_http_400, "proxy_refused", ["the proxy (nginx) refused GET https:// itself: HTTP/1.1 400 Bad Request"]),
    ],
)
def test_a_page_that_echoes_the_credentials_never_prints_them(page, shape, scrubbed, start_server) -> None:
    proxy = start_server(servers.ScriptedServer(_echoing(page), keep_alive=False))
    url = f"http://{USER}:{quote(PASSWORD, safe='')}@127.0.0.1:{proxy.port}"
    p, out, j = check_real(url, 443, env=_env())
    assert p.returncode == 1, p.stdout + p.stderr
    assert all(words in p.stdout for words in scrubbed), p.stdout
    _no_password(PASSWORD, p, j)
    port = _port(out)
    assert port["shape"] == shape
    if page is not _plain_http_400:  # that page's summary ends before what it echoes
        assert "Basic ***" in port["verdict"] and port["verdict"] in p.stdout


TRICKY = 'it\'s "é"&<pw>'  # characters a page escapes in several ways, and one that is not ASCII


@pytest.mark.parametrize(
    "echoed",
    [
        TRICKY,
        html.escape(TRICKY),  # Python's way: &#x27; &quot; &amp; &lt; &gt;
        "it&#39;s &quot;&#233;&quot;&amp;&lt;pw&gt;",  # squid's html_quote: decimal references
        "it&apos;s &QUOT;&eacute;&quot;&amp;&lt;pw&gt;",  # named references, in either case where HTML has both
        'it&#x27;s "&#XE9;"&#038;<pw>',  # hexadecimal, upper-case X, a leading zero, some characters left as is
        "it&#39s &quot&#233&quot&amp&lt;pw&gt",  # no `;` where none is needed: html.unescape still reads them
        "it%27s+%22%E9%22%26%3Cpw%3E",  # a form's encoding: `+` for the space, latin-1 bytes
        quote(TRICKY, safe=""),
        quote(TRICKY, safe="").lower(),
        f"{USER}:{TRICKY}",
        base64.b64encode(f"{USER}:{TRICKY}".encode()).decode(),
    ],
)
def test_every_form_of_the_secret_a_page_may_echo_is_scrubbed(echoed: str) -> None:
    credentials = Credentials(USER, TRICKY)
    for encoding in ("utf-8", "latin-1"):
        page = f"<p>before {echoed} after</p>".encode(encoding)
        assert credentials.redact(page) == b"<p>before *** after</p>", (encoding, echoed)


def test_a_short_password_scrubs_only_itself() -> None:
    """The percent-encoding of `http` is case-insensitive in its hex digits only: `HTTP` is not the password."""
    credentials = Credentials("u", "http")
    assert credentials.redact(b"HTTP/1.1 200 OK; http; %68%74%74%70") == b"HTTP/1.1 200 OK; ***; ***"


def test_a_password_that_the_answer_holds_does_not_change_the_verdict(start_server) -> None:
    """The shape is judged on the answer as it came, the scrubbed copy is only shown: with the password `HTTP`, squid's
    `X-Transformed-From: HTTP/0.9` is still its wrapping (scrubbed first, the 200 would pass the check)."""
    wrapped = b"HTTP/1.1 200 OK\r\nX-Transformed-From: HTTP/0.9\r\nConnection: close\r\n\r\n" + bytes.fromhex(JSSE_HEX)
    proxy = _scripted(start_server, wrapped)
    p, out, _ = check_real(f"http://{USER}:HTTP@127.0.0.1:{proxy.port}", 443, env=_env())
    assert p.returncode == 1, p.stdout + p.stderr
    assert _port(out)["shape"] == "wrapped_http09" and _port(out)["outcome"] == "fail"
    assert "(as the check)  ***/1.1 200 OK, body: raw bytes 15 03 03" in p.stdout  # shown scrubbed, judged as it came


def test_a_short_password_does_not_hide_what_a_407_offers(start_server) -> None:
    """The 407's schemes are judged on the answer as it came: with the password `s`, `Basic` is still Basic (the
    credentials were rejected), not an unsupported `Ba***ic`; what is shown is scrubbed."""
    head = b'HTTP/1.1 407 Proxy Authentication Required\r\nServer: squid\r\nProxy-Authenticate: Basic realm="x"\r\n'
    proxy = _scripted(start_server, head + b"Content-Length: 0\r\nConnection: close\r\n\r\n")
    p, out, _ = check_real(f"http://{USER}:s@127.0.0.1:{proxy.port}", 443, env=_env())
    assert p.returncode == 3, p.stdout + p.stderr
    port = _port(out)
    assert port["shape"] == "proxy_auth_required"
    assert port["auth"] == {
        "offered": ['Ba***ic realm="x"'],
        "unsupported": [],
        "used": None,
        "mechanism": None,
        "ticket": None,
        "tried": {"Basic": "refused: the proxy answered the credentials with a 407"},
    }
    assert f"could not test: the proxy rejected the credentials given for user '{USER}'" in port["verdict"]
    assert port["product"] == "***quid"  # the Server header, found by its name, shown scrubbed


def test_a_squid_page_with_an_escaped_password_never_prints_it(start_server) -> None:
    """squid writes `'` as `&#39;` and `é` as `&#233;`; the page summary unescapes HTML after the scrub."""
    page = "<html><title>ERROR</title><h1>Access denied</h1><p>user esrsuser, password it&#39;s &quot;&#233;&quot;"
    page += "&amp;&lt;pw&gt; is not allowed</p></html>"
    proxy = _scripted(start_server, _http(b"403 Forbidden", b"Server: squid/5.7\r\n", page))
    p, _, j = check_real(f"http://{USER}:{quote(TRICKY, safe='')}@127.0.0.1:{proxy.port}", 443, env=_env())
    assert p.returncode == 1, p.stdout + p.stderr
    assert "user esrsuser, password *** is not allowed" in p.stdout
    _no_password(TRICKY, p, j)
    for stream in (p.stdout, j.stdout):
        assert "it's" not in stream and "&#39;" not in stream


@pytest.mark.parametrize(
    "args",
    [
        ["--prox=http://bob:hunter2@127.0.0.1:9", "h"],  # ambiguous: argparse quotes the whole argument
        ["--proxy", "http://bob:hunter2@127.0.0.1:9", "h", "extra", "http://bob:hunter2@127.0.0.1:9"],  # unplaced
        ["--proxy", "http://127.0.0.1:9", "http://bob:hunt%65r2@127.0.0.1:9"],  # the URL where the host goes
        ["--proxy", "http://127.0.0.1:9", "--port", "http://bob:hunt\\er2@127.0.0.1:9", "h"],  # quoted by repr()
        ["http://bob:hunt'er\t2@127.0.0.1:9"],  # an unknown command, quoted by repr() with its own quote kept
    ],
)
def test_an_argument_error_never_echoes_the_password(args: list[str]) -> None:
    command = ["check", *args] if args[0].startswith("-") else args
    p = subprocess.run([sys.executable, "-m", "stray_tls.main", *command], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "bob:***@127.0.0.1:9" in p.stderr
    assert "hunt" not in p.stdout + p.stderr


def test_an_unreachable_proxy_given_with_credentials_never_prints_them() -> None:
    port = servers.free_port()
    p, out, j = check_real(f"http://{USER}:{quote(PASSWORD, safe='')}@127.0.0.1:{port}", 443, env=_env())
    assert p.returncode == 3, p.stdout + p.stderr
    assert f"checking https://127.0.0.1:443/ through 127.0.0.1:{port} as user '{USER}' ..." in p.stderr
    assert f"verdict: could not test: cannot connect to the proxy 127.0.0.1:{port}: " in p.stdout
    assert _port(out)["shape"] == "unreachable"
    _no_password(PASSWORD, p, j)


# -- shapes a real proxy of ours does not produce: scripted "proxies" --------------------------------------------


_REFUSED_403 = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"


def _basic_then_403(seen: list[bytes]) -> Callable[[bytes], bytes]:
    """A scripted proxy's answer: a 407 asking for Basic to a request without credentials, a 403 to one with them
    (the credentials got through; the request did not), each head kept in `seen`."""

    def answer(head: bytes) -> bytes:
        seen.append(head)
        return _REFUSED_403 if b"Proxy-Authorization:" in head else _ASK_BASIC

    return answer


def _scripted(start_server, answer: bytes | list[bytes], **kw) -> servers.TCPServer:
    return start_server(servers.ScriptedServer(lambda head: answer, keep_alive=False, **kw))


@pytest.mark.parametrize(
    ("answer", "shape", "words"),
    [
        (b"\x15\x03\x03\x00\x00", "mangled", "they look like a TLS record but are not one (empty alert record"),
        (b"\x16\x07\x01\x00\x02\x02\x0a", "mangled", "record version major byte 0x07"),
        (b"", "closed", "the proxy closed the connection without a byte"),
        (b"SSH-2.0-OpenSSH_9\r\n", "not_http", "no HTTP answer to GET https://"),
    ],
)
def test_shapes_of_broken_answers(answer, shape, words, start_server) -> None:
    proxy = _scripted(start_server, answer)
    p, out, _ = check_real(f"127.0.0.1:{proxy.port}", 443)
    assert p.returncode == 1, p.stdout + p.stderr
    assert words in p.stdout
    assert _port(out)["shape"] == shape


class RefusingProxy(servers.FaultyProxy):
    """Tunnels as a correct proxy does (CONNECT), and answers every other request with its own `refusal`."""

    def __init__(self, refusal: bytes, routes: dict[tuple[str, int], tuple[str, int]]) -> None:
        super().__init__(routes)
        self.refusal = refusal

    def handle(self, conn: socket.socket) -> None:
        if conn.recv(7, socket.MSG_PEEK | socket.MSG_WAITALL) == b"CONNECT":
            super().handle(conn)
            return
        servers.read_head(conn)
        conn.sendall(self.refusal)


TUNNELS = (
    "it never reached the server; CONNECT works, so the server is reachable: the proxy will not fetch this https:// "
    "URL itself but tunnels it; make the check tunnel (CONNECT), or bypass the proxy for the check"
)


@pytest.mark.parametrize(
    ("refusal", "status", "verdict"),
    [
        (
            _http(
                b"405 Method Not Allowed",
                b"Server: CorpGate/2.1\r\nAllow: CONNECT\r\nContent-Type: text/html\r\n",
                "<html><title>405 Method Not Allowed</title><h1>Only CONNECT goes through this proxy</h1></html>",
            ),
            405,
            "verdict: the proxy (CorpGate/2.1) refused GET https:// itself: HTTP/1.1 405 Method Not Allowed (Allow: "
            'CONNECT; page: "405 Method Not Allowed: Only CONNECT goes through this proxy"); ' + TUNNELS,
        ),
        (
            _http(
                b"408 Request Timeout",
                b"Server: CorpGate/2.1\r\nContent-Type: text/plain\r\n",
                "Request timed out waiting for the client\n",
            ),
            408,
            "verdict: the proxy (CorpGate/2.1) gave up waiting for the request: HTTP/1.1 408 Request Timeout "
            '(page: "Request timed out waiting for the client"); '
            "the 408 is the proxy's own answer, not the server's: it did not take GET https:// as a complete request "
            "within its own timeout (it may not read absolute https:// URLs, or waits for more), so " + TUNNELS,
        ),
    ],
)
def test_a_proxy_that_refuses_with_405_or_408_but_tunnels(refusal, status, verdict, esrs, start_server) -> None:
    proxy = start_server(RefusingProxy(refusal, {("esrs.lab", 443): ("127.0.0.1", esrs().port)}))
    p, out, _ = check_real(f"127.0.0.1:{proxy.port}", 443, host="esrs.lab")
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"https://esrs.lab:443/: FAIL [proxy_refused]\n  GET https:// (as the check)  HTTP/1.1 {status} " in p.stdout
    assert verdict in p.stdout, p.stdout
    port = _port(out)
    assert port["outcome"] == "fail" and port["shape"] == "proxy_refused" and port["product"] == "CorpGate/2.1"
    assert [(probe["shape"], probe["status"]) for probe in port["probes"]] == [
        ("proxy_refused", status),
        ("tls_ok", 200),
        ("raw_tls", None),
    ]
    assert port["verdict"] == verdict.removeprefix("verdict: ")


def test_a_proxy_that_never_answers_times_out(start_server) -> None:
    proxy = _scripted(start_server, b"", hold=10)
    p = check("--proxy", f"127.0.0.1:{proxy.port}", "h", "--port", "443", "--timeout", "1", "--json")
    assert p.returncode == 1
    assert _port(json.loads(p.stdout))["shape"] == "timeout"


def test_407_names_schemes_esrs_fix_cannot_speak(start_server) -> None:
    proxy = _scripted(
        start_server,
        b"HTTP/1.1 407 Proxy Authentication Required\r\nServer: ProxySG\r\n"
        b'Proxy-Authenticate: Digest realm="corp", nonce="a,b", qop="auth"\r\nContent-Length: 0\r\n\r\n',
    )
    p, out, _ = check_real(f"127.0.0.1:{proxy.port}", 443)
    assert p.returncode == 3, p.stdout + p.stderr
    assert (
        'it offers: Digest realm="corp", nonce="a,b", qop="auth"; not supported by esrs-fix check: Digest (it speaks '
        "Negotiate, NTLM, Basic)" in p.stdout
    )
    assert "HTTP 407 from the proxy (ProxySG)" in p.stdout
    assert "test from a host the proxy lets through without authentication" in p.stdout
    assert "give the right user and password" not in p.stdout  # nothing on offer that esrs-fix speaks
    port = _port(out)
    assert port["shape"] == "proxy_auth_required" and port["product"] == "ProxySG"
    assert port["auth"] == {
        "offered": ['Digest realm="corp", nonce="a,b", qop="auth"'],
        "unsupported": ["Digest"],
        "used": None,
        "mechanism": None,
        "ticket": None,
        "tried": {},
    }
    # credentials given to a proxy that takes none of the schemes: not "rejected", but of no use
    p = check("--proxy", f"http://u:pw@127.0.0.1:{proxy.port}", "h", "--port", "443")
    assert p.returncode == 3
    assert "the proxy takes none of the schemes esrs-fix check speaks, so those given for user 'u' could not work" in (
        p.stdout
    )


def test_a_proxy_that_never_challenges_gets_each_scheme_tried_in_a_browsers_order(start_server) -> None:
    """A proxy that offers NTLM and Negotiate but answers every first token with the same bare 407: both are tried,
    Negotiate first, and the verdict says how each ended; no traceback."""
    seen: list[bytes] = []
    ask = (
        b"HTTP/1.1 407 Proxy Authentication Required\r\nServer: ProxySG\r\nProxy-Authenticate: NTLM\r\n"
        b'Proxy-Authenticate: Negotiate\r\nProxy-Authenticate: Digest realm="corp", nonce="a,b", qop="auth"\r\n'
        b"Content-Length: 0\r\n\r\n"
    )

    def answer(head: bytes) -> bytes:
        seen.append(head)
        return ask

    proxy = start_server(servers.ScriptedServer(answer, keep_alive=False))
    p, out, _ = check_real(f"127.0.0.1:{proxy.port}", 443)
    assert p.returncode == 3, p.stdout + p.stderr
    assert 'it offers: NTLM; Negotiate; Digest realm="corp", nonce="a,b", qop="auth"' in p.stdout
    assert "not supported by esrs-fix check: Digest (it speaks Negotiate, NTLM, Basic)" in p.stdout
    assert "give the right user and password" in p.stdout
    seen.clear()
    p, out, _ = check_real(f"http://CORP%5Cu:pw@127.0.0.1:{proxy.port}", 443, env=_env())
    assert p.returncode == 3 and "Traceback" not in p.stderr, p.stdout + p.stderr
    assert (
        "could not test: the proxy rejected the credentials given for user 'CORP\\u' (HTTP 407 from the proxy "
        "(ProxySG)); it offers: NTLM; Negotiate; Digest"
    ) in p.stdout
    assert (
        "; tried: Negotiate (refused: the proxy answered its first Negotiate message with a 407 and no challenge); "
        "NTLM (refused: the proxy answered its first NTLM message with a 407 and no challenge)"
    ) in p.stdout
    schemes = [re.findall(rb"Proxy-Authorization: (\w+)", h) for h in seen[:3]]
    assert schemes == [[], [b"Negotiate"], [b"NTLM"]]  # of the text run: bare, then as a browser would
    assert _port(out)["auth"]["tried"].keys() == {"Negotiate", "NTLM"}


def test_the_password_prompt_on_a_terminal(start_server) -> None:
    seen: list[bytes] = []
    proxy = start_server(servers.ScriptedServer(_basic_then_403(seen), keep_alive=False))
    argv = [sys.executable, "-m", "stray_tls.main", "check", "--proxy", f"127.0.0.1:{proxy.port}"]
    argv += ["--proxy-user", "bob", "h", "--port", "443", "--timeout", "5"]
    pid, fd = pty.fork()
    if pid == 0:  # the child: the check, on the terminal
        os.environ.pop("ESRS_FIX_PROXY_PASSWORD", None)
        os.execv(sys.executable, argv)
    said = b""
    try:
        deadline = time.monotonic() + 60
        while b"password for proxy user 'bob': " not in said and time.monotonic() < deadline:
            if select.select([fd], [], [], 1)[0]:
                said += os.read(fd, 4096)
        os.write(fd, b"typed-secret\n")
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 1)[0]:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # the terminal closed with the child
                    break
                if not chunk:
                    break
                said += chunk
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 1, said  # the 403 the proxy gives once authenticated
    token = base64.b64encode(b"bob:typed-secret").decode()
    assert len(seen) == 4 and all(f"Proxy-Authorization: Basic {token}\r\n".encode() in h for h in seen[1:])
    assert b"typed-secret" not in said and token.encode() not in said  # the prompt does not echo it


@pytest.mark.parametrize(
    ("answer", "shape", "words"),
    [
        (
            b"HTTP/1.0 200 OK\r\nContent-Length: 7\r\n\r\n\x15\x03\x01\x00\x02\x02\x0a",
            "tls_in_body",
            "the HTTP 200 is no success: its body is the server's raw TLS answer (TLS alert: fatal unexpected_message",
        ),
    ],
)
def test_verdicts_of_answers_that_wrap_tls(answer, shape, words, start_server) -> None:
    proxy = _scripted(start_server, answer)
    p, out, _ = check_real(f"127.0.0.1:{proxy.port}", 443)
    assert p.returncode == 1 and words in p.stdout, p.stdout
    assert _port(out)["shape"] == shape


def test_connect_works_but_the_servers_tls_handshake_fails(start_server) -> None:
    def answer(head: bytes) -> bytes:
        if head.startswith(b"CONNECT"):  # the tunnel, then the "server" refuses the ClientHello with an alert
            return b"HTTP/1.1 200 Connection established\r\n\r\n" + bytes.fromhex("15 03 03 00 02 02 28")
        return b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n"

    proxy = start_server(servers.ScriptedServer(answer, keep_alive=False))
    p, out, _ = check_real(f"127.0.0.1:{proxy.port}", 443)
    assert p.returncode == 1, p.stdout
    assert (
        "CONNECT works, but the TLS handshake with the server failed (HTTP/1.1 200 Connection established; "
        "TLS handshake failed: alert handshake_failure (40))" in p.stdout
    )
    assert "upstream" not in p.stdout.split("CONNECT, then TLS", 1)[1].splitlines()[0]
    assert _port(out)["probes"][1]["shape"] == "tls_failed"


def test_the_servers_own_400_page_through_a_real_proxy(real_proxies, real_server) -> None:
    nginx = real_server("nginx")
    proxy = real_proxies.get("proxy.py")
    p, out, _ = check_real(proxy.url, nginx.address[1])
    assert p.returncode == 1, p.stdout + p.stderr
    assert (
        'the proxy sent the request in plaintext and the server said so (HTTP 400 from nginx: "The plain HTTP '
        'request was sent to HTTPS port"); CONNECT works, so the server is reachable: fix the proxy' in p.stdout
    )
    assert _port(out)["shape"] == "server_plain_http_400"


def test_credentials_go_on_every_probe(start_server) -> None:
    """Only where the proxy asks for them (the first request goes without: a proxy that wants NTLM must never see a
    Basic password), then on every probe at once: the scheme that got through is remembered."""
    seen: list[bytes] = []
    start = start_server(servers.ScriptedServer(_basic_then_403(seen), keep_alive=False))
    p = check("--proxy", f"http://u%40corp:p%3Aw@127.0.0.1:{start.port}", "h", "--port", "443")
    assert p.returncode == 1, p.stdout + p.stderr
    token = base64.b64encode(b"u@corp:p:w").decode()
    assert [h.split(b" ", 1)[0] for h in seen] == [b"GET", b"GET", b"CONNECT", b"CONNECT"]
    assert b"Proxy-Authorization" not in seen[0]
    assert all(f"Proxy-Authorization: Basic {token}\r\n".encode() in h for h in seen[1:])
    assert "(authenticated to the proxy with Basic as user 'u@corp')" in p.stdout
    assert "p:w" not in p.stdout + p.stderr and token not in p.stdout + p.stderr


def test_an_ipv6_target_and_a_password_that_is_no_utf8(start_server) -> None:
    seen: list[bytes] = []
    start = start_server(servers.ScriptedServer(_basic_then_403(seen), keep_alive=False))
    env = {k: v for k, v in os.environb.items() if k != b"ESRS_FIX_PROXY_PASSWORD"}
    env[b"ESRS_FIX_PROXY_PASSWORD"] = b"se\xffcret"
    args = ["--proxy", f"127.0.0.1:{start.port}", "--proxy-user", "u", "::1", "--port", "443"]
    p = subprocess.run(
        [sys.executable, "-m", "stray_tls.main", "check", *args],
        capture_output=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 1 and b"Traceback" not in p.stderr, p.stderr
    token = base64.b64encode(b"u:se\xffcret")
    assert [h.split(b"\r\n", 2)[:2] for h in seen] == [
        [b"GET https://[::1]:443/ HTTP/1.1", b"Host: [::1]:443"],
        [b"GET https://[::1]:443/ HTTP/1.1", b"Host: [::1]:443"],
        [b"CONNECT [::1]:443 HTTP/1.1", b"Host: [::1]:443"],
        [b"CONNECT [::1]:443 HTTP/1.1", b"Host: [::1]:443"],
    ]
    assert all(b"Proxy-Authorization: Basic " + token + b"\r\n" in h for h in seen[1:])
    assert b"https://[::1]:443/" in p.stdout and token not in p.stdout + p.stderr


# -- answers found by a review: the server's own status, old TLS, portals, interim answers, bad input -------------


class StatusServer(servers.TCPServer):
    """A TLS server answering every `GET` with `status` (a server behind a correct proxy that refuses `/`)."""

    def __init__(self, cert, status: bytes) -> None:
        super().__init__()
        self.status = status
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert[0]), str(cert[1]))

    def handle(self, conn) -> None:
        with self.context.wrap_socket(conn, server_side=True) as tls:
            servers.read_head(tls)
            tls.sendall(b"HTTP/1.1 %s\r\nServer: Apache-Coyote/1.1\r\nContent-Length: 0\r\n\r\n" % self.status)


def test_the_servers_own_refusal_is_not_blamed_on_the_proxy(cert, start_server) -> None:
    server = start_server(StatusServer(cert, b"403 Forbidden"))
    proxy = start_server(servers.FaultyProxy({("esrs.lab", 443): ("127.0.0.1", server.port)}, well_behaved=True))
    p = check("--proxy", f"127.0.0.1:{proxy.port}", "esrs.lab", "--port", "443", "--timeout", "5")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "verdict: the server itself answers HTTP/1.1 403 Forbidden" in p.stdout
    assert "refused GET https:// itself" not in p.stdout


def test_a_tls10_only_server_behind_the_proxy_is_reachable(cert, start_server) -> None:
    old = start_server(servers.EsrsServer(cert, servers.EsrsBehaviour(tls10_only=True)))
    proxy = start_server(servers.FaultyProxy({("esrs.lab", 443): ("127.0.0.1", old.port)}))
    p = check("--proxy", f"127.0.0.1:{proxy.port}", "esrs.lab", "--port", "443", "--timeout", "5")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "CONNECT works, so the server is reachable" in p.stdout and "fix the proxy's handling" in p.stdout


def test_a_login_portal_redirect_says_where_it_points(start_server) -> None:
    portal = b"HTTP/1.1 302 Found\r\nLocation: http://login.corp.example/portal?u=1\r\nContent-Length: 0\r\n\r\n"
    proxy = _scripted(start_server, portal)
    p = check("--proxy", f"127.0.0.1:{proxy.port}", "esrs.lab", "--port", "443", "--timeout", "3")
    assert p.returncode == 1
    assert "Location: http://login.corp.example/portal?u=1: probably the proxy's login or consent page" in p.stdout


def test_an_interim_100_continue_is_not_the_answer(start_server) -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    proxy = _scripted(start_server, answer)
    p = check("--proxy", f"127.0.0.1:{proxy.port}", "esrs.lab", "--port", "443", "--timeout", "3", "--json")
    assert p.returncode == 0, p.stdout
    assert _port(json.loads(p.stdout))["probes"][0]["status"] == 200


def test_a_password_that_looks_like_a_scheme_is_still_redacted() -> None:
    p = check("--proxy", "http://bob:x://y@proxy.example", "esrs.lab")
    assert p.returncode == 2 and "x://y" not in p.stdout + p.stderr and "bob:***@" in p.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--proxy", "127.0.0.1:70000", "esrs.lab"], "port 70000 is not a TCP port"),
        (["--proxy", "127.0.0.1:3128", "esrs.lab", "--port", "70000"], "--port 70000 is not a TCP port"),
        (["--proxy", "127.0.0.1:3128", "esrs..lab"], "'esrs..lab' is not a host name"),
        (["--proxy", "127.0.0.1:3128", "a b"], "'a b' is not a host name or an IP address"),
        (["--proxy", "127.0.0.1:3128", ""], "'' is not a host name or an IP address"),
        (["--proxy", "127.0.0.1:3128", "::1::2"], "'::1::2' is not a host name or an IP address"),
        (["--proxy", "socks5://127.0.0.1:1080", "esrs.lab"], "only http:// proxies are supported"),
        (["--proxy", "http://[::1", "esrs.lab"], "expected http://HOST:PORT"),
        (["--proxy", "::1", "esrs.lab"], "IPv6 address in brackets"),
        (["--proxy", "127.0.0.1:3128", "esrs.lab", "--timeout", "nan"], "--timeout must be a positive number"),
        (["--proxy", "127.0.0.1:3128", "esrs.lab", "--timeout", "inf"], "--timeout must be a positive number"),
    ],
)
def test_bad_ports_hosts_and_schemes_get_a_sentence(args: list[str], words: str) -> None:
    p = check(*args)
    assert p.returncode == 2 and words in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_an_endless_answer_is_read_only_so_far(start_server) -> None:
    from stray_tls.fieldkit import wire

    flood = start_server(servers.ScriptedServer(lambda head: [b"\x17\x03\x03\x40\x00" + b"x" * 16384] * 256, gap=0))
    answer = wire.exchange(("127.0.0.1", flood.port), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 20)
    assert wire.MAX_ANSWER <= len(answer.raw) < wire.MAX_ANSWER + 65536 and not answer.timed_out


def test_the_password_file_and_its_mistakes(tmp_path, start_server) -> None:
    """--proxy-password-file: its first line is the password (a line end is not part of it); an unreadable file, a
    file beside a password in the URL, or a file without a user get a sentence that names no password."""
    seen: list[bytes] = []
    proxy = start_server(servers.ScriptedServer(_basic_then_403(seen), keep_alive=False))
    secret = tmp_path / "password"
    secret.write_bytes(b"pa ss:w\xc3\xb6rd\r\nsecond line\n")
    p = check("--proxy", f"127.0.0.1:{proxy.port}", "--proxy-user", "bob", "--proxy-password-file", str(secret), "h")
    assert p.returncode == 1, p.stdout + p.stderr
    token = base64.b64encode("bob:pa ss:wörd".encode()).decode()
    assert f"Proxy-Authorization: Basic {token}\r\n".encode() in seen[1]
    assert "wörd" not in p.stdout + p.stderr and token not in p.stdout + p.stderr
    missing = tmp_path / "nowhere"
    p = check("--proxy", "127.0.0.1:9", "--proxy-user", "bob", "--proxy-password-file", str(missing), "h")
    assert p.returncode == 2 and f"cannot read --proxy-password-file {missing}: No such file" in p.stderr
    p = check("--proxy", "http://bob:hunter2@127.0.0.1:9", "--proxy-password-file", str(secret), "h")
    assert p.returncode == 2 and "either in --proxy or with --proxy-password-file, not both" in p.stderr
    assert "hunter2" not in p.stdout + p.stderr
    p = check("--proxy", "127.0.0.1:9", "--proxy-password-file", str(secret), "h")
    assert p.returncode == 2 and "--proxy-password-file needs a user: --proxy-user USER" in p.stderr
