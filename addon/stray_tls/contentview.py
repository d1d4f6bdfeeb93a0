"""The "TLS records" content view, for mitmweb, the mitmproxy console and `mitmdump --flow-detail`.

What it shows is decided here; how it plugs into mitmproxy 11's or 12's content-view API is `compat`'s business.
"""

from __future__ import annotations

import textwrap
from typing import Any

from mitmproxy import http

from . import compat, records, text
from .names import METADATA_KEY, VIEW_NAME

#: The explanation's width: it reads in mitmweb's response pane and an 80-column console without scrolling.
WRAP = 76
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
    if meta.get("rewritten"):
        action = f"rewritten to a synthetic {meta.get('rewritten_status')}"
    elif meta.get("upgraded"):
        action = "healed over TLS" + (" (learned target)" if meta.get("learned") else "")
    else:
        action = "not rewritten"
    lines = [
        *textwrap.wrap(f"esrs-fix: {meta.get('summary', '')}", WRAP, subsequent_indent="  "),
        f"kind {meta.get('kind')}, confidence {meta.get('confidence')}; {action}",
    ]
    upgrade = meta.get("upgrade") or {}
    if meta.get("upgraded"):
        lines += [
            "",
            f"the client got the server's own answer over TLS: HTTP {upgrade.get('status')} {upgrade.get('reason')}",
            f"  {upgrade.get('url')}, {upgrade.get('tls_version')}, SNI {upgrade.get('sni')}",
            "(the body is the server's: choose another view to read it)",
        ]
    elif meta.get("upgrade_error"):
        lines += ["", *textwrap.wrap(f"the TLS attempt failed: {meta['upgrade_error']}", WRAP, subsequent_indent="  ")]
    lines += [
        "",
        "what the plaintext attempt got"
        + (f" ({len(raw)} bytes): {records.hexdump(raw, 64)}" if raw else ": (no bytes)"),
    ]
    if isinstance(decoded, records.Records):
        for r in decoded.records:
            lines += text.record_lines(r)
    lines += ["", *textwrap.wrap(str(meta.get("explanation", "")), WRAP)]
    return "\n".join(lines)


def priority(data: bytes, flow: Any = None, message: Any = None) -> float:
    """Win for TLS bodies and the addon's own answers; stay out of the way (< 0) for everything else.

    A healed flow's body is the server's own: its usual view wins, and this one stays a choice away.
    """
    if _body_records(data) is not None:
        return PRIORITY
    meta = _finding_meta(flow, message)
    if meta is not None and not meta.get("upgraded"):
        return PRIORITY
    return -1


def register() -> Any:
    """Add the view; returns what `unregister` needs."""
    return compat.register_view(VIEW_NAME, render, priority)


def unregister(view: Any) -> None:
    compat.unregister_view(view)
