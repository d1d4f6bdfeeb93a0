"""Real HTTP proxies on loopback: proxy.py, pproxy, squid (direct, or with a `cache_peer`), tinyproxy, privoxy.

The lab runs its scenarios through them (`esrs-fix lab --proxy NAME`) and the tests measure `esrs-fix check`
against them: this is the one launcher for both.  Each proxy gets a minimal configuration written into a
directory of the caller's (config, logs, pid file), listens on the loopback port it is given, and is stopped by
its own process id.  A proxy that is not installed raises `ProxyMissing`, whose message is the command that
installs it; one that is installed but does not come up raises `ProxyFailed` with the tail of its log.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..fieldkit.extras import install_hint

#: Where Debian puts squid and privoxy, for users whose PATH has no sbin directory.
SBIN_PATH = "/usr/sbin:/usr/bin:/sbin"
#: The proxies in Python packages of the `lab` extra (run as `python -m MODULE`); the others are Debian binaries.
_MODULES = {"proxy.py": "proxy", "pproxy": "pproxy"}
KNOWN = (*_MODULES, "squid", "tinyproxy", "privoxy")


def python_packages() -> list[str]:
    """The proxies that are Python packages: what the `lab` extra installs."""
    return list(_MODULES)


def install_command(name: str) -> str:
    """How proxy `name` is installed, where esrs-fix runs (a checkout's `lab` extra, or the package by name)."""
    return install_hint("lab", name) if name in _MODULES else f"apt-get install {name}"


STARTUP_TIMEOUT = 20.0
#: The proxy authentication schemes squid can be set up with here (`start(..., scheme=...)`).
SCHEMES = ("basic", "ntlm", "negotiate+ntlm", "kerberos")
SQUID_HELPERS = Path("/usr/lib/squid")


class ProxyMissing(Exception):
    """A proxy is not installed; the message says how to install it."""


class ProxyFailed(RuntimeError):
    """A proxy is installed but did not start listening; the message carries the tail of its log."""


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it will not go; only our own process, by its id."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


@dataclass
class RealProxy:
    """One running proxy: its name (with its form, e.g. `squid (cache_peer)`), its port, its process and log."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    auth: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        stop_process(self.process)

    def __enter__(self) -> RealProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=SBIN_PATH)


def _has_module(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def find(name: str) -> list[str]:
    """The command that runs proxy `name` (without its options); `ProxyMissing` with the install command if none."""
    if name not in KNOWN:
        raise ValueError(f"unknown proxy {name!r}; known: {', '.join(KNOWN)}")
    if name in _MODULES:
        if not _has_module(_MODULES[name]):
            module = _MODULES[name]
            raise ProxyMissing(f"{name} is not installed (no Python module {module!r}): {install_command(name)}")
        return [sys.executable, "-m", _MODULES[name]]
    path = _which(name)
    if path is None:
        raise ProxyMissing(f"{name} is not installed: {install_command(name)}")
    return [path]


def start(
    name: str,
    work: Path,
    port: int,
    *,
    peers: Sequence[tuple[str, int]] = (),
    auth: tuple[str, str] | None = None,
    scheme: str = "basic",
    kerberos: tuple[Path, str] | None = None,
    env: Mapping[str, str] | None = None,
    startup_timeout: float = STARTUP_TIMEOUT,
) -> RealProxy:
    """Start proxy `name` on 127.0.0.1:`port` with its configuration in `work` (created), and wait until it listens.

    `peers` (squid only): origin servers squid forwards every request to, in plaintext, by port: a request for
    `https://HOST:P/` goes to the peer whose port is P (`cache_peer ... originserver`, without `tls`), so squid
    sends `GET /` in clear to a TLS port, as a Blue Coat does, where by itself it would speak TLS.
    `auth` (proxy.py, squid): the credentials the proxy demands, in `scheme` (squid only for any but Basic):
    `basic`; `ntlm` (squid's `ntlm_fake_auth`: it checks the NTLM exchange's form, not the password, so an ACL lets
    only `auth`'s user through, whatever its domain); `negotiate+ntlm` (both offered, Negotiate first, as Windows
    proxies do; Negotiate through `negotiate_wrapper_auth`, whose Kerberos side has no keytab: only a raw NTLM
    token inside Negotiate gets through, a SPNEGO one is refused and the client must fall back to NTLM).
    `kerberos` (squid only, with `scheme="kerberos"`, without `auth`): (keytab, service principal): Negotiate alone,
    through `negotiate_kerberos_auth -k KEYTAB -s SERVICE`; any ticket for the service gets through. The keytab must
    be readable by the user squid's helpers run as (`proxy`, as root). `env`: the proxy's environment (its helpers
    inherit it: `KRB5_CONFIG` for a realm of the caller's).
    """
    command = find(name)
    if peers and name != "squid":
        raise ValueError("only squid takes peers")
    if auth and name not in ("proxy.py", "squid"):
        raise ValueError("only proxy.py and squid take credentials here")
    if scheme not in SCHEMES or (scheme != "basic" and name != "squid"):
        raise ValueError(f"unknown scheme {scheme!r} for {name}: squid takes {', '.join(SCHEMES)}, others basic")
    if (scheme == "kerberos") != (kerberos is not None) or (kerberos and auth):
        raise ValueError("scheme 'kerberos' takes a keytab and a service principal (kerberos=...), and no auth")
    work.mkdir(parents=True, exist_ok=True)
    if name in ("squid", "tinyproxy"):
        _hand_to_proxy_user(work)
    if name == "proxy.py":
        argv = [*command, "--hostname", "127.0.0.1", "--port", str(port), "--num-workers", "1", "--num-acceptors", "1"]
        argv += ["--pid-file", str(work / "proxy.pid")]
        if auth:
            argv += ["--basic-auth", f"{auth[0]}:{auth[1]}"]
    elif name == "pproxy":
        argv = [*command, "-l", f"http://127.0.0.1:{port}"]
    elif name == "squid":
        argv = [*command, "-N", "-f", str(_squid_config(work, port, peers, auth, scheme, kerberos))]
    elif name == "tinyproxy":
        argv = [*command, "-d", "-c", str(_tinyproxy_config(work, port))]
    else:
        argv = [*command, "--no-daemon", str(_privoxy_config(work, port))]
    label = name + (" (cache_peer)" if peers else "") + (f" ({scheme} auth)" if auth or kerberos else "")
    log = work / "stdout.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=work, env=env
        )
    proxy = RealProxy(label, port, process, log, auth is not None or kerberos is not None)
    try:
        _wait_listening(proxy, startup_timeout)
    except BaseException:  # not up, or interrupted while waiting: it is not on anybody's stop list yet
        proxy.stop()
        raise
    return proxy


def _wait_listening(proxy: RealProxy, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proxy.process.poll() is not None:
            break
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", proxy.port), timeout=1):
            return
        time.sleep(0.1)
    proxy.stop()
    raise ProxyFailed(f"{proxy.name} did not start listening on 127.0.0.1:{proxy.port}; its log:\n{proxy.log_tail()}")


def _squid_config(
    work: Path,
    port: int,
    peers: Sequence[tuple[str, int]],
    auth: tuple[str, str] | None,
    scheme: str = "basic",
    kerberos: tuple[Path, str] | None = None,
) -> Path:
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
    ]
    for host, peer_port in peers:
        # a parent that is the origin itself, without `tls`: squid sends `GET https://...` there in plaintext
        peer = f"peer{peer_port}"
        conf += [
            f"cache_peer {host} parent {peer_port} 0 no-query no-digest originserver name={peer}",
            f"acl to_{peer} port {peer_port}",
            f"cache_peer_access {peer} allow to_{peer}",
            f"cache_peer_access {peer} deny all",
        ]
    if peers:
        conf.append("never_direct allow all")
    if kerberos is not None:
        conf += _squid_kerberos(*kerberos)
    elif auth and scheme == "basic":
        conf += _squid_basic(work, auth)
    elif auth:
        conf += _squid_ntlm(auth, negotiate=scheme == "negotiate+ntlm")
    conf += ["http_access allow lab", "http_access deny all"]
    if os.geteuid() == 0:
        conf.append("cache_effective_user proxy")
    config = work / "squid.conf"
    config.write_text("\n".join(conf) + "\n")
    return config


def _squid_helper(name: str) -> str:
    helper = SQUID_HELPERS / name
    if not helper.is_file():
        raise ProxyMissing(f"{helper} is missing: apt-get install squid")
    return str(helper)


def _squid_basic(work: Path, auth: tuple[str, str]) -> list[str]:
    helper = _squid_helper("basic_ncsa_auth")
    htpasswd = _which("htpasswd")
    if htpasswd is None:
        raise ProxyMissing("htpasswd is not installed: apt-get install apache2-utils")
    passwords = work / "htpasswd"
    subprocess.run([htpasswd, "-bc", str(passwords), *auth], check=True, capture_output=True)
    os.chmod(passwords, 0o640)  # the lab's password: for squid's helper (group proxy), not for everyone
    _hand_to_proxy_user(passwords)
    return [
        f"auth_param basic program {helper} {passwords}",
        "auth_param basic realm esrs-lab",
        "auth_param basic children 1 startup=1 idle=1",
        "acl authenticated proxy_auth REQUIRED",
        "http_access deny !authenticated",
    ]


def _squid_ntlm(auth: tuple[str, str], *, negotiate: bool) -> list[str]:
    """NTLM through `ntlm_fake_auth -S` (the domain stripped, so `CORP\\user` is `user`); with `negotiate`, Negotiate
    offered first (squid sends its challenges in the order of its `auth_param` lines)."""
    ntlm = f"{_squid_helper('ntlm_fake_auth')} -S"
    conf = []
    if negotiate:
        wrapper, kerberos = _squid_helper("negotiate_wrapper_auth"), _squid_helper("negotiate_kerberos_auth")
        conf += [
            f"auth_param negotiate program {wrapper} --ntlm {ntlm} --kerberos {kerberos} -s GSS_C_NO_NAME",
            "auth_param negotiate children 1 startup=1 idle=1",
            "auth_param negotiate keep_alive on",
        ]
    conf += [
        f"auth_param ntlm program {ntlm}",
        "auth_param ntlm children 1 startup=1 idle=1",
        "auth_param ntlm keep_alive on",
        # the fake helper takes any password: only this user name gets through (a wrong one gets the 407 again)
        f"acl authenticated proxy_auth {auth[0]}",
        "http_access deny !authenticated",
    ]
    return conf


def _squid_kerberos(keytab: Path, service: str) -> list[str]:
    """Negotiate with Kerberos alone, as a domain's proxy offers it: `negotiate_kerberos_auth` checks the ticket
    against the service's key in `keytab`."""
    helper = _squid_helper("negotiate_kerberos_auth")
    return [
        f"auth_param negotiate program {helper} -k {keytab} -s {service}",
        "auth_param negotiate children 1 startup=1 idle=1",
        "auth_param negotiate keep_alive on",
        "acl authenticated proxy_auth REQUIRED",
        "http_access deny !authenticated",
    ]


def _tinyproxy_config(work: Path, port: int) -> Path:
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
    return config


def _privoxy_config(work: Path, port: int) -> Path:
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
    return config


def proxy_user() -> pwd.struct_passwd | None:
    """The `proxy` user that squid and tinyproxy (and squid's helpers) drop to when started as root; None when not
    root, or when there is no such user: then they run as whoever started them."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("proxy")
    except KeyError:
        return None


def _hand_to_proxy_user(path: Path) -> None:
    """As root, squid and tinyproxy drop to the `proxy` user: let it write its logs and pid file in `path`.

    The directories above `path` must let that user through (the lab's and the tests' temp dirs are 0755):
    `ProxyFailed` says so before the proxy is started, rather than the proxy's own "Permission denied".
    """
    entry = proxy_user()
    if entry is None:
        return
    os.chown(path, entry.pw_uid, entry.pw_gid)
    for parent in path.resolve().parents:
        st = parent.stat()
        through = st.st_mode & stat.S_IXOTH or (
            st.st_mode & stat.S_IXUSR
            if st.st_uid == entry.pw_uid
            else st.st_gid == entry.pw_gid and st.st_mode & stat.S_IXGRP
        )
        if not through:
            raise ProxyFailed(
                f"as root, squid and tinyproxy run as the user 'proxy', which cannot enter {parent} "
                f"(mode {stat.filemode(st.st_mode)}): use a work dir it can reach, e.g. one under /tmp with mode 755"
            )
