"""HTTP/1 framing, done once (`http1`) and read the same way by both of its consumers: `check`'s client
(`wire.AnswerReader`) and the capture reader (`capture.scan`), with h11 as the outside referee.

Messages are encoded here from random bodies (Content-Length, chunked with random chunk sizes, extensions and
trailers, close-delimited; interim 1xx first; HEAD); what each reader must give back is what was encoded.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stray_tls.core import http1
from stray_tls.core.http1 import Body, FramingError
from stray_tls.fieldkit import wire

if TYPE_CHECKING:
    from stray_tls.fieldkit.results import ScanResult
    from tests.capgen import Conversation

ALERT = bytes.fromhex("1503010002020a")


# -- encoding


@dataclass
class Message:
    """One encoded response, and what a reader must make of it."""

    method: bytes
    status: int
    body: bytes  # the content: what a reader must give back
    wire: bytes  # the bytes on the connection
    framing: str  # "length", "chunked", "close", "none"


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-!#$%&'*+.^_`|~", min_size=1, max_size=8)
_extension = st.one_of(
    _token.map(lambda n: f";{n}"),
    st.tuples(_token, _token).map(lambda p: f";{p[0]}={p[1]}"),
    st.tuples(_token, st.text(alphabet="abc =;,xyz", max_size=8)).map(lambda p: f';{p[0]}="{p[1]}"'),
)


@st.composite
def chunked(draw: st.DrawFn, body: bytes) -> bytes:
    """`body` in chunks of random sizes, sizes in either case and with leading zeros, random extensions, trailers."""
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(body) - 1)), max_size=6)))) if len(body) > 1 else []
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True) if b > a]
    out = b""
    for piece in [*pieces, b""]:
        size = f"{len(piece):x}"
        size = "0" * draw(st.integers(0, 3)) + (size.upper() if draw(st.booleans()) else size)
        extensions = "".join(draw(st.lists(_extension, max_size=2)))
        out += f"{size}{extensions}\r\n".encode() + piece + (b"\r\n" if piece else b"")
    trailers = draw(st.lists(st.sampled_from([b"X-Trailer: 1\r\n", b"Server-Timing: total;dur=3\r\n"]), max_size=2))
    return out + b"".join(trailers) + b"\r\n"


@st.composite
def messages(draw: st.DrawFn, framings: tuple[str, ...] = ("length", "chunked", "close")) -> Message:
    # the alert bytes stand inside every body: a reader that ends a body early reads them as the next answer
    noise = draw(st.binary(max_size=2000))
    at = draw(st.integers(0, len(noise)))
    body = b"<" + noise[:at] + ALERT + noise[at:]
    framing = draw(st.sampled_from(framings))
    status = draw(st.sampled_from([200, 201, 203, 400, 403, 404, 500, 502]))
    method = b"HEAD" if framing != "close" and draw(st.integers(0, 9)) == 0 else b"GET"
    headers = [b"Server: test", b"Date: Mon, 20 Mar 2017 08:53:30 GMT"]
    if framing == "length":
        headers.append(b"Content-Length: %d" % len(body))
        encoded = body
    elif framing == "chunked":
        headers.append(b"Transfer-Encoding: chunked")
        encoded = draw(chunked(body))
    else:
        headers.append(b"Connection: close")
        encoded = body
    headers = draw(st.permutations(headers))
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" if draw(st.booleans()) else b""
    head = b"HTTP/1.1 %d Whatever\r\n" % status + b"".join(h + b"\r\n" for h in headers) + b"\r\n"
    if method == b"HEAD":
        return Message(method, status, b"", interim + head, "none")
    return Message(method, status, body, interim + head + encoded, framing)


def splits(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=8))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True) if b > a]


# -- the readers


def read_with_wire(message: Message, pieces: list[bytes]) -> tuple[int | None, bytes, int]:
    """(status, body, how many pieces were fed when the reader said the answer was complete; -1: never)."""
    reader = wire.AnswerReader(message.method)
    done_at = -1
    for i, piece in enumerate(pieces):
        if reader.feed(piece):
            done_at = i
            break
    answer = reader.answer(timed_out=False)
    assert not answer.framing_problem
    return answer.status, answer.body, done_at


def read_with_h11(messages: list[Message], closed: bool) -> list[tuple[int, bytes]]:
    """Each response's status and body as h11 reads the same bytes on one connection."""
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(b"".join(m.wire for m in messages))
    if closed:
        conn.receive_data(b"")
    out = []
    for m in messages:
        conn.send(h11.Request(method=m.method, target="/", headers=[("Host", "esrs.example")]))
        conn.send(h11.EndOfMessage())
        status, body = 0, b""
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            assert event is not h11.NEED_DATA and event is not h11.PAUSED, event
        out.append((status, body))
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
    return out


def read_with_capture(messages: list[Message], segment: int, pipeline: int) -> list[tuple[str, str]]:
    """The capture reader's findings, as (request line, kind), on one keep-alive connection carrying `messages`,
    then (unless the last is close-delimited) one more request answered by the bare alert; `pipeline` requests go
    out before the first of their answers comes."""
    pytest.importorskip("dpkt")
    from stray_tls.fieldkit import capture
    from tests.capgen import Conversation, write_capture

    turns = [(b"%s /%d HTTP/1.1\r\nHost: esrs.example\r\n\r\n" % (m.method, i), m.wire) for i, m in enumerate(messages)]
    if messages[-1].framing != "close":
        turns.append((b"GET /last HTTP/1.1\r\nHost: esrs.example\r\n\r\n", ALERT))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.pcap"
        conversation = Conversation(("10.0.0.5", 40001), ("10.0.0.1", 8080), turns, segment=segment, pipeline=pipeline)
        write_capture(path, [conversation])
        result = capture.scan(path)
    assert not result.unframed and not result.framing_conflicts and not result.gaps
    return [(e.request_line, str(e.finding.kind)) for e in result.exchanges]


# -- properties: both consumers and h11 read the same bytes the same way


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.data())
def test_check_s_client_reads_every_framing_back_and_agrees_with_h11(data: st.DataObject) -> None:
    message = data.draw(messages())
    pieces = data.draw(st.composite(lambda draw: splits(draw, message.wire))())
    status, body, done_at = read_with_wire(message, pieces)
    assert (status, body) == (message.status, message.body)
    # complete with its last byte, not before; a close-delimited body only at the close
    assert done_at == (-1 if message.framing == "close" else len(pieces) - 1)
    assert read_with_h11([message], closed=message.framing == "close") == [(message.status, message.body)]


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=60)
@given(
    st.lists(messages(("length", "chunked")), min_size=1, max_size=4),
    st.one_of(st.none(), messages(("close",))),
    st.integers(1, 1400),
    st.sampled_from([1, 2, 6]),
)
def test_the_capture_reader_frames_keep_alive_answers_as_h11_does(
    kept: list[Message], last: Message | None, segment: int, pipeline: int
) -> None:
    sequence = kept + ([last] if last is not None else [])
    # h11 reads each answer on the one connection with the body encoded
    assert read_with_h11(sequence, closed=True) == [(m.status, m.body) for m in sequence]
    # the capture reader ends each answer where it ends: the alert inside a body is never judged as an answer, the
    # bare alert after the last kept-alive answer is paired with its own request
    expected = [] if last is not None else [("GET /last HTTP/1.1", "tls_records")]
    assert read_with_capture(sequence, segment, pipeline) == expected
    # and check's client reads each of them back whole, followed by the next
    for i, m in enumerate(sequence):
        reader = wire.AnswerReader(m.method)
        follows = b"".join(n.wire for n in sequence[i + 1 :])
        reader.feed(m.wire + follows)
        assert reader.answer(timed_out=False).body == m.body


def read_with_framer(method: bytes, pieces: list[bytes], then: bytes = b"") -> tuple[list[http1.Step], bytes, bytes]:
    """The steps `http1.AnswerFramer` says for one answer fed in `pieces` (MORE left out), the body it hands on, and
    the bytes it left unread after the answer's end (`then`, fed after the answer, must come back whole)."""
    framer = http1.AnswerFramer(method)
    steps: list[http1.Step] = []
    body = b""
    rest = b""
    for n, piece in enumerate([*pieces, then] if then else pieces):
        pos = 0
        while True:
            before = pos
            step, pos = framer.step(piece, pos)
            if step is http1.Step.MORE:
                break
            assert pos > before or step is not http1.Step.BODY or framer.taken, "a step that reads nothing"
            steps.append(step)
            if step is http1.Step.BODY:
                body += framer.taken
            if step is http1.Step.END:
                rest = piece[pos:] + b"".join(([*pieces, then] if then else pieces)[n + 1 :])
                return steps, body, rest
    return steps, body, rest


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.data())
def test_the_framer_says_the_same_however_the_answer_is_cut(data: st.DataObject) -> None:
    """The one reading both readers share: head, body and end in the same places for any cut of the bytes, the body
    de-chunked, and not one byte of what follows the answer taken."""
    message = data.draw(messages())
    pieces = data.draw(st.composite(lambda draw: splits(draw, message.wire))())
    following = b"" if message.framing == "close" else b"HTTP/1.1 204 Next\r\n\r\n"
    steps, body, rest = read_with_framer(message.method, pieces, following)
    assert body == message.body
    interim = message.wire.startswith(b"HTTP/1.1 100")
    assert steps[: 1 + interim] == [http1.Step.INTERIM] * interim + [http1.Step.HEAD]
    assert set(steps[1 + interim :]) <= {http1.Step.BODY, http1.Step.END}
    if message.framing == "close":
        assert http1.Step.END not in steps and not rest  # a close-delimited body ends at the close only
    else:
        assert steps[-1] is http1.Step.END and rest == following
    whole = read_with_framer(message.method, [message.wire], following)
    assert [s for s in whole[0] if s is not http1.Step.BODY] == [s for s in steps if s is not http1.Step.BODY]
    assert whole[1:] == (body, rest)


def test_the_framer_hands_on_an_answer_that_is_no_http_as_it_comes() -> None:
    framer = http1.AnswerFramer(b"GET")
    assert framer.step(ALERT[:3]) == (http1.Step.NOT_HTTP, 3) and framer.taken == ALERT[:3]
    assert framer.step(ALERT[3:]) == (http1.Step.BODY, 4) and framer.taken == ALERT[3:]  # no end of its own
    assert framer.step(b"", 0) == (http1.Step.MORE, 0)
    assert framer.not_http and not framer.ending


@pytest.mark.parametrize(
    "body", [b"Content-Length: 3\r\n\r\nabc", b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"]
)
def test_an_answer_that_comes_a_byte_at_a_time_ends_with_its_last_byte(body: bytes) -> None:
    wire_bytes = b"HTTP/1.1 200 OK\r\n" + body
    following = b"HTTP/1.1 204 Next\r\n\r\n"
    steps, got, rest = read_with_framer(b"GET", [wire_bytes[i : i + 1] for i in range(len(wire_bytes))], following)
    assert (steps[0], steps[-1], got, rest) == (http1.Step.HEAD, http1.Step.END, b"abc", following)


def test_a_head_longer_than_the_limit_loses_the_framing() -> None:
    framer = http1.AnswerFramer(b"GET", max_head=64)
    assert framer.step(b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * 80) == (http1.Step.TOO_LONG, 100)


# -- the exact cases


CL_THEN_TE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"


def test_chunked_wins_over_a_content_length_before_it_and_the_answer_is_flagged() -> None:
    framing = http1.response_framing(CL_THEN_TE.split(b"\r\n\r\n")[0] + b"\r\n\r\n")
    assert framing.body is Body.CHUNKED and framing.conflict
    reader = wire.AnswerReader()
    assert not reader.feed(CL_THEN_TE[:-10])  # 3 bytes of body are no end of it
    assert reader.feed(CL_THEN_TE[-10:])
    answer = reader.answer(timed_out=False)
    assert answer.body == b"hello" and "both Transfer-Encoding and Content-Length" in answer.framing_problem
    assert "[framing: both Transfer-Encoding and Content-Length" in wire.describe(answer)[0]


def test_a_request_with_both_is_read_as_chunked_too() -> None:
    head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
    assert http1.request_framing(head) == http1.Framing(Body.CHUNKED, conflict=True)


@pytest.mark.parametrize("size", [b"-5", b"+5", b"0x5", b"5_0", b" 5", b"", b"5 5", b"1" * 17, b"g"])
def test_chunk_sizes_are_hex_digits_only(size: bytes) -> None:
    with pytest.raises(FramingError, match="is not 1 to 16 hex digits"):
        http1.chunk_size(size)
    reader = wire.AnswerReader()
    assert not reader.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\ngood\r\n")
    assert not reader.feed(b"2\r\nok\r\n" + size + b"\r\nhello\r\n0\r\n\r\n")  # read on to the close
    answer = reader.answer(timed_out=False)
    assert "hex digits" in answer.framing_problem
    assert answer.body == b"goodok" + size + b"\r\nhello\r\n0\r\n\r\n"  # what was read, then as it came


@pytest.mark.parametrize(
    ("size", "value"), [(b"5", 5), (b"1A", 26), (b"1a;name=value", 26), (b"1a ; name", 26), (b"0" * 15 + b"5", 5)]
)
def test_chunk_sizes_that_are_sizes(size: bytes, value: int) -> None:
    assert http1.chunk_size(size) == value


def test_chunk_data_must_end_with_its_line_end() -> None:
    reader = http1.ChunkedReader()
    with pytest.raises(FramingError, match="not by a line end"):
        reader.feed(b"5\r\nhelloXX\r\n0\r\n\r\n")


@pytest.mark.parametrize(
    ("head", "method", "expected"),
    [
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", b"GET", http1.NO_BODY),
        (b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", b"GET", http1.NO_BODY),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"HEAD", http1.NO_BODY),
        (b"HTTP/1.1 100 Continue\r\n\r\n", b"GET", http1.NO_BODY),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", b"GET", http1.Framing(Body.TUNNEL)),
        (b"HTTP/1.1 200 Connection established\r\n\r\n", b"CONNECT", http1.Framing(Body.TUNNEL)),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", b"GET", http1.Framing(Body.LENGTH, 5)),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"GET", http1.NO_BODY),
        (b"HTTP/1.1 200 OK\r\n\r\n", b"GET", http1.Framing(Body.CLOSE)),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", b"GET", http1.Framing(Body.CHUNKED)),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", b"GET", http1.Framing(Body.CLOSE)),
    ],
)
def test_response_framing(head: bytes, method: bytes, expected: http1.Framing) -> None:
    assert http1.response_framing(head, method) == expected


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
    ],
)
def test_a_content_length_that_is_not_one_number_frames_nothing(head: bytes) -> None:
    framing = http1.response_framing(head)
    assert framing.body is Body.INVALID and "is not one number" in framing.problem
    reader = wire.AnswerReader()
    assert not reader.feed(head + b"hello")  # only the close ends it
    assert "is not one number" in reader.answer(timed_out=False).framing_problem


def test_a_request_whose_last_coding_is_not_chunked_cannot_be_framed() -> None:
    framing = http1.request_framing(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n")
    assert framing.body is Body.INVALID and "not chunked" in framing.problem
    assert http1.request_framing(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == http1.NO_BODY


def test_check_still_shows_the_raw_bytes_of_an_answer_that_is_not_http() -> None:
    reader = wire.AnswerReader()
    assert not reader.feed(ALERT)  # no end of its own: read until the close
    answer = reader.answer(timed_out=False)
    assert answer.raw == ALERT and answer.status is None
    assert wire.describe(answer)[0].startswith("no HTTP status: raw bytes 15 03 01 00 02 02 0a, decoded TLS alert")


def test_interim_answers_are_skipped_whole() -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    final = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    reader = wire.AnswerReader()
    assert not reader.feed(answer)
    assert reader.feed(final)
    got = reader.answer(timed_out=False)
    assert (got.status, got.body) == (200, b"ok")


# -- the exact cases in a capture


def scan(*conversations: Conversation) -> ScanResult:
    pytest.importorskip("dpkt")
    from stray_tls.fieldkit import capture
    from tests.capgen import write_capture

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.pcap"
        write_capture(path, conversations)
        return capture.scan(path)


def conversation(
    turns: list[tuple[bytes, bytes]] | None = None, script: list[tuple[int, bytes]] | None = None
) -> Conversation:
    from tests.capgen import Conversation

    return Conversation(("10.0.0.5", 40001), ("10.0.0.1", 8080), turns or [], segment=200, script=script)


REQ = b"GET https://esrs.example:443/ HTTP/1.1\r\nHost: esrs.example:443\r\n\r\n"
LAST = b"GET https://esrs.example:8443/ HTTP/1.1\r\nHost: esrs.example:8443\r\n\r\n"


def test_a_capture_reads_chunked_over_a_content_length_before_it() -> None:
    # read by the Content-Length, the answer would end inside the chunk and its alert bytes be judged as an answer
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n<" + ALERT + b">\r\n0\r\n\r\n"
    )
    result = scan(conversation([(REQ, answer), (LAST, ALERT)]))
    assert [(e.request_line, e.finding.kind) for e in result.exchanges] == [
        (LAST.split(b"\r\n")[0].decode(), "tls_records")
    ]
    assert result.framing_conflicts == 1 and result.unframed == 0


@pytest.mark.parametrize("size", [b"-5", b"+5", b"0x5", b"5_0"])
def test_a_capture_stops_reading_at_a_chunk_size_that_is_none(size: bytes) -> None:
    # int(size, 16) takes every one of these; -5 made the reader step backwards into bytes it had read
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\n" + ALERT + b"\r\n0\r\n\r\n"
    result = scan(conversation([(REQ, answer), (LAST, ALERT)]))
    assert result.exchanges == [] and result.unframed == 1  # no guess at where the next answer begins


def test_a_request_during_a_close_delimited_answer_does_not_end_it() -> None:
    # the rest of the body holds the alert's bytes: judged as the answer to the second request, it was a false finding
    script = [
        (0, REQ),
        (1, b"HTTP/1.0 200 OK\r\nServer: test\r\n\r\n<html>the first part of the body"),
        (0, LAST),
        (1, b"and its rest, " + ALERT + b" and more</html>"),
    ]
    result = scan(conversation(script=script))
    assert result.exchanges == []
    assert result.requests == 2 and result.requests_unanswered == 1  # the server closed without answering it


def test_a_101_answer_ends_with_its_head() -> None:
    # 101 is final, not interim: what follows its head is another protocol, not a further answer to wait for
    reader = wire.AnswerReader()
    assert reader.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello")
    answer = reader.answer(timed_out=False)
    assert (answer.status, answer.body) == (101, b"")
