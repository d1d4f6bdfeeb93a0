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
import statistics
import time
from typing import Any

from stray_tls.lab import servers

from .common import Outcome, Setup, Wrong, log, order, pct, summary
from .cpu import TICK_S
from .load import exchange, request_for
from .upgradeloads import bound, crowd, memory, mixed
from .upgradesetup import (
    CROWD,
    CROWD_PLAINTEXT_GOAL,
    FIRST_GOAL,
    LEARNED_GOAL,
    SETTLE,
    TIMEOUT,
    Conn,
    Peers,
    Proxy,
    check,
    fresh,
    start_proxy,
    target,
    verdict,
)


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
