"""What the upgrade bench's measurements share: the peers, the two kinds of mitmdump, the goals, and how an answer
is checked."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stray_tls.lab import servers
from stray_tls.lab.mitm import Mitmdump

from . import upgradepeers
from .common import Wrong
from .cpu import cpu_seconds
from .load import LABEL, echo_body, exchange, request_for

PROBE_SCRIPT = Path(__file__).with_name("upgrade_probe.py")


PROBE_URL = "http://esrs-bench.probe/"


UPGRADED, LEARNED = "upgraded; ", "upgraded (learned); "


TIMEOUT = 30.0


MIXED_CONCURRENCY = 64


LOAD_CONCURRENCY = 16


HOT = 8  # learned targets in the mixed and memory loads


#: The goals, as ratios to stock mitmproxy: a first, upgraded request vs stock https:// plus one plaintext round trip
#: (1.5 in issue 9, 1.2 since issue 24); a learned request vs stock https://.
FIRST_GOAL = 1.2
LEARNED_GOAL = 1.05


#: The crowd (issue 16): this many requests, this far apart, to one new target; the most plaintext requests the slow
#: target may see (the first, and one that left before the first stray answer was back).
CROWD, CROWD_GAP, CROWD_PLAINTEXT_GOAL = 64, 0.010, 2


#: Seconds to wait after a batch before reading mitmdump's CPU: the last request's close is that batch's work too.
SETTLE = 0.1


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


Got = tuple[int, dict[str, str], bytes]


@dataclass
class Peers:
    cert: str
    origin: int
    keep: int
    pool: list[int]
    #: crowd case (upgradepeers.CROWD_CASES) -> the port its clients' requests go to (a relay's, for the far one)
    crowd: dict[str, int]
    process: Any
    pipe: Any

    @classmethod
    def start(cls, workdir: Path, count: int) -> Peers:
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: the bench's threads do not matter
        pipe, child = context.Pipe()
        process = context.Process(target=upgradepeers.serve, args=(child, str(workdir), count), daemon=True)
        process.start()
        if not pipe.poll(120):
            process.terminate()
            raise RuntimeError("the upgrade bench's servers did not start")
        cert, origin, keep, pool, crowd = pipe.recv()
        return cls(cert, origin, keep, pool, crowd, process, pipe)

    def counts(self, case: str) -> dict[str, int]:
        """What the crowd case's stand-in saw since the last call (counted at the server), and reset."""
        self.pipe.send(("counts", case))
        if not self.pipe.poll(30):
            raise RuntimeError("the upgrade bench's servers did not answer")
        counts: dict[str, int] = self.pipe.recv()
        return counts

    def stop(self) -> None:
        self.pipe.send("stop")
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.terminate()


@dataclass
class Proxy:
    mitmdump: Mitmdump
    port: int

    @property
    def pid(self) -> int:
        process = self.mitmdump.process
        if process is None:
            raise RuntimeError("mitmdump is not running")
        return process.pid

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def status_kib(self, field: str) -> int:
        """A memory field of /proc/PID/status (VmRSS, VmHWM), in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"no {field} in /proc/{self.pid}/status")


def start_proxy(
    workdir: Path, peers: Peers, name: str, *, addon: bool, probe: bool = False, extra: tuple[str, ...] = ()
) -> Proxy:
    port = servers.free_port()
    args = ["-p", str(port), "--set", "flow_detail=0", "--set", f"ssl_verify_upstream_trusted_ca={peers.cert}"]
    args += extra
    if addon:
        args += ["--set", "esrs_upgrade=true"]
    if probe:
        args += ["-s", str(PROBE_SCRIPT)]
    m = Mitmdump(args, workdir / f"upgrade-{name}.log", addon=addon)
    m.start()
    return Proxy(m, port)


def verdict(value: float, limit: float) -> str:
    """`ok` when a measured value meets its goal (at most `limit`), else `MISS`: printed next to the value."""
    return "ok" if value <= limit else "MISS"


def target(port: int, path: str = "", scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{port}/{path}"


def expected(headers: dict[str, str], body: bytes, status: int, kind: str, url: str) -> bool:
    """Is this the right answer? kind: upgraded, learned (the stand-in's bytes, labelled), stock (unlabelled), clean."""
    label = headers.get(LABEL)
    if kind == "clean":
        return status == 200 and body == echo_body(url) and label is None
    if status != 200 or body != servers.OK_BODY:
        return False
    if kind == "stock":
        return label is None
    prefix = UPGRADED if kind == "upgraded" else LEARNED
    return label is not None and label.startswith(prefix)


def check(wrong: Wrong, what: str, got: Got, kind: str, url: str) -> None:
    status, headers, body = got
    ok = expected(headers, body, status, kind, url)
    wrong.check(ok, f"upgrade {what} {url}: {status} {headers.get(LABEL)!r} {body[:40]!r}")


async def fresh(proxy: int, url: str) -> tuple[float, Got]:
    """One request over a new connection to the proxy: seconds to the whole answer, and the answer."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy)
    try:
        got = await asyncio.wait_for(exchange(reader, writer, request_for(url)), TIMEOUT)
    finally:
        writer.close()
    return time.perf_counter() - started, got
