"""1b. Where the CPU goes under clean load: esrs-fix's own functions against all of mitmdump (cProfile)."""

from __future__ import annotations

import pstats
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from stray_tls.lab import servers
from stray_tls.launch import mitmproxy_command

from .common import Outcome, Setup, Wrong, log
from .load import echo_body, load


def run(setup: Setup) -> Outcome:
    lab = setup.lab()
    wrong = Wrong()
    port = servers.free_port()
    prof = setup.workdir / "addon.prof"
    cmd = [*mitmproxy_command(profile_to=prof), "-p", str(port), "--set", "flow_detail=0",
           "--set", "esrs_rewrite=true", "--set", "esrs_filter=~d nowhere.example"]  # fmt: skip
    count = 1000 if setup.quick else 3000
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                load(port, [lab.origin_url("ready")], 1)
                break
            except OSError:
                time.sleep(0.2)
        _, _, answers = load(port, [lab.origin_url(f"p{i}") for i in range(count)], 32)
        for url, status, _, body in answers:
            wrong.check(status == 200 and body == echo_body(url), f"profile {url}: {status}")
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    stats: Any = pstats.Stats(str(prof))
    ours = {k: v for k, v in stats.stats.items() if "stray_tls" in k[0] or "esrs_fix" in k[0]}
    own = sum(v[2] for v in ours.values())
    total = stats.total_tt
    top = sorted(ours.items(), key=lambda kv: -kv[1][2])[:5]
    data = {
        "requests": count,
        "total_cpu_s": total,
        "esrs_fix_own_s": own,
        "esrs_fix_share": own / total,
        "top": [
            {"function": f"{k[2]} ({Path(k[0]).name}:{k[1]})", "tottime_ms": v[2] * 1e3, "calls": v[1]} for k, v in top
        ],
        "wrong_answers": wrong.count,
    }
    log(f"profile: esrs-fix's own functions {own:.3f} s of {total:.2f} s CPU ({own / total:.2%})")
    line = (
        f"   CPU attribution (cProfile, {count} clean requests at c32): esrs-fix's own functions "
        f"{own * 1e3:.0f} ms of {total:.1f} s = {own / total:.2%}"
    )
    return Outcome(data, [line], wrong.count, wrong.examples)
