"""The private names of mitmproxy's HTTP/1 layer that early detection and the hand-driven client need.

They are resolved together, once, so that a mitmproxy that has renamed or moved any of them is found out at
install (AttributeError/ImportError) and not in the middle of a flow.
"""

from __future__ import annotations

from typing import Any


class _Internals:
    """The private names, resolved once; building it raises AttributeError/ImportError if one is gone."""

    def __init__(self) -> None:
        from mitmproxy.proxy import commands, context, events
        from mitmproxy.proxy.layers.http import _base, _events, _http1

        self.Http1Client: Any = _http1.Http1Client
        self.Http1Server: Any = _http1.Http1Server
        self.original_read_headers = self.Http1Client.read_headers
        self.original_send = self.Http1Server.send
        for name in ("mark_done", "done"):
            getattr(self.Http1Client, name)
        self.ResponseProtocolError = _events.ResponseProtocolError
        self.ReceiveHttp = _base.ReceiveHttp
        self.RequestHeaders = _events.RequestHeaders
        self.RequestEndOfMessage = _events.RequestEndOfMessage
        self.ResponseHeaders = _events.ResponseHeaders
        self.ResponseData = _events.ResponseData
        self.ResponseEndOfMessage = _events.ResponseEndOfMessage
        self.CloseConnection = commands.CloseConnection
        self.RequestWakeup = commands.RequestWakeup
        self.SendData = commands.SendData
        self.Log = commands.Log
        self.Context = context.Context
        self.Start = events.Start
        self.DataReceived = events.DataReceived
        self.ConnectionClosed = events.ConnectionClosed
        self.Wakeup = events.Wakeup
