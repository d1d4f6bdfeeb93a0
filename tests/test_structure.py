"""The package's shape, checked from its source with `ast`: who may name mitmproxy's internals, which way
imports point, what stays out of the product, and where the shared names are written.

Each rule is a small scanner over a package directory; every scanner is also run once on a synthetic package
in `tmp_path` that breaks its rule, so that a scanner that has gone blind fails its own test.
"""

from __future__ import annotations

import ast
import re
import shutil
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import stray_tls
from stray_tls.core import findings, names

PACKAGE_DIR = Path(stray_tls.__file__).resolve().parent
SOURCE_ROOT = PACKAGE_DIR.parent  # addon/: the package and the `mitmdump -s` script beside it

#: mitmproxy modules only the `compat` package may import or name: anything with a private component, and these
#: trees: the proxy core and the built-in addons, helpers outside the documented addon API (`mitmproxy.net`,
#: `mitmproxy.utils`), and the version, so that every decision taken on it is taken in `compat`.
PRIVATE_TREES = (
    "mitmproxy.proxy.layers",
    "mitmproxy.proxy.commands",
    "mitmproxy.proxy.events",
    "mitmproxy.proxy.context",
    "mitmproxy.addons",
    "mitmproxy.net",
    "mitmproxy.utils",
    "mitmproxy.version",
)
#: Attributes of mitmproxy objects that only the `compat` package may touch: the deferred `--set` values and their
#: private `.val`, and the version string (however the version module was reached).
PRIVATE_ATTRIBUTES = frozenset({"deferred", "val", "VERSION"})
#: The package allowed all of the above (relative to the product's package): its __init__ and every submodule.
COMPAT = "compat"
#: The names written once, in `names`: their values must not appear as string constants anywhere else.
GUARDED_NAMES = {
    "LABEL_HEADER": names.LABEL_HEADER,
    "UPSTREAM_LABEL_HEADER": names.UPSTREAM_LABEL_HEADER,
    "METADATA_KEY": names.METADATA_KEY,
    "VIEW_NAME": names.VIEW_NAME,
    **{f"option {name}": name for name in names.OPTION_NAMES},
}
_DOTTED_MITMPROXY = re.compile(r"\bmitmproxy(?:\.[A-Za-z_]\w*)+")
#: The package's modules from the bottom up (relative names; "" is the package's own __init__): each may import
#: only modules before it. The Layout in docs/development.md lists them in this order, folder by folder.
#: A package's __init__ comes first in its folder: importing any module runs it, so it imports nothing of its own
#: (`core.records` stays free of mitmproxy); compat's is the exception, after its submodules: it re-exports them,
#: and the modules below it import none of them.
LAYERS = (
    "",
    "core",
    "core.names",
    "core.registry",
    "core.records",
    "core.frames",
    "core.http1",
    "core.findings",
    "core.pasted",
    "core.addresses",
    "core.text",
    "compat.versions",
    "compat.messages",
    "compat.options",
    "compat.views",
    "compat.http1",
    "compat.driver",
    "compat.early",
    "compat.replay",
    "compat.script",
    "compat",
    "mitm",
    "mitm.learned",
    "mitm.report",
    "mitm.causes",
    "mitm.flowrecord",
    "mitm.route",
    "mitm.upgrade",
    "mitm.responses",
    "mitm.contentview",
    "mitm.options",
    "mitm.labels",
    "mitm.rewrite",
    "mitm.decision",
    "mitm.upgrading",
    "mitm.detection",
    "mitm.inspection",
    "mitm.addon",
    "fieldkit",
    "fieldkit.extras",
    "fieldkit.reassembly",
    "fieldkit.conversations",
    "fieldkit.results",
    "fieldkit.streams",
    "fieldkit.ticket",
    "fieldkit.proxyauth",
    "fieldkit.wire",
    "fieldkit.shapes",
    "fieldkit.probes",
    "fieldkit.verdicts",
    "fieldkit.diagnose",
    "fieldkit.capture",
    "fieldkit.commands",
    "launch",
    "bundle",
    "cli",
    "lab",
    "lab.servers",
    "lab.latency",
    "lab.proxies",
    "lab.check",
    "lab.mitm",
    "lab.scenarios",
    "lab.cli",
    "main",
)
#: The products side by side: neither imports the other, and the field kit needs nothing of mitmproxy's (it runs
#: where mitmproxy is not installed), so it never imports compat either.
APART = (("mitm", "fieldkit"), ("fieldkit", "mitm"), ("fieldkit", "compat"))


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. "stray_tls.mitm.addon"
    path: Path
    tree: ast.Module
    is_package: bool  # an __init__.py

    @property
    def package(self) -> list[str]:
        """The package that relative imports start from."""
        parts = self.name.split(".")
        return parts if self.is_package else parts[:-1]


@dataclass(frozen=True)
class Violation:
    module: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line}: {self.what}"


def load_package(directory: Path) -> dict[str, Module]:
    """Every module of the package in `directory` (its name is the directory's name), parsed."""
    modules: dict[str, Module] = {}
    for path in sorted(directory.rglob("*.py")):
        relative = path.relative_to(directory.parent).with_suffix("")
        parts = list(relative.parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        name = ".".join(parts)
        modules[name] = Module(name, path, ast.parse(path.read_text(encoding="utf-8"), str(path)), is_package)
    return modules


def imported_modules(module: Module, known: set[str] | None = None) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) for every import anywhere in the module, function-local ones included.

    `from X import a` gives X.a when that is a module of the package (`known`) or a mitmproxy module path
    (which cannot be told from an attribute without importing it: both are reported), and X otherwise.
    """
    known = known or set()
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.package[: len(module.package) - (node.level - 1)]
                target = ".".join(base + (node.module.split(".") if node.module else []))
            else:
                target = node.module or ""
            submodules = [f"{target}.{alias.name}" for alias in node.names]
            in_package = [s for s in submodules if s in known]
            if target.split(".")[0] == "mitmproxy":
                yield node.lineno, target
                for s in submodules:
                    yield node.lineno, s
            elif in_package:
                yield from ((node.lineno, s) for s in in_package)
                if len(in_package) < len(submodules):  # names from the module itself, too
                    yield node.lineno, target
            else:
                yield node.lineno, target


def is_private_mitmproxy(module_name: str) -> bool:
    parts = module_name.split(".")
    if parts[0] != "mitmproxy":
        return False
    if any(p.startswith("_") for p in parts[1:]):
        return True
    return any(module_name == tree or module_name.startswith(tree + ".") for tree in PRIVATE_TREES)


def string_constants(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Every str constant (and bytes constant, read as latin-1), docstrings included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str | bytes):
            value = node.value if isinstance(node.value, str) else node.value.decode("latin-1")
            yield node.lineno, value


def within(name: str, package: str) -> bool:
    """`name` is the module `package` or one of its submodules (`x.compat.early`; `x.compatible` is not)."""
    return name == package or name.startswith(package + ".")


def private_mitmproxy_uses(modules: dict[str, Module], allowed: str) -> list[Violation]:
    """Imports, names in strings and private attributes of mitmproxy's internals outside `allowed` (a module, or a
    package and all its submodules)."""
    found: list[Violation] = []
    for module in modules.values():
        if allowed and within(module.name, allowed):
            continue
        for line, name in imported_modules(module, set(modules)):
            if is_private_mitmproxy(name):
                found.append(Violation(module.name, line, f"imports {name}"))
        for line, value in string_constants(module.tree):
            for named in _DOTTED_MITMPROXY.findall(value):
                if is_private_mitmproxy(named):
                    found.append(Violation(module.name, line, f"names {named} in a string"))
            if value in PRIVATE_ATTRIBUTES:
                found.append(Violation(module.name, line, f"names the private attribute {value!r} in a string"))
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Attribute) and node.attr in PRIVATE_ATTRIBUTES:
                found.append(Violation(module.name, node.lineno, f"uses the private attribute .{node.attr}"))
    return found


def import_graph(modules: dict[str, Module]) -> dict[str, set[str]]:
    """Edges between the package's own modules (relative imports resolved, function-local ones counted)."""
    known = set(modules)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for module in modules.values():
        for _, name in imported_modules(module, known):
            if name in known and name != module.name:
                graph[module.name].add(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path that returns to its start (a -> b -> a), or None."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = grey
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt, black) == grey:
                return [*stack[stack.index(nxt) :], nxt]
            if colour.get(nxt) == white and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        colour[node] = black
        return None

    for start in sorted(graph):
        if colour[start] == white and (cycle := visit(start)):
            return cycle
    return None


def upward_imports(modules: dict[str, Module], root: str, layers: tuple[str, ...]) -> list[Violation]:
    """Imports of the package's own modules that do not point down `layers`, and modules `layers` does not rank."""
    rank = {".".join(filter(None, (root, name))): n for n, name in enumerate(layers)}
    found = [Violation(name, 0, "has no place in the layers") for name in sorted(set(modules) - set(rank))]
    for module in modules.values():
        for line, name in imported_modules(module, set(modules)):
            if name in rank and name != module.name and module.name in rank and rank[name] >= rank[module.name]:
                found.append(Violation(module.name, line, f"imports {name}, which is not below it"))
    return found


def lab_imports(modules: dict[str, Module], root: str) -> list[Violation]:
    """Imports of `root.lab` from outside the lab and the command-line entry point (`root.main`)."""
    lab = f"{root}.lab"
    found: list[Violation] = []
    for module in modules.values():
        if module.name == lab or module.name.startswith(lab + ".") or module.name == f"{root}.main":
            continue
        for line, name in imported_modules(module, set(modules)):
            if name == lab or name.startswith(lab + "."):
                found.append(Violation(module.name, line, f"imports {name}"))
        for line, value in string_constants(module.tree):
            if re.search(rf"\b{re.escape(lab)}\b", value):
                found.append(Violation(module.name, line, f"names {lab} in a string"))
    return found


def shipped_test_modules(source_root: Path) -> list[Path]:
    """The test-only capture writer (`capgen`) anywhere under the product's source root."""
    return sorted(p for p in source_root.rglob("*") if p.stem == "capgen" and p.suffix in (".py", ".pyc", ""))


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):  # attribute docstrings
            ids.add(id(node.value))
    return ids


def _logger_names(tree: ast.AST) -> set[int]:
    """`logging.getLogger("...")` arguments: a logger's name is not a metadata key even when they coincide."""
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if called == "getLogger":
                ids.update(id(a) for a in node.args)
    return ids


def repeated_names(modules: dict[str, Module], home: str, guarded: dict[str, str]) -> list[Violation]:
    """String constants equal to a guarded name (case-insensitively) outside its home module.

    The rule is equality, not containment: help texts, messages and f-strings may mention an option by
    name; a constant that *is* the name is a second definition of it. Docstrings and logger names are
    exempt.
    """
    wanted = {value.casefold(): label for label, value in guarded.items()}
    found: list[Violation] = []
    for module in modules.values():
        if module.name == home:
            continue
        exempt = _docstring_nodes(module.tree) | _logger_names(module.tree)
        for node in ast.walk(module.tree):
            if not isinstance(node, ast.Constant) or id(node) in exempt:
                continue
            value = node.value
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            if isinstance(value, str) and (label := wanted.get(value.casefold())):
                found.append(Violation(module.name, node.lineno, f"repeats {label} ({value!r}); use names.py"))
    return found


def _report(violations: list[Violation]) -> str:
    return "\n".join(str(v) for v in violations)


# -- the real package


@pytest.fixture(scope="module")
def package() -> dict[str, Module]:
    modules = load_package(PACKAGE_DIR)
    assert {"stray_tls", f"stray_tls.{COMPAT}", "stray_tls.mitm.addon", "stray_tls.core.names"} <= set(modules)
    assert modules[f"stray_tls.{COMPAT}"].is_package  # one module per concern, under compat/
    return modules


def test_only_compat_names_mitmproxy_internals(package: dict[str, Module]) -> None:
    violations = private_mitmproxy_uses(package, f"stray_tls.{COMPAT}")
    assert not violations, "only the compat package may name mitmproxy's internals:\n" + _report(violations)


def test_compat_is_where_the_internals_are_named(package: dict[str, Module]) -> None:
    # The scanner sees compat's own uses, each in the submodule of its concern: were it blind to them, the test
    # above would pass for nothing.
    compat = {name: m for name, m in package.items() if within(name, f"stray_tls.{COMPAT}")}
    seen = {(v.module.removeprefix(f"stray_tls.{COMPAT}."), v.what) for v in private_mitmproxy_uses(compat, "")}
    assert {
        ("http1", "imports mitmproxy.proxy.layers.http._http1"),
        ("http1", "imports mitmproxy.proxy.commands"),
        ("options", "names the private attribute 'deferred' in a string"),
        ("options", "names the private attribute 'val' in a string"),
        ("versions", "imports mitmproxy.version"),
        ("versions", "uses the private attribute .VERSION"),
        ("versions", "imports mitmproxy.utils"),  # parse_size, for body_size_limit
        ("replay", "imports mitmproxy.addons.clientplayback"),
    } <= seen


def test_stray_tls_imports_have_no_cycle(package: dict[str, Module]) -> None:
    graph = import_graph(package)
    assert "stray_tls.compat" in graph["stray_tls.mitm.detection"]  # edges are really there
    assert "stray_tls.fieldkit.capture" in graph["stray_tls.fieldkit.commands"]  # a function-local import counts
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


#: How large a room may grow: past these, a module, class or function holds more than one idea (the lab included).
MAX_MODULE_LINES, MAX_CLASS_LINES, MAX_FUNCTION_LINES = 500, 260, 80


def oversized(modules: dict[str, Module]) -> list[Violation]:
    """Modules, classes and functions longer than the limits above, by their lines in the source."""
    found: list[Violation] = []
    for module in modules.values():
        lines = len(module.path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_MODULE_LINES:
            found.append(Violation(module.name, 0, f"is {lines} lines (at most {MAX_MODULE_LINES})"))
        for node in ast.walk(module.tree):
            if isinstance(node, ast.ClassDef):
                limit = MAX_CLASS_LINES
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                limit = MAX_FUNCTION_LINES
            else:
                continue
            if (size := (node.end_lineno or node.lineno) - node.lineno + 1) > limit:
                found.append(Violation(module.name, node.lineno, f"{node.name} is {size} lines (at most {limit})"))
    return found


def test_no_room_outgrows_one_idea(package: dict[str, Module]) -> None:
    bench = load_package(SOURCE_ROOT.parent / "scripts" / "benchparts")
    violations = oversized(package) + oversized(bench)
    assert not violations, "split by idea:\n" + _report(violations)


def test_scanner_finds_oversized_rooms(tmp_path: Path) -> None:
    long_function = "def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES
    long_class = "class C:\n" + "".join(f"    def m{i}(self):\n        return {i}\n\n" for i in range(90))
    modules = make_package(
        tmp_path,
        {"ok.py": "def f():\n    return 1\n", "fun.py": long_function, "cls.py": long_class, "big.py": "x = 1\n" * 501},
    )
    assert {(v.module, v.what) for v in oversized(modules)} == {
        ("fakepkg.fun", f"f is {MAX_FUNCTION_LINES + 1} lines (at most {MAX_FUNCTION_LINES})"),
        ("fakepkg.cls", f"C is 270 lines (at most {MAX_CLASS_LINES})"),
        ("fakepkg.big", f"is 501 lines (at most {MAX_MODULE_LINES})"),
    }


def test_the_bench_parts_import_one_way() -> None:
    parts = load_package(SOURCE_ROOT.parent / "scripts" / "benchparts")
    graph = import_graph(parts)
    assert "benchparts.lab" in graph["benchparts.common"]  # edges are really there
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle among the bench parts: " + " -> ".join(cycle or [])


def test_stray_tls_imports_point_down_the_layers(package: dict[str, Module]) -> None:
    violations = upward_imports(package, "stray_tls", LAYERS)
    assert not violations, "imports must point down LAYERS (and docs/development.md's Layout):\n" + _report(violations)


#: The documentation beside the README (docs/*.md): the README links here; what it once held in full lives here now.
DOCS = SOURCE_ROOT.parent / "docs"


def readme_layout_modules(readme: str) -> list[str]:
    """The package's folders and modules in the order the Layout block (docs/development.md) lists them: `  core/`
    for a folder, `    names.py` for a module in it, `  cli.py` for one beside the folders (relative dotted names;
    a folder whose modules are not listed one a line, as compat's, stands for all of them)."""
    block = readme.split("## Layout", 1)[1].split("```")[1]
    names: list[str] = []
    folder = ""
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        entry = line.strip().split("  ")[0]
        if indent == 2:  # in addon/stray_tls/
            folder = entry.removesuffix("/") if entry.endswith("/") else ""
            names.append(entry.removesuffix("/").removesuffix(".py"))
        elif indent == 4 and folder:
            names.append(f"{folder}.{entry.removesuffix('.py')}")
    return names


def test_the_documented_layout_lists_the_modules_in_the_order_imports_point() -> None:
    listed = readme_layout_modules((DOCS / "development.md").read_text())
    # the order of LAYERS, each folder at the place of its first module
    expected: list[str] = []
    for name in LAYERS:
        top = name.split(".")[0]
        if name and top not in expected:
            expected.append(top)
        if "." in name and name in listed:
            expected.append(name)
    assert listed == expected, "the Layout in docs/development.md and LAYERS disagree"
    assert "core.records" in listed and "cli" in listed  # modules in folders and beside them are both read


def crossing_imports(modules: dict[str, Module], root: str, apart: tuple[tuple[str, str], ...]) -> list[Violation]:
    """Imports from one folder of the package into another that it must stay apart from (`apart`: (from, to))."""
    found: list[Violation] = []
    for module in modules.values():
        for source, target in apart:
            if not within(module.name, f"{root}.{source}"):
                continue
            for line, name in imported_modules(module, set(modules)):
                if within(name, f"{root}.{target}"):
                    found.append(Violation(module.name, line, f"imports {name}: {source} stays apart from {target}"))
    return found


def test_the_two_products_stay_apart(package: dict[str, Module]) -> None:
    violations = crossing_imports(package, "stray_tls", APART)
    assert not violations, "the addon and the field kit stand side by side on the core:\n" + _report(violations)


def top_level_classes(modules: dict[str, Module]) -> dict[str, list[str]]:
    """Each class name defined at a module's top level, with the modules that define it."""
    found: dict[str, list[str]] = {}
    for module in modules.values():
        for node in module.tree.body:
            if isinstance(node, ast.ClassDef):
                found.setdefault(node.name, []).append(module.name)
    return found


def test_no_two_classes_share_a_name(package: dict[str, Module]) -> None:
    twice = {name: where for name, where in top_level_classes(package).items() if len(where) > 1}
    assert not twice, f"one name, one thing: {twice}"


def test_the_product_never_imports_the_lab(package: dict[str, Module]) -> None:
    violations = lab_imports(package, "stray_tls")
    assert not violations, "the lab sits on top of the product, not under it:\n" + _report(violations)
    assert "stray_tls.lab.cli" in import_graph(package)["stray_tls.main"]  # main is the one allowed door


def test_the_test_only_capture_writer_is_not_shipped(package: dict[str, Module]) -> None:
    assert shipped_test_modules(SOURCE_ROOT) == []
    importing = [
        Violation(m.name, line, f"imports {name}")
        for m in package.values()
        for line, name in imported_modules(m, set(package))
        if name.split(".")[-1] == "capgen" or name.split(".")[0] == "tests"
    ]
    assert not importing, _report(importing)


def test_shared_names_are_written_once_in_names_py(package: dict[str, Module]) -> None:
    violations = repeated_names(package, "stray_tls.core.names", GUARDED_NAMES)
    assert not violations, "a shared name is written again outside names.py:\n" + _report(violations)


# -- the scanners, each shown a synthetic package that breaks its rule


def make_package(root: Path, files: dict[str, str], name: str = "fakepkg") -> dict[str, Module]:
    directory = root / name
    for relative, source in {"__init__.py": "", **files}.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")
    return load_package(directory)


def test_scanner_finds_every_way_of_naming_the_internals(tmp_path: Path) -> None:
    modules = make_package(
        tmp_path,
        {
            "compat/__init__.py": "from .early import x\n",
            "compat/early.py": "from mitmproxy.proxy.layers.http import _http1\n",
            "compatible.py": "from mitmproxy.proxy import commands\n",  # beside compat, not in it
            "a.py": "import mitmproxy.proxy.layers.http._http1\n",
            "b.py": "def f():\n    from mitmproxy.proxy import commands\n",
            "c.py": "from mitmproxy.addons import script\n",
            "d.py": "from mitmproxy import _private\n",
            "e.py": "import importlib\nX = importlib.import_module('mitmproxy.proxy.events')\n",
            "f.py": "def f(options):\n    return options.deferred\n",
            "g.py": "def f(options):\n    return getattr(options, 'deferred')\n",
            "h.py": "from mitmproxy.net.http import status_codes\n",
            "i.py": "def f():\n    from mitmproxy.utils import human\n",
            "j.py": "from mitmproxy import version\n",
            "k.py": "import mitmproxy\nMAJOR = int(mitmproxy.version.VERSION.split('.')[0])\n",
            "l.py": "from mitmproxy.version import VERSION\n",
            "m.py": "def f(pending):\n    return pending.val\n",
            "fine.py": "from http import HTTPStatus\nfrom mitmproxy import ctx, http\n"
            "from mitmproxy.proxy import server_hooks\n",
        },
    )
    violations = private_mitmproxy_uses(modules, "fakepkg.compat")
    expected = {f"fakepkg.{m}" for m in [*"abcdefghijklm", "compatible"]}
    assert {v.module for v in violations} == expected, _report(violations)


def test_scanner_reports_a_cycle_with_its_path(tmp_path: Path) -> None:
    modules = make_package(
        tmp_path,
        {
            "a.py": "from . import b\n",
            "b.py": "def late():\n    from .sub import c\n",  # function-local, and through a subpackage
            "sub/__init__.py": "",
            "sub/c.py": "from ..a import something\n",
            "d.py": "from . import a\n",  # leads into the cycle without being part of it
        },
    )
    cycle = find_cycle(import_graph(modules))
    assert cycle == ["fakepkg.a", "fakepkg.b", "fakepkg.sub.c", "fakepkg.a"]
    acyclic = make_package(tmp_path / "ok", {"a.py": "from . import b\n", "b.py": "import os\n"})
    assert find_cycle(import_graph(acyclic)) is None


def test_scanner_finds_an_import_that_points_up_the_layers(tmp_path: Path) -> None:
    modules = make_package(
        tmp_path,
        {
            "records.py": "",
            "findings.py": "from . import records\n",  # down: fine
            "text.py": "def late():\n    from .addon import x\n",  # up, function-local
            "addon.py": "from fakepkg import findings\nfrom .text import y\n",  # down twice: fine
            "same.py": "from . import same2\n",
            "same2.py": "",
            "stray.py": "",  # not ranked
            "sub/__init__.py": "from .. import addon\n",  # a package __init__ that imports up
        },
    )
    layers = ("", "sub", "records", "findings", "text", "addon", "same", "same2")
    violations = upward_imports(modules, "fakepkg", layers)
    assert {(v.module, v.what) for v in violations} == {
        ("fakepkg.text", "imports fakepkg.addon, which is not below it"),
        ("fakepkg.same", "imports fakepkg.same2, which is not below it"),
        ("fakepkg.stray", "has no place in the layers"),
        ("fakepkg.sub", "imports fakepkg.addon, which is not below it"),
    }, _report(violations)


def test_scanner_finds_the_lab_imported_from_the_product(tmp_path: Path) -> None:
    modules = make_package(
        tmp_path,
        {
            "lab/__init__.py": "",
            "lab/servers.py": "from .. import records\n",
            "records.py": "",
            "main.py": "from .lab import servers\n",  # allowed
            "addon.py": "def f():\n    from .lab import servers\n",
            "wire.py": "from fakepkg.lab.servers import free_port\n",
            "cli.py": "from . import lab\n",
        },
    )
    violations = lab_imports(modules, "fakepkg")
    assert {v.module for v in violations} == {"fakepkg.addon", "fakepkg.wire", "fakepkg.cli"}, _report(violations)


def test_scanner_finds_imports_between_folders_kept_apart(tmp_path: Path) -> None:
    modules = make_package(
        tmp_path,
        {
            "core/__init__.py": "",
            "core/names.py": "",
            "mitm/__init__.py": "",
            "mitm/addon.py": "from ..core import names\n",  # down into the core: fine
            "kit/__init__.py": "",
            "kit/check.py": "def f():\n    from ..mitm.addon import X\n",  # function-local, into the other product
            "kit/pcap.py": "from fakepkg.mitm import addon\n",  # absolute
            "kitchen.py": "from .mitm import addon\n",  # beside kit, not in it
        },
    )
    violations = crossing_imports(modules, "fakepkg", (("kit", "mitm"),))
    assert {v.module for v in violations} == {"fakepkg.kit.check", "fakepkg.kit.pcap"}, _report(violations)


def test_scanner_finds_two_classes_of_one_name(tmp_path: Path) -> None:
    modules = make_package(
        tmp_path,
        {
            "a.py": "class Record:\n    class Inner:\n        pass\n",
            "b.py": "class Record:\n    pass\ndef f():\n    class Inner:\n        pass\n",  # nested ones do not count
        },
    )
    assert top_level_classes(modules) == {"Record": ["fakepkg.a", "fakepkg.b"]}


def test_scanner_finds_a_shipped_capgen(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    assert shipped_test_modules(tmp_path) == []
    (tmp_path / "pkg" / "capgen.py").write_text("")
    assert shipped_test_modules(tmp_path) == [tmp_path / "pkg" / "capgen.py"]


def test_scanner_finds_a_second_definition_of_a_shared_name(tmp_path: Path) -> None:
    guarded = {"LABEL_HEADER": "X-ESRS-Fix", "METADATA_KEY": "esrs_fix", "option esrs_rewrite": "esrs_rewrite"}
    modules = make_package(
        tmp_path,
        {
            "names.py": "LABEL_HEADER = 'X-ESRS-Fix'\nMETADATA_KEY = 'esrs_fix'\nOPT = 'esrs_rewrite'\n",
            "clean.py": '''
                """Mentions esrs_rewrite and X-ESRS-Fix in a docstring: fine."""
                import logging
                log = logging.getLogger("esrs_fix")
                HELP = "set esrs_rewrite=true to rewrite"
                def f(flow, name):
                    """esrs_fix"""
                    return f"{name}_upstream: esrs_rewrite: bad value"
            ''',
            "header.py": "H = b'X-Esrs-FIX'\n",
            "meta.py": "def f(flow):\n    return flow.metadata['esrs_fix']\n",
            "option.py": "def configure(updated):\n    return 'esrs_rewrite' in updated\n",
        },
    )
    violations = repeated_names(modules, "fakepkg.names", guarded)
    flagged = {v.module for v in violations}
    assert flagged == {"fakepkg.header", "fakepkg.meta", "fakepkg.option"}, _report(violations)


def test_violations_planted_in_a_copy_of_the_real_package_are_found(tmp_path: Path) -> None:
    copy = tmp_path / "stray_tls"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    plants = {
        "fieldkit/capture.py": "\ndef _planted():\n    from ..lab import servers\n",  # the product imports the lab
        "core/findings.py": "\ndef _planted():\n    from . import text\n",  # text imports findings: a cycle
        "mitm/report.py": "\nfrom mitmproxy.proxy.layers import http as _planted\n",  # an internal outside compat
        "fieldkit/wire.py": "\n_PLANTED = 'X-ESRS-Fix'\n",  # a second definition of the label
        "core/records.py": "\ndef _planted():\n    from ..mitm import learned\n",  # learned sits above records
        "fieldkit/ticket.py": "\ndef _planted():\n    from ..mitm import flowrecord\n",  # one product imports the other
        "fieldkit/reassembly.py": "\nclass Record:\n    pass\n",  # a second class of a name core.records has
    }
    for name, source in plants.items():
        with (copy / name).open("a", encoding="utf-8") as f:
            f.write(source)
    modules = load_package(copy)
    assert {v.module for v in private_mitmproxy_uses(modules, f"stray_tls.{COMPAT}")} == {"stray_tls.mitm.report"}
    assert {v.module for v in lab_imports(modules, "stray_tls")} == {"stray_tls.fieldkit.capture"}
    cycle = find_cycle(import_graph(modules)) or []
    assert "stray_tls.core.findings" in cycle and "stray_tls.core.text" in cycle
    repeated = {v.module for v in repeated_names(modules, "stray_tls.core.names", GUARDED_NAMES)}
    assert "stray_tls.fieldkit.wire" in repeated
    upward = {(v.module, v.what) for v in upward_imports(modules, "stray_tls", LAYERS)}
    assert ("stray_tls.core.records", "imports stray_tls.mitm.learned, which is not below it") in upward
    assert ("stray_tls.core.findings", "imports stray_tls.core.text, which is not below it") in upward
    assert {v.module for v in crossing_imports(modules, "stray_tls", APART)} == {"stray_tls.fieldkit.ticket"}
    assert top_level_classes(modules)["Record"] == ["stray_tls.core.records", "stray_tls.fieldkit.reassembly"]


def _backticked(text: str) -> set[str]:
    return set(re.findall(r"`([a-z_]+)`", text))


def test_the_docs_list_the_records_keys() -> None:
    """The report's keys and the metadata's keys, as docs/output.md lists them, are the record's (record.keys())."""
    from stray_tls.mitm import flowrecord as record

    readme = (DOCS / "output.md").read_text()
    report = readme.split("## The report", 1)[1].split("A path that cannot be opened", 1)[0]
    assert _backticked(report) - {"esrs_report"} == set(record.REPORT_KEYS) | set(record.keys())
    metadata = readme.split('`flow.metadata["esrs_fix"]`', 1)[1].split("Flows that are not live", 1)[0]
    kinds_and_levels = {"high", "medium", "low", "http_status"} | {str(k) for k in findings.Kind}
    assert _backticked(metadata) - kinds_and_levels == set(record.keys())
