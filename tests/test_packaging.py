"""A package a user may take: `python -m build` from a fresh tree gives an sdist and a wheel that pass `twine check`,
carry the licence and the classifiers, and hold the addon script beside its package.

The tree is what a clone would hold: the files git tracks or would track (ignored ones, like .venv and egg-info,
left behind), copied to an empty folder. The build is isolated, as pip's and `python -m build`'s are: its
setuptools comes from PyPI (or pip's cache), not from this virtualenv.
"""

from __future__ import annotations

import email.parser
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

import stray_tls
from stray_tls.lab import proxies

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("build", reason="build is not installed (pip install -e '.[test]')")
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=False,
    )
    if listed.returncode:
        pytest.skip("not a git checkout: no way to tell which files a clone would hold")
    tree = tmp_path_factory.mktemp("fresh") / "esrs-fix"
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is not there
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tree / name)
    out = tree.parent / "dist"
    p = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(tree)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return out


def only(directory: Path, pattern: str) -> Path:
    (path,) = directory.glob(pattern)
    return path


def test_sdist_and_wheel_pass_twine_check(dist: Path) -> None:
    version = stray_tls.__version__
    sdist, wheel = only(dist, f"esrs_fix-{version}.tar.gz"), only(dist, f"esrs_fix-{version}-py3-none-any.whl")
    p = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("PASSED") == 2, p.stdout


def test_the_wheel_holds_the_addon_beside_its_package_and_the_licence(dist: Path) -> None:
    with zipfile.ZipFile(only(dist, "*.whl")) as wheel:
        names = set(wheel.namelist())
        info = f"esrs_fix-{stray_tls.__version__}.dist-info"
        metadata = email.parser.Parser().parsestr(wheel.read(f"{info}/METADATA").decode())
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
    assert {"esrs_fix.py", "stray_tls/__init__.py", "stray_tls/mitm/addon.py", "stray_tls/bundle.py"} <= names
    assert f"{info}/licenses/LICENSE" in names
    assert not [n for n in names if n.startswith("tests/") or "capgen" in n], names
    assert "esrs-fix = stray_tls.main:main" in entry_points
    assert metadata["Version"] == stray_tls.__version__
    assert metadata["License-Expression"] == "MIT" and metadata["License-File"] == "LICENSE"
    assert "mitmproxy<13,>=11" in (metadata.get_all("Requires-Dist") or [])
    classifiers = metadata.get_all("Classifier") or []
    for wanted in (
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Internet :: Proxy Servers",
        "Topic :: Security",
        "Topic :: System :: Networking :: Monitoring",
    ):
        assert wanted in classifiers
    trove = pytest.importorskip("trove_classifiers", reason="trove-classifiers is not installed")
    unknown = [c for c in classifiers if c not in trove.classifiers]
    assert not unknown, f"PyPI would refuse the upload: unknown classifiers {unknown}"


def test_the_sdist_holds_what_a_user_reads(dist: Path) -> None:
    with tarfile.open(only(dist, "*.tar.gz")) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
        licence = sdist.extractfile(f"esrs_fix-{stray_tls.__version__}/LICENSE")
        assert licence is not None
        text = licence.read().decode()
    assert {"LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "addon/esrs_fix.py"} <= names
    # the pages the README links to, and the screenshot it shows
    docs = {str(p.relative_to(ROOT)) for p in (ROOT / "docs").iterdir() if p.suffix in (".md", ".png")}
    assert docs and docs <= names, docs - names
    assert text.startswith("MIT License") and "Copyright (c) 2026 the esrs-fix authors" in text


def test_the_changelog_names_this_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"\n## {stray_tls.__version__} " in changelog


def _extras() -> dict[str, list[str]]:
    extras: dict[str, list[str]] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    return extras


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]


def test_scripts_lab_installs_the_lab_extra_only() -> None:
    """The lab runs in its own virtualenv with mitmproxy and the `lab` extra: not the test extra (playwright, mypy,
    ruff, hypothesis, build, twine: 437 MB where the lab's is 133 MB), which stays with scripts/test."""
    calls = [line.split() for line in (ROOT / "scripts" / "lab").read_text().splitlines() if "esrs_venv " in line]
    assert len(calls) == 2, calls  # one per mitmproxy major
    for call in calls:
        _, name, _python, spec, extras, *rest = call[call.index("esrs_venv") :]
        assert extras == "lab" and rest == [";;"], call
        assert name.startswith("lab-") and "mitmproxy>=1" in spec, call  # its own venv, not scripts/test's
    # the lab extra is the real proxies the lab can start from Python (`--proxy proxy.py|pproxy`), and nothing else
    assert sorted(_name(r) for r in _extras()["lab"]) == sorted(proxies.python_packages())
