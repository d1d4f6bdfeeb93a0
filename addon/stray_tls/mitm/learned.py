"""The targets that answered a plaintext request as a TLS port, and then answered the same request over TLS.

A small, pure memory (no mitmproxy, no I/O; the clock is injected): bounded, so that a scanner walking many
hosts cannot grow it without limit (the least recently used entry goes first), and expiring, so that a target
that changes its mind is tried in plaintext again after a while.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..core.names import hostport

#: How many targets are remembered at most.
CAPACITY = 1024
#: How long a learned target is remembered after its last successful upgrade, in seconds.
TTL = 3600.0


class Target(NamedTuple):
    """Where a plaintext request went: host, port, and the upstream proxy it went through (upstream mode).

    A named tuple, not a dataclass: every learned request makes one and looks it up several times, and a tuple is
    made, hashed and compared in C."""

    host: str
    port: int
    via: str | None = None

    def __str__(self) -> str:
        return hostport(self.host, self.port) + (f" via {self.via}" if self.via else "")


@dataclass(frozen=True, slots=True)
class Entry:
    target: Target
    #: What the plaintext attempt got when the target was learned (the finding's one-line summary and kind).
    plaintext_answer: str
    kind: str
    learned_at: float
    expires_at: float
    #: What taught it, as flows record it (the plaintext attempt's finding, the flow that was upgraded).
    evidence: Mapping[str, Any] = field(default_factory=dict)


class LearnedTargets:
    """An LRU memory with expiry: `remember`, `lookup`, `forget`, `entries`."""

    def __init__(self, capacity: int = CAPACITY, ttl: float = TTL, clock: Callable[[], float] = time.time) -> None:
        if capacity < 1 or ttl <= 0:
            raise ValueError("capacity and ttl must be positive")
        self.capacity = capacity
        self.ttl = ttl
        self.clock = clock
        self._entries: OrderedDict[Target, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def remember(
        self, target: Target, plaintext_answer: str, kind: str = "", evidence: Mapping[str, Any] | None = None
    ) -> bool:
        """Learn `target` (or refresh it, keeping what taught it first); True when it was not known before."""
        now = self.clock()
        known = self.lookup(target)
        if known is not None:
            self._entries[target] = Entry(
                target, known.plaintext_answer, known.kind, known.learned_at, now + self.ttl, known.evidence
            )
        else:
            self._entries[target] = Entry(target, plaintext_answer, kind, now, now + self.ttl, dict(evidence or {}))
        self._entries.move_to_end(target)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return known is None

    def refresh(self, entry: Entry) -> None:
        """`entry`'s target answered over TLS again: remembered for `ttl` from now, as `remember` does, but making a
        new entry at most once a second (a busy target's requests need not each make one)."""
        now = self.clock()
        target = entry.target
        current = self._entries.get(target)
        if current is None or current.expires_at <= now:  # forgotten or expired meanwhile: learned again
            self.remember(target, entry.plaintext_answer, entry.kind)
            return
        if current.expires_at - now < self.ttl - 1:
            self._entries[target] = Entry(
                target, current.plaintext_answer, current.kind, current.learned_at, now + self.ttl, current.evidence
            )
        self._entries.move_to_end(target)

    def lookup(self, target: Target) -> Entry | None:
        """The entry for `target` if it is learned and not expired (an expired one is dropped)."""
        entry = self._entries.get(target)
        if entry is None:
            return None
        if entry.expires_at <= self.clock():
            del self._entries[target]
            return None
        self._entries.move_to_end(target)
        return entry

    def forget(self, target: Target) -> bool:
        """Drop `target` (TLS to it failed); True when it was known."""
        return self._entries.pop(target, None) is not None

    def entries(self) -> list[Entry]:
        """The live entries, most recently used last (expired ones are dropped on the way)."""
        now = self.clock()
        for target in [t for t, e in self._entries.items() if e.expires_at <= now]:
            del self._entries[target]
        return list(self._entries.values())
