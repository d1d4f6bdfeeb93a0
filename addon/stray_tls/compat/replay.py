"""The same request sent again over TLS through mitmproxy's own client-replay machinery (`ReplayHandler`), so that
upstream mode, `ssl_insecure`, the trusted CAs and client certificates apply as for any other flow."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from mitmproxy import http
from mitmproxy.connection import ConnectionState, Server


class End(enum.Enum):
    """How a replay ended without an answer and without an error of mitmproxy's own."""

    #: The flow came through a listener other than the one mitmproxy's replay follows (the first --mode).
    NOT_RESENDABLE = enum.auto()
    #: A connection the replay opened was closed by the server, with no answer (`detail`: the connection's error).
    ENDED = enum.auto()
    #: The server answered, and an intercept held the answer past the deadline.
    HELD_ANSWER = enum.auto()
    #: No connection was asked for by the deadline: a hook held the request (`detail`: whose hook).
    HELD_REQUEST = enum.auto()
    #: The deadline came first.
    TIMED_OUT = enum.auto()


@dataclass(frozen=True)
class Unanswered:
    """What a replay that ended without an answer came to, for the product to put in words (`copy.error`)."""

    end: End
    timeout: float
    detail: str = ""


class TlsRoute(Protocol):
    """How a request goes over TLS (the product's `route.Route`): what to change in the request, and the SNI."""

    @property
    def sni(self) -> str: ...

    def prepare(self, request: http.Request) -> None: ...


async def resend_over_tls(
    flow: http.HTTPFlow,
    options: Any,
    timeout: float,
    marker_key: str,
    tls_route: TlsRoute,
    words: Callable[[Unanswered], str],
    ended_grace: float,
    on_copy: Callable[[http.HTTPFlow], None] | None = None,
) -> http.HTTPFlow:
    """Send a copy of `flow`'s request over TLS to the same host and port; returns the copy, answered or failed.

    mitmproxy's `ReplayHandler` (the engine of `replay.client`) opens the connection: in upstream mode it tunnels
    through the upstream proxy with CONNECT (and `upstream_auth` goes there); the TLS handshake goes through the
    `tls_start_server` hook like any other, so `ssl_insecure`, `ssl_verify_upstream_trusted_ca`/`_confdir` and client
    certificates apply. The copy is prepared by `tls_route` (the same decision as for learned requests: scheme, request
    target, no `Proxy-*` header), and SNI and the certificate check use `tls_route.sni`: mitmproxy's replay keeps the
    SNI of its server connection in every mode but upstream, where its HTTP layer sends the request's host, which is
    what the route says there too. Every addon sees the copy as a replayed flow; `metadata[marker_key]` holds the
    original flow's id so that esrs-fix can tell it apart.

    The copy is answered only when its response is complete (`handler.done`). `timeout` bounds the whole attempt:
    connect, CONNECT, handshake and answer, however slow each is. A server that closes the TLS connection without
    an answer and without an error hook, a route that differs from the flow's own (ReplayHandler follows the first
    `--mode` only), the timeout, or a hook that held the copy's request past it (another addon, an intercept) set
    `copy.error` instead, in the product's `words` for how it ended. A server connection closed with no answer and
    no error counts as ended after `ended_grace` seconds (mitmproxy's replay never completes when the server ends
    TLS after the handshake; its own error hook, when there is one, comes well within the grace).

    When this returns unanswered, the attempt is over for good: the client gets its answer from what this returns,
    so nothing of the copy may reach the server later. Its hooks run as tasks of their own that cancelling the
    replay does not stop (a held `request` hook would send the request when it returns), so the replay's layers
    get no further event, and the copy is killed (an intercepted one resumed first, so that its hook ends).
    """
    from mitmproxy import flow as mflow
    from mitmproxy.addons.clientplayback import ReplayHandler

    # A new flow with a copy of the request, not `flow.copy()`: that copies the whole flow's state (both connections,
    # the answer) and then the request and the answer once more, a tenth of the attempt's time on loopback, all of it
    # thrown away (the replay dials a server of its own and copies the client for its context). The client is the
    # flow's own, as it is for every flow of one client connection.
    copy = http.HTTPFlow(flow.client_conn, Server(address=flow.server_conn.address))
    copy.request = flow.request.copy()
    tls_route.prepare(copy.request)
    copy.metadata = {marker_key: flow.id}
    copy.is_replay = "request"
    if on_copy is not None:
        on_copy(copy)  # before any hook sees the copy: the caller knows its id from the start
    handler = ReplayHandler(copy, options)
    server = handler.layer.context.server
    server.sni = tls_route.sni
    # The copy's own record of its server is the one the replay dials, not the plaintext connection it was copied
    # from (closed, with that connection's timestamps): until the TLS connection is up, it has opened nothing.
    copy.server_conn = server
    mode = flow.client_conn.proxy_mode
    route = (mode.scheme, mode.address) if getattr(mode, "type_name", "") == "upstream" else None  # type: ignore[attr-defined]
    if server.via != route:
        copy.error = mflow.Error(words(Unanswered(End.NOT_RESENDABLE, timeout)))
        return copy
    close_gate = _gate(handler)
    replay = asyncio.ensure_future(handler.replay())
    ended, opened, intercepted = False, False, False
    error: mflow.Error | None = None
    try:
        ended, opened = await _until_answered(replay, handler, copy, timeout, ended_grace)
    finally:
        replay.cancel()
        if not handler.done.is_set():  # timed out, ended, or cancelled (shutdown): the attempt is over for good
            close_gate()
            for transport in list(handler.transports.values()):
                if transport.handler:
                    transport.handler.cancel()
            intercepted = copy.intercepted
            error = copy.error
            _kill(copy)
    if not handler.done.is_set():
        if error is None:
            error = mflow.Error(words(_unanswered(copy, timeout, ended, opened, intercepted)))
        copy.error = error
    return copy


def _unanswered(copy: http.HTTPFlow, timeout: float, ended: bool, opened: bool, intercepted: bool) -> Unanswered:
    """How an attempt that got no answer and no error of mitmproxy's own ended."""
    if ended:
        return Unanswered(End.ENDED, timeout, copy.server_conn.error or "closed by the server")
    if intercepted and copy.response is not None:
        # The server answered, and an intercept held the answer (the response hook) past the deadline: a hold on
        # this side, not the server's timeout. (Its connection may have come and gone between two polls.)
        return Unanswered(End.HELD_ANSWER, timeout)
    if not opened:
        # No connection was asked for by the deadline: a hook held the request (the request hook runs before the
        # replay connects); the server was never reached, and never will be.
        return Unanswered(End.HELD_REQUEST, timeout, "an intercept" if intercepted else "another addon's hook")
    return Unanswered(End.TIMED_OUT, timeout)


def strip_proxy_headers(request: http.Request) -> None:
    """Drop every header meant for a proxy (`Proxy-Authorization`, `Proxy-Connection`, any `Proxy-*`): a request
    that goes to the origin over TLS must not carry them (the proxy's credentials would reach the server)."""
    if not any(name[:6].lower() == b"proxy-" for name, _ in request.headers.fields):
        return  # the common case, in one scan of the raw names
    for name in {n for n in request.headers if n.lower().startswith("proxy-")}:
        del request.headers[name]


_POLL = 0.05


def _ended_unanswered(opened: set[Any], copy: http.HTTPFlow) -> bool:
    """A connection the replay opened has been closed by the server, and there is no answer and no error yet.

    Only connections the replay itself opened count (`opened`: every connection seen among its transports), and
    only once their TCP connect completed: a connect, a CONNECT or a handshake that is merely slow is not an end.
    """
    if copy.response is not None or copy.error is not None:
        return False
    # A connection is among the transports from the moment it is asked for, CLOSED until its TCP connect completes:
    # only one that did connect (timestamp_tcp_setup) and then lost its read side has ended.
    return any(conn.timestamp_tcp_setup is not None and not (conn.state & ConnectionState.CAN_READ) for conn in opened)


async def _until_answered(
    replay: asyncio.Future[None], handler: Any, copy: http.HTTPFlow, timeout: float, grace: float
) -> tuple[bool, bool]:
    """Wait for the replay to finish, for `timeout` at most, or until its connection ended without an answer (and
    `grace` seconds passed so, counted from the moment a connection the replay opened is seen closed).

    Returns whether it ended so, and whether the replay asked for any connection at all (none: a hook still held
    the request at the deadline)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    opened: set[Any] = set()
    ended_since: float | None = None
    while not replay.done() and loop.time() < deadline:
        await asyncio.wait({replay}, timeout=min(_POLL, max(0.0, deadline - loop.time())))
        opened.update(handler.transports)
        if not _ended_unanswered(opened, copy):
            ended_since = None
        elif ended_since is None:
            ended_since = loop.time()
        elif loop.time() - ended_since >= grace:
            return True, True
    opened.update(handler.transports)
    return False, bool(opened)


def _gate(handler: Any) -> Callable[[], None]:
    """Put a gate before the replay's layers (every event reaches them through `server_event`: the start, hook
    completions, connection data); returns what closes it. Once closed, the attempt takes no further step: a hook
    that held the request and returns later sends nothing."""
    forward = handler.server_event
    closed = False

    async def server_event(event: Any) -> None:
        if not closed:
            await forward(event)

    def close() -> None:
        nonlocal closed
        closed = True

    handler.server_event = server_event
    return close


def _kill(copy: http.HTTPFlow) -> None:
    """Mark the copy as killed for the UIs and the addons that still hold it (an intercepted copy is resumed first,
    so that the intercept's wait ends; the closed gate keeps it from going on)."""
    copy.resume()
    if copy.killable:
        copy.kill()
