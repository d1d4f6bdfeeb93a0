"""Real proxies on loopback, for `esrs-fix check` to be measured against: proxy.py, pproxy, squid, tinyproxy, privoxy.

Each is started once per pytest session, on first use, with a minimal configuration in a temporary directory
(config, logs, pid files), and stopped by its own pid at the end of the session.  A proxy that is not installed
skips the test that asked for it, with the install command in the reason; one that is installed but does not come
up fails the test, with the tail of its log.

Every proxy that needs to know the origin (squid's `cache_peer`) points at one session-wide ESRS stand-in that
answers plaintext the way JSSE does (`15 03 03 00 02 02 0a`): `jsse_esrs`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stray_tls import records
from stray_tls.lab import servers

#: JSSE's answer to plaintext on a TLS port: a fatal unexpected_message alert in a TLS 1.2 record.
JSSE_ALERT = records.encode_alert(2, 10, 0x0303)
USER, PASSWORD = "esrsuser", "s3cr%t:pw"  # a password with characters that need percent-encoding in a URL

STARTUP_TIMEOUT = 20.0


@dataclass
class RealProxy:
    """One running proxy: its name, its port, and whether it wants `USER` / `PASSWORD`."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    auth: bool = False
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_listening(proxy: RealProxy) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proxy.process.poll() is not None:
            break
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", proxy.port), timeout=1):
            return
        time.sleep(0.1)
    proxy.stop()
    pytest.fail(f"{proxy.name} did not start listening on 127.0.0.1:{proxy.port}; its log:\n{_tail(proxy.log)}")


class RealProxies:
    """Starts each proxy on first `get(name)`; `stop_all()` ends them, each by its own pid."""

    NAMES = (
        "proxy.py",
        "proxy.py-auth",
        "pproxy",
        "squid",
        "squid-peer",
        "squid-auth",
        "tinyproxy",
        "privoxy",
    )

    def __init__(self, directory: Path, origin: servers.EsrsServer) -> None:
        self.directory = directory
        self.origin = origin
        self.running: dict[str, RealProxy] = {}
        self.unavailable: dict[str, str] = {}

    def get(self, name: str) -> RealProxy:
        if name in self.unavailable:
            pytest.skip(self.unavailable[name])
        if name not in self.running:
            start: Callable[[Path, int], RealProxy] = getattr(self, "_start_" + name.replace(".", "").replace("-", "_"))
            work = self.directory / name
            work.mkdir()
            _hand_to_squid_user(work)
            try:
                proxy = start(work, servers.free_port())
            except _Missing as e:
                self.unavailable[name] = str(e)
                pytest.skip(str(e))
            _wait_listening(proxy)
            self.running[name] = proxy
        return self.running[name]

    def stop_all(self) -> None:
        for proxy in self.running.values():
            proxy.stop()

    # -- the proxies --------------------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], work: Path, port: int, auth: bool = False) -> RealProxy:
        log = work / "stdout.log"
        with log.open("wb") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=work)
        return RealProxy(name, port, process, log, auth)

    def _start_proxypy(self, work: Path, port: int, auth: bool = False) -> RealProxy:
        _need_module("proxy", "pip install 'proxy.py>=2.4'  (or: pip install -e '.[lab]')")
        argv = [sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", str(port), "--num-workers", "1"]
        argv += ["--num-acceptors", "1", "--pid-file", str(work / "proxy.pid")]
        if auth:
            argv += ["--basic-auth", f"{USER}:{PASSWORD}"]
        return self._spawn("proxy.py-auth" if auth else "proxy.py", argv, work, port, auth)

    def _start_proxypy_auth(self, work: Path, port: int) -> RealProxy:
        return self._start_proxypy(work, port, auth=True)

    def _start_pproxy(self, work: Path, port: int) -> RealProxy:
        _need_module("pproxy", "pip install 'pproxy>=2.7'  (or: pip install -e '.[lab]')")
        return self._spawn("pproxy", [sys.executable, "-m", "pproxy", "-l", f"http://127.0.0.1:{port}"], work, port)

    def _squid(self, name: str, work: Path, port: int, extra: list[str], auth: bool = False) -> RealProxy:
        squid = _need_binary("squid", "apt-get install squid")
        conf = [
            f"http_port 127.0.0.1:{port}",
            f"pid_filename {work}/squid.pid",
            f"cache_log {work}/cache.log",
            f"access_log stdio:{work}/access.log",
            "cache_store_log none",
            f"coredump_dir {work}",
            "cache deny all",
            "cache_mem 8 MB",
            "pinger_enable off",
            "shutdown_lifetime 0 seconds",
            "logfile_rotate 0",
            "forward_timeout 10 seconds",
            "connect_timeout 5 seconds",
            "acl lab src 127.0.0.1/32",
            *extra,
        ]
        if auth:
            helper = Path("/usr/lib/squid/basic_ncsa_auth")
            htpasswd = _need_binary("htpasswd", "apt-get install apache2-utils")
            if not helper.is_file():
                raise _Missing(f"{helper} is missing: apt-get install squid")
            passwords = work / "htpasswd"
            subprocess.run([htpasswd, "-bc", str(passwords), USER, PASSWORD], check=True, capture_output=True)
            _hand_to_squid_user(passwords)
            conf += [
                f"auth_param basic program {helper} {passwords}",
                "auth_param basic realm esrs-lab",
                "auth_param basic children 1 startup=1 idle=1",
                "acl authenticated proxy_auth REQUIRED",
                "http_access deny !authenticated",
            ]
        conf += ["http_access allow lab", "http_access deny all"]
        if os.geteuid() == 0:
            conf.append("cache_effective_user proxy")
        config = work / "squid.conf"
        config.write_text("\n".join(line for line in conf if line) + "\n")
        return self._spawn(name, [squid, "-N", "-f", str(config)], work, port, auth)

    def _start_squid(self, work: Path, port: int) -> RealProxy:
        return self._squid("squid", work, port, [])

    def _start_squid_peer(self, work: Path, port: int) -> RealProxy:
        # A parent that is the origin itself, without `tls`: squid sends `GET https://...` there in plaintext
        return self._squid(
            "squid-peer",
            work,
            port,
            [
                f"cache_peer 127.0.0.1 parent {self.origin.port} 0 no-query no-digest originserver name=esrs",
                "cache_peer_access esrs allow all",
                "never_direct allow all",
            ],
        )

    def _start_squid_auth(self, work: Path, port: int) -> RealProxy:
        return self._squid("squid-auth", work, port, [], auth=True)

    def _start_tinyproxy(self, work: Path, port: int) -> RealProxy:
        tinyproxy = _need_binary("tinyproxy", "apt-get install tinyproxy")
        conf = [
            f"Port {port}",
            "Listen 127.0.0.1",
            "Timeout 10",
            f'PidFile "{work}/tinyproxy.pid"',
            f'LogFile "{work}/tinyproxy.log"',
            "LogLevel Info",
            "MaxClients 20",
            "Allow 127.0.0.1",
        ]
        if os.geteuid() == 0:
            conf += ["User proxy", "Group proxy"]
        config = work / "tinyproxy.conf"
        config.write_text("\n".join(conf) + "\n")
        return self._spawn("tinyproxy", [tinyproxy, "-d", "-c", str(config)], work, port)

    def _start_privoxy(self, work: Path, port: int) -> RealProxy:
        privoxy = _need_binary("privoxy", "apt-get install privoxy")
        templates = Path("/etc/privoxy/templates")
        conf = [
            f"confdir {work}",
            f"logdir {work}",
            "logfile privoxy.log",
            f"listen-address 127.0.0.1:{port}",
            "toggle 0",
            "enable-remote-toggle 0",
            "enable-edit-actions 0",
            "socket-timeout 10",
            "debug 1",
        ]
        if templates.is_dir():
            conf.append(f"templdir {templates}")
        config = work / "privoxy.conf"
        config.write_text("\n".join(conf) + "\n")
        return self._spawn("privoxy", [privoxy, "--no-daemon", str(config)], work, port)


class _Missing(Exception):
    """A proxy is not installed; the message says how to install it."""


def _need_binary(name: str, install: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
    if path is None:
        raise _Missing(f"{name} is not installed: {install}")
    return path


def _need_module(module: str, install: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise _Missing(f"the Python module {module!r} is not installed: {install}")


def _hand_to_squid_user(path: Path) -> None:
    """As root, squid and tinyproxy drop to the `proxy` user: let it write its logs and pid file there."""
    if os.geteuid() != 0:
        return
    try:
        entry = pwd.getpwnam("proxy")
    except KeyError:
        return
    os.chown(path, entry.pw_uid, entry.pw_gid)


@pytest.fixture(scope="session")
def jsse_esrs(cert) -> Iterator[servers.EsrsServer]:
    """The session's ESRS stand-in: TLS on a free port; plaintext gets JSSE's alert, 15 03 03 00 02 02 0a."""
    server = servers.EsrsServer(cert, servers.EsrsBehaviour(alert=JSSE_ALERT))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def real_proxies(jsse_esrs: servers.EsrsServer) -> Iterator[RealProxies]:
    """Real proxies, each started on first `real_proxies.get(name)` and stopped at the end of the session."""
    directory = Path(tempfile.mkdtemp(prefix="esrs-realproxies-"))
    os.chmod(directory, 0o755)  # the proxy user must reach its own directory below
    proxies = RealProxies(directory, jsse_esrs)
    try:
        yield proxies
    finally:
        proxies.stop_all()
        if not os.environ.get("ESRS_KEEP_PROXY_LOGS"):
            shutil.rmtree(directory, ignore_errors=True)
