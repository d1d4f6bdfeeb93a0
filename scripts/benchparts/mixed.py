"""3. Mixed load: half the requests meet a stray alert, at concurrency 64, every answer checked.

The clean half's p99 under the mix is set against an all-clean run through the same proxy, and (closing strays
only, since stock never answers a kept-open one) against the same mix through stock mitmproxy: a stray flow costs
any proxy a fresh upstream connection, and this tells the addon's share from that.
"""

from __future__ import annotations

import statistics
from typing import Any

from .common import Outcome, Setup, Wrong, log, order, pct, ratio, summary
from .lab import Lab
from .load import LABEL, Answer, echo_body, load

CONCURRENCY = 64


def _judge(lab: Lab, name: str, answers: list[Answer], lat: list[float], wrong: Wrong) -> list[float]:
    """Check each answer (the addon's stray answers too; stock's are its own 502); the clean answers' latencies."""
    clean_lat = []
    for (url, status, headers, body), latency in zip(answers, lat, strict=True):
        if f":{lab.origin}/" in url:
            ok = status == 200 and body == echo_body(url) and LABEL not in headers
            wrong.check(ok, f"mixed {name} clean {url}: {status} {body[:40]!r}")
            clean_lat.append(latency)
        elif name == "addon":
            ok = status == 200 and headers.get(LABEL, "").startswith("synthetic 200; TLS alert")
            wrong.check(ok, f"mixed addon stray {url}: {status} {headers.get(LABEL)!r}")
    return clean_lat


def run(setup: Setup) -> Outcome:
    lab = setup.lab()
    wrong = Wrong()
    count = 200 if setup.quick else 500
    rounds = max(3, setup.rounds // 2)
    strays = (lab.closing, lab.keeping)
    mix = [
        lab.origin_url(f"m{i}") if i % 2 == 0 else f"http://127.0.0.1:{strays[i % 4 == 3]}/m{i}" for i in range(count)
    ]
    clean_only = [lab.origin_url(f"a{i}") for i in range(count)]
    p99: dict[str, list[float]] = {"mixed_clean_p99_ms": [], "all_clean_p99_ms": []}
    for r in range(rounds):
        for kind in ["mixed", "clean"] if r % 2 == 0 else ["clean", "mixed"]:
            urls = mix if kind == "mixed" else clean_only
            _, lat, answers = load(lab.port["addon"], urls, CONCURRENCY)
            wrong.check(len(answers) == count, f"mixed {kind}: {len(answers)} answers to {count}")
            p99[f"{'mixed' if kind == 'mixed' else 'all'}_clean_p99_ms"].append(
                pct(_judge(lab, "addon", answers, lat, wrong), 99) * 1e3
            )
        log(
            f"mixed round {r + 1}: clean p99 {p99['mixed_clean_p99_ms'][-1]:.1f} ms mixed, "
            f"{p99['all_clean_p99_ms'][-1]:.1f} ms all clean, wrong answers so far {wrong.count}"
        )
    closing_mix = [
        lab.origin_url(f"k{i}") if i % 2 == 0 else f"http://127.0.0.1:{lab.closing}/k{i}" for i in range(count)
    ]
    versus: dict[str, list[float]] = {"stock": [], "addon": []}
    for r in range(rounds):
        for name in order(r):
            _, lat, answers = load(lab.port[name], closing_mix, CONCURRENCY)
            versus[name].append(pct(_judge(lab, name, answers, lat, wrong), 99) * 1e3)
    log(
        f"mixed with closing strays, clean p99: stock {statistics.median(versus['stock']):.1f} ms, "
        f"addon {statistics.median(versus['addon']):.1f} ms"
    )
    data: dict[str, Any] = {
        "requests": count,
        "concurrency": CONCURRENCY,
        "wrong_answers": wrong.count,
        **{k: summary(v) for k, v in p99.items()},
        "closing_strays_clean_p99_ms": {name: summary(v) for name, v in versus.items()},
        "raw": {**p99, "closing_strays": versus},
    }
    return Outcome(data, lines(data), wrong.count, wrong.examples)


def lines(data: dict[str, Any]) -> list[str]:
    mixed, clean, cs = data["mixed_clean_p99_ms"], data["all_clean_p99_ms"], data["closing_strays_clean_p99_ms"]
    return [
        f"3. mixed load: {data['requests']} requests at concurrency {data['concurrency']}, half stray; "
        f"wrong answers: {data['wrong_answers']}",
        f"   clean p99 mixed {mixed['median']:.1f} ms vs all clean {clean['median']:.1f} ms: "
        f"ratio {ratio(mixed['median'], clean['median'])} (goal <= 1.1)",
        f"   same mix with closing strays, clean p99: stock {cs['stock']['median']:.1f} ms, "
        f"addon {cs['addon']['median']:.1f} ms: "
        f"ratio addon/stock {ratio(cs['addon']['median'], cs['stock']['median'])}",
    ]
