"""5. `esrs-fix pcap` on a generated capture, against tshark with a display filter and a bare dpkt read loop.

All three read the same file, one after another, each in a subprocess of its own: seconds, MB/s, peak RSS
(wait4's ru_maxrss) and what each found. The bare loop (`dpkt.pcap.Reader` plus `dpkt.ethernet.Ethernet` per
frame, nothing else) is the floor for a reader built on dpkt: the goal is ours/bare <= 1.2 in seconds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from stray_tls.lab import servers

from .common import ROOT, Outcome, Setup, Wrong, log

ALERT = servers.ALERT_TLS10
DISPLAY_FILTER = "tcp.srcport == 8080 && tcp.payload[0:3] == 15:03:01"
#: Runs a reader and writes its exit status, peak RSS (KiB) and seconds. A child's ru_maxrss counts what it held
#: before exec, which for a child of the bench is the bench's own RSS: a child of this small process holds little.
SPAWNER = """import os, sys, time
started = time.perf_counter()
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - started
with open(sys.argv[1], "w") as f:
    f.write("%d %d %r" % (os.waitstatus_to_exitcode(status), usage.ru_maxrss, seconds))
"""
BARE_LOOP = """import sys, dpkt
with open(sys.argv[1], "rb") as f:
    for ts, buf in dpkt.pcap.Reader(f):
        dpkt.ethernet.Ethernet(buf)
"""


def make_capture(path: Path, mb: int) -> tuple[int, int]:
    """About `mb` MB of keep-alive-free exchanges, one in ten answered by the alert: (exchanges, stray)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # tests/capgen.py is test-only, not installed
    from tests.capgen import Conversation, write_capture

    body = bytes(range(256)) * 256  # 64 KiB
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    req = b"GET https://esrs.example:443/ HTTP/1.1\r\nHost: esrs.example:443\r\n\r\n"
    n = mb * 1024 * 1024 // len(ok) + 1
    convs, stray = [], 0
    for i in range(n):
        answer = ALERT if i % 10 == 0 else ok
        stray += answer is ALERT
        client = (f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 40000 + i % 20000)
        convs.append(Conversation(client, ("10.255.0.1", 8080), [(req, answer)], start=1_490_000_000 + i * 0.01))
    write_capture(path, convs)
    return n, stray


def measure(cmd: list[str], size: int, workdir: Path) -> tuple[dict[str, Any], str]:
    """Run one reader through the small spawner: its figures, and its standard output."""
    figures, errors = workdir / "reader.figures", workdir / "reader.err"
    figures.unlink(missing_ok=True)
    with errors.open("w+") as err:
        p = subprocess.run([sys.executable, "-S", "-c", SPAWNER, str(figures), *cmd], stdout=subprocess.PIPE,
                           stderr=err, text=True, check=False)  # fmt: skip
        err.seek(0)
        tail = err.read()[-300:] or None
    if p.returncode != 0 or not figures.exists():
        return {"seconds": None, "mb_s": None, "peak_rss_mb": None, "exit": p.returncode, "stderr": tail}, ""
    exit_code, maxrss_kib, seconds = figures.read_text().split()
    return {
        "seconds": float(seconds),
        "mb_s": size / 1e6 / float(seconds),
        "peak_rss_mb": int(maxrss_kib) / 1024,
        "exit": int(exit_code),
        "stderr": tail,
    }, p.stdout


def _over(a: dict[str, Any], b: dict[str, Any] | None) -> float | None:
    return a["seconds"] / b["seconds"] if b and a["seconds"] and b["seconds"] else None


def one_capture(setup: Setup, mb: int, wrong: Wrong) -> dict[str, Any]:
    path = setup.workdir / f"bench-{mb}.pcap"
    log(f"writing a {mb} MB capture ...")
    exchanges, stray = make_capture(path, mb)
    size = path.stat().st_size
    entry: dict[str, Any] = {"bytes": size, "exchanges": exchanges, "stray": stray}
    try:
        bare, _ = measure([sys.executable, "-c", BARE_LOOP, str(path)], size, setup.workdir)
        wrong.check(bare["exit"] == 0, f"pcap bare loop exited {bare['exit']}: {bare['stderr']}")
        entry["bare_dpkt_loop"] = bare
        esrs_fix = [sys.executable, "-m", "stray_tls.main", "pcap", "--json", str(path)]
        ours, out = measure(esrs_fix, size, setup.workdir)
        found = len(json.loads(out)["exchanges"]) if ours["exit"] == 0 else None
        ours["found"] = found
        wrong.check(found == stray, f"pcap {mb} MB: esrs-fix pcap found {found} of {stray} (exit {ours['exit']})")
        entry["esrs_fix"] = ours
        tshark = shutil.which("tshark")
        if tshark:
            cmd = [tshark, "-n", "-r", str(path), "-Y", DISPLAY_FILTER, "-T", "fields", "-e", "tcp.stream"]
            shark, out = measure(cmd, size, setup.workdir)
            shark["found"] = len({line for line in out.split() if line})
            entry["tshark"] = shark  # tshark's count is shown, not judged: it is the filter's, not ours
    finally:
        path.unlink()
    entry["ours_over_bare"] = _over(ours, bare)
    entry["ours_over_tshark"] = _over(ours, entry.get("tshark"))
    log(
        f"pcap {size / 1e6:.0f} MB: "
        + ", ".join(
            f"{k} {entry[k]['seconds'] or 0:.1f} s" for k in ("bare_dpkt_loop", "esrs_fix", "tshark") if k in entry
        )
    )
    return entry


def run(setup: Setup) -> Outcome:
    wrong = Wrong()
    data: dict[str, Any] = {}
    for mb in sorted({max(20, setup.pcap_mb // 4), setup.pcap_mb}):
        data[f"{mb}MB"] = one_capture(setup, mb, wrong)
    data["tshark"] = shutil.which("tshark") or "absent: install Debian's tshark to compare"
    data["display_filter"] = DISPLAY_FILTER
    data["wrong_answers"] = wrong.count
    return Outcome(data, lines(data), wrong.count, wrong.examples)


def lines(data: dict[str, Any]) -> list[str]:
    rows = [
        "5. pcap readers on one generated capture each (seconds, MB/s, peak RSS, found); goal: ours/bare <= 1.2; "
        f"wrong answers: {data['wrong_answers']}",
        f"   tshark: -Y '{DISPLAY_FILTER}' -T fields -e tcp.stream; bare: dpkt.pcap.Reader + Ethernet per frame",
    ]
    for key, e in data.items():
        if not key.endswith("MB"):
            continue
        rows.append(f"   {e['bytes'] / 1e6:.0f} MB, {e['exchanges']} exchanges, {e['stray']} stray:")
        for name, label in (("esrs_fix", "esrs-fix pcap"), ("tshark", "tshark"), ("bare_dpkt_loop", "bare dpkt loop")):
            if name in e:
                r = e[name]
                found = f"found {r['found']}" if "found" in r else "found -"
                rows.append(
                    f"     {label:15} {r['seconds']:6.2f} s {r['mb_s']:6.1f} MB/s  "
                    f"peak {r['peak_rss_mb']:5.0f} MB  {found}"
                    if r["seconds"]
                    else f"     {label:15} failed (exit {r['exit']}): {r['stderr']}"
                )
        shown = [f"{k} {e[f'ours_over_{k}']:.2f}" for k in ("bare", "tshark") if e[f"ours_over_{k}"] is not None]
        rows.append("     ratio in seconds: " + ", ".join(f"ours/{x}" for x in shown))
    if str(data["tshark"]).startswith("absent"):
        rows.append(f"   tshark: {data['tshark']}")
    return rows
