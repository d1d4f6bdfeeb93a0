"""Read the bytes an engineer pastes: hex in any spelling, escaped strings, base64, hex dumps of any number of frames
from tshark, Wireshark, tcpdump or xxd, both sides of a followed TCP stream, C arrays (addresses: `addresses`)."""

from __future__ import annotations

import base64
import binascii
import itertools
import re
import string
from dataclasses import dataclass
from typing import NamedTuple

from . import frames, records


class PasteError(ValueError):
    """The pasted text is not bytes in any form we read; the message says why, in a sentence (and on which line)."""


@dataclass(frozen=True)
class Pasted:
    """Pasted bytes, and where the first of them stood in the frame: a hex dump's first offset, else 0.

    A paste that holds several pieces (frames, or the two sides of a followed stream) names each: `name` is
    `frame 2`, `client side`, ... (empty for the only piece), `note` what the tool printed about it (tcpdump's
    summary line, tshark's header, the side's address).
    """

    data: bytes
    start: int = 0
    name: str = ""
    note: str = ""


@dataclass(frozen=True)
class Paste:
    """What was pasted: the form it was read as (`hex dump`, `tcpdump`, `follow hex`, `base64`, ...) and its pieces."""

    form: str
    pieces: tuple[Pasted, ...]


def parse_pasted(text: str) -> bytes:
    """Read `15 03 01 00 02 02 0a`, `1503010002020a`, `\\x15\\x03...`, `0x15,0x03`, or a hex dump: the bytes of
    `read_pasted`."""
    return read_pasted(text).data


def read_pasted(text: str) -> Pasted:
    """The one piece of a paste (see `read_paste`); of several, the first that holds TLS records, else the first.

    Lines cut from the middle of a dump (`0010  15 03 01 00 02 02 0a`) are the bytes at that offset, and the offset
    is not data.
    """
    pieces = read_paste(text).pieces
    return pieces[0] if len(pieces) == 1 else next((p for p in pieces if holds_tls(p)), pieces[0])


def holds_tls(piece: Pasted) -> bool:
    """Whether the piece's bytes (a frame's TCP payload, when they are a frame) are TLS records."""
    frame = frames.find_payload(piece.data) if piece.start == 0 else None
    return isinstance(records.decode(piece.data if frame is None else frame.payload), records.Records)


def read_paste(text: str) -> Paste:
    """Every form we read, tried from the most to the least telling: C arrays, a followed stream (tshark
    `-z follow,tcp,hex|raw`, Wireshark's Follow TCP Stream as hex dump), quoted escaped strings, hex dumps of any
    number of frames (`tshark -x`, Wireshark's Copy as Hex Dump, `tcpdump -x/-xx/-X/-XX` with its summary lines,
    xxd), bare hex, base64."""
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise PasteError("nothing to decode: give the bytes as hex, e.g. 15 03 01 00 02 02 0a")
    for reader in (_read_c_arrays, _read_follow, _read_strings, _read_dumps):
        paste = reader(lines)
        if paste is not None:
            return paste
    compact = _SEPARATORS.sub("", text)
    if _HEX.match(compact) and len(compact) % 2 == 0:
        return Paste("hex", (Pasted(bytes.fromhex(compact)),))
    paste = _read_base64(lines)
    if paste is not None:
        return paste
    for number, line in enumerate(lines, 1):
        bad = next((c for c in _SEPARATORS.sub("", line) if c not in string.hexdigits), None)
        if bad is not None:
            raise PasteError(
                f"line {number}: not hex: unexpected character {bad!r} (column {line.index(bad) + 1}); expected "
                "bytes like 15 03 01 00 02 02 0a, a hex dump, C arrays, an escaped string or base64"
            )
    raise PasteError(f"odd number of hex digits ({len(compact)}): a byte needs two, e.g. 0a not a")


def _one(form: str, pieces: list[Pasted]) -> Paste:
    """The paste; the only piece goes unnamed (a paste of one frame reads as it always did)."""
    if len(pieces) == 1:
        pieces = [Pasted(pieces[0].data, pieces[0].start)]
    return Paste(form, tuple(pieces))


# -- hex dumps: one frame or many

# A hex dump line: an offset (Wireshark `0010`, tcpdump `0x0010:`, xxd `00000010:`), then the bytes, in pairs
# (Wireshark) or groups of four digits (tcpdump -X, xxd), then maybe an ASCII column, three spaces or more away
# on a short line (Wireshark pads the last line) and past the 16th byte on a full one.
_DUMP_OFFSET = re.compile(r"^(\s*)(?:0x)?([0-9a-fA-F]{4,8})(:?)(\s+)")
_DUMP_GROUP = re.compile(r"([0-9a-fA-F]{4}|[0-9a-fA-F]{2})(?=\s|$)")
_DUMP_GAP = re.compile(r" {1,2}(?! )")
#: Bytes on one dump line, at most.
DUMP_WIDTH = 16
_SEPARATORS = re.compile(r"\\x|0x|[\s,:;.\-]", re.I)
_HEX = re.compile(r"^[0-9a-fA-F]*$")


class _DumpLine(NamedTuple):
    offset: int
    data: bytes
    set_apart: bool  # the offset ends in a colon or two spaces, as dump tools write it
    pairs: bool  # the bytes stand in pairs (Wireshark), not in groups of four digits
    indent: str  # what stands before the offset (tcpdump: a tab; a followed stream's server side: a tab or spaces)


def _dump_line(line: str) -> _DumpLine | None:
    m = _DUMP_OFFSET.match(line)
    if m is None:
        return None
    data, pos, pairs = bytearray(), m.end(), True
    while len(data) < DUMP_WIDTH and (group := _DUMP_GROUP.match(line, pos)):
        data += bytes.fromhex(group.group(1))
        pairs = pairs and len(group.group(1)) == 2
        pos = group.end()
        gap = _DUMP_GAP.match(line, pos)
        if gap is None:
            break
        pos = gap.end()
    if not data:
        return None
    set_apart = bool(m.group(3)) or len(m.group(4)) >= 2
    return _DumpLine(int(m.group(2), 16), bytes(data), set_apart, pairs, m.group(1))


def _starts_frame(row: _DumpLine) -> bool:
    """A line that can only be a dump's first: offset zero, set apart or followed by byte pairs."""
    return row.offset == 0 and (row.set_apart or row.pairs)


def _read_dumps(lines: list[str]) -> Paste | None:
    """The frames of hex dumps, or None when the lines are no dump.

    Lines that are all dump lines, each offset following on from the line before, are one dump (a single line:
    when its offset could not be data: zero, or a multiple of 16 set apart or followed by byte pairs); lines whose
    offsets climb in steps of 16 with a line missing are a dump cut short (a sentence, not a guess). With a line
    at offset zero, the lines are frames: each starts at offset zero, and a line of text before it (tcpdump's
    summary line, tshark's `Frame (74 bytes):`) is its note; then a line out of place is an error that names it.
    """
    parsed = [(number, line, _dump_line(line)) for number, line in enumerate(lines, 1) if line.strip()]
    rows = [row for _, _, row in parsed if row is not None]
    if not rows:
        return None
    if len(rows) == len(parsed) and not any(_starts_frame(r) for r in rows[1:]):
        return _read_one_dump(rows)
    if not any(_starts_frame(r) for r in rows):
        return None
    frames_: list[Pasted] = []
    number_ = 0  # frames so far
    data = bytearray()
    start = end = 0
    note = ""
    last = 0  # the line number of the current frame's last dump line, 0 before the first frame
    pending: tuple[int, str] | None = None  # a line of text since then

    def close() -> None:
        nonlocal number_
        if not last:
            return
        source = _DATA_SOURCE.match(note)
        if frames_ and source and source.group(1) != "Frame":
            # tshark -x prints a frame's other data sources after it (`Reassembled TCP (7 bytes):`): of that frame
            frames_.append(Pasted(bytes(data), start, f"frame {number_}, {source.group(1)}"))
            return
        number_ += 1
        said = "" if source and source.group(1) == "Frame" else note  # `Frame (71 bytes)` says nothing new
        frames_.append(Pasted(bytes(data), start, f"frame {number_}", said))

    for number, line, row in parsed:
        if row is None:
            pending = pending or (number, line)
            continue
        if _starts_frame(row):
            close()
            data, start, last, end = bytearray(row.data), 0, number, len(row.data)
            note = _note(pending[1]) if pending else ""
            pending = None
            continue
        if last and row.offset == end:
            if pending is not None:
                raise PasteError(
                    f"line {pending[0]}: expected a hex dump line (offset 0x{end:04x}, then the bytes), got "
                    f"{_clip(pending[1])}"
                )
            data += row.data
            last, end = number, end + len(row.data)
        else:
            where = f"0x{end:04x} (line {last} ends there) or " if last else ""
            raise PasteError(
                f"line {number}: expected offset {where}0000 (a new frame), got 0x{row.offset:04x}: paste each "
                "frame whole, from its first line"
            )
    close()
    form = "tcpdump" if any(r.offset == 0 and r.indent == "\t" for r in rows) else "hex dump"
    return _one(form, frames_)


def _read_one_dump(rows: list[_DumpLine]) -> Paste | None:
    if len(rows) == 1:
        row = rows[0]
        if row.offset == 0 or (row.offset % 16 == 0 and (row.set_apart or row.pairs)):
            return Paste("hex dump", (Pasted(row.data, row.offset),))
        return None
    for row, following in itertools.pairwise(rows):
        if following.offset != row.offset + len(row.data):
            if following.offset > row.offset and all(r.offset % 16 == 0 for r in rows):
                raise PasteError(
                    f"the hex dump skips from offset 0x{row.offset:04x} ({len(row.data)} bytes) to "
                    f"0x{following.offset:04x}: paste its lines without a gap"
                )
            return None
    return Paste("hex dump", (Pasted(b"".join(r.data for r in rows), rows[0].offset),))


#: tshark -x's line above each data source of a frame: `Frame (74 bytes):`, `Reassembled TCP (7 bytes):`
_DATA_SOURCE = re.compile(r"^(.+?) \(\d+ bytes\)$")


def _note(line: str) -> str:
    """A tool's line about a frame, short: tcpdump's summary up to its first `: ` (time, protocol, addresses)."""
    head = line.strip().split(": ", 1)[0].rstrip(":")
    return head if len(head) <= 72 else head[:69] + "..."


def _clip(line: str) -> str:
    line = line.strip()
    return repr(line if len(line) <= 40 else line[:37] + "...")


# -- a followed TCP stream: tshark -z follow,tcp,hex|raw, Wireshark's Follow TCP Stream shown as hex dump

_FOLLOW = re.compile(r"^Follow: \w+,(hex|raw)\b")
_NODE = re.compile(r"^Node ([01]): (\S+)")
_FOLLOW_FRAME = re.compile(r"^(=+|Filter: .*|Follow: .*)$")
_SIDES = ("client side", "server side")


def _read_follow(lines: list[str]) -> Paste | None:
    """Both sides of a followed stream: the server's lines are indented (tshark: a tab; Wireshark: four spaces).

    A paste is a followed stream when it has tshark's `Follow: tcp,hex` header, or hex dump lines both indented
    and not (tcpdump indents them all, tshark -x none). Each side's offsets count that side's bytes.
    """
    header = next((m.group(1) for line in lines if (m := _FOLLOW.match(line.strip()))), None)
    if header is None:
        firsts: dict[bool, int] = {}  # indented or not -> the first such line's offset
        for line in lines:
            if (row := _dump_line(line)) is not None:
                firsts.setdefault(row.indent != "", row.offset)
        if firsts != {True: 0, False: 0}:  # both sides, each from its start
            return None
        header = "hex"
    nodes: dict[int, str] = {}
    sides: list[bytearray] = [bytearray(), bytearray()]
    for number, line in enumerate(lines, 1):
        bare = line.strip()
        if not bare or _FOLLOW_FRAME.match(bare):
            continue
        if m := _NODE.match(bare):
            nodes[int(m.group(1))] = m.group(2)
            continue
        side = int(line[:1].isspace())
        if header == "raw":
            if not _HEX.match(bare) or len(bare) % 2:
                raise PasteError(f"line {number}: expected the stream's bytes as a hex stream, got {_clip(line)}")
            sides[side] += bytes.fromhex(bare)
            continue
        row = _dump_line(line)
        expected = len(sides[side])
        if row is None:
            raise PasteError(
                f"line {number}: expected a hex dump line of the {_SIDES[side]} (offset {expected:08X}, then the "
                f"bytes), got {_clip(line)}"
            )
        if row.offset not in (expected, 0):
            raise PasteError(
                f"line {number}: expected offset {expected:08X} (the {_SIDES[side]}'s bytes so far), got "
                f"{row.offset:08X}: paste the stream without a gap"
            )
        sides[side] += row.data
    pieces = [Pasted(bytes(data), 0, _SIDES[i], nodes.get(i, "")) for i, data in enumerate(sides) if data]
    if not pieces:
        raise PasteError("the followed stream holds no bytes: paste its hex lines too")
    return Paste(f"follow {header}", tuple(pieces))


# -- C arrays (Wireshark's Follow TCP Stream as C Arrays: peer0 the client, peer1 the server)

_C_ARRAY = re.compile(r"(\w+)\s*\[\s*\d*\s*\]\s*=\s*\{(.*?)\}", re.S)
_C_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_C_BYTE = re.compile(r"^(0[xX][0-9a-fA-F]{1,2}|\d{1,3})$")
_PEER = re.compile(r"^peer([01])_\d+$")


def _read_c_arrays(lines: list[str]) -> Paste | None:
    text = "\n".join(lines)
    arrays = list(_C_ARRAY.finditer(text))
    if not arrays:
        return None
    pieces: dict[str, bytearray] = {}
    for array in arrays:
        body_at = array.start(2)
        body = _C_COMMENT.sub(lambda m: " " * len(m.group(0)), array.group(2))
        data = bytearray()
        for token in re.finditer(r"[^,\s]+", body):
            value = token.group(0)
            if not _C_BYTE.match(value) or int(value, 0 if value[:2].lower() == "0x" else 10) > 255:
                number = text.count("\n", 0, body_at + token.start()) + 1
                raise PasteError(
                    f"line {number}: expected a byte like 0x15 in the array {array.group(1)}, got {value!r}"
                )
            data.append(int(value, 0 if value[:2].lower() == "0x" else 10))
        peer = _PEER.match(array.group(1))
        name = _SIDES[int(peer.group(1))] if peer else array.group(1)
        pieces.setdefault(name, bytearray()).extend(data)
    order = sorted(pieces, key=lambda name: _SIDES.index(name) if name in _SIDES else len(_SIDES))  # client first
    return _one("C arrays", [Pasted(bytes(pieces[name]), 0, name) for name in order])


# -- escaped strings: "\x15\x03\x01\x00\x02\x02\x0a", b'\x15\x03...', several concatenated

_STRING_START = re.compile(r"^\s*[bB]?[\"']")
_STRING = re.compile(r"""\s*[bB]?(["'])((?:\\.|(?!\1).)*)\1\s*[\\+,]?\s*""", re.S)
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|[0-7]{1,3}|.)", re.S)
_SIMPLE = {"n": 10, "r": 13, "t": 9, "a": 7, "b": 8, "f": 12, "v": 11, "\\": 92, '"': 34, "'": 39, "?": 63}


def _read_strings(lines: list[str]) -> Paste | None:
    text = "\n".join(lines)
    if not _STRING_START.match(text):
        return None
    data, pos, bodies = bytearray(), 0, []
    while pos < len(text.rstrip()):
        m = _STRING.match(text, pos)
        if m is None:
            number = text.count("\n", 0, pos) + 1
            raise PasteError(f'line {number}: expected a quoted string like "\\x15\\x03", got {_clip(text[pos:])}')
        body, body_at = m.group(2), m.start(2)
        python_bytes = m.group(0).lstrip()[0] in "bB"  # b'...' holds its bytes as written, never hex
        bodies.append("\\" if python_bytes else body)
        at = 0
        for escape in _ESCAPE.finditer(body):
            data += _latin1(body[at : escape.start()], text, body_at + at)
            code = escape.group(1)
            if code[0] == "x":
                data.append(int(code[1:], 16))
            elif code[0] in "01234567":
                data.append(int(code, 8) & 0xFF)
            elif code in _SIMPLE:
                data.append(_SIMPLE[code])
            else:
                number = text.count("\n", 0, body_at + escape.start()) + 1
                raise PasteError(f"line {number}: expected an escape like \\x15, got \\{code}")
            at = escape.end()
        data += _latin1(body[at:], text, body_at + at)
        pos = m.end()
    compact = _SEPARATORS.sub("", "".join(bodies))
    if "\\" not in "".join(bodies) and compact and _HEX.match(compact) and len(compact) % 2 == 0:
        return Paste("hex", (Pasted(bytes.fromhex(compact)),))  # "15 03 01 ...": hex in quotes, no string of bytes
    return Paste("escaped string", (Pasted(bytes(data)),))


def _latin1(chars: str, text: str, at: int) -> bytes:
    try:
        return chars.encode("latin-1")
    except UnicodeEncodeError as e:
        number = text.count("\n", 0, at + e.start) + 1
        raise PasteError(f"line {number}: {chars[e.start]!r} is no byte: write it as \\x escapes") from None


# -- base64 (one block, lines of it as tools wrap it)

_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


def _read_base64(lines: list[str]) -> Paste | None:
    words = [line.strip() for line in lines if line.strip()]
    if not all(_BASE64.match(w) for w in words):
        return None
    joined = "".join(words)
    if len(joined) % 4:
        return None
    try:
        return Paste("base64", (Pasted(base64.b64decode(joined, validate=True)),))
    except binascii.Error:
        return None
