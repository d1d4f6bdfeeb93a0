"""Wireshark's `tcp.stream` numbering, for the capture reader's coordinates (pure)."""

from __future__ import annotations

from ..core.frames import reverse_key
from . import reassembly

#: Address/port pairs remembered (about 150 bytes each); beyond this the older half is forgotten, and a late packet of
#: a forgotten pair would be counted as a new conversation.
MAX_CONVERSATIONS = 250_000
_BASE = (1 << 33) - 1  # one base in `Conversations`' packed int
_SEQ = reassembly.SEQ_MASK
_SYN, _ACK = reassembly.SYN, reassembly.ACK


class Conversations:
    """Wireshark's `tcp.stream` numbering (its TCP dissector, checked against tshark 4.0 in the tests).

    Any TCP packet of an address/port pair not seen before begins a conversation, numbered from 0 in order of
    appearance; so does a SYN (without ACK) whose sequence number differs from the base Wireshark keeps for that
    direction (the port pair reused: a retransmitted SYN, same number, is not). The base of a direction is set by its
    first packet (a SYN's own number, else the number less one) or, before that, by the other direction's first ACK
    (the number acknowledged less one). Kept apart from the streams this reader follows: those are dropped when
    closed or idle, while Wireshark's stay for the whole file.
    """

    __slots__ = ("count", "known")

    def __init__(self) -> None:
        #: the pair as first seen (either direction's key finds it) -> its index and the two bases in one int (the
        #: smallest Python object for them: this table grows with the connections, not with what is followed):
        #: index << 66 | (base of that direction + 1) << 33 | (base of the other + 1), 0 for a base not known yet
        self.known: dict[bytes, int] = {}
        self.count = 0

    def index(self, key: bytes, seq: int, ack: int, flags: int) -> tuple[int, bool]:
        """The `tcp.stream` of a packet whose stream key is `key`, and whether both its bases are known now."""
        known = self.known
        mine, theirs = 33, 0  # where this packet's direction keeps its base, and where the other does
        at = key
        packed = known.get(key)
        if packed is None:
            at = reverse_key(key)
            packed = known.get(at)
            mine, theirs = 0, 33
        base = -1 if packed is None else (packed >> mine & _BASE) - 1
        if packed is None or (flags & (_SYN | _ACK) == _SYN and base >= 0 and seq != base):
            if packed is not None:
                del known[at]
            if len(known) >= MAX_CONVERSATIONS:  # the older half goes: their pairs seldom come back
                for old in list(known)[: MAX_CONVERSATIONS // 2]:
                    del known[old]
            at, packed, mine, theirs, base = key, self.count << 66, 33, 0, -1
            self.count += 1
        if base < 0:
            packed |= ((seq if flags & _SYN else (seq - 1) & _SEQ) + 1) << mine
        if not packed >> theirs & _BASE and flags & _ACK:
            packed |= (((ack - 1) & _SEQ) + 1) << theirs
        known[at] = packed
        return packed >> 66, bool(packed >> theirs & _BASE)
