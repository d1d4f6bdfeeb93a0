"""6. Heal instead of fake (esrs_upgrade): what a healed and a learned request cost, under load, and in memory.

Real mitmdump processes in regular mode (`GET http://127.0.0.1:PORT/` to a TLS port is the plaintext chain;
stock mitmdump's `GET https://127.0.0.1:PORT/` is the baseline), both trusting the stand-ins' certificate with
`ssl_verify_upstream_trusted_ca`. The peers (healpeers) run in a process of their own: many EsrsServers, one port
each, so that every port is a target esrs-fix has not learned, a keep-alive stand-in and a clean origin. Each
measurement starts its own mitmdump(s), so that what one learned does not leak into the next.

1. first request to a new target (healed) vs stock's https:// request plus one plaintext round trip to the TLS port
   (a GET straight to the stand-in, getting the alert): fresh connections, the three interleaved per target;
2. learned requests vs stock's https:// requests: fresh client connection per request, and keep-alive; AB rounds;
3. 500 requests at concurrency 64: healed (first time), learned and clean, every answer checked;
4. mitmdump's RSS over many requests to learned and healed targets (more distinct cold targets than the bound, so
   that each cold request heals again);
5. more distinct targets than the bound: the learned count read from the running mitmdump (heal_probe.py answers
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
from stray_tls.learned import CAPACITY

from . import healpeers
from .common import Outcome, Setup, Wrong, log, order, pct, summary
from .load import LABEL, echo_body, exchange, load, request_for

PROBE_SCRIPT = Path(__file__).with_name("heal_probe.py")
PROBE_URL = "http://esrs-bench.probe/"
HEALED, LEARNED = "upgraded; ", "upgraded (learned); "
TIMEOUT = 30.0
MIXED_CONCURRENCY = 64
LOAD_CONCURRENCY = 16
HOT = 8  # learned targets in the mixed and memory loads
#: The goals of issue 9, as ratios to stock mitmproxy: a first, healed request vs stock https:// plus one plaintext
#: round trip; a learned request vs stock https://.
FIRST_GOAL = 1.5
LEARNED_GOAL = 1.05

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Got = tuple[int, dict[str, str], bytes]


@dataclass
class Peers:
    cert: str
    origin: int
    keep: int
    pool: list[int]
    process: Any
    pipe: Any

    @classmethod
    def start(cls, workdir: Path, count: int) -> Peers:
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: the bench's threads do not matter
        pipe, child = context.Pipe()
        process = context.Process(target=healpeers.serve, args=(child, str(workdir), count), daemon=True)
        process.start()
        if not pipe.poll(120):
            process.terminate()
            raise RuntimeError("the heal bench's servers did not start")
        cert, origin, keep, pool = pipe.recv()
        return cls(cert, origin, keep, pool, process, pipe)

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
    m = Mitmdump(args, workdir / f"heal-{name}.log", addon=addon)
    m.start()
    return Proxy(m, port)


def verdict(value: float, limit: float) -> str:
    """`ok` when a measured value meets its goal (at most `limit`), else `MISS`: printed next to the value."""
    return "ok" if value <= limit else "MISS"


def target(port: int, path: str = "", scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{port}/{path}"


def expected(headers: dict[str, str], body: bytes, status: int, kind: str, url: str) -> bool:
    """Is this the right answer? kind: healed, learned (the stand-in's bytes, labelled), stock (unlabelled), clean."""
    label = headers.get(LABEL)
    if kind == "clean":
        return status == 200 and body == echo_body(url) and label is None
    if status != 200 or body != servers.OK_BODY:
        return False
    if kind == "stock":
        return label is None
    prefix = HEALED if kind == "healed" else LEARNED
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
    wrong.check(ok, f"heal {what} {url}: {status} {headers.get(LABEL)!r} {body[:40]!r}")


# -- 1. the first, healed request


async def _first(addon: Proxy, stock: Proxy, targets: list[int], wrong: Wrong) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"addon_healed": [], "addon_learned": [], "stock_https": [], "plaintext_rt": []}
    steps = ["addon", "stock", "plaintext"]
    for i, port in enumerate(targets):
        for step in steps[i % 3 :] + steps[: i % 3]:  # the three rotate, so that drift hits each alike
            if step == "addon":
                url = target(port, f"first{i}")
                t, got = await fresh(addon.port, url)
                check(wrong, "first request", got, "healed", url)
                times["addon_healed"].append(t)
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
                wrong.check(data == servers.ALERT_TLS10, f"heal plaintext round trip to {port}: {data[:20]!r}")
                times["plaintext_rt"].append(t)
    return times


def first_heal(setup: Setup, peers: Peers, wrong: Wrong) -> dict[str, Any]:
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
        h / (s + p) for h, s, p in zip(ms["addon_healed"], ms["stock_https"], ms["plaintext_rt"], strict=True)
    ]
    data: dict[str, Any] = {
        "samples": samples,
        **{f"{k}_ms": summary(v) for k, v in ms.items()},
        "baseline_ms": baseline,
        "ratio": statistics.median(ms["addon_healed"]) / baseline,
        "per_sample_ratio": summary(per_sample),
        "goal": f"<= {FIRST_GOAL}",
        "raw_ms": ms,
    }
    data["goal_met"] = data["ratio"] <= FIRST_GOAL
    log(
        f"heal first request: healed {data['addon_healed_ms']['median']:.2f} ms vs stock https "
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
    n = 30 if setup.quick else 100
    data: dict[str, Any] = {"requests_per_round": n, "rounds": setup.rounds, "goal": f"<= {LEARNED_GOAL}"}
    data["fresh"] = _learned_case(setup, peers, wrong, n, "fresh", peers.pool[-1], False, ())
    data["keepalive"] = _learned_case(setup, peers, wrong, n, "keepalive", peers.keep, True, ())
    return data


def _learned_case(
    setup: Setup, peers: Peers, wrong: Wrong, n: int, case: str, port: int, keep_alive: bool, extra: tuple[str, ...]
) -> dict[str, Any]:
    addon = start_proxy(setup.workdir, peers, f"learned-{case}-addon", addon=True, extra=extra)
    stock = start_proxy(setup.workdir, peers, f"learned-{case}-stock", addon=False, extra=extra)
    try:
        asyncio.run(_warm(stock, addon, peers))
        _, got = asyncio.run(fresh(addon.port, target(port)))
        check(wrong, "learning", got, "healed", target(port))  # now it is learned
        medians: dict[str, list[float]] = {"stock": [], "addon": []}
        p99: dict[str, list[float]] = {"stock": [], "addon": []}
        for r in range(setup.rounds):
            for name in order(r):
                proxy, kind, scheme = (addon, "learned", "http") if name == "addon" else (stock, "stock", "https")
                lat = asyncio.run(_batch(proxy, target(port, "", scheme), n, kind, keep_alive, wrong))
                medians[name].append(statistics.median(lat) * 1e3)
                p99[name].append(pct(lat, 99) * 1e3)
        result: dict[str, Any] = {
            **{f"{name}_median_ms": summary(v) for name, v in medians.items()},
            **{f"{name}_p99_ms": summary(v) for name, v in p99.items()},
            "ratio": statistics.median(medians["addon"]) / statistics.median(medians["stock"]),
            "raw_round_medians_ms": medians,
        }
        result["goal_met"] = result["ratio"] <= LEARNED_GOAL
        log(
            f"heal learned vs stock https ({case}): {statistics.median(medians['addon']):.2f} vs "
            f"{statistics.median(medians['stock']):.2f} ms: ratio {result['ratio']:.3f} "
            f"{verdict(result['ratio'], LEARNED_GOAL)} (goal <= {LEARNED_GOAL})"
        )
    finally:
        addon.mitmdump.stop()
        stock.mitmdump.stop()
    return result


# -- 3. mixed load


def _learn(proxy: Proxy, ports: list[int], wrong: Wrong) -> None:
    for port in ports:
        _, got = asyncio.run(fresh(proxy.port, target(port, "learn")))
        check(wrong, "learning", got, "healed", target(port, "learn"))


def mixed(setup: Setup, peers: Peers, wrong: Wrong) -> dict[str, Any]:
    count = 200 if setup.quick else 500
    rounds = max(2, setup.rounds // 2)
    hot = peers.pool[-HOT:]
    cold = iter(peers.pool)
    proxy = start_proxy(setup.workdir, peers, "mixed", addon=True)
    kinds: dict[str, list[float]] = {"healed": [], "learned": [], "clean": []}
    per_round: list[dict[str, Any]] = []
    wrong_before = wrong.count
    try:
        _learn(proxy, hot, wrong)
        for r in range(rounds):
            urls: dict[str, str] = {}
            for i in range(count):
                if i % 5 == 0:
                    urls[target(next(cold), f"x{r}-{i}")] = "healed"
                elif i % 5 in (1, 3):
                    urls[target(hot[i % HOT], f"x{r}-{i}")] = "learned"
                else:
                    urls[target(peers.origin, f"x{r}-{i}")] = "clean"
            wall, lat, answers = load(proxy.port, list(urls), MIXED_CONCURRENCY, TIMEOUT)
            wrong.check(len(answers) == count, f"heal mixed: {len(answers)} answers to {count}")
            this: dict[str, list[float]] = {k: [] for k in kinds}
            for (url, status, headers, body), t in zip(answers, lat, strict=True):
                check(wrong, f"mixed ({urls[url]})", (status, headers, body), urls[url], url)
                this[urls[url]].append(t * 1e3)
            for k, v in this.items():
                kinds[k] += v
            per_round.append({"wall_s": wall, **{f"{k}_p99_ms": pct(v, 99) for k, v in this.items()}})
            log(f"heal mixed round {r + 1}/{rounds}: {wall:.2f} s, wrong answers so far {wrong.count - wrong_before}")
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
    return "healed" if i % 5 == 0 else "learned" if i % 5 in (1, 3) else "clean"


# -- 4. memory, 5. the bound


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
    always_heals = len(cold) + HOT > CAPACITY  # each cold target is evicted before it comes round again
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
                    urls[target(cold[k], f"mem{g}")] = "healed" if visit == 0 or always_heals else "learned"
                g += 1
            _, _, answers = load(proxy.port, list(urls), LOAD_CONCURRENCY, TIMEOUT)
            wrong.check(len(answers) == chunk, f"heal memory: {len(answers)} answers to {chunk}")
            for url, status, headers, body in answers:
                check(wrong, f"memory ({urls[url]})", (status, headers, body), urls[url], url)
            done.append(g)
            rss.append(proxy.status_kib("VmRSS") / 1024)
            counts.append(learned_count(proxy))
            log(f"heal memory: {g} requests, RSS {rss[-1]:.1f} MiB, {counts[-1]} learned")
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
        "cold_always_heal": always_heals,
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
            wrong.check(len(answers) == len(urls), f"heal bound: {len(answers)} answers to {len(urls)}")
            for url, status, headers, body in answers:
                check(wrong, "bound (healed)", (status, headers, body), "healed", url)
            seen.append(start + len(urls))
            counts.append(learned_count(proxy))
            rss.append(proxy.status_kib("VmRSS") / 1024)
            log(f"heal bound: {seen[-1]} distinct targets healed, {counts[-1]} learned")
        # the least recently used went first: the first target heals again (when over the bound), the last is learned
        first_kind = "healed" if len(targets) > CAPACITY else "learned"
        _, got = asyncio.run(fresh(proxy.port, target(targets[0], "again")))
        first_ok = expected(got[1], got[2], got[0], first_kind, "")
        wrong.check(first_ok, f"heal bound: the first target again: {got[1].get(LABEL)!r}")
        _, got = asyncio.run(fresh(proxy.port, target(targets[-1], "again")))
        last_ok = expected(got[1], got[2], got[0], "learned", "")
        wrong.check(last_ok, f"heal bound: the last target again: {got[1].get(LABEL)!r}")
        final = learned_count(proxy)
    finally:
        proxy.mitmdump.stop()
    want = [min(s, CAPACITY) for s in seen]
    wrong.check(counts == want, f"heal bound: learned counts {counts}, expected {want}")
    return {
        "distinct_targets": len(targets),
        "capacity": CAPACITY,
        "samples": {"healed": seen, "learned": counts, "rss_mib": rss},
        "max_learned": max(counts),
        "first_target_again": first_kind if first_ok else "wrong",
        "last_target_again_learned": last_ok,
        "final_learned": final,
    }


def run(setup: Setup) -> Outcome:
    wrong = Wrong()
    pool = 300 if setup.quick else 1200
    log(f"heal: starting {pool} TLS stand-ins")
    peers = Peers.start(setup.workdir, pool)
    try:
        data: dict[str, Any] = {
            "mode": "regular (GET http://127.0.0.1:PORT/ through the addon, GET https://... through stock)",
            "stand_ins": pool,
            "first_request": first_heal(setup, peers, wrong),
            "learned": learned_vs_stock(setup, peers, wrong),
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


def lines(data: dict[str, Any]) -> list[str]:
    f, le, mx, mem, b = (data[k] for k in ("first_request", "learned", "mixed", "memory", "bound"))
    rows = [
        f"6. heal (esrs_upgrade), {data['mode']}; {data['stand_ins']} TLS stand-ins; "
        f"wrong answers: {data['wrong_answers']}",
        f"   first request to a new target, healed (median ms [min-max] of {f['samples']}, fresh connections): "
        f"{_ms(f['addon_healed_ms'])}",
        f"     vs stock https:// {_ms(f['stock_https_ms'])} + plaintext round trip {_ms(f['plaintext_rt_ms'])} "
        f"= {f['baseline_ms']:.2f}: ratio {f['ratio']:.2f} {verdict(f['ratio'], FIRST_GOAL)} (goal <= {FIRST_GOAL}; "
        f"per-sample median {f['per_sample_ratio']['median']:.2f})",
        f"     the second request to the same target (learned): {_ms(f['addon_learned_ms'])}",
    ]
    rows.append(
        f"   learned vs stock https:// (median ms [min-max] of {le['rounds']} round medians of "
        f"{le['requests_per_round']} requests; goal <= {LEARNED_GOAL}):"
    )
    for case, what in (
        ("fresh", "fresh connection per request"),
        ("keepalive", "keep-alive"),
    ):
        e = le[case]
        rows.append(
            f"     {what}: {_ms(e['addon_median_ms'])} vs {_ms(e['stock_median_ms'])}: ratio {e['ratio']:.3f} "
            f"{verdict(e['ratio'], LEARNED_GOAL)}; "
            f"p99 {e['addon_p99_ms']['median']:.2f} vs {e['stock_p99_ms']['median']:.2f}"
        )
    lat = mx["latency_ms"]
    each = mx["per_round_of_each_kind"]
    rows.append(
        f"   mixed: {mx['requests']} requests at concurrency {mx['concurrency']} ({each['healed']} healed first time, "
        f"{each['learned']} learned, {each['clean']} clean) x {mx['rounds']} rounds: wrong answers "
        f"{mx['wrong_answers']} {verdict(mx['wrong_answers'], 0)} (goal 0); p50/p99 ms: "
        + ", ".join(f"{k} {v['p50']:.1f}/{v['p99']:.1f}" for k, v in lat.items())
    )
    r = mem["rss_mib"]
    rows.append(
        f"   memory: mitmdump RSS over {mem['requests']:,} requests (half learned, half healed; {mem['cold_targets']} "
        f"cold targets{'' if mem['cold_always_heal'] else ', learned after their first visit'}): start "
        f"{r['start']:.1f}, end {r['end']:.1f}, max {r['max_sampled']:.1f} MiB (VmHWM {r['peak_vmhwm']:.1f}); "
        f"slope {mem['slope_mib_per_1000']:+.2f} MiB per 1,000 requests "
        f"({mem['slope_mib_per_1000_second_half']:+.2f} over the second half)"
    )
    rows.append(
        f"   bound: {b['distinct_targets']} distinct targets healed; learned count read from mitmdump: "
        + ", ".join(f"{s}->{n}" for s, n in zip(b["samples"]["healed"][1:], b["samples"]["learned"][1:], strict=True))
        + f" {verdict(b['max_learned'], b['capacity'])} (goal: at most {b['capacity']}); the first target again: "
        + b["first_target_again"]
        + ("" if b["distinct_targets"] > b["capacity"] else " (--quick: fewer targets than the bound)")
    )
    return rows
