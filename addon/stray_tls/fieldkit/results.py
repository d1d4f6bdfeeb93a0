"""What `esrs-fix pcap` found: each stray exchange with its Wireshark coordinates, and the scan's counts."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from ..core.findings import Finding


@dataclass
class StrayExchange:
    """One HTTP request whose answer was not HTTP (or was the server's plain-HTTP complaint)."""

    time: float
    client: str
    server: str
    request_line: str
    finding: Finding
    #: Wireshark's frame number of the answer's first packet (of the request's when no answer came).
    frame: int = 0
    #: Wireshark's `tcp.stream` index of the connection.
    tcp_stream: int = 0
    #: The capture time of the answer's first packet (None: no answer came, the server closed).
    answer_time: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": iso(self.time),
            "client": self.client,
            "server": self.server,
            "request_line": self.request_line,
            "frame": self.frame,
            "tcp_stream": self.tcp_stream,
            "answer_time": iso(self.answer_time) if self.answer_time is not None else None,
            **self.finding.to_dict(),
        }


@dataclass
class ScanResult:
    packets: int = 0
    tcp_streams: int = 0
    requests: int = 0
    exchanges: list[StrayExchange] = field(default_factory=list)
    damaged: str = ""  # why the scan stopped early, if it did
    requests_unkept: int = 0  # requests beyond MAX_OUTSTANDING on one connection: counted, line not kept
    #: Requests still waiting for an answer when the capture ended or the client closed: no finding either way.
    requests_unanswered: int = 0
    #: Bytes missing from the capture (a lost segment) that were stepped over, and how many of those lost the
    #: framing of their direction, so that later answers on that connection were not read.
    gaps: int = 0
    gaps_unread: int = 0
    #: Messages with both Transfer-Encoding and Content-Length: read as chunked (RFC 9112), but a sign of a broken or
    #: smuggling hop.
    framing_conflicts: int = 0
    #: Messages whose framing could not be read (a Content-Length that is no number, a chunk size that is none): the
    #: rest of that direction is not read.
    unframed: int = 0


def iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
