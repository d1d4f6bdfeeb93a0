"""The decoder against an independent parser (dpkt's TLS record layer) on generated valid records."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stray_tls.core import records

dpkt = pytest.importorskip("dpkt")

valid_record = st.tuples(
    st.integers(20, 24),
    # dpkt refuses 0x0304 (TLS 1.3 records carry 0x0303 on the wire); ours names any 03 xx by design
    st.sampled_from([0x0300, 0x0301, 0x0302, 0x0303]),
    st.binary(min_size=1, max_size=600),
)


@given(st.lists(valid_record, min_size=1, max_size=6), st.data())
@settings(max_examples=500)
def test_same_records_as_dpkt_including_truncated_tails(
    fields: list[tuple[int, int, bytes]], data: st.DataObject
) -> None:
    stream = b"".join(records.encode_record(*f) for f in fields)
    cut = data.draw(st.integers(1, len(stream)))
    buf = stream[:cut]
    theirs, used = dpkt.ssl.tls_multi_factory(buf)
    ours = records.decode(buf)
    their_fields = [(r.type, r.version, bytes(r.data)) for r in theirs]
    if isinstance(ours, records.Records):
        assert [(r.content_type, r.version, r.fragment) for r in ours.records] == their_fields
        assert ours.size == used
        assert ours.rest == buf[used:] and ours.rest_incomplete == (used < len(buf))
    else:
        assert isinstance(ours, records.NeedMore) and their_fields == [] and used == 0


def test_the_field_alert_agrees() -> None:
    (theirs,), _used = dpkt.ssl.tls_multi_factory(bytes.fromhex("15 03 01 00 02 02 0a"))
    ours = records.decode(bytes.fromhex("15 03 01 00 02 02 0a"))
    assert isinstance(ours, records.Records)
    assert (
        (theirs.type, theirs.version, bytes(theirs.data))
        == (21, 0x0301, b"\x02\x0a")
        == (
            ours.records[0].content_type,
            ours.records[0].version,
            ours.records[0].fragment,
        )
    )
