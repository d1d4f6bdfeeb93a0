#!/usr/bin/env python3
"""Long fuzz run of the record decoder: random and mutated-valid inputs, checking its documented invariants.

    scripts/fuzz               # 1,000,000 examples (a few minutes on 2 cores); sets up .venv like scripts/test
    scripts/fuzz --examples N --seed S

Invariants: decode() returns Records / NeedMore / NotTLS and raises nothing; verdicts are consistent as bytes are
appended (as tests/test_records.py's property states them); complete records re-encode to the exact input bytes;
describe() gives one line. Prints progress, then the counts per verdict. Exit 1 with the failing input in hex on the
first violation. The invariants are explicit checks, not `assert` statements: they hold under `python -O` too.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable

from stray_tls.core import records

SEEDS = [
    bytes.fromhex("15 03 01 00 02 02 0a"),
    bytes.fromhex("16 03 01 00 0c 02 00 00 00 0b 00 00 00 0e 00 00 00"),
    bytes.fromhex("80 03 00 00 01"),
    bytes.fromhex("17 03 03 00 03 aa bb cc 14 03 03 00 01 01"),
    b"HTTP/1.1 200 OK\r\n\r\n",
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        if op == 0 and buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 1:
            buf.insert(rng.randint(0, len(buf)), rng.randrange(256))
        elif op == 2 and buf:
            del buf[rng.randrange(len(buf))]
        elif op == 3:
            buf += rng.choice(SEEDS)
        else:
            buf = buf[: rng.randint(0, len(buf))]
    return bytes(buf)


class Violation(Exception):
    """An invariant of the decoder does not hold for one input."""


def require(holds: bool, invariant: str) -> None:
    if not holds:
        raise Violation(invariant)


def check(data: bytes, more: bytes, decode: Callable[[bytes], records.Decoded] = records.decode) -> str:
    """The invariants for `data`, then `data + more`; the verdict's name, or Violation naming what failed."""
    verdict = decode(data)
    after = decode(data + more)
    require(isinstance(verdict, records.Records | records.NeedMore | records.NotTLS), f"verdict {verdict!r}")
    if isinstance(verdict, records.NotTLS):
        require(isinstance(after, records.NotTLS), f"NotTLS must stay NotTLS, became {after!r}")
    elif isinstance(verdict, records.NeedMore):
        if len(data + more) >= verdict.needed:
            require(
                not isinstance(after, records.NeedMore) or after.needed > verdict.needed,
                f"{verdict!r}, then {len(data + more)} bytes: still {after!r} (it must decide, or need more)",
            )
        else:
            require(isinstance(after, records.NeedMore | records.NotTLS), f"{verdict!r}, then too few bytes: {after!r}")
    else:
        require(
            isinstance(after, records.Records) and after.records[: len(verdict.records)] == verdict.records,
            f"complete records changed when bytes were appended: {after!r}",
        )
        require(b"".join(r.encode() for r in verdict.records) == data[: verdict.size], "records do not re-encode")
        require(verdict.rest == data[verdict.size :], "rest is not what follows the records")
        for r in verdict.records:
            line = records.describe(r)
            require(bool(line) and "\n" not in line, f"describe() gave {line!r}")
    return type(verdict).__name__


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    rng = random.Random(seed)
    counts: dict[str, int] = {}
    started = time.monotonic()
    for n in range(1, args.examples + 1):
        data = rng.randbytes(rng.randint(0, 40)) if n % 2 else mutate(rng, rng.choice(SEEDS))
        more = rng.randbytes(rng.randint(0, 8))
        try:
            kind = check(data, more)
        except Violation as e:
            print(f"VIOLATION at example {n} (seed {seed}): {e}", file=sys.stderr)
            print(f"  data {data.hex(' ')}\n  more {more.hex(' ')}", file=sys.stderr)
            return 1
        except Exception as e:
            print(f"FAILED at example {n} (seed {seed}): raised {type(e).__name__}: {e}", file=sys.stderr)
            print(f"  data {data.hex(' ')}\n  more {more.hex(' ')}", file=sys.stderr)
            return 1
        counts[kind] = counts.get(kind, 0) + 1
        if n % 200_000 == 0:
            print(f"  {n} examples, {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    print(
        f"{args.examples} examples, seed {seed}, no violation: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
