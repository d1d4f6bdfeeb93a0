"""The esrs-fix command as users run it: a real subprocess."""

from __future__ import annotations

import json
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
