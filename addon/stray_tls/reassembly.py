"""TCP reassembly for the capture reader (pure): each direction's bytes in order, whatever order segments came in.

`Connection` takes segments of both directions in capture order (retransmissions, overlaps, out-of-order ones)
and hands on in-order bytes through `stream_bytes`; a subclass says what they mean (`capture` follows HTTP/1).
`skip[side]` is how many bytes a direction may send that need no look (the rest of a body already decided on,
counted down, or `IGNORE`): such bytes are counted, never handed on, and the capture's scan loop passes in-order
segments inside them by without calling in at all. A gap that will not fill (more than `MAX_PENDING` segments
wait behind it, or the connection ends) is stepped over and said through `gap`.
"""

from __future__ import annotations

#: Out-of-order segments kept per direction before the gap in front of them is given up.
MAX_PENDING = 64
#: A direction's `skip` when nothing more it sends matters.
IGNORE = 1 << 62
SEQ_MASK = 0xFFFFFFFF
SYN, FIN, RST, ACK = 0x02, 0x01, 0x04, 0x10


class Connection:
    """Both directions (side 0 and 1) of one TCP connection, reassembled; subclasses implement the three hooks."""

    __slots__ = ("last", "nxt", "pending", "skip")

    def __init__(self) -> None:
        self.nxt: list[int | None] = [None, None]  # the next sequence number expected from each side
        self.pending: tuple[dict[int, bytes], dict[int, bytes]] = ({}, {})
        self.skip = [0, 0]
        self.last = 0.0  # capture time of the latest segment

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

    # -- segments in, bytes out

    def segment(self, side: int, seq: int, flags: int, payload: bytes, ts: float) -> None:
        """One segment of `side`, in any order; in-order bytes go on."""
        if flags & SYN:
            self.nxt[side] = (seq + 1) & SEQ_MASK
            return
        if not payload:
            return
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
        at = min(pending, key=lambda seq: (seq - nxt) & SEQ_MASK)
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
        """The connection is over: step over every gap still waiting for its bytes."""
        for side in (0, 1):
            while self.pending[side]:
                self.give_up_gap(side, self.last)
