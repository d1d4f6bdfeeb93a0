"""The lab's scenarios: the field report's failing chain and its rescues, each run for real on loopback.

The proxy in the field is the built-in faulty proxy by default (it needs nothing installed), or a real one
(`LAB_PROXIES`, launched by `proxies`), started afresh for each scenario.  The built-in proxy routes the name
`esrs.lab` to the lab's loopback ports; a real proxy resolves names itself, so through it the check asks for
`127.0.0.1` and the real port of what the proxy should reach (the stand-in server's, or mitmdump's reverse
listener's).  squid forwards `GET https://` in plaintext only to a `cache_peer` without `tls` (by itself it
speaks TLS and answers with its own 502), so where the proxy must forward the check (A, B, C, F, H) squid runs
with the target as its cache_peer; where mitmdump tunnels through it (D, E1, E2, G) squid runs direct.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

from ..core.findings import Kind
from . import proxies, servers
from .check import CheckResult, run_check, run_plain_get
from .latency import LatencyRelay
from .mitm import Mitmdump

HOST = "esrs.lab"
PORTS = (443, 8443)
BUILTIN = "builtin"
#: The proxies a lab run can go through: the built-in faulty proxy, or a real one.
LAB_PROXIES = (BUILTIN, "proxy.py", "pproxy", "squid")


@dataclass
class Hop:
    """The proxy in the field for one scenario: its port, its name, and what the check asks it for, per lab port."""

    port: int
    name: str
    targets: dict[int, tuple[str, int]]


#: What the stand-in check prints for a probe, as the real one does.
PASS, FAIL = "PASS", "FAIL"


@dataclass
class Row:
    """One check URL of one scenario: what the check said, what the scenario expects, and whether it behaved."""

    scenario: str
    title: str
    chain: str
    url: str
    saw: str
    check_result: str  # PASS or FAIL: the stand-in check's own result (the field report's check FAILs)
    expectation: str  # what the scenario expects, in words; it starts with the check result it expects
    as_expected: bool  # the row behaved: the check's result and what the scenario looks at besides (its judge)
    logged: str
    why_unexpected: str = ""  # what the judge missed, when not as expected
    seconds: float = 0.0  # how long the check waited for its answer

    @property
    def expected_result(self) -> str:
        return expected_result(self.expectation)

    @property
    def verdict(self) -> str:
        return self.short_verdict + ("" if self.as_expected else f" ({self.why_unexpected})")

    @property
    def short_verdict(self) -> str:
        return f"{self.check_result} as expected" if self.as_expected else f"{self.check_result}, UNEXPECTED"


def expected_result(expectation: str) -> str:
    """PASS or FAIL: the check result a scenario's expectation names first."""
    word = expectation.split(maxsplit=1)[0].rstrip(",:")
    if word not in (PASS, FAIL):
        raise ValueError(f"an expectation starts with PASS or FAIL: {expectation!r}")
    return word


@dataclass
class Scenario:
    key: str
    title: str
    chain: str
    expected: str
    run: Callable[[Lab], list[tuple[CheckResult, list[str]]]]
    judge: Callable[[CheckResult, list[str]], str] = field(repr=False)  # "" when as expected, else why not
    #: mitmdump reaches the proxy in the field with CONNECT (upstream mode): squid takes its direct form then;
    #: otherwise the proxy itself forwards `GET https://` (squid with a plaintext cache_peer)
    tunnels: bool = False
    #: where squid legitimately differs from the others (it wraps a TLS answer in an HTTP/0.9 200 of its own)
    squid_expected: str = ""
    squid_judge: Callable[[CheckResult, list[str]], str] | None = field(default=None, repr=False)

    def chain_via(self, proxy: str) -> str:
        return self.chain.format(proxy=proxy_label(proxy, tunnels=self.tunnels), host=_host(proxy))

    def expected_via(self, proxy: str) -> str:
        return self.squid_expected if proxy == "squid" and self.squid_expected else self.expected

    def judge_via(self, proxy: str) -> Callable[[CheckResult, list[str]], str]:
        return self.squid_judge if proxy == "squid" and self.squid_judge else self.judge


def proxy_label(proxy: str, *, tunnels: bool) -> str:
    """The proxy in the field, as the chain names it."""
    if proxy == BUILTIN:
        return "faulty proxy"
    if proxy == "squid":
        return "squid (direct)" if tunnels else "squid (cache_peer)"
    return proxy


def _host(proxy: str) -> str:
    return HOST if proxy == BUILTIN else "127.0.0.1"


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
    return [f"{e['summary']}{_wrapped(e)} [{report_action(e)}]" for e in entries if url_part in e["url"]]


def _wrapped(entry: dict) -> str:
    return " (wrapped in a proxy's HTTP/0.9 200)" if entry.get("kind") == Kind.TLS_WRAPPED_HTTP09 else ""


_S = TypeVar("_S", bound=servers.TCPServer)


class Lab:
    """Owns every server and process of a lab run; all of them stop when the `with` block ends.

    `latency` (seconds, each way): every server the proxies reach sits behind a `LatencyRelay`, so the field proxy
    and mitmdump in reverse mode meet a far server (connect, handshakes, answers); the check, the field proxy and
    mitmdump stay near each other, as the check and mitmproxy do at a customer's site.  `reach(server)` is the
    port to dial for a server: its relay's when there is one.
    """

    def __init__(
        self,
        workdir: Path,
        timeout: float = 10.0,
        progress: Callable[[str], None] = print,
        proxy: str = BUILTIN,
        latency: float = 0.0,
    ) -> None:
        if proxy not in LAB_PROXIES:
            raise ValueError(f"unknown proxy {proxy!r}; known: {', '.join(LAB_PROXIES)}")
        if latency < 0:
            raise ValueError(f"latency must not be negative: {latency}")
        self.latency = latency
        self._front: dict[int, int] = {}  # a server's port -> its latency relay's port
        self.workdir = workdir
        self.timeout = timeout
        self.progress = progress
        self.proxy = proxy
        self._stack = ExitStack()
        self.logs: list[Path] = []

    def __enter__(self) -> Lab:
        try:
            self.cert = servers.make_certificate(self.workdir)
            self.esrs = {p: self.server(servers.EsrsServer(self.cert)) for p in PORTS}
            self.tls10 = {
                p: self.server(servers.EsrsServer(self.cert, servers.EsrsBehaviour(tls10_only=True))) for p in PORTS
            }
            if self.latency:
                for s in [*self.esrs.values(), *self.tls10.values()]:
                    relay = self.server(LatencyRelay(("127.0.0.1", s.port), self.latency))
                    self._front[s.port] = relay.port
        except BaseException:  # what started before the failure is on the stack: stop it
            self._stack.close()
            raise
        for p in PORTS:
            self.progress(
                f"stand-in ESRS server for :{p} on 127.0.0.1:{self.esrs[p].port} (TLS; plaintext gets "
                f"{servers.ALERT_TLS10.hex(' ')}), TLS-1.0-only twin on 127.0.0.1:{self.tls10[p].port}"
            )
        if self.latency:
            fronts = ", ".join(f"127.0.0.1:{r} -> :{s}" for s, r in self._front.items())
            self.progress(
                f"latency {self.latency_label}: every server is reached through a relay that delays each byte, "
                f"the connect and the handshakes included ({fronts})"
            )
        return self

    @property
    def latency_label(self) -> str:
        return f"{self.latency * 1000:g} ms each way (round trip {2 * self.latency * 1000:g} ms)"

    def reach(self, server: servers.TCPServer) -> int:
        """The port the proxies dial for `server`: its latency relay's, or its own without latency."""
        return self._front.get(server.port, server.port)

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def server(self, s: _S) -> _S:
        s.start()
        self._stack.callback(s.stop)
        return s

    def field_proxy(self, targets: dict[int, int], *, tunnels: bool) -> Hop:
        """The proxy in the field, reaching `targets` (lab port -> loopback port); stopped when the lab ends.

        `tunnels`: it is reached through mitmdump in upstream mode (CONNECT); otherwise it must forward
        `GET https://` itself, which squid does in plaintext only towards a `cache_peer` without `tls`.
        """
        if self.proxy == BUILTIN:
            faulty = servers.FaultyProxy(
                {(HOST, p): ("127.0.0.1", t) for p, t in targets.items()}, idle=self.timeout / 2
            )
            faulty.start()
            self._stack.callback(faulty.stop)
            self.progress(f"faulty proxy (plaintext for https:// URLs, CONNECT works) on 127.0.0.1:{faulty.port}")
            return Hop(faulty.port, "faulty proxy", {p: (HOST, p) for p in targets})
        peers = [("127.0.0.1", t) for t in targets.values()] if self.proxy == "squid" and not tunnels else []
        n = len(list(self.workdir.glob("proxy-*"))) + 1
        work = self.workdir / f"proxy-{n}-{self.proxy}"
        real = proxies.start(self.proxy, work, servers.free_port(), peers=peers)
        self._stack.callback(real.stop)
        self.progress(f"{real.name} on 127.0.0.1:{real.port}  (config and log in {work})")
        return Hop(real.port, real.name, {p: ("127.0.0.1", t) for p, t in targets.items()})

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

    def check(self, hop: Hop, via: int | None = None) -> list[CheckResult]:
        """The check for each lab port, to `hop`'s targets, sent to `via` (mitmdump) or else to the hop itself."""
        proxy = ("127.0.0.1", via or hop.port)
        return [run_check(proxy, *hop.targets[p], self.timeout) for p in PORTS]

    def plain_get(self, hop: Hop, via: int) -> list[CheckResult]:
        return [run_plain_get(("127.0.0.1", via), *hop.targets[p], self.timeout) for p in PORTS]


def _url_part(scheme: str, host: str, port: int) -> str:
    """How mitmproxy writes the URL's authority in its report: without the scheme's default port."""
    return f"://{host}/" if port == {"https": 443, "http": 80}[scheme] else f"://{host}:{port}/"


def _scenario_a(lab: Lab) -> list[tuple[CheckResult, list[str]]]:
    hop = lab.field_proxy({p: lab.reach(lab.esrs[p]) for p in PORTS}, tunnels=False)
    return [(r, []) for r in lab.check(hop)]


def _reverse_chain(lab: Lab, extra: list[str]) -> list[tuple[CheckResult, list[str]]]:
    ports = {p: servers.free_port() for p in PORTS}
    targets = {p: lab.reach(lab.esrs[p]) for p in PORTS}
    args = [a for p in PORTS for a in ("--mode", f"reverse:http://127.0.0.1:{targets[p]}@{ports[p]}")]
    with lab.mitmdump(args + extra, listeners=len(PORTS)) as report:
        # the proxy after mitmdump: squid probes its cache_peers when it starts and shuns one that is not up yet
        hop = lab.field_proxy(ports, tunnels=False)
        results = lab.check(hop)  # the report line is written before the client is answered
        return [(r, addon_lines(report, f":{targets[p]}/")) for r, p in zip(results, PORTS, strict=True)]


def _upstream_chain(
    lab: Lab, targets: dict[int, servers.EsrsServer], extra: list[str], *, plain: bool = False
) -> list[tuple[CheckResult, list[str]]]:
    hop = lab.field_proxy({p: lab.reach(targets[p]) for p in PORTS}, tunnels=True)
    port = servers.free_port()
    args = ["-p", str(port), "--mode", f"upstream:http://127.0.0.1:{hop.port}"]
    with lab.mitmdump(args + extra) as report:
        results = lab.plain_get(hop, port) if plain else lab.check(hop, port)
        scheme = "http" if plain else "https"
        return [
            (r, addon_lines(report, _url_part(scheme, *hop.targets[p]))) for r, p in zip(results, PORTS, strict=True)
        ]


def _trusting(lab: Lab) -> list[str]:
    return ["--set", "esrs_upgrade=true", "--set", f"ssl_verify_upstream_trusted_ca={lab.cert[0]}"]


def _is_field_alert(r: CheckResult) -> bool:
    f = r.finding
    return bool(f and f.kind is Kind.TLS_RECORDS and f.records[0].alert and f.records[0].alert.description == 10)


def _judge_a(r: CheckResult, logged: list[str]) -> str:
    return "" if not r.passed and _is_field_alert(r) else "expected the raw alert 15 03 01 00 02 02 0a"


def _judge_a_squid(r: CheckResult, logged: list[str]) -> str:
    f = r.finding
    wrapped = r.answer.status == 200 and f is not None and f.kind is Kind.TLS_WRAPPED_HTTP09
    first = f.records[0] if wrapped and f is not None and f.records else None
    alert = first is not None and first.alert is not None and first.alert.description == 10
    if r.passed or not alert:
        return "expected squid's 200 wrapping the alert 15 03 01 00 02 02 0a (X-Transformed-From: HTTP/0.9)"
    return ""


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


def _judge_upgraded(r: CheckResult, logged: list[str]) -> str:
    if not r.passed or r.answer.body != servers.OK_BODY or not (r.answer.label or "").startswith("upgraded; "):
        return "expected the server's own 200 (its body), labelled upgraded"
    return "" if any("upgraded to TLS: HTTP 200" in line for line in logged) else "the addon reported no upgrade"


def _judge_g_squid(r: CheckResult, logged: list[str]) -> str:
    why = _judge_upgraded(r, logged)
    wrapped = any("(wrapped in a proxy's HTTP/0.9 200) [upgraded" in line for line in logged)
    return why or ("" if wrapped else "the addon did not see squid's HTTP/0.9 wrapping")


def _judge_h(r: CheckResult, logged: list[str]) -> str:
    label = r.answer.label or ""
    if r.passed or r.answer.status != 502 or not label.startswith("upgrade failed: certificate verification failed"):
        return "expected a 502 naming the certificate problem"
    return "" if any("TLS attempt failed: certificate" in line for line in logged) else "the addon did not say why"


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "A",
        "the field report",
        "check -> {proxy} -> ESRS server",
        "FAIL: the check gets the raw TLS alert",
        _scenario_a,
        _judge_a,
        squid_expected="FAIL: squid wraps the TLS alert in a 200 of its own (X-Transformed-From: HTTP/0.9): no success",
        squid_judge=_judge_a_squid,
    ),
    Scenario(
        "B",
        "mitmproxy + esrs-fix between proxy and server",
        "check -> {proxy} -> mitmdump (reverse, esrs-fix) -> ESRS server",
        "FAIL, explained: a 502 carrying the decoded alert, and a WARNING in the log",
        lambda lab: _reverse_chain(lab, []),
        _judge_b,
    ),
    Scenario(
        "C",
        "as B with esrs_rewrite on",
        "check -> {proxy} -> mitmdump (reverse, esrs-fix, esrs_rewrite) -> ESRS server",
        "PASS on the labelled synthetic 200 (validation only: the server did not send it)",
        lambda lab: _reverse_chain(lab, ["--set", "esrs_rewrite=true"]),
        _judge_synthetic,
    ),
    Scenario(
        "D",
        "mitmproxy in front of the proxy",
        "check -> mitmdump (upstream mode, esrs-fix) -> {proxy} -> ESRS server",
        "PASS for real: mitmproxy tunnels https:// with CONNECT, which the proxy handles correctly",
        lambda lab: _upstream_chain(lab, lab.esrs, ["--set", "ssl_insecure=true"]),
        _judge_d,
        tunnels=True,
    ),
    Scenario(
        "E1",
        "a TLS-1.0-only server",
        "check -> mitmdump (upstream mode, esrs-fix) -> {proxy} -> TLS-1.0-only server",
        "FAIL, explained: the handshake ends in alert protocol_version (70), named in the log",
        lambda lab: _upstream_chain(lab, lab.tls10, ["--set", "ssl_insecure=true"]),
        _judge_e1,
        tunnels=True,
    ),
    Scenario(
        "E2",
        "as E1 with esrs_rewrite on",
        "check -> mitmdump (upstream mode, esrs-fix, esrs_rewrite) -> {proxy} -> TLS-1.0-only server",
        "PASS on the labelled synthetic 200",
        lambda lab: _upstream_chain(lab, lab.tls10, ["--set", "esrs_rewrite=true", "--set", "ssl_insecure=true"]),
        _judge_e2,
        tunnels=True,
    ),
    Scenario(
        "F",
        "upgrade: mitmproxy sends the request again over TLS",
        "check -> {proxy} -> mitmdump (reverse, esrs-fix, esrs_upgrade) -> ESRS server",
        "PASS on the server's real answer (its own body), verified with the lab's CA",
        lambda lab: _reverse_chain(lab, _trusting(lab)),
        _judge_upgraded,
    ),
    Scenario(
        "G",
        "upgrade in upstream mode",
        "client GET http://{host}:PORT/ -> mitmdump (upstream mode, esrs_upgrade) -> {proxy} -> ESRS server",
        "PASS on the server's real answer, through CONNECT on the same proxy",
        lambda lab: _upstream_chain(lab, lab.esrs, _trusting(lab), plain=True),
        _judge_upgraded,
        tunnels=True,
        squid_expected="PASS on the server's real answer: squid wraps the alert in an HTTP/0.9 200 of its own, the "
        "addon sees through it and sends the request again through CONNECT",
        squid_judge=_judge_g_squid,
    ),
    Scenario(
        "H",
        "upgrade, but the server's certificate is not trusted",
        "check -> {proxy} -> mitmdump (reverse, esrs_upgrade, no trusted CA) -> ESRS server",
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
        judge = s.judge_via(lab.proxy)
        for result, logged in s.run(lab):
            why = judge(result, logged)
            rows.append(
                Row(
                    s.key,
                    s.title,
                    s.chain_via(lab.proxy),
                    result.url,
                    result.saw,
                    PASS if result.passed else FAIL,
                    s.expected_via(lab.proxy),
                    not why,
                    "; ".join(logged) or "-",
                    why,
                    round(result.seconds, 3),
                )
            )
            lab.progress(f"    {result.url}: {rows[-1].verdict} ({result.seconds:.2f} s)")
    return rows


def rows_as_dicts(rows: list[Row]) -> list[dict[str, object]]:
    """The rows for `--json`: the check's result beside the result the scenario expects, then whether it behaved."""
    out = []
    for r in rows:
        row = asdict(r)
        ordered = {k: row.pop(k) for k in ("scenario", "title", "chain", "url", "saw", "check_result")}
        ordered["expected_result"] = r.expected_result
        out.append({**ordered, **row, "verdict": r.verdict})
    return out
