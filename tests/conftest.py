"""Shared fixtures: the lab's own servers and mitmdump runner, so tests and lab exercise the same peers."""

from __future__ import annotations

import inspect
import os
import shutil
from collections.abc import Awaitable, Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from stray_tls.lab import servers
from stray_tls.lab.mitm import Mitmdump
from stray_tls.mitm.addon import EsrsFix

from .realpeers import real_server  # noqa: F401  (the real Debian TLS servers: a session fixture)
from .realproxies import jsse_esrs, real_proxies  # noqa: F401  (real proxies: session fixtures)

#: The field report's seven bytes, and the one-line summary every consumer must give for them.
FIELD_ALERT = bytes.fromhex("15 03 01 00 02 02 0a")
SUMMARY = "TLS alert: fatal unexpected_message (10), record version TLS 1.0"


@pytest.fixture
def addon() -> Iterator[EsrsFix]:
    a = EsrsFix()
    yield a
    a.unload()  # never leave mitmproxy's HTTP/1 classes wrapped for the next test


def hook(addon: EsrsFix, name: str, *args: Any) -> Awaitable[None] | None:
    """Run hook `name` of esrs-fix as mitmproxy does: the addon's hook (its parts' handlers, in their order), whose
    awaitable, when it returns one, the caller awaits; None when esrs-fix has no such hook."""
    call = getattr(addon, name, None)
    if call is None:
        return None
    result = call(*args)
    return result if result is not None and inspect.isawaitable(result) else None


@pytest.fixture(scope="session")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return servers.make_certificate(tmp_path_factory.mktemp("cert"))


@pytest.fixture
def start_server() -> Iterator[Callable[[servers.TCPServer], servers.TCPServer]]:
    started: list[servers.TCPServer] = []

    def start(server: servers.TCPServer) -> servers.TCPServer:
        started.append(server)
        return server.start()

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def esrs(cert, start_server) -> Callable[..., servers.EsrsServer]:
    """An ESRS stand-in with the given plaintext behaviour, started on a free port."""

    def make(plaintext: servers.Plaintext = servers.Plaintext.ALERT, **kw) -> servers.EsrsServer:
        server = servers.EsrsServer(cert, servers.EsrsBehaviour(plaintext=plaintext, **kw))
        start_server(server)
        return server

    return make


@pytest.fixture
def mitmdump(tmp_path: Path) -> Iterator[Callable[..., Mitmdump]]:
    """Start real mitmdump processes; every one is stopped (by its own pid) at the end of the test."""
    started: list[Mitmdump] = []

    def start(args: list[str], *, addon: bool = True, listeners: int = 1) -> Mitmdump:
        m = Mitmdump(args, tmp_path / f"mitmdump-{len(started)}.log", addon=addon, listeners=listeners)
        started.append(m)
        return m.start()

    yield start
    for m in started:
        m.stop()


def reverse_modes(targets: list[str]) -> tuple[list[str], list[int]]:
    """`--mode reverse:TARGET@PORT` for each target on a free port: one mitmdump, many upstreams."""
    ports = [servers.free_port() for _ in targets]
    args: list[str] = []
    for target, port in zip(targets, ports, strict=True):
        args += ["--mode", f"reverse:{target}@{port}"]
    return args, ports


@pytest.fixture(scope="session")
def curl() -> str:
    path = shutil.which("curl")
    if path is None:
        pytest.skip("curl is not installed")
    return path


#: Set by `.ci/run`, which installs every peer the suite needs: there a skipped test is a failed one, so that a peer
#: that did not install (or a test that skips for a wrong reason) cannot leave CI green without having run.
NO_SKIP = "ESRS_FIX_NO_SKIP"


def _no_skip(report: pytest.TestReport) -> None:
    if report.skipped and os.environ.get(NO_SKIP) and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, but {NO_SKIP} is set (CI installs every peer): {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    _no_skip(report)
    return report


#: Modules that skipped as a whole (`pytest.importorskip` at their top) under NO_SKIP. A collect report turned into
#: a failure would stop the whole run at collection; these fail the run at its end instead, every test having run.
_SKIPPED_MODULES: list[str] = []


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report: pytest.CollectReport = yield
    if report.skipped and os.environ.get(NO_SKIP):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _SKIPPED_MODULES.append(f"{report.nodeid}: {reason}")
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _SKIPPED_MODULES and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in _SKIPPED_MODULES:
        terminalreporter.write_line(f"FAILED (skipped, but {NO_SKIP} is set: CI installs every peer) {line}", red=True)
