"""How a request goes over TLS, and when: one route for the upgrade's attempt and for learned requests, filters
that read the body decided where the body is, and a learned target kept through answers that are not its own.

Real mitmdump on loopback; each target is a `RecordingServer` (plaintext gets the field alert, TLS gets a 200, the
lab's certificate for localhost and 127.0.0.1, trusted through ssl_verify_upstream_trusted_ca), which counts what
reached it in plaintext and over TLS.
"""

from __future__ import annotations

import socket
import ssl
import time
import types
from pathlib import Path

import pytest
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import tflow

from stray_tls.fieldkit.wire import Answer, exchange, send_and_read
from stray_tls.lab import servers
from stray_tls.lab.mitm import Mitmdump

from .test_upgrade import RecordingServer, plaintext

pytestmark = pytest.mark.e2e

TIMEOUT = 20.0  # a bound on each client, not a speed claim
BODY = b"the real server over TLS\n"


def tls_to_mitmproxy(port: int, sni: str, request: bytes) -> Answer:
    """One request over TLS to mitmproxy's listener, sending `sni` (mitmproxy's certificate is not checked)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=sni) as tls,
    ):
        return send_and_read(tls, request, time.monotonic() + TIMEOUT)


def reverse(
    mitmdump, target: str, cert: tuple[Path, Path], *extra: str, port: int | None = None
) -> tuple[Mitmdump, int]:
    port = port or servers.free_port()
    args = ["--mode", f"reverse:{target}@{port}", "--set", "esrs_upgrade=true"]
    args += ["--set", f"ssl_verify_upstream_trusted_ca={cert[0]}", *extra]
    return mitmdump(args), port


# -- one route


@pytest.mark.parametrize(
    ("mode", "keep_host_header", "name"),
    [
        ("regular", False, "10.0.0.7"),
        ("upstream:http://127.0.0.1:3128", False, "10.0.0.7"),
        ("transparent", False, "esrs.example"),
        ("socks5", False, "esrs.example"),
        ("reverse:http://10.0.0.7:443", False, "10.0.0.7"),
        ("reverse:http://10.0.0.7:443", True, "client.example"),
    ],
)
def test_the_route_names_the_server_as_mitmproxy_would_for_https(mode: str, keep_host_header: bool, name: str) -> None:
    from stray_tls.mitm.route import Route, tls_route

    f = tflow.tflow()
    f.client_conn.proxy_mode = ProxyMode.parse(mode)
    f.client_conn.sni = "client.example"
    f.request.host, f.request.port = "10.0.0.7", 443
    f.request.headers["Host"] = "esrs.example"
    f.request.headers["Proxy-Authorization"] = "Basic c2VjcmV0"
    route = tls_route(f, types.SimpleNamespace(keep_host_header=keep_host_header))
    assert route == Route(sni=name, origin_form=True)
    route.prepare(f.request)
    assert (f.request.scheme, f.request.authority, "Proxy-Authorization" in f.request.headers) == ("https", "", False)


def test_reverse_mode_with_a_tls_client_verifies_the_target_s_name_every_time(
    mitmdump, cert: tuple[Path, Path], start_server
) -> None:
    """The client speaks TLS to mitmproxy with SNI client.example; the reverse target is localhost, whose certificate
    is trusted. The upgrade and every learned request after it verify `localhost` (once the learned request sent the
    client's SNI, failed verification, forgot the target, and the answers flapped 200, 502, 200, 502)."""
    server = start_server(RecordingServer(cert, BODY))
    m, port = reverse(mitmdump, f"http://localhost:{server.port}", cert)
    request = b"GET / HTTP/1.1\r\nHost: client.example\r\nConnection: close\r\n\r\n"
    answers = [tls_to_mitmproxy(port, "client.example", request) for _ in range(4)]
    assert [a.status for a in answers] == [200] * 4, ([a.label for a in answers], m.log_tail())
    assert [a.body for a in answers] == [BODY] * 4
    assert [(a.label or "").split(";")[0] for a in answers] == ["upgraded"] + ["upgraded (learned)"] * 3
    assert (len(server.plaintext_bodies), server.tls_count) == (1, 4)  # learned once, never forgotten


# -- filters that read the body


@pytest.mark.parametrize(
    ("expr", "body"),
    [
        ("~bq buy", True),
        ("~b buy", True),
        ("~bs buy", True),
        ("~m POST & ~bq buy", True),
        ("~m POST & !(~d x | ~bq buy)", True),
        ("~m POST", False),
        ("~d x | ~u /y & !~h z", False),
    ],
)
def test_a_filter_that_reads_a_body_is_told_apart(expr: str, body: bool) -> None:
    from mitmproxy import flowfilter

    from stray_tls.mitm.decision import needs_body

    assert needs_body(flowfilter.parse(expr)) is body


def test_a_body_filter_sends_a_learned_target_s_matching_posts_over_tls(
    mitmdump, cert: tuple[Path, Path], start_server
) -> None:
    """esrs_filter='~bq buy': decided where the body exists, so a learned target's POSTs with 'buy' go over TLS at
    once (evaluated before the body, they all went out in plaintext first), and a request outside it does not."""
    server = start_server(RecordingServer(cert, BODY))
    m, port = reverse(mitmdump, f"http://127.0.0.1:{server.port}", cert, "--set", "esrs_filter=~bq buy")
    first = plaintext(port, "POST", body=b"buy")
    assert first.status == 200 and (first.label or "").startswith("upgraded; "), (first.label, m.log_tail())
    assert server.plaintext_bodies == [b"buy"]
    for _ in range(3):
        answer = plaintext(port, "POST", body=b"buy")
        assert answer.body == BODY and (answer.label or "").startswith("upgraded (learned); "), answer.label
    assert server.plaintext_bodies == [b"buy"]  # 0 plaintext POSTs after learning
    assert server.tls_requests == [("POST", b"buy")] * 4
    outside = plaintext(port, "POST", body=b"sell")  # outside the filter: plaintext, as if nothing was learned
    assert outside.status == 502, outside.label
    assert server.plaintext_bodies == [b"buy", b"sell"]


def test_a_streamed_body_is_decided_in_requestheaders_without_it(
    mitmdump, cert: tuple[Path, Path], start_server
) -> None:
    """As documented: mitmproxy sends a streamed request (stream_large_bodies) before the request hook, so a body
    filter is evaluated in requestheaders, without the body: `!~bq sell` matches a streamed POST of 'sell...'."""
    server = start_server(RecordingServer(cert, BODY))
    extra = ("--set", "esrs_filter=!~bq sell", "--set", "stream_large_bodies=10k")
    m, port = reverse(mitmdump, f"http://127.0.0.1:{server.port}", cert, *extra)
    assert (plaintext(port).label or "").startswith("upgraded; "), m.log_tail()  # a GET, no body: learned
    large = b"sell" + b"x" * 20_000  # over stream_large_bodies: streamed (the answers above were not)
    streamed = plaintext(port, "POST", body=large)
    assert streamed.body == BODY and (streamed.label or "").startswith("upgraded (learned); "), streamed.label
    assert server.plaintext_bodies == [b""] and server.tls_requests[-1] == ("POST", large)


# -- kept learned through answers that are not its own

KILL_AND_ANSWER = """
from mitmproxy import http


def request(flow: http.HTTPFlow) -> None:
    if flow.request.path.startswith("/script-answer"):
        flow.response = http.Response.make(203, b"a script's answer")
    elif flow.request.path.startswith("/kill"):
        flow.kill()
"""


def test_answers_that_are_not_the_target_s_leave_it_learned(
    mitmdump, cert: tuple[Path, Path], start_server, tmp_path: Path
) -> None:
    """block_list, map_local, a script's answer, a script's kill, mitmproxy's body_size_limit: none says anything about
    the target's TLS, so the next request still goes over TLS at once (these once made the target forgotten)."""
    server = start_server(RecordingServer(cert, BODY))
    mapped = tmp_path / "mapped.txt"
    mapped.write_bytes(b"a local file")
    script = tmp_path / "answer.py"
    script.write_text(KILL_AND_ANSWER)
    m, port = reverse(
        mitmdump,
        f"http://127.0.0.1:{server.port}",
        cert,
        "--set",
        "block_list=/~u blocked/403",
        "--set",
        f"map_local=|~u mapped|mapped|{mapped}",
        "--set",
        "body_size_limit=1k",
        "-s",
        str(script),
    )
    assert (plaintext(port).label or "").startswith("upgraded; "), m.log_tail()
    local = {"/blocked": 403, "/mapped": 200, "/script-answer": 203, "/kill": None}
    for path, status in local.items():
        head = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
        answer = exchange(("127.0.0.1", port), head, TIMEOUT)
        assert answer.status == status, (path, answer.label, m.log_tail())
        after = plaintext(port)
        assert after.body == BODY and (after.label or "").startswith("upgraded (learned); "), (path, after.label)
        assert len(server.plaintext_bodies) == 1, f"{path}: the target was forgotten ({m.log_tail()})"
    # mitmproxy's own limit: a request body over body_size_limit gets its 413, and says nothing about the target
    assert plaintext(port, "POST", body=b"x" * 2048).status == 413, m.log_tail()
    after = plaintext(port)
    assert (after.label or "").startswith("upgraded (learned); ") and len(server.plaintext_bodies) == 1, after.label
    assert server.tls_count == 2 + len(local)  # the upgrade, one learned request after each local answer, the last
    assert "forgotten" not in m.log()
