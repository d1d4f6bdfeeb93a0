"""esrs-fix end to end in transparent, WireGuard and local mode, in network namespaces made here (tests/netns.py).

The client in its own namespace (local mode: beside mitmdump in the router's) asks `http://NAME:443/` of a server
that exists only in the server namespace: the lab's TLS stand-in (`servers.EsrsServer`), which answers plaintext
with the field's alert, its certificate for NAME and trusted by mitmdump. The client's own curl sends `Host: NAME:443`
and nothing in the client knows about mitmproxy: each mode's own interception brings the request to mitmdump.

- transparent: nft redirects the router's client-side TCP port 443 to mitmdump's listener;
- WireGuard: wireguard-go in the client namespace, keyed from mitmdump's printed client configuration;
- local (mitmproxy 11.1 and later; 11.0 has local mode on Windows and macOS only, so it is not collected there):
  the redirector intercepts a copy of curl named for this process, in a private cgroup2 child.

One mitmdump per mode (`esrs_upgrade` on), started once for the module; flows whose URL has `/stray` are outside
`esrs_filter`, which is how one mitmdump shows the plain detection (a labelled 502) beside the upgrade.
Needs root and `nftables wireguard-tools wireguard-go sudo` (`.ci/run` installs them); elsewhere it skips.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stray_tls import compat
from stray_tls.lab import servers
from stray_tls.lab.mitm import Mitmdump

from . import netns
from .netns import Cgroup, Network, Process, WireGuardClient

pytestmark = pytest.mark.e2e

#: The name the server's certificate carries, and one it does not.
NAME = "esrs.netns.test"
WRONG_NAME = "wrong.netns.test"
DETECTED = "detected; TLS alert: fatal unexpected_message (10), record version TLS 1.0"
#: mitmproxy 11.0 refuses `--mode local` on Linux ("only available on Windows and macOS"): not collected there.
#: 11.1 brought the Linux redirector, so the question is mitmproxy's, not the major's.
MODES = ["transparent", "wireguard"] + (["local"] if compat.versions.has_local_mode() else [])
PROGRAMS = {
    "transparent": ["ip", "nft", "timeout", "curl"],
    "wireguard": ["ip", "nft", "timeout", "curl", "wg", "wireguard-go"],
    "local": ["ip", "nft", "timeout", "curl", "sudo", "unshare", "nsenter"],
}

#: The server in its namespace: the lab's stand-in on port 443 of every address, each request line it reads logged
#: with how it came (tls or plaintext), so that a test can tell what reached the server and how.
SERVER_SCRIPT = """
import ssl, sys, threading
from pathlib import Path
from stray_tls.lab import servers

read_head = servers.read_head

def logged_read_head(conn, limit=65536):
    head = read_head(conn, limit)
    kind = "tls" if isinstance(conn, ssl.SSLSocket) else "plaintext"
    print(kind, head.split(b"\\r\\n", 1)[0].decode("latin-1"), flush=True)
    return head

servers.read_head = logged_read_head
server = servers.EsrsServer((Path(sys.argv[1]), Path(sys.argv[2])), host="0.0.0.0", port=443).start()
print("serving", flush=True)
threading.Event().wait(float(sys.argv[3]))
"""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def label(self) -> str:
        return self.headers.get("x-esrs-fix", "")


@dataclass
class Lab:
    network: Network
    workdir: Path
    cert: tuple[Path, Path]
    server: Process
    confdir: Path

    def server_saw(self, line: str) -> bool:
        return line in self.server.log().splitlines()


@dataclass
class Proxied:
    """One mode's mitmdump and the client that goes through it."""

    mode: str
    lab: Lab
    mitmdump: Mitmdump
    client: list[str]  # the curl command, prefixed to run where (and as what) the mode intercepts it
    address: str  # the server's address as this client reaches it
    paths: Iterator[int] = field(default_factory=itertools.count)

    def path(self, what: str) -> str:
        """A path no other request used, so that the server's log tells this request's way apart."""
        return f"/{what}-{self.mode}-{next(self.paths)}"

    def get(self, name: str, path: str) -> Answer:
        url = f"http://{name}:443{path}"
        cmd = [*self.client, "-sS", "-i", "-m", "20", "--noproxy", "*", "--resolve", f"{name}:443:{self.address}", url]
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        p = subprocess.run(cmd, capture_output=True, timeout=30, env=env, stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise AssertionError(
                f"{url} via {self.mode}: curl {p.returncode}: {p.stderr!r}\n{self.mitmdump.log_tail()}"
            )
        head, _, body = p.stdout.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        return Answer(int(status_line.split()[1]), headers, body)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The namespaces and the server, once for the module; the confdir (CA, WireGuard keys) is this session's own."""
    reason = netns.unavailable(["ip", "nft", "timeout", "curl"])
    if reason:
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("modes")
    cert = servers.make_certificate(workdir, NAME)
    with Network() as network:
        server = Process(
            [*Network.exec(network.server), sys.executable, "-c", SERVER_SCRIPT, str(cert[0]), str(cert[1]),
             str(netns.LIFETIME)],
            workdir / "server.log",
        )  # fmt: skip
        server.start(lambda: "serving" in server.log())
        try:
            yield Lab(network, workdir, cert, server, workdir / "mitmproxy")
        finally:
            server.stop()


def mitmdump_args(lab: Lab) -> list[str]:
    return [
        "--set", f"confdir={lab.confdir}",
        "--set", "esrs_upgrade=true",
        "--set", f"ssl_verify_upstream_trusted_ca={lab.cert[0]}",
        "--set", "esrs_filter=!~u /stray",
        # A wrong name's failure is not remembered against the address, so that the tests may run in any order.
        "--set", "esrs_upgrade_retry_after=0",
    ]  # fmt: skip


def client_conf(log: str) -> dict[str, str]:
    """The `Key = value` lines of mitmdump's printed WireGuard client configuration."""
    conf = dict(re.findall(r"^(PrivateKey|Address|PublicKey) = (\S+)$", log, re.MULTILINE))
    assert set(conf) == {"PrivateKey", "Address", "PublicKey"}, log
    return conf


@pytest.fixture(scope="module", params=MODES)
def proxied(request: pytest.FixtureRequest, lab: Lab) -> Iterator[Proxied]:
    mode: str = request.param
    reason = netns.unavailable(PROGRAMS[mode])
    if reason:
        pytest.skip(reason)
    curl = shutil.which("curl")
    assert curl is not None
    log = lab.workdir / f"mitmdump-{mode}.log"
    router = lab.network.router
    listen = ["--listen-host", "0.0.0.0"]  # after the command's 127.0.0.1, which it overrides
    if mode == "transparent":
        m = Mitmdump(["--mode", "transparent", "-p", str(netns.TRANSPARENT_PORT), *listen, *mitmdump_args(lab)], log,
                     prefix=netns.bounded(Network.exec(router)))  # fmt: skip
        with m:
            yield Proxied(mode, lab, m, [*Network.exec(lab.network.client), curl], netns.SERVER)
    elif mode == "wireguard":
        m = Mitmdump([f"--mode=wireguard@{netns.WIREGUARD_PORT}", *listen, *mitmdump_args(lab)], log,
                     prefix=netns.bounded(Network.exec(router)))  # fmt: skip
        with m:
            wg = WireGuardClient(lab.network, lab.workdir)
            try:
                wg.start(client_conf(m.log()))
                yield Proxied(mode, lab, m, [*Network.exec(lab.network.client), curl], netns.SERVER_WG)
            finally:
                wg.stop()
    else:
        root = netns.cgroup2_root()
        if root is None:
            pytest.skip("no cgroup2 hierarchy mounted: the local redirector attaches its eBPF program to one")
        cgroup = Cgroup(root).create()
        try:
            # A copy of curl under a name only this process uses: the redirector intercepts it by that name alone.
            client = lab.workdir / f"esrsc-{os.getpid()}"  # a process name has at most 15 characters
            shutil.copy2(curl, client)
            m = Mitmdump(["--mode", f"local:{client.name}", *mitmdump_args(lab)], log, listeners=0,
                         prefix=netns.bounded(cgroup.mitmdump_prefix(router)))  # fmt: skip
            with m:
                proxied = Proxied(mode, lab, m, [*cgroup.client_prefix(router), str(client)], netns.SERVER)
                wait_until_intercepted(proxied)
                yield proxied
        finally:
            cgroup.delete()


def wait_until_intercepted(proxied: Proxied) -> None:
    """The redirector says "started" before its eBPF program is attached: probe (outside esrs_filter) until a request
    gets an HTTP answer, which only mitmdump gives: straight to the server, curl refuses the alert (as HTTP/0.9)."""

    def through_mitmdump() -> bool:
        if "Local redirector started" not in proxied.mitmdump.log():
            return False
        try:
            proxied.get(NAME, proxied.path("stray-probe"))
        except AssertionError:
            return False
        return True

    netns.wait_for(through_mitmdump, 30, f"local mode to intercept:\n{proxied.mitmdump.log_tail()}")


def test_a_stray_alert_gets_the_labelled_502(proxied: Proxied) -> None:
    """Outside esrs_filter: esrs-fix detects the plaintext request's TLS alert and labels mitmproxy's 502."""
    path = proxied.path("stray")
    answer = proxied.get(NAME, path)
    assert (answer.status, answer.label) == (502, DETECTED), proxied.mitmdump.log_tail()
    assert b"15 03 01 00 02 02 0a" in answer.body  # the alert itself, in esrs-fix's page
    assert proxied.lab.server_saw(f"plaintext GET {path} HTTP/1.1")
    assert not proxied.lab.server_saw(f"tls GET {path} HTTP/1.1")


def test_the_upgrade_gets_the_servers_answer_over_tls(proxied: Proxied) -> None:
    """esrs_upgrade: the server's own 200 over TLS (verified against the Host name), then the target is learned."""
    first, second = proxied.path("upgrade"), proxied.path("upgrade")
    answer = proxied.get(NAME, first)
    assert (answer.status, answer.body) == (200, servers.OK_BODY), proxied.mitmdump.log_tail()
    assert answer.label.startswith("upgraded"), answer.label  # "(learned)" too when another test taught it before
    assert proxied.lab.server_saw(f"tls GET {first} HTTP/1.1")
    learned = proxied.get(NAME, second)
    assert (learned.status, learned.body) == (200, servers.OK_BODY)
    assert learned.label.startswith("upgraded (learned); "), learned.label
    assert proxied.lab.server_saw(f"tls GET {second} HTTP/1.1")
    assert not proxied.lab.server_saw(f"plaintext GET {second} HTTP/1.1")  # learned: straight over TLS


def test_a_host_name_the_certificate_does_not_carry_is_refused(proxied: Proxied) -> None:
    """The certificate is checked against the Host header's name: another name gets the upgrade failure, and no
    request reaches the server over that connection."""
    path = proxied.path("wrong-name")
    answer = proxied.get(WRONG_NAME, path)
    assert answer.status == 502, proxied.mitmdump.log_tail()
    assert answer.label.startswith("upgrade failed: certificate verification failed: hostname mismatch; "), answer.label
    after = proxied.path("after-wrong-name")  # the right name still works; its request is in the log after the other
    assert proxied.get(NAME, after).status == 200
    assert proxied.lab.server_saw(f"tls GET {after} HTTP/1.1")
    assert not proxied.lab.server_saw(f"tls GET {path} HTTP/1.1")
