"""Names every part of esrs-fix shares: the label header, the flow metadata key, the options, the defaults.

Defined once here, so that the addon, the content view, the lab, the bench and the tests cannot drift apart.
"""

from __future__ import annotations

#: The header that labels every answer this addon made or touched.
LABEL_HEADER = "X-ESRS-Fix"
#: Where an upstream's own X-ESRS-Fix header goes, so that only the addon's answers carry the label.
UPSTREAM_LABEL_HEADER = "X-ESRS-Fix-Upstream"
#: The key of the structured finding in `flow.metadata`.
METADATA_KEY = "esrs_fix"
# The markers, one per thing esrs-fix did to a flow: names from mitmproxy's own marker list (mitmweb shows a name it
# does not know as a red circle), each a glyph that DejaVu Sans draws (Debian's default desktop font: an emoji only
# a colour-emoji font has, such as the adhesive bandage, is an empty box there). Checked in chromium by
# tests/test_mitmweb.py's screenshots.
#: Detected: the upstream answered plaintext HTTP as a TLS port does; the client got the labelled 502 (or the
#: upstream's answer, when it could no longer be replaced).
MARKER = ":warning:"
#: Rewritten: the client got esrs_rewrite's synthetic status.
REWRITTEN_MARKER = ":pencil2:"
#: Upgraded over TLS: the client got the server's own answer.
UPGRADED_MARKER = ":heavy_check_mark:"
#: Learned: sent over TLS at once (its target was learned), although the client asked for http://.
LEARNED_MARKER = ":arrow_right_hook:"
#: Upgrade failed: the TLS attempt (or TLS to a learned target) failed; the comment says why.
FAILED_MARKER = ":heavy_multiplication_x:"
#: esrs-fix's own TLS attempt for another flow (a replayed copy of its request).
ATTEMPT_MARKER = ":gear:"
#: The metadata key of the flow esrs-fix sent over TLS in place of a plaintext one (it holds the upgraded flow's id).
UPGRADE_METADATA_KEY = "esrs_fix_upgrade"
#: The prefix of every log line, comment and answer body the addon writes.
PREFIX = "esrs-fix"

OPT_REWRITE = "esrs_rewrite"
OPT_STATUS = "esrs_status"
OPT_FILTER = "esrs_filter"
OPT_EARLY = "esrs_early"
OPT_HOLD_TIMEOUT = "esrs_hold_timeout"
OPT_REPORT = "esrs_report"
OPT_UPGRADE = "esrs_upgrade"
OPT_UPGRADE_TIMEOUT = "esrs_upgrade_timeout"
OPT_UPGRADE_RETRY = "esrs_upgrade_retry_after"
OPTION_NAMES = (
    OPT_REWRITE,
    OPT_STATUS,
    OPT_FILTER,
    OPT_EARLY,
    OPT_HOLD_TIMEOUT,
    OPT_REPORT,
    OPT_UPGRADE,
    OPT_UPGRADE_TIMEOUT,
    OPT_UPGRADE_RETRY,
)

#: Seconds to wait for a TLS record that has begun to complete (`esrs_hold_timeout`'s default).
DEFAULT_HOLD_TIMEOUT = 5

#: Seconds a TLS attempt (esrs_upgrade) may take in all, connect to answer (`esrs_upgrade_timeout`'s default).
DEFAULT_UPGRADE_TIMEOUT = 30
#: Seconds a failed TLS attempt is remembered: requests to its target within it get the same failure at once
#: (`esrs_upgrade_retry_after`'s default).
DEFAULT_UPGRADE_RETRY = 30
#: The most one TLS attempt's answer body may hold when `body_size_limit` is unset (64 MiB): the first answer is
#: held whole before the client gets it.
UPGRADE_BODY_CAP = 64 * 1024 * 1024

#: The content view's name, as mitmweb and the console list it.
VIEW_NAME = "TLS records"


def url_host(host: str) -> str:
    """The host as it goes into a URL, a Host header or a CONNECT target: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def hostport(host: str, port: int) -> str:
    """`host:port`, `[::1]:port` for an IPv6 address: the one spelling of an address in everything esrs-fix says."""
    return f"{url_host(host)}:{port}"


#: Characters of one piece of network text (a URL, a header value, upstream words) that a log line shows at most.
LOG_FIELD_CHARS = 300


def printable(value: str | bytes, limit: int | None = LOG_FIELD_CHARS) -> str:
    """Network text made safe for a log line: every character a terminal would act on shown as an escape.

    Control characters (ESC, CR, LF, DEL, C1), format characters (bidi overrides) and invalid UTF-8 (bytes, or the
    lone surrogates mitmproxy decodes them to) become `\\xNN` / `\\uNNNN`, so that a Host header cannot draw a line
    of its own; then at most `limit` characters (None: all), and how many were left out. Not reversible: for eyes.
    """
    text = value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
    if text.isprintable() and (limit is None or len(text) <= limit):
        return text  # clean text, as nearly every URL is: no copy
    out: list[str] = []
    size = 0
    for n, ch in enumerate(text):
        piece = ch if ch.isprintable() else _escape(ch)
        if limit is not None and size + len(piece) > limit:
            out.append(f"... ({len(text) - n} more chars)")
            break
        out.append(piece)
        size += len(piece)
    return "".join(out)


def _escape(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def clip(text: str, limit: int) -> str:
    """`text` cut to its first `limit` characters, then how many were left out (a summary in a header, a report)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more chars)"
