"""The esrs-fix command as users run it: a real subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def esrs_fix(*args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stray_tls.main", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_decode_the_field_report_bytes() -> None:
    p = esrs_fix("decode", "15", "03", "01", "00", "02", "02", "0a")
    assert p.returncode == 0, p.stderr
    assert "level         fatal (2)" in p.stdout
    assert "description   unexpected_message (10)" in p.stdout
    assert "version       TLS 1.0 (0x0301)" in p.stdout
    assert "CONNECT" in p.stdout  # the explanation says what to do


@pytest.mark.parametrize(
    "given", [["1503010002020a"], ["\\x15\\x03\\x01\\x00\\x02\\x02\\x0a"], ["15 03 01 00 02 02 0a"]]
)
def test_decode_accepts_the_pasted_forms(given: list[str]) -> None:
    p = esrs_fix("decode", "--json", *given)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["verdict"] == "tls" and out["records"][0]["alert"]["description_name"] == "unexpected_message"


def test_decode_reads_a_wireshark_dump_from_stdin() -> None:
    dump = "0000   15 03 01 00 02 02 0a                              .......\n"
    p = esrs_fix("decode", stdin=dump)
    assert p.returncode == 0 and "unexpected_message (10)" in p.stdout


def test_decode_bad_input_and_non_tls() -> None:
    p = esrs_fix("decode", "15 0z")
    assert p.returncode == 2 and "not hex" in p.stderr and "Traceback" not in p.stderr
    p = esrs_fix("decode", "48 54 54 50")
    assert p.returncode == 1 and "not TLS" in p.stdout
    p = esrs_fix("decode", "15 03 01")
    assert p.returncode == 1 and "incomplete TLS record: 3 of 5 bytes" in p.stdout


def test_path_names_the_addon_script() -> None:
    p = esrs_fix("path")
    assert p.returncode == 0
    path = Path(p.stdout.strip())
    assert path.name == "esrs_fix.py" and path.is_file()
    assert "addons = [EsrsFix()]" in path.read_text()


def test_help_lists_every_command() -> None:
    p = esrs_fix("--help")
    assert p.returncode == 0
    commands = p.stdout.split("positional arguments:", 1)[1].split("options:", 1)[0]  # the list, not the description
    listed = {line.split()[0] for line in commands.splitlines() if line.startswith("    ") and line.split()}
    assert {"decode", "check", "pcap", "path", "lab"} <= listed, commands
    for command in ("decode", "check", "pcap", "path", "lab"):
        assert esrs_fix(command, "--help").returncode == 0, command
    p = esrs_fix("lab", "--help")
    assert "serve-esrs" in p.stdout and "faulty-proxy" in p.stdout


# -- output read only in part: `| head -1`, a pager quit early


def test_pcap_piped_to_head_ends_quietly(tmp_path: Path) -> None:
    """A capture whose report is far larger than a pipe holds: head takes one line and goes; the rest of the writing
    meets the closed pipe. No traceback, and 141 as for any program cut off so (the module's docstring)."""
    pytest.importorskip("dpkt")
    from stray_tls.lab.servers import ALERT_TLS10
    from tests.capgen import Conversation, write_capture

    path = tmp_path / "many.pcap"
    request = b"GET https://esrs.example:443/ HTTP/1.1\r\nHost: esrs.example:443\r\n\r\n"
    write_capture(
        path,
        [
            Conversation((f"10.1.{n // 250}.{n % 250 + 1}", 40000), ("10.0.0.1", 8080), [(request, ALERT_TLS10)])
            for n in range(3000)
        ],
    )
    script = '"$0" -m stray_tls.main pcap "$1" 2>"$2" | head -1; echo "status ${PIPESTATUS[0]}"'
    p = subprocess.run(
        ["bash", "-c", script, sys.executable, str(path), str(tmp_path / "stderr")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    first, status = p.stdout.splitlines()
    assert "10.1.0.1:40000 -> 10.0.0.1:8080" in first
    assert (tmp_path / "stderr").read_text() == ""  # no BrokenPipeError, no "Exception ignored"
    assert status == "status 141"


@pytest.mark.parametrize("command", [["decode", "15 03 01 00 02 02 0a"], ["path"]])
def test_output_to_a_pipe_already_closed_ends_quietly(command: list[str]) -> None:
    """The reader gone before a byte is written (a pager quit at once): deterministic, whatever the output's size."""
    read, write = os.pipe()
    os.close(read)
    try:
        p = subprocess.run(
            [sys.executable, "-m", "stray_tls.main", *command],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write)
    assert p.stderr == "" and p.returncode == 141


def test_a_sockets_broken_pipe_is_not_taken_for_stdouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only standard output's reader going away is quiet: a peer closing a socket mid-write stays an error."""
    from stray_tls import cli, main

    def peer_gone(*_: object) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "run", peer_gone)
    with pytest.raises(BrokenPipeError):
        main.main(["path"])


# -- hints for an optional dependency: the command that works where esrs-fix runs ------------------------------------

ROOT = Path(__file__).resolve().parent.parent

#: Runs the three commands that need an optional package, each package hidden (None in sys.modules makes its import
#: fail as if it were not installed), and prints what each said.
_WITHOUT_EXTRAS = """
import contextlib, io, json, sys
for name in ("dpkt", "spnego", "pproxy"):
    sys.modules[name] = None
from stray_tls import main
from stray_tls.fieldkit import proxyauth
said = {}
for key, argv in (("pcap", ["pcap", sys.argv[1]]), ("lab", ["lab", "--proxy", "pproxy"])):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        said[key + " status"] = main.main(argv)
    said[key] = err.getvalue()
try:
    proxyauth.AuthHandshake(proxyauth.Scheme.NTLM, proxyauth.Credentials("u", "p"), "proxy")
except proxyauth.AuthError as e:
    said["ntlm"] = str(e)
print(json.dumps(said))
"""


def _hints(pythonpath: Path, tmp_path: Path) -> dict[str, object]:
    capture = tmp_path / "empty.pcap"
    capture.write_bytes(b"")
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    p = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTRAS, str(capture)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    said: dict[str, object] = json.loads(p.stdout)
    assert said["pcap status"] == 2 and said["lab status"] == 2, said
    assert "Traceback" not in p.stderr
    return said


def test_hints_in_a_checkout_install_the_checkouts_extra_into_this_python(tmp_path: Path) -> None:
    """esrs-fix is on no package index yet: in a clone, `pip install 'esrs-fix[pcap]'` fails, the checkout's works."""
    said = _hints(ROOT / "addon", tmp_path)
    python = sys.executable
    assert f"esrs-fix pcap: needs dpkt: {python} -m pip install -e '{ROOT}[pcap]'" in str(said["pcap"]), said
    assert f"{python} -m pip install -e '{ROOT}[lab]'" in str(said["lab"]), said
    assert said["ntlm"] == f"NTLM needs the Python package pyspnego: {python} -m pip install -e '{ROOT}[ntlm]'"
    assert not any("'esrs-fix[" in str(text) for text in said.values()), said


def test_hints_outside_a_checkout_name_the_package_itself(tmp_path: Path) -> None:
    """The package alone (as in site-packages, no pyproject.toml above it): the dependency by its own name."""
    site = tmp_path / "site"
    shutil.copytree(ROOT / "addon" / "stray_tls", site / "stray_tls", ignore=shutil.ignore_patterns("__pycache__"))
    said = _hints(site, tmp_path)
    python = sys.executable
    assert f"esrs-fix pcap: needs dpkt: {python} -m pip install dpkt\n" in str(said["pcap"]), said
    assert f"pproxy is not installed (no Python module 'pproxy'): {python} -m pip install pproxy\n" in str(said["lab"])
    assert said["ntlm"] == f"NTLM needs the Python package pyspnego: {python} -m pip install pyspnego"
    assert not any("esrs-fix[" in str(text) or "-e " in str(text) for text in said.values()), said
