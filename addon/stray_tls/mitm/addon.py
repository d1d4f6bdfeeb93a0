"""The mitmproxy addon: spot TLS where HTTP was expected, explain it, and rewrite it only when asked.

It speaks mitmproxy's public API only; everything that names mitmproxy's internals lives in `compat`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import difflib
import logging
import time
import weakref
from collections.abc import Awaitable
from typing import Optional

from mitmproxy import command, connection, ctx, exceptions, flowfilter, hooks, http, tls
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy import server_hooks

from .. import compat
from ..compat import EarlyDetection
from ..core import findings as fnd
from ..core import records, text
from ..core.findings import Finding, Kind
from ..core.names import (
    DEFAULT_HOLD_TIMEOUT,
    DEFAULT_UPGRADE_RETRY,
    DEFAULT_UPGRADE_TIMEOUT,
    LABEL_HEADER,
    METADATA_KEY,
    OPT_EARLY,
    OPT_FILTER,
    OPT_HOLD_TIMEOUT,
    OPT_REPORT,
    OPT_REWRITE,
    OPT_STATUS,
    OPT_UPGRADE,
    OPT_UPGRADE_RETRY,
    OPT_UPGRADE_TIMEOUT,
    OPTION_NAMES,
    UPGRADE_METADATA_KEY,
    UPSTREAM_LABEL_HEADER,
    hostport,
    printable,
)
from ..core.pasted import PasteError, parse_pasted
from . import contentview
from .answers import error_response, lowercase_label, rewritten_response, upgrade_failed_response
from .causes import AttemptCause, Failure, attempt_cause
from .flowrecord import FlowRecord, address, annotate, finding_of, iso, log_detection
from .learned import Entry, LearnedTargets, Target
from .report import ReportWriter
from .route import tls_route
from .upgrade import SUSPECT_WAIT, Upgrade, UpgradeOutcome, target_of

__all__ = ["EsrsFix", "error_response", "rewritten_response", "upgrade_failed_response"]

log = logging.getLogger("esrs_fix")

#: mitmproxy's options that decide whether a TLS attempt can succeed: a change forgets the remembered failures.
_ATTEMPT_OPTIONS = frozenset(
    {
        OPT_UPGRADE_TIMEOUT,
        OPT_UPGRADE_RETRY,
        "ssl_insecure",
        "ssl_verify_upstream_trusted_ca",
        "ssl_verify_upstream_trusted_confdir",
        "tls_version_server_min",
        "tls_version_server_max",
        "client_certs",
        "upstream_auth",
        "mode",
    }
)

_LABEL_BYTES = LABEL_HEADER.lower().encode()

#: mitmproxy's filters that read a message body: false in `requestheaders`, where the request's body is not there yet.
_BODY_FILTERS = (flowfilter.FBod, flowfilter.FBodRequest, flowfilter.FBodResponse)


def needs_body(node: object) -> bool:
    """Whether the parsed filter `node` (mitmproxy's `flowfilter` tree: `~b`, `~bq`, `~bs` anywhere in it, under
    `&`, `|` and `!`) reads a body, and so can only be evaluated once the request has been read."""
    if isinstance(node, _BODY_FILTERS):
        return True
    children = getattr(node, "lst", None) or ([node.itm] if isinstance(node, flowfilter.FNot) else [])
    return any(needs_body(child) for child in children)


class _BadOption(exceptions.OptionsError):
    """A value `configure` refuses: the sentence names the option and the value."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"{option}: {problem}")
        self.option = option


class EsrsFix:
    def __init__(self) -> None:
        self.filter: flowfilter.TFilter | None = None
        # esrs_filter reads the request's body: learned routing is decided in `request`, not in `requestheaders`.
        self._filter_needs_body = False
        # Synthetic responses made by the early detection, until their flow's response hook claims them.
        self._made: weakref.WeakKeyDictionary[http.Response, Finding] = weakref.WeakKeyDictionary()
        # Answers for flows that mitmproxy fails before any response exists, claimed by the early detection.
        self._error_answers: weakref.WeakKeyDictionary[http.Request, http.Response] = weakref.WeakKeyDictionary()
        # Responses this addon made or upgraded: they carry its label legitimately.
        self._ours: weakref.WeakSet[http.Response] = weakref.WeakSet()
        # The upgrade (esrs_upgrade): learned targets, TLS attempts in flight (one per target), remembered failures.
        self.upgrade = Upgrade()
        # Flows sent over TLS at once because their target is learned, by flow id, until their response or error.
        self._learned_flows: dict[str, tuple[Target, Entry, float]] = {}
        # Flows answered before their request went out (a remembered failed upgrade), by id, until their response hook.
        self._answered: set[str] = set()
        # The flow whose plaintext attempt got what a remembered failure answers with, by that failure (kept while the
        # failure is remembered): the unsent flows' report lines name it instead of repeating its records.
        self._failed_by: weakref.WeakKeyDictionary[Failure, str] = weakref.WeakKeyDictionary()
        self.early = EarlyDetection(self._on_records, self._claim_error_answer)
        # Failed TLS handshakes with an upstream, by server connection id, for the flow's error hook.
        self._tls_failures: dict[str, Finding] = {}
        self.report: ReportWriter | None = None
        self._view: object = None

    @property
    def learned(self) -> LearnedTargets:
        """The targets esrs_upgrade learned (the upgrade's memory)."""
        return self.upgrade.learned

    def load(self, loader: Loader) -> None:
        loader.add_option(
            OPT_UPGRADE,
            bool,
            False,
            "Upgrade instead of fake: when the upstream answered a plaintext request as a TLS port does (TLS records, "
            "its 'plain HTTP to HTTPS port' page, squid's HTTP/0.9 wrapping of them; or a silent close, for GET, "
            "HEAD and OPTIONS only), send the same request again over TLS to the same host and port, verified as "
            "mitmproxy verifies any upstream, and answer with the server's own response, labelled "
            f"'{LABEL_HEADER}: upgraded; ...'. The target is remembered, and later plaintext requests to it go "
            "over TLS at once. One attempt per target at a time: other requests to it wait for its outcome; a "
            f"failed attempt is remembered for {OPT_UPGRADE_RETRY}. Proxy-* headers never reach the server. Scoped "
            "by esrs_filter; tried before esrs_rewrite, which is the fallback. Needs esrs_early for TLS records and "
            "silent closes.",
        )
        loader.add_option(
            OPT_UPGRADE_TIMEOUT,
            int,  # whole seconds: mitmproxy's --set cannot parse a float option
            DEFAULT_UPGRADE_TIMEOUT,
            "Seconds one esrs_upgrade TLS attempt may take in all (connect, the upstream proxy's CONNECT, the TLS "
            "handshake and the whole answer; 1-3600). A far server or a slow proxy needs it long; then the "
            "client gets the labelled failure.",
        )
        loader.add_option(
            OPT_UPGRADE_RETRY,
            int,
            DEFAULT_UPGRADE_RETRY,
            "Seconds a failed esrs_upgrade TLS attempt is remembered (0-3600; 0: not at all): requests to its target "
            "within that time get the same labelled failure at once, without an attempt of their own, so that a "
            "crowd of clients does not hammer a failing server. Changing a TLS option forgets it.",
        )
        loader.add_option(
            OPT_REWRITE,
            bool,
            False,
            "Answer with a synthetic status (esrs_status), labelled with a "
            f"{LABEL_HEADER} header, instead of the 502 when the upstream answered with TLS records (complete or "
            "not), failed the TLS handshake with an alert, or sent its 'plain HTTP to HTTPS port' page. Never "
            "for a silent close or an HTTP response with a TLS body. For validating a connectivity check only: "
            "the synthetic answer is not the server's.",
        )
        loader.add_option(
            OPT_STATUS,
            int,
            200,
            "The status of the synthetic answer when esrs_rewrite is on (100-599).",
        )
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
            OPT_EARLY,
            bool,
            True,
            "Detect stray TLS records the moment they arrive, so that the client is answered at once even when "
            "the upstream keeps its connection open. Off: public hooks only (the client then gets mitmproxy's "
            "own 502, or waits for the idle timeout).",
        )
        loader.add_option(
            OPT_HOLD_TIMEOUT,
            int,  # whole seconds: mitmproxy's --set cannot parse a float option
            DEFAULT_HOLD_TIMEOUT,
            "Seconds to wait for a TLS record that has begun (in the upstream's answer) to complete. Then the client "
            "is answered with what arrived, labelled incomplete. Needs esrs_early.",
        )
        loader.add_option(
            OPT_REPORT,
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
                log.error("esrs-fix: %s: invalid value %r (%s)", name, " ".join(values), e)

    def configure(self, updated: set[str]) -> None:
        """Apply changed options. A bad value refused at run time (`:set`, mitmweb's options editor) raises, and
        mitmproxy keeps the old value; at start-up (the script loader configures every option at once) it is one
        error line instead of a traceback, the option keeps its default, and mitmdump's start-up check exits 1."""
        if not updated.issuperset(OPTION_NAMES):
            self._configure(updated)
            return
        self._warn_unknown_options()
        pending = set(updated)
        while True:
            try:
                self._configure(pending)
                return
            except _BadOption as e:
                log.error("esrs-fix: %s", e)
                pending.discard(e.option)
                ctx.options.update(**{e.option: ctx.options.default(e.option)})

    def _warn_unknown_options(self) -> None:
        """A misspelt `--set esrs_...` is kept by mitmproxy as an option nobody declared, and silently ignored."""
        for name in compat.deferred_names(ctx.options):
            if name.startswith("esrs") and name not in OPTION_NAMES:
                near = difflib.get_close_matches(name, OPTION_NAMES, n=1)
                hint = f"; did you mean {near[0]}?" if near else f"; esrs-fix's options: {', '.join(OPTION_NAMES)}"
                log.warning("esrs-fix: unknown option %s is ignored%s", name, hint)

    def _configure(self, updated: set[str]) -> None:
        if OPT_STATUS in updated:
            status = ctx.options.esrs_status
            if not 100 <= status <= 599:
                raise _BadOption(OPT_STATUS, f"{status} is not an HTTP status code (100-599)")
        if OPT_HOLD_TIMEOUT in updated:
            hold = ctx.options.esrs_hold_timeout
            if not 1 <= hold <= 3600:
                raise _BadOption(OPT_HOLD_TIMEOUT, f"{hold} is not a number of seconds from 1 to 3600")
            self.early.hold_timeout = hold
        if OPT_UPGRADE_TIMEOUT in updated:
            limit = ctx.options.esrs_upgrade_timeout
            if not 1 <= limit <= 3600:
                raise _BadOption(OPT_UPGRADE_TIMEOUT, f"{limit} is not a number of seconds from 1 to 3600")
            self.upgrade.timeout = limit
        if OPT_UPGRADE_RETRY in updated:
            retry = ctx.options.esrs_upgrade_retry_after
            if not 0 <= retry <= 3600:
                raise _BadOption(OPT_UPGRADE_RETRY, f"{retry} is not a number of seconds from 0 to 3600")
            self.upgrade.failure_ttl = retry
        if updated & _ATTEMPT_OPTIONS:
            self.upgrade.forget_failures()  # what made an attempt fail may be fixed now (a CA trusted, a version)
        if OPT_FILTER in updated:
            expr = ctx.options.esrs_filter
            if expr:
                try:
                    self.filter = flowfilter.parse(expr)
                except ValueError as e:
                    raise _BadOption(OPT_FILTER, f"{expr!r} is not a mitmproxy filter expression ({e})") from None
            else:
                self.filter = None
            self._filter_needs_body = needs_body(self.filter)
        if OPT_REPORT in updated:
            if self.report is not None:
                self.report.close()
                self.report = None
            if ctx.options.esrs_report:
                try:
                    self.report = ReportWriter.open(ctx.options.esrs_report)
                except OSError as e:
                    path = ctx.options.esrs_report
                    raise _BadOption(OPT_REPORT, f"cannot open {path!r} for appending: {e.strerror or e}") from None
        if OPT_EARLY in updated:
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
        if (OPT_UPGRADE in updated or OPT_EARLY in updated) and ctx.options.esrs_upgrade and not self.early.active:
            log.warning(
                "esrs-fix: esrs_upgrade upgrades only 'plain HTTP to HTTPS port' pages while early detection is off "
                "(esrs_early): TLS records and silent closes need it to be upgraded."
            )

    def done(self) -> None:
        self.early.uninstall()
        contentview.unregister(self._view)
        if self.report is not None:
            self.report.close()

    @command.command("esrs.upgraded")
    def upgraded(self) -> str:
        """The targets learned by esrs_upgrade: plaintext requests to them go over TLS at once."""
        entries = self.learned.entries()
        if not entries:
            return "esrs-fix: no learned targets"
        now = datetime.datetime.now(datetime.UTC).timestamp()
        lines = [f"esrs-fix: {len(entries)} learned target(s) (at most {self.learned.capacity})"]
        for e in entries:
            lines.append(
                f"{e.target}  learned {iso(e.learned_at)}, expires in {max(0, e.expires_at - now):.0f} s; "
                f"plaintext got: {e.plaintext_answer}"
            )
        return "\n".join(lines)

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
        response = self._labelled(error_response(finding), to=request)
        self._made[response] = finding
        if ctx.options.esrs_upgrade and request.scheme == "http" and finding.kind in fnd.UPGRADABLE:
            self.upgrade.suspect(request.host, request.port)  # a crowd's next requests wait for this flow's upgrade
        return response

    # -- learned targets: over TLS from the start

    # Hooks that may need to wait for a TLS attempt return an awaitable then, and None otherwise: mitmproxy awaits
    # what a hook returns, and clean traffic creates no coroutine.

    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        # Here, not in `request`: a request whose body mitmproxy streams is connected and sent before `request` runs.
        # Only a filter that reads the body waits for `request` (a streamed body is never there: decided here).
        if not self.upgrade or not ctx.options.esrs_upgrade or not flow.live or flow.request.scheme != "http":
            return None  # clean traffic with nothing learned, pending or failed pays one length test
        if self._filter_needs_body and not flow.request.stream:
            return None
        return self._route(flow)

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        # The body is here: esrs_filter's ~b, ~bq, ~bs see it (mitmproxy has not connected yet, the body not streamed).
        if not self._filter_needs_body or not self.upgrade or not ctx.options.esrs_upgrade or flow.request.stream:
            return None
        if not flow.live or flow.request.scheme != "http":
            return None
        return self._route(flow)

    def _route(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Decide how a plaintext request to a known target goes: after its pending attempt, over TLS, or answered."""
        if UPGRADE_METADATA_KEY in flow.metadata or flow.response is not None or not self._in_scope(flow):
            return None
        target = target_of(flow)
        if (pending := self.upgrade.pending(target)) is not None:
            return self._after_attempt(flow, target, pending)  # one attempt per target: wait for its outcome
        if (suspicion := self.upgrade.suspected(target.host, target.port)) is not None:
            return self._after_suspicion(flow, target, suspicion)
        self._route_known(flow, target)
        return None

    async def _after_attempt(
        self, flow: http.HTTPFlow, target: Target, pending: asyncio.Future[Failure | None]
    ) -> None:
        await self.upgrade.wait(pending)
        if flow.live:
            self._route_known(flow, target)

    async def _after_suspicion(self, flow: http.HTTPFlow, target: Target, suspicion: Awaitable[None]) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(suspicion), SUSPECT_WAIT)
        if not flow.live:
            return
        if (pending := self.upgrade.pending(target)) is not None:
            await self._after_attempt(flow, target, pending)
        else:
            self._route_known(flow, target)

    def _route_known(self, flow: http.HTTPFlow, target: Target) -> None:
        """Over TLS at once to a learned target; the remembered failure for a failed one; else plaintext, as sent."""
        if (entry := self.upgrade.learned.lookup(target)) is not None:
            # mitmproxy's own connection from here on: TLS to the same host and port (CONNECT through the upstream
            # proxy in upstream mode), verified as any upstream, the body streamed as mitmproxy streams it. The route
            # is the upgrade's: its SNI goes on the connection the flow dials (in reverse and the address modes
            # mitmproxy takes it from there, before the client's own SNI; elsewhere it sends the request's host).
            route = tls_route(flow, ctx.options)
            route.prepare(flow.request)
            flow.server_conn.sni = route.sni
            self._learned_flows[flow.id] = (target, entry, time.monotonic())
        elif (failed := self.upgrade.failed(target)) is not None:
            # Answered before it goes out, by the one decision, as if its own attempt had failed the same way.
            failure, finding = failed
            flow.request.stream = False  # the answer is given when the request has been read
            self._answered.add(flow.id)
            outcome = UpgradeOutcome(None, failure=failure, shared=True)
            self._settle(flow, finding, True, outcome, False, remembered=self._failed_by.get(failure, ""))

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        # Only the addon may label an answer: an upstream's own X-ESRS-Fix is renamed before the client sees it
        # (here, not in `response`, so that streamed bodies are covered too). A flow read back from a file keeps
        # what it recorded, the addon's own label included.
        response = flow.response
        if response is None or not flow.live:
            return
        # A plain scan of the raw fields: five times cheaper than `in headers`, which runs on every response.
        if any(name.lower() == _LABEL_BYTES for name, _ in response.headers.fields) and response not in self._ours:
            values = response.headers.get_all(LABEL_HEADER)
            del response.headers[LABEL_HEADER]
            response.headers.set_all(UPSTREAM_LABEL_HEADER, values)
            flow.metadata[f"{METADATA_KEY}_upstream_label"] = values
            log.warning(
                "esrs-fix: %s (%s): the upstream sent its own %s header %s; renamed to %s so that it is not taken "
                "for this addon's label",
                printable(flow.request.pretty_url),
                address(flow.server_conn.peername or flow.server_conn.address),
                LABEL_HEADER,
                printable(repr(values)),
                UPSTREAM_LABEL_HEADER,
            )

        if UPGRADE_METADATA_KEY in flow.metadata:
            # The TLS attempt's body: kept as it streams in (the replay's own client drops it), whole or not at all,
            # up to body_size_limit (or the upgrade's cap), which a streamed body would otherwise escape.
            if (sink := self.upgrade.sink(flow)) is not None:
                response.stream = sink
        elif (learned := self._learned_flows.get(flow.id)) is not None and flow.server_conn.tls_established:
            self._labelled(
                response, f"upgraded (learned); {learned[1].plaintext_answer}", to=flow.request
            )  # before a streamed body

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if flow.response is None or not flow.live or UPGRADE_METADATA_KEY in flow.metadata:
            return None  # history (a flow read back with -r keeps what it recorded), or esrs-fix's own TLS attempt
        if self._answered and flow.id in self._answered:
            self._answered.discard(flow.id)  # answered before it went out (a remembered failure): recorded then
            return None
        learned = self._learned_flows.pop(flow.id, None) if self._learned_flows else None
        if learned is not None and flow.server_conn.tls_established and flow.response in self._ours:
            self._served_learned(flow, *learned)
            return None
        # A learned flow answered otherwise: another addon answered it (block_list, map_local, server-side replay, a
        # script), or sent it another way. Nothing about the target's TLS: it stays learned; the answer is judged as
        # any other.
        finding = self._made.pop(flow.response, None) if self._made else None
        if finding is None:
            # Late faces: a server's "plain HTTP to HTTPS port" page, or TLS records relayed as a body.
            # Clean traffic pays one status comparison and one byte test here.
            response = flow.response
            content = response.raw_content
            if not content or (response.status_code != 400 and not records.could_start_tls(content[0])):
                return None
            if response.headers.get("content-encoding", "identity") != "identity":
                return None
            headers = response.headers
            finding = fnd.from_response(
                response.status_code, content, headers.get("x-transformed-from"), headers.get("content-type")
            )
            if finding is None:
                return None
        # A streamed answer is already on its way to the client: it can be reported, not replaced.
        return self._decide(flow, finding, may_replace=not flow.response.stream)

    # -- public-hook fallbacks

    def error(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        self._answered.discard(flow.id)  # answered before it went out, then failed (the client went away)
        if (learned := self._learned_flows.pop(flow.id, None)) is not None:
            # Forgotten only when TLS to the target failed: not when the client went away (mitmproxy then ends the
            # handshake it waited for: "connection closed"), a user or an addon killed the flow, or the flow failed
            # on mitmproxy's side (a body over body_size_limit): none of that says anything about the target.
            if not flow.server_conn.tls_established and self._tls_failed(flow):
                self._learned_failed(flow, *learned)
            return None
        failed = self._tls_failures.pop(flow.server_conn.id, None)
        via = flow.server_conn.via
        if via is not None:  # the TLS connection to the upstream proxy failed: kept by client (taken whatever follows)
            failed = self._tls_failures.pop(_proxy_key(flow.client_conn.id), None) or failed
        if flow.error is None or flow.response is not None or not flow.live or UPGRADE_METADATA_KEY in flow.metadata:
            return None
        finding = failed or compat.finding_from_error(flow.error.msg)
        if finding is None:
            return None
        # Only the early detection's send wrapper (HTTP/1 clients) can put an answer in place of mitmproxy's error page.
        may_replace = self.early.active and flow.request.http_version.startswith("HTTP/1")
        return self._decide(flow, finding, may_replace=may_replace, error_path=True)

    @staticmethod
    def _tls_failed(flow: http.HTTPFlow) -> bool:
        """Whether a learned flow's error may be its TLS connection to the target failing (connect, CONNECT,
        handshake, certificate, the server ending it, or words not known), not its client going away, a kill, or
        mitmproxy's own body_size_limit. In doubt it is: forgetting costs one plaintext try, as stock does."""
        if flow.error is None or not flow.client_conn.connected or compat.client_gone(flow.error.msg):
            return False
        return attempt_cause(flow.error.msg)[0] is not AttemptCause.TOO_LARGE

    def _claim_error_answer(self, request: http.Request) -> http.Response | None:
        return self._error_answers.pop(request, None)

    def tls_failed_server(self, data: tls.TlsData) -> None:
        # Remember why; the flow's error hook, which follows, reports it once with the flow's URL.
        server = data.context.server
        via = server.via
        conn = data.conn
        if via is not None and isinstance(conn, connection.Server) and conn is not server and conn.address == via[1]:
            # the TLS connection to the upstream proxy (`--mode upstream:https://`), not to the server: the flow
            # that waited for it has a server connection of its own, so it is kept by client for the error hook
            finding = compat.finding_from_tls_error(data.conn.error or "", hostport(str(via[1][0]), via[1][1]))
            if finding is not None:
                self._tls_failures[_proxy_key(data.context.client.id)] = finding
            return
        finding = compat.finding_from_tls_error(data.conn.error or "")
        if finding is not None:
            self._tls_failures[data.conn.id] = finding

    def server_disconnected(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._tls_failures.pop(data.server.id, None)

    def _served_learned(self, flow: http.HTTPFlow, target: Target, entry: Entry, started: float) -> None:
        """A learned target answered over TLS: keep it learned, and record it as an upgraded flow is recorded."""
        assert flow.response is not None
        self.upgrade.learned.remember(target, entry.plaintext_answer, entry.kind)
        annotate(flow, FlowRecord.of(flow, None, entry=entry, attempt=flow, upgraded=True, learned=True), self.report)
        # Routine, not news (a newly learned target is logged as a warning): no log line at all. Even at debug level
        # mitmproxy formats every record and wakes its event loop for it, which cost a learned request a fifth more
        # CPU than an https:// one; the flow's record, label and report line say what happened.

    def _learned_failed(self, flow: http.HTTPFlow, target: Target, entry: Entry, started: float) -> None:
        """TLS to a learned target failed: forget it, and tell the client why in a labelled 502."""
        self.upgrade.learned.forget(target)
        finding = finding_of(entry)
        failure = self.upgrade.failure_of(flow, finding, time.monotonic() - started)
        log.warning(
            "esrs-fix: %s (%s): TLS to learned target %s failed (%s); it is forgotten, and the next request tries "
            "plaintext first",
            printable(flow.request.pretty_url),
            address(flow.server_conn.peername or flow.server_conn.address),
            printable(str(target)),
            printable(str(failure)),
        )
        if flow.live and self.early.active and flow.response is None:
            self._error_answers[flow.request] = self._labelled(
                upgrade_failed_response(finding, failure), to=flow.request
            )
        record = FlowRecord.of(flow, None, entry=entry, attempt=flow, learned=True, upgrade_error=failure)
        annotate(flow, record, self.report)

    # -- what every detection does: the one decision

    def _in_scope(self, flow: http.HTTPFlow) -> bool:
        return self.filter is None or bool(self.filter(flow))

    def _decide(
        self, flow: http.HTTPFlow, finding: Finding, *, may_replace: bool, error_path: bool = False
    ) -> Awaitable[None] | None:
        """The addon's answer to one detection, decided here and nowhere else.

        A live flow only (the hooks return early for history). Upgrade first (esrs_upgrade, in esrs_filter, and the
        evidence allows re-sending this method), then the synthetic status (esrs_rewrite, in esrs_filter, a
        rewritable kind), else the labelled 502 or the upstream's own answer, untouched. `may_replace`: whether
        the client's answer can still be changed (on the error path only the early detection's send wrapper can).
        Returns an awaitable when a TLS attempt has to be waited for.
        """
        in_scope = may_replace and self._in_scope(flow)
        # Only a plaintext request whose body mitmproxy kept can be sent again as it was.
        resendable = flow.request.scheme == "http" and flow.request.raw_content is not None
        if in_scope and ctx.options.esrs_upgrade and resendable and finding.upgradable(flow.request.method):
            return self._upgrade(flow, finding, in_scope, error_path)
        self._settle(flow, finding, in_scope, None, error_path)
        return None

    async def _upgrade(self, flow: http.HTTPFlow, finding: Finding, in_scope: bool, error_path: bool) -> None:
        outcome = await self.upgrade.attempt(flow, target_of(flow), finding, ctx.options, self._ours.__contains__)
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
        upgraded = outcome is not None and outcome.answer is not None
        failure = outcome.failure if outcome is not None else None
        # The TLS attempt got no TLS back: the port speaks plain HTTP, and the server's own page (flow.response, kept
        # as it came) goes to the client untouched, as without esrs-fix. TLS records keep their labelled answer.
        passed_on = (
            failure is not None and failure.cause is AttemptCause.NOT_TLS and finding.kind is Kind.PLAIN_HTTP_400
        )
        rewritten = not upgraded and not passed_on and in_scope and ctx.options.esrs_rewrite and finding.rewritable
        if outcome is not None and outcome.answer is not None:
            flow.response = self._labelled(outcome.answer, f"upgraded; {finding.summary}", to=flow.request)
        elif rewritten:
            flow.response = self._labelled(
                rewritten_response(finding, ctx.options.esrs_status, failure), to=flow.request
            )
        elif failure is not None and finding.kind in fnd.UPGRADABLE and not passed_on:
            # proven TLS port, failed TLS attempt (an untrusted certificate): say so, never fall back to insecure
            flow.response = self._labelled(upgrade_failed_response(finding, failure), to=flow.request)
        if error_path and flow.response is not None:
            self._error_answers[flow.request] = flow.response  # for the send wrapper, in place of mitmproxy's 502
        record = FlowRecord.of(
            flow,
            finding,
            rewritten_status=ctx.options.esrs_status if rewritten else None,
            upgraded=upgraded,
            attempt=outcome.attempt if outcome is not None else None,
            upgrade_error=failure,
            shared=outcome is not None and outcome.shared,
            remembered=remembered is not None,
            same_as=remembered or None,
        )
        if failure is not None and outcome is not None and not outcome.shared:
            self._failed_by[failure] = flow.id  # this flow's answer is what a remembered failure repeats
        if upgraded:
            action = (
                f"upgraded to TLS: the client got the server's HTTP {flow.response.status_code if flow.response else 0}"
            )
        elif rewritten:
            action = f"rewritten to a synthetic {ctx.options.esrs_status}"
        elif passed_on:
            action = "the server's own answer passed on"
        else:
            action = "not rewritten"
        if passed_on:
            action = f"{failure}; {action}"
        elif failure is not None:
            action += f"; the TLS attempt failed: {failure}"
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
        annotate(flow, record, self.report)
        if outcome is not None and outcome.newly_learned:
            log.warning(
                "esrs-fix: learned %s: it speaks TLS; later plaintext requests to it go over TLS at once "
                "(remembered for %.0f s, at most %d targets)",
                printable(str(target_of(flow))),
                self.upgrade.learned.ttl,
                self.upgrade.learned.capacity,
            )

    def _labelled(self, response: http.Response, label: str | None = None, *, to: http.Request) -> http.Response:
        """Mark `response` as this addon's answer to `to` (it keeps a label it already has when `label` is None).

        An HTTP/2 or HTTP/3 client gets the label's name in lower case, as those protocols want it: mitmproxy would
        lowercase it anyway, with a log line for every labelled answer."""
        if label is not None:
            response.headers[LABEL_HEADER] = label
        if not to.http_version.startswith("HTTP/1"):
            lowercase_label(response)
        self._ours.add(response)
        return response


def _proxy_key(client_id: str) -> str:
    """Where a failed TLS connection to the upstream proxy is kept: by the client connection that waited for it."""
    return f"{client_id} upstream proxy"
