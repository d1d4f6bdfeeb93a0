"""The pure decoder: exact decodes of known bytes, and properties over arbitrary bytes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stray_tls.core import records, registry
from stray_tls.core.records import NeedMore, NotTLS, Records, decode, describe

from .conftest import FIELD_ALERT


def test_the_field_report_alert() -> None:
    decoded = decode(FIELD_ALERT)
    assert isinstance(decoded, Records)
    (record,) = decoded.records
    assert (record.content_type, record.version, record.length) == (21, 0x0301, 2)
    assert record.alert is not None
    assert (record.alert.level, record.alert.description) == (2, 10)
    assert record.alert.level_name == "fatal"
    assert record.alert.description_name == "unexpected_message"
    assert describe(record) == "TLS alert: fatal unexpected_message (10), record version TLS 1.0"
    assert decoded.rest == b"" and decoded.size == 7


@pytest.mark.parametrize(
    ("hexbytes", "summary"),
    [
        ("15 03 03 00 02 02 46", "TLS alert: fatal protocol_version (70), record version TLS 1.2"),
        ("15 03 00 00 02 01 00", "TLS alert: warning close_notify (0), record version SSL 3.0"),
        ("15 03 04 00 02 02 28", "TLS alert: fatal handshake_failure (40), record version TLS 1.3"),
        ("15 03 01 00 02 02 56", "TLS alert: fatal inappropriate_fallback (86), record version TLS 1.0"),
        ("15 03 03 00 02 02 34", "TLS alert: fatal too_many_cids_requested (52), record version TLS 1.2"),
        ("15 03 03 00 02 02 75", "TLS alert: fatal general_error (117), record version TLS 1.2"),
        ("15 03 03 00 02 02 79", "TLS alert: fatal ech_required (121), record version TLS 1.2"),
        ("15 03 03 00 02 02 15", "TLS alert: fatal decryption_failed_RESERVED (21), record version TLS 1.2"),
        ("15 03 03 00 02 02 c8", "TLS alert: fatal unassigned (200), record version TLS 1.2"),
        ("15 03 03 00 02 07 0a", "TLS alert: level 7 unexpected_message (10), record version TLS 1.2"),
        ("15 03 07 00 02 02 0a", "TLS alert: fatal unexpected_message (10), record version 0x0307"),
        (
            "15 03 03 00 1a" + " 00" * 26,
            "TLS alert: 26 bytes, encrypted or malformed, record version TLS 1.2",
        ),
        ("14 03 03 00 01 01", "TLS change_cipher_spec, record version TLS 1.2"),
        ("17 03 03 00 03 aa bb cc", "TLS application_data: 3 bytes, record version TLS 1.2"),
        ("18 03 03 00 03 01 00 00", "TLS heartbeat: 3 bytes, record version TLS 1.2"),
        # ServerHello (empty body), Certificate (empty body), ServerHelloDone in one record
        (
            "16 03 01 00 0c 02 00 00 00 0b 00 00 00 0e 00 00 00",
            "TLS handshake: server_hello (2), certificate (11), server_hello_done (14), record version TLS 1.0",
        ),
        # a handshake message that continues in the next record: its type is still named
        ("16 03 03 00 04 0b 00 10 00", "TLS handshake: certificate (11), record version TLS 1.2"),
        ("17 03 03 00 00", "TLS application_data: 0 bytes, record version TLS 1.2"),
    ],
)
def test_known_records(hexbytes: str, summary: str) -> None:
    decoded = decode(bytes.fromhex(hexbytes))
    assert isinstance(decoded, Records)
    assert [describe(r) for r in decoded.records] == [summary]


#: The IANA TLS Alerts registry, written here independently of stray_tls.core.registry.
IANA_ALERTS = {
    0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac", 21: "decryption_failed_RESERVED",
    22: "record_overflow", 30: "decompression_failure_RESERVED", 40: "handshake_failure",
    41: "no_certificate_RESERVED", 42: "bad_certificate", 43: "unsupported_certificate", 44: "certificate_revoked",
    45: "certificate_expired", 46: "certificate_unknown", 47: "illegal_parameter", 48: "unknown_ca",
    49: "access_denied", 50: "decode_error", 51: "decrypt_error", 52: "too_many_cids_requested",
    60: "export_restriction_RESERVED", 70: "protocol_version", 71: "insufficient_security", 80: "internal_error",
    86: "inappropriate_fallback", 90: "user_canceled", 100: "no_renegotiation_RESERVED", 109: "missing_extension",
    110: "unsupported_extension", 111: "certificate_unobtainable_RESERVED", 112: "unrecognized_name",
    113: "bad_certificate_status_response", 114: "bad_certificate_hash_value_RESERVED", 115: "unknown_psk_identity",
    116: "certificate_required", 117: "general_error", 120: "no_application_protocol", 121: "ech_required",
}  # fmt: skip


def test_every_registered_alert_has_its_registry_name() -> None:
    assert registry.ALERT_DESCRIPTIONS == IANA_ALERTS
    for code, name in IANA_ALERTS.items():
        decoded = decode(bytes([0x15, 3, 3, 0, 2, 2, code]))
        assert isinstance(decoded, Records)
        assert decoded.records[0].to_dict()["alert"]["description_name"] == name
    assert {109, 110, 111, 112, 113, 114, 115, 116, 117, 120} <= set(registry.ALERT_DESCRIPTIONS)
    assert not {118, 119, 122, 255} & set(registry.ALERT_DESCRIPTIONS)


def test_sslv2_framed_records() -> None:
    # SSLv2 ERROR message: header 80 03, type 0, error code 0x0001 (no_cipher)
    decoded = decode(bytes.fromhex("80 03 00 00 01"))
    assert isinstance(decoded, Records)
    assert describe(decoded.records[0]) == "SSLv2 error: no_cipher (0x0001)"
    assert decoded.size == 5 and decoded.records[0].length == 3
    hello = decode(bytes.fromhex("80 05 04 00 01 00 02"))
    assert isinstance(hello, Records)
    assert describe(hello.records[0]) == "SSLv2 server_hello (4): 5 bytes"
    assert hello.records[0].encode() == bytes.fromhex("80 05 04 00 01 00 02")


def test_several_records_in_one_buffer() -> None:
    data = FIELD_ALERT + bytes.fromhex("15 03 01 00 02 01 00")
    decoded = decode(data)
    assert isinstance(decoded, Records)
    assert [r.offset for r in decoded.records] == [0, 7]
    assert records.describe_all(decoded.records) == (
        "TLS alert: fatal unexpected_message (10), record version TLS 1.0; "
        "TLS alert: warning close_notify (0), record version TLS 1.0"
    )


def test_describe_all_names_the_first_records_then_counts_the_rest() -> None:
    """An upstream may answer with thousands of records: the one-line summary stays one short line."""
    flood = decode(bytes.fromhex("15 03 01 00 02 02 0a") * 9000)
    assert isinstance(flood, Records)
    line = records.describe_all(flood.records)
    assert line.count("TLS alert: ") == records.DESCRIBED_RECORDS
    assert line.endswith(f"; and {9000 - records.DESCRIBED_RECORDS} more records (9000 in all)") and len(line) < 400
    five = flood.records[: records.DESCRIBED_RECORDS + 1]
    assert records.describe_all(five).endswith("; and 1 more record (5 in all)")
    assert records.describe_all(flood.records[:2]).count("TLS alert: ") == 2  # under the cap: no count
    assert records.describe_all(flood.records, limit=None).count("TLS alert: ") == 9000  # a decode asks for all


def test_record_followed_by_http_text_or_an_incomplete_record() -> None:
    decoded = decode(FIELD_ALERT + b"HTTP/1.1 200 OK\r\n")
    assert isinstance(decoded, Records)
    assert decoded.rest == b"HTTP/1.1 200 OK\r\n" and not decoded.rest_incomplete
    decoded = decode(FIELD_ALERT + b"\x15\x03\x01")
    assert isinstance(decoded, Records)
    assert decoded.rest == b"\x15\x03\x01" and decoded.rest_incomplete


@pytest.mark.parametrize(
    ("prefix", "needed"),
    [(b"", 1), (b"\x15", 5), (b"\x15\x03", 5), (b"\x15\x03\x01\x00", 5), (b"\x15\x03\x01\x00\x02", 7), (b"\x80", 3)],
)
def test_truncated_records_need_more(prefix: bytes, needed: int) -> None:
    decoded = decode(prefix)
    assert isinstance(decoded, NeedMore)
    assert decoded.buffered == len(prefix) and decoded.needed == needed


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\n",
        b"\x13\x03\x01\x00\x02\x02\x0a",  # content type 19
        b"\x19\x03\x03\x00\x02\x02\x0a",  # tls12_cid exists only in DTLS
        b"\x15\x04\x01\x00\x02\x02\x0a",  # major version 4
        b"\x16\xfe\xfd\x00\x02",  # a DTLS version on a stream
        b"\x15\x03\x01\x48\x01",  # length 18433 > 2^14 + 2048
        b"\x15\x03\x01\x00\x00",  # an empty alert
        b"\x80\x00\x00",  # SSLv2 length 0
        b"\x80\x03\x09\x00\x00",  # SSLv2 message type 9
    ],
)
def test_not_tls(data: bytes) -> None:
    assert isinstance(decode(data), NotTLS)


def test_hot_path_test_matches_the_decoder() -> None:
    for first in range(256):
        verdict = decode(bytes([first]))
        assert records.could_start_tls(first) == isinstance(verdict, NeedMore), first


def test_hexdump() -> None:
    assert records.hexdump(FIELD_ALERT) == "15 03 01 00 02 02 0a"
    assert records.hexdump(bytes(40), 4) == "00 00 00 00 ... (40 bytes)"


# -- properties

record_fields = st.tuples(
    st.integers(20, 24),
    st.integers(0, 255).map(lambda minor: 0x0300 | minor),
    st.binary(min_size=1, max_size=300),
)


@given(st.binary(max_size=64))
@settings(max_examples=2000)
def test_never_raises_and_verdict_is_one_of_three(data: bytes) -> None:
    assert isinstance(decode(data), Records | NeedMore | NotTLS)


@given(st.binary(max_size=48), st.binary(max_size=48))
@settings(max_examples=2000)
def test_verdicts_are_consistent_as_bytes_are_appended(data: bytes, more: bytes) -> None:
    before, after = decode(data), decode(data + more)
    if isinstance(before, NotTLS):
        assert isinstance(after, NotTLS)
    elif isinstance(before, NeedMore):
        if len(data + more) >= before.needed:
            assert not isinstance(after, NeedMore) or after.needed > before.needed
        else:
            assert isinstance(after, NeedMore | NotTLS)
    else:
        # complete records stay complete and unchanged; only what follows them can grow
        assert isinstance(after, Records)
        assert after.records[: len(before.records)] == before.records


@given(st.lists(record_fields, min_size=1, max_size=5))
def test_encode_then_decode_round_trips(fields: list[tuple[int, int, bytes]]) -> None:
    data = b"".join(records.encode_record(ct, version, fragment) for ct, version, fragment in fields)
    decoded = decode(data)
    assert isinstance(decoded, Records)
    assert [(r.content_type, r.version, r.fragment) for r in decoded.records] == fields
    assert b"".join(r.encode() for r in decoded.records) == data
    assert decoded.size == len(data) and decoded.rest == b""


@given(record_fields, st.data())
def test_every_strict_prefix_of_a_record_needs_more(fields: tuple[int, int, bytes], data: st.DataObject) -> None:
    encoded = records.encode_record(*fields)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    decoded = decode(encoded[:cut])
    assert isinstance(decoded, NeedMore)
    assert decoded.needed <= len(encoded)


@given(st.lists(record_fields, min_size=1, max_size=4), st.binary(max_size=48))
def test_complete_records_stay_complete_as_bytes_are_appended(
    fields: list[tuple[int, int, bytes]], more: bytes
) -> None:
    """The Records branch of the property above, reached every time (random bytes almost never decode as Records)."""
    data = b"".join(records.encode_record(*f) for f in fields)
    before, after = decode(data), decode(data + more)
    assert isinstance(before, Records) and isinstance(after, Records)
    assert after.records[: len(before.records)] == before.records


@given(st.lists(record_fields, min_size=1, max_size=4), st.binary(max_size=16))
def test_summaries_are_single_lines(fields: list[tuple[int, int, bytes]], tail: bytes) -> None:
    decoded = decode(b"".join(records.encode_record(*f) for f in fields) + tail)
    assert isinstance(decoded, Records) and len(decoded.records) >= len(fields)
    for r in decoded.records:
        line = describe(r)
        assert line and "\n" not in line
        assert r.to_dict()["summary"] == line


SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def test_short_fuzz_run_finds_no_violation() -> None:
    """The CI-sized version of scripts/fuzz (which runs a million examples on demand)."""
    p = subprocess.run(
        [sys.executable, str(SCRIPTS / "fuzz.py"), "--examples", "20000", "--seed", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert "20000 examples, seed 1, no violation" in p.stdout


def test_the_fuzz_run_reports_a_violation_under_python_O_too() -> None:
    """A decoder that stays NeedMore once the bytes it needed have arrived breaks the property above
    (`test_verdicts_are_consistent_as_bytes_are_appended`); scripts/fuzz must say so, and its checks are not
    `assert` statements, which `python -O` would drop."""
    program = "\n".join(
        [
            f"import sys; sys.path.insert(0, {str(SCRIPTS)!r})",
            "import fuzz",
            "from stray_tls.core.records import NeedMore",
            "try:",
            "    fuzz.check(b'\\x15\\x03', b'\\x01\\x00\\x02\\x02\\x0a', decode=lambda d: NeedMore(len(d), 5))",
            "except fuzz.Violation as e:",
            "    print('violation:', e)",
        ]
    )
    p = subprocess.run([sys.executable, "-O", "-c", program], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "violation: NeedMore(buffered=2, needed=5), then 7 bytes: still NeedMore(buffered=7, needed=5)" in p.stdout


def test_a_decode_of_pasted_bytes_shows_every_record() -> None:
    """`esrs-fix decode` is the user's own request: not capped as what the proxy says about traffic is."""
    from stray_tls.core import text

    rendered, is_tls = text.decode_text(bytes.fromhex("15 03 01 00 02 02 0a") * 100)
    assert is_tls and rendered.count("record at offset") == 100 and "record at offset 693:" in rendered
