"""Reading bytes as engineers paste them."""

from __future__ import annotations

import base64
import json
import os
import string
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stray_tls.core import frames
from stray_tls.core.addresses import ProxyAddress, parse_host, parse_hostport, parse_proxy, parse_route
from stray_tls.core.names import hostport, url_host
from stray_tls.core.pasted import Pasted, PasteError, holds_tls, parse_pasted, read_paste, read_pasted

from .fixtures.pasted import generate
from .test_frames import wireshark_hex_dump

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
    [("", "nothing to decode"), ("15 03 0", "odd number"), ("hello", "line 1: not hex"), ("15 zz", "'z'")],
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


# -- what the tools print, as kept in tests/fixtures/pasted/ (made by its generate.py from a loopback capture of a
# plaintext request answered by the field's alert)

FIXTURES = generate.HERE
FRAMES = [f"frame {n}" for n in range(1, 11)]  # the capture: handshake, request, alert, closes
SIDES = ["client side", "server side"]
REASSEMBLED = "frame 10, Reassembled TCP"
#: file -> (the form it reads as, the pieces' names, the piece with the alert)
FORMS: dict[str, tuple[str, list[str], str]] = {
    "tshark-x.txt": ("hex dump", FRAMES, "frame 6"),
    # the alert in two segments: tshark prints the record it reassembled after frame 10, which ends it
    "tshark-x-reassembled.txt": ("hex dump", [*FRAMES, REASSEMBLED, "frame 11"], REASSEMBLED),
    "tcpdump-x.txt": ("tcpdump", FRAMES, "frame 6"),
    "tcpdump-xx.txt": ("tcpdump", FRAMES, "frame 6"),
    "tcpdump-X.txt": ("tcpdump", FRAMES, "frame 6"),
    "tcpdump-XX.txt": ("tcpdump", FRAMES, "frame 6"),
    "follow-hex.txt": ("follow hex", SIDES, "server side"),
    "follow-raw.txt": ("follow raw", SIDES, "server side"),
    "follow-hex-split.txt": ("follow hex", SIDES, "server side"),  # the alert in two segments, one record
    "wireshark-follow-hexdump.txt": ("follow hex", SIDES, "server side"),
    "wireshark-follow-carrays.txt": ("C arrays", SIDES, "server side"),
    "wireshark-escaped-string.txt": ("escaped string", [""], ""),
    "base64.txt": ("base64", [""], ""),
}


def check_form(text: str, form: str, names: list[str], alert_in: str, exact: bool = True) -> None:
    """`exact=False`: a capture made now may hold other frames around the alert (timing: who closes first)."""
    paste = read_paste(text)
    got = [p.name for p in paste.pieces]
    assert paste.form == form
    assert got == names if exact else (got[0], alert_in in got) == (names[0], True)
    assert [p.name for p in paste.pieces if holds_tls(p)] == [alert_in]
    piece = read_pasted(text)  # the one-piece reader takes the piece with TLS records
    assert piece.name == alert_in
    frame = frames.find_payload(piece.data)
    assert (piece.data if frame is None else frame.payload) == ALERT
    if form == "tcpdump":  # each frame keeps tcpdump's summary line: time, IP, addresses
        assert all(" IP 127.0.0.1." in p.note for p in paste.pieces)
    if names == SIDES and form != "C arrays":
        assert paste.pieces[0].data.startswith(b"GET / HTTP/1.1\r\n")


@pytest.mark.parametrize("name", sorted(FORMS))
def test_each_paste_form_from_real_tool_output(name: str) -> None:
    check_form((FIXTURES / name).read_text(), *FORMS[name])


def test_each_paste_form_from_the_tools_run_now(tmp_path: Path) -> None:
    """The tools of this machine (CI installs them): a fresh capture, each form read as the kept ones are."""
    if missing := generate.missing_tools():
        pytest.skip(f"install {', '.join(missing)} (Debian packages of the same names)")
    if os.geteuid() != 0:
        pytest.skip("capturing on lo with tcpdump needs root")
    texts = generate.generate(tmp_path)
    assert sorted(texts) == sorted(FORMS)
    for name, text in texts.items():
        check_form(text, *FORMS[name], exact=False)


def test_frames_copied_one_after_another_without_blank_lines() -> None:
    """Wireshark's Copy as Hex Dump, frame after frame: a line at offset 0000 starts the next."""
    text = (FIXTURES / "tshark-x.txt").read_text()
    joined = "\n".join(line.replace("  ", "   ", 1) for line in text.splitlines() if line.strip())
    check_form(joined, *FORMS["tshark-x.txt"])


def esrs_fix(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stray_tls.main", *args], input=stdin, capture_output=True, text=True, timeout=120
    )


def test_decode_names_each_frame_and_decodes_the_one_with_tls() -> None:
    p = esrs_fix("decode", stdin=(FIXTURES / "tcpdump-XX.txt").read_text())
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("10 frames read as tcpdump:\n")
    assert p.stdout.count("\n  frame ") == 10 and "[SYN]" in p.stdout
    decoded = p.stdout.split("\n\n", 1)[1]
    assert decoded.startswith("frame 6 (") and "description   unexpected_message (10)" in decoded
    assert "frame 4 (" not in decoded  # the request: listed, not decoded


def test_decode_names_the_sides_of_a_followed_stream() -> None:
    p = esrs_fix("decode", "--json", stdin=(FIXTURES / "follow-hex.txt").read_text())
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert (out["verdict"], out["form"]) == ("tls", "follow hex")
    assert [(s["name"], s["verdict"]) for s in out["pieces"]] == [("client side", "not_tls"), ("server side", "tls")]
    assert out["pieces"][1]["records"][0]["alert"]["description_name"] == "unexpected_message"
    p = esrs_fix("decode", stdin=(FIXTURES / "follow-hex.txt").read_text().replace("\t00", "\t99"))
    assert p.returncode == 2 and "line 12: expected offset 00000000 (the server side's" in p.stderr


def test_decode_says_which_form_it_read_when_not_hex() -> None:
    p = esrs_fix("decode", stdin="FQMBAAICCg==\n")
    assert p.returncode == 0 and p.stdout.startswith("read as base64\n7 bytes: 15 03 01 00 02 02 0a\n")
    p = esrs_fix("decode", stdin="15 03 01 00 02 02 0a")
    assert p.returncode == 0 and p.stdout.startswith("7 bytes: 15 03")


def test_decode_says_so_when_no_frame_holds_tls() -> None:
    text = (FIXTURES / "tshark-x.txt").read_text().split("\n\n")
    p = esrs_fix("decode", stdin="\n\n".join(text[:5]))
    assert p.returncode == 1 and "5 frames read as hex dump" in p.stdout and "none holds TLS records" in p.stdout


# -- errors name the line and what was expected there


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("15 03 01\n00 02 02 0a\nWXYZ ?", "line 3: not hex: unexpected character 'W' (column 1)"),
        (
            "0000  15 03 01 00 02 02 0a 15 03 01 00 02 02 0a 15 03\n0010  01 00 02 02 0a\n0030  02",
            "the hex dump skips from offset 0x0010",
        ),
        (
            "0000  15 03 01 00 02 02 0a 15 03 01 00 02 02 0a 15 03\nXX garbled\n0010  01 00 02 02 0a\n\n"
            "0000  15 03 01 00 02 02 0a",
            "line 2: expected a hex dump line (offset 0x0010, then the bytes), got 'XX garbled'",
        ),
        (
            "0000  15 03 01 00 02 02 0a 15 03 01 00 02 02 0a 15 03\n\n0000  15 03 01\n0020  01 00 02 02 0a",
            "line 4: expected offset 0x0003 (line 3 ends there) or 0000 (a new frame), got 0x0020",
        ),
        ("char peer0_0[] = { /* Packet 4 */\n0x15, 0x03,\n0x01, 0x100 };", "line 3: expected a byte like 0x15"),
        ('"\\x15\\x03"\n"\\x01\\q"', "line 2: expected an escape like \\x15, got \\q"),
        ('"\\x15\\x03" junk', "line 1: expected a quoted string"),
        ("Follow: tcp,raw\nNode 0: 10.0.0.1:1\n150301\n\tzz", "line 4: expected the stream's bytes as a hex stream"),
        ("Follow: tcp,hex\n00000000  15 03\n00000010  01", "line 3: expected offset 00000002 (the client side's"),
    ],
)
def test_errors_name_the_line(text: str, words: str) -> None:
    with pytest.raises(PasteError) as e:
        read_paste(text)
    assert words in str(e.value)


# -- any bytes round-trip through each form


@given(st.binary(min_size=1, max_size=100))
def test_base64_round_trips(data: bytes) -> None:
    text = base64.b64encode(data).decode()
    if text.isalnum() and all(c in string.hexdigits for c in text):
        return  # hex digits only: read as hex, which it also is
    assert read_paste(text).pieces == (Pasted(data),)
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))  # as base64(1) and MIME wrap it
    assert read_paste(wrapped).pieces == (Pasted(data),)


@pytest.mark.parametrize(
    ("text", "form", "data"),
    [
        ('"15 03 01 00 02 02 0a"', "hex", ALERT),  # hex in quotes
        ("'1503010002020a'", "hex", ALERT),
        ("b'15'", "escaped string", b"15"),  # Python's bytes: as written
        ('"\\x15\\x03" "15"', "escaped string", b"\x15\x0315"),
    ],
)
def test_quoted_hex_is_hex_and_a_string_of_bytes_is_its_bytes(text: str, form: str, data: bytes) -> None:
    assert (read_paste(text).form, parse_pasted(text)) == (form, data)


def escaped(data: bytes) -> str:
    return '"' + "".join(f"\\x{b:02x}" for b in data) + '"'


@given(st.binary(min_size=1, max_size=100))
def test_escaped_strings_round_trip(data: bytes) -> None:
    assert parse_pasted(escaped(data)) == data
    assert parse_pasted(repr(data)) == data  # Python's b'...': printable bytes stand as themselves
    lines = [escaped(data[i : i + 16]) for i in range(0, len(data), 16)]
    assert parse_pasted(" \\\n".join(lines)) == data  # C's strings, continued line after line


segments = st.lists(st.tuples(st.booleans(), st.binary(min_size=1, max_size=40)), min_size=1, max_size=6)


def sides(given_segments: list[tuple[bool, bytes]]) -> tuple[Pasted, ...]:
    client = b"".join(d for server, d in given_segments if not server)
    server = b"".join(d for server, d in given_segments if server)
    return tuple(Pasted(d, 0, name) for name, d in zip(SIDES, (client, server), strict=True) if d)


@given(segments)
def test_followed_streams_round_trip(given_segments: list[tuple[bool, bytes]]) -> None:
    numbered = [(n, server, data) for n, (server, data) in enumerate(given_segments, 1)]
    expected = sides(given_segments)
    gui = "".join(generate.wireshark_follow_hexdump(numbered))
    if {server for server, _ in given_segments} == {True, False}:  # one side alone is a plain dump
        assert read_paste(gui).pieces == expected
    header = "Follow: tcp,hex\nFilter: tcp.stream eq 0\n"
    tshark = header + gui.replace("    ", "\t")
    got = read_paste(tshark).pieces
    assert [(p.name, p.data) for p in got] == [(p.name, p.data) for p in expected]
    arrays = read_paste("".join(generate.wireshark_c_arrays(numbered))).pieces
    if len(expected) == 1:
        assert arrays == (Pasted(expected[0].data),)
    else:
        assert arrays == expected


@given(st.lists(st.binary(min_size=1, max_size=80), min_size=2, max_size=5), st.booleans())
def test_several_frames_round_trip(datas: list[bytes], blank_lines: bool) -> None:
    text = ("\n" if blank_lines else "").join(wireshark_hex_dump(d) for d in datas)
    pieces = read_paste(text).pieces
    assert [(p.name, p.data, p.start) for p in pieces] == [(f"frame {n}", d, 0) for n, d in enumerate(datas, 1)]
