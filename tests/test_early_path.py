"""The early path, deterministically: a real mitmproxy `Http1Client` (11 or 12) fed events by hand, no sockets.

`compat.Http1ClientDriver` speaks in neutral words; a driver built while no EarlyDetection is installed is the
stock client (its state is bound at start), which is what the wrapped one must match whenever it steps aside.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from mitmproxy import http

from stray_tls import compat
from stray_tls.compat import EarlyDetection, Http1ClientDriver, early
from stray_tls.core.names import DEFAULT_HOLD_TIMEOUT

from .conftest import FIELD_ALERT

#: Deliberately not the default (`names.DEFAULT_HOLD_TIMEOUT`): the wakeup must carry the detector's setting.
HOLD = 2.5
assert HOLD != DEFAULT_HOLD_TIMEOUT
MADE_STATUS = 555
MADE_BODY = b"made by on_records"
ANSWER = [("response", MADE_STATUS), ("data", MADE_BODY), ("end",), ("close",)]

Step = tuple[str, bytes] | tuple[str]  # ("data", b"..."), ("close",), ("wakeup",)


@dataclass
class OnRecords:
    """An on_records callback that records its calls and answers with a labelled response (or not)."""

    answer: bool = True
    fail: bool = False
    calls: list[tuple[bytes, bool]] = field(default_factory=list)

    def __call__(self, request: http.Request, head: bytes, complete: bool) -> http.Response | None:
        self.calls.append((head, complete))
        if self.fail:
            raise RuntimeError("on_records broke")
        return http.Response.make(MADE_STATUS, MADE_BODY) if self.answer else None


def play(steps: list[Step], driver: Http1ClientDriver | None = None) -> list[list[compat.Said]]:
    """Send a request, then the steps; what the client said after each step."""
    d = driver or Http1ClientDriver()
    d.request()
    said: list[list[compat.Said]] = []
    for step in steps:
        if step[0] == "data":
            said.append(d.receive(step[1]))  # type: ignore[misc]
        elif step[0] == "close":
            said.append(d.close())
        else:
            said.append(d.wakeup())
    return said


def flat(said: list[list[compat.Said]]) -> list[compat.Said]:
    return [word for words in said for word in words]


def stock(steps: list[Step]) -> list[list[compat.Said]]:
    """What mitmproxy itself says for these steps: must run while no EarlyDetection is installed."""
    assert not wrapped(), "stock() needs the unwrapped client"
    return play(steps)


def wrapped() -> bool:
    return bool(getattr(compat._Internals().Http1Client.read_headers, "__esrs_fix__", False))


@pytest.fixture
def on_records() -> OnRecords:
    return OnRecords()


@pytest.fixture
def detection(on_records: OnRecords) -> Iterator[EarlyDetection]:
    """An EarlyDetection, not yet installed; always uninstalled at the end."""
    d = EarlyDetection(on_records, lambda request: None)
    d.hold_timeout = HOLD
    yield d
    d.uninstall()
    assert not wrapped(), "a test left mitmproxy's HTTP/1 client wrapped"


@pytest.fixture
def installed(detection: EarlyDetection, on_records: OnRecords) -> EarlyDetection:
    assert detection.install(), detection.reason
    on_records.calls.clear()  # the behaviour check at install does not call it, but be sure
    return detection


# -- complete records


def test_a_complete_record_in_one_event_is_answered_at_once(installed, on_records) -> None:
    assert play([("data", FIELD_ALERT)]) == [ANSWER]
    assert on_records.calls == [(FIELD_ALERT, True)]


@pytest.mark.parametrize(
    "chunks",
    [
        [FIELD_ALERT[:1], FIELD_ALERT[1:]],
        [FIELD_ALERT[:5], FIELD_ALERT[5:]],
        [FIELD_ALERT[:3], FIELD_ALERT[3:5], FIELD_ALERT[5:]],
        [FIELD_ALERT[:2], FIELD_ALERT[2:4], FIELD_ALERT[4:]],
    ],
    ids=lambda chunks: "+".join(str(len(c)) for c in chunks),
)
def test_a_record_split_over_events_waits_once_then_answers(installed, on_records, chunks: list[bytes]) -> None:
    said = play([("data", c) for c in chunks])
    assert said[0] == [("wakeup", HOLD)]  # one wakeup, at the first partial event, and nothing else
    assert all(words == [] for words in said[1:-1])
    assert said[-1] == ANSWER
    assert on_records.calls == [(FIELD_ALERT, True)]


def test_two_records_and_trailing_bytes_are_handed_on_whole(installed, on_records) -> None:
    close_notify = bytes.fromhex("15 03 01 00 02 01 00")
    assert play([("data", FIELD_ALERT + close_notify + b"\x00")]) == [ANSWER]
    assert on_records.calls == [(FIELD_ALERT + close_notify + b"\x00", True)]


# -- a record that never completes


def test_the_wakeup_ends_the_wait_for_a_record_that_never_completes(installed, on_records) -> None:
    said = play([("data", FIELD_ALERT[:3]), ("wakeup",)])
    assert said == [[("wakeup", HOLD)], ANSWER]
    assert on_records.calls == [(FIELD_ALERT[:3], False)]


def test_a_stale_wakeup_after_the_answer_is_ignored(installed, on_records) -> None:
    said = play([("data", FIELD_ALERT[:3]), ("data", FIELD_ALERT[3:]), ("wakeup",)])
    assert said == [[("wakeup", HOLD)], ANSWER, []]
    assert on_records.calls == [(FIELD_ALERT, True)]


def test_a_wakeup_that_is_not_ours_does_not_end_the_wait(installed, on_records) -> None:
    d = Http1ClientDriver()
    d.request()
    assert d.receive(FIELD_ALERT[:3]) == [("wakeup", HOLD)]
    i = compat._Internals()
    foreign = i.Wakeup(i.RequestWakeup(1.0))  # someone else's wakeup, delivered to this layer
    assert [d._word(c) for c in d.layer.handle_event(foreign)] == []
    assert on_records.calls == []
    assert d.receive(FIELD_ALERT[3:]) == ANSWER
    assert on_records.calls == [(FIELD_ALERT, True)]


def test_a_wakeup_before_any_byte_is_ignored(installed, on_records) -> None:
    d = Http1ClientDriver()
    d.request()
    i = compat._Internals()
    assert [d._word(c) for c in d.layer.handle_event(i.Wakeup(i.RequestWakeup(1.0)))] == []
    assert d.receive(FIELD_ALERT) == ANSWER


# -- where the wrapper steps aside, the client says what stock mitmproxy says

#: Steps where the wrapper must step aside, and how many wakeups it asks for meanwhile: one, at the first event of
#: bytes that could begin a record (its wait for the rest), or none when the first byte cannot start TLS.
STOCK_CASES: dict[str, tuple[list[Step], int]] = {
    "not TLS after a partial look": ([("data", b"\x15\x03"), ("data", b"\x09abc"), ("close",)], 1),
    "not TLS, then a line": ([("data", b"\x15\x03"), ("data", b"\x09abc\r\n\r\n")], 1),
    "0x16 then HTTP text": ([("data", b"\x16"), ("data", b"TTP/1.1 200 OK\r\n\r\n")], 1),
    "a clean head split across events": (
        [("data", b"HTTP/1.1 2"), ("data", b"00 OK\r\nContent-Le"), ("data", b"ngth: 2\r\n\r\nok")],
        0,
    ),
    "a clean head in one event": ([("data", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")], 0),
    "closed mid-record": ([("data", FIELD_ALERT[:3]), ("close",)], 1),
    "closed mid-record after two events": ([("data", FIELD_ALERT[:2]), ("data", FIELD_ALERT[2:6]), ("close",)], 1),
    "closed without a byte": ([("close",)], 0),
}


@pytest.mark.parametrize(("steps", "wakeups"), list(STOCK_CASES.values()), ids=list(STOCK_CASES))
def test_what_is_not_complete_tls_is_left_to_mitmproxy(detection, on_records, steps: list[Step], wakeups: int) -> None:
    expected = stock(steps)
    assert detection.install(), detection.reason
    said = play(steps)
    # The only word the wrapper may add is the wakeup that bounds its wait for a record to complete, with the first
    # bytes that could begin one.
    assert [w for w in flat(said) if w[0] == "wakeup"] == [("wakeup", HOLD)] * wakeups
    assert wakeups == 0 or ("wakeup", HOLD) in said[0]
    assert [[w for w in words if w[0] != "wakeup"] for words in said] == expected
    assert on_records.calls == []


def test_closed_mid_record_gives_stocks_unexpected_server_response(installed, on_records) -> None:
    said = play([("data", FIELD_ALERT[:3]), ("close",)])
    assert said == [[("wakeup", HOLD)], [("error", "unexpected server response: b'\\x15\\x03\\x01'")]]
    assert on_records.calls == []


@pytest.mark.parametrize(
    "steps",
    [
        [("data", FIELD_ALERT), ("close",)],
        [("data", FIELD_ALERT[:3]), ("data", FIELD_ALERT[3:]), ("close",)],
        [("data", FIELD_ALERT + b"\r\n")],
    ],
    ids=["whole", "split", "with a line ending"],
)
def test_on_records_returning_none_leaves_stock_behaviour(detection, on_records, steps: list[Step]) -> None:
    expected = stock(steps)
    on_records.answer = False
    assert detection.install(), detection.reason
    said = play(steps)
    assert [[w for w in words if w[0] != "wakeup"] for words in said] == expected
    assert on_records.calls  # it was asked, and declined


def test_on_records_declining_an_incomplete_record_leaves_it_to_mitmproxy(installed, on_records) -> None:
    on_records.answer = False
    said = play([("data", FIELD_ALERT[:3]), ("wakeup",), ("close",)])
    assert said == [[("wakeup", HOLD)], [], [("error", "unexpected server response: b'\\x15\\x03\\x01'")]]
    assert on_records.calls == [(FIELD_ALERT[:3], False)]


def test_an_exception_in_on_records_gives_stock_behaviour_and_one_error_line(
    detection, on_records, caplog: pytest.LogCaptureFixture
) -> None:
    steps: list[Step] = [("data", FIELD_ALERT), ("close",)]
    expected = stock(steps)
    on_records.fail = True
    assert detection.install(), detection.reason
    with caplog.at_level(logging.ERROR, logger=early.log.name):
        first = play(steps)
        second = play([("data", FIELD_ALERT[:3]), ("wakeup",), ("close",)])  # the same failure again
    assert first == expected
    assert second[-1] == [("error", "unexpected server response: b'\\x15\\x03\\x01'")]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "RuntimeError: on_records broke" in errors[0].getMessage()
    assert "left to mitmproxy" in errors[0].getMessage()
    assert len(on_records.calls) == 2


# -- install and uninstall


def test_install_twice_is_idempotent_and_uninstall_restores_the_originals(detection) -> None:
    i = compat._Internals()
    original_read_headers, original_send = i.Http1Client.read_headers, i.Http1Server.send
    assert detection.install() and detection.install()
    assert detection.active
    assert i.Http1Client.read_headers is not original_read_headers
    assert play([("data", FIELD_ALERT)]) == [ANSWER]
    detection.uninstall()
    assert not detection.active
    assert i.Http1Client.read_headers is original_read_headers
    assert i.Http1Server.send is original_send
    assert play([("data", FIELD_ALERT), ("close",)]) == stock([("data", FIELD_ALERT), ("close",)])
    detection.uninstall()  # twice is harmless
    assert i.Http1Client.read_headers is original_read_headers


def test_a_second_detection_refuses_while_the_first_is_active(installed) -> None:
    other_calls = OnRecords()
    other = EarlyDetection(other_calls, lambda request: None)
    try:
        assert not other.install()
        assert "already installed" in other.reason
        assert not other.active
        assert play([("data", FIELD_ALERT)]) == [ANSWER]  # the first one still answers
        installed.uninstall()
        assert other.install(), other.reason  # once the first is gone, the second may
    finally:
        other.uninstall()
    assert other_calls.calls == []


class _DropsLastByte(Http1ClientDriver):
    """mitmproxy delivering the upstream's bytes differently from what the wrappers expect."""

    def receive(self, data: bytes) -> list[compat.Said]:
        return super().receive(data[:-1])


class _ParsesNothing(Http1ClientDriver):
    """mitmproxy's client no longer parsing a clean head the way the wrappers expect."""

    def receive(self, data: bytes) -> list[compat.Said]:
        said = super().receive(data)
        return [w for w in said if w[0] != "response"] if data.startswith(b"HTTP/") else said


@pytest.mark.parametrize(
    ("driver", "problem"),
    [
        (_DropsLastByte, f"the alert gave [('wakeup', {DEFAULT_HOLD_TIMEOUT!r})]"),
        (_ParsesNothing, "a clean response gave"),
    ],
    ids=["alert answered differently", "clean head answered differently"],
)
def test_the_behaviour_check_refuses_a_mitmproxy_that_answers_differently(
    detection, on_records, monkeypatch: pytest.MonkeyPatch, driver: type[Http1ClientDriver], problem: str
) -> None:
    monkeypatch.setattr(early, "Http1ClientDriver", driver)  # the driver the check builds
    detection.hold_timeout = EarlyDetection(on_records, lambda request: None).hold_timeout  # the default
    assert not detection.install()
    assert "does not behave as early detection expects" in detection.reason
    assert problem in detection.reason
    assert not detection.active and not wrapped()  # it stayed off and put the originals back
    assert on_records.calls == []  # the check never calls the addon's own callback


def test_the_behaviour_check_turns_a_surprise_inside_the_wrapper_into_a_reason(
    detection, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_decode(data: bytes | bytearray) -> object:
        raise KeyError("records changed")

    monkeypatch.setattr(early.tls, "decode", broken_decode)
    with caplog.at_level(logging.ERROR, logger=early.log.name):
        assert not detection.install()
    assert "KeyError" in detection.reason and "records changed" in detection.reason
    assert not wrapped()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []  # a reason, not an error line


def test_the_behaviour_check_answers_the_probe_without_calling_on_records(detection, on_records) -> None:
    assert detection.install(), detection.reason
    assert on_records.calls == []
    assert detection.on_records is on_records  # restored after the probe
