"""`esrs-fix check` through a proxy that takes Kerberos in Negotiate (issue 25, part 1): single sign-on.

A real MIT KDC on loopback (tests/kdc.py: realm LAB.TEST, its own files) and a real squid whose Negotiate is
`negotiate_kerberos_auth -k KEYTAB -s HTTP/localhost@LAB.TEST`. The proxy is given as `http://localhost:PORT`, as a
domain's proxy is given by name: the client asks for a ticket for `HTTP/localhost`. Each check runs in an
environment that sees this realm alone (`KRB5_CONFIG`, `KRB5CCNAME` a cache of the test's own).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from stray_tls.fieldkit import proxyauth
from stray_tls.lab import proxies, servers
from tests.kdc import PASSWORD, REALM, SERVICE, USER, Kdc, kdc_fixture  # noqa: F401  (`kdc`: the session's KDC)

pytestmark = pytest.mark.e2e

if not proxyauth.kerberos_available():  # scripts/test installs them where libkrb5-dev is; .ci/run installs that
    pytest.skip(f"pyspnego's Kerberos side is not installed: {proxyauth.kerberos_install()}", allow_module_level=True)

PRINCIPAL = f"{USER}@{REALM}"


@pytest.fixture(scope="module")
def squid_kerberos(kdc: Kdc) -> Iterator[proxies.RealProxy]:
    """squid with Negotiate through Kerberos alone, its helper reading the KDC's keytab for HTTP/localhost."""
    work = Path(tempfile.mkdtemp(prefix="esrs-squid-kerberos-"))
    work.chmod(0o755)
    try:
        proxy = proxies.start(
            "squid",
            work / "squid",
            servers.free_port(),
            scheme="kerberos",
            kerberos=(kdc.keytab, SERVICE),
            env=kdc.env(),
        )
    except proxies.ProxyMissing as e:
        shutil.rmtree(work, ignore_errors=True)
        pytest.skip(str(e))
    try:
        yield proxy
    finally:
        proxy.stop()
        shutil.rmtree(work, ignore_errors=True)


def run(kdc: Kdc, ccache: Path, proxy: str, port: int, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    """`esrs-fix check` as text and as JSON, in the realm's environment with tickets in `ccache`."""
    env = {k: v for k, v in kdc.env(ccache).items() if k != "ESRS_FIX_PROXY_PASSWORD"}
    done = []
    for more in ([], ["--json"]):
        args = [sys.executable, "-m", "stray_tls.main", "check", "--proxy", proxy, "127.0.0.1", "--port", str(port)]
        done.append(
            subprocess.run(
                [*args, *extra, *more], capture_output=True, text=True, timeout=300, env=env, stdin=subprocess.DEVNULL
            )
        )
    text, as_json = done
    assert text.returncode == as_json.returncode, text.stdout + as_json.stdout + text.stderr + as_json.stderr
    assert "Traceback" not in text.stderr + as_json.stderr, text.stderr + as_json.stderr
    for stream in (text.stdout, text.stderr, as_json.stdout, as_json.stderr):
        assert PASSWORD not in stream
    return text, json.loads(as_json.stdout)


def _port(out: dict) -> dict:
    (port,) = out["ports"]
    return port


def _curl_connect(kdc: Kdc, ccache: Path, proxy: proxies.RealProxy, port: int) -> str:
    """The status of curl's CONNECT through the proxy with `--proxy-negotiate -U :` (the ticket alone)."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed: apt-get install curl")
    done = subprocess.run(
        [
            *(curl, "-sk", "-o", "/dev/null", "-w", "%{http_connect}", "--proxy-negotiate", "-U", ":"),
            *("-x", f"http://localhost:{proxy.port}", f"https://127.0.0.1:{port}/", "--max-time", "20"),
        ],
        capture_output=True,
        text=True,
        env=kdc.env(ccache),
        timeout=60,
    )
    return done.stdout


def test_curl_gets_through_with_the_ticket_alone(kdc, squid_kerberos, jsse_esrs, tmp_path) -> None:
    """The setup as a browser sees it: no ticket, a 407; `kinit` (the password on its standard input), through."""
    ccache = tmp_path / "ccache"
    assert _curl_connect(kdc, ccache, squid_kerberos, jsse_esrs.port) == "407"
    got = kdc.kinit(ccache)
    assert got.returncode == 0, got.stdout + got.stderr + kdc.log_tail()
    assert _curl_connect(kdc, ccache, squid_kerberos, jsse_esrs.port) == "200", squid_kerberos.log_tail()


def test_with_a_ticket_the_check_signs_on_and_names_kerberos(kdc, squid_kerberos, real_proxies, jsse_esrs, tmp_path):
    """With a ticket in the cache and no user or password, the check gets through the Negotiate proxy: the same
    probes' shapes as the same squid without authentication, the verdict naming Kerberos and the ticket's owner."""
    ccache = tmp_path / "ccache"
    assert kdc.kinit(ccache).returncode == 0
    plain, plain_out = run(kdc, ccache, real_proxies.get("squid").url, jsse_esrs.port)
    p, out = run(kdc, ccache, f"http://localhost:{squid_kerberos.port}", jsse_esrs.port)
    assert p.returncode == plain.returncode, p.stdout + p.stderr
    port = _port(out)
    assert port["auth"] == {
        "offered": ["Negotiate"],
        "unsupported": [],
        "used": "Negotiate",
        "mechanism": "Kerberos",
        "ticket": PRINCIPAL,
        "tried": {},
    }
    assert [probe["auth_scheme"] for probe in port["probes"]] == ["Negotiate"] * 3
    assert [probe["shape"] for probe in port["probes"]] == [x["shape"] for x in _port(plain_out)["probes"]]
    suffix = f" (authenticated to the proxy with Negotiate (Kerberos) as {PRINCIPAL}, single sign-on with the Kerberos "
    suffix += "ticket in the cache)"
    assert port["verdict"].endswith(suffix), port["verdict"]
    squid = re.compile(r"squid/[\d.]+")
    assert squid.sub("squid", port["verdict"].removesuffix(suffix)) == squid.sub("squid", _port(plain_out)["verdict"])


def test_without_a_ticket_the_verdict_names_negotiate_and_kinit(kdc, squid_kerberos, jsse_esrs, tmp_path) -> None:
    p, out = run(kdc, tmp_path / "ccache", f"http://localhost:{squid_kerberos.port}", jsse_esrs.port)
    assert p.returncode == 3, p.stdout + p.stderr
    port = _port(out)
    assert port["shape"] == "proxy_auth_required" and port["auth"]["used"] is None
    verdict = port["verdict"]
    assert verdict.startswith(
        "could not test: the proxy requires authentication and no credentials were given (nor a Kerberos ticket for "
        "its Negotiate) (HTTP 407 from the proxy (squid/"
    ), verdict
    assert "; it offers: Negotiate; tried: Negotiate (no Kerberos ticket in the cache: " in verdict
    assert f"(default cache: FILE:{tmp_path / 'ccache'})" in verdict
    assert (
        "; for Negotiate (Kerberos single sign-on, as a browser signs on), get a ticket first: kinit USER " in verdict
    )
    assert "; or give the right user and password: --proxy http://USER:PASSWORD@HOST:PORT" in verdict
    assert verdict in p.stdout


def test_with_a_user_and_password_and_no_ticket_the_check_gets_one(kdc, squid_kerberos, jsse_esrs, tmp_path) -> None:
    """--proxy-user and --proxy-password-file, an empty cache: pyspnego gets a ticket with the password (in memory:
    the cache stays empty) and the check gets through with Kerberos."""
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    ccache = tmp_path / "ccache"
    proxy = f"http://localhost:{squid_kerberos.port}"
    p, out = run(kdc, ccache, proxy, jsse_esrs.port, "--proxy-user", USER, "--proxy-password-file", str(secret))
    port = _port(out)
    assert port["shape"] != "proxy_auth_required", p.stdout + p.stderr
    assert port["auth"]["used"] == "Negotiate" and port["auth"]["mechanism"] == "Kerberos", port["auth"]
    assert port["auth"]["ticket"] is None and port["auth"]["tried"] == {}
    assert port["verdict"].endswith(f" (authenticated to the proxy with Negotiate (Kerberos) as user '{USER}')")
    assert kdc.klist(ccache).returncode != 0  # no ticket was stored: the password's stays in the check
    # a wrong password: the KDC refuses, and the verdict says so without the password
    secret.write_text("not-the-password\n")
    p, out = run(kdc, ccache, proxy, jsse_esrs.port, "--proxy-user", USER, "--proxy-password-file", str(secret))
    assert p.returncode == 3, p.stdout + p.stderr
    assert f"the proxy rejected the credentials given for user '{USER}'" in _port(out)["verdict"]
    assert "not-the-password" not in p.stdout + p.stderr


def test_a_page_that_echoes_the_ticket_never_shows_it(kdc, start_server, tmp_path) -> None:
    """The Kerberos token (an AP-REQ, which a thief could replay for minutes) is scrubbed from a page that echoes it,
    as a password is: the proxy here answers the ticket with a 403 whose page holds the token."""
    seen: list[bytes] = []

    def answer(head: bytes) -> bytes:
        seen.append(head)
        m = re.search(rb"Proxy-Authorization: Negotiate (\S+)", head)
        if m is None:
            return b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Negotiate\r\n\r\n"
        page = b"<p>you sent " + m.group(1) + b"</p>"
        return b"HTTP/1.1 403 Forbidden\r\nServer: echo\r\nContent-Length: %d\r\n\r\n%s" % (len(page), page)

    proxy = start_server(servers.ScriptedServer(answer, keep_alive=False))
    ccache = tmp_path / "ccache"
    assert kdc.kinit(ccache).returncode == 0
    p, out = run(kdc, ccache, f"http://localhost:{proxy.port}", 443, "--timeout", "5")
    tokens = [m.group(1).decode() for h in seen if (m := re.search(rb"Proxy-Authorization: Negotiate (\S+)", h))]
    assert tokens, seen
    for token in tokens:  # not even a piece of it (a page summary is cut short)
        for piece in (token, token[:40], token[200:240], token[-40:]):
            assert piece not in p.stdout + p.stderr + json.dumps(out)
    assert '(page: "you sent ***")' in _port(out)["verdict"], _port(out)["verdict"]
    assert _port(out)["auth"]["ticket"] == PRINCIPAL


def test_a_proxy_given_by_address_is_told_to_be_given_by_name(kdc, squid_kerberos, jsse_esrs, tmp_path) -> None:
    """A ticket is for the proxy's name: `http://127.0.0.1:PORT` asks the KDC for HTTP/127.0.0.1, which it does not
    know; the verdict says so in the KDC's words, and what to give instead."""
    ccache = tmp_path / "ccache"
    assert kdc.kinit(ccache).returncode == 0
    p, out = run(kdc, ccache, f"http://127.0.0.1:{squid_kerberos.port}", jsse_esrs.port)
    assert p.returncode == 3, p.stdout + p.stderr
    verdict = _port(out)["verdict"]
    assert verdict.startswith(
        "could not test: the Kerberos ticket in the cache did not get through, and no credentials were given"
    ), verdict
    assert (
        f"tried: Negotiate (the Kerberos ticket of {PRINCIPAL}: could not start Negotiate "
        f"with the Kerberos ticket in the cache: Server HTTP/127.0.0.1@{REALM} not found in Kerberos database; a "
        "Kerberos ticket is for the proxy's name (HTTP/NAME): give --proxy by its name, not 127.0.0.1)"
    ) in verdict
