"""`esrs-fix bundle`: the addon as one file for `mitmdump -s`, needing only mitmproxy and the standard library.

mitmproxy users take addons as single files. This one holds the package's modules as an embedded zip, imported
from memory by a small finder (no file is written: none can be swapped in a shared temporary folder, and a
read-only folder will do).
The modules are found by walking the package, so a new one is shipped without a list to keep; only the
command-line side is left out (`LEFT_OUT`), and a build whose addon would reach a left-out module fails.
The zip is stored, not deflated (zlib builds differ in their output), with sorted entries and fixed
timestamps: the same commit gives the same file, byte for byte, anywhere.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import io
import subprocess
import textwrap
import zipfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .core.names import OPTION_NAMES

#: The package's modules the single file leaves out (relative to the package; a name covers its submodules):
#: the field kit, the lab, the commands and what only they use. Every other module is shipped.
LEFT_OUT = frozenset({"fieldkit", "lab", "main", "cli", "bundle", "launch", "core.http1"})
#: What the single file imports; everything these reach must be shipped.
ENTRY_POINTS = ("", "mitm.addon")
#: 1980-01-01, the earliest time a zip entry can hold: no build time leaks into the file.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class BundleError(Exception):
    """The package cannot be made into a single file; the message says why."""


@dataclass(frozen=True)
class Bundle:
    text: str  # the whole esrs_fix.py
    version: str
    commit: str
    modules: tuple[str, ...]  # dotted names, sorted

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def package_dir() -> Path:
    return Path(__file__).resolve().parent


def package_sources(directory: Path) -> dict[str, bytes]:
    """Every module of the package in `directory`, by its path in the zip (`stray_tls/mitm/addon.py`), as source bytes.

    Line endings are made LF, so that a checkout with CRLF endings builds the same file.
    """
    sources: dict[str, bytes] = {}
    for path in sorted(directory.rglob("*.py")):
        relative = path.relative_to(directory.parent)
        if "__pycache__" not in relative.parts:
            sources[relative.as_posix()] = path.read_bytes().replace(b"\r\n", b"\n")
    return sources


def module_name(path: str) -> str:
    """`stray_tls/mitm/addon.py` -> `stray_tls.mitm.addon`; `stray_tls/sub/__init__.py` -> `stray_tls.sub`."""
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def is_left_out(name: str, root: str) -> bool:
    relative = name.removeprefix(root).removeprefix(".")
    return any(relative == m or relative.startswith(m + ".") for m in LEFT_OUT)


def imports_of(path: str, source: bytes, known: set[str]) -> set[str]:
    """The package's own modules (among `known`) that the module at `path` imports, function-local ones too."""
    name = module_name(path)
    here = name.split(".") if path.endswith("/__init__.py") else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, path)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join(base + (node.module.split(".") if node.module else []))
            targets = [module, *(f"{module}.{alias.name}" for alias in node.names)]
        for target in targets:
            parts = target.split(".")
            # importing a.b.c runs a and a.b first
            found.update(p for p in (".".join(parts[:n]) for n in range(1, len(parts) + 1)) if p in known)
    found.discard(name)
    return found


def reached_left_out(sources: dict[str, bytes], root: str) -> list[list[str]]:
    """Import chains from the entry points to a left-out module (empty when the single file is whole)."""
    paths = {module_name(path): path for path in sources}
    start = [".".join(filter(None, (root, e))) for e in ENTRY_POINTS]
    parent: dict[str, str | None] = dict.fromkeys(start)
    queue = deque(start)
    chains: list[list[str]] = []
    while queue:
        name = queue.popleft()
        if is_left_out(name, root):
            chain = [name]
            while (up := parent[chain[-1]]) is not None:
                chain.append(up)
            chains.append(chain[::-1])
            continue
        for imported in sorted(imports_of(paths[name], sources[paths[name]], set(paths))):
            if imported not in parent:
                parent[imported] = name
                queue.append(imported)
    return chains


def source_commit(directory: Path) -> str:
    """The git commit the package was taken from, `+dirty` when it differs from it, or "unknown" outside git.

    Asked of the package's own files, so that a package installed inside some other repository's tree (a
    virtualenv in a project) is not given that repository's commit.
    """

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=30, check=False
        )

    try:
        tracked = git("ls-files", "--error-unmatch", "__init__.py")
        head = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--", ".")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if tracked.returncode or head.returncode or status.returncode:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def zip_modules(sources: dict[str, bytes]) -> bytes:
    """The modules as a zip of their sources, the same bytes for the same sources."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as z:
        for path in sorted(sources):
            info = zipfile.ZipInfo(path, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3  # Unix, wherever it is built
            info.external_attr = 0o100644 << 16
            z.writestr(info, sources[path])
    return buffer.getvalue()


def build(directory: Path | None = None) -> Bundle:
    """The single file for the package in `directory` (this package by default; the tests build copies)."""
    directory = directory or package_dir()
    root = directory.name
    sources = package_sources(directory)
    if chains := reached_left_out(sources, root):
        raise BundleError(
            "the addon imports modules the single file leaves out: " + "; ".join(" -> ".join(c) for c in chains)
        )
    shipped = {path: source for path, source in sources.items() if not is_left_out(module_name(path), root)}
    commit = source_commit(directory)
    encoded = base64.b64encode(zip_modules(shipped)).decode("ascii")
    text = _TEMPLATE.format(
        version=__version__,
        commit=commit,
        root=root,
        options=textwrap.fill(", ".join(OPTION_NAMES), 110, subsequent_indent="  "),
        modules=textwrap.fill(" ".join(sorted(shipped)), 110, subsequent_indent="  "),
        zip="\n".join(textwrap.wrap(encoded, 100)),
    )
    return Bundle(text, __version__, commit, tuple(sorted(module_name(p) for p in shipped)))


#: The single file. Its modules come from the zip in memory; a finder on sys.meta_path (not a sys.path entry,
#: which mitmproxy takes back after loading a script) keeps function-local imports working after the load.
_TEMPLATE = '''\
"""esrs-fix {version} for mitmproxy 11 and 12, as one file: `mitmdump -s esrs_fix.py` (or mitmweb, mitmproxy).

Version {version}, built by `esrs-fix bundle` from commit {commit}.
Needs nothing but mitmproxy and the Python standard library. Spots upstream answers that are TLS records where
HTTP was expected (a plaintext request sent to a TLS port), decodes and explains them, and answers or upgrades them
as asked. Options (`--set NAME=VALUE`; mitmweb's and the console's option editors show their help):
  {options}
License: MIT.

_ZIP below is a zip (stored, uncompressed) of these modules' sources, imported from memory;
`python3 esrs_fix.py > modules.zip` writes it out for reading:
  {modules}
"""

import base64
import importlib.abc
import importlib.machinery
import io
import logging
import os
import sys
import zipfile

VERSION = "{version}"
COMMIT = "{commit}"
_ZIP = """
{zip}
"""


class _Modules(importlib.abc.MetaPathFinder, importlib.abc.InspectLoader):
    """Finds and loads the {root} package from _ZIP, in memory."""

    esrs_fix_bundle = True  # how a later load of a single file knows an earlier one's finder and modules

    def __init__(self, origin, data):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            self.sources = {{name: z.read(name) for name in z.namelist()}}
        self.origin = origin

    def _entry(self, fullname):
        base = fullname.replace(".", "/")
        for path, is_package in ((base + "/__init__.py", True), (base + ".py", False)):
            if path in self.sources:
                return path, is_package
        return None, False

    def find_spec(self, fullname, path=None, target=None):
        entry, is_package = self._entry(fullname)
        if fullname.partition(".")[0] != "{root}" or entry is None:
            return None
        spec = importlib.machinery.ModuleSpec(fullname, self, origin=self._filename(entry), is_package=is_package)
        spec.has_location = True  # __file__ names the module inside this file, and tracebacks show its lines
        return spec

    def _filename(self, entry):
        return os.path.join(self.origin, *entry.split("/"))

    def is_package(self, fullname):
        return self._entry(fullname)[1]

    def get_source(self, fullname):
        entry, _ = self._entry(fullname)
        if entry is None:
            raise ImportError(fullname, name=fullname)
        return self.sources[entry].decode("utf-8")

    def get_code(self, fullname):
        source = self.get_source(fullname)
        return compile(source, self._filename(self._entry(fullname)[0]), "exec", dont_inherit=True)


def _install():
    """Put this file's modules first, in place of those of an earlier load (mitmproxy reloads a script that
    changes: the new file's code must run, not the old one's)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "esrs_fix_bundle", False)]
    for name in [n for n in sys.modules if n.partition(".")[0] == "{root}"]:
        if getattr(getattr(sys.modules[name], "__spec__", None), "loader", None).__class__.__name__ == "_Modules":
            del sys.modules[name]
    sys.meta_path.insert(0, _Modules(os.path.abspath(__file__), base64.b64decode(_ZIP)))


if __name__ == "__main__":  # run, not loaded by mitmproxy: hand out the modules for reading
    sys.stdout.buffer.write(base64.b64decode(_ZIP))
    sys.exit(0)

_install()

import {root}  # noqa: E402
from {root}.mitm.addon import EsrsFix, as_script  # noqa: E402

logging.getLogger("esrs_fix").info(
    "esrs-fix %s loaded (single file, commit %s) from %s", {root}.__version__, COMMIT, os.path.dirname({root}.__file__)
)
addons = [EsrsFix()]
as_script(globals())
'''
