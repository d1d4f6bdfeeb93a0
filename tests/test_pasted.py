"""Reading bytes as engineers paste them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stray_tls.names import hostport, url_host
from stray_tls.pasted import (
    PasteError,
    ProxyAddress,
    parse_host,
    parse_hostport,
    parse_pasted,
    parse_proxy,
    parse_route,
    read_pasted,
)

ALERT = bytes.fromhex("1503010002020a")


@pytest.mark.parametrize(
    "text",
    [
        "15 03 01 00 02 02 0a",
        "1503010002020a",
        "15 03 01 00 02 02 0A\n",
        "\\x15\\x03\\x01\\x00\\x02\\x02\\x0a",
        "0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x0a",
        "15:03:01:00:02:02:0a",
        # Wireshark "Copy as Hex Dump" (offset, hex, ASCII column)
        "0000   15 03 01 00 02 02 0a                              .......",
        "0000  15 03 01 00 02 02 0a                             .......\n",
    ],
)
def test_forms_engineers_paste(text: str) -> None:
    assert parse_pasted(text) == ALERT


def test_multi_line_wireshark_dump_ignores_offsets_and_ascii() -> None:
    data = bytes(range(0x41, 0x41 + 20))  # ASCII letters: the column could be mistaken for hex
    dump = (
        "0000   41 42 43 44 45 46 47 48 49 4a 4b 4c 4d 4e 4f 50   ABCDEFGHIJKLMNOP\n"
        "0010   51 52 53 54                                       QRST\n"
    )
    assert parse_pasted(dump) == data
    short = "0000   61 62                                             ab\n"
    assert parse_pasted(short) == b"ab"


@pytest.mark.parametrize(
    ("text", "start"),
    [
        ("0010  15 03 01 00 02 02 0a", 0x10),  # a line cut from a Wireshark dump
        ("0030   15 03 01 00 02 02 0a                              .......", 0x30),
        ("\t0x0010:  1503 0100 0202 0a                           .......", 0x10),  # tcpdump -X
        ("00000020: 1503 0100 0202 0a                        .......", 0x20),  # xxd
        ("1503 01 00 02 02 0a", 0),  # no dump: 0x1503 is no line's offset, the text is the bytes
        ("1503 0100 0202 0a", 0),  # the same, grouped by four
    ],
)
def test_a_dump_line_s_offset_is_an_offset_not_data(text: str, start: int) -> None:
    pasted = read_pasted(text)
    assert (pasted.data, pasted.start) == (ALERT, start)


@pytest.mark.parametrize(
    ("text", "words"),
    [("", "nothing to decode"), ("15 03 0", "odd number"), ("hello", "not hex"), ("15 zz", "'z'")],
)
def test_bad_input_gets_a_sentence(text: str, words: str) -> None:
    with pytest.raises(PasteError, match=words):
        parse_pasted(text)


@given(st.binary(min_size=1, max_size=100))
def test_spaced_and_stream_forms_round_trip(data: bytes) -> None:
    assert parse_pasted(data.hex(" ")) == data
    assert parse_pasted(data.hex()) == data
    assert parse_pasted("".join(f"\\x{b:02x}" for b in data)) == data


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://proxy.example:3128", ("proxy.example", 3128)),
        ("proxy.example:3128", ("proxy.example", 3128)),
        ("http://[::1]:8080/", ("::1", 8080)),
        ("127.0.0.1:443", ("127.0.0.1", 443)),
    ],
)
def test_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


@pytest.mark.parametrize("text", ["proxy", "proxy:", ":3128", "http://[]:1", "proxy:abc"])
def test_bad_addresses_get_a_sentence(text: str) -> None:
    with pytest.raises(ValueError, match="expected http://HOST:PORT or HOST:PORT"):
        parse_hostport(text)


@pytest.mark.parametrize("text", ["::1", "http://[::1", "::1]:3128", "fe80::1:3128"])
def test_an_ipv6_address_without_its_brackets_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"IPv6 address in brackets|expected http://HOST:PORT"):
        parse_hostport(text)


@pytest.mark.parametrize(
    ("text", "bare", "in_url"),
    [("esrs.example", "esrs.example", "esrs.example"), ("::1", "::1", "[::1]"), ("[::1]", "::1", "[::1]")],
)
def test_hosts_bare_and_in_a_url(text: str, bare: str, in_url: str) -> None:
    assert parse_host(text) == bare and url_host(bare) == in_url and hostport(bare, 443) == f"{in_url}:443"


def test_a_password_that_is_no_utf8_keeps_its_bytes() -> None:
    proxy = parse_proxy("http://bob:se%FFcret@proxy:3128")
    assert proxy.password is not None and proxy.password.encode("utf-8", "surrogateescape") == b"se\xffcret"


def test_routes() -> None:
    assert parse_route("esrs.lab:443=127.0.0.1:8443") == (("esrs.lab", 443), ("127.0.0.1", 8443))
    with pytest.raises(ValueError, match="expected HOST:PORT=IP:PORT"):
        parse_route("esrs.lab:443")
    with pytest.raises(ValueError, match="expected http://HOST:PORT or HOST:PORT"):
        parse_route("esrs.lab:443=nowhere")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://proxy.example:3128", ProxyAddress("proxy.example", 3128)),
        ("http://bob:secret@proxy.example:3128", ProxyAddress("proxy.example", 3128, "bob", "secret")),
        ("http://u%40corp:p%3Aw%25x@[::1]:8080/", ProxyAddress("::1", 8080, "u@corp", "p:w%x")),
        ("bob:p@ss@10.0.0.1:80", ProxyAddress("10.0.0.1", 80, "bob", "p@ss")),
        ("http://bob@proxy:1", ProxyAddress("proxy", 1, "bob", None)),
    ],
)
def test_proxy_urls_with_credentials(text: str, expected: ProxyAddress) -> None:
    parsed = parse_proxy(text)
    assert parsed == expected and parsed.password == expected.password
    assert "secret" not in repr(parsed) and "p:w%x" not in repr(parsed)


@pytest.mark.parametrize("text", ["http://bob:secret@proxy", "http://:secret@proxy:1", "bob:secret@:1"])
def test_bad_proxy_urls_never_repeat_the_password(text: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_proxy(text)
    assert "secret" not in str(e.value) and "***" in str(e.value)
