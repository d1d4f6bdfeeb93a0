"""The lab as users run it, and its components alone."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from stray_tls.lab import servers
from stray_tls.lab.check import run_check

pytestmark = pytest.mark.e2e


def test_every_lab_scenario_behaves_and_the_table_agrees_with_the_log(tmp_path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "stray_tls.main", "lab", "--json", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    result = json.loads(p.stdout)
    rows = result["rows"]
    assert result["passed"] and {r["scenario"] for r in rows} == {"A", "B", "C", "D", "E1", "E2"}
    assert all(r["ok"] for r in rows), rows
    by = {(r["scenario"], r["url"]): r for r in rows}
    a = by[("A", "https://esrs.lab:443/")]
    assert "raw bytes 15 03 01 00 02 02 0a" in a["saw"] and a["logged"] == "-"
    b = by[("B", "https://esrs.lab:8443/")]
    assert "502" in b["saw"] and b["logged"].endswith("[not rewritten]")
    c = by[("C", "https://esrs.lab:443/")]
    assert "synthetic 200" in c["saw"] and "rewritten to a synthetic 200" in c["logged"]
    # what the table says comes from the addon's own log lines
    logs = "".join(path.read_text() for path in sorted(tmp_path.glob("mitmdump-*.log")))
    for r in rows:
        for part in r["logged"].split("; "):
            if part != "-":
                assert part.split(" [")[0] in logs
    assert "[lab] [6/6] scenario E2" in p.stderr  # progress is shown


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
