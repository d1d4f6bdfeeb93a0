"""Early detection: TLS records answered the moment they arrive, where stock mitmproxy waits for a blank line.

Stock mitmproxy waits for a blank line before it parses an HTTP/1 response head, and a TLS alert holds a single
`\\n`: an upstream that sends the alert and keeps its connection open makes the client wait for the idle timeout,
and no public hook fires. So `Http1Client.read_headers` is wrapped where the upstream's bytes arrive: the moment
complete TLS records are buffered, mitmproxy is handed the addon's response (which runs through the ordinary
response hooks) and the upstream connection is closed. The `Http1Server.send` wrapper covers flows that mitmproxy
fails before any response exists: when the addon has an answer ready for that request, it is written in place of
mitmproxy's own 502.

At install, a real `Http1Client` (wrapped) is driven with the field report's alert and with a clean head, and must
answer as expected; if a name is missing or mitmproxy behaves otherwise, early detection stays off and says so,
once, and the addon detects through public hooks alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import Any

from mitmproxy import http

from ..core import records as tls
from ..core.names import DEFAULT_HOLD_TIMEOUT
from . import versions
from .driver import Http1ClientDriver
from .http1 import _Internals

log = logging.getLogger(__name__)

#: Called with the request, the buffered bytes and whether they are complete TLS records (False: a record
#: began but did not complete within the hold time). Returns the response to hand on, or None to leave the
#: bytes to mitmproxy's own parser.
OnRecords = Callable[[http.Request, bytes, bool], "http.Response | None"]
#: Called with the request when mitmproxy is about to answer it with its own error page; returns the
#: response to send instead, or None for mitmproxy's error page.
ErrorAnswer = Callable[[http.Request], "http.Response | None"]

_HOLDING = "_esrs_fix_holding"  # set on an Http1Client while it waits for a record to complete
_WAKEUP = "_esrs_fix_wakeup"  # the RequestWakeup that bounds that wait

#: The field report's alert: what the behaviour check feeds a real Http1Client at install.
_PROBE_ALERT = tls.encode_alert(2, 10, 0x0301)
_PROBE_STATUS = 299


class EarlyDetection:
    """Installs and removes the wrappers around `Http1Client.read_headers` and `Http1Server.send`."""

    def __init__(self, on_records: OnRecords, error_answer: ErrorAnswer) -> None:
        self.on_records = on_records
        self.error_answer = error_answer
        #: Seconds to wait for a record that has begun to complete before answering with what arrived.
        self.hold_timeout: float = DEFAULT_HOLD_TIMEOUT
        self.active = False
        self.reason = ""
        self._internals: _Internals | None = None
        self._failed_kinds: set[str] = set()
        #: While the behaviour check runs: the exceptions it met, instead of error lines in the log.
        self._probe_failures: list[Exception] | None = None

    def install(self) -> bool:
        """Wrap the HTTP/1 client; False (with `reason` set) when this mitmproxy does not fit."""
        if self.active:
            return True
        release = versions.mitmproxy_version()
        if versions.mitmproxy_major() not in versions.SUPPORTED_MAJORS:
            self.reason = f"mitmproxy {release} is not one of the tested majors {versions.SUPPORTED_MAJORS}"
            return False
        try:
            internals = _Internals()
        except (ImportError, AttributeError) as e:
            self.reason = f"mitmproxy {release} lacks an internal name early detection needs ({e})"
            return False
        if getattr(internals.original_read_headers, "__esrs_fix__", False):
            # another instance (an earlier load of the script) still has it wrapped
            self.reason = "early detection is already installed by another esrs-fix instance"
            return False
        self._internals = internals
        internals.Http1Client.read_headers = self._make_wrapper(internals)
        internals.Http1Server.send = self._make_send_wrapper(internals)
        self.active = True
        problem = self._behaviour_problem(internals)
        if problem:
            self.uninstall()
            self.reason = f"mitmproxy {release} does not behave as early detection expects ({problem})"
            return False
        return True

    def uninstall(self) -> None:
        if self.active and self._internals is not None:
            self._internals.Http1Client.read_headers = self._internals.original_read_headers
            self._internals.Http1Server.send = self._internals.original_send
        self.active = False

    def _behaviour_problem(self, i: _Internals) -> str:
        """Drive a real Http1Client with the alert and with a clean head; "" when both give what is expected."""
        probe = http.Response.make(_PROBE_STATUS, b"probe")
        on_records = self.on_records
        self.on_records = lambda request, head, complete: probe if head == _PROBE_ALERT and complete else None
        self._probe_failures = []
        try:
            driver = Http1ClientDriver(i)
            driver.request()
            stray = driver.receive(_PROBE_ALERT)
            clean_driver = Http1ClientDriver(i)
            clean_driver.request()
            clean = clean_driver.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except Exception as e:  # any surprise in mitmproxy's internals means: stay off
            return f"{type(e).__name__}: {e}"
        finally:
            self.on_records = on_records
            failures, self._probe_failures = self._probe_failures, None
        if failures:
            return f"{type(failures[0]).__name__}: {failures[0]}"
        if stray != [("response", _PROBE_STATUS), ("data", b"probe"), ("end",), ("close",)]:
            return f"the alert gave {stray}"
        if clean != [("response", 200), ("data", b"ok"), ("end",)]:
            return f"a clean response gave {clean}"
        return ""

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
        if self._probe_failures is not None:
            self._probe_failures.append(e)
            return
        kind = type(e).__name__
        if kind not in self._failed_kinds:
            self._failed_kinds.add(kind)
            log.error("esrs-fix: early detection failed (%s: %s); this flow is left to mitmproxy", kind, e)
