"""`esrs-fix check` against the lab's faulty proxy, its well-behaved mode, and nothing at all."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from stray_tls.lab import servers

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
    assert p.returncode == 2 and "--timeout must be positive" in p.stderr
