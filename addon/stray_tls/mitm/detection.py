"""The detection addon: the hooks that see the upstream's answers, and what they find.

Early detection (esrs_early) reads TLS records the moment they arrive (`compat.EarlyDetection`) and hands mitmproxy a
labelled 502 at once; the response hook reads the late faces (a server's whole "plain HTTP to an HTTPS port" page, TLS
records relayed as a body); the error hook recovers the bytes from mitmproxy's error when early detection was not
there to see them, and names a failed TLS handshake. Every finding goes to the one decision.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable

from mitmproxy import connection, ctx, http, tls
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy import server_hooks

from .. import compat
from ..compat import EarlyDetection
from ..core import findings as fnd
from ..core import records
from ..core.findings import Finding
from ..core.names import (
    DEFAULT_HOLD_TIMEOUT,
    OPT_EARLY,
    OPT_HOLD_TIMEOUT,
    OPT_UPGRADE,
    UPGRADE_METADATA_KEY,
    hostport,
)
from .decision import Decision
from .labels import Labels
from .options import BadOption, Options
from .responses import ErrorResponses, error_response
from .upgrade import Upgrade

log = logging.getLogger("esrs_fix")


class Detection(Options):
    """Declares esrs_early and esrs_hold_timeout; finds stray TLS in answers, errors and failed handshakes."""

    name = "esrs-fix.detection"
    OPTIONS = (OPT_EARLY, OPT_HOLD_TIMEOUT)

    def __init__(self, decision: Decision, labels: Labels, error_responses: ErrorResponses, upgrade: Upgrade) -> None:
        self.decision = decision
        self.labels = labels
        self.upgrade = upgrade
        # Synthetic responses made by the early detection, until their flow's response hook claims them.
        self._made: weakref.WeakKeyDictionary[http.Response, Finding] = weakref.WeakKeyDictionary()
        self.early = EarlyDetection(self._on_records, error_responses.claim)
        error_responses.early = self.early
        # Failed TLS handshakes with an upstream, by server connection id, for the flow's error hook.
        self._tls_failures: dict[str, Finding] = {}

    def declare(self, loader: Loader) -> None:
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

    def _configure(self, updated: set[str]) -> None:
        if OPT_HOLD_TIMEOUT in updated:
            hold = ctx.options.esrs_hold_timeout
            if not 1 <= hold <= 3600:
                raise BadOption(OPT_HOLD_TIMEOUT, f"{hold} is not a number of seconds from 1 to 3600")
            self.early.hold_timeout = hold
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

    # -- early path: the upstream's answer began with complete TLS records

    def _on_records(self, request: http.Request, head: bytes, complete: bool) -> http.Response | None:
        finding = fnd.from_response_head(head) if complete else fnd.from_incomplete_head(head)
        if finding is None:
            return None
        response = self.labels.labelled(error_response(finding), to=request)
        self._made[response] = finding
        if ctx.options.esrs_upgrade and request.scheme == "http" and finding.kind in fnd.UPGRADABLE:
            self.upgrade.suspect(request.host, request.port)  # a crowd's next requests wait for this flow's upgrade
        return response

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if flow.response is None or not flow.live or UPGRADE_METADATA_KEY in flow.metadata:
            return None  # history (a flow read back with -r keeps what it recorded), or esrs-fix's own TLS attempt
        if flow in self.decision.decided:
            return None  # a learned flow served over TLS, or one answered before it went out
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
        return self.decision.decide(flow, finding, may_replace=not flow.response.stream)

    # -- public-hook fallbacks

    def error(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if flow in self.decision.decided:
            return None  # a learned flow's error, or one answered before it went out
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
        return self.decision.decide(flow, finding, may_replace=may_replace, error_path=True)

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


def _proxy_key(client_id: str) -> str:
    """Where a failed TLS connection to the upstream proxy is kept: by the client connection that waited for it."""
    return f"{client_id} upstream proxy"
