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

from ..core.findings import Finding, Kind
from ..core.records import hexdump

#: How many bytes of an answer the page shows on its arrow.
FIRST_BYTES = 16

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: The longest label on an arrow, in characters: a diagram is 760 pixels wide (the full text is below it).
LABEL = 88


def _clip(text: str, n: int = LABEL) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


@dataclass(frozen=True)
class Stray:
    """One stray exchange as the page shows it (results.StrayExchange's fields the page needs)."""

    time: str  # the request's capture time, ISO 8601
    client: str
    server: str
    request_line: str
    finding: Finding
    frame: int  # Wireshark's frame number of the answer's first packet (the request's when no answer came)
    tcp_stream: int
    answer_time: str | None = None  # the answer's first packet's capture time, ISO 8601 (None: no answer came)


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
    """An arrow between the two lanes of a capture's ladder."""
    x1, x2 = (_LEFT, _RIGHT) if to_right else (_RIGHT, _LEFT)
    return _arrow_between(y, x1, x2, labels, dashed)


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
            [f"{s.time}  request ({len(req)}-byte request line)", _clip(s.request_line)],
        )
    )
    y += _ROW + 10
    where = f"frame {s.frame}  tcp.stream eq {s.tcp_stream}"
    when = f"{s.answer_time}  " if s.answer_time else ""
    if f.kind is Kind.SILENT_CLOSE:
        rows.append(_arrow(y, False, [_clip(f.summary), where], dashed=True))  # no answer: a dashed arrow
    elif f.kind is Kind.PLAIN_HTTP_400:
        rows.append(_arrow(y, False, [_clip(f"{when}answer: {f.summary}"), where]))
    else:
        first = hexdump(f.raw, FIRST_BYTES) if f.raw else "(no bytes kept)"
        rows.append(_arrow(y, False, [f"{when}answer: {len(f.raw)} bytes kept: {first}", _clip(f.summary), where]))
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
        *([("Answered", s.answer_time)] if s.answer_time else []),
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


# -- `esrs-fix check --html`: each probe as a ladder (esrs-fix, proxy, server), then the port's verdict


@dataclass(frozen=True)
class ProbeStep:
    """One probe of `check` as the page shows it (diagnose.Probe's fields the page needs)."""

    name: str  # the probe's own name: what it sends ("CONNECT, then TLS")
    what: str  # one line: what came back, in the probe's words
    ok: bool
    direct: bool  # sent to the server itself, not through the proxy
    finding: Finding | None = None
    raw: bytes = b""  # the answer's first bytes, as shown (scrubbed of the credentials)
    size: int | None = None  # the answer's bytes (None: nothing came back)
    seconds: float | None = None  # from the request to the answer's last byte read
    sent: int | None = None  # the request's bytes


@dataclass(frozen=True)
class PortCheck:
    url: str
    outcome: str
    shape: str
    verdict: str
    probes: Sequence[ProbeStep] = ()


_THREE = (60, 380, 700)  # the x of the esrs-fix, proxy and server lanes


def _arrow_between(y: int, x1: int, x2: int, labels: Sequence[str], dashed: bool = False) -> str:
    tip = -10 if x2 > x1 else 10
    dash = ' stroke-dasharray="6 4"' if dashed else ""
    out = [
        f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="#000" stroke-width="1.5"{dash}/>',
        f'<polygon points="{x2},{y} {x2 + tip},{y - 5} {x2 + tip},{y + 5}" fill="#000"/>',
    ]
    for i, label in enumerate(labels):
        out.append(f'<text x="{min(x1, x2) + 10}" y="{y - 8 - 14 * (len(labels) - 1 - i)}">{_t(label)}</text>')
    return "\n".join(out)


def probe_ladder(p: ProbeStep, proxy: str, server: str) -> str:
    """One probe as a ladder diagram: esrs-fix's request to the proxy (or the server, when direct), the answer back."""
    client, via, far = _THREE
    to = far if p.direct else via
    y1, y2 = 80, 80 + _ROW + 10 + (14 if p.finding else 0) + (14 if p.size is not None else 0)
    back = [_clip(f"{'OK' if p.ok else 'not OK'}: {p.what}")]
    if p.size is not None and p.seconds is not None:
        back.insert(0, f"{p.size} bytes after {p.seconds * 1000:.0f} ms")
    if p.finding is not None:
        back.append(_clip(p.finding.summary))
    if p.raw:
        back.append(f"first bytes: {hexdump(p.raw, FIRST_BYTES)}")
    asked = f"{p.name} ({p.sent} bytes)" if p.sent else p.name
    rows = [_arrow_between(y1, client, to, [asked]), _arrow_between(y2, to, client, back, dashed=not p.ok)]
    height = y2 + 30
    lanes = "\n".join(
        f'<line x1="{x}" y1="30" x2="{x}" y2="{height - 5}" stroke="#000" stroke-width="1"/>'
        f'<text class="lane" x="{x}" y="20" text-anchor="middle">{_t(name)}</text>'
        for x, name in zip(_THREE, ("esrs-fix", f"proxy {proxy}", f"server {server}"), strict=True)
    )
    return (
        f'<svg width="{_WIDTH}" height="{height}" viewBox="0 0 {_WIDTH} {height}" role="img" '
        f'aria-label="{_t("Ladder: " + p.name)}">\n{lanes}\n' + "\n".join(rows) + "\n</svg>"
    )


def check_page(title: str, proxy: str, server: str, ports: Sequence[PortCheck]) -> str:
    """`check`'s page: per port, each probe as a ladder with its decode, then the port's verdict."""
    sections = []
    for n, port in enumerate(ports, 1):
        probes = "\n".join(
            f"<h3>Probe {i}: {_t(p.name)}</h3>\n{probe_ladder(p, proxy, server)}\n<p class=mono>{_t(p.what)}</p>"
            + (f"<p class=mono>Decode: {_t(p.finding.summary)}</p>" if p.finding else "")
            for i, p in enumerate(port.probes, 1)
        )
        sections.append(
            f'<section id="port-{n}">\n<h2>{_t(port.url)}: {_t(port.outcome)} [{_t(port.shape)}]</h2>\n{probes}\n'
            f"<h3>Verdict and advice</h3>\n<p class=verdict>{_t(port.verdict)}</p>\n</section>"
        )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_t(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{_t(title)}</h1>\n<p>Through the proxy <code>{_t(proxy)}</code> to <code>{_t(server)}</code></p>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )
