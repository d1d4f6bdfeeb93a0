"""4. Per call, in ns: the real read_headers wrapper on a clean head, the addon's hooks, the decoder against dpkt.

The wrapper is timed as it runs in mitmproxy: `compat.EarlyDetection` installed (and removed afterwards) around a
real `Http1Client`, driven by `compat.Http1ClientDriver` on one keep-alive connection (a request, then a clean
response head and body, over and over; each answer checked). Stock and wrapped alternate in short batches
(AB, BA, ...), and the difference is the median of the per-batch differences, with its quartiles.
"""

from __future__ import annotations

import gc
import statistics
import time
import timeit
from collections.abc import Callable
from typing import Any

from stray_tls import compat
from stray_tls.core import records
from stray_tls.lab import servers

from .common import Outcome, Setup, Wrong, log, order, ratio

ALERT = servers.ALERT_TLS10
CLEAN_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
CLEAN_SAID = [("response", 200), ("data", b"hello"), ("end",)]


def best_ns(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e9


def _batch(driver: compat.Http1ClientDriver, calls: int, wrong: Wrong, mode: str) -> float:
    """Median ns of `driver.receive(CLEAN_HEAD)` over `calls` requests on one connection (the request untimed).

    One exchange first, untimed: the layer binds its next state (read_headers) when a response ends, so the
    first exchange after an install or uninstall still runs the previous one.
    """
    wrapped = getattr(type(driver.layer).read_headers, "__esrs_fix__", False)
    wrong.check(wrapped == (mode == "addon"), f"micro {mode}: read_headers is {'' if wrapped else 'not '}wrapped")
    driver.request()
    driver.receive(CLEAN_HEAD)
    took = []
    for _ in range(calls):
        driver.request()
        started = time.perf_counter_ns()
        said = driver.receive(CLEAN_HEAD)
        took.append(time.perf_counter_ns() - started)
        wrong.check(said == CLEAN_SAID, f"micro {mode}: a clean head gave {said}")
    return statistics.median(took)


def wrapper_cost(setup: Setup, wrong: Wrong) -> dict[str, Any]:
    """Per clean response head through a real Http1Client: stock read_headers, the installed wrapper, the difference."""
    rounds, calls = (20, 200) if setup.quick else (40, 300)
    early = compat.EarlyDetection(on_records=lambda req, head, complete: None, error_answer=lambda req: None)
    driver = compat.Http1ClientDriver()
    per: dict[str, list[float]] = {"stock": [], "addon": []}
    try:
        for r in range(rounds):
            gc.collect()
            gc.disable()
            try:
                for mode in order(r):
                    if mode == "addon" and not early.install():
                        wrong.check(False, f"micro: early detection did not install ({early.reason})")
                        return {"installed": False, "reason": early.reason}
                    if mode == "stock":
                        early.uninstall()
                    per[mode].append(_batch(driver, calls, wrong, mode))
            finally:
                gc.enable()
    finally:
        early.uninstall()
    diffs = [a - s for s, a in zip(per["stock"], per["addon"], strict=True)]
    quartiles = statistics.quantiles(diffs, n=4)
    return {
        "installed": True,
        "rounds": rounds,
        "calls_per_round": calls,
        "stock_ns": statistics.median(per["stock"]),
        "wrapped_ns": statistics.median(per["addon"]),
        "difference_ns": statistics.median(diffs),
        "difference_quartiles_ns": [quartiles[0], quartiles[2]],
        "raw": per,
    }


def hooks_ns() -> float:
    """What esrs-fix's own hooks do for one clean flow (each addon's responseheaders, then each one's response, in
    their order), early detection off."""
    from mitmproxy.test import taddons, tflow

    from stray_tls.mitm.addon import EsrsFix

    addon = EsrsFix()
    try:
        with taddons.context(addon) as tctx:
            tctx.configure(addon, esrs_rewrite=True, esrs_filter="~d esrs.example", esrs_early=False)
            clean = tflow.tflow(resp=True)
            calls = [getattr(addon, h) for h in ("responseheaders", "response")]  # as mitmproxy calls them

            def hooks() -> None:
                for call in calls:
                    call(clean)

            return best_ns(hooks, 50_000)
    finally:
        addon.unload()


def run(setup: Setup) -> Outcome:
    import dpkt

    wrong = Wrong()
    data: dict[str, Any] = {"read_headers": wrapper_cost(setup, wrong)}
    decoded = records.decode(ALERT)
    wrong.check(isinstance(decoded, records.Records) and not decoded.rest, f"micro: the alert decoded as {decoded}")
    per_call: dict[str, float | None] = {
        "addon_hooks_per_clean_flow_ns": hooks_ns(),
        "decode_alert_ns": best_ns(lambda: records.decode(ALERT), 100_000),
        "describe_alert_ns": best_ns(lambda: records.describe_all(decoded.records), 50_000),  # type: ignore[union-attr]
        "dpkt_tls_multi_factory_ns": best_ns(lambda: dpkt.ssl.tls_multi_factory(ALERT), 100_000),
    }
    try:
        from scapy.layers.tls.record import TLS  # type: ignore[import-not-found]

        per_call["scapy_tls_ns"] = best_ns(lambda: TLS(ALERT), 2_000)
    except ImportError:
        per_call["scapy_tls_ns"] = None
    data.update(per_call)
    data["wrong_answers"] = wrong.count
    log("micro: " + ", ".join(f"{k} {v:.0f}" if v else f"{k} n/a" for k, v in per_call.items()))
    return Outcome(data, lines(data), wrong.count, wrong.examples)


def lines(data: dict[str, Any]) -> list[str]:
    rows = [f"4. per call (ns); wrong answers: {data['wrong_answers']}"]
    rh = data["read_headers"]
    if rh["installed"]:
        lo, hi = rh["difference_quartiles_ns"]
        rows += [
            f"   a clean response head through a real Http1Client ({rh['rounds']} alternating batches of "
            f"{rh['calls_per_round']}, median):",
            f"     stock read_headers {rh['stock_ns']:8.0f}   wrapped {rh['wrapped_ns']:8.0f}   "
            f"difference {rh['difference_ns']:6.0f} [quartiles {lo:.0f} to {hi:.0f}]   "
            f"ratio {ratio(rh['wrapped_ns'], rh['stock_ns'])}",
        ]
    else:
        rows.append(f"   read_headers wrapper: not measured, early detection did not install ({rh['reason']})")
    rows.append("   best of 7:")
    for k in ("addon_hooks_per_clean_flow_ns", "decode_alert_ns", "describe_alert_ns", "dpkt_tls_multi_factory_ns",
              "scapy_tls_ns"):  # fmt: skip
        v = data[k]
        rows.append(f"     {k:30} {v:10.0f}" if v else f"     {k:30} {'n/a (not installed)':>10}")
    rows.append(f"     decode / dpkt: {ratio(data['decode_alert_ns'], data['dpkt_tls_multi_factory_ns'])}")
    return rows
