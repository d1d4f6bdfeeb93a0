"""2. Time to answer a stray alert (upstream closes / keeps its connection open) against a normal 200 round trip.

Fresh connection per sample, interleaved sample by sample (normal, closing, open; AB, BA, ...). The addon's stray
answers must be its labelled 200; stock's are recorded (its own 502, or none within the wait), not judged.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from .common import Outcome, Setup, Wrong, log, order, ratio, summary
from .load import LABEL, echo_body, exchange, request_for

NO_ANSWER_WITHIN = 5.0
CASES = ("normal_200", "stray_closing", "stray_open")


async def _one(proxy: int, url: str) -> tuple[float, int, dict[str, str], bytes] | None:
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy)
        status, headers, body = await asyncio.wait_for(exchange(reader, writer, request_for(url)), NO_ANSWER_WITHIN)
        writer.close()
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        return None
    return time.perf_counter() - started, status, headers, body


def run(setup: Setup) -> Outcome:
    lab = setup.lab()
    wrong = Wrong()
    samples = 8 if setup.quick else 30
    urls = {
        "normal_200": lab.origin_url("normal"),
        "stray_closing": f"http://127.0.0.1:{lab.closing}/",
        "stray_open": f"http://127.0.0.1:{lab.keeping}/",
    }
    times: dict[str, list[float | None]] = {f"{n}_{c}": [] for n in ("stock", "addon") for c in CASES}
    statuses: dict[str, list[int | None]] = {key: [] for key in times}
    for i in range(samples):
        for case, url in urls.items():
            for name in order(i):
                if case == "stray_open" and name == "stock" and i >= 2:
                    continue  # stock never answers it: two samples of 5 s say so
                got = asyncio.run(_one(lab.port[name], url))
                times[f"{name}_{case}"].append(got[0] if got else None)
                statuses[f"{name}_{case}"].append(got[1] if got else None)
                if case == "normal_200":
                    wrong.check(got is not None and got[1] == 200 and got[3] == echo_body(url), f"{name} normal 200")
                elif name == "addon":
                    label = got[2].get(LABEL, "") if got else ""
                    ok = got is not None and got[1] == 200 and label.startswith("synthetic 200; TLS alert")
                    wrong.check(ok, f"addon {case}: {'no answer' if got is None else got[1]} {label!r}")
    data: dict[str, Any] = {}
    for key, measured in times.items():
        answered = [t * 1e3 for t in measured if t is not None]
        data[key] = {
            "samples": len(measured),
            "answered": len(answered),
            "statuses": sorted({s for s in statuses[key] if s is not None}),
            "ms": summary(answered) if answered else None,
        }
        shown = f"{statistics.median(answered):.1f} ms" if answered else f"no answer within {NO_ANSWER_WITHIN:.0f} s"
        log(f"time to answer, {key}: {shown}")
    data["wrong_answers"] = wrong.count
    return Outcome(data, lines(data), wrong.count, wrong.examples)


def lines(data: dict[str, Any]) -> list[str]:
    rows = [
        "2. time to answer (median ms [min-max] over fresh connections); goal: the addon's stray answer <= 1.2x "
        f"its normal 200; wrong answers: {data['wrong_answers']}"
    ]
    for case in CASES:
        cells = []
        for name in ("stock", "addon"):
            e = data[f"{name}_{case}"]
            ms = e["ms"]
            status = "/".join(map(str, e["statuses"])) or "-"
            cells.append(
                f"{name} {ms['median']:7.2f} [{ms['min']:.1f}-{ms['max']:.1f}] "
                f"({status}, {e['answered']}/{e['samples']})"
                if ms
                else f"{name} no answer within {NO_ANSWER_WITHIN:.0f} s ({e['samples']} samples)"
            )
        rows.append(f"   {case:14} " + "   ".join(cells))
    normal = data["addon_normal_200"]["ms"]
    for case in ("stray_closing", "stray_open"):
        e = data[f"addon_{case}"]["ms"]
        shown = ratio(e["median"], normal["median"]) if e and normal else "n/a"
        rows.append(f"   addon {case} / addon normal_200: {shown}")
    return rows
