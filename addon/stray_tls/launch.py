"""Where the addon script is, and the one command line that starts mitmdump / mitmweb / mitmproxy with it.

The lab, the bench and the tests all start mitmproxy through `mitmproxy_command`, so that they run what a
user runs (`mitmdump -s addon/esrs_fix.py ...`) with the interpreter that has esrs-fix installed.
"""

from __future__ import annotations

import sys
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
