"""Multi-line renderings of decoded records (pure): one place for the CLI, the console command and the content view."""

from __future__ import annotations

import re

from . import findings, frames, records
from .records import Record

#: Bytes of a record's data shown in hex: the line stays within 76 columns (the TLS records view, a terminal).
DATA_BYTES = 12


def record_lines(r: Record, base: int = 0) -> list[str]:
    """Offset (`base` added: where the decoded bytes start in what was pasted), content type, version, length, and
    what the record holds, one field a line."""
    lines = [
        f"record at offset {base + r.offset}: {records.describe(r)}",
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


def decode_text(data: bytes, start: int = 0) -> tuple[str, bool]:
    """The full decode of pasted bytes, and whether they were TLS records.

    `start` is where the bytes stood in the frame (a hex dump's first offset). Bytes that start a frame and hold
    together as one (see `frames`) are a frame: its TCP endpoints and its payload's offset come first, then the
    payload's decode, with offsets counted in the frame as Wireshark counts them.
    """
    frame = pasted_frame(data, start)
    if frame is None:
        where = f" from offset {start} (0x{start:04x}) of a hex dump" if start else ""
        return _decode_payload(data, start, [f"{len(data)} bytes{where}: {records.hexdump(data, 64)}"])
    head = [f"{len(data)} bytes: a frame: {frame.layers} [{frame.flag_names}]"]
    if frame.missing:
        head.append(f"the frame is cut short: {frame.missing} bytes of its TCP payload were not pasted")
    where = f"{frame.src} -> {frame.dst}, payload at offset {frame.offset}"
    if not frame.payload:
        head.append(f"{where}: the TCP payload is empty: nothing to decode; paste the frame that carries the bytes")
        return "\n".join(head), False
    head.append(f"{where}: {summary(frame.payload, frame.offset)}")
    head.append(f"payload, {len(frame.payload)} bytes: {records.hexdump(frame.payload, 64)}")
    return _decode_payload(frame.payload, frame.offset, head)


def pasted_frame(data: bytes, start: int = 0) -> frames.Frame | None:
    """The frame that pasted bytes are, if they are one: only bytes from a dump's offset 0 can be."""
    return frames.find_payload(data) if start == 0 else None


def summary(data: bytes, base: int = 0) -> str:
    """One line for what bytes are: the records' summary, or why they are no complete TLS record."""
    decoded = records.decode(data)
    if isinstance(decoded, records.Records):
        return records.describe_all(decoded.records)
    return _no_records(decoded, base)


def _no_records(decoded: records.NeedMore | records.NotTLS, base: int) -> str:
    if isinstance(decoded, records.NotTLS):
        return f"not TLS: {_shifted(decoded.reason, base)}"
    return f"incomplete TLS record: {decoded.buffered} of {decoded.needed} bytes"


_AT_OFFSET = re.compile(r"\bat offset (\d+)")


def _shifted(reason: str, base: int) -> str:
    """The decoder's reason with its offsets counted from where the decoded bytes start in what was pasted."""
    return _AT_OFFSET.sub(lambda m: f"at offset {base + int(m.group(1))}", reason) if base else reason


def _decode_payload(data: bytes, base: int, out: list[str]) -> tuple[str, bool]:
    decoded = records.decode(data)
    if not isinstance(decoded, records.Records):
        out.append(_no_records(decoded, base))
        return "\n".join(out), False
    for r in decoded.records:
        out.extend(record_lines(r, base))
    if decoded.rest:
        state = "an incomplete record" if decoded.rest_incomplete else "not TLS"
        out.append(f"then {len(decoded.rest)} more bytes ({state}): {records.hexdump(decoded.rest, 32)}")
    finding = findings.from_response_head(data)
    if finding is not None:
        out += ["", f"meaning: {finding.explanation}"]
    return "\n".join(out), True
