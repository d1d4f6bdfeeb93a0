#!/usr/bin/env python3
"""Long fuzz run of the record decoder: random and mutated-valid inputs, checking its documented invariants.

    scripts/fuzz               # 1,000,000 examples (a few minutes on 2 cores); sets up .venv like scripts/test
    scripts/fuzz --examples N --seed S

Invariants: decode() returns Records / NeedMore / NotTLS and raises nothing; verdicts are consistent as bytes are
appended; complete records re-encode to the exact input bytes; describe() gives one line. Prints progress, then the
counts per verdict. Exit 1 with the failing input in hex on the first violation.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from stray_tls import records

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


def check(data: bytes, more: bytes) -> str:
    verdict = records.decode(data)
    after = records.decode(data + more)
    if isinstance(verdict, records.NotTLS):
        assert isinstance(after, records.NotTLS), "NotTLS must stay NotTLS"
    elif isinstance(verdict, records.NeedMore):
        assert isinstance(after, records.NeedMore | records.NotTLS) or len(data + more) >= verdict.needed
    else:
        assert isinstance(after, records.Records) and after.records[: len(verdict.records)] == verdict.records
        assert b"".join(r.encode() for r in verdict.records) == data[: verdict.size]
        assert verdict.rest == data[verdict.size :]
        for r in verdict.records:
            line = records.describe(r)
            assert line and "\n" not in line
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
        except Exception as e:
            print(f"FAILED at example {n} (seed {seed}): {type(e).__name__}: {e}", file=sys.stderr)
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
