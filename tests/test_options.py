"""Option mistakes get one sentence, never a traceback: at start-up (real mitmdump) and at run time (`:set`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from stray_tls.lab.mitm import Mitmdump
from stray_tls.launch import mitmproxy_command
from stray_tls.mitm.addon import EsrsFix

#: (option=value, the sentence's words after "esrs-fix: ") for every way an esrs-fix option can be wrong.
BAD = [
    ("esrs_status=700", "esrs_status: 700 is not an HTTP status code (100-599)"),
    ("esrs_status=abc", "esrs_status: invalid value 'abc'"),
    ("esrs_hold_timeout=0", "esrs_hold_timeout: 0 is not a number of seconds from 1 to 3600"),
    ("esrs_upgrade_timeout=0", "esrs_upgrade_timeout: 0 is not a number of seconds from 1 to 3600"),
    ("esrs_upgrade_retry_after=-1", "esrs_upgrade_retry_after: -1 is not a number of seconds from 0 to 3600"),
    ("esrs_filter=~q(", "esrs_filter: '~q(' is not a mitmproxy filter expression"),
    ("esrs_upgrade=maybe", "esrs_upgrade: invalid value 'maybe'"),
]


def start_and_stop(tmp_path: Path, *sets: str) -> tuple[int, str]:
    """mitmdump with the addon and these `--set`s, expected to stop by itself at start-up."""
    command = [*mitmproxy_command("mitmdump"), "-p", "0", "--set", f"confdir={tmp_path}"]
    for s in sets:
        command += ["--set", s]
    p = subprocess.run(command, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    return p.returncode, p.stdout + p.stderr


@pytest.mark.e2e
@pytest.mark.parametrize(("setting", "sentence"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_value_is_one_line_and_mitmdump_exits_1(tmp_path: Path, setting: str, sentence: str) -> None:
    status, out = start_and_stop(tmp_path, setting)
    assert status == 1, out
    assert "Traceback" not in out and "error in script" not in out, out
    (line,) = [line for line in out.splitlines() if "esrs-fix: esrs_" in line]
    assert f"esrs-fix: {sentence}" in line, line
    assert "Error logged during startup, exiting..." in out


@pytest.mark.e2e
def test_a_report_in_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    target = tmp_path / "no-such-folder" / "report.jsonl"
    status, out = start_and_stop(tmp_path, f"esrs_report={target}")
    assert status == 1 and "Traceback" not in out, out
    (line,) = [line for line in out.splitlines() if "esrs-fix: esrs_" in line]
    assert f"esrs-fix: esrs_report: cannot open '{target}' for appending: No such file or directory" in line


@pytest.mark.e2e
def test_two_bad_values_are_two_lines(tmp_path: Path) -> None:
    status, out = start_and_stop(tmp_path, "esrs_status=700", "esrs_upgrade_timeout=0")
    assert status == 1 and "Traceback" not in out, out
    lines = [line for line in out.splitlines() if "esrs-fix: esrs_" in line]
    assert len(lines) == 2 and "esrs_status: 700" in lines[0] + lines[1] and "esrs_upgrade_timeout: 0" in out


@pytest.mark.e2e
def test_a_misspelt_option_is_named_with_the_nearest_one(tmp_path: Path) -> None:
    m = Mitmdump(["-p", "0", "--set", f"confdir={tmp_path}", "--set", "esrs_upgrad=true"], tmp_path / "m.log")
    m.start()  # the warning comes while the script loads, before mitmdump listens
    m.stop()
    (line,) = [line for line in m.log().splitlines() if "unknown option" in line]
    assert "esrs-fix: unknown option esrs_upgrad is ignored; did you mean esrs_upgrade?" in line
    assert "Traceback" not in m.log()


@pytest.mark.e2e
def test_good_values_log_no_option_line(tmp_path: Path) -> None:
    m = Mitmdump(["-p", "0", "--set", f"confdir={tmp_path}", "--set", "esrs_status=204"], tmp_path / "m.log")
    m.start()
    m.stop()
    assert "unknown option" not in m.log() and "esrs-fix: esrs_" not in m.log(), m.log()


@pytest.mark.parametrize(
    ("option", "value", "default"),
    [("esrs_status", 700, 200), ("esrs_upgrade_timeout", 0, 30), ("esrs_filter", "~q(", None)],
)
def test_at_run_time_the_same_sentence_refuses_the_change(option: str, value: object, default: object) -> None:
    """`:set` and mitmweb's options editor: the change is refused with the sentence, the old value stays."""
    addon = EsrsFix()
    try:
        with taddons.context(addon) as tctx:
            tctx.configure(addon)  # start-up: the script loader configures every option at once
            with pytest.raises(exceptions.OptionsError, match=f"^{option}: "):
                tctx.options.update(**{option: value})
            assert getattr(tctx.options, option) == default
    finally:
        addon.unload()
