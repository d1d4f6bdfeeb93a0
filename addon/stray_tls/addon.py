"""The mitmproxy addon: spot TLS where HTTP was expected, explain it, and rewrite it only when asked.

It speaks mitmproxy's public API only; everything that names mitmproxy's internals lives in `compat`.
"""

from __future__ import annotations

import datetime
import logging
import weakref
from collections.abc import Sequence
from typing import Optional

from mitmproxy import command, ctx, exceptions, flowfilter, http, tls
from mitmproxy.addonmanager import Loader
from mitmproxy.net.http import status_codes
from mitmproxy.proxy import server_hooks

from . import compat, contentview, records, text
from . import findings as fnd
from .compat import EarlyDetection
from .findings import Finding
from .names import (
    DEFAULT_HOLD_TIMEOUT,
    LABEL_HEADER,
    MARKER,
    METADATA_KEY,
    OPTION_NAMES,
    PREFIX,
    UPSTREAM_LABEL_HEADER,
)
from .pasted import PasteError, parse_pasted
from .report import ReportWriter

log = logging.getLogger("esrs_fix")

_LABEL_BYTES = LABEL_HEADER.lower().encode()


class EsrsFix:
    def __init__(self) -> None:
        self.filter: flowfilter.TFilter | None = None
        # Synthetic responses made by the early detection, until their flow's response hook claims them.
        self._made: weakref.WeakKeyDictionary[http.Response, Finding] = weakref.WeakKeyDictionary()
        # Answers for flows that mitmproxy fails before any response exists, claimed by the early detection.
        self._error_answers: weakref.WeakKeyDictionary[http.Request, http.Response] = weakref.WeakKeyDictionary()
        self.early = EarlyDetection(self._on_records, self._claim_error_answer)
        # Failed TLS handshakes with an upstream, by server connection id, for the flow's error hook.
        self._tls_failures: dict[str, Finding] = {}
        self.report: ReportWriter | None = None
        self._view: object = None

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "esrs_rewrite",
            bool,
            False,
            "Answer with a synthetic status (esrs_status), labelled with a "
            f"{LABEL_HEADER} header, instead of the 502 when the upstream answered with TLS records (complete or "
            "not), failed the TLS handshake with an alert, or sent its 'plain HTTP to HTTPS port' page. Never "
            "for a silent close or an HTTP response with a TLS body. For validating a connectivity check only: "
            "the synthetic answer is not the server's.",
        )
        loader.add_option(
            "esrs_status",
            int,
            200,
            "The status of the synthetic answer when esrs_rewrite is on (100-599).",
        )
        loader.add_option(
            "esrs_filter",
            Optional[str],  # type: ignore[arg-type]  # noqa: UP045 - mitmproxy's option types are typing forms
            None,
            "A mitmproxy filter expression limiting which flows esrs_rewrite may rewrite; empty means all. "
            "Detection and logging apply to every flow.",
        )
        loader.add_option(
            "esrs_early",
            bool,
            True,
            "Detect stray TLS records the moment they arrive, so that the client is answered at once even when "
            "the upstream keeps its connection open. Off: public hooks only (the client then gets mitmproxy's "
            "own 502, or waits for the idle timeout).",
        )
        loader.add_option(
            "esrs_hold_timeout",
            int,  # whole seconds: mitmproxy's --set cannot parse a float option
            DEFAULT_HOLD_TIMEOUT,
            "Seconds to wait for a TLS record that has begun (in the upstream's answer) to complete. Then the client "
            "is answered with what arrived, labelled incomplete. Needs esrs_early.",
        )
        loader.add_option(
            "esrs_report",
            str,
            "",
            "Append one JSON object per detection to this file (JSON Lines, flushed as written); empty: off.",
        )
        self._apply_deferred(loader)
        self._view = contentview.register()

    @staticmethod
    def _apply_deferred(loader: Loader) -> None:
        """Refuse a `--set` value of the wrong type, naming the option.

        mitmproxy parses a script option's `--set` value only after the script has loaded, and when that
        fails it drops the value and runs on with the default.  Applying our own deferred values here, via
        the public `options.set`, finds the bad value first.  It is logged as an error, not raised: an
        OptionsError raised while a script registers is swallowed, whereas an error logged at startup makes
        mitmdump (its `errorcheck` addon) exit with status 1.
        """
        options = loader.master.options
        for name in OPTION_NAMES:
            values = compat.deferred_values(options, name)
            if values is None:
                continue
            try:
                options.set(*(f"{name}={v}" for v in values))
            except exceptions.OptionsError as e:
                log.error("esrs-fix: option %s: invalid value %s: %s", name, " ".join(values), e)

    def configure(self, updated: set[str]) -> None:
        if "esrs_status" in updated:
            status = ctx.options.esrs_status
            if not 100 <= status <= 599:
                raise exceptions.OptionsError(f"esrs_status: {status} is not an HTTP status code (100-599)")
        if "esrs_hold_timeout" in updated:
            hold = ctx.options.esrs_hold_timeout
            if not 1 <= hold <= 3600:
                raise exceptions.OptionsError(f"esrs_hold_timeout: {hold} is not a number of seconds from 1 to 3600")
            self.early.hold_timeout = hold
        if "esrs_filter" in updated:
            expr = ctx.options.esrs_filter
            if expr:
                try:
                    self.filter = flowfilter.parse(expr)
                except ValueError as e:
                    raise exceptions.OptionsError(f"esrs_filter: invalid filter expression {expr!r}: {e}") from None
            else:
                self.filter = None
        if "esrs_report" in updated:
            if self.report is not None:
                self.report.close()
                self.report = None
            if ctx.options.esrs_report:
                self.report = ReportWriter.open(ctx.options.esrs_report)
        if "esrs_early" in updated:
            if ctx.options.esrs_early:
                if not self.early.install():
                    log.warning(
                        "esrs-fix: early detection is off: %s. Stray TLS is still detected through the public "
                        "hooks, but the client then gets mitmproxy's own 502 (or waits for the idle timeout "
                        "when the upstream keeps its connection open), and esrs_rewrite cannot apply.",
                        self.early.reason,
                    )
            else:
                self.early.uninstall()

    def done(self) -> None:
        self.early.uninstall()
        contentview.unregister(self._view)
        if self.report is not None:
            self.report.close()

    @command.command("esrs.decode")
    def decode(self, *hexbytes: str) -> str:
        """Decode TLS records from hex, e.g. `esrs.decode 15 03 01 00 02 02 0a` (as `esrs-fix decode`)."""
        try:
            data = parse_pasted(" ".join(hexbytes))
        except PasteError as e:
            raise exceptions.CommandError(str(e)) from e
        return text.decode_text(data)[0]

    # -- early path: the upstream's answer began with complete TLS records

    def _on_records(self, request: http.Request, head: bytes, complete: bool) -> http.Response | None:
        finding = fnd.from_response_head(head) if complete else fnd.from_incomplete_head(head)
        if finding is None:
            return None
        response = error_response(finding)
        self._made[response] = finding
        return response

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        # Only the addon may label an answer: an upstream's own X-ESRS-Fix is renamed before the client sees it
        # (here, not in `response`, so that streamed bodies are covered too). A flow read back from a file keeps
        # what it recorded, the addon's own label included.
        response = flow.response
        if response is None or not flow.live:
            return
        # A plain scan of the raw fields: five times cheaper than `in headers`, which runs on every response.
        if any(name.lower() == _LABEL_BYTES for name, _ in response.headers.fields) and response not in self._made:
            values = response.headers.get_all(LABEL_HEADER)
            del response.headers[LABEL_HEADER]
            response.headers.set_all(UPSTREAM_LABEL_HEADER, values)
            flow.metadata[f"{METADATA_KEY}_upstream_label"] = values
            log.warning(
                "esrs-fix: %s: the upstream sent its own %s header %r; renamed to %s so that it is not taken for "
                "this addon's label",
                flow.request.pretty_url,
                LABEL_HEADER,
                values,
                UPSTREAM_LABEL_HEADER,
            )

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.response is None or not flow.live:
            return  # history: a flow read back with -r keeps what it recorded
        finding = self._made.pop(flow.response, None) if self._made else None
        if finding is None:
            # Late faces: a server's "plain HTTP to HTTPS port" page, or TLS records relayed as a body.
            # Clean traffic pays one status comparison and one byte test here.
            response = flow.response
            content = response.raw_content
            if not content or (response.status_code != 400 and not records.could_start_tls(content[0])):
                return
            if response.headers.get("content-encoding", "identity") != "identity":
                return
            finding = fnd.from_response(response.status_code, content, response.headers.get("x-transformed-from"))
            if finding is None:
                return
        self._report(flow, finding, may_rewrite=True)

    # -- public-hook fallbacks

    def error(self, flow: http.HTTPFlow) -> None:
        if flow.error is None or flow.response is not None or not flow.live:
            return
        finding = self._tls_failures.pop(flow.server_conn.id, None) or compat.finding_from_error(flow.error.msg)
        if finding is None:
            return
        # Only the early detection's send wrapper can put an answer in place of mitmproxy's error page.
        if self._report(flow, finding, may_rewrite=self.early.active) and flow.response is not None:
            self._error_answers[flow.request] = flow.response

    def _claim_error_answer(self, request: http.Request) -> http.Response | None:
        return self._error_answers.pop(request, None)

    def tls_failed_server(self, data: tls.TlsData) -> None:
        # Remember why; the flow's error hook, which follows, reports it once with the flow's URL.
        finding = compat.finding_from_tls_error(data.conn.error or "")
        if finding is not None:
            self._tls_failures[data.conn.id] = finding

    def server_disconnected(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._tls_failures.pop(data.server.id, None)

    # -- what every detection does

    def _rewrite_allowed(self, flow: http.HTTPFlow, finding: Finding) -> bool:
        """Off by default; then only for a rewritable finding (see Finding.rewritable) on a flow the filter selects."""
        if not ctx.options.esrs_rewrite or not finding.rewritable:
            return False
        return self.filter is None or bool(self.filter(flow))

    def _report(self, flow: http.HTTPFlow, finding: Finding, *, may_rewrite: bool) -> bool:
        """Log, mark, comment and record one detection; rewrite when allowed. True when rewritten."""
        rewritten = may_rewrite and self._rewrite_allowed(flow, finding)
        if rewritten:
            flow.response = rewritten_response(finding, ctx.options.esrs_status)
        upstream = _address(flow.server_conn.peername or flow.server_conn.address)
        via = flow.server_conn.via
        via_address = _address(via[1]) if via else None
        via_text = f" via upstream proxy {via_address}" if via_address else ""
        action = f"rewritten to a synthetic {ctx.options.esrs_status}" if rewritten else "not rewritten"
        log.warning(
            "esrs-fix: %s answered by %s%s: %s [%s, confidence %s; %s]. %s",
            flow.request.pretty_url,
            upstream,
            via_text,
            finding.summary,
            finding.kind,
            finding.confidence,
            action,
            finding.explanation,
        )
        if not flow.marked:  # a marker the user set stays
            flow.marked = MARKER
        note = f"{PREFIX}: {finding.summary}"
        flow.comment = f"{flow.comment}\n{note}" if flow.comment else note  # what the user typed stays
        meta = finding.to_dict()
        meta["upstream"] = upstream
        meta["upstream_proxy"] = via_address
        meta["rewritten"] = rewritten
        meta["rewritten_status"] = ctx.options.esrs_status if rewritten else None
        flow.metadata[METADATA_KEY] = meta
        if self.report is not None:
            self.report.write(
                {
                    "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
                    "client": _address(flow.client_conn.peername),
                    "method": flow.request.method,
                    "url": flow.request.pretty_url,
                    **meta,
                }
            )
        return rewritten


def _address(address: tuple | None) -> str:
    if not address:
        return "unknown"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _body(finding: Finding, headline: str) -> bytes:
    lines: Sequence[str] = [
        headline,
        "",
        f"What the upstream sent: {finding.summary}",
        f"Raw bytes: {records.hexdump(finding.raw, 64)}" if finding.raw else "Raw bytes: (none)",
        "",
        finding.explanation,
        "",
    ]
    return "\n".join(lines).encode()


def error_response(finding: Finding) -> http.Response:
    """The default answer: a 502 that says what came back instead of HTTP."""
    return http.Response.make(
        502,
        _body(finding, "esrs-fix: the upstream did not answer with HTTP (502 from the proxy, not from the server)."),
        {
            "Content-Type": "text/plain; charset=utf-8",
            LABEL_HEADER: f"detected; {finding.summary}",
        },
    )


def rewritten_response(finding: Finding, status: int) -> http.Response:
    """The answer when rewriting is on: labelled as synthetic so that nobody takes it for the server's."""
    reason = status_codes.RESPONSES.get(status, "")
    return http.Response.make(
        status,
        _body(
            finding,
            f"esrs-fix: SYNTHETIC {status} {reason}: made by the proxy, not sent by the server (esrs_rewrite is on).",
        ),
        {
            "Content-Type": "text/plain; charset=utf-8",
            LABEL_HEADER: f"synthetic {status}; {finding.summary}",
        },
    )
