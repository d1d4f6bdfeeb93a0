"""How to get an optional dependency (dpkt, pyspnego, the lab's proxies) into the Python that runs esrs-fix.

The field kit's optional parts name the command in their one-line error; the lab and the CLI use it too.
"""

from __future__ import annotations

import functools
import shlex
import sys
import tomllib
from pathlib import Path


@functools.cache
def checkout_root() -> Path | None:
    """The checkout this package runs from (the folder holding `addon/` and a pyproject.toml naming esrs-fix, as a
    clone or an editable install has it), or None where it was installed as a package (site-packages)."""
    root = Path(__file__).resolve().parents[3]  # fieldkit/ -> stray_tls/ -> addon/ -> the checkout
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
