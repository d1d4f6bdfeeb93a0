"""CPU time of a process, read from /proc (no psutil): what the bench's CPU figures are made of."""

from __future__ import annotations

import os
from pathlib import Path

#: The unit of /proc/PID/stat's CPU times (a clock tick, 10 ms on Linux): a CPU figure needs many of them.
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far, all its threads (/proc/PID/stat; no psutil)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S
