"""Multi-line renderings of decoded records (pure): one place for the CLI, the console command and the content view."""

from __future__ import annotations

from . import findings, records
from .records import Record

#: Bytes of a record's data shown in hex: the line stays within 76 columns (the TLS records view, a terminal).
DATA_BYTES = 12


def record_lines(r: Record) -> list[str]:
    """Offset, content type, version, length, and what the record holds, one field a line."""
    lines = [
        f"record at offset {r.offset}: {records.describe(r)}",
        f"  content type  {r.content_type_name} ({r.content_type}){'  [SSLv2 framing]' if r.sslv2 else ''}",
        f"  version       {r.version_name} (0x{r.version:04x})",
        f"  length        {r.length}",
    ]
    if (alert := r.alert) is not None:
        lines.append(f"  level         {alert.level_name} ({alert.level})")
        lines.append(f"  description   {alert.description_name} ({alert.description})")
    elif r.handshake_types:
        names = ", ".join(f"{records.registry.HANDSHAKE_TYPES.get(t, 'unknown')} ({t})" for t in r.handshake_types)
        lines.append(f"  handshake     {names}")
    elif r.length:
        lines.append(f"  data          {records.hexdump(r.fragment, DATA_BYTES)}")
    return lines


def decode_text(data: bytes) -> tuple[str, bool]:
    """The full decode of pasted bytes, and whether they were TLS records."""
    out = [f"{len(data)} bytes: {records.hexdump(data, 64)}"]
    decoded = records.decode(data)
    if isinstance(decoded, records.NotTLS):
        out.append(f"not TLS: {decoded.reason}")
        return "\n".join(out), False
    if isinstance(decoded, records.NeedMore):
        out.append(f"incomplete TLS record: {decoded.buffered} of {decoded.needed} bytes")
        return "\n".join(out), False
    for r in decoded.records:
        out.extend(record_lines(r))
    if decoded.rest:
        state = "an incomplete record" if decoded.rest_incomplete else "not TLS"
        out.append(f"then {len(decoded.rest)} more bytes ({state}): {records.hexdump(decoded.rest, 32)}")
    finding = findings.from_response_head(data)
    if finding is not None:
        out += ["", f"meaning: {finding.explanation}"]
    return "\n".join(out), True
