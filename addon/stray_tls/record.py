"""The one record of what esrs-fix saw and did to a flow, and everything said about the flow, made from it.

`Record` is written once per flow. The flow's metadata (`flow.metadata["esrs_fix"]`, kept in `-w` files and read
by the TLS records view), the report line, the marker, the comment and the log line all come from it, so that they
cannot disagree, and a flow served as learned is recorded with the same keys as a healed one.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mitmproxy import http

from .names import HEALED_MARKER, MARKER, METADATA_KEY, PREFIX, hostport
from .report import ReportWriter

log = logging.getLogger("esrs_fix")

#: What every finding contributes (`Finding.to_dict`); a finding may add keys of its own (`http_status`, ...).
FINDING_KEYS = ("kind", "confidence", "summary", "explanation", "records", "raw_hex")
#: What a report line has besides the record.
REPORT_KEYS = ("time", "client", "method", "url")


@dataclass(frozen=True, kw_only=True)
class Record:
    """What esrs-fix saw and did to one flow: detected, rewritten, healed, learned, or failed."""

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

    @property
    def summary(self) -> str:
        return str(self.seen.get("summary", ""))

    def to_dict(self) -> dict[str, Any]:
        """The flow's metadata and the report's fields: the finding's keys, then the record's own."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "seen"}
        return {**self.seen, **own}


def keys() -> tuple[str, ...]:
    """Every key a record has in the flow's metadata (a finding may add more)."""
    return FINDING_KEYS + tuple(f.name for f in dataclasses.fields(Record) if f.name != "seen")


def annotate(flow: http.HTTPFlow, record: Record, report: ReportWriter | None) -> None:
    """Mark, comment, record and report one flow (the log line is the caller's: only detections are news)."""
    healed = record.upgraded
    if not flow.marked:  # a marker the user set stays
        flow.marked = HEALED_MARKER if healed else MARKER
    note = f"{PREFIX}: " + (f"healed over TLS; plaintext got {record.summary}" if healed else record.summary)
    flow.comment = f"{flow.comment}\n{note}" if flow.comment else note  # what the user typed stays
    meta = record.to_dict()
    flow.metadata[METADATA_KEY] = meta
    if report is not None:
        report.write(
            {
                "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
                "client": address(flow.client_conn.peername),
                "method": flow.request.method,
                "url": flow.request.pretty_url,
                **meta,
            }
        )


def log_detection(flow: http.HTTPFlow, record: Record, action: str) -> None:
    """The one warning a detection gets: where, what came back, what esrs-fix did, and why it happens."""
    seen = record.seen
    log.warning(
        "esrs-fix: %s answered by %s%s: %s [%s, confidence %s; %s]. %s",
        flow.request.pretty_url,
        record.upstream,
        f" via upstream proxy {record.upstream_proxy}" if record.upstream_proxy else "",
        record.summary,
        seen.get("kind"),
        seen.get("confidence"),
        action,
        seen.get("explanation", ""),
    )


def attempt_summary(attempt: http.HTTPFlow) -> dict[str, Any]:
    """What a TLS attempt (a heal's copy, or a flow sent as learned) got: the record's `upgrade`."""
    conn = attempt.server_conn
    response = attempt.response
    return {
        "flow": attempt.id,
        "url": attempt.request.pretty_url,
        "status": response.status_code if response else None,
        "reason": response.reason if response else None,
        "tls_version": conn.tls_version,
        "sni": conn.sni,
        "error": attempt.error.msg if attempt.error else None,
    }


def address(peer: tuple | None) -> str:
    """A connection's address as esrs-fix writes it (`unknown` when there is none)."""
    return hostport(str(peer[0]), peer[1]) if peer else "unknown"
