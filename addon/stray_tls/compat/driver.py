"""A real `Http1Client` driven by hand, with events instead of sockets: early detection's behaviour check at
install, the tests and the bench all use it, and none of them needs a private name of mitmproxy's."""

from __future__ import annotations

from typing import Any

from mitmproxy import http

from .http1 import _Internals

Said = tuple[Any, ...]


class Http1ClientDriver:
    """A real `Http1Client` (wrapped or not) fed events by hand, with no sockets and no event loop.

    What it yields comes back in neutral words, so that callers need no private name:
    `("response", status)`, `("data", bytes)`, `("end",)`, `("error", message)`, `("close",)`,
    `("wakeup", seconds)`, `("send", bytes)`, `("log", message)`.
    """

    def __init__(self, internals: _Internals | None = None) -> None:
        from mitmproxy import connection, options
        from mitmproxy.test import tflow

        self._i = internals or _Internals()
        client = tflow.tclient_conn()
        self.server = tflow.tserver_conn()
        self.server.state = connection.ConnectionState.OPEN
        context = self._i.Context(client, options.Options())
        context.server = self.server
        self.layer = self._i.Http1Client(context)
        self._wakeups: list[Any] = []
        self.said: list[Said] = []
        self._feed(self._i.Start())

    def request(self, method: str = "GET", url: str = "http://esrs.example:443/") -> list[Said]:
        """Send a request head (and its end) upstream; returns what the client layer did."""
        request = http.Request.make(method, url)
        return self._feed(self._i.RequestHeaders(1, request, True)) + self._feed(self._i.RequestEndOfMessage(1))

    def receive(self, data: bytes) -> list[Said]:
        """Bytes from the upstream."""
        return self._feed(self._i.DataReceived(self.server, data))

    def wakeup(self) -> list[Said]:
        """The wakeup the layer asked for last is due."""
        if not self._wakeups:
            raise RuntimeError("no wakeup was requested")
        return self._feed(self._i.Wakeup(self._wakeups[-1]))

    def close(self) -> list[Said]:
        """The upstream closed its connection."""
        self.server.state = self.server.state.__class__.CLOSED
        return self._feed(self._i.ConnectionClosed(self.server))

    def _feed(self, event: Any) -> list[Said]:
        said = [self._word(command) for command in self.layer.handle_event(event)]
        self.said += said
        return said

    def _word(self, command: Any) -> Said:
        i = self._i
        if isinstance(command, i.ReceiveHttp):
            e = command.event
            if isinstance(e, i.ResponseHeaders):
                return ("response", e.response.status_code)
            if isinstance(e, i.ResponseData):
                return ("data", bytes(e.data))
            if isinstance(e, i.ResponseEndOfMessage):
                return ("end",)
            if isinstance(e, i.ResponseProtocolError):
                return ("error", e.message)
        if isinstance(command, i.CloseConnection):
            return ("close",)
        if isinstance(command, i.RequestWakeup):
            self._wakeups.append(command)
            return ("wakeup", command.delay)
        if isinstance(command, i.SendData):
            return ("send", bytes(command.data))
        if isinstance(command, i.Log):
            return ("log", command.message)
        return (type(command).__name__,)
