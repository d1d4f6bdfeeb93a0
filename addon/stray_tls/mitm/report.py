"""The `esrs_report` file: one JSON object per detection (JSON Lines), each line flushed as it is written."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import TextIO

log = logging.getLogger("esrs_fix")


def json_line(entry: dict[str, object]) -> str:
    """`entry` as one line of JSON that encodes to valid UTF-8 whatever it holds.

    mitmproxy decodes bytes that are not UTF-8 (a Host header with 0xff) to lone surrogates, which UTF-8 cannot
    encode: they are written as JSON's own escape (`\\udcff`), which `json.loads` gives back as the same string.
    """
    line = json.dumps(entry, ensure_ascii=False) + "\n"
    if line.isascii():
        return line  # nearly every line: no surrogate possible, no second pass
    return line.encode("utf-8", "backslashreplace").decode("utf-8")


class ReportWriter:
    """The `esrs_report` file: JSON Lines, each line flushed at once so that a killed proxy leaves whole lines."""

    def __init__(self, path: str, file: TextIO) -> None:
        self.path = path
        self._file = file
        self._failing = False

    @classmethod
    def open(cls, path: str) -> ReportWriter:
        """The report at `path`, opened for appending; OSError when it cannot be (the option's error says so)."""
        return cls(path, open(path, "a", encoding="utf-8"))

    def write(self, entry: dict[str, object]) -> None:
        try:
            self._file.write(json_line(entry))
            self._file.flush()
        except (OSError, ValueError) as e:  # the disk filled up, the file went away: the proxy goes on
            if not self._failing:
                log.error("esrs-fix: cannot write the report %s (%s); detections are still logged", self.path, e)
            self._failing = True
        else:
            if self._failing:
                log.warning("esrs-fix: writing the report %s works again", self.path)
            self._failing = False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
