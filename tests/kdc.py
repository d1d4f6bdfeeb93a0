"""A real MIT Kerberos KDC on loopback for the tests: realm LAB.TEST, its own files, no system file touched.

The session fixture `kdc` writes a kdc.conf and a krb5.conf into a temporary directory, creates the realm's
database there (`kdb5_util create -s`), adds the user `esrsuser` (password `PASSWORD`) and the proxy's service
`HTTP/localhost`, whose key goes to a keytab that squid's `negotiate_kerberos_auth` reads, and starts `krb5kdc -n`
(in the foreground) on a free port; it is stopped by its own pid at the end of the session.  Every program that is to
see this realm gets `Kdc.env()`: `KRB5_CONFIG` and `KRB5_KDC_PROFILE` pointing at the files here, `KRB5CCNAME` at a
ticket cache of the caller's, `KRB5RCACHEDIR` here too (an acceptor's replay cache). Nothing is put in os.environ.

Without the Debian packages the fixture skips, naming them: `apt-get install krb5-kdc krb5-admin-server krb5-user
libkrb5-dev`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stray_tls.lab import proxies, servers

__all__ = ["PASSWORD", "REALM", "SERVICE", "USER", "Kdc", "kdc_fixture"]

REALM = "LAB.TEST"
USER, PASSWORD = "esrsuser", "kerb-s3cr%t:pw"
#: The proxy's service principal: a client asks for `HTTP@localhost` when its proxy is `http://localhost:PORT`.
SERVICE = f"HTTP/localhost@{REALM}"
INSTALL = "apt-get install krb5-kdc krb5-admin-server krb5-user libkrb5-dev"
SBIN = "/usr/sbin:/usr/bin:/sbin:/bin"
#: The programs the fixture runs, each from one of the packages above.
PROGRAMS = ("kdb5_util", "kadmin.local", "krb5kdc", "kinit", "klist", "kdestroy")


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=SBIN)


@dataclass
class Kdc:
    """One running KDC: its directory (configuration, database, log), port, keytab and process."""

    directory: Path
    port: int
    keytab: Path
    process: subprocess.Popen[bytes]

    @property
    def krb5_conf(self) -> Path:
        return self.directory / "krb5.conf"

    def env(self, ccache: Path | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment that sees this realm (and no other), with its tickets in `ccache` (a file of the
        caller's; by default the session's own, which no test fills)."""
        return realm_env(self.directory, ccache, base)

    def kinit(self, ccache: Path, user: str = USER, password: str = PASSWORD) -> subprocess.CompletedProcess[str]:
        """A ticket for `user` in `ccache`, the password given on kinit's standard input as a person types it."""
        return subprocess.run(
            [_need("kinit"), user],
            input=password + "\n",
            capture_output=True,
            text=True,
            env=self.env(ccache),
            timeout=30,
        )

    def klist(self, ccache: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([_need("klist"), "-s"], capture_output=True, text=True, env=self.env(ccache), timeout=30)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.directory / "kdc.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        proxies.stop_process(self.process)


def realm_env(directory: Path, ccache: Path | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """`Kdc.env` for the realm whose files are in `directory`."""
    env = dict(os.environ if base is None else base)
    env.update(
        KRB5_CONFIG=str(directory / "krb5.conf"),
        KRB5_KDC_PROFILE=str(directory / "kdc.conf"),
        KRB5CCNAME=f"FILE:{ccache or directory / 'no-tickets'}",
        KRB5RCACHEDIR=str(directory / "rcache"),
    )
    for name in ("KRB5_KTNAME", "KRB5_CLIENT_KTNAME"):  # no keytab of the caller's stands in for a ticket
        env.pop(name, None)
    return env


def _need(program: str) -> str:
    path = _which(program)
    if path is None:
        pytest.skip(f"{program} is not installed: {INSTALL}")
    return path


def _write_config(directory: Path, port: int) -> None:
    d = directory
    (d / "kdc.conf").write_text(
        "[kdcdefaults]\n"
        f" kdc_listen = 127.0.0.1:{port}\n"
        f" kdc_tcp_listen = 127.0.0.1:{port}\n"
        "[realms]\n"
        f" {REALM} = {{\n"
        f"  database_name = {d}/principal\n"
        f"  key_stash_file = {d}/stash\n"
        f"  acl_file = {d}/kadm5.acl\n"
        f"  admin_keytab = FILE:{d}/kadm5.keytab\n"
        "  max_life = 10h 0m 0s\n"
        "  supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal\n"
        " }\n"
        "[logging]\n"
        f" kdc = FILE:{d}/kdc.log\n"
        f" default = FILE:{d}/kdc.log\n"
    )
    (d / "kadm5.acl").write_text("")
    (d / "krb5.conf").write_text(
        "[libdefaults]\n"
        f" default_realm = {REALM}\n"
        " dns_lookup_realm = false\n"
        " dns_lookup_kdc = false\n"
        " dns_canonicalize_hostname = false\n"
        " rdns = false\n"
        f" default_ccache_name = FILE:{d}/no-tickets\n"
        f" default_keytab_name = FILE:{d}/no-keytab\n"
        "[realms]\n"
        f" {REALM} = {{\n"
        f"  kdc = 127.0.0.1:{port}\n"
        " }\n"
        "[domain_realm]\n"
        f" localhost = {REALM}\n"
        f" .localhost = {REALM}\n"
    )


def start(directory: Path, startup_timeout: float = 20.0) -> Kdc:
    """Create the realm in `directory` (0755, reachable by squid's user) and start its KDC on a free port."""
    programs = {p: _need(p) for p in PROGRAMS}
    port = servers.free_port()
    _write_config(directory, port)
    (directory / "rcache").mkdir()
    keytab = directory / "http.keytab"
    env = realm_env(directory)

    def run(*argv: str) -> None:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL)
        if done.returncode:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stdout}{done.stderr}")

    run(programs["kdb5_util"], "create", "-s", "-r", REALM, "-P", "lab-master-key")
    kadmin = programs["kadmin.local"]
    run(kadmin, "-r", REALM, "-q", f"addprinc -pw {PASSWORD} {USER}")
    run(kadmin, "-r", REALM, "-q", f"addprinc -randkey {SERVICE}")
    run(kadmin, "-r", REALM, "-q", f"ktadd -k {keytab} {SERVICE}")
    _readable_by_proxy_user(keytab, directory / "rcache")
    log = (directory / "krb5kdc.out").open("wb")
    process = subprocess.Popen(
        [programs["krb5kdc"], "-n", "-r", REALM, "-P", str(directory / "krb5kdc.pid")],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=directory,
    )
    log.close()
    kdc = Kdc(directory, port, keytab, process)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return kdc
        time.sleep(0.1)
    kdc.stop()
    out = (directory / "krb5kdc.out").read_text(errors="replace")
    raise RuntimeError(f"krb5kdc did not start listening on 127.0.0.1:{port}: {out}\n{kdc.log_tail()}")


def _readable_by_proxy_user(keytab: Path, rcache: Path) -> None:
    """As root, squid runs its helpers as `proxy`: the keytab is theirs to read (and no one else's), the replay
    cache directory theirs to write."""
    os.chmod(keytab, 0o600)
    entry = proxies.proxy_user()
    if entry is None:
        return
    os.chown(keytab, entry.pw_uid, entry.pw_gid)
    os.chown(rcache, entry.pw_uid, entry.pw_gid)


@pytest.fixture(scope="session", name="kdc")
def kdc_fixture() -> Iterator[Kdc]:
    """The session's KDC for LAB.TEST, stopped by its pid at the end; skips (naming the packages) without them."""
    directory = Path(tempfile.mkdtemp(prefix="esrs-kdc-"))
    os.chmod(directory, 0o755)  # squid's helper (user proxy) reads krb5.conf and the keytab here
    try:
        started = start(directory)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    try:
        yield started
    finally:
        started.stop()
        if not os.environ.get("ESRS_KEEP_PROXY_LOGS"):
            shutil.rmtree(directory, ignore_errors=True)
