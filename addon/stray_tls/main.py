"""The `esrs-fix` executable: the product's commands (`cli`) and the lab's (`lab.cli`), on one parser.

It sits above both, so that the product never imports the lab (`python -m stray_tls.main ...`).
"""

from __future__ import annotations

import sys

from . import cli
from .lab import cli as lab_cli


def main(argv: list[str] | None = None) -> int:
    parser, sub = cli.build_parser()
    lab_cli.add_parser(sub)
    return cli.run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
