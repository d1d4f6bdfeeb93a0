"""Early detection: the one module that touches mitmproxy internals.

Stock mitmproxy waits for a blank line before it parses an HTTP/1 response head, and a TLS alert holds a
single `\\n`: an upstream that sends the alert and keeps its connection open makes the client wait for the
idle timeout.  Public hooks cannot help there (no hook fires, and a response set in `error` is not what the
client receives).  So this module wraps `Http1Client.read_headers`, the place where the upstream's bytes
arrive, and reacts the moment complete TLS records are buffered: it closes the upstream connection and
hands mitmproxy a synthetic response, which then runs through the ordinary response hooks.

A second, smaller wrap covers the flows that mitmproxy fails before any response exists (the upstream's
TLS handshake ended in an alert): when the addon has an answer ready for that request, `Http1Server.send`
writes it to the client in place of mitmproxy's own 502, and the client connection stays usable.

Every private name it needs is checked at `install()`.  If one is missing (a mitmproxy release that moved
things), it stays off and says so once; the addon then detects through public hooks alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import Any

from mitmproxy import http, version

from . import records as tls

log = logging.getLogger(__name__)

#: mitmproxy majors whose internals this module was written against and tested with.
SUPPORTED_MAJORS = (11, 12)

#: Called with the request, the buffered bytes and whether they are complete TLS records (False: a record
#: began but did not complete within the hold time). Returns the response to hand on, or None to leave the
#: bytes to mitmproxy's own parser.
OnRecords = Callable[[http.Request, bytes, bool], "http.Response | None"]
#: Called with the request when mitmproxy is about to answer it with its own error page; returns the
#: response to send instead, or None for mitmproxy's error page.
ErrorAnswer = Callable[[http.Request], "http.Response | None"]

_HOLDING = "_esrs_fix_holding"  # set on an Http1Client while it waits for a record to complete
_WAKEUP = "_esrs_fix_wakeup"  # the RequestWakeup that bounds that wait


class _Internals:
    """The private names, resolved once; building it raises AttributeError/ImportError if one is gone."""

    def __init__(self) -> None:
        from mitmproxy.proxy import commands, events
        from mitmproxy.proxy.layers.http import _base, _events, _http1

        self.Http1Client: Any = _http1.Http1Client
        self.Http1Server: Any = _http1.Http1Server
        self.original_read_headers = self.Http1Client.read_headers
        self.original_send = self.Http1Server.send
        for name in ("mark_done", "done"):
            getattr(self.Http1Client, name)
        self.ResponseProtocolError = _events.ResponseProtocolError
        self.ReceiveHttp = _base.ReceiveHttp
        self.ResponseHeaders = _events.ResponseHeaders
        self.ResponseData = _events.ResponseData
        self.ResponseEndOfMessage = _events.ResponseEndOfMessage
        self.CloseConnection = commands.CloseConnection
        self.RequestWakeup = commands.RequestWakeup
        self.DataReceived = events.DataReceived
        self.Wakeup = events.Wakeup


def mitmproxy_major() -> int:
    try:
        return int(version.VERSION.split(".")[0])
    except ValueError:
        return 0


class EarlyDetection:
    """Installs and removes the wrappers around `Http1Client.read_headers` and `Http1Server.send`."""

    def __init__(self, on_records: OnRecords, error_answer: ErrorAnswer) -> None:
        self.on_records = on_records
        self.error_answer = error_answer
        #: Seconds to wait for a record that has begun to complete before answering with what arrived.
        self.hold_timeout = 5.0
        self.active = False
        self.reason = ""
        self._internals: _Internals | None = None
        self._failed_kinds: set[str] = set()

    def install(self) -> bool:
        """Wrap the HTTP/1 client; False (with `reason` set) when this mitmproxy does not fit."""
        if self.active:
            return True
        major = mitmproxy_major()
        if major not in SUPPORTED_MAJORS:
            self.reason = f"mitmproxy {version.VERSION} is not one of the tested majors {SUPPORTED_MAJORS}"
            return False
        try:
            internals = _Internals()
        except (ImportError, AttributeError) as e:
            self.reason = f"mitmproxy {version.VERSION} lacks an internal name early detection needs ({e})"
            return False
        if getattr(internals.original_read_headers, "__esrs_fix__", False):
            # another instance (an earlier load of the script) still has it wrapped
            self.reason = "early detection is already installed by another esrs-fix instance"
            return False
        self._internals = internals
        internals.Http1Client.read_headers = self._make_wrapper(internals)
        internals.Http1Server.send = self._make_send_wrapper(internals)
        self.active = True
        return True

    def uninstall(self) -> None:
        if self.active and self._internals is not None:
            self._internals.Http1Client.read_headers = self._internals.original_read_headers
            self._internals.Http1Server.send = self._internals.original_send
        self.active = False

    def _make_wrapper(self, i: _Internals) -> Callable[..., Generator[Any, Any, None]]:
        original = i.original_read_headers
        DataReceived = i.DataReceived
        Wakeup = i.Wakeup
        could_start_tls = tls.could_start_tls
        detector = self

        def read_headers(conn: Any, event: Any) -> Generator[Any, Any, None]:
            # Hot path: one type check, one length comparison and one byte test per response head.
            if type(event) is DataReceived and conn.request is not None:
                data = event.data
                if len(conn.buf) == len(data):  # the first bytes of this response
                    if not data or not could_start_tls(data[0]):
                        return (yield from original(conn, event))
                elif not getattr(conn, _HOLDING, False):
                    return (yield from original(conn, event))
                try:
                    answered = yield from detector._on_data(i, conn)
                except Exception as e:  # never break the proxy: fall back to stock behaviour
                    detector._report_failure(e)
                    setattr(conn, _HOLDING, False)
                    answered = False
                if answered:
                    return
                if getattr(conn, _HOLDING, False):
                    return  # a record has begun: wait for it rather than let the HTTP parser guess
            elif type(event) is Wakeup:
                # Only this wrapper asks for wakeups here; stock read_headers would reject the event.
                if getattr(conn, _HOLDING, False) and event.command is getattr(conn, _WAKEUP, None):
                    try:
                        yield from detector._answer(i, conn, complete=False)
                    except Exception as e:
                        detector._report_failure(e)
                return
            elif getattr(conn, _HOLDING, False):
                setattr(conn, _HOLDING, False)  # closed mid-record: stock handling reports the bytes
            return (yield from original(conn, event))

        read_headers.__esrs_fix__ = True  # type: ignore[attr-defined]
        return read_headers

    def _make_send_wrapper(self, i: _Internals) -> Callable[..., Generator[Any, Any, None]]:
        original = i.original_send
        ResponseProtocolError = i.ResponseProtocolError
        detector = self

        def send(conn: Any, event: Any) -> Generator[Any, Any, None]:
            # Only errors reach the check below; every ordinary event costs one type comparison.
            if type(event) is ResponseProtocolError and conn.response is None and conn.request is not None:
                try:
                    response = detector.error_answer(conn.request)
                except Exception as e:
                    detector._report_failure(e)
                    response = None
                if response is not None:
                    sid = event.stream_id
                    yield from original(conn, i.ResponseHeaders(sid, response, False))
                    if response.raw_content:
                        yield from original(conn, i.ResponseData(sid, response.raw_content))
                    yield from original(conn, i.ResponseEndOfMessage(sid))
                    return
            yield from original(conn, event)

        send.__esrs_fix__ = True  # type: ignore[attr-defined]
        return send

    def _on_data(self, i: _Internals, conn: Any) -> Generator[Any, Any, bool]:
        """Decide on the buffered head: True when it was answered here."""
        decoded = tls.decode(bytes(conn.buf))
        if isinstance(decoded, tls.NeedMore):
            if not getattr(conn, _HOLDING, False):
                setattr(conn, _HOLDING, True)
                wakeup = i.RequestWakeup(self.hold_timeout)
                setattr(conn, _WAKEUP, wakeup)
                yield wakeup
            return False
        setattr(conn, _HOLDING, False)
        if isinstance(decoded, tls.NotTLS):
            return False
        return (yield from self._answer(i, conn, complete=True))

    def _answer(self, i: _Internals, conn: Any, complete: bool) -> Generator[Any, Any, bool]:
        """Hand mitmproxy the addon's response in place of the upstream's, and close the upstream."""
        setattr(conn, _HOLDING, False)
        response = self.on_records(conn.request, bytes(conn.buf), complete)
        if response is None:
            return False
        conn.buf.maybe_extract_at_most(len(conn.buf))
        conn.response = response
        conn.response_done = True
        conn.state = conn.done
        yield i.ReceiveHttp(i.ResponseHeaders(conn.stream_id, response, False))
        if response.raw_content:
            yield i.ReceiveHttp(i.ResponseData(conn.stream_id, response.raw_content))
        yield i.ReceiveHttp(i.ResponseEndOfMessage(conn.stream_id))
        # The upstream spoke TLS at us: nothing more on this connection can be HTTP. Closed after the answer
        # is on its way, so that the client does not wait for the close.
        yield i.CloseConnection(conn.conn)
        return True

    def _report_failure(self, e: Exception) -> None:
        kind = type(e).__name__
        if kind not in self._failed_kinds:
            self._failed_kinds.add(kind)
            log.error("esrs-fix: early detection failed (%s: %s); this flow is left to mitmproxy", kind, e)
