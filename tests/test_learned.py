"""The learned-targets memory (pure): bounded, expiring, least recently used first out."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stray_tls.mitm.learned import LearnedTargets, Target


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_remember_lookup_refresh_and_forget() -> None:
    clock = Clock()
    memory = LearnedTargets(capacity=4, ttl=60, clock=clock)
    t = Target("esrs.lab", 443)
    assert memory.lookup(t) is None
    assert memory.remember(t, "TLS alert", "tls_records") is True
    assert memory.remember(t, "something else", "silent_close") is False  # a refresh keeps what was learned first
    entry = memory.lookup(t)
    assert entry is not None and (entry.plaintext_answer, entry.kind, entry.learned_at) == (
        "TLS alert",
        "tls_records",
        1000,
    )
    clock.now += 59
    assert memory.lookup(t) is not None
    memory.remember(t, "TLS alert")
    clock.now += 59  # the refresh moved the expiry on
    assert memory.lookup(t) is not None
    assert memory.forget(t) is True and memory.lookup(t) is None and memory.forget(t) is False


def test_a_learned_targets_answer_refreshes_it_as_remember_does() -> None:
    clock = Clock()
    memory = LearnedTargets(capacity=4, ttl=60, clock=clock)
    t = Target("esrs.lab", 443)
    memory.remember(t, "TLS alert", "tls_records", {"taught_by": "f1"})
    first = memory.lookup(t)
    assert first is not None
    clock.now += 0.5
    memory.refresh(first)
    assert memory.lookup(t) is first  # within a second of the last refresh: no new entry
    clock.now += 30
    memory.refresh(first)
    refreshed = memory.lookup(t)
    assert refreshed is not None and refreshed is not first
    assert (refreshed.learned_at, refreshed.evidence, refreshed.expires_at) == (1000, {"taught_by": "f1"}, 1090.5)
    memory.forget(t)
    memory.refresh(refreshed)  # it answered over TLS after all: learned again, as remember would
    again = memory.lookup(t)
    assert again is not None and again.learned_at == clock.now and again.plaintext_answer == "TLS alert"


def test_entries_expire() -> None:
    clock = Clock()
    memory = LearnedTargets(capacity=4, ttl=60, clock=clock)
    memory.remember(Target("a", 443), "x")
    clock.now += 30
    memory.remember(Target("b", 443), "x")
    clock.now += 31
    assert [str(e.target) for e in memory.entries()] == ["b:443"]
    assert memory.lookup(Target("a", 443)) is None


def test_the_least_recently_used_goes_first_when_full() -> None:
    memory = LearnedTargets(capacity=2, ttl=60, clock=Clock())
    a, b, c = Target("a", 443), Target("b", 443), Target("c", 443, via="127.0.0.1:3128")
    memory.remember(a, "x")
    memory.remember(b, "x")
    assert memory.lookup(a) is not None  # a is now the most recently used
    memory.remember(c, "x")
    assert memory.lookup(b) is None and memory.lookup(a) is not None and memory.lookup(c) is not None
    assert str(c) == "c:443 via 127.0.0.1:3128" and str(Target("::1", 8443)) == "[::1]:8443"


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        LearnedTargets(capacity=0)
    with pytest.raises(ValueError):
        LearnedTargets(ttl=0)


@given(st.lists(st.tuples(st.integers(0, 50), st.floats(0, 30)), max_size=300), st.integers(1, 16))
@settings(max_examples=300)
def test_never_above_capacity_and_never_an_expired_entry(steps: list[tuple[int, float]], capacity: int) -> None:
    """A scanner walking many targets cannot grow the memory past its bound, and nothing outlives its TTL."""
    clock = Clock()
    memory = LearnedTargets(capacity=capacity, ttl=60, clock=clock)
    refreshed: dict[Target, float] = {}  # when each target was last remembered: the model of what may be looked up
    for host, wait in steps:
        clock.now += wait
        target = Target(f"10.0.0.{host}", 443)
        memory.remember(target, "x")
        refreshed[target] = clock.now
        assert len(memory) <= capacity
        # Asked one by one (lookup drops nothing that is alive), every target whose TTL has run out is gone.
        expired = [t for t, at in refreshed.items() if clock.now - at >= 60]
        assert [t for t in expired if memory.lookup(t) is not None] == []
