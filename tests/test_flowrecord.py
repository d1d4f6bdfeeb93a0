"""The flow's record, as the lean path for learned requests writes it: the same marker, comment, metadata and report
line as the general record, and the same URL as mitmproxy's `pretty_url`."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.test import tflow

from stray_tls.core.names import LEARNED_MARKER, METADATA_KEY
from stray_tls.mitm import flowrecord
from stray_tls.mitm.flowrecord import FlowRecord, annotate, annotate_served, pretty_url
from stray_tls.mitm.learned import LearnedTargets, Target
from stray_tls.mitm.report import ReportWriter

ALERT = "TLS alert: fatal unexpected_message (10), record version TLS 1.0"


def served_flow(host: str, port: int, path: str, host_header: str | None, via: str | None) -> http.HTTPFlow:
    """A flow as a learned request leaves mitmproxy: sent over TLS (through an upstream proxy at `via`), answered."""
    flow = tflow.tflow(resp=True)
    if via is not None:
        flow.server_conn.via = ("http", (via, 3128))
    flow.request.scheme = "https"
    flow.request.host, flow.request.port, flow.request.path = host, port, path
    flow.request.authority = ""
    flow.request.headers.pop("host", None)
    if host_header is not None:
        flow.request.headers["host"] = host_header
    flow.server_conn.tls_version = "TLSv1.3"
    flow.server_conn.sni = host
    flow.marked = ""
    flow.comment = ""
    return flow


def written(flow: http.HTTPFlow, report: io.StringIO) -> tuple[str, str, dict[str, Any], list[dict[str, Any]]]:
    """What a record wrote: marker, comment, metadata and report lines, with the flow's own id and the time left out
    (each flow here has an id of its own)."""
    meta = json.loads(json.dumps(flow.metadata[METADATA_KEY]))
    assert meta["upgrade"].pop("flow") == flow.id
    lines = [json.loads(line) for line in report.getvalue().splitlines()]
    for line in lines:
        assert line.pop("flow") == line["upgrade"].pop("flow") == flow.id
        del line["time"]
    return flow.marked, flow.comment, meta, lines


CASES = [
    ("esrs.lab", 443, "/", "esrs.lab", None, {"taught_by": "f-1", "kind": "tls_records", "summary": ALERT}),
    ("10.0.0.7", 8443, "/a?b=c", "esrs.example:8443", None, {}),  # the Host header's name, as mitmproxy's URL says
    ("::1", 443, "/v6", None, None, {"summary": ALERT}),
    ("esrs.lab", 443, "/" + "x" * 3000, "esrs.lab", None, {"taught_by": "f-2"}),  # a URL the record cuts short
    ("esrs.lab", 443, "/up", "esrs.lab", "proxy.lab", {"taught_by": "f-3"}),  # through an upstream proxy
]


@pytest.mark.parametrize(("host", "port", "path", "host_header", "via", "evidence"), CASES)
def test_a_served_learned_flow_gets_the_record_the_general_path_makes(
    host, port, path, host_header, via, evidence
) -> None:
    learned = LearnedTargets()
    target = Target(host, port, f"{via}:3128" if via else None)
    learned.remember(target, ALERT, "tls_records", evidence)
    entry = learned.lookup(target)
    assert entry is not None
    got = []
    for served in (True, False, True):  # the second served flow reads the part and the URL prefix the first made
        flow = served_flow(host, port, path, host_header, via)
        report = io.StringIO()
        if served:
            annotate_served(flow, entry, ReportWriter("report", report))
        else:
            record = FlowRecord.of(flow, None, entry=entry, attempt=flow, upgraded=True, learned=True)
            annotate(flow, record, ReportWriter("report", report))
        got.append(written(flow, report))
    assert got[0] == got[1] == got[2]
    assert list(got[0][2]) == list(got[1][2])  # the same keys, in the same order
    assert got[0][0] == LEARNED_MARKER and "learned: the client asked for http://" in got[0][1]


hosts = st.sampled_from(["esrs.lab", "10.0.0.7", "::1", "xn--bcher-kva.example", "b\u00fccher.example", "EXAMPLE.com"])
host_headers = st.one_of(
    st.none(),
    hosts,
    st.builds(lambda h, p: f"{h}:{p}", st.sampled_from(["esrs.lab", "[::1]", "10.0.0.7"]), st.integers(1, 65535)),
    st.text(max_size=20),  # whatever a client sends
)
paths = st.one_of(st.just("*"), st.just(""), st.text(max_size=30).map(lambda t: "/" + t))


@settings(max_examples=300, deadline=None)
@given(
    scheme=st.sampled_from(["http", "https"]),
    host=hosts,
    port=st.integers(1, 65535),
    host_header=host_headers,
    other_header=host_headers,
    first=paths,
    then=paths,
    method=st.sampled_from(["GET", "POST", "CONNECT"]),
    version=st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0"]),
    authority=st.sampled_from(["", "esrs.lab:443", "[::1]:8443"]),
)
def test_pretty_url_is_mitmproxys_for_every_request(
    scheme, host, port, host_header, other_header, first, then, method, version, authority
) -> None:
    flowrecord._URL_PREFIXES.clear()
    # the second is made from the prefix the first left, when it could (the same target, the same Host header or not)
    for path, header in ((first, host_header), (then, host_header), (then, other_header)):
        request = http.Request.make(method, f"{scheme}://example.com/", headers={})
        request.host, request.port, request.path = host, port, path
        request.http_version, request.authority = version, authority
        if header is not None:
            request.headers["Host"] = header
        assert pretty_url(request) == request.pretty_url
