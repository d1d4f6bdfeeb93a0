"""What every part shares: the setup it is given, the outcome it returns, and small statistics."""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .lab import Lab

ROOT = Path(__file__).resolve().parent.parent.parent  # the repository: tests/capgen.py lives there


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@dataclass
class Outcome:
    """What a part returns: raw figures for the JSON, lines for the table, and the count of wrong answers."""

    data: dict[str, Any]
    lines: list[str]
    wrong: int = 0
    #: What the wrong answers were, in a few words each (the first few).
    wrong_examples: list[str] = field(default_factory=list)


@dataclass
class Setup:
    """The options and the shared resources of one bench run; the lab starts on first use."""

    workdir: Path
    rounds: int
    quick: bool
    pcap_mb: int
    _lab: Lab | None = field(default=None, init=False, repr=False)

    def lab(self) -> Lab:
        """The peers and the two proxies (stock and addon), started the first time a part asks."""
        if self._lab is None:
            self._lab = Lab(self.workdir)
            self._lab.start()  # a failed start stops what it started: see Lab.start
        return self._lab

    def stop(self) -> None:
        if self._lab is not None:
            self._lab.stop()


class Wrong:
    """A counter of wrong answers that keeps the first few, for the message at the end."""

    def __init__(self) -> None:
        self.count = 0
        self.examples: list[str] = []

    def check(self, ok: bool, what: str) -> bool:
        if not ok:
            self.count += 1
            if len(self.examples) < 5:
                self.examples.append(what)
        return ok


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b else "n/a"


def order(n: int) -> list[str]:
    """A/B order of round n: AB, BA, AB, ... so that drift in the host hits both alike."""
    return ["stock", "addon"] if n % 2 == 0 else ["addon", "stock"]
