"""`esrs-fix lab`: run every scenario (the default), or one component alone."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

from ..core import records
from ..core.addresses import argument, parse_hostport, parse_route
from ..fieldkit.extras import install_hint
from . import proxies, servers
from .check import run_check
from .mitm import MitmError
from .scenarios import BUILTIN, LAB_PROXIES, SCENARIOS, Lab, Row, rows_as_dicts, run_scenarios


def add_parser(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser(
        "lab",
        help="reproduce the failing ESRS check and its rescue on loopback (run every scenario)",
        description="Start the stand-in ESRS server, the faulty proxy and mitmdump with esrs-fix on loopback, run "
        "every scenario, print a table, and exit 0 only if every scenario behaved as expected. "
        "Scenarios: " + "; ".join(f"{s.key}: {s.chain_via(BUILTIN)}" for s in SCENARIOS) + ".",
    )
    lab.add_argument("--only", metavar="KEYS", help="run only these scenarios, e.g. A,B")
    lab.add_argument(
        "--proxy",
        choices=LAB_PROXIES,
        default=BUILTIN,
        help="the proxy in the field: the built-in faulty proxy (default; needs nothing installed), or a real one, "
        "started for each scenario on a free loopback port (proxy.py, pproxy: "
        + install_hint("lab", "proxy.py", "pproxy").replace("%", "%%")
        + "; "
        "squid: apt-get install squid, with a plaintext cache_peer where it must forward https:// itself)",
    )
    lab.add_argument(
        "--latency",
        type=milliseconds,
        default=0.0,
        metavar="MS",
        help="put MS milliseconds of delay each way between the proxies and the servers (a relay on loopback that "
        "delays every byte, the TCP connect and TLS handshakes included; the machine's network is not touched), "
        "as a far ESRS server is; default 0",
    )
    lab.add_argument(
        "--timeout",
        type=float,
        help="seconds a check waits for an answer (default 10, plus 20 times the latency: an upgraded check costs 10 "
        "delays, connect and handshake included, so the default leaves it room twice over)",
    )
    lab.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    lab.add_argument("--workdir", type=Path, help="keep certificates and mitmdump logs here (default: a temp dir)")
    lab.set_defaults(func=cmd_lab)
    parts = lab.add_subparsers(dest="component", metavar="COMPONENT")

    p = parts.add_parser("serve-esrs", help="run the stand-in ESRS server alone until Ctrl-C")
    p.add_argument("--port", type=int, action="append", help="listen port (repeatable; default two free ports)")
    p.add_argument(
        "--plaintext",
        choices=[b.value for b in servers.Plaintext],
        default="alert",
        help="what plaintext requests get (default: alert, as Java TLS servers)",
    )
    p.add_argument("--alert-version", choices=["1.0", "1.2"], default="1.0", help="record version of the alert")
    p.add_argument("--alert", type=int, default=10, metavar="CODE", help="alert description code (default 10)")
    p.add_argument("--tls10-only", action="store_true", help="accept only TLS 1.0 handshakes")
    p.set_defaults(func=cmd_serve_esrs)

    p = parts.add_parser("faulty-proxy", help="run the faulty proxy alone until Ctrl-C")
    p.add_argument("--port", type=int, default=0, help="listen port (default: a free one)")
    p.add_argument("--well-behaved", action="store_true", help="send https:// URLs over TLS, as a correct proxy")
    p.add_argument(
        "--route",
        type=argument(parse_route),
        action="append",
        default=[],
        metavar="HOST:PORT=IP:PORT",
        help="dial IP:PORT when HOST:PORT is asked for (repeatable)",
    )
    p.set_defaults(func=cmd_faulty_proxy)

    p = parts.add_parser("check", help="run the stand-in check (absolute-form GET https://) through a proxy")
    p.add_argument(
        "--proxy",
        required=True,
        type=argument(parse_hostport),
        metavar="HOST:PORT",
        help="the HTTP proxy to go through",
    )
    p.add_argument("host", help="the ESRS host name to ask for")
    p.add_argument("--port", type=int, action="append", help="ports to check (default 443 and 8443)")
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(func=cmd_check)


def milliseconds(text: str) -> float:
    """`--latency`: a non-negative, finite number of milliseconds; argparse turns the error into its usage line."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of milliseconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number of milliseconds: {text!r}")
    return value


def lab_timeout(latency: float) -> float:
    """The check's default timeout at `latency` (seconds each way): 10 s, plus twice the 10 delays an upgraded check
    costs (the plaintext attempt's connect and answer, then the TLS attempt's connect, handshake and answer)."""
    return 10.0 + 20 * latency


def _progress(message: str) -> None:
    print(f"[lab] {message}", file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _stopped_like_ctrl_c() -> Iterator[None]:
    """SIGTERM (a CI timeout, `kill`) and SIGHUP (the terminal closed) unwind like Ctrl-C while the block runs, so
    that every process the lab started is stopped and its temporary folder (the lab's private key) removed."""
    wanted = [signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])]
    previous = {s: signal.signal(s, _interrupt) for s in wanted}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def cmd_lab(args: argparse.Namespace) -> int:
    from .. import compat  # here, not at the top: the other esrs-fix commands start without importing mitmproxy

    keys = [k.strip().upper() for k in args.only.split(",")] if args.only else None
    known = {s.key for s in SCENARIOS}
    if keys and not set(keys) <= known:
        print(f"esrs-fix lab: unknown scenario {sorted(set(keys) - known)}; known: {sorted(known)}", file=sys.stderr)
        return 2
    if args.proxy != BUILTIN:
        try:
            proxies.find(args.proxy)
        except proxies.ProxyMissing as e:
            print(f"esrs-fix lab: --proxy {args.proxy}: {e}", file=sys.stderr)
            return 2
    latency = args.latency / 1000
    timeout = args.timeout if args.timeout is not None else lab_timeout(latency)
    with servers.temporary_directory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if args.workdir is None:
            os.chmod(tmp, 0o755)  # as root, squid drops to the `proxy` user, which must reach its own directory
        _progress(
            f"mitmproxy {compat.mitmproxy_version()}, Python {sys.version.split()[0]}, work dir {workdir}, "
            f"proxy in the field: {args.proxy}, latency {args.latency:g} ms each way (proxies to servers), "
            f"check timeout {timeout:g} s"
        )
        try:
            with (
                _stopped_like_ctrl_c(),
                Lab(workdir, timeout=timeout, progress=_progress, proxy=args.proxy, latency=latency) as lab,
            ):
                rows = run_scenarios(lab, keys)
        except (proxies.ProxyFailed, MitmError) as e:
            print(f"esrs-fix lab: {e}", file=sys.stderr)
            return 1
    if args.json:
        out = {
            "all_as_expected": bool(rows) and all(r.as_expected for r in rows),
            "proxy": args.proxy,
            "latency_ms": args.latency,
            "timeout": timeout,
            "rows": rows_as_dicts(rows),
        }
        print(json.dumps(out, indent=2))
    else:
        print(render_table(rows))
    return 0 if rows and all(r.as_expected for r in rows) else 1


#: The narrowest table drawn: below it, lines are as long as this.
MIN_WIDTH = 40
#: The saw column beside the others only where it gets this much room; else it goes under its row.
SAW_COLUMN = 30


def terminal_width() -> int:
    """The width to fit: COLUMNS, else the terminal of stdout, else of stderr (`scripts/lab | tee run.txt` is still
    read on a terminal), else 100 (a file, a CI log)."""
    columns = os.environ.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        return max(MIN_WIDTH, int(columns))
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            size = os.get_terminal_size(stream.fileno()).columns
            if size > 0:
                return max(MIN_WIDTH, size)
    return 100


def _wrap(text: str, width: int, indent: str = "", more: str = "") -> list[str]:
    """`text` in lines of at most `width` columns, nothing cut: words longer than a line are split, never dropped."""
    return textwrap.wrap(text, width=width, initial_indent=indent, subsequent_indent=more, break_on_hyphens=False) or [
        indent.rstrip()
    ]


def render_table(rows: list[Row], width: int | None = None) -> str:
    """A summary table, then each row in full: what an engineer pastes into a ticket. It fits `width` (the
    terminal's by default): what the check saw wraps in its column, or under its row where the terminal is narrow,
    and is never cut."""
    width = max(MIN_WIDTH, width or terminal_width())
    kw = max([len("scenario"), *(len(r.scenario) for r in rows)])
    uw = max([len("check URL"), *(len(r.url) for r in rows)])
    vw = max([len("verdict"), *(len(r.short_verdict) for r in rows)])
    beside = 2 + 1 + kw + 1 + uw + 1 + vw  # the columns before what the check saw
    sw = width - beside - 1
    under = " " * 5  # what the check saw, under its row, where it gets no column
    if sw >= SAW_COLUMN:  # what the check saw in a column of its own, wrapped there
        lines = [f"{'':2} {'scenario':{kw}} {'check URL':{uw}} {'verdict':{vw}} what the check saw"]
    elif beside <= width:  # the other columns on the row's line, what the check saw under it
        lines = [f"{'':2} {'scenario':{kw}} {'check URL':{uw}} verdict", f"{under}what the check saw"]
    else:  # narrower still: each row's fields one after the other, wrapped
        lines = [*_wrap("scenario, check URL, verdict", width, " " * 3, under), f"{under}what the check saw"]
    lines.append("-" * width)
    for r in rows:
        mark = "ok" if r.as_expected else "!!"
        if sw >= SAW_COLUMN:
            saw = _wrap(r.saw, sw)
            lines.append(f"{mark:2} {r.scenario:{kw}} {r.url:{uw}} {r.short_verdict:{vw}} {saw[0]}")
            lines.extend(" " * (beside + 1) + more for more in saw[1:])
            continue
        if beside <= width:
            lines.append(f"{mark:2} {r.scenario:{kw}} {r.url:{uw}} {r.short_verdict}")
        else:
            lines.extend(_wrap(f"{mark:2} {r.scenario} {r.url} {r.short_verdict}", width, "", under))
        lines.extend(_wrap(r.saw, width, under, under))
    lines.append("")
    for key in dict.fromkeys(r.scenario for r in rows):
        group = [r for r in rows if r.scenario == key]
        lines.extend(_wrap(f"{key}: {group[0].title}", width, "", "  "))
        lines.extend(_wrap(f"chain:    {group[0].chain}", width, "    ", "      "))
        lines.extend(_wrap(f"expected: {group[0].expectation}", width, "    ", "      "))
        for r in group:
            lines.extend(_wrap(f"{r.url} -> {r.verdict}", width, "    ", "      "))
            lines.extend(_wrap(f"saw:    {r.saw}", width, "    ", "      "))
            lines.extend(_wrap(f"logged: {r.logged}", width, "    ", "      "))
        lines.append("")
    ok = sum(r.as_expected for r in rows)
    lines.extend(
        _wrap(f"{ok} of {len(rows)} checks behaved as expected" + ("" if ok == len(rows) else ": SEE ABOVE"), width)
    )
    return "\n".join(line.rstrip() for line in lines)


def _wait_forever(what: str) -> int:
    """Until Ctrl-C, SIGTERM or SIGHUP (the caller has `_stopped_like_ctrl_c` on): 0, as stopping is the way out."""
    with contextlib.suppress(KeyboardInterrupt):  # entered before it says so: a signal right after the line is no error
        _progress(f"{what}; Ctrl-C stops it")
        threading.Event().wait()
    return 0


def cmd_serve_esrs(args: argparse.Namespace) -> int:
    version = 0x0301 if args.alert_version == "1.0" else 0x0303
    behaviour = servers.EsrsBehaviour(
        plaintext=servers.Plaintext(args.plaintext),
        alert=records.encode_alert(2, args.alert, version),
        tls10_only=args.tls10_only,
    )
    with _stopped_like_ctrl_c(), servers.temporary_directory() as tmp:
        cert = servers.make_certificate(Path(tmp))
        started = [servers.EsrsServer(cert, behaviour, port=p).start() for p in (args.port or [0, 0])]
        try:
            ports = ", ".join(f"127.0.0.1:{s.port}" for s in started)
            return _wait_forever(
                f"stand-in ESRS server on {ports}; plaintext gets {args.plaintext} "
                f"({records.hexdump(behaviour.alert)}); its certificate and key in {tmp}, removed when it stops"
            )
        finally:
            for s in started:
                s.stop()


def cmd_faulty_proxy(args: argparse.Namespace) -> int:
    with _stopped_like_ctrl_c():
        return _serve_faulty_proxy(args)


def _serve_faulty_proxy(args: argparse.Namespace) -> int:
    proxy = servers.FaultyProxy(dict(args.route), well_behaved=args.well_behaved, port=args.port).start()
    try:
        kind = "well-behaved" if args.well_behaved else "faulty (plaintext for https:// URLs)"
        return _wait_forever(f"{kind} proxy on 127.0.0.1:{proxy.port}")
    finally:
        proxy.stop()


def cmd_check(args: argparse.Namespace) -> int:
    results = [run_check(args.proxy, args.host, p, args.timeout) for p in (args.port or [443, 8443])]
    for r in results:
        print(f"{'PASS' if r.passed else 'FAIL'} {r.url}: {r.saw}")
    return 0 if all(r.passed for r in results) else 1
