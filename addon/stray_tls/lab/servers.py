"""Stand-ins for the field, on loopback: an ESRS-like TLS server, scripted upstreams, and the faulty proxy.

They are also the test fixtures and the benchmarks' peers, so that every consumer exercises the same
peers.  Threads, not asyncio: each server owns its listener and connections and closes all of them in
`stop()`, which the lab and the tests call in `finally` blocks.  No server blocks longer than its `timeout`.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import ipaddress
import itertools
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core import records

ALERT_TLS10 = records.encode_alert(2, 10, 0x0301)  # 15 03 01 00 02 02 0a, as in the field report


def make_certificate(directory: Path, common_name: str = "esrs.lab") -> tuple[Path, Path]:
    """A throw-away self-signed certificate and key (PEM) for loopback TLS servers."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(common_name),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "esrs-lab-cert.pem", directory / "esrs-lab-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


_handed_out: set[tuple[str, int]] = set()
_handed_out_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago, for programs that must be told their port (mitmdump).

    The kernel may give the same port to two binds in a row once the first is closed, and one mitmdump
    with two modes on one port refuses to start; so a port is handed out once per process, never twice.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with _handed_out_lock:
        for _ in range(256):
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((host, 0))
                port = int(s.getsockname()[1])
            if (host, port) not in _handed_out:
                _handed_out.add((host, port))
                return port
    raise OSError(f"no free port on {host} that was not handed out before")


def read_head(conn: socket.socket, limit: int = 65536) -> bytes:
    """Read up to and including the blank line that ends an HTTP head (or until close / limit)."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < limit:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


class TCPServer:
    """A loopback listener that hands each connection to `handle` in its own daemon thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, timeout: float = 10.0) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.timeout = timeout
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(128)
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, name=f"{type(self).__name__}:{self.port}", daemon=True)

    def start(self) -> TCPServer:
        self._thread.start()
        return self

    def __enter__(self) -> TCPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            conn.settimeout(self.timeout)
            with self._lock:
                self._conns.add(conn)
                self.connections += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self.handle(conn)
        except (OSError, ssl.SSLError):
            pass
        finally:
            self._close(conn)

    def _close(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.discard(conn)
        with contextlib.suppress(OSError):
            conn.close()

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() below: close() alone does not (Linux)
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                c.close()
        self._thread.join(timeout=2)


class Plaintext(enum.StrEnum):
    """What the stand-in server does with a plaintext request on its TLS port."""

    ALERT = "alert"  # the record, then close (Java TLS servers, as in the field report)
    ALERT_KEEP_OPEN = "alert-keep-open"  # the record, then nothing: the connection stays open
    ALERT_SPLIT = "alert-split"  # the record in single-byte writes, then close
    SILENT_CLOSE = "silent-close"  # close without a byte (OpenSSL 3)
    RESET = "reset"  # RST
    NGINX_400 = "nginx-400"  # nginx's HTML page


NGINX_400_BODY = (
    b"<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port</title></head>\r\n<body>\r\n"
    b"<center><h1>400 Bad Request</h1></center>\r\n<center>The plain HTTP request was sent to HTTPS port</center>\r\n"
    b"<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


@dataclass
class EsrsBehaviour:
    plaintext: Plaintext = Plaintext.ALERT
    alert: bytes = ALERT_TLS10
    tls10_only: bool = False
    split_delay: float = 0.01
    keep_open_for: float = 30.0


OK_BODY = b"ESRS stand-in: OK\n"


class EsrsServer(TCPServer):
    """One port of the stand-in ESRS server: TLS with `GET /` -> 200; plaintext gets `behaviour.plaintext`."""

    def __init__(self, cert: tuple[Path, Path], behaviour: EsrsBehaviour | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.behaviour = behaviour or EsrsBehaviour()
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert[0]), str(cert[1]))
        if self.behaviour.tls10_only:
            self.context.set_ciphers("DEFAULT:@SECLEVEL=0")
            self.context.minimum_version = ssl.TLSVersion.TLSv1
            self.context.maximum_version = ssl.TLSVersion.TLSv1
        self.plaintext_requests = 0
        self.tls_requests = 0

    def handle(self, conn: socket.socket) -> None:
        first = conn.recv(1, socket.MSG_PEEK)
        if not first:
            return
        if first[0] == 0x16:  # a TLS ClientHello
            with self.context.wrap_socket(conn, server_side=True) as tls_conn:
                head = read_head(tls_conn)
                if head:
                    self.tls_requests += 1
                    tls_conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                        b"Connection: close\r\n\r\n%s" % (len(OK_BODY), OK_BODY)
                    )
            return
        read_head(conn)
        self.plaintext_requests += 1
        answer_plaintext(conn, self.behaviour)


class TarpitServer(TCPServer):
    """A TLS port that answers plaintext with the alert, but takes a TLS connection and never answers it: every
    TLS attempt to it lasts its whole time limit (a hostile or broken target). Counts the ClientHellos it got."""

    def __init__(self, hold: float = 60.0, **kw: Any) -> None:
        super().__init__(timeout=hold, **kw)
        self.plaintext_requests = 0
        self.hellos = 0

    def handle(self, conn: socket.socket) -> None:
        first = conn.recv(1, socket.MSG_PEEK)
        if not first:
            return
        if first[0] == 0x16:
            with self._lock:
                self.hellos += 1
            while conn.recv(4096):  # read and never answer, until the client gives up (or `hold` runs out)
                pass
            return
        read_head(conn)
        with self._lock:
            self.plaintext_requests += 1
        conn.sendall(ALERT_TLS10)


def answer_plaintext(conn: socket.socket, b: EsrsBehaviour) -> None:
    """What a TLS port does with a plaintext request, by behaviour."""
    if b.plaintext is Plaintext.ALERT:
        conn.sendall(b.alert)
    elif b.plaintext is Plaintext.ALERT_KEEP_OPEN:
        conn.sendall(b.alert)
        _wait_for_close(conn, b.keep_open_for)
    elif b.plaintext is Plaintext.ALERT_SPLIT:
        for i in range(len(b.alert)):
            conn.sendall(b.alert[i : i + 1])
            time.sleep(b.split_delay)
    elif b.plaintext is Plaintext.RESET:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    elif b.plaintext is Plaintext.NGINX_400:
        conn.sendall(
            b"HTTP/1.1 400 Bad Request\r\nServer: nginx\r\nContent-Type: text/html\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (len(NGINX_400_BODY), NGINX_400_BODY)
        )
    # SILENT_CLOSE: nothing; the caller closes.


class ScriptedServer(TCPServer):
    """Answers every request with `answer(request_head)`: exact bytes, or a list of chunks written `gap` apart.

    `keep_alive` serves further requests on the connection; otherwise it closes after the answer, or, with
    `hold` seconds, keeps the connection open that long without a byte more (an upstream that never closes).
    """

    def __init__(
        self,
        answer: Callable[[bytes], bytes | list[bytes]],
        keep_alive: bool = True,
        gap: float = 0.005,
        hold: float = 0.0,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.answer = answer
        self.keep_alive = keep_alive
        self.gap = gap
        self.hold = hold

    def handle(self, conn: socket.socket) -> None:
        while True:
            head = read_head(conn)
            if not head:
                return
            answer = self.answer(head)
            if isinstance(answer, bytes):
                conn.sendall(answer)
            else:
                for n, chunk in enumerate(answer):
                    if n:
                        time.sleep(self.gap)
                    conn.sendall(chunk)
            if not self.keep_alive:
                if self.hold:
                    _wait_for_close(conn, self.hold)
                return


def split_at(data: bytes, *offsets: int) -> list[bytes]:
    """`data` cut at the given offsets: split_at(b"abcd", 1, 3) == [b"a", b"bc", b"d"]."""
    bounds = [0, *offsets, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def _wait_for_close(conn: socket.socket, seconds: float) -> None:
    """Hold the connection, reading and discarding, until the peer closes or `seconds` pass."""
    deadline = time.monotonic() + seconds
    conn.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            if not conn.recv(4096):
                return
        except TimeoutError:
            continue


class FaultyProxy(TCPServer):
    """The Blue Coat behaviour: `GET https://host:port/` goes out in *plaintext*, the raw answer comes back.

    CONNECT works properly (as the field report says).  `well_behaved=True` makes `GET https://` go out over
    TLS instead, as a correct proxy does.  `routes` maps a requested (host, port) to the address to dial, so
    that the check can ask for `esrs.lab:443` while the servers listen on free loopback ports.
    """

    def __init__(
        self,
        routes: dict[tuple[str, int], tuple[str, int]] | None = None,
        well_behaved: bool = False,
        idle: float = 5.0,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.routes = routes or {}
        self.well_behaved = well_behaved
        self.idle = idle

    def _dial(self, host: str, port: int) -> socket.socket:
        target = self.routes.get((host, port), (host, port))
        return socket.create_connection(target, timeout=self.timeout)

    def handle(self, conn: socket.socket) -> None:
        head = read_head(conn)
        if not head:
            return
        line, _, rest = head.partition(b"\r\n")
        parts = line.split(b" ")
        if len(parts) != 3:
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        method, target, http_version = parts
        if method == b"CONNECT":
            host, _, port = target.decode().rpartition(":")
            try:
                upstream = self._dial(host.strip("[]"), int(port))
            except OSError:
                conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            with upstream:
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                _pipe(conn, upstream, self.idle)
            return
        scheme, _, hostport_path = target.decode().partition("://")
        hostport, _, path = hostport_path.partition("/")
        host, _, port_text = hostport.rpartition(":")
        if not host:
            host, port_text = hostport, ("443" if scheme == "https" else "80")
        request = b"%s /%s %s\r\n%s" % (method, path.encode(), http_version, rest)
        try:
            upstream = self._dial(host.strip("[]"), int(port_text))
        except OSError:
            conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        if scheme == "https" and self.well_behaved:
            client_ctx = ssl.create_default_context()
            client_ctx.check_hostname = False
            client_ctx.verify_mode = ssl.CERT_NONE
            upstream = client_ctx.wrap_socket(upstream, server_hostname=host)
        with upstream:
            upstream.sendall(request)  # in the faulty case: in clear, to a TLS port
            _relay(upstream, conn, self.idle)


def _relay(src: socket.socket, dst: socket.socket, idle: float) -> bool:
    """Copy src to dst as it comes, until src ends (closed or reset: True) or is idle for `idle` seconds (False)."""
    src.settimeout(idle)
    while True:
        try:
            chunk = src.recv(65536)
        except TimeoutError:
            return False
        except OSError:  # a reset (or a TLS error) ends src as a close does
            return True
        if not chunk:
            return True
        try:
            dst.sendall(chunk)
        except OSError:
            return False  # dst has gone: there is nothing to pass on to it


def _pipe(a: socket.socket, b: socket.socket, idle: float) -> None:
    """Relay both directions (a CONNECT tunnel) until each has closed or gone idle.

    A side that closes is passed on as a half-close to the other, as a real proxy does: a client waiting for the
    server's close sees it at once, instead of after `idle` seconds. A side that only went idle is not: the other
    would see an end its peer never sent.
    """
    t = threading.Thread(target=_relay_then_close, args=(b, a, idle), daemon=True)
    t.start()
    _relay_then_close(a, b, idle)
    t.join(timeout=idle)


def _relay_then_close(src: socket.socket, dst: socket.socket, idle: float) -> None:
    if _relay(src, dst, idle):
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def temporary_directory() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="esrs-lab-")
