"""Everything that depends on mitmproxy's version or private names: the one place that names them.

- the major-version check, and what differs between mitmproxy's versions (`mitmweb_wants_a_password`, asked of mitmweb);
- mitmproxy's helpers outside its addon API (`mitmproxy.utils.human.parse_size` for `body_size_limit`);
- the texts of mitmproxy's own error messages (`unexpected server response: b'...'`, `Bad HTTP response line`,
  `server closed connection`, `cannot agree on a TLS version`, `does not speak TLS`, `Certificate verify failed`),
  turned into findings; each format is pinned by a test on both majors;
- the deferred `--set` values of a script's options (`options.deferred`, and its private `.val`);
- the content-view API (11: `View`; 12: `Contentview`);
- early detection: wrappers of `Http1Client.read_headers` and `Http1Server.send`, with a behaviour check at
  install that drives a real `Http1Client` with events (no sockets) and requires the expected answer;
- `Http1ClientDriver`: that same event-driven harness, for the tests and the bench;
- `resend_over_tls`: the same request sent again over TLS through mitmproxy's own client-replay machinery, so
  that upstream mode, `ssl_insecure`, the trusted CAs and client certificates apply as for any other flow.

Stock mitmproxy waits for a blank line before it parses an HTTP/1 response head, and a TLS alert holds a single
`\\n`: an upstream that sends the alert and keeps its connection open makes the client wait for the idle timeout,
and no public hook fires. So `read_headers` is wrapped where the upstream's bytes arrive: the moment complete TLS
records are buffered, mitmproxy is handed the addon's response (which runs through the ordinary response hooks)
and the upstream connection is closed. The `send` wrapper covers flows that mitmproxy fails before any response
exists: when the addon has an answer ready for that request, it is written in place of mitmproxy's own 502.

If a name is missing, or mitmproxy does not behave as expected, early detection stays off and says so once; the
addon then detects through public hooks alone.
"""

from __future__ import annotations

import ast
import asyncio
import enum
import logging
import re
from collections.abc import Callable, Generator
from typing import Any

from mitmproxy import http, version
from mitmproxy.connection import ConnectionState

from . import findings
from . import records as tls
from .findings import Finding
from .names import DEFAULT_HOLD_TIMEOUT

log = logging.getLogger(__name__)

#: mitmproxy majors whose internals this module was written against and tested with.
SUPPORTED_MAJORS = (11, 12)


def mitmproxy_version() -> str:
    """mitmproxy's version string, for messages; decisions on it are taken in this module."""
    return version.VERSION


def mitmproxy_major() -> int:
    try:
        return int(version.VERSION.split(".")[0])
    except ValueError:
        return 0


def mitmweb_wants_a_password() -> bool:
    """Whether mitmweb guards its UI with a token that `web_password` sets: asked of mitmweb's own addons, not of
    the version (the token came in 11.1.2, with CVE-2025-23217's fix, and is in every 12; 11.0 has none)."""
    from mitmproxy.tools.web import webaddons

    registered: set[str] = set()

    class Loader:  # records the options each addon of mitmweb's registers, and ignores anything else it asks
        def add_option(self, name: str, *args: Any, **kwargs: Any) -> None:
            registered.add(name)

        def __getattr__(self, name: str) -> Any:
            return lambda *args, **kwargs: None

    for addon in vars(webaddons).values():
        if (
            isinstance(addon, type)
            and addon.__module__ == webaddons.__name__
            and callable(getattr(addon, "load", None))
        ):
            addon().load(Loader())
    return "web_password" in registered


def body_size_limit(options: Any) -> int | None:
    """mitmproxy's `body_size_limit` option in bytes (`"100k"` is 102400), or None when there is no limit."""
    from mitmproxy.utils import human

    return human.parse_size(options.body_size_limit) if options.body_size_limit else None


# -- mitmproxy's own error messages ------------------------------------------------------------------------------

#: Http1Client, when the upstream closed after bytes that were no HTTP head.
_UNEXPECTED = re.compile(r"unexpected server response: (b(['\"]).*\2)\s*$", re.S)
#: Http1Client, when a line ending arrived and the bytes before it were no status line.
_BAD_LINE = re.compile(r"Bad HTTP response line: (b(['\"]).*\2)", re.S)
#: Http1Client, when the upstream closed without a byte.
SERVER_CLOSED = "server closed connection"
#: The TLS layer's rewording of OpenSSL's "tlsv1 alert protocol version".
_NO_TLS_VERSION = "cannot agree on a TLS version"
#: The TLS layer's rewording of OpenSSL's "wrong version number" when the upstream answered in ASCII.
_NOT_TLS = "does not speak TLS"
#: The TLS layer's message for a certificate that failed verification, with OpenSSL's reason after the colon.
_VERIFY_FAILED = re.compile(r"Certificate verify failed: (.+)", re.S)


def _bytes_literal(text: str) -> bytes | None:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    return value if isinstance(value, bytes) else None


def finding_from_error(message: str) -> Finding | None:
    """A finding from mitmproxy's `flow.error.msg`, for when early detection was not there to see the bytes.

    Two forms carry the bytes: `unexpected server response: b'...'` (the upstream closed), and `Cannot parse
    HTTP response: Bad HTTP response line: b'...'`, where the HTTP parser has eaten the final line ending, which
    may have been the alert's own 0x0a: so both endings are tried.
    """
    if m := _UNEXPECTED.search(message):
        data = _bytes_literal(m.group(1))
        if data is not None:
            return findings.from_response_head(data) or findings.from_incomplete_head(data)
    if m := _BAD_LINE.search(message):
        data = _bytes_literal(m.group(1))
        if data is not None:
            for ending in (b"", b"\n", b"\r\n"):
                decoded = tls.decode(data + ending)
                if isinstance(decoded, tls.Records) and not decoded.rest:
                    return findings.from_response_head(data + ending)
            return findings.from_response_head(data)
    if message.strip() == SERVER_CLOSED:
        return findings.silent_close()
    return finding_from_tls_error(message)


def finding_from_tls_error(message: str) -> Finding | None:
    """A finding from a failed TLS handshake with the upstream, in mitmproxy's words or OpenSSL's."""
    if _NOT_TLS in message:
        return findings.upstream_not_tls(message.strip())
    if _NO_TLS_VERSION in message:
        return findings.tls_alert(70, message.strip())
    return findings.from_tls_error(message)


def certificate_problem(message: str) -> str | None:
    """OpenSSL's reason when mitmproxy refused the upstream's certificate (`self-signed certificate`), else None."""
    if m := _VERIFY_FAILED.search(message):
        return m.group(1).strip()
    return None


class AttemptCause(enum.StrEnum):
    """Why a TLS attempt (esrs_upgrade) failed, read from mitmproxy's words for it."""

    CERTIFICATE = "certificate"
    TLS_VERSION = "tls_version"
    TIMEOUT = "timeout"
    CLOSED = "closed"
    RESET = "reset"
    ROUTE = "route"
    OTHER = "other"


#: OpenSSL's and the TLS layer's words for "no TLS version in common", whichever side found out.
_VERSION_WORDS = ("cannot agree on a tls version", "unsupported protocol", "alert protocol version", "no protocols")
#: Connecting, or the upstream proxy's CONNECT, failed: the TLS attempt never reached the server.
_ROUTE_WORDS = (
    "error establishing server connection",
    "connect call failed",
    "connection refused",
    "name or service not known",
    "no address associated",
    "temporary failure in name resolution",
    "network is unreachable",
    "no route to host",
    "refused http connect",
    "upstream proxy",
    "not sent again",
)


def attempt_cause(message: str) -> tuple[AttemptCause, str]:
    """What a failed TLS attempt's error message (`flow.error.msg`) says failed, and the detail worth quoting.

    The certificate's detail is OpenSSL's reason alone (`self-signed certificate`); otherwise the message itself.
    """
    if problem := certificate_problem(message):
        return AttemptCause.CERTIFICATE, problem
    lowered = message.lower()
    if any(word in lowered for word in _VERSION_WORDS):
        return AttemptCause.TLS_VERSION, message
    if message.startswith(NO_ANSWER_WITHIN):
        return AttemptCause.TIMEOUT, message
    if "reset by peer" in lowered or "connection reset" in lowered:
        return AttemptCause.RESET, message
    if any(word in lowered for word in _ROUTE_WORDS):
        return AttemptCause.ROUTE, message
    if message.startswith(ENDED_UNANSWERED) or "closed" in lowered or "unexpected eof" in lowered:
        return AttemptCause.CLOSED, message
    return AttemptCause.OTHER, message


# -- options ------------------------------------------------------------------------------------------------------


def deferred_values(options: Any, name: str) -> list[str] | None:
    """The `--set name=...` values given for a script's option before the script loaded, or None.

    mitmproxy parses them only after the script has loaded, and drops a value it cannot parse, running on with
    the default: reading them here lets the addon refuse a bad value, naming the option.
    """
    pending = getattr(options, "deferred", {}).get(name)
    if pending is None:
        return None
    values = getattr(pending, "val", pending)
    return [str(v) for v in (values if isinstance(values, list) else [values])]


# -- content views ------------------------------------------------------------------------------------------------

Render = Callable[[bytes, Any, Any], "str | None"]
Priority = Callable[[bytes, Any, Any], float]


def register_view(name: str, render: Render, priority: Priority) -> Any:
    """Add a content view named `name` (11: `View`, replacing one of the same name; 12: `Contentview`)."""
    from mitmproxy import contentviews

    if hasattr(contentviews, "Contentview"):  # 12

        class View12(contentviews.Contentview):  # type: ignore[misc,name-defined,unused-ignore]
            @property
            def name(self) -> str:
                return name

            def prettify(self, data: bytes, metadata: Any) -> str:
                rendered = render(data, metadata.flow, metadata.http_message)
                if rendered is None:
                    raise ValueError(f"not {name}")
                return rendered

            def render_priority(self, data: bytes, metadata: Any) -> float:
                return priority(data, metadata.flow, metadata.http_message)

        view: Any = View12()
    else:  # 11

        class View11(contentviews.View):  # type: ignore[misc,unused-ignore]
            def __call__(self, data: bytes, *, flow: Any = None, http_message: Any = None, **unknown: Any) -> Any:
                rendered = render(data, flow, http_message)
                if rendered is None:
                    return f"{name}: not applicable", iter([[("text", tls.hexdump(data, 64))]])
                return name, iter([[("text", line)] for line in rendered.splitlines()])

            def render_priority(
                self, data: bytes, *, flow: Any = None, http_message: Any = None, **unknown: Any
            ) -> float:
                return priority(data, flow, http_message)

        View11.name = name
        view = View11()
        for existing in list(getattr(contentviews, "views", [])):  # 11 refuses a name twice (a script reload)
            if existing.name == name:
                contentviews.remove(existing)
    contentviews.add(view)
    return view


def unregister_view(view: Any) -> None:
    """Remove a view added by `register_view` (12 has no removal and replaces a view of the same name)."""
    from mitmproxy import contentviews

    if not hasattr(contentviews, "Contentview") and view in getattr(contentviews, "views", []):
        contentviews.remove(view)


# -- early detection ----------------------------------------------------------------------------------------------

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
        problem = self._behaviour_problem(internals)
        if problem:
            self.uninstall()
            self.reason = f"mitmproxy {version.VERSION} does not behave as early detection expects ({problem})"
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


# -- an Http1Client driven by hand ---------------------------------------------------------------------------------

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


# -- the same request over TLS ---------------------------------------------------------------------------------------


async def resend_over_tls(
    flow: http.HTTPFlow, options: Any, timeout: float, marker_key: str, server_name: str
) -> http.HTTPFlow:
    """Send a copy of `flow`'s request over TLS to the same host and port; returns the copy, answered or failed.

    mitmproxy's `ReplayHandler` (the engine of `replay.client`) opens the connection: in upstream mode it tunnels
    through the upstream proxy with CONNECT (and `upstream_auth` goes there); the TLS handshake goes through the
    `tls_start_server` hook like any other, so `ssl_insecure`, `ssl_verify_upstream_trusted_ca`/`_confdir` and client
    certificates apply. SNI and the certificate check use `server_name` (the caller's choice: the name mitmproxy
    itself uses when the same request goes out as https://, so that the heal and the learned path verify one name).
    Every addon sees the copy as a replayed flow; `metadata[marker_key]` holds the original flow's id so that
    esrs-fix can tell it apart. The copy carries no `Proxy-*` header: those were meant for a proxy, never the origin.

    The copy is answered only when its response is complete (`handler.done`). `timeout` bounds the whole attempt:
    connect, CONNECT, handshake and answer, however slow each is. A server that closes the TLS connection without
    an answer and without an error hook, a route that differs from the flow's own (ReplayHandler follows the first
    `--mode` only), or the timeout set `copy.error` instead.
    """
    from mitmproxy import flow as mflow
    from mitmproxy.addons.clientplayback import ReplayHandler

    copy = flow.copy()
    copy.request.scheme = "https"
    if copy.request.http_version.startswith("HTTP/1"):
        copy.request.authority = ""  # origin-form inside the TLS connection, as for mitmproxy's own https flows
    strip_proxy_headers(copy.request)
    copy.response = None
    copy.error = None
    copy.marked = ""
    copy.comment = ""
    copy.metadata = {marker_key: flow.id}
    copy.is_replay = "request"
    handler = ReplayHandler(copy, options)
    server = handler.layer.context.server
    server.sni = server_name
    # The copy's own record of its server is the one the replay dials, not the plaintext connection it was copied
    # from (closed, with that connection's timestamps): until the TLS connection is up, it has opened nothing.
    copy.server_conn = server
    mode = flow.client_conn.proxy_mode
    route = (mode.scheme, mode.address) if getattr(mode, "type_name", "") == "upstream" else None  # type: ignore[attr-defined]
    if server.via != route:
        copy.error = mflow.Error("not sent again: mitmproxy's replay would take another route than this flow's mode")
        return copy
    replay = asyncio.ensure_future(handler.replay())
    ended = False
    try:
        ended = await _until_answered(replay, handler, copy, timeout)
    finally:
        replay.cancel()
        if not handler.done.is_set():  # timed out, or cancelled (shutdown): end the connection it opened
            for transport in list(handler.transports.values()):
                if transport.handler:
                    transport.handler.cancel()
    if copy.error is None and not handler.done.is_set():
        copy.error = mflow.Error(
            f"{ENDED_UNANSWERED} ({copy.server_conn.error or 'closed by the server'})"
            if ended
            else f"{NO_ANSWER_WITHIN} {timeout:g} s"
        )
    return copy


def strip_proxy_headers(request: http.Request) -> None:
    """Drop every header meant for a proxy (`Proxy-Authorization`, `Proxy-Connection`, any `Proxy-*`): a request
    that goes to the origin over TLS must not carry them (the proxy's credentials would reach the server)."""
    for name in {n for n in request.headers if n.lower().startswith("proxy-")}:
        del request.headers[name]


#: The words of a TLS attempt that ended without an answer, and of one that timed out (both set by resend_over_tls).
ENDED_UNANSWERED = "the TLS connection ended without an answer"
NO_ANSWER_WITHIN = "no complete answer over TLS within"

#: How long the replay's server connection may be closed, with no answer and no error, before the attempt counts as
#: failed: mitmproxy's replay never completes when the server ends TLS after the handshake (TLS 1.3's
#: certificate_required alert), and its own error hook, when there is one, comes well within this. It counts from
#: the moment a connection the replay opened is seen closed, never from the start of the attempt.
_ENDED_GRACE = 0.5
_POLL = 0.05


def _ended_unanswered(opened: set[Any], copy: http.HTTPFlow) -> bool:
    """A connection the replay opened has been closed by the server, and there is no answer and no error yet.

    Only connections the replay itself opened count (`opened`: every connection seen among its transports, which
    holds a connection from the moment it is up until it is closed): a connect, a CONNECT or a handshake that is
    merely slow is not an end.
    """
    if copy.response is not None or copy.error is not None:
        return False
    return any(not (conn.state & ConnectionState.CAN_READ) for conn in opened)


async def _until_answered(replay: asyncio.Future[None], handler: Any, copy: http.HTTPFlow, timeout: float) -> bool:
    """Wait for the replay to finish, for `timeout` at most, or until its connection ended without an answer;
    True in that last case."""
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
        elif loop.time() - ended_since >= _ENDED_GRACE:
            return True
    return False
