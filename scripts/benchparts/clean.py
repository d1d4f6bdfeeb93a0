"""1. Clean traffic through stock mitmdump and through mitmdump with esrs-fix: req/s, p50/p99, CPU per request.

Keep-alive, absolute-form requests at concurrency 1 and 32; rounds alternate AB, BA, ...; every answer is checked
(a 200 whose body is the request's path).
"""

from __future__ import annotations

from typing import Any

from .common import Outcome, Setup, Wrong, log, order, pct, ratio, summary
from .load import LABEL, echo_body, load

KEYS = ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")


def run(setup: Setup) -> Outcome:
    lab = setup.lab()
    wrong = Wrong()
    data: dict[str, Any] = {}
    for concurrency, count in ((1, 150 if setup.quick else 400), (32, 600 if setup.quick else 2000)):
        urls = [lab.origin_url(f"c{concurrency}-{i}") for i in range(count)]
        runs: dict[str, list[dict[str, float]]] = {"stock": [], "addon": []}
        for name in ("stock", "addon"):
            load(lab.port[name], urls[:50], concurrency)  # warm up
        for r in range(setup.rounds):
            for name in order(r):
                cpu_before = lab.cpu_seconds(name)
                wall, lat, answers = load(lab.port[name], urls, concurrency)
                cpu_us = (lab.cpu_seconds(name) - cpu_before) / len(urls) * 1e6
                wrong.check(len(answers) == len(urls), f"clean {name}: {len(answers)} answers to {len(urls)}")
                for url, status, headers, body in answers:
                    ok = status == 200 and body == echo_body(url) and LABEL not in headers
                    wrong.check(ok, f"clean {name} {url}: {status} {body[:40]!r}")
                runs[name].append(
                    {"rps": len(urls) / wall, "p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3,
                     "cpu_us_per_req": cpu_us}
                )  # fmt: skip
            log(
                f"clean c={concurrency} round {r + 1}/{setup.rounds}: "
                + ", ".join(f"{n} {runs[n][-1]['rps']:.0f} req/s" for n in ("stock", "addon"))
            )
        data[f"c{concurrency}"] = {name: {k: summary([x[k] for x in rs]) for k in KEYS} for name, rs in runs.items()}
        data[f"c{concurrency}"]["raw"] = runs
    data["wrong_answers"] = wrong.count
    return Outcome(data, lines(data), wrong.count, wrong.examples)


def lines(data: dict[str, Any]) -> list[str]:
    rows = [
        "1. clean traffic (median of rounds [min-max]); goal: throughput >= 0.98, p99 <= 1.05; "
        f"wrong answers: {data['wrong_answers']}"
    ]
    for c in ("c1", "c32"):
        s, a = data[c]["stock"], data[c]["addon"]
        for k in KEYS:
            d = 0 if k in ("rps", "cpu_us_per_req") else 2
            rows.append(
                f"   {c:4} {k:14} stock {s[k]['median']:8.{d}f} [{s[k]['min']:.{d}f}-{s[k]['max']:.{d}f}]"
                f"   addon {a[k]['median']:8.{d}f} [{a[k]['min']:.{d}f}-{a[k]['max']:.{d}f}]"
                f"   ratio {ratio(a[k]['median'], s[k]['median'])}"
            )
    return rows
