"""The "TLS records" content view, for mitmweb, the mitmproxy console and `mitmdump --flow-detail`.

mitmproxy 11 and 12 have different content view APIs (11: `View.__call__` returning lines, priority with keyword
metadata, `add` refuses a duplicate name; 12: `Contentview.prettify(data, metadata)`, `add` replaces by name).
This module speaks whichever the running mitmproxy has; both are public API.
"""

from __future__ import annotations

import textwrap
from typing import Any

from mitmproxy import contentviews, http

from . import records, text

VIEW_NAME = "TLS records"
METADATA_KEY = "esrs_fix"
#: Above the built-in views' priorities (JSON and friends go up to 1), for bodies that are TLS records.
PRIORITY = 2.0


def _finding_meta(flow: Any, message: Any) -> dict[str, Any] | None:
    """The addon's finding, when it is about this message (the response of a flow the addon reported)."""
    if not isinstance(flow, http.HTTPFlow) or message is None or message is not flow.response:
        return None
    meta = flow.metadata.get(METADATA_KEY)
    return meta if isinstance(meta, dict) else None


def _body_records(data: bytes) -> records.Records | None:
    """The body's records, when the body is TLS records and nothing else (an incomplete last one allowed)."""
    if not data or not records.could_start_tls(data[0]):
        return None
    decoded = records.decode(data)
    if isinstance(decoded, records.Records) and (not decoded.rest or decoded.rest_incomplete):
        return decoded
    return None


def render(data: bytes, flow: Any = None, message: Any = None) -> str | None:
    """The view's text, or None when it does not apply to this body."""
    body = _body_records(data)
    if body is not None:
        lines = [f"{len(data)} bytes of TLS records in the body"]
        for r in body.records:
            lines += text.record_lines(r)
        if body.rest:
            lines.append(f"then an incomplete record: {records.hexdump(body.rest, 16)}")
        return "\n".join(lines)
    meta = _finding_meta(flow, message)
    if meta is None:
        return None
    raw = bytes.fromhex(meta.get("raw_hex", ""))
    decoded = records.decode(raw) if raw else None
    lines = [
        f"esrs-fix: {meta.get('summary', '')}",
        f"kind {meta.get('kind')}, confidence {meta.get('confidence')}; "
        + (f"rewritten to a synthetic {meta.get('rewritten_status')}" if meta.get("rewritten") else "not rewritten"),
        "",
        f"what the upstream sent ({len(raw)} bytes): {records.hexdump(raw, 64) if raw else '(nothing)'}",
    ]
    if isinstance(decoded, records.Records):
        for r in decoded.records:
            lines += text.record_lines(r)
    lines += ["", *textwrap.wrap(str(meta.get("explanation", "")), 100)]
    return "\n".join(lines)


def priority(data: bytes, flow: Any = None, message: Any = None) -> float:
    """Win for TLS bodies and the addon's own answers; stay out of the way (< 0) for everything else."""
    if _body_records(data) is not None or _finding_meta(flow, message) is not None:
        return PRIORITY
    return -1


#: mitmproxy 11's API (12 keeps a deprecated shim of it, which this module does not use there).
LEGACY_API = not hasattr(contentviews, "Contentview")

if not LEGACY_API:  # mitmproxy 12

    class TlsRecordsView(contentviews.Contentview):  # type: ignore[misc,name-defined,unused-ignore]
        @property
        def name(self) -> str:
            return VIEW_NAME

        def prettify(self, data: bytes, metadata: Any) -> str:
            rendered = render(data, metadata.flow, metadata.http_message)
            if rendered is None:
                raise ValueError("not TLS records")
            return rendered

        def render_priority(self, data: bytes, metadata: Any) -> float:
            return priority(data, metadata.flow, metadata.http_message)

else:  # mitmproxy 11

    class TlsRecordsView(contentviews.View):  # type: ignore[no-redef,misc,unused-ignore]
        name = VIEW_NAME

        def __call__(self, data: bytes, *, flow: Any = None, http_message: Any = None, **unknown: Any) -> Any:
            rendered = render(data, flow, http_message)
            if rendered is None:
                return "TLS records: not applicable", iter([[("text", records.hexdump(data, 64))]])
            return VIEW_NAME, iter([[("text", line)] for line in rendered.splitlines()])

        def render_priority(self, data: bytes, *, flow: Any = None, http_message: Any = None, **unknown: Any) -> float:
            return priority(data, flow, http_message)


def register() -> Any:
    """Add the view; returns what `unregister` needs."""
    view = TlsRecordsView()
    if LEGACY_API:  # 11: a name may be registered once, e.g. across a script reload
        for existing in list(getattr(contentviews, "views", [])):
            if existing.name == VIEW_NAME:
                contentviews.remove(existing)
    contentviews.add(view)
    return view


def unregister(view: Any) -> None:
    # 12 has no removal and replaces a view of the same name on the next add; 11 must remove it.
    if LEGACY_API and view in getattr(contentviews, "views", []):
        contentviews.remove(view)
