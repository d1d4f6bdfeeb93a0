"""The upgrade bench under load: a crowd to one new, slow or far target; a mixed load; memory; the bound on learned
targets (measurements 3 to 6 of `upgrade`)."""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from typing import Any

from stray_tls.lab import servers
from stray_tls.mitm.learned import CAPACITY

from . import upgradepeers
from .common import Setup, Wrong, log, order, pct
from .load import LABEL, load
from .upgradesetup import (
    CROWD,
    CROWD_GAP,
    CROWD_PLAINTEXT_GOAL,
    HOT,
    LEARNED,
    LOAD_CONCURRENCY,
    MIXED_CONCURRENCY,
    PROBE_URL,
    SETTLE,
    TIMEOUT,
    Got,
    Peers,
    Proxy,
    check,
    expected,
    fresh,
    start_proxy,
    target,
)


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


async def _crowd(proxy: int, url: str) -> tuple[float, list[tuple[float, Got]]]:
    """CROWD requests, CROWD_GAP apart, each on a connection of its own: wall time to the last answer, and each
    request's (seconds, answer) in the order they were sent."""

    async def one(i: int) -> tuple[float, Got]:
        await asyncio.sleep(i * CROWD_GAP)
        return await fresh(proxy, url)

    started = time.perf_counter()
    answers = await asyncio.gather(*(one(i) for i in range(CROWD)))
    return time.perf_counter() - started, list(answers)


async def _warm_one(proxy: Proxy, peers: Peers, is_addon: bool, wrong: Wrong) -> None:
    """Clean requests, then one request to another stand-in (upgraded through esrs-fix, https:// through stock): the
    crowd meets a mitmdump that has upgraded before (a cold one's first upgrade is far slower: imports, first TLS)."""
    for _ in range(3):
        await fresh(proxy.port, target(peers.origin, "warm"))
    url = target(peers.pool[0], "warm", "http" if is_addon else "https")
    _, got = await fresh(proxy.port, url)
    check(wrong, "crowd warm-up", got, "upgraded" if is_addon else "stock", url)
