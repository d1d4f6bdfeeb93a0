"""Network namespaces for the end-to-end mode tests (tests/test_modes.py).

client netns --veth-- router netns --veth-- server netns, with addresses from the documentation ranges (RFC 5737)
that exist only inside them. Names carry this process's id, and only the names made here are deleted. Every command
has a timeout; every long-lived process runs under `timeout` as well as being stopped by its own pid.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

#: The client's link to the router.
CLIENT = "192.0.2.1"
ROUTER = "192.0.2.2"  # the router's client side: transparent mode's interface, WireGuard's endpoint
#: The router's link to the server.
ROUTER_UP = "198.51.100.1"
SERVER = "198.51.100.2"  # routed client -> router (transparent mode); the router's neighbour (local mode)
SERVER_WG = "198.51.100.3"  # the same server, routed through the client's WireGuard tunnel
SERVER_NET = "198.51.100.0/24"
#: The router's client-side interface, where nft redirects TCP port 443 to transparent mode's listener.
ROUTER_CLIENT_SIDE = "to-client"
TRANSPARENT_PORT = 8080
WIREGUARD_PORT = 51820
NETNS_DIR = Path("/run/netns")

#: Seconds any helper process may live: a session killed midway leaves nothing running longer.
LIFETIME = 600

#: The programs each part needs, and the Debian package that has them.
PACKAGES = {
    "ip": "iproute2",
    "nft": "nftables",
    "wg": "wireguard-tools",
    "wireguard-go": "wireguard-go",
    "sudo": "sudo",  # mitmproxy (11.1 and later) starts its local-mode redirector with sudo, root too
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "timeout": "coreutils",
    "curl": "curl",
}


class NetnsError(RuntimeError):
    """A setup command failed; the message carries the command and its stderr."""


def bounded(cmd: list[str]) -> list[str]:
    """`cmd` under `timeout`, which passes SIGINT and SIGTERM on to it and ends it after LIFETIME seconds."""
    return ["timeout", "-k", "5", str(LIFETIME), *cmd]


def run(cmd: list[str], *, timeout: float = 15.0, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    p = subprocess.run(
        cmd, capture_output=True, timeout=timeout, input=input, stdin=None if input else subprocess.DEVNULL
    )
    if p.returncode != 0:
        raise NetnsError(f"{shlex.join(cmd)}: exit status {p.returncode}: {p.stderr.decode(errors='replace').strip()}")
    return p


def unavailable(programs: list[str]) -> str | None:
    """Why the namespaces cannot be made here (a skip reason), or None."""
    if os.geteuid() != 0:
        return "needs root: network namespaces, nft rules and TUN devices (CI runs as root)"
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        packages = " ".join(dict.fromkeys(PACKAGES.get(p, p) for p in missing))
        return f"missing {', '.join(missing)}: apt-get install --no-install-recommends {packages}"
    if not Path("/dev/net/tun").exists():
        return "no /dev/net/tun: WireGuard (wireguard-go) and the local redirector need TUN devices"
    return None


def cgroup2_root() -> Path | None:
    """Where the cgroup2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid host)."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2":
            return Path(fields[1])
    return None


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise NetnsError(f"not within {timeout:g} s: {what}")
        time.sleep(0.05)


class Network:
    """The three namespaces, their links and routes, and the router's nft redirect; `delete` removes what was made."""

    def __init__(self) -> None:
        tag = f"esrs-fix-{os.getpid()}"
        self.client, self.router, self.server = (f"{tag}-{role}" for role in ("client", "router", "server"))
        self.created: list[str] = []

    @staticmethod
    def exec(name: str) -> list[str]:
        """The prefix that runs a command in namespace `name` (it execs the command: the pid stays the command's)."""
        return ["ip", "netns", "exec", name]

    def create(self) -> Network:
        try:
            for name in (self.client, self.router, self.server):
                run(["ip", "netns", "add", name])
                self.created.append(name)
                run(["ip", "-n", name, "link", "set", "lo", "up"])
            peer = ["type", "veth", "peer", "name", "to-router", "netns"]
            run(["ip", "-n", self.router, "link", "add", ROUTER_CLIENT_SIDE, *peer, self.client])
            run(["ip", "-n", self.router, "link", "add", "to-server", *peer, self.server])
            for ns, dev, address in (
                (self.client, "to-router", f"{CLIENT}/24"),
                (self.router, ROUTER_CLIENT_SIDE, f"{ROUTER}/24"),
                (self.router, "to-server", f"{ROUTER_UP}/24"),
                (self.server, "to-router", f"{SERVER}/24"),
                (self.server, "to-router", f"{SERVER_WG}/24"),
            ):
                run(["ip", "-n", ns, "addr", "add", address, "dev", dev])
                run(["ip", "-n", ns, "link", "set", dev, "up"])
            run(["ip", "-n", self.client, "route", "add", SERVER_NET, "via", ROUTER])
            run([*self.exec(self.router), "sysctl", "-qw", "net.ipv4.ip_forward=1"])
            rules = (
                "table ip esrs_fix {\n  chain prerouting {\n    type nat hook prerouting priority dstnat;\n"
                f'    iifname "{ROUTER_CLIENT_SIDE}" tcp dport 443 redirect to :{TRANSPARENT_PORT}\n  }}\n}}\n'
            )
            run([*self.exec(self.router), "nft", "-f", "-"], input=rules.encode())
        except BaseException:
            self.delete()
            raise
        return self

    def delete(self) -> None:
        """`ip netns del` of the namespaces made here only; their processes were stopped before."""
        while self.created:
            name = self.created.pop()
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=15)

    def __enter__(self) -> Network:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.delete()


class Process:
    """A long-lived helper (a server, wireguard-go), its output in a log file, stopped by its own pid."""

    def __init__(self, cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.cmd = cmd
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready: Callable[[], bool], timeout: float = 20.0) -> Process:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                bounded(self.cmd), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env
            )
        try:
            wait_for(lambda: self._alive() and ready(), timeout, f"{shlex.join(self.cmd)} ready:\n{self.log()}")
        except BaseException:
            self.stop()
            raise
        return self

    def _alive(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise NetnsError(f"{shlex.join(self.cmd)} exited with {self.process.returncode}:\n{self.log()}")
        return True

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        p = self.process
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=timeout)


class WireGuardClient:
    """wireguard-go (userspace: no kernel module needed) in the client namespace, SERVER_WG routed through it."""

    def __init__(self, network: Network, workdir: Path) -> None:
        self.network = network
        self.workdir = workdir
        self.interface = f"wg{os.getpid()}"  # at most 15 characters, unique on the machine (its UAPI socket is)
        self.process: Process | None = None

    def start(self, client_conf: dict[str, str]) -> WireGuardClient:
        """Configure from mitmdump's printed client configuration; the endpoint by hand (mitmdump prints 0.0.0.0)."""
        ns = self.network.client
        socket = Path("/var/run/wireguard") / f"{self.interface}.sock"
        self.process = Process(
            [*Network.exec(ns), "wireguard-go", "-f", self.interface], self.workdir / "wireguard-go.log"
        ).start(socket.exists)
        key = self.workdir / "wireguard-client.key"
        key.touch(mode=0o600)
        key.write_text(client_conf["PrivateKey"] + "\n")
        peer = ["peer", client_conf["PublicKey"], "endpoint", f"{ROUTER}:{WIREGUARD_PORT}", "allowed-ips", "0.0.0.0/0"]
        run([*Network.exec(ns), "wg", "set", self.interface, "private-key", str(key), *peer])
        run(["ip", "-n", ns, "addr", "add", client_conf["Address"], "dev", self.interface])
        run(["ip", "-n", ns, "link", "set", self.interface, "up"])
        run(["ip", "-n", ns, "route", "add", f"{SERVER_WG}/32", "dev", self.interface])
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


class Cgroup:
    """A private cgroup2 child for local mode.

    mitmproxy's Linux redirector (11.1 and later) attaches its eBPF program to /sys/fs/cgroup, which must be
    cgroup2, and sees only the processes below it. So mitmdump runs in a private mount namespace with this child
    bind-mounted over /sys/fs/cgroup, and the client joins the child: the redirector sees exactly the test's own
    processes.
    """

    def __init__(self, root: Path) -> None:
        self.path = root / f"esrs-fix-{os.getpid()}"

    def create(self) -> Cgroup:
        self.path.mkdir()
        return self

    def mitmdump_prefix(self, netns: str) -> list[str]:
        """unshare the mount namespace, mount the child over /sys/fs/cgroup, join it, then enter the netns.

        `nsenter --net`, not `ip netns exec`: the latter remounts /sys, which would hide the bind mount.
        """
        script = 'mount --bind "$1" /sys/fs/cgroup && echo $$ > /sys/fs/cgroup/cgroup.procs && shift && exec "$@"'
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(self.path),
                "nsenter", f"--net={NETNS_DIR / netns}"]  # fmt: skip

    def client_prefix(self, netns: str) -> list[str]:
        script = 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"'
        return ["sh", "-c", script, "sh", str(self.path), "nsenter", f"--net={NETNS_DIR / netns}"]

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def delete(self, timeout: float = 10.0) -> None:
        """Wait for the child's processes to end (the redirector outlives mitmdump by a few seconds), kill those
        still there by pid (only processes started here join it), then remove it."""
        if not self.path.exists():
            return
        with contextlib.suppress(NetnsError):
            wait_for(lambda: not self.pids(), timeout, "the local redirector to exit")
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(NetnsError):
            wait_for(lambda: not self.pids(), timeout, "the cgroup to empty")
        with contextlib.suppress(OSError):
            self.path.rmdir()
