"""Where the addon script is, the one command line that starts mitmdump / mitmweb / mitmproxy with it, and how
to get an optional dependency where esrs-fix runs.

The lab, the bench and the tests all start mitmproxy through `mitmproxy_command`, so that they run what a
user runs (`mitmdump -s addon/esrs_fix.py ...`) with the interpreter that has esrs-fix installed.
"""

from __future__ import annotations

import functools
import shlex
import sys
import tomllib
from pathlib import Path


def script_path() -> Path:
    """The script for `mitmdump -s`: `esrs_fix.py` beside the package, in a checkout and in site-packages."""
    return Path(__file__).resolve().parent.parent / "esrs_fix.py"


def mitmproxy_command(
    tool: str = "mitmdump", *, addon: bool = True, python: str | None = None, profile_to: Path | None = None
) -> list[str]:
    """`mitmdump --listen-host 127.0.0.1 --set termlog_verbosity=info [-s esrs_fix.py]`, run by this Python.

    `python -c` with mitmproxy's own entry point, rather than the `mitmdump` found on PATH, so that the
    mitmproxy of this interpreter's environment runs. `profile_to`: run the tool under cProfile and write its
    statistics to that file when it exits (the bench's CPU profile).
    """
    entry = f"from mitmproxy.tools.main import {tool}"
    launcher = f"{entry}; {tool}()"
    if profile_to is not None:
        launcher = f"import cProfile; {entry}; cProfile.run('{tool}()', {str(profile_to)!r})"
    cmd = [python or sys.executable, "-c", launcher, "--listen-host", "127.0.0.1", "--set", "termlog_verbosity=info"]
    if addon:
        cmd += ["-s", str(script_path())]
    return cmd


@functools.cache
def checkout_root() -> Path | None:
    """The checkout this package runs from (the folder holding `addon/` and a pyproject.toml naming esrs-fix, as a
    clone or an editable install has it), or None where it was installed as a package (site-packages)."""
    root = Path(__file__).resolve().parent.parent.parent
    try:
        project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8")).get("project", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    return root if isinstance(project, dict) and project.get("name") == "esrs-fix" else None


def install_hint(extra: str, *packages: str) -> str:
    """The command that gets an optional dependency into the Python running esrs-fix, where it runs.

    esrs-fix is not on a package index yet, so `pip install 'esrs-fix[EXTRA]'` works nowhere: in a checkout, the
    checkout's extra installed (editable) into this interpreter; elsewhere, the packages themselves, by name.
    """
    python = shlex.quote(sys.executable)
    root = checkout_root()
    if root is not None:
        return f"{python} -m pip install -e {shlex.quote(f'{root}[{extra}]')}"
    return f"{python} -m pip install {' '.join(packages)}"
