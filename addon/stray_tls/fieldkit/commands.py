"""The field kit's commands: `decode` pasted bytes, `check` a proxy, read a capture with `pcap`; each prints for a
person (or `--json`) and can write the page for a ticket (`--html`)."""

from __future__ import annotations

import argparse
import getpass
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core import findings, records, text
from ..core.addresses import ProxyAddress, parse_host
from ..core.names import hostport
from ..core.pasted import Paste, Pasted, PasteError, holds_tls, read_paste
from . import streams
from .extras import install_hint
from .results import ScanResult, iso

if TYPE_CHECKING:
    from . import diagnose, proxyauth


def cmd_decode(args: argparse.Namespace) -> int:
    pasted = " ".join(args.hex) if args.hex else sys.stdin.read()
    try:
        paste = read_paste(pasted)
    except PasteError as e:
        print(f"esrs-fix decode: {e}", file=sys.stderr)
        return 2
    if args.json:
        outs = [_piece_json(piece) for piece in paste.pieces]
        if len(outs) == 1:
            print(json.dumps({**outs[0], "form": paste.form}, indent=2))
            return 0 if outs[0]["verdict"] == "tls" else 1
        any_tls = any(out["verdict"] == "tls" for out in outs)
        verdict = "tls" if any_tls else "not_tls"
        print(json.dumps({"verdict": verdict, "form": paste.form, "pieces": outs}, indent=2))
        return 0 if any_tls else 1
    if len(paste.pieces) == 1:
        rendered, is_tls = text.decode_text(paste.pieces[0].data, paste.pieces[0].start)
        if paste.form not in ("hex", "hex dump"):  # base64 above all: a mistyped word can read as base64
            print(f"read as {paste.form}")
        print(rendered)
        return 0 if is_tls else 1
    return _decode_pieces(paste)


def _decode_pieces(paste: Paste) -> int:
    """Several frames or sides: one line for each, then the full decode of those that hold TLS records."""
    tls = [piece for piece in paste.pieces if holds_tls(piece)]
    print(f"{_count(paste.pieces)} read as {paste.form}:")
    for piece in paste.pieces:
        print(f"  {_piece_name(piece)}: {_piece_line(piece)}")
    if not tls:
        print("none holds TLS records")
    for piece in tls:
        print(f"\n{_piece_name(piece)}:")
        print(text.decode_text(piece.data, piece.start)[0])
    return 0 if tls else 1


def _count(pieces: tuple[Pasted, ...]) -> str:
    """`10 frames`, `2 sides`, `11 frames and 1 more data source` (tshark's reassembled bytes), `3 pieces`."""
    whole = [p for p in pieces if p.name.startswith("frame ") and "," not in p.name]
    if whole:
        more = len(pieces) - len(whole)
        return f"{len(whole)} frames" + (f" and {more} more data source{'s' * (more > 1)}" if more else "")
    sides = all(p.name.endswith(" side") for p in pieces)
    return f"{len(pieces)} {'sides' if sides else 'pieces'}"


def _piece_name(piece: Pasted) -> str:
    return f"{piece.name} ({piece.note})" if piece.note else piece.name


def _piece_line(piece: Pasted) -> str:
    frame = text.pasted_frame(piece.data, piece.start)
    if frame is None:
        return f"{len(piece.data)} bytes: {text.summary(piece.data, piece.start)}"
    what = f"{len(piece.data)} bytes, {frame.layers} [{frame.flag_names}], {frame.src} -> {frame.dst}"
    return f"{what}: {text.summary(frame.payload, frame.offset) if frame.payload else 'no payload'}"


def _piece_json(piece: Pasted) -> dict:
    frame = text.pasted_frame(piece.data, piece.start)
    payload = piece.data if frame is None else frame.payload
    out = _decode_json(payload, records.decode(payload))
    if piece.name:
        out = {"name": piece.name, "note": piece.note, **out}
    if frame is not None:
        out = {**out, "frame": frame.to_dict()}
    elif piece.start:
        out = {**out, "dump_offset": piece.start}
    return out


def _decode_json(data: bytes, decoded: records.Decoded) -> dict:
    if isinstance(decoded, records.Records):
        return {
            "verdict": "tls",
            "bytes": len(data),
            "records": [r.to_dict() for r in decoded.records],
            "rest_hex": decoded.rest.hex(),
            "rest_incomplete": decoded.rest_incomplete,
        }
    if not data:
        return {"verdict": "empty", "bytes": 0}
    if isinstance(decoded, records.NeedMore):
        return {"verdict": "need_more", "bytes": len(data), "needed": decoded.needed}
    return {"verdict": "not_tls", "bytes": len(data), "reason": decoded.reason}


def cmd_check(args: argparse.Namespace) -> int:
    from . import diagnose, proxyauth

    proxy: ProxyAddress = args.proxy
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        print("esrs-fix check: --timeout must be a positive number of seconds", file=sys.stderr)
        return 2
    if bad := [p for p in args.port or [] if not 0 < p < 65536]:
        print(f"esrs-fix check: --port {bad[0]} is not a TCP port (1-65535)", file=sys.stderr)
        return 2
    try:
        host = parse_host(args.host)
    except ValueError as e:
        print(f"esrs-fix check: {e}", file=sys.stderr)
        return 2
    credentials = _check_credentials(proxy, args.proxy_user, args.proxy_password_file)
    if isinstance(credentials, str):
        print(f"esrs-fix check: {credentials}", file=sys.stderr)
        return 2
    ports = args.port or [443, 8443]
    results = []
    as_user = f" as user {proxyauth.shown_user(credentials.user)}" if credentials else ""
    for port in ports:
        if not args.json:
            where = hostport(*proxy.address)
            print(f"checking https://{hostport(host, port)}/ through {where}{as_user} ...", file=sys.stderr)
        results.append(
            diagnose.check_port(proxy.address, host, port, args.timeout, direct=args.direct, credentials=credentials)
        )
    outcome = diagnose.overall(results)
    if args.html:
        _write_check_page(args, hostport(*proxy.address), host, results)
    if args.json:
        print(json.dumps({"outcome": outcome.name.lower(), "ports": [r.to_dict() for r in results]}, indent=2))
        return int(outcome)
    for r in results:
        print(f"https://{hostport(r.host, r.port)}/: {r.outcome.name} [{r.shape}]")
        for p in r.probes:
            print(f"  {p.name:28} {p.what}")
        print(f"  verdict: {r.verdict}")
    return int(outcome)


PASSWORD_VARIABLE = "ESRS_FIX_PROXY_PASSWORD"


def _check_credentials(
    proxy: ProxyAddress, proxy_user: str | None, password_file: Path | None = None
) -> proxyauth.Credentials | str | None:
    """The credentials for the proxy, or a sentence saying why there are none (exit 2). Never echoes a password.

    The password: from the URL, else from `password_file` (its first line), else the environment, else a prompt."""
    from .proxyauth import Credentials, shown_user

    if proxy_user is not None and proxy.user is not None:
        return "give the user either in --proxy (http://USER:PASSWORD@HOST:PORT) or with --proxy-user, not both"
    user = proxy_user if proxy_user is not None else proxy.user
    if user is None:
        return "--proxy-password-file needs a user: --proxy-user USER" if password_file is not None else None
    if not user or ":" in user:
        return "the proxy user name must be non-empty and must not contain ':' (Basic authentication cannot carry it)"
    if proxy.password is not None and password_file is not None:
        return "give the password either in --proxy or with --proxy-password-file, not both"
    if proxy.password is not None:
        return Credentials(user, proxy.password)
    if password_file is not None:
        try:
            # its first line, without the line end; bytes that are not UTF-8 go out as they are (surrogateescape)
            lines = password_file.read_bytes().decode("utf-8", "surrogateescape").splitlines()
        except OSError as e:
            return f"cannot read --proxy-password-file {password_file}: {e.strerror or e}"
        return Credentials(user, lines[0] if lines else "")
    if (password := os.environ.get(PASSWORD_VARIABLE)) is not None:
        return Credentials(user, password)
    if sys.stdin.isatty():
        try:
            return Credentials(user, getpass.getpass(f"password for proxy user {shown_user(user)}: "))
        except EOFError:
            pass
    return (
        f"no password for proxy user {shown_user(user)}: set {PASSWORD_VARIABLE}, give --proxy-password-file FILE, "
        "run from a terminal to be asked for it, or give it in --proxy http://USER:PASSWORD@HOST:PORT"
    )


def cmd_pcap(args: argparse.Namespace) -> int:
    try:
        from . import capture
    except ImportError:  # pragma: no cover - dpkt is an optional extra
        print(f"esrs-fix pcap: needs dpkt: {install_hint('pcap', 'dpkt')}", file=sys.stderr)
        return 2

    def progress(packets: int, offset: int) -> None:
        print(f"esrs-fix pcap: {packets} packets, {offset / 1e6:.0f} MB read ...", file=sys.stderr, flush=True)

    try:
        result = capture.scan(args.file, on_progress=None if args.json else progress)
    except ModuleNotFoundError:
        print(f"esrs-fix pcap: needs dpkt: {install_hint('pcap', 'dpkt')}", file=sys.stderr)
        return 2
    except capture.CaptureError as e:
        print(f"esrs-fix pcap: {args.file}: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(_pcap_json(args.file, result), indent=2))
    else:
        _print_pcap(result)
    if args.html:
        _write_pcap_page(args, result)
    if result.damaged:
        print(f"esrs-fix pcap: {args.file}: {result.damaged}; the streams read so far are reported", file=sys.stderr)
        return 3
    return 0


def _write_check_page(args: argparse.Namespace, proxy: str, host: str, results: list[diagnose.PortResult]) -> None:
    """`check --html OUT`: the page for the ticket (`ticket`), each probe as a ladder, then the verdict."""
    from . import ticket

    ports = [
        ticket.PortCheck(
            f"https://{hostport(r.host, r.port)}/",
            r.outcome.name,
            str(r.shape),
            r.verdict,
            [
                ticket.ProbeStep(
                    p.name,
                    p.what,
                    p.ok,
                    p.name.startswith("direct"),
                    p.finding,
                    p.answer.raw if p.answer else b"",
                    len(p.answer.raw) if p.answer and p.answer.seconds is not None else None,
                    p.answer.seconds if p.answer else None,
                    p.answer.sent if p.answer else None,
                )
                for p in r.probes
            ],
        )
        for r in results
    ]
    outcomes = ", ".join(f"{p.url} {p.outcome}" for p in ports)
    Path(args.html).write_text(ticket.check_page(f"esrs-fix check: {outcomes}", proxy, host, ports), encoding="utf-8")
    print(f"esrs-fix check: the page for the ticket written to {args.html}", file=sys.stderr)


def _write_pcap_page(args: argparse.Namespace, result: ScanResult) -> None:
    """`pcap --html OUT`: the page for the ticket (`ticket`), one section per stray exchange."""
    from . import ticket

    strays = [
        ticket.Stray(
            iso(ex.time),
            ex.client,
            ex.server,
            ex.request_line,
            ex.finding,
            ex.frame,
            ex.tcp_stream,
            iso(ex.answer_time) if ex.answer_time is not None else None,
        )
        for ex in result.exchanges
    ]
    counts = [
        f"{result.packets} packets, {result.tcp_streams} TCP streams, {result.requests} HTTP requests, "
        f"{len(result.exchanges)} answered by TLS or a plain-HTTP-to-HTTPS complaint"
    ]
    if result.damaged:
        counts.append(f"the capture is damaged: {result.damaged}; the streams read so far are reported")
    page = ticket.page(f"esrs-fix: {len(strays)} stray exchanges", str(args.file), strays, counts)
    Path(args.html).write_text(page, encoding="utf-8")
    print(f"esrs-fix pcap: the page for the ticket written to {args.html}", file=sys.stderr)


def _pcap_json(file: Path, result: ScanResult) -> dict[str, Any]:
    """`pcap --json`: the scan's counts and every stray exchange."""
    return {
        "file": str(file),
        "packets": result.packets,
        "tcp_streams": result.tcp_streams,
        "http_requests": result.requests,
        "requests_unkept": result.requests_unkept,
        "requests_unanswered": result.requests_unanswered,
        "gaps": result.gaps,
        "gaps_unread": result.gaps_unread,
        "framing_conflicts": result.framing_conflicts,
        "unframed": result.unframed,
        "damaged": result.damaged or None,
        "exchanges": [e.to_dict() for e in result.exchanges],
    }


def _print_pcap(result: ScanResult) -> None:
    """`pcap`: each stray exchange with where to look in Wireshark, then the counts, each said once."""
    for ex in result.exchanges:
        print(f"{ex.to_dict()['time']}  {ex.client} -> {ex.server}  {ex.request_line!r}")
        print(f"    {ex.finding.summary}  [{ex.finding.kind}, confidence {ex.finding.confidence}]")
        if ex.finding.raw and ex.finding.kind is not findings.Kind.PLAIN_HTTP_400:
            print(f"    raw: {records.hexdump(ex.finding.raw, 32)}")
        # where to look in Wireshark: Go to Packet (Ctrl-G) for the frame, the filter pasted as it stands
        print(f"    wireshark: frame {ex.frame}  filter: tcp.stream eq {ex.tcp_stream}")
    print(
        f"{result.packets} packets, {result.tcp_streams} TCP streams, {result.requests} HTTP requests, "
        f"{len(result.exchanges)} answered by TLS or a plain-HTTP-to-HTTPS complaint"
    )
    if result.requests_unkept:
        print(
            f"{result.requests_unkept} requests waited behind {streams.MAX_OUTSTANDING} others on one connection: "
            "counted and paired, their request lines not kept"
        )
    if result.requests_unanswered:
        print(
            f"{result.requests_unanswered} requests had no answer: the capture ended, their client closed, or "
            "the server closed after an earlier answer: not reported (a silent close is only a server's)"
        )
    if result.framing_conflicts:
        print(
            f"{result.framing_conflicts} HTTP messages had both Transfer-Encoding and Content-Length: read as "
            "chunked (RFC 9112), but a sign of a broken or request-smuggling hop"
        )
    if result.unframed:
        print(
            f"{result.unframed} HTTP messages could not be framed (a Content-Length that is no number, a chunk "
            "size that is none): the rest of their connection's direction was not read, so answers may be missing"
        )
    if result.gaps:
        print(
            f"{result.gaps} gaps in the capture (segments it missed) were stepped over"
            + (
                f"; after {result.gaps_unread} of them the rest of that connection could not be followed, "
                "so answers there may be missing"
                if result.gaps_unread
                else ", each inside a body of known length: no answer lost"
            )
        )
