"""TCP reassembly for the capture reader (pure): each direction's bytes in order, whatever order segments came in.

`Connection` takes segments of both directions in capture order (retransmissions, overlaps, out-of-order ones)
and hands on in-order bytes through `stream_bytes`; a subclass says what they mean (`capture` follows HTTP/1).
`skip[side]` is how many bytes a direction may send that need no look (the rest of a body already decided on,
counted down, or `IGNORE`): such bytes are counted, never handed on, and the capture's scan loop passes in-order
segments inside them by without calling in at all. A gap that will not fill (more than `MAX_PENDING` segments
wait behind it, or the connection ends) is stepped over and said through `gap`.

A FIN takes its place in the stream too: it counts where its sequence number stands, so a FIN captured before the
bytes it follows (reordering, a retransmission) ends the direction only once those bytes have gone on (`closed`).
A SYN's payload (TCP Fast Open) is stream bytes like any other. `jumped` tells a segment that cannot belong to this
connection (the address pair reused by a new one whose SYN the capture missed): the reader starts afresh.
"""

from __future__ import annotations

#: Out-of-order segments kept per direction before the gap in front of them is given up.
MAX_PENDING = 64
#: How far (in sequence numbers, either way) a segment may stand from where its direction is and still belong to the
#: same connection: far beyond what reordering can hold here (MAX_PENDING segments of at most 64 KiB), while a new
#: connection's random numbers land this near the old ones (in both directions at once) about once in 16,000 times.
JUMP = 1 << 24
#: A direction's `skip` when nothing more it sends matters.
IGNORE = 1 << 62
SEQ_MASK = 0xFFFFFFFF
SYN, FIN, RST, ACK = 0x02, 0x01, 0x04, 0x10


class Connection:
    """Both directions (side 0 and 1) of one TCP connection, reassembled; subclasses implement the three hooks."""

    __slots__ = ("ended", "fin", "last", "nxt", "pending", "skip")

    def __init__(self) -> None:
        self.nxt: list[int | None] = [None, None]  # the next sequence number expected from each side
        self.pending: tuple[dict[int, bytes], dict[int, bytes]] = ({}, {})
        self.skip = [0, 0]
        self.last = 0.0  # capture time of the latest segment
        self.fin: list[int | None] = [None, None]  # where each side's FIN stands in its stream, once seen
        self.ended = [False, False]  # each side's stream has gone on up to its FIN

    # -- the hooks

    def stream_bytes(self, side: int, data: bytes, ts: float) -> None:
        """In-order bytes of `side` that need a look."""
        raise NotImplementedError

    def skipped(self, side: int) -> None:
        """The bytes `skip[side]` counted down have all gone by."""
        raise NotImplementedError

    def gap(self, side: int, size: int, absorbed: bool) -> None:
        """`size` bytes of `side` missing from the capture were stepped over; `absorbed` when they fell inside
        `skip[side]` (nothing that needed a look was lost)."""
        raise NotImplementedError

    def closed(self, side: int) -> None:
        """Every byte `side` sent before its FIN has gone on (or was stepped over): that direction has ended."""

    # -- segments in, bytes out

    def jumped(self, side: int, seq: int, ack: int, flags: int) -> bool:
        """The segment cannot belong to this connection: its sequence number is more than `JUMP` away from where
        `side` is, and so is its acknowledgment from where the other side is (when that is known)."""
        nxt, theirs = self.nxt[side], self.nxt[1 - side]
        if nxt is None or not _far((seq + (flags & SYN)) & SEQ_MASK, nxt):
            return False
        return theirs is None or not flags & ACK or _far(ack, theirs)

    def segment(self, side: int, seq: int, flags: int, payload: bytes, ts: float) -> None:
        """One segment of `side`, in any order; in-order bytes go on, and a FIN once they reach it."""
        if flags & SYN:  # its payload, if any (TCP Fast Open), begins after it
            seq = (seq + 1) & SEQ_MASK
            if self.nxt[side] is None:
                self.nxt[side] = seq
        if flags & FIN and self.fin[side] is None:
            self.fin[side] = (seq + len(payload)) & SEQ_MASK
        if payload:
            self.take(side, seq, payload, ts)
        self.at_fin(side)

    def at_fin(self, side: int) -> None:
        """Say `closed` once `side`'s stream has reached its FIN (or passed it: bytes after a FIN are bogus)."""
        fin, nxt = self.fin[side], self.nxt[side]
        if fin is not None and nxt is not None and not self.ended[side] and (nxt - fin) & SEQ_MASK < 0x80000000:
            self.ended[side] = True
            self.closed(side)

    def take(self, side: int, seq: int, payload: bytes, ts: float) -> None:
        """The payload of one segment at `seq`: on now if in order, kept if ahead, trimmed if partly old."""
        nxt = self.nxt[side]
        if nxt is None:  # the capture began mid-stream
            nxt = seq
        offset = (seq - nxt) & SEQ_MASK
        if offset >= 0x80000000:  # before nxt: a retransmission, maybe partly new
            overlap = (nxt - seq) & SEQ_MASK
            if overlap >= len(payload):
                return
            payload, seq, offset = payload[overlap:], nxt, 0
        pending = self.pending[side]
        if offset:
            if len(pending) < MAX_PENDING:
                if len(payload) > len(pending.get(seq, b"")):
                    pending[seq] = payload
                return
            pending[seq] = payload
            self.give_up_gap(side, ts)  # a gap that will not fill: step over it
            return
        self.nxt[side] = (seq + len(payload)) & SEQ_MASK
        self.deliver(side, payload, ts)
        self.drain(side, ts)

    def drain(self, side: int, ts: float) -> None:
        """Deliver the stored segments of `side` that follow in order from `nxt`."""
        pending = self.pending[side]
        while pending:
            nxt = self.nxt[side]
            assert nxt is not None
            chunk = pending.pop(nxt, None)
            if chunk is None:  # a stored segment may overlap what has been delivered since
                for at in list(pending):
                    overlap = (nxt - at) & SEQ_MASK
                    if overlap < 0x80000000:
                        late = pending.pop(at)
                        if overlap < len(late):
                            chunk = late[overlap:]
                            break
                if chunk is None:
                    return
            self.nxt[side] = (nxt + len(chunk)) & SEQ_MASK
            self.deliver(side, chunk, ts)

    def give_up_gap(self, side: int, ts: float) -> None:
        """Bytes of `side` missing from the capture will not come: step over them to the next stored segment."""
        pending, nxt = self.pending[side], self.nxt[side]
        if not pending or nxt is None:
            return
        self.step_to(side, min(pending, key=lambda seq: (seq - nxt) & SEQ_MASK), ts)

    def step_to(self, side: int, at: int, ts: float) -> None:
        """Step over the bytes of `side` from `nxt` to `at`, which the capture lacks, and say so."""
        nxt = self.nxt[side]
        assert nxt is not None
        size = (at - nxt) & SEQ_MASK
        self.nxt[side] = at
        skip = self.skip[side]
        if skip >= IGNORE:
            self.gap(side, size, absorbed=True)  # nothing it sends is read anyway
        elif skip > size:
            self.skip[side] = skip - size
            self.gap(side, size, absorbed=True)
        elif skip == size and skip:
            self.skip[side] = 0
            self.gap(side, size, absorbed=True)
            self.skipped(side)
        else:
            self.gap(side, size, absorbed=False)
        self.drain(side, ts)

    def deliver(self, side: int, data: bytes, ts: float) -> None:
        """In-order bytes of `side`: those `skip` counts go by, the rest on to `stream_bytes`."""
        skip = self.skip[side]
        if skip:
            if skip >= IGNORE:
                return
            if skip >= len(data):
                self.skip[side] = skip - len(data)
                if skip == len(data):
                    self.skipped(side)
                return
            self.skip[side] = 0
            self.skipped(side)
            data = data[skip:]
        self.stream_bytes(side, data, ts)

    def flush(self) -> None:
        """The connection is over: step over every gap still waiting for its bytes, up to a FIN waiting for them."""
        for side in (0, 1):
            while self.pending[side]:
                self.give_up_gap(side, self.last)
            fin, nxt = self.fin[side], self.nxt[side]
            if fin is not None and not self.ended[side]:
                if nxt is None:
                    self.nxt[side] = fin
                elif 0 < (fin - nxt) & SEQ_MASK < 0x80000000:  # bytes before the FIN the capture lacks
                    self.step_to(side, fin, self.last)
                self.at_fin(side)


def _far(a: int, b: int) -> bool:
    """Sequence numbers `a` and `b` are more than `JUMP` apart, either way round."""
    return JUMP <= (a - b) & SEQ_MASK <= SEQ_MASK + 1 - JUMP
