"""The bench's raw figures: a run writes them where git ignores them; the figures the README cites change only
when `--out docs/bench-results.json` says so."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CITED = ROOT / "docs" / "bench-results.json"


def test_a_bench_run_writes_its_figures_where_git_ignores_them() -> None:
    from scripts.benchparts import main

    default = main.parse([], "").out
    assert main.parse(["--quick", "--only", "micro"], "").out == default  # a smoke run too
    assert default != CITED
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: cannot ask git what it ignores")
    ignored = subprocess.run([git, "check-ignore", "-q", str(default)], cwd=ROOT, check=False)
    assert ignored.returncode == 0, f"{default} is not ignored by git: a bench run would leave it to be committed"
    assert main.parse(["--out", str(CITED)], "").out == CITED  # the cited figures, when asked for by name
