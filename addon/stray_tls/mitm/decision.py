"""The one decision: what a client gets when esrs-fix found stray TLS (or a server's plain-HTTP page) in its answer.

Upgrade first (esrs_upgrade, in esrs_filter, and the evidence allows re-sending this method), then the synthetic
status (esrs_rewrite, in esrs_filter, a rewritable kind), else the labelled 502 or the upstream's own answer,
untouched. `choose` takes that decision from its inputs alone; `Decision` gathers them, gives the client its answer,
and records the flow (log line, marker, comment, metadata, report line), once.
"""

from __future__ import annotations

import enum
import logging
import weakref
from collections.abc import Awaitable
from typing import Optional

from mitmproxy import ctx, flowfilter, hooks, http
from mitmproxy.addonmanager import Loader

from ..core import findings as fnd
from ..core.findings import Finding, Kind
from ..core.names import OPT_FILTER, OPT_REPORT, printable
from .causes import AttemptCause, Failure
from .flowrecord import FlowRecord, annotate, annotate_served, log_detection
from .labels import Labels
from .learned import Entry
from .options import BadOption, Options
from .report import ReportWriter
from .responses import ErrorResponses, upgrade_failed_response
from .rewrite import Rewrite
from .upgrade import Upgrade, UpgradeOutcome, target_of

log = logging.getLogger("esrs_fix")

#: mitmproxy's filters that read a message body: false in `requestheaders`, where the request's body is not there yet.
_BODY_FILTERS = (flowfilter.FBod, flowfilter.FBodRequest, flowfilter.FBodResponse)


def needs_body(node: object) -> bool:
    """Whether the parsed filter `node` (mitmproxy's `flowfilter` tree: `~b`, `~bq`, `~bs` anywhere in it, under
    `&`, `|` and `!`) reads a body, and so can only be evaluated once the request has been read."""
    if isinstance(node, _BODY_FILTERS):
        return True
    children = getattr(node, "lst", None) or ([node.itm] if isinstance(node, flowfilter.FNot) else [])
    return any(needs_body(child) for child in children)


class ClientAnswer(enum.Enum):
    """What the client gets."""

    UPGRADED = "the server's own answer over TLS"
    PASSED_ON = "the server's own plaintext answer, passed on as it came"
    REWRITTEN = "the synthetic status"
    UPGRADE_FAILED = "the labelled 502 that says why the TLS attempt failed"
    AS_IS = "what detection made of it: the labelled 502, or the upstream's answer untouched"


def choose(finding: Finding, outcome: UpgradeOutcome | None, *, in_scope: bool, rewrite: bool) -> ClientAnswer:
    """The client's answer, from the finding, the upgrade's outcome (None: no upgrade was made), whether esrs_filter
    lets esrs-fix change this flow, and esrs_rewrite."""
    if outcome is not None and outcome.answer is not None:
        return ClientAnswer.UPGRADED
    failure = outcome.failure if outcome is not None else None
    # The TLS attempt got no TLS back: the port speaks plain HTTP, and the server's own page goes to the client
    # untouched, as without esrs-fix. TLS records keep their labelled answer.
    if failure is not None and failure.cause is AttemptCause.NOT_TLS and finding.kind is Kind.PLAIN_HTTP_400:
        return ClientAnswer.PASSED_ON
    if in_scope and rewrite and finding.rewritable:
        return ClientAnswer.REWRITTEN
    if failure is not None and finding.kind in fnd.UPGRADABLE:
        return ClientAnswer.UPGRADE_FAILED  # proven TLS port, failed TLS attempt: say so, never fall back to insecure
    return ClientAnswer.AS_IS


class Decision(Options):
    """Declares esrs_filter (which flows esrs-fix may change) and esrs_report; decides and records each detection."""

    name = "esrs-fix.decision"
    OPTIONS = (OPT_FILTER, OPT_REPORT)

    def __init__(self, labels: Labels, error_responses: ErrorResponses, upgrade: Upgrade, rewrite: Rewrite) -> None:
        self.labels = labels
        self.error_responses = error_responses
        self.upgrade = upgrade
        self.rewrite = rewrite
        self.filter: flowfilter.TFilter | None = None
        #: esrs_filter reads the request's body: learned routing is decided in `request`, not in `requestheaders`.
        self.filter_needs_body = False
        self.report: ReportWriter | None = None
        #: Flows whose answer esrs-fix has decided (or left for good): no later hook judges them again.
        self.decided: weakref.WeakSet[http.HTTPFlow] = weakref.WeakSet()
        # The flow whose plaintext attempt got what a remembered failure answers with, by that failure (kept while the
        # failure is remembered): the unsent flows' report lines name it instead of repeating its records.
        self._failed_by: weakref.WeakKeyDictionary[Failure, str] = weakref.WeakKeyDictionary()

    def declare(self, loader: Loader) -> None:
        loader.add_option(
            OPT_FILTER,
            Optional[str],  # type: ignore[arg-type]  # noqa: UP045 - mitmproxy's option types are typing forms
            None,
            "A mitmproxy filter expression limiting which flows esrs-fix may change: those esrs_upgrade may send "
            "again over TLS (a learned target's flows outside it go out in plaintext, as if nothing was learned) "
            "and those esrs_rewrite may rewrite; empty means all. Detection and logging apply to every flow. "
            "Whether a learned target's request goes over TLS at once is decided in the requestheaders hook, or, "
            "when the filter reads a body (~b, ~bq, ~bs), in the request hook, once the body has been read; a "
            "request whose body mitmproxy streams (stream_large_bodies) is sent before that hook, so it is decided "
            "in requestheaders, without its body. Response filters see no response there. The upgrade after a "
            "stray answer is decided with the whole flow.",
        )
        loader.add_option(
            OPT_REPORT,
            str,
            "",
            "Append one JSON object per detection to this file (JSON Lines, flushed as written); empty: off.",
        )

    def _configure(self, updated: set[str]) -> None:
        if OPT_FILTER in updated:
            expr = ctx.options.esrs_filter
            if expr:
                try:
                    self.filter = flowfilter.parse(expr)
                except ValueError as e:
                    raise BadOption(OPT_FILTER, f"{expr!r} is not a mitmproxy filter expression ({e})") from None
            else:
                self.filter = None
            self.filter_needs_body = needs_body(self.filter)
        if OPT_REPORT in updated:
            if self.report is not None:
                self.report.close()
                self.report = None
            if ctx.options.esrs_report:
                try:
                    self.report = ReportWriter.open(ctx.options.esrs_report)
                except OSError as e:
                    path = ctx.options.esrs_report
                    raise BadOption(OPT_REPORT, f"cannot open {path!r} for appending: {e.strerror or e}") from None

    def done(self) -> None:
        if self.report is not None:
            self.report.close()

    def in_scope(self, flow: http.HTTPFlow) -> bool:
        return self.filter is None or bool(self.filter(flow))

    def record(self, flow: http.HTTPFlow, record: FlowRecord) -> None:
        """Write the flow's record (metadata, marker, comment, report line): esrs-fix is done with the flow."""
        annotate(flow, record, self.report)
        self.decided.add(flow)

    def record_served(self, flow: http.HTTPFlow, entry: Entry) -> None:
        """`record` for a flow served over TLS because its target (`entry`) is learned: the same record, made from
        what its target's flows share."""
        annotate_served(flow, entry, self.report)
        self.decided.add(flow)

    def decide(
        self, flow: http.HTTPFlow, finding: Finding, *, may_replace: bool, error_path: bool = False
    ) -> Awaitable[None] | None:
        """The answer to one detection on a live flow (the hooks return early for history). `may_replace`: whether the
        client's answer can still be changed (on the error path only the early detection's send wrapper can).
        Returns an awaitable when a TLS attempt has to be waited for."""
        self.decided.add(flow)
        in_scope = may_replace and self.in_scope(flow)
        # Only a plaintext request whose body mitmproxy kept can be sent again as it was.
        resendable = flow.request.scheme == "http" and flow.request.raw_content is not None
        if in_scope and ctx.options.esrs_upgrade and resendable and finding.upgradable(flow.request.method):
            return self._upgrade(flow, finding, in_scope, error_path)
        self._settle(flow, finding, in_scope, None, error_path)
        return None

    def answer_remembered(self, flow: http.HTTPFlow, failure: Failure, finding: Finding) -> None:
        """ClientAnswer a request before it goes out, as if its own attempt had failed the way its target's last one did
        moments ago (`finding`: what that attempt's plaintext request got)."""
        flow.request.stream = False  # the answer is given when the request has been read
        outcome = UpgradeOutcome(None, failure=failure, shared=True)
        self._settle(flow, finding, True, outcome, False, remembered=self._failed_by.get(failure, ""))

    async def _upgrade(self, flow: http.HTTPFlow, finding: Finding, in_scope: bool, error_path: bool) -> None:
        outcome = await self.upgrade.attempt(flow, target_of(flow), finding, ctx.options, self.labels.ours)
        if outcome.attempt is not None:
            # the attempt's own flow now says how it ended (a failed one its error too, set after its last hook): tell
            # the UIs, or mitmweb and the console keep showing it as they last saw it, pending
            ctx.master.addons.trigger(hooks.UpdateHook([outcome.attempt]))
        self._settle(flow, finding, in_scope, outcome, error_path)

    def _settle(
        self,
        flow: http.HTTPFlow,
        finding: Finding,
        in_scope: bool,
        outcome: UpgradeOutcome | None,
        error_path: bool,
        *,
        remembered: str | None = None,
    ) -> None:
        """Give the client its answer after the upgrade (if any), then log, mark and record.

        `remembered`: the flow did not go out: its target's last TLS attempt failed moments ago (the outcome's
        failure); the id of the flow whose plaintext attempt got `finding` (its report line lists it, this one not).
        """
        self.upgrade.clear_suspect(flow.request.host, flow.request.port)  # decided: nobody waits on this flow any more
        failure = outcome.failure if outcome is not None else None
        answer = choose(finding, outcome, in_scope=in_scope, rewrite=self.rewrite.on())
        if answer is ClientAnswer.UPGRADED:
            assert outcome is not None and outcome.answer is not None
            flow.response = self.labels.labelled(outcome.answer, f"upgraded; {finding.summary}", to=flow.request)
        elif answer is ClientAnswer.REWRITTEN:
            flow.response = self.labels.labelled(self.rewrite.answer(finding, failure), to=flow.request)
        elif answer is ClientAnswer.UPGRADE_FAILED:
            assert failure is not None
            flow.response = self.labels.labelled(upgrade_failed_response(finding, failure), to=flow.request)
        if error_path and flow.response is not None:
            self.error_responses.put(flow.request, flow.response)  # for the send wrapper, in place of mitmproxy's 502
        record = FlowRecord.of(
            flow,
            finding,
            rewritten_status=self.rewrite.status() if answer is ClientAnswer.REWRITTEN else None,
            upgraded=answer is ClientAnswer.UPGRADED,
            attempt=outcome.attempt if outcome is not None else None,
            upgrade_error=failure,
            shared=outcome is not None and outcome.shared,
            remembered=remembered is not None,
            same_as=remembered or None,
        )
        if failure is not None and outcome is not None and not outcome.shared:
            self._failed_by[failure] = flow.id  # this flow's answer is what a remembered failure repeats
        action = _action(flow, answer, failure, self.rewrite.status())
        if remembered is not None:  # no detection of its own: one quiet line, not a warning per request of a crowd
            log.info(
                "esrs-fix: %s: not sent: the TLS attempt to %s failed moments ago (%s) [%s]",
                printable(flow.request.pretty_url),
                printable(str(target_of(flow))),
                printable(str(failure or "")),
                printable(action, 600),
            )
        else:
            log_detection(flow, record, action)
        self.record(flow, record)
        if outcome is not None and outcome.newly_learned:
            log.warning(
                "esrs-fix: learned %s: it speaks TLS; later plaintext requests to it go over TLS at once "
                "(remembered for %.0f s, at most %d targets)",
                printable(str(target_of(flow))),
                self.upgrade.learned.ttl,
                self.upgrade.learned.capacity,
            )


def _action(flow: http.HTTPFlow, answer: ClientAnswer, failure: Failure | None, status: int) -> str:
    """What was done, for the log line."""
    if answer is ClientAnswer.UPGRADED:
        return f"upgraded to TLS: the client got the server's HTTP {flow.response.status_code if flow.response else 0}"
    if answer is ClientAnswer.PASSED_ON:
        return f"{failure}; the server's own answer passed on"
    action = f"rewritten to a synthetic {status}" if answer is ClientAnswer.REWRITTEN else "not rewritten"
    return action if failure is None else f"{action}; the TLS attempt failed: {failure}"
