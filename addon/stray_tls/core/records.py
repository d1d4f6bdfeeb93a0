"""Decode TLS records from a byte buffer: a small sans-IO core (no mitmproxy, no I/O).

`decode(data)` answers one of three things about the start of `data`:

- `Records`: one or more complete records, plus whatever followed them;
- `NeedMore`: the bytes so far are a plausible but incomplete record (wait for more);
- `NotTLS`: the bytes cannot be the start of a TLS record.

It never raises on any input: unknown codes decode to their number.  The verdict is monotonic as bytes
are appended: `NotTLS` stays `NotTLS`; once `needed` bytes are there, `NeedMore` gives way to `Records`, to
`NotTLS` (a complete header that no record may have), or to a `NeedMore` that needs more (the header is complete
and now the fragment is awaited).

`describe(record)` is *the* one-line summary (`TLS alert: fatal unexpected_message (10), record version TLS
1.0`); every consumer (log, comment, synthetic response, report, CLI, lab) uses it, never its own words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import registry

#: Record header: content type (1), version (2), length (2).
HEADER_LEN = 5
#: Upper bound of a TLSCiphertext fragment (RFC 5246, 6.2.3): 2^14 + 2048.
MAX_FRAGMENT = 2**14 + 2048
#: Content types that can appear on a TLS-over-TCP stream (25..27 exist only in DTLS).
STREAM_CONTENT_TYPES = range(20, 25)

CHANGE_CIPHER_SPEC = 20
ALERT = 21
HANDSHAKE = 22
APPLICATION_DATA = 23

#: An SSLv2-framed record's header: two length bytes (the message type is the fragment's first byte).
SSL2_HEADER_LEN = 2
SSL2_ERROR = 0


def could_start_tls(first_byte: int) -> bool:
    """The hot-path test: can a buffer whose first byte is `first_byte` be TLS?

    An HTTP/1 status line starts with `H`; TLS records start with 20..24 and SSLv2-framed records with a byte
    >= 0x80, so one comparison or two settle clean traffic.
    """
    return 20 <= first_byte <= 24 or first_byte >= 0x80


@dataclass(frozen=True, slots=True)
class Alert:
    level: int
    description: int

    @property
    def level_name(self) -> str:
        return registry.ALERT_LEVELS.get(self.level, f"level {self.level}")

    @property
    def description_name(self) -> str:
        return registry.alert_description_name(self.description)

    def describe(self) -> str:
        """`fatal unexpected_message (10)`: the registry's words, then the code."""
        return f"{self.level_name} {self.description_name} ({self.description})"


@dataclass(frozen=True, slots=True)
class Record:
    """One complete record as it stood in the buffer."""

    offset: int
    content_type: int
    version: int
    fragment: bytes
    sslv2: bool = False

    @property
    def length(self) -> int:
        return len(self.fragment)

    @property
    def content_type_name(self) -> str:
        if self.sslv2:
            return registry.SSL2_MESSAGE_TYPES.get(self.content_type, "unknown")
        return registry.CONTENT_TYPES.get(self.content_type, "unknown")

    @property
    def version_name(self) -> str:
        return registry.version_name(self.version)

    @property
    def alert(self) -> Alert | None:
        """The alert of a plaintext alert record; None for anything else (an encrypted alert is longer)."""
        if self.sslv2 or self.content_type != ALERT or len(self.fragment) != 2:
            return None
        return Alert(self.fragment[0], self.fragment[1])

    @property
    def ssl2_error(self) -> int | None:
        if self.sslv2 and self.content_type == SSL2_ERROR and len(self.fragment) >= 3:
            return int.from_bytes(self.fragment[1:3], "big")
        return None

    @property
    def handshake_types(self) -> tuple[int, ...]:
        """The message types of the complete handshake messages in this record, in order."""
        if self.sslv2 or self.content_type != HANDSHAKE:
            return ()
        types: list[int] = []
        pos = 0
        while pos + 4 <= len(self.fragment):
            body_len = int.from_bytes(self.fragment[pos + 1 : pos + 4], "big")
            if pos + 4 + body_len > len(self.fragment):
                break
            types.append(self.fragment[pos])
            pos += 4 + body_len
        if not types and self.fragment:
            types.append(self.fragment[0])  # a message split over records: its type is still known
        return tuple(types)

    def encode(self) -> bytes:
        """The record's bytes, exactly as decoded."""
        if self.sslv2:
            n = len(self.fragment)
            return bytes([0x80 | (n >> 8), n & 0xFF]) + self.fragment
        return encode_record(self.content_type, self.version, self.fragment)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "offset": self.offset,
            "framing": "sslv2" if self.sslv2 else "tls",
            "content_type": self.content_type,
            "content_type_name": self.content_type_name,
            "version": self.version,
            "version_name": self.version_name,
            "length": self.length,
            "summary": describe(self),
        }
        if (alert := self.alert) is not None:
            d["alert"] = {
                "level": alert.level,
                "level_name": alert.level_name,
                "description": alert.description,
                "description_name": alert.description_name,
            }
        if hs := self.handshake_types:
            d["handshake_types"] = [{"type": t, "name": _handshake_name(t)} for t in hs]
        if (err := self.ssl2_error) is not None:
            d["ssl2_error"] = {"code": err, "name": registry.SSL2_ERRORS.get(err, "unknown")}
        return d


@dataclass(frozen=True, slots=True)
class Records:
    """Complete records at the start of the buffer, and what came after them."""

    records: tuple[Record, ...]
    rest: bytes = b""
    #: True when `rest` is itself the plausible start of a record that has not fully arrived.
    rest_incomplete: bool = False

    @property
    def size(self) -> int:
        """How many bytes the complete records take."""
        return sum((SSL2_HEADER_LEN if r.sslv2 else HEADER_LEN) + r.length for r in self.records)


@dataclass(frozen=True, slots=True)
class NeedMore:
    """A plausible record has begun; `needed` bytes in all would complete it (or its header)."""

    buffered: int
    needed: int


@dataclass(frozen=True, slots=True)
class NotTLS:
    reason: str


Decoded = Records | NeedMore | NotTLS


def encode_record(content_type: int, version: int, fragment: bytes) -> bytes:
    """A TLS record with the given fields; raises ValueError for values that do not fit the header."""
    if not 0 <= content_type <= 0xFF or not 0 <= version <= 0xFFFF or len(fragment) > 0xFFFF:
        raise ValueError("record field out of range")
    return bytes([content_type]) + version.to_bytes(2, "big") + len(fragment).to_bytes(2, "big") + fragment


def encode_alert(level: int, description: int, version: int = 0x0301) -> bytes:
    """A plaintext alert record: `encode_alert(2, 10)` is `15 03 01 00 02 02 0a`."""
    return encode_record(ALERT, version, bytes([level, description]))


def _check_tls_header(data: bytes | bytearray | memoryview, pos: int) -> NeedMore | NotTLS | int:
    """Validate the TLS header at `pos`: the fragment length if complete, else why not / how much more."""
    avail = len(data) - pos
    ct = data[pos]
    if ct not in STREAM_CONTENT_TYPES:
        return NotTLS(f"byte 0x{ct:02x} at offset {pos} is no TLS content type")
    if avail >= 2 and data[pos + 1] != 0x03:
        return NotTLS(f"record version major byte 0x{data[pos + 1]:02x} at offset {pos + 1} is not 3")
    if avail < HEADER_LEN:
        return NeedMore(avail, HEADER_LEN)
    length = (data[pos + 3] << 8) | data[pos + 4]
    if length > MAX_FRAGMENT:
        return NotTLS(f"record length {length} at offset {pos + 3} exceeds {MAX_FRAGMENT}")
    if length == 0 and ct != APPLICATION_DATA:
        return NotTLS(f"empty {registry.CONTENT_TYPES[ct]} record at offset {pos}")
    if avail < HEADER_LEN + length:
        return NeedMore(avail, HEADER_LEN + length)
    return length


def _check_ssl2_header(data: bytes | bytearray | memoryview, pos: int) -> NeedMore | NotTLS | int:
    avail = len(data) - pos
    if avail < 3:
        return NeedMore(avail, 3)
    length = ((data[pos] & 0x7F) << 8) | data[pos + 1]
    msg_type = data[pos + 2]
    if length == 0 or msg_type not in registry.SSL2_MESSAGE_TYPES:
        return NotTLS(f"no SSLv2 message at offset {pos}")
    if avail < 2 + length:
        return NeedMore(avail, 2 + length)
    return length


def decode(data: bytes | bytearray | memoryview) -> Decoded:
    """Decode the TLS records at the start of `data` (see the module docstring)."""
    data = bytes(data)
    if not data:
        return NeedMore(0, 1)
    records: list[Record] = []
    pos = 0
    while pos < len(data):
        sslv2 = data[pos] >= 0x80
        checked = _check_ssl2_header(data, pos) if sslv2 else _check_tls_header(data, pos)
        if isinstance(checked, NeedMore | NotTLS):
            if not records:
                return checked
            return Records(tuple(records), data[pos:], rest_incomplete=isinstance(checked, NeedMore))
        if sslv2:
            start = pos + SSL2_HEADER_LEN
            records.append(Record(pos, data[start], 0x0002, data[start : start + checked], sslv2=True))
            pos = start + checked
        else:
            version = (data[pos + 1] << 8) | data[pos + 2]
            records.append(Record(pos, data[pos], version, data[pos + 5 : pos + 5 + checked]))
            pos += HEADER_LEN + checked
    return Records(tuple(records))


def _handshake_name(msg_type: int) -> str:
    return registry.HANDSHAKE_TYPES.get(msg_type, "unknown")


def describe(record: Record) -> str:
    """The one-line summary of a record, in the registry's words."""
    if record.sslv2:
        if (err := record.ssl2_error) is not None:
            return f"SSLv2 error: {registry.SSL2_ERRORS.get(err, 'unknown')} (0x{err:04x})"
        return f"SSLv2 {record.content_type_name} ({record.content_type}): {record.length} bytes"
    where = f"record version {record.version_name}"
    if record.content_type == ALERT:
        if (alert := record.alert) is not None:
            return f"TLS alert: {alert.describe()}, {where}"
        return f"TLS alert: {record.length} bytes, encrypted or malformed, {where}"
    if record.content_type == HANDSHAKE:
        names = ", ".join(f"{_handshake_name(t)} ({t})" for t in record.handshake_types)
        return f"TLS handshake: {names}, {where}"
    if record.content_type == CHANGE_CIPHER_SPEC:
        return f"TLS change_cipher_spec, {where}"
    return f"TLS {record.content_type_name}: {record.length} bytes, {where}"


#: Records a one-line summary names at most (`describe_all`): an upstream may answer with thousands of records, and
#: the summary goes into a header, a log line and a report line.
DESCRIBED_RECORDS = 4


def describe_all(records: tuple[Record, ...] | list[Record], limit: int | None = DESCRIBED_RECORDS) -> str:
    """Several records in one line, in order, separated by `; `: the first `limit` (None: all), then how many more."""
    shown = records if limit is None else records[:limit]
    line = "; ".join(describe(r) for r in shown)
    if left := len(records) - len(shown):
        line += f"; and {left} more record{'s' if left > 1 else ''} ({len(records)} in all)"
    return line


def hexdump(data: bytes, limit: int | None = None) -> str:
    """`15 03 01 00 02 02 0a`: the spacing engineers paste from Wireshark; `limit` bytes at most."""
    shown = data if limit is None else data[:limit]
    text = shown.hex(" ")
    if limit is not None and len(data) > limit:
        text += f" ... ({len(data)} bytes)"
    return text
