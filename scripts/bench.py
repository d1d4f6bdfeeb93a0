#!/usr/bin/env python3
"""Benchmarks: what esrs-fix costs on clean traffic, and how fast it answers a stray TLS alert.

    scripts/bench [--rounds N] [--quick] [--out FILE] [--pcap-mb MB] [--skip-pcap]

Stock mitmdump and mitmdump with the addon run side by side in one session; every measurement alternates
A and B (AB, BA, AB, ...) over several rounds, and the table gives medians, the spread (min-max of the
rounds) and the ratio addon/stock.  Raw figures go to a JSON file.  Nothing here asserts a time: the goals
are printed next to the ratios.

1. clean traffic: requests/s and p50/p99 latency, keep-alive, absolute-form requests, concurrency 1 and 32;
2. time to answer a stray alert (upstream closes / keeps its connection open) vs a normal 200 round trip;
3. mixed load: 500 requests at concurrency 64, half meeting a stray alert, every answer checked;
4. the per-response-head check and the decoder, in ns (and dpkt's TLS parser on the same 7 bytes);
5. `esrs-fix pcap` on a generated capture vs `tshark` with a display filter, MB/s and peak memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mitmproxy import version as mitmproxy_version

from stray_tls import records
from stray_tls.lab import servers
from stray_tls.lab.mitm import Mitmdump

ALERT = servers.ALERT_TLS10
NO_ANSWER_WITHIN = 5.0


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- a load generator: asyncio, keep-alive, absolute-form requests through the proxy


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, dict, bytes]:
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def _load(
    proxy: int, urls: list[str], concurrency: int, timeout: float = 30.0
) -> tuple[float, list[float], list[tuple[str, int, dict, bytes]]]:
    """Send every URL once, `concurrency` connections at a time; returns wall time, latencies, answers."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for u in urls:
        queue.put_nowait(u)
    latencies: list[float] = []
    answers: list[tuple[str, int, dict, bytes]] = []

    async def worker() -> None:
        reader = writer = None
        while not queue.empty():
            url = queue.get_nowait()
            host = url.split("/")[2]
            request = f"GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", proxy)
            assert reader is not None
            started = time.perf_counter()
            status, headers, body = await asyncio.wait_for(_one(reader, writer, request), timeout)
            latencies.append(time.perf_counter() - started)
            answers.append((url, status, headers, body))
            if headers.get("connection", "").lower() == "close":
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies, answers


def load(
    proxy: int, urls: list[str], concurrency: int
) -> tuple[float, list[float], list[tuple[str, int, dict, bytes]]]:
    return asyncio.run(_load(proxy, urls, concurrency))


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def echo_answer(head: bytes) -> bytes:
    path = head.split(b" ", 2)[1]
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path)


def _serve(pipe: Any, workdir: str) -> None:
    """The peers, in a process of their own: their threads must not share a GIL with the load generator."""
    cert = servers.make_certificate(Path(workdir))
    started = [
        servers.ScriptedServer(echo_answer).start(),
        servers.EsrsServer(cert).start(),
        servers.EsrsServer(cert, servers.EsrsBehaviour(plaintext=servers.Plaintext.ALERT_KEEP_OPEN)).start(),
    ]
    pipe.send([s.port for s in started])
    pipe.recv()  # until the bench says stop
    for s in started:
        s.stop()


class Bench:
    def __init__(self, workdir: Path, rounds: int, quick: bool) -> None:
        self.workdir = workdir
        self.rounds = rounds
        self.quick = quick
        self.results: dict[str, Any] = {}
        self.proxies: dict[str, Mitmdump] = {}
        self._peers: Any = None

    def start(self) -> None:
        context = multiprocessing.get_context("fork")  # before this process starts any thread
        self._pipe, child = context.Pipe()
        self._peers = context.Process(target=_serve, args=(child, str(self.workdir)), daemon=True)
        self._peers.start()
        if not self._pipe.poll(30):
            raise RuntimeError("the bench's servers did not start")
        self.origin, self.closing, self.keeping = self._pipe.recv()
        stray_filter = f"~u :({self.closing}|{self.keeping})/"
        self.proxies = {
            "stock": Mitmdump(
                ["-p", str(servers.free_port()), "--set", "flow_detail=0"], self.workdir / "stock.log", addon=False
            ),
            "addon": Mitmdump(
                [
                    "-p",
                    str(servers.free_port()),
                    "--set",
                    "flow_detail=0",
                    "--set",
                    "esrs_rewrite=true",
                    "--set",
                    f"esrs_filter={stray_filter}",
                ],
                self.workdir / "addon.log",
            ),
        }
        for m in self.proxies.values():
            m.start()
        self.port = {name: int(m.args[m.args.index("-p") + 1]) for name, m in self.proxies.items()}

    def stop(self) -> None:
        """Stop whatever start() got to start (each by its own process id), also after a failed start."""
        for m in self.proxies.values():
            m.stop()
        if self._peers is not None:
            self._pipe.send("stop")
            self._peers.join(timeout=10)

    def cpu_seconds(self, name: str) -> float:
        """User + system CPU seconds of one mitmdump so far (/proc): less sensitive to a noisy host than wall time."""
        process = self.proxies[name].process
        assert process is not None
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def order(self, n: int) -> list[str]:
        return ["stock", "addon"] if n % 2 == 0 else ["addon", "stock"]

    # 1
    def clean_overhead(self) -> None:
        out: dict[str, Any] = {}
        for concurrency, count in ((1, 150 if self.quick else 400), (32, 600 if self.quick else 2000)):
            urls = [f"http://127.0.0.1:{self.origin}/c{concurrency}-{i}" for i in range(count)]
            runs: dict[str, list[dict[str, float]]] = {"stock": [], "addon": []}
            load(self.port["stock"], urls[:50], concurrency)  # warm both up
            load(self.port["addon"], urls[:50], concurrency)
            for r in range(self.rounds):
                for name in self.order(r):
                    cpu_before = self.cpu_seconds(name)
                    wall, lat, answers = load(self.port[name], urls, concurrency)
                    cpu_us = (self.cpu_seconds(name) - cpu_before) / len(urls) * 1e6
                    assert all(
                        s == 200 and b == u.split("/", 3)[3].encode().join([b"/", b""]) for u, s, _, b in answers
                    )
                    runs[name].append(
                        {
                            "rps": len(urls) / wall,
                            "p50_ms": pct(lat, 50) * 1e3,
                            "p99_ms": pct(lat, 99) * 1e3,
                            "cpu_us_per_req": cpu_us,
                        }
                    )
                log(
                    f"clean c={concurrency} round {r + 1}/{self.rounds}: "
                    + ", ".join(f"{n} {runs[n][-1]['rps']:.0f} req/s" for n in ("stock", "addon"))
                )
            out[f"c{concurrency}"] = {
                name: {k: summary([x[k] for x in rs]) for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")}
                for name, rs in runs.items()
            }
            out[f"c{concurrency}"]["raw"] = runs
        self.results["clean_overhead"] = out

    # 2
    def time_to_answer(self) -> None:
        samples = 8 if self.quick else 30

        async def one(proxy: int, url: str) -> float | None:
            started = time.perf_counter()
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", proxy)
                _status, _headers, _body = await asyncio.wait_for(
                    _one(reader, writer, f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode()), NO_ANSWER_WITHIN
                )
                writer.close()
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return None
            return time.perf_counter() - started

        cases = {
            "normal_200": f"http://127.0.0.1:{self.origin}/normal",
            "stray_closing": f"http://127.0.0.1:{self.closing}/",
            "stray_open": f"http://127.0.0.1:{self.keeping}/",
        }
        # Interleaved sample by sample (normal, closing, open, normal, ...), so that the host's drift hits all alike.
        times: dict[str, list[float | None]] = {f"{n}_{c}": [] for n in ("stock", "addon") for c in cases}
        for i in range(samples):
            for case, url in cases.items():
                for name in self.order(i):
                    if case == "stray_open" and name == "stock" and i >= 2:
                        continue  # stock never answers it: two samples of 5 s say so
                    times[f"{name}_{case}"].append(asyncio.run(one(self.port[name], url)))
        out: dict[str, Any] = {}
        for key, measured in times.items():
            answered = [t * 1e3 for t in measured if t is not None]
            out[key] = {
                "samples": len(measured),
                "answered": len(answered),
                "ms": summary(answered) if answered else None,
            }
            shown = (
                f"{statistics.median(answered):.1f} ms" if answered else f"no answer within {NO_ANSWER_WITHIN:.0f} s"
            )
            log(f"time to answer, {key}: {shown}")
        self.results["time_to_answer"] = out

    # 3
    def mixed(self) -> None:
        count = 200 if self.quick else 500
        urls = []
        for i in range(count):
            if i % 2 == 0:
                urls.append(f"http://127.0.0.1:{self.origin}/m{i}")
            else:
                stray = self.closing if i % 4 == 1 else self.keeping
                urls.append(f"http://127.0.0.1:{stray}/m{i}")
        clean_only = [f"http://127.0.0.1:{self.origin}/a{i}" for i in range(count)]
        rounds: dict[str, list[float]] = {"mixed_clean_p99_ms": [], "all_clean_p99_ms": []}
        wrong = 0
        for r in range(max(3, self.rounds // 2)):
            for kind in ["mixed", "clean"] if r % 2 == 0 else ["clean", "mixed"]:
                if kind == "mixed":
                    _, lat, answers = load(self.port["addon"], urls, 64)
                    clean_lat = []
                    for (url, status, headers, body), latency in zip(answers, lat, strict=True):
                        if f":{self.origin}/" in url:
                            ok = (
                                status == 200
                                and body == ("/" + url.split("/", 3)[3]).encode()
                                and "x-esrs-fix" not in headers
                            )
                            clean_lat.append(latency)
                        else:
                            ok = status == 200 and headers.get("x-esrs-fix", "").startswith("synthetic 200; TLS alert")
                        wrong += not ok
                    rounds["mixed_clean_p99_ms"].append(pct(clean_lat, 99) * 1e3)
                else:
                    _, lat, answers = load(self.port["addon"], clean_only, 64)
                    wrong += sum(status != 200 for _, status, _, _ in answers)
                    rounds["all_clean_p99_ms"].append(pct(lat, 99) * 1e3)
            log(
                f"mixed round {r + 1}: clean p99 {rounds['mixed_clean_p99_ms'][-1]:.1f} ms mixed, "
                f"{rounds['all_clean_p99_ms'][-1]:.1f} ms all clean, wrong answers so far {wrong}"
            )
        # The same mix through stock mitmproxy (closing strays only: stock never answers a kept-open one), to
        # tell the addon's share of the p99 from what stray flows cost any proxy (a new upstream connection each).
        closing_mix = [f"http://127.0.0.1:{self.origin if i % 2 == 0 else self.closing}/k{i}" for i in range(count)]
        versus: dict[str, list[float]] = {"stock": [], "addon": []}
        for r in range(max(3, self.rounds // 2)):
            for name in self.order(r):
                _, lat, answers = load(self.port[name], closing_mix, 64)
                versus[name].append(
                    pct([t for (u, *_), t in zip(answers, lat, strict=True) if f":{self.origin}/" in u], 99) * 1e3
                )
        log(
            f"mixed with closing strays, clean p99: stock {statistics.median(versus['stock']):.1f} ms, "
            f"addon {statistics.median(versus['addon']):.1f} ms"
        )
        self.results["mixed"] = {
            "requests": count,
            "concurrency": 64,
            "wrong_answers": wrong,
            **{k: summary(v) for k, v in rounds.items()},
            "closing_strays_clean_p99_ms": {name: summary(v) for name, v in versus.items()},
            "raw": {**rounds, "closing_strays": versus},
        }

    # 1b
    def profile(self) -> None:
        """Where the CPU goes under clean load: esrs-fix's own functions vs all of mitmdump (cProfile)."""
        import pstats

        from stray_tls.launch import script_path

        port = servers.free_port()
        prof = self.workdir / "addon.prof"
        launcher = self.workdir / "launch.py"
        launcher.write_text("from mitmproxy.tools.main import mitmdump\nmitmdump()\n")
        cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), str(launcher), "--listen-host", "127.0.0.1",
               "-p", str(port), "--set", "flow_detail=0", "-s", str(script_path()),
               "--set", "esrs_rewrite=true", "--set", "esrs_filter=~d nowhere.example"]  # fmt: skip
        process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    load(port, [f"http://127.0.0.1:{self.origin}/ready"], 1)
                    break
                except OSError:
                    time.sleep(0.2)
            count = 1000 if self.quick else 3000
            load(port, [f"http://127.0.0.1:{self.origin}/p{i}" for i in range(count)], 32)
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)
        stats = pstats.Stats(str(prof))
        ours = {k: v for k, v in stats.stats.items() if "stray_tls" in k[0] or "esrs_fix" in k[0]}  # type: ignore[attr-defined]
        own = sum(v[2] for v in ours.values())
        total = stats.total_tt  # type: ignore[attr-defined]
        top = sorted(ours.items(), key=lambda kv: -kv[1][2])[:5]
        self.results["profile"] = {
            "requests": count,
            "total_cpu_s": total,
            "esrs_fix_own_s": own,
            "esrs_fix_share": own / total,
            "top": [
                {"function": f"{k[2]} ({Path(k[0]).name}:{k[1]})", "tottime_ms": v[2] * 1e3, "calls": v[1]}
                for k, v in top
            ],
        }
        log(f"profile: esrs-fix's own functions {own:.3f} s of {total:.2f} s CPU ({own / total:.2%})")

    # 4
    def micro(self) -> None:
        import dpkt

        class Buf:
            def __len__(self) -> int:
                return 512

        class Conn:
            request = object()
            buf = Buf()

        class DataReceived:
            def __init__(self, data: bytes) -> None:
                self.data = data

        head = DataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" + b"x" * 471)
        conn = Conn()
        could = records.could_start_tls

        def hot_path() -> bool:  # the wrapper's test on a clean response head, as in early.py
            if type(head) is DataReceived and conn.request is not None:
                data = head.data
                if len(conn.buf) == len(data):
                    return bool(data) and could(data[0])
            return False

        def ns(fn: Callable[[], object], number: int) -> float:
            return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e9

        from mitmproxy.test import taddons, tflow

        from stray_tls.addon import EsrsFix

        addon = EsrsFix()
        with taddons.context(addon) as tctx:
            tctx.configure(addon, esrs_rewrite=True, esrs_filter="~d esrs.example", esrs_early=False)
            clean = tflow.tflow(resp=True)

            def hooks() -> None:  # what the addon's own hooks do for one clean flow
                addon.responseheaders(clean)
                addon.response(clean)

            hooks_ns = ns(hooks, 50_000)
        addon.done()
        out: dict[str, float | None] = {
            "hot_path_check_ns": ns(hot_path, 200_000),
            "addon_hooks_per_clean_flow_ns": hooks_ns,
            "decode_alert_ns": ns(lambda: records.decode(ALERT), 100_000),
            "describe_alert_ns": ns(lambda: records.describe_all(records.decode(ALERT).records), 50_000),  # type: ignore[union-attr]
            "dpkt_tls_multi_factory_ns": ns(lambda: dpkt.ssl.tls_multi_factory(ALERT), 100_000),
        }
        try:
            from scapy.layers.tls.record import TLS  # type: ignore[import-not-found]

            out["scapy_tls_ns"] = ns(lambda: TLS(ALERT), 2_000)
        except ImportError:
            out["scapy_tls_ns"] = None
        self.results["micro"] = out
        log("micro: " + ", ".join(f"{k} {v:.0f}" if v else f"{k} n/a" for k, v in out.items()))

    # 5
    def pcap(self, megabytes: int) -> None:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/capgen.py is not installed
        from tests.capgen import Conversation, write_capture

        def make(path: Path, mb: int) -> tuple[int, int]:
            body = bytes(range(256)) * 256  # 64 KiB
            ok = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            req = b"GET https://esrs.example:443/ HTTP/1.1\r\nHost: esrs.example:443\r\n\r\n"
            n = mb * 1024 * 1024 // len(ok) + 1
            convs, stray = [], 0
            for i in range(n):
                answer = ALERT if i % 10 == 0 else ok
                stray += answer is ALERT
                client = (f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 40000 + i % 20000)
                convs.append(
                    Conversation(client, ("10.255.0.1", 8080), [(req, answer)], start=1_490_000_000 + i * 0.01)
                )
            write_capture(path, convs)
            return n, stray

        def run(cmd: list[str]) -> tuple[float, int, str]:
            started = time.perf_counter()
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            out = p.stdout.read() if p.stdout else ""
            _, status, usage = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            return time.perf_counter() - started, usage.ru_maxrss, out

        results: dict[str, Any] = {}
        esrs_fix = [sys.executable, "-m", "stray_tls.main", "pcap", "--json"]
        tshark = shutil.which("tshark")
        for mb in sorted({max(20, megabytes // 4), megabytes}):
            path = self.workdir / f"bench-{mb}.pcap"
            log(f"writing a {mb} MB capture ...")
            exchanges, stray = make(path, mb)
            size = path.stat().st_size
            ours_t, ours_rss, out = run([*esrs_fix, str(path)])
            found = json.loads(out)["exchanges"]
            entry: dict[str, Any] = {
                "bytes": size,
                "exchanges": exchanges,
                "stray": stray,
                "esrs_fix": {
                    "seconds": ours_t,
                    "mb_s": size / 1e6 / ours_t,
                    "peak_rss_mb": ours_rss / 1024,
                    "found": len(found),
                },
            }
            log(
                f"esrs-fix pcap {size / 1e6:.0f} MB: {ours_t:.1f} s, {size / 1e6 / ours_t:.1f} MB/s, "
                f"peak {ours_rss / 1024:.0f} MB, found {len(found)} of {stray}"
            )
            if tshark:
                shark_t, shark_rss, shark_out = run(
                    [
                        tshark,
                        "-n",
                        "-r",
                        str(path),
                        "-Y",
                        "tcp.srcport == 8080 && tcp.payload[0:3] == 15:03:01",
                        "-T",
                        "fields",
                        "-e",
                        "tcp.stream",
                    ]
                )
                shark_streams = {line for line in shark_out.split() if line}
                entry["tshark"] = {
                    "seconds": shark_t,
                    "mb_s": size / 1e6 / shark_t,
                    "peak_rss_mb": shark_rss / 1024,
                    "found": len(shark_streams),
                }
                log(
                    f"tshark {size / 1e6:.0f} MB: {shark_t:.1f} s, peak {shark_rss / 1024:.0f} MB, "
                    f"found {len(shark_streams)}"
                )
            results[f"{mb}MB"] = entry
            path.unlink()
        results["tshark"] = tshark or "absent: install Debian's tshark to compare"
        self.results["pcap"] = results


def ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b else "n/a"


def table(res: dict[str, Any]) -> str:
    rows = ["", f"esrs-fix benchmarks: {res['machine']}", ""]
    if "clean_overhead" in res:
        rows.append("1. clean traffic (median of rounds [min-max]); goal: throughput >= 0.98, p99 <= 1.05")
        for c, d in res["clean_overhead"].items():
            s, a = d["stock"], d["addon"]
            rows.append(
                f"   {c:4} req/s    stock {s['rps']['median']:8.0f} [{s['rps']['min']:.0f}-{s['rps']['max']:.0f}]"
                f"   addon {a['rps']['median']:8.0f} [{a['rps']['min']:.0f}-{a['rps']['max']:.0f}]"
                f"   ratio {ratio(a['rps']['median'], s['rps']['median'])}"
            )
            for k in ("p50_ms", "p99_ms", "cpu_us_per_req"):
                rows.append(
                    f"   {c:4} {k:9} stock {s[k]['median']:8.2f} [{s[k]['min']:.2f}-{s[k]['max']:.2f}]"
                    f"   addon {a[k]['median']:8.2f} [{a[k]['min']:.2f}-{a[k]['max']:.2f}]"
                    f"   ratio {ratio(a[k]['median'], s[k]['median'])}"
                )
    if "profile" in res:
        pr = res["profile"]
        rows.append(
            f"   CPU attribution (cProfile, {pr['requests']} clean requests at c32): esrs-fix's own functions "
            f"{pr['esrs_fix_own_s'] * 1e3:.0f} ms of {pr['total_cpu_s']:.1f} s = {pr['esrs_fix_share']:.2%}"
        )
    if "time_to_answer" in res:
        t = res["time_to_answer"]
        rows += [
            "",
            "2. time to answer (median ms over fresh connections); goal: addon's stray answer <= 1.2x normal 200",
        ]
        for case in ("normal_200", "stray_closing", "stray_open"):
            cells = []
            for name in ("stock", "addon"):
                e = t[f"{name}_{case}"]
                cells.append(
                    f"{name} {e['ms']['median']:7.2f}"
                    if e["ms"]
                    else f"{name} no answer within {NO_ANSWER_WITHIN:.0f} s"
                )
            rows.append(f"   {case:14} " + "   ".join(cells))
        normal = t["addon_normal_200"]["ms"]["median"]
        for case in ("stray_closing", "stray_open"):
            e = t[f"addon_{case}"]["ms"]
            rows.append(f"   addon {case} / addon normal_200: {ratio(e['median'], normal) if e else 'n/a'}")
    if "mixed" in res:
        m = res["mixed"]
        rows += [
            "",
            f"3. mixed load: {m['requests']} requests at concurrency 64, half stray; "
            f"wrong answers: {m['wrong_answers']}",
            f"   clean p99 mixed {m['mixed_clean_p99_ms']['median']:.1f} ms "
            f"vs all clean {m['all_clean_p99_ms']['median']:.1f} ms:"
            f" ratio {ratio(m['mixed_clean_p99_ms']['median'], m['all_clean_p99_ms']['median'])} (goal <= 1.1)",
        ]
        cs = m["closing_strays_clean_p99_ms"]
        rows.append(
            f"   same mix with closing strays through stock and addon, clean p99: stock {cs['stock']['median']:.1f} ms,"
            f" addon {cs['addon']['median']:.1f} ms: "
            f"ratio addon/stock {ratio(cs['addon']['median'], cs['stock']['median'])}"
        )
    if "micro" in res:
        u = res["micro"]
        rows += ["", "4. per call (ns, best of 7)"]
        rows += [f"   {k:28} {v:10.0f}" if v else f"   {k:28} {'n/a':>10}" for k, v in u.items()]
        rows.append(f"   decode / dpkt: {ratio(u['decode_alert_ns'], u['dpkt_tls_multi_factory_ns'])}")
    if "pcap" in res:
        rows += ["", "5. esrs-fix pcap vs tshark (display filter tcp.srcport == 8080 && tcp.payload[0:3] == 15:03:01)"]
        for key, e in res["pcap"].items():
            if key == "tshark":
                continue
            o = e["esrs_fix"]
            line = (
                f"   {key:6} esrs-fix {o['mb_s']:6.1f} MB/s peak {o['peak_rss_mb']:5.0f} MB "
                f"found {o['found']}/{e['stray']}"
            )
            if "tshark" in e:
                s = e["tshark"]
                line += f"   tshark {s['mb_s']:6.1f} MB/s peak {s['peak_rss_mb']:5.0f} MB found {s['found']}"
                line += f"   speed ratio {ratio(o['mb_s'], s['mb_s'])}"
            rows.append(line)
        if isinstance(res["pcap"].get("tshark"), str) and res["pcap"]["tshark"].startswith("absent"):
            rows.append(f"   tshark: {res['pcap']['tshark']}")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="A/B rounds per measurement (default 7)")
    parser.add_argument("--quick", action="store_true", help="fewer requests and rounds (a smoke run)")
    parser.add_argument("--out", type=Path, default=Path("bench-results.json"), help="raw figures (JSON)")
    parser.add_argument("--pcap-mb", type=int, default=200, help="size of the generated capture (default 200)")
    parser.add_argument("--skip-pcap", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated parts: clean,answer,mixed,micro,pcap")
    args = parser.parse_args()
    if args.quick:
        args.rounds = min(args.rounds, 3)
    parts = set(args.only.split(",")) if args.only else {"clean", "answer", "mixed", "micro", "pcap"}
    machine = (
        f"mitmproxy {mitmproxy_version.VERSION}, Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} cores, {platform.platform(terse=True)}"
    )
    with tempfile.TemporaryDirectory(prefix="esrs-bench-") as tmp:
        bench = Bench(Path(tmp), args.rounds, args.quick)
        bench.results["machine"] = machine
        bench.results["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            if parts & {"clean", "answer", "mixed"}:
                bench.start()  # inside the try: a proxy that fails to start must not leak the one started before
            if "clean" in parts:
                bench.clean_overhead()
                bench.profile()
            if "answer" in parts:
                bench.time_to_answer()
            if "mixed" in parts:
                bench.mixed()
        finally:
            bench.stop()
        if "micro" in parts:
            bench.micro()
        if "pcap" in parts and not args.skip_pcap:
            bench.pcap(args.pcap_mb)
    args.out.write_text(json.dumps(bench.results, indent=2))
    print(table(bench.results))
    print(f"\nraw figures: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
