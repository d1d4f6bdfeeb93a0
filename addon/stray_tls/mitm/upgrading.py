"""The upgrade addon (esrs_upgrade): its options, and learned routing: a request to a target that proved it speaks
TLS goes over TLS from the start, waits for the attempt to its target in flight, or gets its target's remembered
failure; and a learned target is forgotten only when TLS to it fails.

The attempts themselves (one per target, waiters taking turns, fair slots, remembered failures) are `upgrade`'s; what
a client gets after one is the decision's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable

from mitmproxy import ctx, http
from mitmproxy.addonmanager import Loader

from .. import compat
from ..core.names import (
    DEFAULT_UPGRADE_RETRY,
    DEFAULT_UPGRADE_TIMEOUT,
    LABEL_HEADER,
    OPT_UPGRADE,
    OPT_UPGRADE_RETRY,
    OPT_UPGRADE_TIMEOUT,
    UPGRADE_METADATA_KEY,
    printable,
)
from .causes import AttemptCause, Failure, attempt_cause
from .decision import Decision
from .flowrecord import FlowRecord, address, finding_of
from .labels import Labels
from .learned import Entry, Target
from .options import BadOption, Options
from .responses import ErrorResponses, upgrade_failed_response
from .route import tls_route
from .upgrade import SUSPECT_WAIT, Upgrade, target_of

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


class Upgrading(Options):
    """Declares esrs_upgrade and its times; routes requests to known targets; keeps learned flows' bodies and labels."""

    name = "esrs-fix.upgrading"
    OPTIONS = (OPT_UPGRADE, OPT_UPGRADE_TIMEOUT, OPT_UPGRADE_RETRY)

    def __init__(self, upgrade: Upgrade, decision: Decision, labels: Labels, error_responses: ErrorResponses) -> None:
        self.upgrade = upgrade
        self.decision = decision
        self.labels = labels
        self.error_responses = error_responses
        # Flows sent over TLS at once because their target is learned, by flow id, until their response or error.
        self._learned_flows: dict[str, tuple[Target, Entry, float]] = {}
        #: esrs_upgrade, kept by `configure`: mitmproxy deep-copies an option at each read, and every request reads it.
        self.enabled = False

    def declare(self, loader: Loader) -> None:
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

    def _configure(self, updated: set[str]) -> None:
        if OPT_UPGRADE in updated:
            self.enabled = ctx.options.esrs_upgrade
        if OPT_UPGRADE_TIMEOUT in updated:
            limit = ctx.options.esrs_upgrade_timeout
            if not 1 <= limit <= 3600:
                raise BadOption(OPT_UPGRADE_TIMEOUT, f"{limit} is not a number of seconds from 1 to 3600")
            self.upgrade.timeout = limit
        if OPT_UPGRADE_RETRY in updated:
            retry = ctx.options.esrs_upgrade_retry_after
            if not 0 <= retry <= 3600:
                raise BadOption(OPT_UPGRADE_RETRY, f"{retry} is not a number of seconds from 0 to 3600")
            self.upgrade.failure_ttl = retry
        if updated & _ATTEMPT_OPTIONS:
            self.upgrade.forget_failures()  # what made an attempt fail may be fixed now (a CA trusted, a version)

    # Hooks that may need to wait for a TLS attempt return an awaitable then, and None otherwise: mitmproxy awaits
    # what a hook returns, and clean traffic creates no coroutine.

    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        # Here, not in `request`: a request whose body mitmproxy streams is connected and sent before `request` runs.
        # Only a filter that reads the body waits for `request` (a streamed body is never there: decided here).
        if not self.upgrade or not self.enabled or not flow.live or flow.request.scheme != "http":
            return None  # clean traffic with nothing learned, pending or failed pays one length test
        if self.decision.filter_needs_body and not flow.request.stream:
            return None
        return self._route(flow)

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        # The body is here: esrs_filter's ~b, ~bq, ~bs see it (mitmproxy has not connected yet, the body not streamed).
        if not self.decision.filter_needs_body or not self.upgrade or not self.enabled:
            return None
        if flow.request.stream or not flow.live or flow.request.scheme != "http":
            return None
        return self._route(flow)

    def _route(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Decide how a plaintext request to a known target goes: after its pending attempt, over TLS, or answered."""
        if UPGRADE_METADATA_KEY in flow.metadata or flow.response is not None or not self.decision.in_scope(flow):
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
            self.decision.answer_remembered(flow, *failed)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if response is None or not flow.live:
            return
        if UPGRADE_METADATA_KEY in flow.metadata:
            # The TLS attempt's body: kept as it streams in (the replay's own client drops it), whole or not at all,
            # up to body_size_limit (or the upgrade's cap), which a streamed body would otherwise escape.
            if (sink := self.upgrade.sink(flow)) is not None:
                response.stream = sink
        elif (learned := self._learned_flows.get(flow.id)) is not None and flow.server_conn.tls_established:
            self.labels.labelled(
                response, f"upgraded (learned); {learned[1].plaintext_answer}", to=flow.request
            )  # before a streamed body

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.response is None or not flow.live or UPGRADE_METADATA_KEY in flow.metadata:
            return  # history (a flow read back with -r keeps what it recorded), or esrs-fix's own TLS attempt
        if flow in self.decision.decided:
            return  # answered before it went out (a remembered failure): recorded then
        learned = self._learned_flows.pop(flow.id, None) if self._learned_flows else None
        if learned is not None and flow.server_conn.tls_established and self.labels.ours(flow.response):
            self._served_learned(flow, *learned)
        # A learned flow answered otherwise: another addon answered it (block_list, map_local, server-side replay, a
        # script), or sent it another way. Nothing about the target's TLS: it stays learned; the answer is judged as
        # any other.

    def error(self, flow: http.HTTPFlow) -> None:
        if (learned := self._learned_flows.pop(flow.id, None)) is None:
            return
        # Forgotten only when TLS to the target failed: not when the client went away (mitmproxy then ends the
        # handshake it waited for: "connection closed"), a user or an addon killed the flow, or the flow failed on
        # mitmproxy's side (a body over body_size_limit): none of that says anything about the target.
        if not flow.server_conn.tls_established and _tls_failed(flow):
            self._learned_failed(flow, *learned)
        self.decision.decided.add(flow)  # a learned flow's error is not a detection

    def _served_learned(self, flow: http.HTTPFlow, target: Target, entry: Entry, started: float) -> None:
        """A learned target answered over TLS: keep it learned, and record it as an upgraded flow is recorded."""
        self.upgrade.learned.refresh(entry)
        self.decision.record_served(flow, entry)
        # Routine, not news (a newly learned target is logged as a warning): no log line at all. Even at debug level
        # mitmproxy formats every record and wakes its event loop for it, which cost a learned request a fifth more
        # CPU than an https:// one; the flow's record, label and report line say what happened.

    def _learned_failed(self, flow: http.HTTPFlow, target: Target, entry: Entry, started: float) -> None:
        """TLS to a learned target failed: forget it, and tell the client why in a labelled 502."""
        self.upgrade.learned.forget(target)
        finding = finding_of(entry)
        failure = self.upgrade.failure_of(flow, time.monotonic() - started)
        log.warning(
            "esrs-fix: %s (%s): TLS to learned target %s failed (%s); it is forgotten, and the next request tries "
            "plaintext first",
            printable(flow.request.pretty_url),
            address(flow.server_conn.peername or flow.server_conn.address),
            printable(str(target)),
            printable(str(failure)),
        )
        if flow.live and self.error_responses.active and flow.response is None:
            self.error_responses.put(
                flow.request, self.labels.labelled(upgrade_failed_response(finding, failure), to=flow.request)
            )
        self.decision.record(
            flow, FlowRecord.of(flow, None, entry=entry, attempt=flow, learned=True, upgrade_error=failure)
        )


def _tls_failed(flow: http.HTTPFlow) -> bool:
    """Whether a learned flow's error may be its TLS connection to the target failing (connect, CONNECT, handshake,
    certificate, the server ending it, or words not known), not its client going away, a kill, or mitmproxy's own
    body_size_limit. In doubt it is: forgetting costs one plaintext try, as stock does."""
    if flow.error is None or not flow.client_conn.connected or compat.client_gone(flow.error.msg):
        return False
    return attempt_cause(flow.error.msg)[0] is not AttemptCause.TOO_LARGE
