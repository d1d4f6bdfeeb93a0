"""The lab as users run it, and its components alone."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from stray_tls import main
from stray_tls.lab import proxies, servers
from stray_tls.lab.check import run_check
from stray_tls.lab.cli import render_table
from stray_tls.lab.scenarios import SCENARIOS, Row, expected_result, rows_as_dicts

pytestmark = pytest.mark.e2e


ALERT = "TLS alert: fatal unexpected_message (10), record version TLS 1.0"
#: A row of `lab --json`, key by key: the check's result, the result its scenario expects, whether the row behaved.
ROW_KEYS = [
    "scenario",
    "title",
    "chain",
    "url",
    "saw",
    "check_result",
    "expected_result",
    "expectation",
    "as_expected",
    "logged",
    "why_unexpected",
    "seconds",
    "verdict",
]


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
    assert result["all_as_expected"] and {r["scenario"] for r in rows} == {
        "A",
        "B",
        "C",
        "D",
        "E1",
        "E2",
        "F",
        "G",
        "H",
    }
    assert result["latency_ms"] == 0 and result["timeout"] == 10  # no relay: the servers are reached directly
    assert all(r["as_expected"] for r in rows), rows
    assert all(list(r) == ROW_KEYS for r in rows), rows[0]
    by = {(r["scenario"], r["url"]): r for r in rows}
    a = by[("A", "https://esrs.lab:443/")]
    # the check's own result, beside the one its scenario expects: the field report's check FAILs, as it should here
    assert (a["check_result"], a["expected_result"], a["as_expected"]) == ("FAIL", "FAIL", True)
    d = by[("D", "https://esrs.lab:443/")]
    assert (d["check_result"], d["expected_result"], d["as_expected"]) == ("PASS", "PASS", True)
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


# -- at field latency: the relay between the proxies and the servers ------------------------------------------------

LATENCY_MS = 300


@pytest.fixture(scope="module")
def lab_at_latency(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], dict]:
    """A plain scenario and an upgrade, as a user runs them 300 ms apart: `esrs-fix lab --only A,F --latency 300`."""
    workdir = tmp_path_factory.mktemp("lab-latency")
    p = _lab("--only", "A,F", "--latency", str(LATENCY_MS), "--json", "--workdir", str(workdir))
    return p, json.loads(p.stdout)


def test_the_lab_at_latency_says_so_and_a_plain_scenario_pays_the_delay(lab_at_latency) -> None:
    p, result = lab_at_latency
    assert result["latency_ms"] == LATENCY_MS and result["timeout"] == 10 + 20 * LATENCY_MS / 1000
    assert "latency 300 ms each way (proxies to servers)" in p.stderr
    assert "latency 300 ms each way (round trip 600 ms): every server is reached through a relay" in p.stderr
    a = [r for r in result["rows"] if r["scenario"] == "A"]
    assert len(a) == 2 and all(r["as_expected"] for r in a), a
    # the faulty proxy's plaintext GET: the connect's round trip, then the request's: 4 delays at least
    assert all(r["seconds"] >= 4 * LATENCY_MS / 1000 for r in a), a


def test_the_upgrade_at_latency_gets_the_servers_answer(lab_at_latency) -> None:
    p, result = lab_at_latency
    f = [r for r in result["rows"] if r["scenario"] == "F"]
    assert len(f) == 2 and all(r["as_expected"] for r in f), f
    # plaintext (connect, request: 4 delays), then TLS (connect, handshake, request: 6 delays)
    assert all(r["seconds"] >= 10 * LATENCY_MS / 1000 for r in f), f
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("value", ["-1", "abc", "inf"])
def test_lab_rejects_a_latency_that_is_not_a_non_negative_number(value: str) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "stray_tls.main", "lab", f"--latency={value}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "argument --latency: " in p.stderr and "milliseconds" in p.stderr
    assert "[lab] " not in p.stderr  # nothing was started


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


# -- through real proxies: the same scenarios, the check asking for 127.0.0.1 and the real ports -------------------


def test_the_faulty_proxys_tunnel_passes_the_servers_close_on(start_server) -> None:
    """A CONNECT client sees the server's close when it happens, as through a real proxy, not after the tunnel's idle
    time (60 s here; the client gives up after 30, so a tunnel that held on fails the test)."""
    server = start_server(servers.ScriptedServer(lambda head: b"HTTP/1.1 204 No Content\r\n\r\n", keep_alive=False))
    proxy = start_server(servers.FaultyProxy(idle=60.0))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as s:
        s.sendall(f"CONNECT 127.0.0.1:{server.port} HTTP/1.1\r\n\r\n".encode())
        assert servers.read_head(s) == b"HTTP/1.1 200 Connection established\r\n\r\n"
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while chunk := s.recv(4096):  # TimeoutError here: the server's close never came through
            received += chunk
    assert received == b"HTTP/1.1 204 No Content\r\n\r\n"


def _lab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stray_tls.main", "lab", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A work dir that squid, run as root, can reach after it drops to the `proxy` user (pytest's are 0700)."""
    directory = Path(tempfile.mkdtemp(prefix="esrs-lab-test-"))
    os.chmod(directory, 0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def _port(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1])


@pytest.mark.parametrize("name", ["proxy.py", "squid"])  # pproxy: its table, below
def test_every_scenario_behaves_the_same_through_a_real_proxy(name: str, workdir: Path) -> None:
    try:
        proxies.find(name)
    except proxies.ProxyMissing as e:
        pytest.skip(str(e))
    p = _lab("--proxy", name, "--json", "--workdir", str(workdir))
    assert p.returncode == 0, p.stdout + p.stderr
    result = json.loads(p.stdout)
    rows = result["rows"]
    assert result["all_as_expected"] and result["proxy"] == name
    assert [r["scenario"] for r in rows] == [k for k in ("A", "B", "C", "D", "E1", "E2", "F", "G", "H") for _ in "xy"]
    assert all(r["as_expected"] for r in rows), [r for r in rows if not r["as_expected"]]
    # a real proxy resolves names itself: the check asks for 127.0.0.1 and the real ports
    assert all(r["url"].startswith(("https://127.0.0.1:", "http://127.0.0.1:")) for r in rows)
    urls = {k: [r["url"] for r in rows if r["scenario"] == k] for k in dict.fromkeys(r["scenario"] for r in rows)}
    ports = {k: [_port(u) for u in v] for k, v in urls.items()}
    assert ports["A"] == ports["D"] == ports["G"]  # the stand-in server's two ports
    assert not set(ports["B"]) & set(ports["A"])  # mitmdump's reverse listeners
    by = {r["scenario"]: r for r in rows}  # the :8443 row of each
    a = by["A"]
    assert a["check_result"] == "FAIL" and a["verdict"] == "FAIL as expected" and a["logged"] == "-"
    if name == "squid":
        assert a["chain"] == "check -> squid (cache_peer) -> ESRS server"
        assert (
            a["saw"].startswith("the 200 is squid/")
            and "'s wrapping of a TLS alert, not the server's answer: " in a["saw"]
        )
        assert "HTTP/1.1 200 OK (X-Transformed-From: HTTP/0.9), body: raw bytes 15 03 01 00 02 02 0a" in a["saw"]
        assert by["D"]["chain"] == "check -> mitmdump (upstream mode, esrs-fix) -> squid (direct) -> ESRS server"
        assert "cache_peer 127.0.0.1 parent" in (workdir / "proxy-1-squid" / "squid.conf").read_text()
        assert "cache_peer" not in (workdir / "proxy-4-squid" / "squid.conf").read_text()
    else:
        assert a["chain"] == f"check -> {name} -> ESRS server"
        assert a["saw"] == f"no HTTP status: raw bytes 15 03 01 00 02 02 0a, decoded {ALERT}"
    assert by["B"]["logged"] == f"{ALERT} [not rewritten]"
    assert by["B"]["saw"].startswith(f"HTTP/1.1 502 Bad Gateway [X-ESRS-Fix: detected; {ALERT}]")
    assert by["C"]["logged"] == f"{ALERT} [rewritten to a synthetic 200]"
    assert by["D"]["logged"] == "-" and by["D"]["saw"] == "HTTP/1.1 200 OK"
    assert by["E1"]["logged"] == "TLS handshake with the upstream failed: alert protocol_version (70) [not rewritten]"
    assert by["F"]["logged"] == f"{ALERT} [upgraded to TLS: HTTP 200 from the server]"
    wrapped = " (wrapped in a proxy's HTTP/0.9 200)" if name == "squid" else ""
    assert by["G"]["logged"] == f"{ALERT}{wrapped} [upgraded to TLS: HTTP 200 from the server]"
    assert "certificate verification failed" in by["H"]["logged"]
    assert len(list(workdir.glob("proxy-*"))) == 9  # one proxy per scenario, each with its config and log


ROOT = Path(__file__).resolve().parent.parent
KEYS = ("A", "B", "C", "D", "E1", "E2", "F", "G", "H")


def _lab_script_is_ready() -> bool:
    """Whether `scripts/lab` would run at once: it picks Python 3.11 first (else 3.12, 3.13), and rebuilds a
    virtualenv whose stamp is stale, which must not happen under a running test (the machine may be offline)."""
    pick = subprocess.run(
        [
            "bash",
            "-c",
            'source scripts/_venv.sh && "$(esrs_python 3.11 || esrs_python 3.12 || esrs_python 3.13)" '
            "-c 'import sys; print(sys.version_info[1])'",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    name, spec = (
        ("lab-mitm11", "mitmproxy>=11,<12") if pick.stdout.strip() == "11" else ("lab-mitm12", "mitmproxy>=12,<13")
    )
    venv = ROOT / ".venv" / name
    want = f"{hashlib.sha256((ROOT / 'pyproject.toml').read_bytes()).hexdigest()[:16]} {spec} lab"
    stamp = venv / ".esrs-installed"
    return (
        pick.returncode == 0
        and (venv / "bin" / "python").exists()
        and stamp.is_file()
        and stamp.read_text().strip() == want
    )


def _squash(text: str) -> str:
    """Text without its whitespace: the table wraps its long lines wherever they reach 110 columns."""
    return "".join(text.split())


def test_the_labs_table_through_pproxy_as_the_readme_shows_it(workdir: Path) -> None:
    try:
        proxies.find("pproxy")
    except proxies.ProxyMissing as e:
        pytest.skip(str(e))
    # the README's command where its virtualenv is ready (the lab extra alone); else the command it runs, here
    command = (
        [str(ROOT / "scripts" / "lab")] if _lab_script_is_ready() else [sys.executable, "-m", "stray_tls.main", "lab"]
    )
    p = subprocess.run(
        [*command, "--proxy", "pproxy", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "80"},  # a terminal of 80 columns: the table fits it
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert max(len(line) for line in p.stdout.splitlines()) <= 80, p.stdout
    head, *details, last = p.stdout.rstrip("\n").split("\n\n")
    assert last == "18 of 18 checks behaved as expected", p.stdout
    # the summary: one row per check URL (what the check saw under it), each behaving as expected, the check asking
    # for 127.0.0.1 and real ports
    summary = head.splitlines()
    rows = [line.split()[:3] for line in summary[summary.index("-" * 80) + 1 :] if not line.startswith(" ")]
    assert [key for _, key, _ in rows] == [k for k in KEYS for _ in "xy"] and {ok for ok, _, _ in rows} == {"ok"}
    urls = {k: [url for _, key, url in rows if key == k] for k in KEYS}
    assert all(url.startswith(("https://127.0.0.1:", "http://127.0.0.1:")) for _, _, url in rows)
    ports = {k: [_port(u) for u in v] for k, v in urls.items()}
    assert ports["A"] == ports["D"] == ports["G"]  # the stand-in server's two ports
    assert not set(ports["B"]) & set(ports["A"])  # mitmdump's reverse listeners
    # each scenario in full: its chain (scenario A: the field report's), then each check URL's verdict and words
    blocks = {block.split(":", 1)[0]: block for block in details}
    assert list(blocks) == list(KEYS)
    assert blocks["A"].splitlines()[:2] == ["A: the field report", "    chain:    check -> pproxy -> ESRS server"]

    def twice(key: str, *lines: str) -> None:
        for line in lines:
            assert _squash(blocks[key]).count(_squash(line)) == 2, (line, blocks[key])

    twice(
        "A", "-> FAIL as expected", f"saw: no HTTP status: raw bytes 15 03 01 00 02 02 0a, decoded {ALERT}", "logged: -"
    )
    twice("B", f"saw: HTTP/1.1 502 Bad Gateway [X-ESRS-Fix: detected; {ALERT}]", f"logged: {ALERT} [not rewritten]")
    twice("C", "-> PASS as expected", f"logged: {ALERT} [rewritten to a synthetic 200]")
    twice("D", "-> PASS as expected", "saw: HTTP/1.1 200 OK", "logged: -")
    twice("E1", "logged: TLS handshake with the upstream failed: alert protocol_version (70) [not rewritten]")
    twice("F", f"logged: {ALERT} [upgraded to TLS: HTTP 200 from the server]")
    twice("G", f"logged: {ALERT} [upgraded to TLS: HTTP 200 from the server]")
    twice("H", "-> FAIL as expected", "certificate verification failed: self-signed certificate]")
    chain = "chain: check -> mitmdump (upstream mode, esrs-fix) -> pproxy -> ESRS server"
    assert _squash(chain) in _squash(blocks["D"])
    # what the "logged" lines say is what the addon wrote in its reports: one mitmdump per scenario after A
    reports = sorted(workdir.glob("report-*.jsonl"))
    entries = [json.loads(line) for r in reports for line in r.read_text().splitlines() if line.strip()]
    assert len(reports) == 8 and len(entries) == 14  # two check URLs each in B, C, E1, E2, F, G, H; none in D
    assert all(_squash(f"logged: {e['summary']}") in _squash(p.stdout) for e in entries)
    assert len(list(workdir.glob("proxy-*-pproxy"))) == 9  # one proxy per scenario, each with its config and log


@pytest.mark.parametrize(
    ("name", "missing", "hint"),
    [
        ("squid", "_which", "squid is not installed: apt-get install squid"),
        ("pproxy", "_has_module", f"{sys.executable} -m pip install -e '{ROOT}[lab]'"),  # in a checkout
    ],
)
def test_a_proxy_that_is_not_installed_gets_the_command_that_installs_it(
    name: str, missing: str, hint: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(proxies, missing, lambda _name: None if missing == "_which" else False)
    assert main.main(["lab", "--proxy", name]) == 2
    err = capsys.readouterr().err
    assert f"esrs-fix lab: --proxy {name}: " in err and hint in err
    assert "[lab] " not in err  # nothing was started (no progress line)


def test_the_check_counts_a_proxys_wrapped_200_as_the_fail_it_is(start_server) -> None:
    wrapped = (
        b"HTTP/1.1 200 OK\r\nServer: squid/5.7\r\nX-Transformed-From: HTTP/0.9\r\nConnection: close\r\n\r\n"
        + servers.ALERT_TLS10
    )
    proxy = start_server(servers.ScriptedServer(lambda head: wrapped, keep_alive=False))
    r = run_check(("127.0.0.1", proxy.port), "127.0.0.1", 443, timeout=5)
    assert r.answer.status == 200 and not r.passed
    assert r.saw.startswith("the 200 is squid/5.7's wrapping of a TLS alert, not the server's answer: HTTP/1.1 200 OK")


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def test_sigterm_stops_every_process_the_lab_started(tmp_path) -> None:
    """A CI timeout or `kill` sends SIGTERM: the lab unwinds as on Ctrl-C, and its mitmdump goes with it."""
    lab = subprocess.Popen(
        [sys.executable, "-m", "stray_tls.main", "lab", "--only", "D", "--workdir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = tmp_path / "mitmdump-1.log"
    deadline = time.monotonic() + 60
    while not (log.exists() and "listening at" in log.read_text(errors="replace")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_mentioning(str(tmp_path)), "the lab's mitmdump should be running by now"
    lab.send_signal(signal.SIGTERM)  # our own process, by its id
    lab.wait(timeout=60)
    left = _processes_mentioning(str(tmp_path))
    for pid in left:  # what the lab failed to stop is still ours to end (it names our temporary directory)
        os.kill(pid, signal.SIGKILL)
    assert left == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_serve_esrs_stopped_by_a_signal_removes_its_private_key(sig: signal.Signals) -> None:
    """`kill` or a closed terminal stops the stand-in server as Ctrl-C does: its temporary folder (its key) goes."""
    server = subprocess.Popen(
        [sys.executable, "-m", "stray_tls.main", "lab", "serve-esrs"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        said = server.stderr.readline()  # the line that says where the certificate and key are
        folder = Path(said.split("its certificate and key in ", 1)[1].split(",", 1)[0])
        assert (folder / "esrs-lab-key.pem").exists(), said
        server.send_signal(sig)  # our own process, by its id
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=30)
    assert not folder.exists()


def test_free_ports_are_never_handed_out_twice() -> None:
    """One mitmdump with two modes on one port refuses to start (a CI run failed so): every port is new."""
    ports = [servers.free_port() for _ in range(3000)]
    assert len(set(ports)) == len(ports)


#: The packages of the test extra that the lab extra lacks, by the module each is imported as.
TEST_ONLY_MODULES = {
    "pytest": "pytest",
    "hypothesis": "hypothesis",
    "ruff": "ruff",
    "mypy": "mypy",
    "dpkt": "dpkt",
    "playwright": "playwright",
    "pyspnego": "spnego",
    "build": "build",
    "twine": "twine",
    "trove-classifiers": "trove_classifiers",
}


def _requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]


def test_the_lab_runs_with_the_lab_extra_alone(tmp_path: Path) -> None:
    """What scripts/lab installs (mitmproxy and the `lab` extra) is all the lab needs: with every package of the
    test extra hidden (None in sys.modules: its import fails as if it were not installed), an upgrade scenario
    through a real proxy of the lab extra behaves."""
    try:
        proxies.find("pproxy")
    except proxies.ProxyMissing as e:
        pytest.skip(str(e))
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    test_only = {_requirement_name(r) for r in extras["test"]} - {_requirement_name(r) for r in extras["lab"]}
    assert test_only == set(TEST_ONLY_MODULES), "a new test dependency: name the module it is imported as here"
    hide = (
        f"import sys\nfor m in {sorted(TEST_ONLY_MODULES.values())!r}:\n    sys.modules[m] = None\n"
        "from stray_tls import main\nsys.exit(main.main(sys.argv[1:]))"
    )
    p = subprocess.run(
        [sys.executable, "-c", hide, "lab", "--only", "F", "--proxy", "pproxy", "--json", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stdout + p.stderr
    rows = json.loads(p.stdout)["rows"]
    assert [r["scenario"] for r in rows] == ["F", "F"] and all("upgraded to TLS" in r["logged"] for r in rows), rows


# -- the report: JSON names that say what they mean, a table that fits the terminal and cuts nothing ----------------

LONG_LABEL = (
    "HTTP/1.1 502 Bad Gateway [X-ESRS-Fix: upgrade failed: certificate verification failed: self-signed certificate; "
    f"{ALERT}]"
)


def _rows() -> list[Row]:
    """Rows as a lab run makes them: one as expected, one unexpected, one with a word longer than any terminal."""
    return [
        Row("A", "the field report", "check -> faulty proxy -> ESRS server", "https://esrs.lab:443/",
            f"no HTTP status: raw bytes 15 03 01 00 02 02 0a, decoded {ALERT}", "FAIL",
            "FAIL: the check gets the raw TLS alert", True, "-"),
        Row("H", "upgrade, but the server's certificate is not trusted",
            "check -> faulty proxy -> mitmdump (reverse, esrs_upgrade, no trusted CA) -> ESRS server",
            "https://esrs.lab:8443/", LONG_LABEL, "PASS",
            "FAIL closed: a 502 naming the certificate problem, never an unverified connection", False,
            f"{ALERT} [not rewritten; TLS attempt failed: certificate verification failed: self-signed certificate]",
            "expected a 502 whose label names the certificate problem"),
        Row("E2", "a word longer than a line", "check -> x", "http://[2001:db8::1]:65535/",
            "raw bytes " + "15030100020" * 30, "FAIL", "FAIL: unreadable", True, "-"),
    ]  # fmt: skip


def test_a_json_row_says_the_checks_result_and_the_one_expected_apart() -> None:
    unexpected = rows_as_dicts(_rows())[1]
    assert list(unexpected) == ROW_KEYS
    assert unexpected["check_result"] == "PASS" and unexpected["expected_result"] == "FAIL"
    assert unexpected["as_expected"] is False
    assert unexpected["why_unexpected"] == "expected a 502 whose label names the certificate problem"
    assert unexpected["verdict"] == "PASS, UNEXPECTED (expected a 502 whose label names the certificate problem)"


def test_every_scenarios_expectation_names_the_result_it_expects() -> None:
    for s in SCENARIOS:
        for expectation in filter(None, (s.expected, s.squid_expected)):
            assert expected_result(expectation) in ("PASS", "FAIL"), expectation
    with pytest.raises(ValueError, match="starts with PASS or FAIL"):
        expected_result("works")


@pytest.mark.parametrize("columns", [40, 60, 80, 200])
def test_the_table_fits_the_terminal_and_cuts_no_label(columns: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    rows = _rows()
    table = render_table(rows)
    assert max(len(line) for line in table.splitlines()) <= columns, table
    summary, details = table.split("\n\n", 1)
    for r in rows:
        # each row's line, then what its check saw, whole, however it wrapped
        assert _squash(f"{'ok' if r.as_expected else '!!'} {r.scenario} {r.url} {r.short_verdict} {r.saw}") in (
            _squash(summary)
        ), summary
        for full in (
            r.title,
            r.chain,
            r.expectation,
            f"{r.url} -> {r.verdict}",
            f"saw: {r.saw}",
            f"logged: {r.logged}",
        ):
            assert _squash(full) in _squash(details), (full, details)
    assert "..." not in table
    assert _squash(table).endswith(_squash("2 of 3 checks behaved as expected: SEE ABOVE"))
