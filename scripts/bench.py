#!/usr/bin/env python3
"""Benchmarks: what esrs-fix costs on clean traffic, and how fast it answers a stray TLS alert.

    scripts/bench [--rounds N] [--quick] [--out FILE] [--pcap-mb MB] [--skip-pcap] [--only PARTS]

Stock mitmdump and mitmdump with the addon run side by side in one session; every measurement alternates
A and B (AB, BA, AB, ...) over several rounds, and the table gives medians, the spread (min-max of the
rounds) and the ratio addon/stock.  Raw figures go to a JSON file: artifacts/bench-results.json by default (ignored
by git); the figures the README cites are docs/bench-results.json, written only with `--out docs/bench-results.json`.
Nothing here asserts a time: the goals are printed next to the ratios.  Every answer is checked, and a run
that met a wrong answer says so and exits with status 1.

1. clean: requests/s, p50/p99 latency and mitmdump's CPU per request, concurrency 1 and 32; cProfile's share
   of esrs-fix's own functions;
2. answer: time to answer a stray alert (upstream closes / keeps its connection open) vs a normal 200;
3. mixed: 500 requests at concurrency 64, half meeting a stray alert;
4. micro: a clean response head through a real Http1Client, stock and with the installed read_headers wrapper;
   the addon's hooks per clean flow; the decoder against dpkt (and scapy, where installed);
5. pcap: `esrs-fix pcap`, tshark with a display filter, and a bare dpkt read loop on one generated capture;
6. upgrade (esrs_upgrade): the first upgraded request against stock https:// plus a plaintext round trip; learned
   requests against stock https:// as mitmdump's CPU per request (rounds paired), fresh and keep-alive; 64 requests
   to one new slow or far target (what the server saw, counted at the server); a mixed load, mitmdump's memory over
   many requests, and the learned-targets bound.

The parts live in scripts/benchparts/ (one module each; see its __init__).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for scripts.benchparts

from scripts.benchparts.main import main

if __name__ == "__main__":
    sys.exit(main(doc=__doc__ or ""))
