"""Read what an engineer types or pastes: bytes (spaced hex, a hex stream, escaped strings, Wireshark hex dumps)
and proxy or server addresses."""

from __future__ import annotations

import argparse
import ipaddress
import itertools
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

# A hex dump line: an offset (Wireshark `0010`, tcpdump `0x0010:`, xxd `00000010:`), then the bytes, in pairs
# (Wireshark) or groups of four digits (tcpdump -X, xxd), then maybe an ASCII column, three spaces or more away
# on a short line (Wireshark pads the last line) and past the 16th byte on a full one.
_DUMP_OFFSET = re.compile(r"^\s*(?:0x)?([0-9a-fA-F]{4,8})(:?)(\s+)")
_DUMP_GROUP = re.compile(r"([0-9a-fA-F]{4}|[0-9a-fA-F]{2})(?=\s|$)")
_DUMP_GAP = re.compile(r" {1,2}(?! )")
#: Bytes on one dump line, at most.
DUMP_WIDTH = 16
_SEPARATORS = re.compile(r"\\x|0x|[\s,:;.\-]", re.I)
_HEX = re.compile(r"^[0-9a-fA-F]*$")


T = TypeVar("T")


class PasteError(ValueError):
    """The pasted text is not bytes in any form we read; the message says why, in a sentence."""


@dataclass(frozen=True)
class Pasted:
    """The pasted bytes, and where the first of them stood in the frame: a hex dump's first offset, else 0."""

    data: bytes
    start: int = 0


def parse_pasted(text: str) -> bytes:
    """Read `15 03 01 00 02 02 0a`, `1503010002020a`, `\\x15\\x03...`, `0x15,0x03`, or a hex dump."""
    return read_pasted(text).data


def read_pasted(text: str) -> Pasted:
    """The bytes of `parse_pasted`, with the first offset of a hex dump: lines cut from the middle of a dump
    (`0010  15 03 01 00 02 02 0a`) are the bytes at that offset, and the offset is not data."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise PasteError("nothing to decode: give the bytes as hex, e.g. 15 03 01 00 02 02 0a")
    dump = _read_dump(lines)
    if dump is not None:
        return dump
    compact = _SEPARATORS.sub("", text)
    if not _HEX.match(compact):
        bad = next(c for c in compact if c not in "0123456789abcdefABCDEF")
        raise PasteError(f"not hex: unexpected character {bad!r}; give bytes like 15 03 01 00 02 02 0a")
    if len(compact) % 2:
        raise PasteError(f"odd number of hex digits ({len(compact)}): a byte needs two, e.g. 0a not a")
    return Pasted(bytes.fromhex(compact))


class _DumpLine(NamedTuple):
    offset: int
    data: bytes
    set_apart: bool  # the offset ends in a colon or two spaces, as dump tools write it
    pairs: bool  # the bytes stand in pairs (Wireshark), not in groups of four digits


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
    return _DumpLine(int(m.group(1), 16), bytes(data), bool(m.group(2)) or len(m.group(3)) >= 2, pairs)


def _read_dump(lines: list[str]) -> Pasted | None:
    """The bytes of a hex dump, or None when the lines are not one.

    Several lines are a dump when each is a dump line and each offset follows on from the line before; lines whose
    offsets climb in steps of 16 with a line missing are a dump cut short (a sentence, not a guess). A single line
    is a dump when its offset could not be data: zero, or a multiple of 16 set apart or followed by byte pairs.
    """
    parsed = [_dump_line(line) for line in lines]
    rows = [row for row in parsed if row is not None]
    if len(rows) < len(parsed):
        return None
    if len(rows) == 1:
        row = rows[0]
        if row.offset == 0 or (row.offset % 16 == 0 and (row.set_apart or row.pairs)):
            return Pasted(row.data, row.offset)
        return None
    for row, following in itertools.pairwise(rows):
        if following.offset != row.offset + len(row.data):
            if following.offset > row.offset and all(r.offset % 16 == 0 for r in rows):
                raise PasteError(
                    f"the hex dump skips from offset 0x{row.offset:04x} ({len(row.data)} bytes) to "
                    f"0x{following.offset:04x}: paste its lines without a gap"
                )
            return None
    return Pasted(b"".join(r.data for r in rows), rows[0].offset)


class PortError(ValueError):
    """A number that is no TCP port."""

    def __init__(self, port: int) -> None:
        super().__init__(f"port {port} is not a TCP port (1-65535)")


def parse_hostport(text: str) -> tuple[str, int]:
    """`http://proxy:3128`, `proxy:3128` or `[::1]:3128` -> (host, port); ValueError with a sentence otherwise."""
    rest = text.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not host.strip("[]"):
        raise ValueError(f"expected http://HOST:PORT or HOST:PORT, got {text!r}")
    bracketed = host.startswith("[") and host.endswith("]")
    if host.startswith("[") != host.endswith("]") or (":" in host and not bracketed):
        raise ValueError(f"expected HOST:PORT with an IPv6 address in brackets ([::1]:3128), got {text!r}")
    if not 0 < int(port) < 65536:
        raise PortError(int(port))
    return parse_host(host), int(port)


#: Characters no host name or address holds; with them, a request line or CONNECT target would be broken.
_NOT_IN_HOST = re.compile(r"[\s/?#@\[\]\\%]")


def parse_host(text: str) -> str:
    """A host name, an IPv4 address, or an IPv6 address (brackets optional) -> the bare host; ValueError otherwise."""
    host = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if ":" in host:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(f"{redact_proxy(text)!r} is not a host name or an IP address") from None
    if not host or _NOT_IN_HOST.search(host):
        raise ValueError(f"{redact_proxy(text)!r} is not a host name or an IP address")
    try:
        host.encode("idna")
    except UnicodeError:
        raise ValueError(f"{redact_proxy(text)!r} is not a host name or an IP address") from None
    return host


@dataclass(frozen=True)
class ProxyAddress:
    """A proxy's address and, when given in the URL, its credentials (percent-decoded).

    The password is never part of the repr, so that no error message or log line can carry it.
    """

    host: str
    port: int
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port


def parse_proxy(text: str) -> ProxyAddress:
    """`http://user:pass@proxy:3128`, `http://proxy:3128`, `proxy:3128` -> ProxyAddress; ValueError with a sentence
    that never repeats the password."""
    scheme, rest = _scheme(text)
    if scheme not in ("", "http://"):
        raise ValueError(f"only http:// proxies are supported, got {redact_proxy(text)!r}")
    userinfo, at, hostport = rest.rpartition("@")
    user = password = None
    if at:
        raw_user, colon, raw_password = userinfo.partition(":")
        # bytes that are not UTF-8 are kept as they are (surrogateescape), so the proxy gets what was typed
        user = urllib.parse.unquote(raw_user, errors="surrogateescape")
        password = urllib.parse.unquote(raw_password, errors="surrogateescape") if colon else None
        if not user:
            raise ValueError(f"no user name before '@' in {redact_proxy(text)!r}; give http://USER:PASSWORD@HOST:PORT")
    try:
        host, port = parse_hostport(hostport)
    except PortError as e:
        raise ValueError(f"{e}, in {redact_proxy(text)!r}") from None
    except ValueError:
        raise ValueError(
            "expected http://HOST:PORT, http://USER:PASSWORD@HOST:PORT or HOST:PORT (an IPv6 address in brackets: "
            f"http://[::1]:3128), got {redact_proxy(text)!r}"
        ) from None
    return ProxyAddress(host, port, user, password)


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _scheme(text: str) -> tuple[str, str]:
    """(`http://` or whatever scheme the URL starts with, lower-cased, or "", the rest); the first `://` only."""
    m = _SCHEME.match(text)
    return (m.group(0).lower(), text[m.end() :]) if m else ("", text)


def redact_proxy(text: str) -> str:
    """The proxy URL with any password replaced by `***` (the same split as parse_proxy's, so nothing escapes)."""
    scheme, rest = _scheme(text)
    userinfo, at, hostport = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return text
    return f"{text[: len(scheme)]}{userinfo.partition(':')[0]}:***@{hostport}"


def passwords_in(args: list[str]) -> list[str]:
    """The passwords of proxy URLs among command-line arguments (`URL` or `--option=URL`), as typed and
    percent-decoded: what an error message about those arguments must not echo."""
    found: set[str] = set()
    for arg in args:
        value = arg.partition("=")[2] if arg.startswith("-") else arg
        _, rest = _scheme(value)
        userinfo, at, _ = rest.rpartition("@")
        password = userinfo.partition(":")[2] if at else ""
        if password:
            found |= {password, urllib.parse.unquote(password)}
    return sorted(found, key=len, reverse=True)


def parse_route(text: str) -> tuple[tuple[str, int], tuple[str, int]]:
    """`esrs.lab:443=127.0.0.1:8443` -> ((asked host, port), (address to dial)); ValueError with a sentence."""
    asked, sep, dial = text.partition("=")
    if not sep:
        raise ValueError(f"expected HOST:PORT=IP:PORT, got {text!r}")
    return parse_hostport(asked), parse_hostport(dial)


def argument(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse `type` from a parser that raises ValueError with a sentence: argparse then names the option
    and exits with status 2, and the sentence is what the user reads."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = parse.__name__
    return convert
