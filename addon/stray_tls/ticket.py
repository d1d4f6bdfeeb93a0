"""The page for the ticket: one self-contained HTML page from `esrs-fix pcap`'s stray exchanges (pure: data in,
HTML string out; no I/O, no mitmproxy).

Self-contained so that it can be attached to a ticket and opened anywhere: styles inline, the ladder diagrams
inline SVG, no script, no font, image or link to anything outside the page. Every text that came from the
capture (addresses, request lines, bytes) is escaped here, in one place (`_t`), so that a hostile capture cannot
put markup into the page. It reads and prints without colour: black on white, every arrow labelled in words.
The words about the answer are the findings' own (`Finding.summary`, `Finding.explanation`), never reworded here.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .findings import Finding, Kind
from .records import hexdump

#: How many bytes of an answer the page shows on its arrow.
FIRST_BYTES = 16

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Stray:
    """One stray exchange as the page shows it (capture.Exchange's fields the page needs)."""

    time: str  # the request's capture time, ISO 8601
    client: str
    server: str
    request_line: str
    finding: Finding
    frame: int  # Wireshark's frame number of the answer's first packet (the request's when no answer came)
    tcp_stream: int


def _t(text: str) -> str:
    """Text for the page: control characters shown as \\xNN (they are invalid in HTML), then escaped."""
    return html.escape(_UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", text), quote=True)


_STYLE = """
body { font-family: sans-serif; color: #000; background: #fff; margin: 2em; max-width: 60em; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; border-top: 1px solid #000; padding-top: .6em; }
code, .mono { font-family: monospace; }
table.facts td { padding: .1em .8em .1em 0; vertical-align: top; }
svg { display: block; margin: .6em 0; max-width: 100%; }
svg text { font-family: monospace; font-size: 12px; fill: #000; }
svg .lane { font-family: sans-serif; font-weight: bold; font-size: 13px; }
.verdict { font-weight: bold; }
@media print { body { margin: 0; } section { break-inside: avoid; } }
"""

#: The ladder's geometry: two lanes, one arrow per message.
_WIDTH, _LEFT, _RIGHT, _ROW = 760, 110, 650, 70


def _arrow(y: int, to_right: bool, labels: Sequence[str], dashed: bool = False) -> str:
    x1, x2 = (_LEFT, _RIGHT) if to_right else (_RIGHT, _LEFT)
    tip = -10 if to_right else 10
    dash = ' stroke-dasharray="6 4"' if dashed else ""
    out = [
        f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="#000" stroke-width="1.5"{dash}/>',
        f'<polygon points="{x2},{y} {x2 + tip},{y - 5} {x2 + tip},{y + 5}" fill="#000"/>',
    ]
    for i, label in enumerate(labels):
        out.append(f'<text x="{_LEFT + 10}" y="{y - 8 - 14 * (len(labels) - 1 - i)}">{_t(label)}</text>')
    return "\n".join(out)


def ladder(s: Stray) -> str:
    """The exchange as a ladder diagram (inline SVG): the client's request, then the server's answer."""
    f = s.finding
    req = s.request_line.encode("latin-1", "replace")
    rows: list[str] = []
    y = 80
    rows.append(
        _arrow(
            y,
            True,
            [f"{s.time}  request ({len(req)}-byte request line)", f"{s.request_line[:72]}"],
        )
    )
    y += _ROW + 10
    where = f"frame {s.frame}  tcp.stream eq {s.tcp_stream}"
    if f.kind is Kind.SILENT_CLOSE:
        rows.append(_arrow(y, False, ["closed without a byte (FIN or RST)", where], dashed=True))
    elif f.kind is Kind.PLAIN_HTTP_400:
        rows.append(_arrow(y, False, [f"answer: {f.summary[:80]}", where]))
    else:
        first = hexdump(f.raw, FIRST_BYTES) if f.raw else "(no bytes kept)"
        rows.append(_arrow(y, False, [f"answer: {len(f.raw)} bytes kept: {first}", f.summary[:80], where]))
    height = y + 30
    lanes = "\n".join(
        f'<line x1="{x}" y1="30" x2="{x}" y2="{height - 5}" stroke="#000" stroke-width="1"/>'
        f'<text class="lane" x="{x}" y="20" text-anchor="middle">{_t(name)}</text>'
        for x, name in ((_LEFT, f"client {s.client}"), (_RIGHT, f"server {s.server}"))
    )
    title = f"Ladder: {s.client} to {s.server}, {s.request_line[:60]}"
    return (
        f'<svg width="{_WIDTH}" height="{height}" '
        f'viewBox="0 0 {_WIDTH} {height}" role="img" aria-label="{_t(title)}">\n'
        f"{lanes}\n" + "\n".join(rows) + "\n</svg>"
    )


def _section(n: int, s: Stray) -> str:
    f = s.finding
    facts = [
        ("Time", s.time),
        ("Client", s.client),
        ("Server", s.server),
        ("Request", s.request_line),
        ("Wireshark", f"Go to frame {s.frame}; filter: tcp.stream eq {s.tcp_stream}"),
    ]
    rows = "\n".join(f"<tr><td>{_t(k)}</td><td class=mono>{_t(v)}</td></tr>" for k, v in facts)
    raw = f"<p>Raw: <code>{_t(hexdump(f.raw, 64))}</code></p>" if f.raw and f.kind is not Kind.PLAIN_HTTP_400 else ""
    return (
        f'<section id="exchange-{n}">\n<h2>Exchange {n}: {_t(s.request_line[:80])}</h2>\n'
        f"{ladder(s)}\n<table class=facts>\n{rows}\n</table>\n"
        f"<h3>Decode</h3>\n<p class=mono>{_t(f.summary)}</p>\n{raw}\n"
        f"<h3>Verdict</h3>\n<p class=verdict>{_t(str(f.kind))} (confidence {_t(str(f.confidence))})</p>\n"
        f"<h3>Advice</h3>\n<p>{_t(f.explanation)}</p>\n</section>"
    )


def page(title: str, source: str, strays: Sequence[Stray], counts: Sequence[str] = ()) -> str:
    """The whole page: a heading naming the source, the counts (lines of text), one section per stray exchange."""
    body = "\n".join(_section(n, s) for n, s in enumerate(strays, 1))
    if not strays:
        body = "<p>No stray exchange: no HTTP request was answered by TLS or by a plain-HTTP-to-HTTPS complaint.</p>"
    summary = "".join(f"<li>{_t(c)}</li>" for c in counts)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_t(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{_t(title)}</h1>\n<p>Source: <code>{_t(source)}</code></p>\n"
        f"<ul>{summary}</ul>\n{body}\n</body>\n</html>\n"
    )
