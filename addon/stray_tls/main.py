"""The `esrs-fix` executable: the product's commands (`cli`) and the lab's (`lab.cli`), on one parser.

It sits above both, so that the product never imports the lab (`python -m stray_tls.main ...`).

Output read only in part (`esrs-fix pcap FILE | head -1`, a pager quit early) ends quietly, with exit status 141
(128 + SIGPIPE): what a shell reports for `cat` or `grep` cut off the same way, so `set -o pipefail` sees the same.
It is done by catching BrokenPipeError, as the Python documentation recommends (signal module, "Note on SIGPIPE"),
not by restoring SIGPIPE's default action: that would also kill the lab's servers and proxies when a peer closes a
socket they are writing to, where Python's BrokenPipeError is handled.
"""

from __future__ import annotations

import os
import select
import sys

from . import cli
from .lab import cli as lab_cli

#: The exit status when standard output's reader has gone: 128 + SIGPIPE (13), as a shell reports a program it killed.
BROKEN_PIPE = 141


def main(argv: list[str] | None = None) -> int:
    parser, sub = cli.build_parser()
    lab_cli.add_parser(sub)
    try:
        status = cli.run(parser, argv)
        sys.stdout.flush()  # inside the try: what is still buffered may be what meets the closed pipe
    except BrokenPipeError:
        if not _stdout_gone():
            raise  # a socket's, not ours to hide
        # the interpreter flushes stdout again at exit: give it somewhere to write, so it says nothing
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return BROKEN_PIPE
    return status


def _stdout_gone() -> bool:
    """Whether standard output's reader has closed it (and not some socket the command was writing to)."""
    try:
        sys.stdout.flush()  # what failed to go is still buffered: it fails again if it was stdout's
    except BrokenPipeError:
        return True
    except (OSError, ValueError):
        return False
    try:  # nothing buffered: a pipe with no reader left polls as an error
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no fileno (captured), or no poll on this platform
        return False


if __name__ == "__main__":
    sys.exit(main())
