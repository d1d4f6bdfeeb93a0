"""6. Upgrade instead of fake (esrs_upgrade): what an upgraded and a learned request cost, under load, and in memory.

Real mitmdump processes in regular mode (`GET http://127.0.0.1:PORT/` to a TLS port is the plaintext chain;
stock mitmdump's `GET https://127.0.0.1:PORT/` is the baseline), both trusting the stand-ins' certificate with
`ssl_verify_upstream_trusted_ca`. The peers (upgradepeers) run in a process of their own: many EsrsServers, one port
each, so that every port is a target esrs-fix has not learned, a keep-alive stand-in and a clean origin. Each
measurement starts its own mitmdump(s), so that what one learned does not leak into the next.

1. first request to a new target (upgraded) vs stock's https:// request plus one plaintext round trip to the TLS port
   (a GET straight to the stand-in, getting the alert): fresh connections, the three interleaved per target;
2. learned requests vs stock's https:// requests: fresh client connection per request, and keep-alive; AB rounds;
   mitmdump's CPU per request (user + system seconds of each process over its batch, /proc/PID/stat, per 1,000
   requests), the two batches of a round paired, and the latency;
3. a crowd: 64 requests, 10 ms apart, each on a connection of its own, to one new target that is slow (its
   handshake takes 1 s) or far (150 ms each way, behind the lab's LatencyRelay), through esrs-fix (http://) and
   through stock mitmdump (https://), each with a fresh mitmdump: what the server saw (plaintext requests, TLS
   handshakes, those begun before its first answer over TLS), counted at the server, and every answer checked;
4. 500 requests at concurrency 64: upgraded (first time), learned and clean, every answer checked;
5. mitmdump's RSS over many requests to learned and upgraded targets (more distinct cold targets than the bound, so
   that each cold request upgrades again);
6. more distinct targets than the bound: the learned count read from the running mitmdump (upgrade_probe.py answers
   `http://esrs-bench.probe/` with the `esrs.upgraded` command's output).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stray_tls.lab import servers
from stray_tls.lab.mitm import Mitmdump
from stray_tls.mitm.learned import CAPACITY

from . import upgradepeers
from .common import Outcome, Setup, Wrong, log, order, pct, summary
from .cpu import TICK_S, cpu_seconds
from .load import LABEL, echo_body, exchange, load, request_for

PROBE_SCRIPT = Path(__file__).with_name("upgrade_probe.py")
PROBE_URL = "http://esrs-bench.probe/"
UPGRADED, LEARNED = "upgraded; ", "upgraded (learned); "
TIMEOUT = 30.0
MIXED_CONCURRENCY = 64
LOAD_CONCURRENCY = 16
HOT = 8  # learned targets in the mixed and memory loads
#: The goals of issue 9, as ratios to stock mitmproxy: a first, upgraded request vs stock https:// plus one plaintext
#: round trip; a learned request vs stock https://.
FIRST_GOAL = 1.5
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


async def fresh(proxy: int, url: str) -> tuple[float, Got]:
    """One request over a new connection to the proxy: seconds to the whole answer, and the answer."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy)
    try:
        got = await asyncio.wait_for(exchange(reader, writer, request_for(url)), TIMEOUT)
    finally:
        writer.close()
    return time.perf_counter() - started, got


async def plaintext_round_trip(port: int) -> tuple[float, bytes]:
    """A plaintext GET straight to the TLS port: seconds until it has answered (the alert) and closed."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
    return time.perf_counter() - started, data


def check(wrong: Wrong, what: str, got: Got, kind: str, url: str) -> None:
    status, headers, body = got
    ok = expected(headers, body, status, kind, url)
    wrong.check(ok, f"upgrade {what} {url}: {status} {headers.get(LABEL)!r} {body[:40]!r}")


# -- 1. the first, upgraded request


async def _first(addon: Proxy, stock: Proxy, targets: list[int], wrong: Wrong) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"addon_upgraded": [], "addon_learned": [], "stock_https": [], "plaintext_rt": []}
    steps = ["addon", "stock", "plaintext"]
    for i, port in enumerate(targets):
        for step in steps[i % 3 :] + steps[: i % 3]:  # the three rotate, so that drift hits each alike
            if step == "addon":
                url = target(port, f"first{i}")
                t, got = await fresh(addon.port, url)
                check(wrong, "first request", got, "upgraded", url)
                times["addon_upgraded"].append(t)
                t, got = await fresh(addon.port, url)  # the same target, now learned
                check(wrong, "second request", got, "learned", url)
                times["addon_learned"].append(t)
            elif step == "stock":
                url = target(port, f"first{i}", "https")
                t, got = await fresh(stock.port, url)
                check(wrong, "stock https", got, "stock", url)
                times["stock_https"].append(t)
            else:
                t, data = await plaintext_round_trip(port)
                wrong.check(data == servers.ALERT_TLS10, f"upgrade plaintext round trip to {port}: {data[:20]!r}")
                times["plaintext_rt"].append(t)
    return times


def first_upgrade(setup: Setup, peers: Peers, wrong: Wrong) -> dict[str, Any]:
    samples = 10 if setup.quick else 40
    addon = start_proxy(setup.workdir, peers, "first-addon", addon=True)
    stock = start_proxy(setup.workdir, peers, "first-stock", addon=False)
    try:
        asyncio.run(_warm(stock, addon, peers))
        times = asyncio.run(_first(addon, stock, peers.pool[:samples], wrong))
    finally:
        addon.mitmdump.stop()
        stock.mitmdump.stop()
    ms = {k: [t * 1e3 for t in v] for k, v in times.items()}
    baseline = statistics.median(ms["stock_https"]) + statistics.median(ms["plaintext_rt"])
    per_sample = [
        h / (s + p) for h, s, p in zip(ms["addon_upgraded"], ms["stock_https"], ms["plaintext_rt"], strict=True)
    ]
    data: dict[str, Any] = {
        "samples": samples,
        **{f"{k}_ms": summary(v) for k, v in ms.items()},
        "baseline_ms": baseline,
        "ratio": statistics.median(ms["addon_upgraded"]) / baseline,
        "per_sample_ratio": summary(per_sample),
        "goal": f"<= {FIRST_GOAL}",
        "raw_ms": ms,
    }
    data["goal_met"] = data["ratio"] <= FIRST_GOAL
    log(
        f"upgrade first request: upgraded {data['addon_upgraded_ms']['median']:.2f} ms vs stock https "
        f"{data['stock_https_ms']['median']:.2f} + plaintext {data['plaintext_rt_ms']['median']:.2f} ms: "
        f"ratio {data['ratio']:.2f} {verdict(data['ratio'], FIRST_GOAL)} (goal <= {FIRST_GOAL})"
    )
    return data


async def _warm(stock: Proxy, addon: Proxy, peers: Peers) -> None:
    """A few requests through each proxy first (imports, caches), to the origin: nothing is learned."""
    for _ in range(5):
        for proxy in (stock, addon):
            await fresh(proxy.port, target(peers.origin, "warm"))


# -- 2. learned requests vs stock https://


async def _batch(proxy: Proxy, url: str, n: int, kind: str, keep_alive: bool, wrong: Wrong) -> list[float]:
    latencies: list[float] = []
    conn: Conn | None = None
    for _ in range(n):
        if not keep_alive:
            t, got = await fresh(proxy.port, url)
        else:
            started = time.perf_counter()
            if conn is None:
                conn = await asyncio.open_connection("127.0.0.1", proxy.port)
            got = await asyncio.wait_for(exchange(*conn, request_for(url)), TIMEOUT)
            t = time.perf_counter() - started
            if got[1].get("connection", "").lower() == "close":
                conn[1].close()
                conn = None
        check(wrong, f"learned batch ({kind})", got, kind, url)
        latencies.append(t)
    if conn is not None:
        conn[1].close()
    return latencies


def learned_vs_stock(setup: Setup, peers: Peers, wrong: Wrong) -> dict[str, Any]:
    # CPU is read in clock ticks (10 ms): a batch must cost stock mitmdump many of them (about 0.5 s of CPU per
    # batch in a full run, fresh and keep-alive alike), so that one tick more or less moves a ratio by 2 % at most.
    sizes = {"fresh": 40, "keepalive": 100} if setup.quick else {"fresh": 200, "keepalive": 500}
    data: dict[str, Any] = {
        "requests_per_round": sizes,
        "rounds": setup.rounds,
        "goal": f"<= {LEARNED_GOAL}",
        "cpu": (
            "user + system CPU seconds of each mitmdump over its batch (/proc/PID/stat, in ticks of "
            f"{TICK_S:g} s), per 1,000 requests; cpu_ratio: the median of the per-round ratios addon/stock (the two "
            "batches of a round paired); goal_met is judged on it"
        ),
    }
    data["fresh"] = _learned_case(setup, peers, wrong, sizes["fresh"], "fresh", peers.pool[-1], False, ())
    data["keepalive"] = _learned_case(setup, peers, wrong, sizes["keepalive"], "keepalive", peers.keep, True, ())
    return data


def paired(addon: list[float], stock: list[float]) -> list[float]:
    """The per-round ratios addon/stock, the two batches of each round paired."""
    return [a / s for a, s in zip(addon, stock, strict=True)]


def _learned_case(
    setup: Setup, peers: Peers, wrong: Wrong, n: int, case: str, port: int, keep_alive: bool, extra: tuple[str, ...]
) -> dict[str, Any]:
    addon = start_proxy(setup.workdir, peers, f"learned-{case}-addon", addon=True, extra=extra)
    stock = start_proxy(setup.workdir, peers, f"learned-{case}-stock", addon=False, extra=extra)
    try:
        asyncio.run(_warm(stock, addon, peers))
        _, got = asyncio.run(fresh(addon.port, target(port)))
        check(wrong, "learning", got, "upgraded", target(port))  # now it is learned
        medians: dict[str, list[float]] = {"stock": [], "addon": []}
        p99: dict[str, list[float]] = {"stock": [], "addon": []}
        cpu: dict[str, list[float]] = {"stock": [], "addon": []}  # CPU seconds per 1,000 requests, per round
        for r in range(setup.rounds):
            for name in order(r):
                proxy, kind, scheme = (addon, "learned", "http") if name == "addon" else (stock, "stock", "https")
                time.sleep(SETTLE)
                before = proxy.cpu_seconds()
                lat = asyncio.run(_batch(proxy, target(port, "", scheme), n, kind, keep_alive, wrong))
                time.sleep(SETTLE)
                cpu[name].append((proxy.cpu_seconds() - before) / n * 1000)
                medians[name].append(statistics.median(lat) * 1e3)
                p99[name].append(pct(lat, 99) * 1e3)
        ratios = paired(cpu["addon"], cpu["stock"])
        result: dict[str, Any] = {
            "requests_per_round": n,
            **{f"{name}_cpu_s_per_1000": summary(v) for name, v in cpu.items()},
            "cpu_ratio": statistics.median(ratios),
            "cpu_ratio_per_round": summary(ratios),
            "cpu_ratio_of_totals": sum(cpu["addon"]) / sum(cpu["stock"]),
            **{f"{name}_median_ms": summary(v) for name, v in medians.items()},
            **{f"{name}_p99_ms": summary(v) for name, v in p99.items()},
            "ratio": statistics.median(medians["addon"]) / statistics.median(medians["stock"]),
            "raw_cpu_s_per_1000": cpu,
            "raw_round_medians_ms": medians,
        }
        result["goal_met"] = result["cpu_ratio"] <= LEARNED_GOAL
        log(
            f"upgrade learned vs stock https ({case}): CPU {statistics.median(cpu['addon']):.3f} vs "
            f"{statistics.median(cpu['stock']):.3f} s per 1,000 requests: paired ratio {result['cpu_ratio']:.3f} "
            f"{verdict(result['cpu_ratio'], LEARNED_GOAL)} (goal <= {LEARNED_GOAL}); latency "
            f"{statistics.median(medians['addon']):.2f} vs {statistics.median(medians['stock']):.2f} ms: "
            f"ratio {result['ratio']:.3f}"
        )
    finally:
        addon.mitmdump.stop()
        stock.mitmdump.stop()
    return result


# -- 3. a crowd to one new, slow target


async def _crowd(proxy: int, url: str) -> tuple[float, list[tuple[float, Got]]]:
    """CROWD requests, CROWD_GAP apart, each on a connection of its own: wall time to the last answer, and each
    request's (seconds, answer) in the order they were sent."""

    async def one(i: int) -> tuple[float, Got]:
        await asyncio.sleep(i * CROWD_GAP)
        return await fresh(proxy, url)

    started = time.perf_counter()
    answers = await asyncio.gather(*(one(i) for i in range(CROWD)))
    return time.perf_counter() - started, list(answers)


def crowd_goals(case: str, saw: dict[str, int], right: int) -> dict[str, bool]:
    """The goals for esrs-fix's side of a crowd case, judged on what the server saw and what the clients got:
    every answer right; at most one TLS handshake per client (the stock count for CROWD fresh connections) and only
    one begun before the server's first answer over TLS (one attempt per target: the others waited for it); for the
    slow target (its plaintext answer is quick, its handshake slow), at most CROWD_PLAINTEXT_GOAL plaintext requests.
    The far target has no plaintext goal: every request sent before the first plaintext answer was back (a round
    trip and the connect's, 0.6 s at 150 ms each way) had no way to know."""
    goals = {
        "every_answer_right": right == CROWD,
        "handshakes_at_most_one_per_client": saw["handshakes"] <= CROWD,
        "one_handshake_before_the_first_answer": saw["handshakes_before_first_answer"] == 1,
    }
    if case == "slow_handshake":
        goals["plaintext_requests_at_most_2"] = saw["plaintext_requests"] <= CROWD_PLAINTEXT_GOAL
    return goals


def crowd(setup: Setup, peers: Peers, wrong: Wrong) -> dict[str, Any]:
    data: dict[str, Any] = {
        "requests": CROWD,
        "gap_s": CROWD_GAP,
        "cases": {
            case: {"handshake_delay_s": h, "each_way_delay_s": d} for case, (h, d) in upgradepeers.CROWD_CASES.items()
        },
    }
    for i, case in enumerate(upgradepeers.CROWD_CASES):
        port = peers.crowd[case]
        for name in order(i):
            is_addon = name == "addon"
            proxy = start_proxy(setup.workdir, peers, f"crowd-{case}-{name}", addon=is_addon)
            try:
                asyncio.run(_warm_one(proxy, peers, is_addon, wrong))
                peers.counts(case)  # from zero
                url = target(port, "crowd", "http" if is_addon else "https")
                wall, answers = asyncio.run(_crowd(proxy.port, url))
                time.sleep(SETTLE)
                saw = peers.counts(case)
            finally:
                proxy.mitmdump.stop()
            right, labels = 0, {"upgraded": 0, "upgraded (learned)": 0, "other": 0}
            for _, (status, headers, body) in answers:
                ok = status == 200 and body == servers.OK_BODY
                label = headers.get(LABEL)
                if is_addon:
                    ok = ok and label is not None and label.startswith("upgraded")
                    key = "upgraded (learned)" if (label or "").startswith(LEARNED) else "upgraded"
                    labels[key if ok else "other"] += 1
                else:
                    ok = ok and label is None
                right += ok
                wrong.check(ok, f"upgrade crowd {case} ({name}) {url}: {status} {label!r} {body[:40]!r}")
            seconds = [t for t, _ in answers]
            side: dict[str, Any] = {
                **saw,
                "right_answers": right,
                "wall_s": wall,
                "latency_s": {"p50": pct(seconds, 50), "max": max(seconds)},
            }
            if is_addon:
                side["labels"] = labels
                side["goals"] = crowd_goals(case, saw, right)
                side["goals_met"] = all(side["goals"].values())
            data["cases"][case][name] = side
            log(
                f"upgrade crowd {case} ({name}): {right}/{CROWD} right; the server saw {saw['plaintext_requests']} "
                f"plaintext requests, {saw['handshakes']} handshakes ({saw['handshakes_before_first_answer']} before "
                f"its first answer over TLS); last answer after {wall:.2f} s"
            )
    return data


async def _warm_one(proxy: Proxy, peers: Peers, is_addon: bool, wrong: Wrong) -> None:
    """Clean requests, then one request to another stand-in (upgraded through esrs-fix, https:// through stock): the
    crowd meets a mitmdump that has upgraded before (a cold one's first upgrade is far slower: imports, first TLS)."""
    for _ in range(3):
        await fresh(proxy.port, target(peers.origin, "warm"))
    url = target(peers.pool[0], "warm", "http" if is_addon else "https")
    _, got = await fresh(proxy.port, url)
    check(wrong, "crowd warm-up", got, "upgraded" if is_addon else "stock", url)


# -- 4. mixed load


def _learn(proxy: Proxy, ports: list[int], wrong: Wrong) -> None:
    for port in ports:
        _, got = asyncio.run(fresh(proxy.port, target(port, "learn")))
        check(wrong, "learning", got, "upgraded", target(port, "learn"))


def mixed(setup: Setup, peers: Peers, wrong: Wrong) -> dict[str, Any]:
    count = 200 if setup.quick else 500
    rounds = max(2, setup.rounds // 2)
    hot = peers.pool[-HOT:]
    cold = iter(peers.pool)
    proxy = start_proxy(setup.workdir, peers, "mixed", addon=True)
    kinds: dict[str, list[float]] = {"upgraded": [], "learned": [], "clean": []}
    per_round: list[dict[str, Any]] = []
    wrong_before = wrong.count
    try:
        _learn(proxy, hot, wrong)
        for r in range(rounds):
            urls: dict[str, str] = {}
            for i in range(count):
                if i % 5 == 0:
                    urls[target(next(cold), f"x{r}-{i}")] = "upgraded"
                elif i % 5 in (1, 3):
                    urls[target(hot[i % HOT], f"x{r}-{i}")] = "learned"
                else:
                    urls[target(peers.origin, f"x{r}-{i}")] = "clean"
            wall, lat, answers = load(proxy.port, list(urls), MIXED_CONCURRENCY, TIMEOUT)
            wrong.check(len(answers) == count, f"upgrade mixed: {len(answers)} answers to {count}")
            this: dict[str, list[float]] = {k: [] for k in kinds}
            for (url, status, headers, body), t in zip(answers, lat, strict=True):
                check(wrong, f"mixed ({urls[url]})", (status, headers, body), urls[url], url)
                this[urls[url]].append(t * 1e3)
            for k, v in this.items():
                kinds[k] += v
            per_round.append({"wall_s": wall, **{f"{k}_p99_ms": pct(v, 99) for k, v in this.items()}})
            log(
                f"upgrade mixed round {r + 1}/{rounds}: {wall:.2f} s, wrong answers so far {wrong.count - wrong_before}"
            )
    finally:
        proxy.mitmdump.stop()
    return {
        "requests": count,
        "rounds": rounds,
        "concurrency": MIXED_CONCURRENCY,
        "per_round_of_each_kind": {k: sum(1 for i in range(count) if _kind(i) == k) for k in kinds},
        "wrong_answers": wrong.count - wrong_before,
        "latency_ms": {k: {"p50": pct(v, 50), "p99": pct(v, 99), "n": len(v)} for k, v in kinds.items()},
        "rounds_detail": per_round,
    }


def _kind(i: int) -> str:
    return "upgraded" if i % 5 == 0 else "learned" if i % 5 in (1, 3) else "clean"


# -- 5. memory, 6. the bound


def learned_count(proxy: Proxy) -> int:
    _, (status, _, body) = asyncio.run(fresh(proxy.port, PROBE_URL))
    text = body.decode(errors="replace")
    if status != 200:
        raise RuntimeError(f"the probe answered {status}: {text[:200]}")
    if "no learned targets" in text:
        return 0
    found = re.search(r"esrs-fix: (\d+) learned target", text)
    if found is None:
        raise RuntimeError(f"the probe's answer has no count: {text[:200]}")
    return int(found.group(1))


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def memory(setup: Setup, peers: Peers, wrong: Wrong) -> dict[str, Any]:
    chunk, chunks = (500, 4) if setup.quick else (1000, 20)
    hot, cold = peers.pool[-HOT:], peers.pool[:-HOT]
    always_upgrades = len(cold) + HOT > CAPACITY  # each cold target is evicted before it comes round again
    proxy = start_proxy(setup.workdir, peers, "memory", addon=True, probe=True)
    done, rss, counts = [0], [0.0], [0]
    wrong_before = wrong.count
    try:
        _learn(proxy, hot, wrong)
        rss[0] = proxy.status_kib("VmRSS") / 1024
        counts[0] = learned_count(proxy)
        g = 0
        for _chunk in range(chunks):
            urls: dict[str, str] = {}
            for _ in range(chunk):
                if g % 2 == 0:
                    urls[target(hot[(g // 2) % HOT], f"mem{g}")] = "learned"
                else:
                    visit, k = divmod(g // 2, len(cold))
                    urls[target(cold[k], f"mem{g}")] = "upgraded" if visit == 0 or always_upgrades else "learned"
                g += 1
            _, _, answers = load(proxy.port, list(urls), LOAD_CONCURRENCY, TIMEOUT)
            wrong.check(len(answers) == chunk, f"upgrade memory: {len(answers)} answers to {chunk}")
            for url, status, headers, body in answers:
                check(wrong, f"memory ({urls[url]})", (status, headers, body), urls[url], url)
            done.append(g)
            rss.append(proxy.status_kib("VmRSS") / 1024)
            counts.append(learned_count(proxy))
            log(f"upgrade memory: {g} requests, RSS {rss[-1]:.1f} MiB, {counts[-1]} learned")
        peak = proxy.status_kib("VmHWM") / 1024
    finally:
        proxy.mitmdump.stop()
    half = len(done) // 2
    thousands = [d / 1000 for d in done]
    return {
        "requests": done[-1],
        "concurrency": LOAD_CONCURRENCY,
        "cold_targets": len(cold),
        "hot_targets": HOT,
        "cold_always_upgrade": always_upgrades,
        "rss_mib": {"start": rss[0], "end": rss[-1], "max_sampled": max(rss), "peak_vmhwm": peak},
        "slope_mib_per_1000": slope(thousands, rss),
        "slope_mib_per_1000_second_half": slope(thousands[half:], rss[half:]),
        "samples": {"requests": done, "rss_mib": rss, "learned": counts},
        "wrong_answers": wrong.count - wrong_before,
    }


def bound(setup: Setup, peers: Peers, wrong: Wrong) -> dict[str, Any]:
    step = 100 if setup.quick else 200
    targets = peers.pool
    proxy = start_proxy(setup.workdir, peers, "bound", addon=True, probe=True)
    seen, counts, rss = [0], [0], [0.0]
    try:
        rss[0] = proxy.status_kib("VmRSS") / 1024
        for start in range(0, len(targets), step):
            urls = [target(p, "bound") for p in targets[start : start + step]]
            _, _, answers = load(proxy.port, urls, LOAD_CONCURRENCY, TIMEOUT)
            wrong.check(len(answers) == len(urls), f"upgrade bound: {len(answers)} answers to {len(urls)}")
            for url, status, headers, body in answers:
                check(wrong, "bound (upgraded)", (status, headers, body), "upgraded", url)
            seen.append(start + len(urls))
            counts.append(learned_count(proxy))
            rss.append(proxy.status_kib("VmRSS") / 1024)
            log(f"upgrade bound: {seen[-1]} distinct targets upgraded, {counts[-1]} learned")
        # the least recently used went first: the first target upgrades again (when over the bound), the last is learned
        first_kind = "upgraded" if len(targets) > CAPACITY else "learned"
        _, got = asyncio.run(fresh(proxy.port, target(targets[0], "again")))
        first_ok = expected(got[1], got[2], got[0], first_kind, "")
        wrong.check(first_ok, f"upgrade bound: the first target again: {got[1].get(LABEL)!r}")
        _, got = asyncio.run(fresh(proxy.port, target(targets[-1], "again")))
        last_ok = expected(got[1], got[2], got[0], "learned", "")
        wrong.check(last_ok, f"upgrade bound: the last target again: {got[1].get(LABEL)!r}")
        final = learned_count(proxy)
    finally:
        proxy.mitmdump.stop()
    want = [min(s, CAPACITY) for s in seen]
    wrong.check(counts == want, f"upgrade bound: learned counts {counts}, expected {want}")
    return {
        "distinct_targets": len(targets),
        "capacity": CAPACITY,
        "samples": {"upgraded": seen, "learned": counts, "rss_mib": rss},
        "max_learned": max(counts),
        "first_target_again": first_kind if first_ok else "wrong",
        "last_target_again_learned": last_ok,
        "final_learned": final,
    }


def run(setup: Setup) -> Outcome:
    wrong = Wrong()
    pool = 300 if setup.quick else 1200
    log(f"upgrade: starting {pool} TLS stand-ins")
    peers = Peers.start(setup.workdir, pool)
    try:
        data: dict[str, Any] = {
            "mode": "regular (GET http://127.0.0.1:PORT/ through the addon, GET https://... through stock)",
            "stand_ins": pool,
            "first_request": first_upgrade(setup, peers, wrong),
            "learned": learned_vs_stock(setup, peers, wrong),
            "crowd": crowd(setup, peers, wrong),
            "mixed": mixed(setup, peers, wrong),
            "memory": memory(setup, peers, wrong),
            "bound": bound(setup, peers, wrong),
        }
    finally:
        peers.stop()
    data["wrong_answers"] = wrong.count
    return Outcome(data, lines(data), wrong.count, wrong.examples)


def _ms(s: dict[str, float]) -> str:
    return f"{s['median']:.2f} [{s['min']:.2f}-{s['max']:.2f}]"


def _s(s: dict[str, float]) -> str:
    return f"{s['median']:.3f} [{s['min']:.3f}-{s['max']:.3f}]"


def _saw(side: dict[str, Any]) -> str:
    return (
        f"{side['plaintext_requests']} / {side['handshakes']} ({side['handshakes_before_first_answer']}), "
        f"{side['right_answers']}/{CROWD} right"
    )


def lines(data: dict[str, Any]) -> list[str]:
    f, le, mx, mem, b = (data[k] for k in ("first_request", "learned", "mixed", "memory", "bound"))
    rows = [
        f"6. upgrade (esrs_upgrade), {data['mode']}; {data['stand_ins']} TLS stand-ins; "
        f"wrong answers: {data['wrong_answers']}",
        f"   first request to a new target, upgraded (median ms [min-max] of {f['samples']}, fresh connections): "
        f"{_ms(f['addon_upgraded_ms'])}",
        f"     vs stock https:// {_ms(f['stock_https_ms'])} + plaintext round trip {_ms(f['plaintext_rt_ms'])} "
        f"= {f['baseline_ms']:.2f}: ratio {f['ratio']:.2f} {verdict(f['ratio'], FIRST_GOAL)} (goal <= {FIRST_GOAL}; "
        f"per-sample median {f['per_sample_ratio']['median']:.2f})",
        f"     the second request to the same target (learned): {_ms(f['addon_learned_ms'])}",
    ]
    rows.append(
        f"   learned (esrs-fix, http://) vs stock https://, {le['rounds']} AB rounds: mitmdump CPU seconds per 1,000 "
        f"requests (/proc), median [min-max] of the rounds; ratio: median [min-max] of the per-round ratios "
        f"(goal <= {LEARNED_GOAL}); latency: median ms of the round medians:"
    )
    for case, what in (
        ("fresh", "fresh connection per request"),
        ("keepalive", "keep-alive"),
    ):
        e = le[case]
        rows.append(
            f"     {what} ({e['requests_per_round']} per round): CPU {_s(e['addon_cpu_s_per_1000'])} vs "
            f"{_s(e['stock_cpu_s_per_1000'])}: ratio {e['cpu_ratio']:.3f} "
            f"[{e['cpu_ratio_per_round']['min']:.3f}-{e['cpu_ratio_per_round']['max']:.3f}] "
            f"{verdict(e['cpu_ratio'], LEARNED_GOAL)} (of the totals {e['cpu_ratio_of_totals']:.3f}); latency "
            f"{e['addon_median_ms']['median']:.2f} vs {e['stock_median_ms']['median']:.2f}: ratio {e['ratio']:.3f}; "
            f"p99 {e['addon_p99_ms']['median']:.2f} vs {e['stock_p99_ms']['median']:.2f}"
        )
    rows += crowd_lines(data["crowd"])
    lat = mx["latency_ms"]
    each = mx["per_round_of_each_kind"]
    rows.append(
        f"   mixed: {mx['requests']} requests at concurrency {mx['concurrency']} "
        f"({each['upgraded']} upgraded first time, "
        f"{each['learned']} learned, {each['clean']} clean) x {mx['rounds']} rounds: wrong answers "
        f"{mx['wrong_answers']} {verdict(mx['wrong_answers'], 0)} (goal 0); p50/p99 ms: "
        + ", ".join(f"{k} {v['p50']:.1f}/{v['p99']:.1f}" for k, v in lat.items())
    )
    r = mem["rss_mib"]
    rows.append(
        f"   memory: mitmdump RSS over {mem['requests']:,} requests "
        f"(half learned, half upgraded; {mem['cold_targets']} "
        f"cold targets{'' if mem['cold_always_upgrade'] else ', learned after their first visit'}): start "
        f"{r['start']:.1f}, end {r['end']:.1f}, max {r['max_sampled']:.1f} MiB (VmHWM {r['peak_vmhwm']:.1f}); "
        f"slope {mem['slope_mib_per_1000']:+.2f} MiB per 1,000 requests "
        f"({mem['slope_mib_per_1000_second_half']:+.2f} over the second half)"
    )
    rows.append(
        f"   bound: {b['distinct_targets']} distinct targets upgraded; learned count read from mitmdump: "
        + ", ".join(f"{s}->{n}" for s, n in zip(b["samples"]["upgraded"][1:], b["samples"]["learned"][1:], strict=True))
        + f" {verdict(b['max_learned'], b['capacity'])} (goal: at most {b['capacity']}); the first target again: "
        + b["first_target_again"]
        + ("" if b["distinct_targets"] > b["capacity"] else " (--quick: fewer targets than the bound)")
    )
    return rows


def crowd_lines(cr: dict[str, Any]) -> list[str]:
    """The crowd's rows of the table."""
    rows = [
        f"   crowd: {cr['requests']} requests {cr['gap_s'] * 1e3:g} ms apart, a connection each, to one new target; "
        "counted at the server: plaintext requests / TLS handshakes (begun before its first answer over TLS); "
        "right answers:"
    ]
    for c in cr["cases"].values():
        what = (
            f"handshake {c['handshake_delay_s']:g} s"
            if c["handshake_delay_s"]
            else f"{c['each_way_delay_s'] * 1e3:g} ms each way (LatencyRelay)"
        )
        a, st = c["addon"], c["stock"]
        rows.append(
            f"     {what}: esrs-fix http:// {_saw(a)}, labels {a['labels']['upgraded']} upgraded + "
            f"{a['labels']['upgraded (learned)']} learned, last answer {a['wall_s']:.2f} s "
            f"{verdict(0 if a['goals_met'] else 1, 0)}"
            + ("" if a["goals_met"] else f" (missed: {', '.join(k for k, v in a['goals'].items() if not v)})")
        )
        rows.append(f"       stock https:// {_saw(st)}, last answer {st['wall_s']:.2f} s")
    rows.append(
        f"     goals (esrs-fix): {cr['requests']} right, at most one handshake per client and one before the first "
        f"answer; the slow target at most {CROWD_PLAINTEXT_GOAL} plaintext requests"
    )
    return rows
