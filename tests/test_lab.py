"""The lab as users run it, and its components alone."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from stray_tls.lab import servers
from stray_tls.lab.check import run_check

pytestmark = pytest.mark.e2e


ALERT = "TLS alert: fatal unexpected_message (10), record version TLS 1.0"


def test_every_lab_scenario_behaves_and_says_what_the_addon_did(tmp_path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "stray_tls.main", "lab", "--json", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    result = json.loads(p.stdout)
    rows = result["rows"]
    assert result["passed"] and {r["scenario"] for r in rows} == {"A", "B", "C", "D", "E1", "E2", "F", "G", "H"}
    assert all(r["ok"] for r in rows), rows
    by = {(r["scenario"], r["url"]): r for r in rows}
    a = by[("A", "https://esrs.lab:443/")]
    assert "raw bytes 15 03 01 00 02 02 0a" in a["saw"] and a["logged"] == "-"
    # the "logged" column is what the addon wrote in its JSON Lines report, in these exact words
    assert by[("B", "https://esrs.lab:8443/")]["logged"] == f"{ALERT} [not rewritten]"
    assert by[("C", "https://esrs.lab:443/")]["logged"] == f"{ALERT} [rewritten to a synthetic 200]"
    assert by[("D", "https://esrs.lab:443/")]["logged"] == "-"
    assert by[("E1", "https://esrs.lab:443/")]["logged"] == (
        "TLS handshake with the upstream failed: alert protocol_version (70) [not rewritten]"
    )
    assert by[("F", "https://esrs.lab:8443/")]["logged"] == f"{ALERT} [upgraded to TLS: HTTP 200 from the server]"
    assert by[("G", "http://esrs.lab:443/")]["logged"] == f"{ALERT} [upgraded to TLS: HTTP 200 from the server]"
    assert by[("H", "https://esrs.lab:443/")]["logged"] == (
        f"{ALERT} [not rewritten; TLS attempt failed: certificate verification failed: self-signed certificate]"
    )
    assert "ESRS stand-in: OK" not in by[("C", "https://esrs.lab:443/")]["saw"]
    assert len(list(tmp_path.glob("report-*.jsonl"))) == 8  # one mitmdump per scenario after A
    assert "[lab] [9/9] scenario H" in p.stderr  # progress is shown


def test_lab_rejects_an_unknown_scenario() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "stray_tls.main", "lab", "--only", "Z"], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 2 and "unknown scenario" in p.stderr


def test_check_tells_the_faulty_proxy_from_a_well_behaved_one(cert, start_server) -> None:
    esrs = start_server(servers.EsrsServer(cert))
    routes = {("esrs.lab", 443): ("127.0.0.1", esrs.port)}
    faulty = start_server(servers.FaultyProxy(routes))
    good = start_server(servers.FaultyProxy(routes, well_behaved=True))
    bad = run_check(("127.0.0.1", faulty.port), "esrs.lab", 443, timeout=5)
    assert not bad.passed and bad.finding is not None
    assert bad.saw == (
        "no HTTP status: raw bytes 15 03 01 00 02 02 0a, decoded TLS alert: fatal unexpected_message (10), "
        "record version TLS 1.0"
    )
    ok = run_check(("127.0.0.1", good.port), "esrs.lab", 443, timeout=5)
    assert ok.passed and ok.answer.body == servers.OK_BODY
    nobody = run_check(("127.0.0.1", servers.free_port()), "esrs.lab", 443, timeout=5)
    assert not nobody.passed and nobody.saw.startswith("cannot connect to 127.0.0.1:")
