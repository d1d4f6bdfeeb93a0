"""The single file (`esrs-fix bundle`) and `addon/esrs_fix.py` as users run them.

The end-to-end part loads them with the `mitmdump` and `mitmweb` of a virtualenv that holds mitmproxy (the major
this session runs on, at its exact version) and nothing of esrs-fix, from an empty folder, with no PYTHON*
variable: what a user who downloaded one file has. The virtualenv is made once (`.venv/bare-mitmNN`, kept across
sessions) and each process is started once per module.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.parse
import zipfile
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest

import stray_tls
from stray_tls import bundle
from stray_tls.fieldkit.wire import exchange
from stray_tls.lab import servers
from stray_tls.lab.mitm import Mitmdump, Mitmweb
from stray_tls.lab.servers import Plaintext

from .conftest import SUMMARY

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 8.0  # a client's wait; far below mitmproxy's idle timeout (600 s), never a speed claim


def esrs_fix(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "stray_tls.main", *args], capture_output=True, timeout=120, check=False, cwd=cwd
    )


def zip_of(text: str) -> bytes:
    """The zip the single file carries (its `_ZIP` string), decoded."""
    import base64

    return base64.b64decode(text.split('_ZIP = """\n', 1)[1].split('"""', 1)[0])


def copy_package(tmp_path: Path) -> Path:
    copy = tmp_path / "stray_tls"
    shutil.copytree(bundle.package_dir(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


# -- the build


def test_the_same_sources_give_the_same_bytes(tmp_path: Path) -> None:
    """Reproducible: neither file times, nor the checkout's place or line endings, nor the build reach the file."""
    first, second = bundle.build(), bundle.build()
    assert first.text == second.text
    copy = copy_package(tmp_path)
    for path in copy.rglob("*.py"):
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))  # a CRLF checkout
        os.utime(path, (1_000_000_000, 1_000_000_000))
    assert zip_of(bundle.build(copy).text) == zip_of(first.text)
    # and the command writes exactly that
    out = tmp_path / "esrs_fix.py"
    p = esrs_fix("bundle", "-o", str(out))
    assert p.returncode == 0, p.stderr
    assert out.read_bytes() == first.text.encode()
    assert f"sha256 {first.sha256}" in p.stderr.decode()


def test_the_zip_holds_the_addon_and_leaves_the_commands_and_the_lab_out() -> None:
    made = bundle.build()
    with zipfile.ZipFile(BytesIO(zip_of(made.text))) as z:
        infos = z.infolist()
    names = [i.filename for i in infos]
    assert names == sorted(names)
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)} and {i.compress_type for i in infos} == {0}
    assert {
        "stray_tls/__init__.py",
        "stray_tls/mitm/addon.py",
        "stray_tls/compat/__init__.py",
        "stray_tls/mitm/upgrade.py",
    } <= set(names)
    left_out = {"fieldkit", "lab", "main", "cli", "bundle", "launch", "core/http1"}  # by path, beside the package
    inside = [n.removeprefix("stray_tls/").removesuffix(".py").removesuffix("/__init__") for n in names]
    assert not [n for n in inside if any(n == m or n.startswith(m + "/") for m in left_out)], names
    assert not [n for n in names if "__pycache__" in n or not n.endswith(".py")], names
    assert made.modules == tuple(
        sorted(n.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for n in names)
    )


def test_a_new_module_is_shipped_without_a_list_to_keep(tmp_path: Path) -> None:
    copy = copy_package(tmp_path)
    (copy / "upgrade_planted.py").write_text("X = 1\n")
    (copy / "sub").mkdir()
    (copy / "sub" / "__init__.py").write_text("from ..core import names\n")
    modules = bundle.build(copy).modules
    assert "stray_tls.upgrade_planted" in modules and "stray_tls.sub" in modules


def test_the_addon_never_reaches_a_left_out_module(tmp_path: Path) -> None:
    assert bundle.reached_left_out(bundle.package_sources(bundle.package_dir()), "stray_tls") == []
    copy = copy_package(tmp_path)
    with (copy / "core" / "text.py").open("a") as f:  # reached through inspection -> text, when called
        f.write("\ndef _planted():\n    from ..fieldkit.diagnose import Credentials\n")
    with pytest.raises(bundle.BundleError) as e:
        bundle.build(copy)
    assert "stray_tls.mitm.inspection -> stray_tls.core.text -> stray_tls.fieldkit.diagnose" in str(e.value)
    with (copy / "core" / "text.py").open("a") as f:
        f.write("import stray_tls.lab.servers\n")
    with pytest.raises(bundle.BundleError, match=r"stray_tls.core.text -> stray_tls.lab"):
        bundle.build(copy)


def test_the_file_states_its_version_and_commit(tmp_path: Path) -> None:
    made = bundle.build()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    if head.returncode:
        pytest.skip("not a git checkout: the commit is 'unknown' (asserted below on a copy)")
    assert made.commit.removesuffix("+dirty") == head.stdout.strip()
    top = made.text[:600]
    assert top.startswith(f'"""esrs-fix {stray_tls.__version__} for mitmproxy 11 and 12')
    assert f"Version {stray_tls.__version__}, built by `esrs-fix bundle` from commit {made.commit}." in top
    # outside git, and inside a repository that does not track the package (a virtualenv in a project): unknown
    copy = copy_package(tmp_path)
    assert bundle.build(copy).commit == "unknown"
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "a project's own commit"], check=True)
    assert bundle.build(copy).commit == "unknown"


def test_the_file_imports_its_own_modules_from_memory(tmp_path: Path) -> None:
    """Even where esrs-fix is installed (this virtualenv), the file runs its own modules; reloaded, the new ones."""
    first, second = tmp_path / "a" / "esrs_fix.py", tmp_path / "b" / "esrs_fix.py"
    for path in (first, second):
        path.parent.mkdir()
        path.write_text(bundle.build().text)
    probe = f"""
import importlib, inspect, runpy, sys
runpy.run_path({str(first)!r}, run_name="loaded_by_mitmproxy")
import stray_tls, stray_tls.mitm.addon
addon_file = stray_tls.mitm.addon.__file__
assert addon_file == {str(first / "stray_tls" / "mitm" / "addon.py")!r}, addon_file
assert "class EsrsFix" in inspect.getsource(stray_tls.mitm.addon)  # tracebacks can show its lines
for left_out in ("stray_tls.lab", "stray_tls.cli", "stray_tls.launch", "stray_tls.fieldkit"):
    try:
        importlib.import_module(left_out)
    except ModuleNotFoundError:
        pass
    else:
        raise AssertionError(left_out + " was importable")
runpy.run_path({str(second)!r}, run_name="loaded_by_mitmproxy")  # mitmproxy reloads a changed script
import stray_tls.mitm.addon
assert stray_tls.mitm.addon.__file__.startswith({str(second)!r}), stray_tls.mitm.addon.__file__
print("ok")
"""
    p = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    assert p.stdout.strip() == "ok", p.stderr


def test_bundle_refuses_to_overwrite_the_addon_script() -> None:
    script = bundle.package_dir().parent / "esrs_fix.py"
    before = script.read_bytes()
    p = esrs_fix("bundle", "-o", str(script))
    assert p.returncode == 2 and b"is the addon script beside the package" in p.stderr
    assert script.read_bytes() == before


def test_version_has_one_source() -> None:
    p = esrs_fix("--version")
    assert p.returncode == 0 and p.stdout.decode().strip() == f"esrs-fix {stray_tls.__version__}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "stray_tls.__version__"}
    assert importlib.metadata.version("esrs-fix") == stray_tls.__version__


# -- as users run it: mitmproxy and nothing else


def bare_venv() -> Path:
    """A virtualenv with this session's mitmproxy (same version) and nothing of esrs-fix; made once, then reused."""
    version = importlib.metadata.version("mitmproxy")
    venv = ROOT / ".venv" / f"bare-mitm{version.split('.')[0]}"
    want = f"mitmproxy=={version} python {sys.version.split()[0]}"
    stamp = venv / ".esrs-bare"
    lock_path = venv.with_suffix(".lock")
    lock_path.parent.mkdir(exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two sessions at once: one builds, the other waits for it
        if not (stamp.is_file() and stamp.read_text() == want and (venv / "bin" / "mitmdump").is_file()):
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
            pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            p = subprocess.run(
                [*pip, f"mitmproxy=={version}"],
                capture_output=True,
                text=True,
                timeout=900,
                env=clean_env(),
                check=False,
            )
            assert p.returncode == 0, f"could not install mitmproxy=={version} into {venv}:\n{p.stderr[-3000:]}"
            stamp.write_text(want)
    return venv


def clean_env() -> dict[str, str]:
    """This environment without PYTHON* variables (PYTHONPATH above all): a user's shell."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


@pytest.fixture(scope="session")
def bare() -> Path:
    venv = bare_venv()
    check = "import importlib.util as u; print(u.find_spec('stray_tls'), u.find_spec('esrs_fix'))"
    p = subprocess.run(
        [venv / "bin" / "python", "-c", check], capture_output=True, text=True, env=clean_env(), cwd=venv, check=True
    )
    assert p.stdout.split() == ["None", "None"], "the bare virtualenv can import esrs-fix"
    return venv


class BareMitmdump(Mitmdump):
    """`mitmdump -s SCRIPT` from the bare virtualenv, as a user types it (its own console script)."""

    def __init__(self, venv: Path, script: Path, args: list[str], log_path: Path, **kw) -> None:
        super().__init__(args, log_path, addon=False, env=clean_env(), **kw)
        self.venv, self.script = venv, script

    def command(self) -> list[str]:
        bare_tool = str(self.venv / "bin" / self.tool)
        return [
            bare_tool,
            "--listen-host",
            "127.0.0.1",
            "--set",
            "termlog_verbosity=info",
            "-s",
            str(self.script),
            *self.args,
        ]


class BareMitmweb(BareMitmdump, Mitmweb):
    tool = "mitmweb"

    def __init__(self, venv: Path, script: Path, args: list[str], log_path: Path, web_port: int) -> None:
        Mitmweb.__init__(self, args, log_path, web_port=web_port, addon=False, env=clean_env())
        self.venv, self.script = venv, script


@pytest.fixture(scope="module")
def single_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`esrs-fix bundle -o esrs_fix.py`, in an empty folder: the folder holds that file and nothing else."""
    folder = tmp_path_factory.mktemp("single-file")
    p = esrs_fix("bundle", "-o", "esrs_fix.py", cwd=folder)
    assert p.returncode == 0, p.stderr
    assert [f.name for f in folder.iterdir()] == ["esrs_fix.py"]
    return folder / "esrs_fix.py"


@pytest.fixture(scope="module")
def upstreams(cert) -> Iterator[dict[str, servers.EsrsServer]]:
    """The stand-in ESRS server twice (the field report's alert to plaintext, TLS on the same port): one to be
    answered with the labelled 502, one to be upgraded."""
    started: dict[str, servers.EsrsServer] = {}
    for name in ("stray", "upgrade"):
        started[name] = servers.EsrsServer(cert, servers.EsrsBehaviour(plaintext=Plaintext.ALERT))
        started[name].start()
    yield started
    for server in started.values():
        server.stop()


def reverse(upstreams: dict[str, servers.EsrsServer]) -> tuple[list[str], dict[str, int]]:
    args: list[str] = []
    ports: dict[str, int] = {}
    for name, server in upstreams.items():
        ports[name] = servers.free_port()
        args += ["--mode", f"reverse:http://127.0.0.1:{server.port}@{ports[name]}"]
    return args, ports


@pytest.fixture(scope="module")
def bare_mitmdump(
    bare, single_file, upstreams, cert, tmp_path_factory
) -> Iterator[tuple[BareMitmdump, dict[str, int]]]:
    args, ports = reverse(upstreams)
    options = [
        "--set",
        "esrs_upgrade=true",
        "--set",
        "esrs_filter=~u /upgrade",
        "--set",
        f"ssl_verify_upstream_trusted_ca={cert[0]}",
    ]
    m = BareMitmdump(bare, single_file, [*args, *options], tmp_path_factory.mktemp("log") / "mitmdump.log", listeners=2)
    with m:
        yield m, ports


@pytest.fixture(scope="module")
def bare_mitmweb(bare, single_file, upstreams, tmp_path_factory) -> Iterator[tuple[BareMitmweb, dict[str, int]]]:
    args, ports = reverse({"stray": upstreams["stray"]})
    web = BareMitmweb(bare, single_file, args, tmp_path_factory.mktemp("log") / "mitmweb.log", servers.free_port())
    with web:
        yield web, ports


def get(port: int, path: str):
    return exchange(("127.0.0.1", port), f"GET {path} HTTP/1.1\r\nHost: esrs\r\n\r\n".encode(), TIMEOUT)


def assert_loaded_cleanly(log: str, script: Path) -> None:
    commit = bundle.build().commit
    loaded = f"esrs-fix {stray_tls.__version__} loaded (single file, commit {commit}) from {script}{os.sep}stray_tls"
    assert loaded in log, log
    assert "early detection is off" not in log, log  # the compatibility self-test passed inside the file
    assert "Traceback" not in log and "error in script" not in log, log


@pytest.mark.e2e
def test_mitmdump_answers_the_field_reports_alert_with_the_labelled_502(bare_mitmdump) -> None:
    _, ports = bare_mitmdump
    answer = get(ports["stray"], "/stray")
    assert answer.status == 502, answer
    assert answer.label == f"detected; {SUMMARY}"  # made by the early detection: the self-test passed
    assert SUMMARY.encode() in answer.body and b"15 03 01 00 02 02 0a" in answer.body
    assert b"The upstream answered a plaintext HTTP request with a TLS alert" in answer.body  # and explained


@pytest.mark.e2e
def test_mitmdump_upgrades_the_tls_server(bare_mitmdump, upstreams) -> None:
    _, ports = bare_mitmdump
    answer = get(ports["upgrade"], "/upgrade")
    assert answer.status == 200 and answer.body == servers.OK_BODY, answer
    assert (answer.label or "").startswith(f"upgraded; {SUMMARY}")
    assert upstreams["upgrade"].tls_requests >= 1


@pytest.mark.e2e
def test_mitmdump_loads_the_single_file_with_its_version_and_self_test(bare_mitmdump, single_file) -> None:
    m, _ = bare_mitmdump
    assert_loaded_cleanly(m.log(), single_file)


@pytest.mark.e2e
def test_mitmweb_shows_the_alert_in_the_tls_records_view(bare_mitmweb, single_file) -> None:
    web, ports = bare_mitmweb
    assert get(ports["stray"], "/stray").status == 502
    deadline = time.monotonic() + 10
    while not (flows := [f for f in json.loads(web.api("/flows")) if f["request"]["path"] == "/stray"]):
        assert time.monotonic() < deadline, "the flow never showed in mitmweb"
        time.sleep(0.1)
    flow_id = flows[0]["id"]
    rendered = web.api(f"/flows/{flow_id}/response/content/{urllib.parse.quote('tls records')}.json").decode()
    assert "description   unexpected_message (10)" in rendered and "level         fatal (2)" in rendered
    assert "TLS records" in web.api(f"/flows/{flow_id}/response/content/auto.json").decode()  # registered and chosen
    assert_loaded_cleanly(web.log(), single_file)


@pytest.mark.e2e
def test_a_checkouts_addon_script_finds_its_package_beside_it(bare, tmp_path: Path) -> None:
    """The quick start's second way: addon/ as a checkout has it, loaded by a mitmproxy that has no esrs-fix."""
    addon = tmp_path / "addon"
    shutil.copytree(ROOT / "addon", addon, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    log = tmp_path / "mitmdump.log"
    with BareMitmdump(bare, addon / "esrs_fix.py", ["-p", str(servers.free_port())], log) as m:
        pass
    assert f"esrs-fix {stray_tls.__version__} loaded from {addon / 'stray_tls'}" in m.log(), m.log()
    assert "early detection is off" not in m.log() and "Traceback" not in m.log()


def run_bare_mitmdump(venv: Path, folder: Path) -> subprocess.CompletedProcess[str]:
    """mitmdump -s esrs_fix.py from `folder`, expected to stop by itself at start-up."""
    command = [str(venv / "bin" / "mitmdump"), "--listen-host", "127.0.0.1", "-p", "0", "-s", "esrs_fix.py"]
    return subprocess.run(
        command, cwd=folder, env=clean_env(), capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.e2e
def test_the_addon_script_alone_says_what_is_missing_in_one_line(bare, tmp_path: Path) -> None:
    shutil.copy(ROOT / "addon" / "esrs_fix.py", tmp_path / "esrs_fix.py")
    p = run_bare_mitmdump(bare, tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out  # mitmproxy's errorcheck: an error was logged at start-up
    assert "Error logged during startup, exiting..." in out
    assert "Traceback" not in out and "ModuleNotFoundError" not in out, out
    (line,) = [line for line in out.splitlines() if "esrs-fix" in line]
    assert "stray_tls" in line and "`esrs-fix bundle -o esrs_fix.py`" in line and "`pip install esrs-fix`" in line


@pytest.mark.e2e
def test_a_broken_package_is_not_called_missing(bare, tmp_path: Path) -> None:
    """Only a missing package gets the sentence: a package that fails to import keeps its traceback."""
    shutil.copy(ROOT / "addon" / "esrs_fix.py", tmp_path / "esrs_fix.py")
    (tmp_path / "stray_tls").mkdir()
    (tmp_path / "stray_tls" / "__init__.py").write_text("import no_such_dependency_of_esrs_fix\n")
    p = run_bare_mitmdump(bare, tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode == 1 and "No module named 'no_such_dependency_of_esrs_fix'" in out and "Traceback" in out
    assert "esrs-fix bundle" not in out
