"""7. What a learned request costs in CPU work, counted in instructions: stock mitmdump's https:// request against
esrs-fix's learned http:// one, each mitmdump under valgrind's callgrind; and the first, upgraded request against
what stock spends on the same two requests (the plaintext one and the https:// one).

CPU seconds from /proc cannot resolve a few percent on a shared host: the same learned request measured 1.04 to 1.28
of stock between runs of the same code (docs/benchmarks.md). callgrind counts the instructions a process runs, which
another process on the machine cannot change: the same batch through the same mitmdump counts within about 1 % run
after run (PYTHONHASHSEED fixed). Each mitmdump starts with instrumentation off (valgrind then runs it at a few times
its speed), gets a warm batch, and counts one batch per round: `callgrind_control` switches counting on and zeroes
the counters before the batch, dumps them after it. The two proxies alternate, as in the CPU-seconds rounds.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from stray_tls.lab import servers
from stray_tls.lab.mitm import Mitmdump

from .common import Outcome, Setup, Wrong, log, order
from .upgrade import _batch
from .upgradesetup import LEARNED_GOAL, Peers, Proxy, check, fresh, target, verdict

#: Requests in a counted batch: instructions do not need many (each batch is counted exactly), valgrind is slow.
SIZES = {"fresh": 40, "keepalive": 100}
QUICK_SIZES = {"fresh": 5, "keepalive": 10}


def available() -> str:
    """ "" when callgrind can run here, else why not."""
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: valgrind)"
    return ""


def start(workdir: Path, peers: Peers, name: str, *, addon: bool) -> Proxy:
    """A mitmdump under callgrind, counting nothing until `counted` asks."""
    port = servers.free_port()
    args = ["-p", str(port), "--set", "flow_detail=0", "--set", f"ssl_verify_upstream_trusted_ca={peers.cert}"]
    if addon:
        args += ["--set", "esrs_upgrade=true"]
    prefix = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={workdir}/cg.{name}.%p"]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    m = Mitmdump(args, workdir / f"instructions-{name}.log", addon=addon, prefix=prefix, env=env, startup_timeout=300)
    m.start()
    return Proxy(m, port)


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=120)


def counted(proxy: Proxy, workdir: Path, name: str, run: Any) -> int:
    """Instructions `proxy`'s mitmdump ran while `run()` ran (and the moment after it: its connections' ends)."""
    _control(proxy.pid, "--instr=on")
    _control(proxy.pid, "--zero")
    run()
    time.sleep(0.3)
    before = set(workdir.glob(f"cg.{name}.{proxy.pid}.*"))
    _control(proxy.pid, "--dump")
    _control(proxy.pid, "--instr=off")
    (dump,) = set(workdir.glob(f"cg.{name}.{proxy.pid}.*")) - before
    for line in dump.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no total in {dump}")


def case(setup: Setup, peers: Peers, wrong: Wrong, kind: str) -> dict[str, Any]:
    keep_alive = kind == "keepalive"
    n = (QUICK_SIZES if setup.quick else SIZES)[kind]
    port = peers.keep if keep_alive else peers.pool[-1]
    proxies = {
        "stock": start(setup.workdir, peers, f"{kind}-stock", addon=False),
        "addon": start(setup.workdir, peers, f"{kind}-addon", addon=True),
    }
    try:
        _, got = asyncio.run(fresh(proxies["addon"].port, target(port)))
        check(wrong, "learning (instructions)", got, "upgraded", target(port))
        how = {"stock": ("stock", "https"), "addon": ("learned", "http")}
        for name, proxy in proxies.items():  # warm: imports, caches, the upstream connection
            asyncio.run(_batch(proxy, target(port, "", how[name][1]), n, how[name][0], keep_alive, wrong))
        counts: dict[str, list[float]] = {"stock": [], "addon": []}
        for r in range(1 if setup.quick else 2):
            for name in order(r):
                proxy, (expect, scheme) = proxies[name], how[name]

                def batch(proxy: Proxy = proxy, expect: str = expect, scheme: str = scheme) -> None:
                    asyncio.run(_batch(proxy, target(port, "", scheme), n, expect, keep_alive, wrong))

                counts[name].append(counted(proxy, setup.workdir, f"{kind}-{name}", batch) / n)
    finally:
        for proxy in proxies.values():
            proxy.mitmdump.stop(timeout=120)
    ratios = [a / s for a, s in zip(counts["addon"], counts["stock"], strict=True)]
    ratio = max(ratios)  # the worse round: the goal must hold for each
    result = {
        "requests_per_batch": n,
        "instructions_per_request": counts,
        "ratio_per_round": ratios,
        "ratio": ratio,
        "goal_met": ratio <= LEARNED_GOAL,
    }
    log(
        f"instructions, learned vs stock https ({kind}): {counts['addon'][-1]:,.0f} vs {counts['stock'][-1]:,.0f} "
        f"per request: ratio {ratio:.3f} {verdict(ratio, LEARNED_GOAL)} (goal <= {LEARNED_GOAL})"
    )
    return result


def first(setup: Setup, peers: Peers, wrong: Wrong) -> dict[str, Any]:
    """The first request to a new target: esrs-fix's upgrade (the plaintext request, its alert, the TLS attempt)
    against what stock mitmdump spends on the same two requests: the https:// one, and the plaintext one any proxy
    chain makes first (stock answers it with its own 502). Each request goes to a target not seen before."""
    n = 5 if setup.quick else 20
    pool = iter(peers.pool[:-1])  # not the last: the fresh case learned it, and a first request must find it new
    proxies = {
        "stock": start(setup.workdir, peers, "first-stock", addon=False),
        "addon": start(setup.workdir, peers, "first-addon", addon=True),
    }
    legs = {  # leg: (proxy, scheme, what a right answer is)
        "stock_https": ("stock", "https", "stock"),
        "stock_plaintext": ("stock", "http", "502"),
        "addon_upgraded": ("addon", "http", "upgraded"),
    }

    def batch(scheme: str, expect: str, port: int, count: int) -> None:
        for _ in range(count):
            url = target(next(pool), "first", scheme)
            _, got = asyncio.run(fresh(port, url))
            if expect == "502":  # stock's own answer to the alert
                wrong.check(got[0] == 502, f"stock plaintext request {url}: {got[0]}")
            else:
                check(wrong, f"first request (instructions, {expect})", got, expect, url)

    try:
        for name, scheme, expect in legs.values():  # warm: imports, caches, one of each
            batch(scheme, expect, proxies[name].port, 2)
        per: dict[str, float] = {}
        for leg, (name, scheme, expect) in legs.items():
            proxy = proxies[name]
            count = functools.partial(batch, scheme, expect, proxy.port, n)
            per[leg] = counted(proxy, setup.workdir, f"first-{name}", count) / n
    finally:
        for proxy in proxies.values():
            proxy.mitmdump.stop(timeout=120)
    both = per["stock_https"] + per["stock_plaintext"]
    result = {
        "requests": n,
        "instructions_per_request": per,
        "ratio_to_stock_https": per["addon_upgraded"] / per["stock_https"],
        "ratio": per["addon_upgraded"] / both,
    }
    log(
        f"instructions, first request: esrs-fix {per['addon_upgraded']:,.0f}, stock https {per['stock_https']:,.0f} "
        f"+ stock plaintext {per['stock_plaintext']:,.0f}: ratio {result['ratio']:.3f}"
    )
    return result


def run(setup: Setup) -> Outcome:
    wrong = Wrong()
    missing = available()
    if missing:
        log(f"instructions: skipped: {missing}")
        return Outcome({"skipped": missing}, [f"7. instructions per learned request: not measured ({missing})"])
    peers = Peers.start(setup.workdir, 25 if setup.quick else 70)  # a new target for each first request
    try:
        data: dict[str, Any] = {kind: case(setup, peers, wrong, kind) for kind in ("keepalive", "fresh")}
        data["first"] = first(setup, peers, wrong)
    finally:
        peers.stop()
    data["wrong_answers"] = wrong.count
    data["how"] = (
        "instructions per request of each mitmdump process (valgrind --tool=callgrind, counted over one batch per "
        "round after a warm batch, PYTHONHASHSEED=0); ratio: esrs-fix's learned http:// / stock's https://, the "
        "worse of the rounds"
    )
    return Outcome(data, lines(data), wrong.count, wrong.examples)


def lines(data: dict[str, Any]) -> list[str]:
    rows = [
        "7. learned requests in instructions per request (callgrind), esrs-fix http:// vs stock https://, "
        f"each round's batch counted; wrong answers: {data['wrong_answers']}"
    ]
    for kind, what in (("keepalive", "keep-alive"), ("fresh", "fresh connection per request")):
        c = data[kind]
        per = c["instructions_per_request"]
        rows.append(
            f"   {what} ({c['requests_per_batch']} per batch): "
            + ", ".join(f"{a:,.0f} vs {s:,.0f}" for a, s in zip(per["addon"], per["stock"], strict=True))
            + f": ratio {c['ratio']:.3f} {verdict(c['ratio'], LEARNED_GOAL)} (goal <= {LEARNED_GOAL}; "
            + ", ".join(f"{r:.3f}" for r in c["ratio_per_round"])
            + ")"
        )
    f = data["first"]
    per = f["instructions_per_request"]
    rows.append(
        f"   first request to a new target, upgraded ({f['requests']}, a new target each): "
        f"{per['addon_upgraded']:,.0f} vs stock's https:// {per['stock_https']:,.0f} + stock's plaintext request to "
        f"the TLS port {per['stock_plaintext']:,.0f}: ratio {f['ratio']:.3f} (to https:// alone "
        f"{f['ratio_to_stock_https']:.3f})"
    )
    return rows
