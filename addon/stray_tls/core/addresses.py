"""Read the addresses an engineer types: a proxy (with its credentials, never echoed), a server, a route (pure)."""

from __future__ import annotations

import argparse
import ipaddress
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


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
