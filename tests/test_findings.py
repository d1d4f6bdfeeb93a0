"""What the bytes mean: one classifier per face of plaintext reaching a TLS port."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stray_tls import compat
from stray_tls.core import findings, names
from stray_tls.core.findings import Confidence, Kind
from stray_tls.lab.servers import NGINX_400_BODY
from stray_tls.mitm import report

from .conftest import FIELD_ALERT, SUMMARY


def test_response_head_of_tls_records() -> None:
    f = findings.from_response_head(FIELD_ALERT)
    assert f is not None
    assert (f.kind, f.confidence, f.summary, f.raw) == (Kind.TLS_RECORDS, Confidence.HIGH, SUMMARY, FIELD_ALERT)
    assert "CONNECT" in f.explanation and "unexpected message" in f.explanation
    d = f.to_dict()
    assert d["raw_hex"] == "1503010002020a" and d["records"][0]["alert"]["description"] == 10


def test_response_head_that_is_http_or_incomplete_is_no_finding() -> None:
    assert findings.from_response_head(b"HTTP/1.1 200 OK\r\n\r\n") is None
    assert findings.from_response_head(FIELD_ALERT[:4]) is None
    f = findings.from_incomplete_head(FIELD_ALERT[:4])
    assert f is not None and f.kind is Kind.TLS_INCOMPLETE and "4 of 5 bytes" in f.detail


@pytest.mark.parametrize(
    "message",
    [
        # the upstream closed after the alert (mitmproxy 11 and 12 say the same)
        "unexpected server response: b'\\x15\\x03\\x01\\x00\\x02\\x02\\n'",
        # the alert was followed by a blank line: the parser took the final 0x0a as the line ending
        "Cannot parse HTTP response: Bad HTTP response line: b'\\x15\\x03\\x01\\x00\\x02\\x02'",
    ],
)
def test_error_messages_give_the_bytes_back(message: str) -> None:
    f = compat.finding_from_error(message)
    assert f is not None
    assert f.kind is Kind.TLS_RECORDS and f.summary == SUMMARY and f.raw == FIELD_ALERT


def test_error_message_with_crlf_eaten() -> None:
    # 15 03 01 00 03 02 0a 0d: a 3-byte fragment whose last two bytes were a CRLF taken by the parser
    f = compat.finding_from_error(
        "Cannot parse HTTP response: Bad HTTP response line: b'\\x15\\x03\\x01\\x00\\x03\\x02'"
    )
    assert f is not None and f.raw == bytes.fromhex("15 03 01 00 03 02 0d 0a")


def test_error_message_of_incomplete_record_and_others() -> None:
    f = compat.finding_from_error("unexpected server response: b'\\x15\\x03\\x01'")
    assert f is not None and f.kind is Kind.TLS_INCOMPLETE
    f = compat.finding_from_error("server closed connection")
    assert f is not None and f.kind is Kind.SILENT_CLOSE and f.confidence is Confidence.LOW and not f.rewritable
    assert compat.finding_from_error("unexpected server response: b'garbage'") is None
    assert compat.finding_from_error("Cannot parse HTTP response: Bad HTTP response line: b'FOO'") is None
    assert compat.finding_from_error("Connection refused") is None


@given(st.text(max_size=200))
def test_error_message_parser_never_raises(message: str) -> None:
    compat.finding_from_error(message)


#: The real servers' pages as tests/realpeers.py's Debian servers sent them (nginx 1.22.1, Apache 2.4.71, Tomcat
#: 10.1.60, Go 1.19), with what varies by configuration: (Content-Type, body, who).
APACHE_400_BODY = (
    b'<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.01//EN" "http://www.w3.org/TR/html4/strict.dtd">\n<html><head>\n'
    b"<title>400 Bad Request</title>\n</head><body>\n<h1>Bad Request</h1>\n<p>Your browser sent a request that this "
    b"server could not understand.<br />\nReason: You're speaking plain HTTP to an SSL-enabled server port.<br />\n "
    b"Instead use the HTTPS scheme to access this URL, please.<br />\n</p>\n</body></html>\n"
)
REAL_PAGES = [
    ("text/html", NGINX_400_BODY, "nginx"),
    ("text/html", NGINX_400_BODY.replace(b"<center>nginx<", b"<center>nginx/1.22.1<"), "nginx"),
    (
        "text/html",
        NGINX_400_BODY + b"<!-- a padding to disable MSIE and Chrome friendly error page -->\r\n" * 6,
        "nginx",
    ),
    ("text/html; charset=iso-8859-1", APACHE_400_BODY, "Apache httpd"),
    (
        "text/html; charset=iso-8859-1",
        APACHE_400_BODY.replace(
            b"</p>\n", b"</p>\n<hr>\n<address>Apache/2.4.62 (Debian) Server at x Port 443</address>\n"
        ).replace(b'-//W3C//DTD HTML 4.01//EN" "http://www.w3.org/TR/html4/strict.dtd', b"-//IETF//DTD HTML 2.0//EN"),
        "Apache httpd",
    ),
    (
        "text/plain;charset=UTF-8",
        b"Bad Request\r\nThis combination of host and port requires TLS.\r\n",
        "Apache Tomcat",
    ),
    (None, b"Client sent an HTTP request to an HTTPS server.\n", "Go net/http"),
]


@pytest.mark.parametrize(("content_type", "body", "server"), REAL_PAGES)
def test_plain_http_400_pages(content_type: str | None, body: bytes, server: str) -> None:
    f = findings.from_response(400, body, content_type=content_type)
    assert f is not None and f.kind is Kind.PLAIN_HTTP_400 and f.confidence is Confidence.HIGH
    assert f"HTTP 400 from {server}:" in f.detail and f.rewritable and f.raw == body
    assert findings.from_response(200, body, content_type=content_type) is None  # a 200 quoting it: no page
    assert findings.from_response(400, b"<html>some other 400</html>", content_type=content_type) is None


@pytest.mark.parametrize(("content_type", "body", "server"), REAL_PAGES)
def test_a_phrase_in_a_body_is_no_servers_page(content_type: str | None, body: bytes, server: str) -> None:
    """Evidence is the page as its server makes it: the phrase reflected, quoted or wrapped proves nothing."""
    page = findings.plain_http_page(body, content_type)
    assert page is not None and page.server == server
    phrase = page.phrase.decode()
    reflected = json.dumps({"error": "bad field", "value": phrase}).encode()
    assert findings.from_response(400, reflected, content_type="application/json") is None
    assert findings.from_response(400, reflected, content_type=content_type) is None
    doc = b"<html><body><h1>Errors</h1><p>nginx says: <pre>" + body + b"</pre></p></body></html>"
    assert findings.from_response(400, doc, content_type="text/html") is None
    assert findings.from_response(400, body + b"x", content_type=content_type) is None  # one byte more
    assert findings.from_response(400, b"x" + body, content_type=content_type) is None
    assert findings.from_response(400, body * 2, content_type=content_type) is None
    # the page under another server's Content-Type (or none, or one where the server sends none) is not its page
    other = "application/json" if content_type else "text/plain"
    assert findings.from_response(400, body, content_type=other) is None
    if content_type is not None:
        assert findings.from_response(400, body) is None


@given(st.binary(max_size=300), st.binary(max_size=300), st.sampled_from([p for _, _, p in REAL_PAGES]))
def test_no_page_with_anything_around_its_phrase(before: bytes, after: bytes, server: str) -> None:
    phrase = next(p.phrase for p in findings.PLAIN_HTTP_PAGES if p.server == server)
    body = before + phrase + after
    for content_type in ("text/html", "text/plain", None):
        f = findings.from_response(400, body, content_type=content_type)
        # only a body that is the page itself (which random bytes around the phrase are not, here) counts
        assert f is None or any(body == b for _, b, _ in REAL_PAGES)


def test_page_matching_stays_bounded() -> None:
    long = b"<center>The plain HTTP request was sent to HTTPS port</center>" * 10_000
    assert findings.plain_http_page(long, "text/html") is None
    assert len(max((b for _, b, _ in REAL_PAGES), key=len)) <= findings.PLAIN_HTTP_PAGE_MAX


def test_tls_as_a_body() -> None:
    f = findings.from_response(200, FIELD_ALERT)
    assert f is not None and f.kind is Kind.TLS_IN_BODY and f.confidence is Confidence.MEDIUM
    # a binary body that merely starts like TLS is nothing
    assert findings.from_response(200, FIELD_ALERT + b"more bytes") is None
    assert findings.from_response(200, b"\x16\x03\x01\x00\x05abc") is None
    assert findings.from_response(200, b"") is None


@pytest.mark.parametrize(
    ("message", "code", "name"),
    [
        ("[('SSL routines', '', 'tlsv1 alert protocol version')]", 70, "protocol_version"),
        ("[('SSL routines', '', 'sslv3 alert handshake failure')]", 40, "handshake_failure"),
        ("[('SSL routines', '', 'tlsv1 alert unknown ca')]", 48, "unknown_ca"),
        ("tls alert unexpected message", 10, "unexpected_message"),
        ("[('SSL routines', '', 'tlsv1 alert decryption failed')]", 21, "decryption_failed_RESERVED"),
    ],
)
def test_tls_handshake_errors_name_the_alert(message: str, code: int, name: str) -> None:
    f = findings.from_tls_error(message)
    assert f is not None and f.kind is Kind.TLS_HANDSHAKE_ALERT
    assert f"alert {name} ({code})" in f.summary
    assert f.extra["alert"]["description"] == code


@pytest.mark.parametrize("words", ["wrong version number", "packet length too long", "record layer failure"])
def test_tls_sent_to_a_plaintext_port_is_the_opposite_fault(words: str) -> None:
    # OpenSSL's words when the upstream answered mitmproxy's ClientHello in plaintext
    f = findings.from_tls_error(f"[('SSL routines', '', '{words}')]")
    assert f is not None and f.kind is Kind.UPSTREAM_NOT_TLS and f.confidence is Confidence.HIGH
    assert not f.rewritable and not f.upgradable("GET")  # a success would hide a different misconfiguration
    assert "plain HTTP" in f.explanation and words in f.detail


def test_tls_handshake_errors_without_an_alert() -> None:
    f = findings.from_tls_error("[('SSL routines', '', 'unsupported protocol')]")
    assert f is not None and f.kind is Kind.TLS_HANDSHAKE_ALERT and f.confidence is Confidence.MEDIUM
    assert findings.from_tls_error("certificate verify failed") is None
    assert findings.from_tls_error("alert nonsense words") is None


#: The rewritable kinds, written out here on purpose: a kind added to `findings.REWRITABLE` must be added here
#: too, by someone who decided it, and a kind added to `Kind` alone is not rewritable.
EXPECTED_REWRITABLE = {Kind.TLS_RECORDS, Kind.TLS_INCOMPLETE, Kind.PLAIN_HTTP_400, Kind.TLS_HANDSHAKE_ALERT}


def test_rewritable_kinds_are_an_explicit_allow_list() -> None:
    assert findings.REWRITABLE == EXPECTED_REWRITABLE


@pytest.mark.parametrize("kind", list(Kind))
def test_every_kind_outside_the_allow_list_is_not_rewritable(kind: Kind) -> None:
    finding = findings.Finding(kind, Confidence.HIGH, "explanation")
    assert finding.rewritable is (kind in EXPECTED_REWRITABLE)


# -- caps: what a finding says is bounded whatever the upstream sent (issue 22, item 8)

FLOOD = FIELD_ALERT * 9000


def test_a_flood_of_records_makes_a_bounded_summary_and_dict() -> None:
    f = findings.from_response_head(FLOOD)
    assert f is not None and len(f.records) == 9000 and f.raw == FLOOD  # the finding keeps all; what it says does not
    assert len(f.summary) <= findings.SUMMARY_CHARS and f.summary.endswith("and 8996 more records (9000 in all)")
    d = f.to_dict()
    assert len(d["records"]) == findings.LISTED_RECORDS and d["records_omitted"] == 9000 - findings.LISTED_RECORDS
    assert d["raw_hex"] == FLOOD[: findings.RAW_BYTES].hex() and d["raw_truncated"] == len(FLOOD) - findings.RAW_BYTES
    assert len(report.json_line(d)) < 8 * 1024
    small = findings.from_response_head(FIELD_ALERT)
    assert small is not None and (small.to_dict()["records_omitted"], small.to_dict()["raw_truncated"]) == (0, 0)


def test_a_finding_unlisted_counts_everything_it_leaves_out() -> None:
    f = findings.from_response_head(FLOOD + b"\x00" * 5000)  # trailing bytes that are no record
    assert f is not None
    listed = f.to_dict()
    assert len(listed["trailing_hex"]) == 2 * findings.RAW_BYTES and listed["trailing_truncated"] == 5000 - 1024
    d = f.to_dict(listed=False)
    assert (d["records"], d["records_omitted"], d["raw_hex"], d["raw_truncated"]) == ([], 9000, "", len(f.raw))
    assert (d["trailing_hex"], d["trailing_truncated"]) == ("", 5000) and d["summary"] == f.summary


def test_a_long_detail_is_cut_in_the_summary() -> None:
    f = findings.Finding(Kind.TLS_HANDSHAKE_ALERT, Confidence.HIGH, "", detail="x" * 10_000)
    assert f.summary == "x" * findings.SUMMARY_CHARS + f"... ({10_000 - findings.SUMMARY_CHARS} more chars)"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("http://example.com/a b", "http://example.com/a b"),  # clean text as it is
        ("x\x1b[2K\r[00:00:00.000] esrs-fix: learned", "x\\x1b[2K\\x0d[00:00:00.000] esrs-fix: learned"),
        ("a\nb\x7fc\x9bd", "a\\x0ab\\x7fc\\x9bd"),  # LF, DEL, C1 CSI
        ("bad\udcffhost", "bad\\xffhost"),  # a byte that was not UTF-8, as mitmproxy decodes it
        ("\u202egnp.exe", "\\u202egnp.exe"),  # a bidi override
        ("caf\u00e9", "caf\u00e9"),  # printable text that is not ASCII stays
        (b"x\xff\x1b", "x\\xff\\x1b"),  # bytes: invalid UTF-8 and controls alike
    ],
)
def test_printable_escapes_what_a_terminal_would_act_on(value: str | bytes, shown: str) -> None:
    assert names.printable(value) == shown


def test_printable_and_clip_bound_their_output() -> None:
    assert names.printable("a" * 1000, 10) == "a" * 10 + "... (990 more chars)"
    cut = names.printable("\x1b" * 100, 10)  # never half an escape
    assert cut == "\\x1b" * 2 + "... (98 more chars)"
    assert names.printable("a" * 1000, None) == "a" * 1000
    assert names.clip("abc", 3) == "abc" and names.clip("abcd", 3) == "abc... (1 more chars)"


#: Any text, lone surrogates often (hypothesis leaves them out of `characters()` unless asked for their range).
ANY_TEXT = st.text(st.characters() | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF))


@given(ANY_TEXT)
def test_every_report_line_is_valid_utf8_json_that_gives_back_what_went_in(text: str) -> None:
    """Lone surrogates included (a Host with 0xff): the line encodes as UTF-8 and parses back to the same value."""
    line = report.json_line({"url": text, "n": 1})
    assert line.endswith("\n") and "\n" not in line[:-1]
    assert json.loads(line.encode("utf-8").decode("utf-8")) == {"url": text, "n": 1}
