"""The `esrs-fix` command line: its parser, and the packaging's own commands (find the addon script, write it as a
single file); the field kit's commands (decode, check, pcap) are `fieldkit/commands.py`.

The `esrs-fix` executable (`main.py`) adds the lab's commands on top; this module never imports the lab.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import ClassVar, NoReturn

from . import __version__
from .core.addresses import argument, parse_proxy, passwords_in
from .fieldkit.commands import PASSWORD_VARIABLE, cmd_check, cmd_decode, cmd_pcap
from .launch import script_path


def cmd_path(args: argparse.Namespace) -> int:
    path = script_path()
    if not path.is_file():
        print(f"esrs-fix path: {path} is missing; reinstall esrs-fix", file=sys.stderr)
        return 1
    print(path)
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from . import bundle

    out: str = args.output
    if out != "-" and Path(out).resolve() == script_path():
        print(f"esrs-fix bundle: {out} is the addon script beside the package; write the single file elsewhere",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        made = bundle.build()
    except bundle.BundleError as e:
        print(f"esrs-fix bundle: {e}", file=sys.stderr)
        return 1
    data = made.text.encode("utf-8")
    if out == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        try:
            Path(out).write_bytes(data)
        except OSError as e:
            print(f"esrs-fix bundle: cannot write {out}: {e.strerror or e}", file=sys.stderr)
            return 1
    note = "; built from uncommitted changes" if made.commit.endswith("+dirty") else ""
    print(
        f"esrs-fix bundle: wrote {'standard output' if out == '-' else out}: esrs-fix {made.version}, commit "
        f"{made.commit}, {len(made.modules)} modules, {len(data)} bytes, sha256 {made.sha256}{note}. "
        f"Run: mitmdump -s {'esrs_fix.py' if out == '-' else out}",
        file=sys.stderr,
    )
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse's parser, but its errors never echo a proxy password typed on the command line: argparse quotes the
    arguments it could not place (`unrecognized arguments: http://u:pw@...`, `ambiguous option: --prox=...`)."""

    #: The passwords of the command line being parsed (set by `run`); a class attribute, because argparse makes the
    #: subcommands' parsers itself, and any of them may be the one that reports the error.
    secrets: ClassVar[list[str]] = []

    def error(self, message: str) -> NoReturn:
        for secret in self.secrets:
            # as typed, and as repr() writes it inside an argument it quotes ("invalid int value: 'http://u:p\\w@h'"),
            # where a quote is escaped or not depending on the whole argument
            inner = repr(secret)[1:-1].replace("\\'", "'")
            for form in sorted({secret, inner, inner.replace("'", "\\'")}, key=len, reverse=True):
                message = message.replace(form, "***")
        super().error(message)


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The parser with the product's commands, and its subparsers for the layers above to add theirs."""
    parser = _Parser(
        prog="esrs-fix",
        description="Find TLS records where HTTP was expected: decode pasted bytes, diagnose a proxy, read a "
        "capture, locate the mitmproxy addon script or write it as a single file, run the lab.",
    )
    parser.add_argument("--version", action="version", version=f"esrs-fix {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_decode(sub)
    _add_check(sub)
    _add_pcap(sub)
    p = sub.add_parser("path", help='print the path of the addon script, for mitmdump -s "$(esrs-fix path)"')
    p.set_defaults(func=cmd_path)
    p = sub.add_parser(
        "bundle",
        help="write the addon as one file that needs only mitmproxy: mitmdump -s esrs_fix.py",
        description="Write the mitmproxy addon as a single self-contained file (its modules embedded), for "
        "mitmdump/mitmweb/mitmproxy -s with nothing but mitmproxy installed. The same commit gives the same "
        "bytes. The lab and these commands stay in the package.",
    )
    p.add_argument(
        "-o",
        "--output",
        default="esrs_fix.py",
        metavar="FILE",
        help="where to write it (default esrs_fix.py; - for standard output)",
    )
    p.set_defaults(func=cmd_bundle)
    return parser, sub


def _add_decode(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "decode",
        help="decode bytes pasted from Wireshark, tshark or tcpdump (hex, hex dumps of frames, Follow TCP Stream, "
        "C arrays, escaped strings, base64)",
        description="Decode TLS records from pasted bytes: hex, hex dumps of any number of frames (tshark -x, "
        "Wireshark's Copy as Hex Dump, tcpdump -x/-xx/-X/-XX as printed), a followed stream (tshark -z "
        "follow,tcp,hex or raw, Wireshark's Follow TCP Stream as hex dump or C arrays), escaped strings, base64. "
        "Reads standard input when no bytes are given. "
        "Exit status: 0 TLS records, 1 not TLS or incomplete, 2 unreadable input.",
    )
    p.add_argument("hex", nargs="*", help="the bytes, e.g. 15 03 01 00 02 02 0a")
    p.add_argument("--json", action="store_true", help="print the decode as JSON")
    p.set_defaults(func=cmd_decode)


def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="diagnose a proxy from the customer's side: what the ESRS check does, plus probes",
        description="Send what the ESRS check sends (absolute-form GET https://HOST:PORT/) through the proxy, then "
        "CONNECT+TLS and CONNECT+plaintext probes, and say which hop is at fault. Exit status: 0 the check would "
        "pass, 1 it would fail, 2 bad arguments, 3 could not test (the proxy is unreachable, or wants credentials "
        "it was not given).",
    )
    p.add_argument(
        "--proxy",
        required=True,
        type=argument(parse_proxy),
        metavar="http://[USER:PASSWORD@]HOST:PORT",
        help="the customer's HTTP proxy; user and password percent-encoded when they hold ':', '@', '%%' or a "
        "domain's '\\' (DOMAIN%%5CUSER)",
    )
    p.add_argument(
        "--proxy-user",
        metavar="USER",
        help="authenticate to the proxy as USER (DOMAIN\\USER for a domain user) with the scheme it offers "
        "(Negotiate, NTLM, Basic; NTLM and Negotiate need pyspnego); the password comes from "
        f"--proxy-password-file or {PASSWORD_VARIABLE}, or is asked for when run from a terminal",
    )
    p.add_argument(
        "--proxy-password-file",
        metavar="FILE",
        type=Path,
        help="read the proxy password from the first line of FILE (it never appears on the command line)",
    )
    p.add_argument("host", help="the ESRS host name (or its IP address; an IPv6 address with or without brackets)")
    p.add_argument("--port", type=int, action="append", help="ports to check (repeatable; default 443 and 8443)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds each probe may take (default 10)")
    p.add_argument("--direct", action="store_true", help="also try TLS straight to the host, without the proxy")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--html",
        metavar="OUT",
        type=Path,
        help="also write one self-contained HTML page for a ticket: each probe as a ladder diagram, and the verdict",
    )
    p.set_defaults(func=cmd_check)


def _add_pcap(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pcap",
        help="find HTTP requests answered by TLS records in a pcap/pcapng capture",
        description="Scan a capture (pcap or pcapng; streamed, so size does not matter) for HTTP requests answered by "
        "TLS records instead of HTTP, by a silent close, or by a 'plain HTTP sent to HTTPS port' page; each with "
        "its Wireshark frame number and tcp.stream filter. Exit status: "
        "0 read completely, 2 not readable as a capture, 3 truncated or corrupt (what was read is reported).",
    )
    p.add_argument("file", type=Path, help="the capture file")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--html",
        metavar="OUT",
        type=Path,
        help="also write one self-contained HTML page for a ticket: each stray exchange as a ladder diagram, its "
        "decode, verdict and advice",
    )
    p.set_defaults(func=cmd_pcap)


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    _Parser.secrets = passwords_in(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("esrs-fix: interrupted", file=sys.stderr)
        return 130
