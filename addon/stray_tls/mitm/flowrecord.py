"""The one record of what esrs-fix saw and did to a flow, and everything said about the flow, made from it.

`FlowRecord` is written once per flow. The flow's metadata (`flow.metadata["esrs_fix"]`, kept in `-w` files and read
by the TLS records view), the report line, the marker, the comment and the log line all come from it, so that they
cannot disagree, and a flow served as learned is recorded with the same keys as an upgraded one.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mitmproxy import http

from ..core import findings as fnd
from ..core.findings import Finding
from ..core.names import (
    ATTEMPT_MARKER,
    FAILED_MARKER,
    LABEL_HEADER,
    LEARNED_MARKER,
    MARKER,
    METADATA_KEY,
    PREFIX,
    REWRITTEN_MARKER,
    UPGRADE_METADATA_KEY,
    UPGRADED_MARKER,
    clip,
    hostport,
    printable,
)
from .causes import Failure
from .learned import CAPACITY, Entry
from .report import ReportWriter

log = logging.getLogger("esrs_fix")

#: What every finding contributes (`Finding.to_dict`); a finding may add keys of its own (`http_status`, ...).
FINDING_KEYS = (
    "kind",
    "confidence",
    "summary",
    "explanation",
    "records",
    "records_omitted",
    "raw_hex",
    "raw_truncated",
)
#: What a report line has besides the record.
REPORT_KEYS = ("time", "flow", "client", "method", "url")
#: Characters of a URL (the client's to choose) that a report line keeps.
URL_CHARS = 2048


@dataclass(frozen=True, kw_only=True)
class FlowRecord:
    """What esrs-fix saw and did to one flow: detected, rewritten, upgraded, learned, or failed."""

    #: What the plaintext attempt got: the finding as a dict (for a flow served as learned, the finding that taught
    #: esrs-fix its target).
    seen: Mapping[str, Any]
    #: The upstream that answered (`host:port`), and the upstream proxy it went through in upstream mode.
    upstream: str
    upstream_proxy: str | None
    rewritten: bool = False
    rewritten_status: int | None = None
    #: The client got the server's own answer over TLS (esrs_upgrade).
    upgraded: bool = False
    #: The flow went over TLS at once, its target being learned; when and by which flow the target was learned.
    learned: bool = False
    learned_at: str | None = None
    taught_by: str | None = None
    #: What the TLS attempt got (its flow id, URL, status, TLS version, SNI, error), when there was one.
    upgrade: Mapping[str, Any] | None = None
    #: Why the TLS attempt failed, in one line, and its cause (`certificate`, `tls_version`, `timeout`, ...).
    upgrade_error: str | None = None
    upgrade_cause: str | None = None
    #: The outcome was another flow's TLS attempt to the same target (this flow made none of its own).
    shared: bool = False
    #: The flow was not sent: its target's TLS attempt failed moments ago (esrs_upgrade_retry_after). Its line lists
    #: no records and no raw bytes (`records_omitted`, `raw_truncated` count them): `same_as` is the flow whose
    #: plaintext attempt got them, and whose line has them.
    remembered: bool = False
    same_as: str | None = None

    @property
    def summary(self) -> str:
        return str(self.seen.get("summary", ""))

    @classmethod
    def of(
        cls,
        flow: http.HTTPFlow,
        finding: Finding | None,
        *,
        entry: Entry | None = None,
        attempt: http.HTTPFlow | None = None,
        rewritten_status: int | None = None,
        upgraded: bool = False,
        learned: bool = False,
        upgrade_error: Failure | None = None,
        shared: bool = False,
        same_as: str | None = None,
        remembered: bool = False,
    ) -> FlowRecord:
        """The record of `flow`: `finding` is what its own plaintext attempt got; a flow served as learned has none,
        and carries what taught esrs-fix its target (`entry`: its evidence, when and by which flow).
        `rewritten_status`: the synthetic status it was answered with, when it was rewritten. `remembered`: answered
        with a remembered failure, unsent (`same_as`: the flow that got the upstream's answer)."""
        learned_part = _learned_part(entry) if entry is not None else _NOT_LEARNED
        seen = finding.to_dict(listed=not remembered) if finding is not None else learned_part.seen
        return cls(
            seen=seen,
            upstream=address(flow.server_conn.peername or flow.server_conn.address),
            upstream_proxy=upstream_proxy(flow),
            rewritten=rewritten_status is not None,
            rewritten_status=rewritten_status,
            upgraded=upgraded,
            learned=learned,
            learned_at=learned_part.learned_at,
            taught_by=learned_part.taught_by,
            upgrade=attempt_summary(attempt) if attempt is not None else None,
            upgrade_error=str(upgrade_error) if upgrade_error is not None else None,
            upgrade_cause=str(upgrade_error.cause) if upgrade_error is not None else None,
            shared=shared,
            remembered=remembered,
            same_as=same_as,
        )

    def to_dict(self) -> dict[str, Any]:
        """The flow's metadata and the report's fields: the finding's keys, then the record's own."""
        return {**self.seen, **{name: getattr(self, name) for name in _OWN_KEYS}}


#: The record's own keys, in order (after the finding's).
_OWN_KEYS = tuple(f.name for f in dataclasses.fields(FlowRecord) if f.name != "seen")


@dataclass(frozen=True, slots=True)
class _LearnedPart:
    """What every flow served to one learned target records alike: what taught esrs-fix the target, when, and by
    which flow; and for a flow served over TLS, its record but for the keys of its own, and its comment but for the
    URL. Made once per target (`_learned_part`), not once per flow."""

    seen: Mapping[str, Any]
    learned_at: str | None
    taught_by: str | None
    #: `FlowRecord.to_dict()` of a flow served as learned, with `upstream`, `upstream_proxy` and `upgrade` to fill in.
    served: Mapping[str, Any]
    #: How the target was learned (`host:port was learned T by flow F`), as its flows' comments say it.
    origin: str

    @property
    def summary(self) -> str:
        return str(self.seen.get("summary", ""))


_NOT_LEARNED = _LearnedPart({}, None, None, {}, "")
#: The learned parts, by target and the time it was learned (a target learned anew gets a new part); bounded as the
#: learned targets are.
_LEARNED_PARTS: dict[tuple[Any, float], _LearnedPart] = {}


def _learned_part(entry: Entry) -> _LearnedPart:
    key = (entry.target, entry.learned_at)
    part = _LEARNED_PARTS.get(key)
    if part is None:
        evidence = dict(entry.evidence)
        taught_by = evidence.pop("taught_by", None)
        seen, learned_at = evidence or finding_of(entry).to_dict(), iso(entry.learned_at)
        served = FlowRecord(
            seen=seen,
            upstream="",
            upstream_proxy=None,
            upgraded=True,
            learned=True,
            learned_at=learned_at,
            taught_by=taught_by,
        ).to_dict()
        origin = _origin(hostport(entry.target.host, entry.target.port), learned_at, taught_by)
        part = _LearnedPart(seen, learned_at, taught_by, served, origin)
        if len(_LEARNED_PARTS) >= CAPACITY:
            _LEARNED_PARTS.clear()
        _LEARNED_PARTS[key] = part
    return part


def keys() -> tuple[str, ...]:
    """Every key a record has in the flow's metadata (a finding may add more)."""
    return FINDING_KEYS + _OWN_KEYS


def annotate(flow: http.HTTPFlow, record: FlowRecord, report: ReportWriter | None) -> None:
    """Mark, comment, record and report one flow (the log line is the caller's: only detections are news)."""
    _write(flow, marker(record), comment(flow, record), record.to_dict(), report)


def annotate_served(flow: http.HTTPFlow, entry: Entry, report: ReportWriter | None) -> None:
    """`annotate` for a flow served over TLS because its target is learned, with what it writes (`FlowRecord.of(flow,
    None, entry=entry, attempt=flow, upgraded=True, learned=True)`) made from its target's part: every learned request
    comes this way, and building the record anew cost it about 2 % of stock mitmproxy's whole work (callgrind)."""
    part = _learned_part(entry)
    url = pretty_url(flow.request)
    meta = dict(part.served)
    meta["upstream"] = address(flow.server_conn.peername or flow.server_conn.address)
    meta["upstream_proxy"] = upstream_proxy(flow)
    meta["upgrade"] = attempt_summary(flow, url)
    _write(flow, LEARNED_MARKER, _served_note(asked_url(flow, url), part.origin, part.summary), meta, report)


def _write(flow: http.HTTPFlow, mark: str, note: str, meta: dict[str, Any], report: ReportWriter | None) -> None:
    if not flow.marked:  # a marker the user set stays
        flow.marked = mark
    flow.comment = f"{flow.comment}\n{note}" if flow.comment else note  # what the user typed stays
    flow.metadata[METADATA_KEY] = meta
    if report is not None:
        report.write(
            {
                "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
                "flow": flow.id,  # what a remembered failure's `same_as` names
                "client": address(flow.client_conn.peername),
                "method": clip(flow.request.method, 64),
                "url": clip(pretty_url(flow.request), URL_CHARS),
                **meta,
            }
        )


#: URLs up to their path (`https://host:port`), by scheme, Host header, host and port: see `pretty_url`.
_URL_PREFIXES: dict[tuple[str, Any, str, int], str] = {}


def pretty_url(request: http.Request) -> str:
    """`request.pretty_url`, the same string, made from a prefix kept per scheme, Host header and target: mitmproxy
    parses and checks the Host header anew at each call, which cost a learned request 0.8 % of stock's work.
    The prefix is mitmproxy's own URL up to the path (its URLs end with the path; not an asterisk or CONNECT's)."""
    path = request.path
    if path == "*" or request.method == "CONNECT":
        return request.pretty_url
    fields = request.headers.fields
    if request.http_version.startswith("HTTP/1"):  # the Host header, as mitmproxy reads it, at a tenth of the cost
        host_header: Any = next((value for name, value in fields if name.lower() == b"host"), None)
    else:
        host_header = request.host_header
    key = (request.scheme, host_header, request.host, request.port)
    prefix = _URL_PREFIXES.get(key)
    if prefix is not None:
        return prefix + path
    url = request.pretty_url
    if url.endswith(path):
        if len(_URL_PREFIXES) >= CAPACITY:
            _URL_PREFIXES.clear()
        _URL_PREFIXES[key] = url[: len(url) - len(path)]
    return url


def marker(record: FlowRecord) -> str:
    """The flow list's marker: what esrs-fix did, at a glance (a failed upgrade is not a plain detection)."""
    if record.upgrade_error is not None:
        return FAILED_MARKER
    if record.learned:
        return LEARNED_MARKER
    if record.upgraded:
        return UPGRADED_MARKER
    if record.rewritten:
        return REWRITTEN_MARKER
    return MARKER


def comment(flow: http.HTTPFlow, record: FlowRecord) -> str:
    """The flow's comment: what esrs-fix did first (detected, rewritten, upgraded, learned, upgrade failed and why),
    then what the plaintext attempt got, then what the client got."""
    seen = record.summary
    attempt = record.upgrade or {}
    if record.learned:
        asked = asked_url(flow)
        origin = _origin(hostport(flow.request.host, flow.request.port), record.learned_at, record.taught_by)
        if record.upgrade_error is not None:
            return (
                f"{PREFIX}: upgrade failed (learned target): {record.upgrade_error}; the client asked for {asked}, "
                f"sent over TLS as {origin} (its plaintext attempt got {seen}); the target is forgotten"
            )
        return _served_note(asked, origin, seen)
    if record.upgrade_error is not None:
        if record.remembered:
            how = "not sent: the TLS attempt to this target failed moments ago" + (
                f" (flow {record.same_as})" if record.same_as else ""
            )
        elif record.shared:
            how = "the TLS attempt was another request's to the same target, in flight at the same time"
        else:
            how = f"TLS attempt: flow {attempt.get('flow')}"
        got = _client_got(flow, record)
        return f"{PREFIX}: upgrade failed: {record.upgrade_error} ({how}); plaintext got {seen}; {got}"
    if record.upgraded:
        return (
            f"{PREFIX}: upgraded over TLS; plaintext got {seen}; the client got the server's own answer "
            f"(TLS attempt: flow {attempt.get('flow')})"
        )
    if record.rewritten:
        return f"{PREFIX}: rewritten to a synthetic {record.rewritten_status}; plaintext got {seen}"
    return f"{PREFIX}: detected {seen}; {_client_got(flow, record)}"


def _origin(target: str, learned_at: str | None, taught_by: str | None) -> str:
    origin = f"{target} was learned {learned_at or ''}".rstrip()
    return f"{origin} by flow {taught_by}" if taught_by else origin


def _served_note(asked: str, origin: str, seen: Any) -> str:
    """The comment of a flow served over TLS because its target is learned."""
    return (
        f"{PREFIX}: learned: the client asked for {asked}, sent over TLS at once as {origin} "
        f"(its plaintext attempt got {seen})"
    )


def _client_got(flow: http.HTTPFlow, record: FlowRecord) -> str:
    """What the client was answered with, for a flow that was not upgraded."""
    response = flow.response
    if record.rewritten:
        return f"the client got a synthetic {record.rewritten_status}"
    if response is None:
        return "the client got mitmproxy's own error"
    if LABEL_HEADER in response.headers:
        return f"the client got esrs-fix's labelled {response.status_code}"
    return f"the client got the upstream's own {response.status_code}, as it came"


def asked_url(flow: http.HTTPFlow, url: str | None = None) -> str:
    """The URL a learned flow's client asked for: the flow now shows it as https:// (it went over TLS). `url`: the
    flow's URL, when the caller has it already."""
    if url is None:
        url = pretty_url(flow.request)
    return clip("http" + url[len("https") :] if url.startswith("https:") else url, URL_CHARS)


def label_attempt(attempt: http.HTTPFlow, flow: http.HTTPFlow) -> None:
    """Say on a TLS attempt's own flow (a copy of `flow`'s request, listed by mitmweb and the console as a replay)
    whose attempt it is, before any hook or UI sees it: its marker, and a comment naming the flow and its URL."""
    attempt.marked = ATTEMPT_MARKER
    attempt.comment = (
        f"{PREFIX}: TLS attempt for flow {flow.id} ({clip(flow.request.pretty_url, URL_CHARS)}): "
        "its request sent again over TLS"
    )


def attempt_ended(attempt: http.HTTPFlow, failure: Failure | None) -> None:
    """Add how a TLS attempt ended to its flow's comment: answered (the client of the flow it serves got this
    answer), or failed and why."""
    served = attempt.metadata.get(UPGRADE_METADATA_KEY, "?")
    if failure is not None:
        line = f"{PREFIX}: failed: {failure}; flow {served}'s client did not get an answer over TLS"
    else:
        response = attempt.response
        status = f"{response.status_code} {response.reason}".rstrip() if response is not None else "?"
        line = f"{PREFIX}: answered {status}; flow {served}'s client got this answer"
    # Said once: a later word on the outcome (the answer was too large, or not HTTP after all) replaces an earlier one.
    lines = [s for s in attempt.comment.splitlines() if not s.startswith(_ATTEMPT_OUTCOMES)]
    attempt.comment = "\n".join([*lines, line])


_ATTEMPT_OUTCOMES = (f"{PREFIX}: failed: ", f"{PREFIX}: answered ")


def log_detection(flow: http.HTTPFlow, record: FlowRecord, action: str) -> None:
    """The one warning a detection gets: where (the URL, then the address the connection went to: the URL is made
    from the Host header), what came back, what esrs-fix did, and why it happens. Every field that came from the
    network is escaped and cut short (`printable`): a bounded line that cannot draw on the terminal."""
    seen = record.seen
    # nothing answered when the TLS connection to the upstream proxy failed (the server has no address, or one never
    # reached): no "answered by" then, the upstream proxy is named
    reached = record.upstream != UNKNOWN and "upstream_proxy_spec" not in seen
    answered = f" answered by {printable(record.upstream)}" if reached else ""
    log.warning(
        "esrs-fix: %s%s%s: %s [%s, confidence %s; %s]. %s",
        printable(flow.request.pretty_url),
        answered,
        f" via upstream proxy {printable(record.upstream_proxy)}" if record.upstream_proxy else "",
        printable(record.summary, None),
        seen.get("kind"),
        seen.get("confidence"),
        printable(action, 600),
        printable(str(seen.get("explanation", "")), None),
    )


def attempt_summary(attempt: http.HTTPFlow, url: str | None = None) -> dict[str, Any]:
    """What a TLS attempt (an upgrade's copy, or a flow sent as learned) got: the record's `upgrade`. `url`: the
    attempt's, when the caller has it already."""
    conn = attempt.server_conn
    response = attempt.response
    return {
        "flow": attempt.id,
        "url": clip(pretty_url(attempt.request) if url is None else url, URL_CHARS),
        "status": response.status_code if response else None,
        "reason": clip(response.reason, 256) if response else None,
        "tls_version": conn.tls_version,
        "sni": conn.sni,
        "error": clip(attempt.error.msg, 1024) if attempt.error else None,
    }


def address(peer: tuple | None) -> str:
    """A connection's address as esrs-fix writes it (`unknown` when there is none)."""
    return hostport(str(peer[0]), peer[1]) if peer else UNKNOWN


#: The address of a connection that has none (it was never made).
UNKNOWN = "unknown"


def upstream_proxy(flow: http.HTTPFlow) -> str | None:
    """The upstream proxy of upstream mode (from the flow's mode, so that it is known before any connection)."""
    via = flow.server_conn.via
    if via:
        return address(via[1])
    mode = flow.client_conn.proxy_mode
    if getattr(mode, "type_name", "") == "upstream":
        return address(mode.address)  # type: ignore[attr-defined]
    return None


def finding_of(entry: Entry) -> Finding:
    """What a learned target's plaintext attempt got, for its answers (the summary and kind it was learned with)."""
    return Finding(fnd.Kind(entry.kind), fnd.Confidence.HIGH, "", detail=entry.plaintext_answer)


def iso(timestamp: float) -> str:
    """A time as esrs-fix writes it: ISO 8601, UTC, to the second."""
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat(timespec="seconds")
