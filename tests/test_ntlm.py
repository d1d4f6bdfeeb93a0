"""`esrs-fix check` through proxies that authenticate with NTLM and Negotiate (issue 19, part 1), at field latency too.

The proxy is a real squid with Debian's `ntlm_fake_auth` (tests/realproxies.py: `squid-ntlm`, `-ntlm-peer`,
`-ntlm-peer-300ms`, `-negotiate`): it runs the NTLM exchange for real (NEGOTIATE, the 407 with its CHALLENGE, the
AUTHENTICATE, on one kept-alive connection) and lets only USER through, in any domain; it does not check the
password (the fake helper cannot), so a wrong user stands for wrong credentials.  Each verdict is compared with the
one the same squid gives without authentication (`squid`, `squid-peer`): authentication must change nothing but
the words that name it.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from urllib.parse import quote

import pytest

from stray_tls.fieldkit import diagnose, proxyauth
from stray_tls.fieldkit.diagnose import Credentials
from stray_tls.lab import servers
from stray_tls.lab.latency import LatencyRelay
from tests.realproxies import PASSWORD, USER

pytestmark = pytest.mark.e2e

DOMAIN_USER = f"CORP\\{USER}"
#: The proxy URL's userinfo for the domain user: the backslash percent-encoded, as URLs do.
URL_USER = f"CORP%5C{USER}:{quote(PASSWORD, safe='')}"
AUTHENTICATED = f"(authenticated to the proxy with NTLM as user 'CORP\\{USER}')"


def _env(**extra: str) -> dict[str, str]:
    import os

    # no Kerberos ticket of the caller's: Negotiate's single sign-on finds an empty cache, whoever runs the tests
    no_ticket = {"KRB5CCNAME": "FILE:/nonexistent/esrs-fix-no-ticket"}
    return {**{k: v for k, v in os.environ.items() if k != "ESRS_FIX_PROXY_PASSWORD"}, **no_ticket, **extra}


def run(proxy: str, port: int, *extra: str, timeout: str | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    """`esrs-fix check` as text and as JSON (two runs); both must agree on the exit status."""
    args = ["check", "--proxy", proxy, "127.0.0.1", "--port", str(port), *extra]
    args += ["--timeout", timeout] if timeout else []
    done = []
    for more in ([], ["--json"]):
        done.append(
            subprocess.run(
                [sys.executable, "-m", "stray_tls.main", *args, *more],
                capture_output=True,
                text=True,
                timeout=300,
                env=_env(),
                stdin=subprocess.DEVNULL,
            )
        )
    text, as_json = done
    assert text.returncode == as_json.returncode, text.stdout + as_json.stdout + text.stderr + as_json.stderr
    assert "Traceback" not in text.stderr + as_json.stderr, text.stderr + as_json.stderr
    out = json.loads(as_json.stdout)
    _no_secret(text, as_json)
    return text, out


def _no_secret(*runs: subprocess.CompletedProcess) -> None:
    """The password in no output (text, JSON, errors): as typed, percent-encoded, in a Basic token, or in hex."""
    for r in runs:
        for stream in (r.stdout, r.stderr):
            for secret in (PASSWORD, quote(PASSWORD, safe=""), base64.b64encode(PASSWORD.encode()).decode()):
                assert secret not in stream
                assert secret.encode().hex() not in stream


def _port(out: dict) -> dict:
    (port,) = out["ports"]
    return port


def _verdict_without_auth(out: dict) -> str:
    """The same verdict as the squid without authentication gives, but for the last words naming the scheme."""
    verdict = _port(out)["verdict"]
    assert verdict.endswith(" " + AUTHENTICATED), verdict
    return re.sub(r"squid/[\d.]+", "squid", verdict.removesuffix(" " + AUTHENTICATED))


# -- through squid with ntlm_fake_auth -----------------------------------------------------------------------------


def test_a_good_proxy_with_ntlm_passes_and_names_ntlm(real_proxies, real_server) -> None:
    """squid fetches https:// itself (TLS to nginx): the check would pass, through NTLM as without authentication."""
    nginx = real_server("nginx")
    plain, plain_out = run(real_proxies.get("squid").url, nginx.address[1])
    proxy = real_proxies.get("squid-ntlm")
    p, out = run(f"http://{URL_USER}@127.0.0.1:{proxy.port}", nginx.address[1])
    assert plain.returncode == p.returncode, plain.stdout + p.stdout
    assert p.returncode == 0 and "the check would pass" in p.stdout, p.stdout + p.stderr
    assert _verdict_without_auth(out) == re.sub(r"squid/[\d.]+", "squid", _port(plain_out)["verdict"])
    port = _port(out)
    assert port["auth"] == {
        "offered": ["NTLM"],
        "unsupported": [],
        "used": "NTLM",
        "mechanism": None,  # NTLM by itself: what Negotiate carried is said for Negotiate alone
        "ticket": None,
        "tried": {},
    }
    assert [probe["auth_scheme"] for probe in port["probes"]] == ["NTLM", "NTLM", "NTLM"]
    assert [probe["shape"] for probe in port["probes"]] == [p["shape"] for p in _port(plain_out)["probes"]]
    assert f"as user 'CORP\\{USER}'" in p.stderr


def test_a_faulty_proxy_with_ntlm_names_the_failure(real_proxies, jsse_esrs, tmp_path) -> None:
    """squid with a cache_peer sends GET in plaintext to the TLS port: the same failure as without authentication,
    the user from --proxy-user and the password from --proxy-password-file this time."""
    plain, plain_out = run(real_proxies.get("squid-peer").url, jsse_esrs.port)
    proxy = real_proxies.get("squid-ntlm-peer")
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    p, out = run(proxy.url, jsse_esrs.port, "--proxy-user", DOMAIN_USER, "--proxy-password-file", str(secret))
    assert p.returncode == plain.returncode == 1, p.stdout + p.stderr
    port = _port(out)
    assert port["shape"] == _port(plain_out)["shape"] == "wrapped_http09"
    assert "wrapped it in an HTTP/0.9 answer of its own" in port["verdict"]
    assert _verdict_without_auth(out) == re.sub(r"squid/[\d.]+", "squid", _port(plain_out)["verdict"])
    assert port["auth"]["used"] == "NTLM"


def test_missing_or_wrong_credentials_get_a_407_verdict_naming_ntlm(real_proxies, jsse_esrs) -> None:
    proxy = real_proxies.get("squid-ntlm")
    p, out = run(proxy.url, jsse_esrs.port)
    assert p.returncode == 3, p.stdout + p.stderr
    assert "could not test: the proxy requires authentication and no credentials were given" in p.stdout
    assert "it offers: NTLM; give the right user and password" in p.stdout
    assert _port(out)["auth"] == {
        "offered": ["NTLM"],
        "unsupported": [],
        "used": None,
        "mechanism": None,
        "ticket": None,
        "tried": {},
    }
    # a user the proxy does not let through (the fake helper takes any password: a wrong user is wrong credentials)
    p, out = run(f"http://CORP%5Cintruder:{quote(PASSWORD, safe='')}@127.0.0.1:{proxy.port}", jsse_esrs.port)
    assert p.returncode == 3, p.stdout + p.stderr
    assert (
        "could not test: the proxy rejected the credentials given for user 'CORP\\intruder' (HTTP 407 from the proxy "
        "(squid/"
    ) in p.stdout
    assert "it offers: NTLM; tried: NTLM (refused: the proxy answered the credentials with a 407)" in p.stdout
    port = _port(out)
    assert port["shape"] == "proxy_auth_required" and port["outcome"] == "untested"
    assert port["auth"]["tried"] == {"NTLM": "refused: the proxy answered the credentials with a 407"}


def test_a_proxy_offering_negotiate_and_ntlm_gets_a_verdict(real_proxies, jsse_esrs) -> None:
    """squid offers Negotiate first, then NTLM; its Negotiate cannot take the SPNEGO token a client without a Kerberos
    ticket sends (its Kerberos side has no keytab): the check falls back to NTLM, as a browser does, and says so."""
    proxy = real_proxies.get("squid-negotiate")
    p, out = run(f"http://{URL_USER}@127.0.0.1:{proxy.port}", jsse_esrs.port)
    assert p.returncode in (0, 1), p.stdout + p.stderr  # a verdict on the check, whatever it is
    port = _port(out)
    assert port["auth"]["offered"] == ["Negotiate", "NTLM"] and port["auth"]["used"] == "NTLM"
    assert list(port["auth"]["tried"]) == ["Negotiate"]
    assert "as user 'CORP\\esrsuser'; tried first: Negotiate (refused: " in port["verdict"]
    # without credentials: what is offered, the Kerberos ticket looked for (there is none in this cache), and how to
    # get one or give credentials
    p, out = run(proxy.url, jsse_esrs.port)
    assert p.returncode == 3 and "it offers: Negotiate; NTLM; tried: Negotiate (" in p.stdout, p.stdout
    assert "get a ticket first: kinit USER" in p.stdout and "; or give the right user and password" in p.stdout


# -- at field latency: 300 ms between the proxy and the server, default timeouts -------------------------------------


def test_at_field_latency_the_faulty_proxy_gets_the_same_verdict(real_proxies, jsse_esrs) -> None:
    fast, fast_out = run(f"http://{URL_USER}@127.0.0.1:{real_proxies.get('squid-ntlm-peer').port}", jsse_esrs.port)
    proxy = real_proxies.get("squid-ntlm-peer-300ms")
    relay = real_proxies.relays["squid-ntlm-peer-300ms"]
    p, out = run(f"http://{URL_USER}@127.0.0.1:{proxy.port}", relay.port)
    assert p.returncode == fast.returncode == 1, p.stdout + p.stderr
    assert _port(out)["shape"] == _port(fast_out)["shape"] == "wrapped_http09"
    assert [x["shape"] for x in _port(out)["probes"]] == [x["shape"] for x in _port(fast_out)["probes"]]
    assert _port(out)["verdict"].replace(str(relay.port), "PORT") == _port(fast_out)["verdict"].replace(
        str(jsse_esrs.port), "PORT"
    )


def test_at_field_latency_the_good_proxy_passes(real_proxies, real_server, start_server) -> None:
    nginx = real_server("nginx")
    relay = start_server(LatencyRelay(nginx.address, 0.3))
    proxy = real_proxies.get("squid-ntlm")
    p, out = run(f"http://{URL_USER}@127.0.0.1:{proxy.port}", relay.port)
    assert p.returncode == 0, p.stdout + p.stderr
    assert _port(out)["verdict"].startswith("the check would pass") and _port(out)["auth"]["used"] == "NTLM"
    assert [x["shape"] for x in _port(out)["probes"]] == ["http_ok", "tls_ok", "server_plain_http_400"]


# -- without pyspnego ----------------------------------------------------------------------------------------------


def test_without_pyspnego_an_ntlm_proxy_gets_a_sentence_naming_the_package(real_proxies, jsse_esrs, monkeypatch):
    monkeypatch.setitem(sys.modules, "spnego", None)  # `import spnego` raises ImportError, as where it is missing
    assert not proxyauth.spnego_available()
    proxy = real_proxies.get("squid-ntlm")
    result = diagnose.check_port(
        ("127.0.0.1", proxy.port), "127.0.0.1", jsse_esrs.port, 5.0, credentials=Credentials(USER, "pw")
    )
    assert result.outcome is diagnose.CheckOutcome.UNTESTED
    assert (
        "could not test: the proxy asks for NTLM, which esrs-fix check speaks only with pyspnego installed (HTTP 407 "
        "from the proxy (squid/"
    ) in result.verdict
    assert f"NTLM needs the Python package pyspnego: {proxyauth.spnego_install()}" in result.verdict
    assert result.to_dict()["auth"] == {
        "offered": ["NTLM"],
        "unsupported": ["NTLM"],
        "used": None,
        "mechanism": None,
        "ticket": None,
        "tried": {},
    }
    # and without credentials: the same package named
    result = diagnose.check_port(("127.0.0.1", proxy.port), "127.0.0.1", jsse_esrs.port, 5.0)
    assert f"NTLM needs the Python package pyspnego: {proxyauth.spnego_install()}" in result.verdict


# -- what is sent, and what is never shown ---------------------------------------------------------------------------

#: squid's CHALLENGE to a NEGOTIATE (both UNICODE and OEM set: squid's helper echoes the client's flags).
SQUID_CHALLENGE = "TlRMTVNTUAACAAAACQAJAK6qqqo3ggjinScqz4soD/oAAAAAAAA6AFdPUktHUk9VUA=="


class EchoingNtlmProxy(servers.TCPServer):
    """Runs the NTLM exchange on one connection as squid does, then answers the AUTHENTICATE with a 403 page that
    echoes the request (its Proxy-Authorization) in every form a page may: as is, percent-encoded, HTML-escaped."""

    def __init__(self) -> None:
        super().__init__()
        self.heads: list[bytes] = []
        #: the NTLM messages each connection carried, in order: 0 (none), 1 (NEGOTIATE), 3 (AUTHENTICATE)
        self.messages: dict[int, list[int]] = {}

    def handle(self, conn) -> None:
        messages = self.messages.setdefault(len(self.messages), [])
        while head := servers.read_head(conn):
            self.heads.append(head)
            m = re.search(rb"Proxy-Authorization: NTLM (\S+)", head)
            messages.append(base64.b64decode(m.group(1))[8] if m else 0)
            if m is None:
                conn.sendall(_407(b"NTLM"))
            elif base64.b64decode(m.group(1))[8:9] == b"\x01":
                conn.sendall(_407(b"NTLM " + SQUID_CHALLENGE.encode()))
            else:
                token = m.group(1).decode()
                page = f"<p>{token}</p><p>{quote(token, safe='')}</p><pre>{head.decode()}</pre>".encode()
                conn.sendall(
                    b"HTTP/1.1 403 Forbidden\r\nServer: echo\r\nContent-Length: %d\r\n\r\n%s" % (len(page), page)
                )


def _407(challenge: bytes) -> bytes:
    return (
        b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: " + challenge + b"\r\n"
        b"Content-Length: 0\r\n\r\n"
    )


def test_the_ntlm_exchange_keeps_its_connection_and_its_token_is_never_shown(start_server) -> None:
    """NEGOTIATE, CHALLENGE and AUTHENTICATE on one connection, then the request on it; the AUTHENTICATE (from which a
    password could be guessed offline) is scrubbed from a page that echoes it, as the password is."""
    proxy = start_server(EchoingNtlmProxy())
    p, out = run(f"http://{URL_USER}@127.0.0.1:{proxy.port}", 443)
    assert p.returncode == 1, p.stdout + p.stderr
    tokens = [m.group(1).decode() for h in proxy.heads if (m := re.search(rb"Proxy-Authorization: NTLM (\S+)", h))]
    authenticate = [t for t in tokens if base64.b64decode(t)[8:9] == b"\x03"]
    assert authenticate, proxy.heads
    for token in authenticate:
        for shown in (p.stdout, p.stderr, json.dumps(out)):
            assert token not in shown and quote(token, safe="") not in shown
            assert token.encode().hex() not in shown
    assert '(page: "***")' in _port(out)["verdict"], _port(out)["verdict"]  # both echoes, scrubbed
    # the first request bare, then per probe NEGOTIATE and AUTHENTICATE on a connection of their own (twice: the text
    # run and the JSON run)
    assert list(proxy.messages.values()) == [[0], [1, 3], [1, 3], [1, 3]] * 2
    assert _port(out)["auth"]["used"] == "NTLM"


def test_a_challenge_with_both_encodings_is_answered_in_unicode() -> None:
    challenge = base64.b64decode(SQUID_CHALLENGE)
    assert challenge[20] & 3 == 3
    fixed = proxyauth._unicode_only(challenge)
    assert fixed[20] & 3 == 1 and fixed[:20] == challenge[:20] and fixed[24:] == challenge[24:]
    assert proxyauth._unicode_only(fixed) == fixed  # a server that chose is left as it chose


def test_the_offers_are_ordered_as_a_browser_orders_them() -> None:
    offer = proxyauth.Offer.of(['Basic realm="x"', "NTLM", "Digest nonce=1", "negotiate"], spnego=True)
    assert offer.usable == [proxyauth.Scheme.NEGOTIATE, proxyauth.Scheme.NTLM, proxyauth.Scheme.BASIC]
    assert offer.unsupported == ["Digest"] and offer.need_spnego == []
    offer = proxyauth.Offer.of(['Basic realm="x"', "NTLM", "Negotiate"], spnego=False)
    assert offer.usable == [proxyauth.Scheme.BASIC]
    assert offer.need_spnego == [proxyauth.Scheme.NEGOTIATE, proxyauth.Scheme.NTLM]


# -- a challenge in a chunked 407 (issue 25, part 2) ---------------------------------------------------------------


def _chunked_407(challenge: bytes) -> bytes:
    """A 407 whose page comes in chunks: bytes after the head that a reader of the head alone leaves on the wire."""
    page = b"<html><title>407</title><p>Cache Access Denied</p></html>"
    chunks = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (20, page[:20], len(page) - 20, page[20:])
    return (
        b"HTTP/1.1 407 Proxy Authentication Required\r\nServer: chunky\r\nProxy-Authenticate: " + challenge + b"\r\n"
        b"Content-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
    )


class ChunkedNtlmProxy(servers.FaultyProxy):
    """NTLM as squid runs it, every 407 chunked (the challenge's too), the AUTHENTICATE checked for real by pyspnego's
    NTLM server against `NTLM_USER_FILE`; once through, it tunnels (CONNECT) and answers GET https:// with a 200."""

    def __init__(self, routes: dict[tuple[str, int], tuple[str, int]]) -> None:
        super().__init__(routes)
        #: per connection, the NTLM message each request carried: 0 (none), 1 (NEGOTIATE), 3 (AUTHENTICATE)
        self.messages: list[list[int]] = []

    def handle(self, conn) -> None:
        import spnego

        seen: list[int] = []
        self.messages.append(seen)
        server = spnego.server(protocol="ntlm")
        while head := servers.read_head(conn):
            m = re.search(rb"Proxy-Authorization: NTLM (\S+)", head)
            token = base64.b64decode(m.group(1)) if m else b""
            seen.append(token[8] if len(token) > 8 else 0)
            if not token:
                conn.sendall(_chunked_407(b"NTLM"))
                continue
            if token[8] == 1:
                conn.sendall(_chunked_407(b"NTLM " + base64.b64encode(server.step(token) or b"")))
                continue
            try:
                server.step(token)
            except Exception:  # a wrong password, or bytes that are no AUTHENTICATE: refused as squid refuses
                conn.sendall(_chunked_407(b"NTLM"))
                return
            method, target = head.split(b" ")[:2]
            if method != b"CONNECT":
                conn.sendall(b"HTTP/1.1 200 OK\r\nServer: chunky\r\nContent-Length: 2\r\n\r\nok")
                continue
            host, _, port = target.decode().rpartition(":")
            with self._dial(host, int(port)) as upstream:
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                servers._pipe(conn, upstream, self.idle)
            return


def test_a_chunked_407_challenge_on_connect_keeps_the_exchange_in_step(esrs, start_server, tmp_path, monkeypatch):
    """The challenge in a chunked 407 to CONNECT: its chunks are read with it, so the proxy's answer to the
    AUTHENTICATE is read as that (not the chunks left over): both CONNECT probes get through, on the connection of
    their NEGOTIATE."""
    from spnego._ntlm_raw.crypto import lmowfv1, ntowfv1

    users = tmp_path / "ntlm-users"  # smbpasswd's form: the password (which holds a colon) as its hashes
    users.write_text(f"CORP\\{USER}:1000:{lmowfv1(PASSWORD).hex()}:{ntowfv1(PASSWORD).hex()}:[U]:LCT-00000000\n")
    monkeypatch.setenv("NTLM_USER_FILE", str(users))
    server = esrs()
    proxy = start_server(ChunkedNtlmProxy({("esrs.lab", 443): ("127.0.0.1", server.port)}))
    result = diagnose.check_port(
        ("127.0.0.1", proxy.port), "esrs.lab", 443, 5.0, credentials=Credentials(DOMAIN_USER, PASSWORD)
    )
    shapes = [(p.name, p.shape, p.scheme) for p in result.probes]
    assert shapes == [
        ("GET https:// (as the check)", diagnose.Shape.HTTP_OK, proxyauth.Scheme.NTLM),
        ("CONNECT, then TLS", diagnose.Shape.TLS_OK, proxyauth.Scheme.NTLM),
        ("CONNECT, then plaintext", diagnose.Shape.RAW_TLS, proxyauth.Scheme.NTLM),
    ], [p.what for p in result.probes]
    assert all(p.ok for p in result.probes), [p.what for p in result.probes]
    # the first request bare, then each probe's NEGOTIATE and AUTHENTICATE on one connection
    assert proxy.messages == [[0], [1, 3], [1, 3], [1, 3]]
    assert result.outcome is diagnose.CheckOutcome.PASS and result.to_dict()["auth"]["tried"] == {}


class NegotiateNtlmProxy(ChunkedNtlmProxy):
    """Negotiate alone, answered by pyspnego's SPNEGO server with NTLM inside (as a domain proxy answers a client that
    has no Kerberos ticket for it): the verdict names NTLM inside Negotiate."""

    def handle(self, conn) -> None:
        import spnego

        seen: list[int] = []
        self.messages.append(seen)
        server = spnego.server(protocol="negotiate")
        while head := servers.read_head(conn):
            m = re.search(rb"Proxy-Authorization: Negotiate (\S+)", head)
            seen.append(1 if m else 0)
            if m is None:
                conn.sendall(_chunked_407(b"Negotiate"))
                continue
            try:
                out = server.step(base64.b64decode(m.group(1)))
            except Exception:
                conn.sendall(_chunked_407(b"Negotiate"))
                return
            if not server.complete:
                conn.sendall(_chunked_407(b"Negotiate " + base64.b64encode(out or b"")))
                continue
            if head.startswith(b"CONNECT "):  # a tunnel to nowhere: it closes at once
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\nServer: chunky\r\nContent-Length: 2\r\n\r\nok")


def test_ntlm_inside_negotiate_is_named_so(start_server, tmp_path, monkeypatch) -> None:
    from spnego._ntlm_raw.crypto import lmowfv1, ntowfv1

    users = tmp_path / "ntlm-users"
    users.write_text(f"CORP\\{USER}:1000:{lmowfv1(PASSWORD).hex()}:{ntowfv1(PASSWORD).hex()}:[U]:LCT-00000000\n")
    monkeypatch.setenv("NTLM_USER_FILE", str(users))
    proxy = start_server(NegotiateNtlmProxy({}))
    result = diagnose.check_port(
        ("127.0.0.1", proxy.port), "esrs.lab", 443, 5.0, credentials=Credentials(DOMAIN_USER, PASSWORD)
    )
    assert result.probes[0].shape is diagnose.Shape.HTTP_OK, result.verdict
    assert result.verdict.endswith(f" (authenticated to the proxy with NTLM inside Negotiate as user 'CORP\\{USER}')")
    assert result.to_dict()["auth"]["mechanism"] == "NTLM" and result.to_dict()["auth"]["used"] == "Negotiate"
    assert proxy.messages[:2] == [[0], [1, 1]]  # bare, then the SPNEGO token and its answer on one connection
