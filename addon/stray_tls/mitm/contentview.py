"""The "TLS records" content view, for mitmweb, the mitmproxy console and `mitmdump --flow-detail`.

What it shows is decided here; how it plugs into mitmproxy 11's or 12's content-view API is `compat`'s business.
"""

from __future__ import annotations

import textwrap
from typing import Any

from mitmproxy import http

from .. import compat
from ..core import records, text
from ..core.names import METADATA_KEY, VIEW_NAME

#: The width of every line the view renders: it reads in mitmweb's response pane and an 80-column console without
#: scrolling sideways.
WRAP = 76
#: Bytes per line of a hex dump in the view (16 bytes: 47 characters).
HEX_PER_LINE = 16
#: Bytes of the plaintext attempt's answer shown in hex at most (the rest is counted, not shown).
HEX_LIMIT = 64
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


def _hex_lines(data: bytes, limit: int = HEX_LIMIT) -> list[str]:
    """`data` in hex, HEX_PER_LINE bytes a line, indented; `limit` bytes at most, then how many there were."""
    shown = data[:limit]
    lines = [f"  {records.hexdump(shown[i : i + HEX_PER_LINE])}" for i in range(0, len(shown), HEX_PER_LINE)]
    if len(data) > limit:
        lines.append(f"  ... ({len(data)} bytes in all)")
    return lines


def _record_lines(r: records.Record) -> list[str]:
    """`text.record_lines`, with the one-line summary under its offset when the two do not fit on one line."""
    lines = text.record_lines(r)
    if len(lines[0]) > WRAP:
        lines[0:1] = [f"record at offset {r.offset}:", f"  {records.describe(r)}"]
    return lines


def _fit(lines: list[str]) -> str:
    """The lines, each wrapped to WRAP (a continuation indented two more than its line), joined."""
    fitted: list[str] = []
    for line in lines:
        if len(line) <= WRAP:
            fitted.append(line)
            continue
        indent = line[: len(line) - len(line.lstrip())]
        fitted += textwrap.wrap(
            line.strip(), WRAP, initial_indent=indent, subsequent_indent=indent + "  ", break_on_hyphens=False
        )
    return "\n".join(fitted)


def render(data: bytes, flow: Any = None, message: Any = None) -> str | None:
    """The view's text, or None when it does not apply to this body; no line is wider than WRAP."""
    body = _body_records(data)
    if body is not None:
        lines = [f"{len(data)} bytes of TLS records in the body"]
        for r in body.records:
            lines += _record_lines(r)
        if body.rest:
            lines += ["then an incomplete record:", *_hex_lines(body.rest)]
        return _fit(lines)
    meta = _finding_meta(flow, message)
    if meta is None:
        return None
    raw = bytes.fromhex(meta.get("raw_hex", ""))
    decoded = records.decode(raw) if raw else None
    if meta.get("rewritten"):
        action = f"rewritten to a synthetic {meta.get('rewritten_status')}"
    elif meta.get("upgraded"):
        action = "upgraded over TLS" + (" (learned target)" if meta.get("learned") else "")
    elif meta.get("upgrade_error"):
        action = "upgrade failed" + (" (learned target)" if meta.get("learned") else "")
    else:
        action = "not rewritten"
    lines = [
        f"esrs-fix: {meta.get('summary', '')}",
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
        lines += ["", f"the TLS attempt failed: {meta['upgrade_error']}"]
    lines += ["", f"what the plaintext attempt got {_size(len(raw), meta)}".rstrip() + ":"]
    lines += _hex_lines(raw) if raw else ["  (no bytes)" if not _cut(meta) else "  (not kept in this flow's record)"]
    if isinstance(decoded, records.Records):
        for r in decoded.records:
            lines += _record_lines(r)
    lines += ["", *textwrap.wrap(str(meta.get("explanation", "")), WRAP)]
    return _fit(lines)


def _cut(meta: dict[str, Any]) -> int:
    """How many of the plaintext attempt's bytes the record left out (`raw_truncated`; 0 in an older record)."""
    cut = meta.get("raw_truncated")
    return cut if isinstance(cut, int) and cut > 0 else 0


def _size(kept: int, meta: dict[str, Any]) -> str:
    """How much of the plaintext attempt's answer the record holds: all of it, or the first bytes of how many, or
    none (a flow answered with a remembered failure: `same_as` is the flow whose record has them)."""
    cut = _cut(meta)
    if not cut:
        return f"({kept} bytes)" if kept else ""
    if kept:
        return f"({kept + cut} bytes; the record keeps the first {kept})"
    same_as = meta.get("same_as")
    return f"({cut} bytes" + (f"; flow {same_as}'s record has them)" if same_as else ")")


def priority(data: bytes, flow: Any = None, message: Any = None) -> float:
    """Win for TLS bodies and the addon's own answers; stay out of the way (< 0) for everything else.

    An upgraded flow's body is the server's own: its usual view wins, and this one stays a choice away.
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
