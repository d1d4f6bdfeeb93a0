"""The lab's scenarios: the field report's failing chain and its rescues, each run for real on loopback."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..findings import Kind
from . import servers
from .check import CheckResult, run_check, run_plain_get
from .mitm import Mitmdump

HOST = "esrs.lab"
PORTS = (443, 8443)


@dataclass
class Row:
    scenario: str
    title: str
    chain: str
    url: str
    saw: str
    passed: bool
    expected: str
    ok: bool
    logged: str
    why: str = ""

    @property
    def verdict(self) -> str:
        result = "PASS" if self.passed else "FAIL"
        return f"{result} as expected" if self.ok else f"{result}, UNEXPECTED ({self.why})"


@dataclass
class Scenario:
    key: str
    title: str
    chain: str
    expected: str
    run: Callable[[Lab], list[tuple[CheckResult, list[str]]]]
    judge: Callable[[CheckResult, list[str]], str] = field(repr=False)  # "" when as expected, else why not


def report_action(entry: dict) -> str:
    """What the addon did, in the words of its report line."""
    if entry.get("upgraded"):
        upgrade = entry.get("upgrade") or {}
        return f"upgraded to TLS: HTTP {upgrade.get('status')} from the server" + (
            " (learned)" if entry.get("learned") else ""
        )
    action = f"rewritten to a synthetic {entry['rewritten_status']}" if entry.get("rewritten") else "not rewritten"
    if entry.get("upgrade_error"):
        action += f"; TLS attempt failed: {entry['upgrade_error']}"
    return action


def addon_lines(report: Path | None, url_part: str) -> list[str]:
    """The addon's own report lines (esrs_report, JSON Lines) for one URL, as `SUMMARY [action]`."""
    if report is None or not report.exists():
        return []
    entries = [json.loads(line) for line in report.read_text().splitlines() if line.strip()]
    return [f"{e['summary']} [{report_action(e)}]" for e in entries if url_part in e["url"]]


class Lab:
    """Owns every server and process of a lab run; all of them stop when the `with` block ends."""

    def __init__(self, workdir: Path, timeout: float = 10.0, progress: Callable[[str], None] = print) -> None:
        self.workdir = workdir
        self.timeout = timeout
        self.progress = progress
        self._stack = ExitStack()
        self.logs: list[Path] = []

    def __enter__(self) -> Lab:
        self.cert = servers.make_certificate(self.workdir)
        self.esrs = {p: self.server(servers.EsrsServer(self.cert)) for p in PORTS}
        self.tls10 = {
            p: self.server(servers.EsrsServer(self.cert, servers.EsrsBehaviour(tls10_only=True))) for p in PORTS
        }
        for p in PORTS:
            self.progress(
                f"stand-in ESRS server for :{p} on 127.0.0.1:{self.esrs[p].port} (TLS; plaintext gets "
                f"{servers.ALERT_TLS10.hex(' ')}), TLS-1.0-only twin on 127.0.0.1:{self.tls10[p].port}"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def server(self, s: servers.TCPServer) -> servers.EsrsServer:
        s.start()
        self._stack.callback(s.stop)
        return s  # type: ignore[return-value]

    def faulty_proxy(self, targets: dict[int, int]) -> servers.FaultyProxy:
        proxy = servers.FaultyProxy({(HOST, p): ("127.0.0.1", t) for p, t in targets.items()}, idle=self.timeout / 2)
        proxy.start()
        self._stack.callback(proxy.stop)
        self.progress(f"faulty proxy (plaintext for https:// URLs, CONNECT works) on 127.0.0.1:{proxy.port}")
        return proxy

    @contextmanager
    def mitmdump(self, args: list[str], listeners: int = 1) -> Iterator[Path]:
        """mitmdump with the addon; yields the path of its esrs_report (JSON Lines), where the lab reads what it did."""
        n = len(self.logs) + 1
        log, report = self.workdir / f"mitmdump-{n}.log", self.workdir / f"report-{n}.jsonl"
        self.logs.append(log)
        args = [*args, "--set", f"esrs_report={report}"]
        m = Mitmdump(args, log, listeners=listeners)
        self.progress(f"mitmdump -s esrs_fix.py {' '.join(args)}  (log: {log})")
        with m:
            yield report

    def check(self, proxy_port: int) -> list[CheckResult]:
        return [run_check(("127.0.0.1", proxy_port), HOST, p, self.timeout) for p in PORTS]

    def plain_get(self, proxy_port: int) -> list[CheckResult]:
        return [run_plain_get(("127.0.0.1", proxy_port), HOST, p, self.timeout) for p in PORTS]


def _scenario_a(lab: Lab) -> list[tuple[CheckResult, list[str]]]:
    proxy = lab.faulty_proxy({p: lab.esrs[p].port for p in PORTS})
    return [(r, []) for r in lab.check(proxy.port)]


def _reverse_chain(lab: Lab, extra: list[str]) -> list[tuple[CheckResult, list[str]]]:
    ports = {p: servers.free_port() for p in PORTS}
    args = [a for p in PORTS for a in ("--mode", f"reverse:http://127.0.0.1:{lab.esrs[p].port}@{ports[p]}")]
    proxy = lab.faulty_proxy(ports)
    with lab.mitmdump(args + extra, listeners=len(PORTS)) as report:
        results = lab.check(proxy.port)  # the report line is written before the client is answered
        return [(r, addon_lines(report, f":{lab.esrs[p].port}/")) for r, p in zip(results, PORTS, strict=True)]


def _upstream_chain(
    lab: Lab, targets: dict[int, servers.EsrsServer], extra: list[str], *, plain: bool = False
) -> list[tuple[CheckResult, list[str]]]:
    proxy = lab.faulty_proxy({p: targets[p].port for p in PORTS})
    port = servers.free_port()
    args = ["-p", str(port), "--mode", f"upstream:http://127.0.0.1:{proxy.port}"]
    with lab.mitmdump(args + extra) as report:
        results = lab.plain_get(port) if plain else lab.check(port)
        return [
            (r, addon_lines(report, f"{HOST}:{p}/" if p != 443 or plain else f"{HOST}/"))
            for r, p in zip(results, PORTS, strict=True)
        ]


def _trusting(lab: Lab) -> list[str]:
    return ["--set", "esrs_upgrade=true", "--set", f"ssl_verify_upstream_trusted_ca={lab.cert[0]}"]


def _is_field_alert(r: CheckResult) -> bool:
    f = r.finding
    return bool(f and f.kind is Kind.TLS_RECORDS and f.records[0].alert and f.records[0].alert.description == 10)


def _judge_a(r: CheckResult, logged: list[str]) -> str:
    return "" if not r.passed and _is_field_alert(r) else "expected the raw alert 15 03 01 00 02 02 0a"


def _judge_b(r: CheckResult, logged: list[str]) -> str:
    a = r.answer
    if r.passed or a.status != 502 or not (a.label or "").startswith("detected; TLS alert: fatal unexpected_message"):
        return "expected a 502 labelled with the decoded alert"
    return "" if any("unexpected_message (10)" in line for line in logged) else "the addon logged no decode"


def _judge_synthetic(r: CheckResult, logged: list[str]) -> str:
    if not r.passed or not (r.answer.label or "").startswith("synthetic 200;"):
        return "expected the labelled synthetic 200"
    return "" if any("rewritten to a synthetic 200" in line for line in logged) else "the addon logged no rewrite"


def _judge_d(r: CheckResult, logged: list[str]) -> str:
    if not r.passed or r.answer.label is not None or r.answer.body != servers.OK_BODY:
        return "expected the server's own 200 through the CONNECT tunnel"
    return "" if not logged else "the addon reported a problem on a clean flow"


def _judge_e1(r: CheckResult, logged: list[str]) -> str:
    if r.passed or r.answer.status != 502:
        return "expected mitmproxy's 502"
    return "" if any("protocol_version (70)" in line for line in logged) else "the addon did not name the alert"


def _judge_e2(r: CheckResult, logged: list[str]) -> str:
    why = _judge_synthetic(r, logged)
    return why or ("" if any("protocol_version (70)" in line for line in logged) else "the alert was not named")


def _judge_healed(r: CheckResult, logged: list[str]) -> str:
    if not r.passed or r.answer.body != servers.OK_BODY or not (r.answer.label or "").startswith("upgraded; "):
        return "expected the server's own 200 (its body), labelled upgraded"
    return "" if any("upgraded to TLS: HTTP 200" in line for line in logged) else "the addon reported no upgrade"


def _judge_h(r: CheckResult, logged: list[str]) -> str:
    label = r.answer.label or ""
    if r.passed or r.answer.status != 502 or not label.startswith("upgrade failed: certificate verification failed"):
        return "expected a 502 naming the certificate problem"
    return "" if any("TLS attempt failed: certificate" in line for line in logged) else "the addon did not say why"


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "A",
        "the field report",
        "check -> faulty proxy -> ESRS server",
        "FAIL: the check gets the raw TLS alert",
        _scenario_a,
        _judge_a,
    ),
    Scenario(
        "B",
        "mitmproxy + esrs-fix between proxy and server",
        "check -> faulty proxy -> mitmdump (reverse, esrs-fix) -> ESRS server",
        "FAIL, explained: a 502 carrying the decoded alert, and a WARNING in the log",
        lambda lab: _reverse_chain(lab, []),
        _judge_b,
    ),
    Scenario(
        "C",
        "as B with esrs_rewrite on",
        "check -> faulty proxy -> mitmdump (reverse, esrs-fix, esrs_rewrite) -> ESRS server",
        "PASS on the labelled synthetic 200 (validation only: the server did not send it)",
        lambda lab: _reverse_chain(lab, ["--set", "esrs_rewrite=true"]),
        _judge_synthetic,
    ),
    Scenario(
        "D",
        "mitmproxy in front of the faulty proxy",
        "check -> mitmdump (upstream mode, esrs-fix) -> faulty proxy -> ESRS server",
        "PASS for real: mitmproxy tunnels https:// with CONNECT, which the proxy handles correctly",
        lambda lab: _upstream_chain(lab, lab.esrs, ["--set", "ssl_insecure=true"]),
        _judge_d,
    ),
    Scenario(
        "E1",
        "a TLS-1.0-only server",
        "check -> mitmdump (upstream mode, esrs-fix) -> faulty proxy -> TLS-1.0-only server",
        "FAIL, explained: the handshake ends in alert protocol_version (70), named in the log",
        lambda lab: _upstream_chain(lab, lab.tls10, ["--set", "ssl_insecure=true"]),
        _judge_e1,
    ),
    Scenario(
        "E2",
        "as E1 with esrs_rewrite on",
        "check -> mitmdump (upstream mode, esrs-fix, esrs_rewrite) -> faulty proxy -> TLS-1.0-only server",
        "PASS on the labelled synthetic 200",
        lambda lab: _upstream_chain(lab, lab.tls10, ["--set", "esrs_rewrite=true", "--set", "ssl_insecure=true"]),
        _judge_e2,
    ),
    Scenario(
        "F",
        "heal: mitmproxy sends the request again over TLS",
        "check -> faulty proxy -> mitmdump (reverse, esrs-fix, esrs_upgrade) -> ESRS server",
        "PASS on the server's real answer (its own body), verified with the lab's CA",
        lambda lab: _reverse_chain(lab, _trusting(lab)),
        _judge_healed,
    ),
    Scenario(
        "G",
        "heal in upstream mode",
        "client GET http://esrs.lab:PORT/ -> mitmdump (upstream mode, esrs_upgrade) -> faulty proxy -> ESRS server",
        "PASS on the server's real answer, through CONNECT on the same proxy",
        lambda lab: _upstream_chain(lab, lab.esrs, _trusting(lab), plain=True),
        _judge_healed,
    ),
    Scenario(
        "H",
        "heal, but the server's certificate is not trusted",
        "check -> faulty proxy -> mitmdump (reverse, esrs_upgrade, no trusted CA) -> ESRS server",
        "FAIL closed: a 502 naming the certificate problem, never an unverified connection",
        lambda lab: _reverse_chain(lab, ["--set", "esrs_upgrade=true"]),
        _judge_h,
    ),
)


def run_scenarios(lab: Lab, keys: list[str] | None = None) -> list[Row]:
    rows: list[Row] = []
    chosen = [s for s in SCENARIOS if not keys or s.key in keys]
    for n, s in enumerate(chosen, 1):
        lab.progress(f"[{n}/{len(chosen)}] scenario {s.key}: {s.title}")
        for result, logged in s.run(lab):
            why = s.judge(result, logged)
            rows.append(
                Row(
                    s.key,
                    s.title,
                    s.chain,
                    result.url,
                    result.saw,
                    result.passed,
                    s.expected,
                    not why,
                    "; ".join(logged) or "-",
                    why,
                )
            )
            lab.progress(f"    {result.url}: {rows[-1].verdict}")
    return rows


def rows_as_dicts(rows: list[Row]) -> list[dict[str, object]]:
    return [{**asdict(r), "verdict": r.verdict} for r in rows]
