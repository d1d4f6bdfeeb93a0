"""The bench's options, the order its parts run in, the table, the JSON file and the exit status."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mitmproxy import version as mitmproxy_version

from . import answer, clean, cpuprofile, instructions, micro, mixed, pcap, upgrade
from .common import ROOT, Outcome, Setup

#: (--only name, JSON key, part), in the order they run. The parts that use the lab come first: it forks its
#: peers before any part starts a thread.
PARTS: list[tuple[str, str, Callable[[Setup], Outcome]]] = [
    ("clean", "clean_overhead", clean.run),
    ("clean", "profile", cpuprofile.run),
    ("answer", "time_to_answer", answer.run),
    ("mixed", "mixed", mixed.run),
    ("upgrade", "upgrade", upgrade.run),  # its own peers (spawned) and mitmdumps
    ("instructions", "instructions", instructions.run),  # the same, under callgrind
    ("micro", "micro", micro.run),
    ("pcap", "pcap", pcap.run),
]
NAMES = sorted({name for name, _, _ in PARTS})
#: Where the raw figures go unless --out says otherwise: ignored by git, so that no run (a --quick one least of all)
#: replaces the figures the README cites, docs/bench-results.json, which only an explicit --out writes.
DEFAULT_OUT = ROOT / "artifacts" / "bench-results.json"


def parse(argv: list[str] | None, doc: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="A/B rounds per measurement (default 7; --quick: 3)")
    parser.add_argument("--quick", action="store_true", help="fewer requests and rounds (a smoke run)")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="raw figures (JSON; default %(default)s; the README cites docs/bench-results.json: name it to replace it)",
    )
    parser.add_argument("--pcap-mb", type=int, help="size of the generated capture (default 200; --quick: 50)")
    parser.add_argument("--skip-pcap", action="store_true")
    parser.add_argument("--only", default="", help=f"comma-separated parts: {','.join(NAMES)}")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = min(args.rounds, 3)
    if args.pcap_mb is None:
        args.pcap_mb = 50 if args.quick else 200
    unknown = set(args.only.split(",")) - set(NAMES) if args.only else set()
    if unknown:
        parser.error(f"--only: no part named {', '.join(sorted(unknown))} (parts: {', '.join(NAMES)})")
    return args


def main(argv: list[str] | None = None, doc: str = "") -> int:
    args = parse(argv, doc)
    chosen = set(args.only.split(",")) if args.only else set(NAMES)
    if args.skip_pcap:
        chosen.discard("pcap")
    results: dict[str, Any] = {
        "machine": (
            f"mitmproxy {mitmproxy_version.VERSION}, Python {platform.python_version()}, {platform.machine()}, "
            f"{os.cpu_count()} cores, {platform.platform(terse=True)}"
        ),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["scripts/bench", *(sys.argv[1:] if argv is None else argv)]),
        "quick": args.quick,
        "rounds": args.rounds,
    }
    rows = ["", f"esrs-fix benchmarks: {results['machine']}"]
    wrong: dict[str, int] = {}
    examples: list[str] = []
    with tempfile.TemporaryDirectory(prefix="esrs-bench-") as tmp:
        setup = Setup(Path(tmp), args.rounds, args.quick, args.pcap_mb)
        try:
            for name, key, part in PARTS:
                if name in chosen:
                    outcome = part(setup)
                    results[key] = outcome.data
                    wrong[key] = outcome.wrong
                    examples += outcome.wrong_examples
                    rows += ([""] if key != "profile" else []) + outcome.lines
        finally:
            setup.stop()
    results["wrong_answers"] = {"total": sum(wrong.values()), **wrong}
    results["wrong_examples"] = examples[:10]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(rows))
    print(f"\nwrong answers: {sum(wrong.values())} ({', '.join(f'{k} {v}' for k, v in wrong.items())})")
    print(f"raw figures: {args.out}")
    if sum(wrong.values()):
        print(
            f"esrs-fix bench: {sum(wrong.values())} wrong answers; the figures above measured something other than "
            "correct behaviour. First ones:\n  " + "\n  ".join(examples[:10]),
            file=sys.stderr,
        )
        return 1
    return 0
