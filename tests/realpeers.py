"""Real TLS servers from Debian as shared test peers: nginx, Apache httpd, Tomcat, Go, JSSE, the JDK's HttpsServer,
gnutls-serv, openssl s_server and Python's ssl.

Each is started at most once per pytest session, on first use, on a free loopback port, with a minimal
configuration written into one temporary directory, and stopped by the id of the process we started (SIGTERM,
then SIGKILL) when the session ends. All of them serve the lab's certificate, which is also the trust anchor:
`--set ssl_verify_upstream_trusted_ca=<peer.cert>` lets mitmproxy verify them as localhost, esrs.lab or 127.0.0.1.

    def test_something(real_server):
        peer = real_server("nginx")   # started on first use; a skip naming what to install when it cannot run
        peer.address                  # ("127.0.0.1", port) of its TLS port; peer.pid, peer.process, peer.log
        peer.plaintext                # Kind.PLAIN_HTTP_400: what a plaintext GET / to that port gets
        peer.serves(body)             # whether body is what its TLS GET / answers (peer.body)
        mitmdump --set ssl_verify_upstream_trusted_ca={peer.cert}   # verifies it as localhost, esrs.lab, 127.0.0.1
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stray_tls.core.findings import Kind
from stray_tls.lab import servers

PEERS_DIR = Path(__file__).parent / "peers"
HOST = "127.0.0.1"
TOMCAT_HOME = Path("/usr/share/tomcat10")
APACHE_MODULES = Path("/usr/lib/apache2/modules")
#: What openssl s_server -www always serves first (the rest is its status page; it cannot serve a chosen body).
OPENSSL_WWW_BODY = b'<HTML><BODY BGCOLOR="#ffffff">\n<pre>\n\ns_server '
#: JVM options that make the three Java peers start faster and smaller.
JAVA_OPTIONS = ["-Xmx96m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xss512k"]


class PeerUnavailable(Exception):
    """A program the peer needs is not installed here: its tests skip, saying what to install."""


class PeerFailed(Exception):
    """The peer is installed but did not build, start or verify: its tests fail, with the tail of its log."""


@dataclass
class Peer:
    """One running real server."""

    name: str
    #: Who answers, as findings names the software behind a 400 page ("nginx", "Apache Tomcat", ...).
    software: str
    host: str
    port: int
    process: subprocess.Popen[bytes]
    #: What a TLS `GET /` answers: exactly these bytes, or (when `body_exact` is false) a body beginning with them.
    body: bytes
    body_exact: bool
    #: What a plaintext `GET / HTTP/1.1` to the TLS port gets: TLS_RECORDS, PLAIN_HTTP_400 or SILENT_CLOSE.
    plaintext: Kind
    #: The exact bytes for TLS_RECORDS, the phrase in the page for PLAIN_HTTP_400, b"" for SILENT_CLOSE.
    plaintext_answer: bytes
    #: SILENT_CLOSE only: the close is a TCP reset (the server closed with the request unread), not a FIN.
    plaintext_reset: bool
    #: The certificate the peer serves; self-signed, so it is also the trust anchor to verify the peer with.
    cert: Path
    key: Path
    log: Path
    #: Seconds from launch until the TLS port completed a verified handshake (a build, if any, not included).
    startup_seconds: float = 0.0

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def url(self, host: str = "localhost") -> str:
        return f"https://{host}:{self.port}/"

    def serves(self, body: bytes) -> bool:
        """Whether `body` is what this peer answers to a TLS `GET /`."""
        return body == self.body if self.body_exact else body.startswith(self.body)

    def tls_context(self) -> ssl.SSLContext:
        """A client context that verifies this peer (hostnames localhost, esrs.lab or 127.0.0.1)."""
        return ssl.create_default_context(cafile=str(self.cert))

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log, lines)


@dataclass
class Launch:
    """How to run one peer, prepared in its own directory."""

    argv: list[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    startup_timeout: float = 20.0


@dataclass(frozen=True)
class Spec:
    name: str
    software: str
    plaintext: Kind
    plaintext_answer: bytes
    #: (program, how to install it) for every program the peer needs.
    needs: tuple[tuple[str, str], ...]
    prepare: Callable[[Workspace, Path, int], Launch]
    body_exact: bool = True
    plaintext_reset: bool = False


def body_for(name: str) -> bytes:
    return f"esrs-fix real peer: {name}\n".encode()


def find_program(name: str) -> str | None:
    """A program on PATH, or in the sbin directories a user's PATH may lack (nginx, apache2 live there)."""
    return shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


class Workspace:
    """The session's directory of configurations, logs, build products and the certificate; the running peers."""

    def __init__(self, root: Path, specs: dict[str, Spec] | None = None) -> None:
        self.root = root
        self.specs = SPECS if specs is None else specs
        root.chmod(0o755)  # Apache drops to www-data and must still read its document root
        (root / "cert").mkdir()
        self.cert, self.key = servers.make_certificate(root / "cert")
        self.peers: dict[str, Peer] = {}
        self.failures: dict[str, PeerUnavailable | PeerFailed] = {}
        self._built: dict[str, Path] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Peer:
        """The running peer `name`, started on first use; PeerUnavailable or PeerFailed (remembered) otherwise."""
        if name not in self.specs:
            raise KeyError(f"no real peer named {name!r}; known: {', '.join(self.specs)}")
        with self._lock:
            if name in self.peers:
                return self.peers[name]
            if name in self.failures:
                raise self.failures[name]
            try:
                peer = self._start(self.specs[name])
            except (PeerUnavailable, PeerFailed) as e:
                self.failures[name] = e
                raise
            self.peers[name] = peer
            return peer

    def _start(self, spec: Spec) -> Peer:
        for program, install in spec.needs:
            if find_program(program) is None and not Path(program).exists():
                raise PeerUnavailable(f"{spec.name}: {program} is not installed ({install})")
        directory = self.root / spec.name
        directory.mkdir(mode=0o755)
        (directory / "index.html").write_bytes(body_for(spec.name))
        port = servers.free_port(HOST)
        launch = spec.prepare(self, directory, port)
        launch.argv[0] = find_program(launch.argv[0]) or launch.argv[0]
        log = directory / "server.log"
        env = {**os.environ, **launch.env}
        started = time.monotonic()
        with open(log, "wb") as out:
            process = subprocess.Popen(
                launch.argv, cwd=launch.cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        peer = Peer(
            spec.name,
            spec.software,
            HOST,
            port,
            process,
            body_for(spec.name) if spec.body_exact else OPENSSL_WWW_BODY,
            spec.body_exact,
            spec.plaintext,
            spec.plaintext_answer,
            spec.plaintext_reset,
            self.cert,
            self.key,
            log,
        )
        try:
            wait_for_tls(peer, launch.startup_timeout)
        except PeerFailed:
            stop(process)
            raise
        peer.startup_seconds = time.monotonic() - started
        return peer

    def build(self, what: str, make: Callable[[Path], None]) -> Path:
        """Build something once per session (the Go peer, the bind shim) into the workspace."""
        if what not in self._built:
            (self.root / "build").mkdir(exist_ok=True)
            make(self.root / "build")
            self._built[what] = self.root / "build" / what
        return self._built[what]

    def stop_all(self) -> None:
        with self._lock:
            peers, self.peers = list(self.peers.values()), {}
        for peer in peers:
            stop(peer.process)


def wait_for_tls(peer: Peer, timeout: float) -> None:
    """Until the peer completes a verified TLS handshake, or PeerFailed with the tail of its log."""
    context = peer.tls_context()
    deadline = time.monotonic() + timeout
    while True:
        if peer.process.poll() is not None:
            raise PeerFailed(
                f"{peer.name} exited with status {peer.process.returncode} while starting; {peer.log}:\n"
                + peer.log_tail()
            )
        try:
            with (
                socket.create_connection(peer.address, timeout=2) as sock,
                context.wrap_socket(sock, server_hostname="localhost"),
            ):
                return
        except ssl.SSLCertVerificationError as e:
            raise PeerFailed(f"{peer.name} serves a certificate that does not verify: {e}") from None
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise PeerFailed(
                f"{peer.name} did not complete a TLS handshake within {timeout:.0f} s; {peer.log}:\n" + peer.log_tail()
            )
        time.sleep(0.1)


def stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, to the process we started (by its id), and reap it."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait(5)


def run_build(argv: list[str], what: str, env: dict[str, str] | None = None, timeout: float = 180.0) -> None:
    try:
        done = subprocess.run(
            argv, env={**os.environ, **(env or {})}, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise PeerFailed(f"building {what} took longer than {timeout:.0f} s") from None
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode(errors="replace").strip().splitlines()[-20:]
        raise PeerFailed(f"building {what} failed ({' '.join(argv)}):\n" + "\n".join(output))


# --- the peers ---------------------------------------------------------------------------------------------------


def prepare_nginx(ws: Workspace, d: Path, port: int) -> Launch:
    temp = "\n".join(
        f"    {kind}_temp_path {d / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (d / "nginx.conf").write_text(
        f"""daemon off;
master_process off;
pid {d / "nginx.pid"};
error_log stderr notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
{temp}
    server {{
        listen {HOST}:{port} ssl;
        server_name localhost esrs.lab;
        ssl_certificate {ws.cert};
        ssl_certificate_key {ws.key};
        root {d};
        index index.html;
        default_type text/plain;
    }}
}}
"""
    )
    return Launch(["nginx", "-e", "stderr", "-p", str(d), "-c", str(d / "nginx.conf")], d)


def apache_user() -> tuple[str, str]:
    """Apache refuses to serve as root: the user and group its process drops to (when started as root)."""
    for user, group in (("www-data", "www-data"), ("nobody", "nogroup")):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(user)
            return user, group
    return "#65534", "#65534"


def prepare_apache2(ws: Workspace, d: Path, port: int) -> Launch:
    modules = ["mpm_prefork", "authz_core", "dir", "ssl"]
    load = "\n".join(f"LoadModule {m}_module {APACHE_MODULES / f'mod_{m}.so'}" for m in modules)
    user = "User {}\nGroup {}".format(*apache_user()) if os.geteuid() == 0 else ""
    (d / "apache2.conf").write_text(
        f"""ServerRoot "{d}"
ServerName localhost
DefaultRuntimeDir "{d}"
PidFile "{d / "apache2.pid"}"
Mutex file:{d} default
ErrorLog /dev/stderr
LogLevel warn
{load}
{user}
Listen {HOST}:{port} https
DocumentRoot "{d}"
DirectoryIndex index.html
<Directory "{d}">
    Require all granted
</Directory>
SSLEngine on
SSLCertificateFile "{ws.cert}"
SSLCertificateKeyFile "{ws.key}"
"""
    )
    # -X: one process in the foreground, nothing forked; stopping its pid stops all of it.
    return Launch(["apache2", "-X", "-d", str(d), "-f", str(d / "apache2.conf")], d)


def prepare_tomcat(ws: Workspace, d: Path, port: int) -> Launch:
    for sub in ("conf", "logs", "temp", "work", "webapps/ROOT/WEB-INF"):
        (d / sub).mkdir(parents=True)
    (d / "index.html").rename(d / "webapps/ROOT/index.html")
    # The shutdown port is off (-1): Tomcat listens on the TLS port only, and stops on SIGTERM.
    (d / "conf/server.xml").write_text(
        f"""<?xml version="1.0" encoding="UTF-8"?>
<Server port="-1" shutdown="SHUTDOWN">
  <Service name="Catalina">
    <Connector address="{HOST}" port="{port}" protocol="org.apache.coyote.http11.Http11NioProtocol"
               SSLEnabled="true" maxThreads="8">
      <SSLHostConfig>
        <Certificate certificateFile="{ws.cert}" certificateKeyFile="{ws.key}" type="EC"/>
      </SSLHostConfig>
    </Connector>
    <Engine name="Catalina" defaultHost="localhost">
      <Host name="localhost" appBase="webapps" unpackWARs="false" autoDeploy="false"/>
    </Engine>
  </Service>
</Server>
"""
    )
    # No global conf/web.xml (and no JSP engine): the ROOT webapp declares the default servlet itself.
    (d / "webapps/ROOT/WEB-INF/web.xml").write_text(
        """<?xml version="1.0" encoding="UTF-8"?>
<web-app xmlns="https://jakarta.ee/xml/ns/jakartaee" version="6.0" metadata-complete="true">
  <servlet>
    <servlet-name>default</servlet-name>
    <servlet-class>org.apache.catalina.servlets.DefaultServlet</servlet-class>
  </servlet>
  <servlet-mapping>
    <servlet-name>default</servlet-name>
    <url-pattern>/</url-pattern>
  </servlet-mapping>
  <mime-mapping>
    <extension>html</extension>
    <mime-type>text/plain</mime-type>
  </mime-mapping>
  <welcome-file-list>
    <welcome-file>index.html</welcome-file>
  </welcome-file-list>
</web-app>
"""
    )
    classpath = f"{TOMCAT_HOME / 'bin/bootstrap.jar'}:{TOMCAT_HOME / 'bin/tomcat-juli.jar'}"
    argv = [
        "java",
        *JAVA_OPTIONS,
        f"-Dcatalina.home={TOMCAT_HOME}",
        f"-Dcatalina.base={d}",
        f"-Djava.io.tmpdir={d / 'temp'}",
        "-classpath",
        classpath,
        "org.apache.catalina.startup.Bootstrap",
        "start",
    ]
    return Launch(argv, d, startup_timeout=60.0)


def prepare_go(ws: Workspace, d: Path, port: int) -> Launch:
    def make(out: Path) -> None:
        env = {
            "GO111MODULE": "off",
            "GOFLAGS": "",
            "GOPROXY": "off",
            "GOTOOLCHAIN": "local",
            "GOCACHE": str(out / "gocache"),
            "GOPATH": str(out / "gopath"),
        }
        run_build(["go", "build", "-o", str(out / "go-peer"), str(PEERS_DIR / "main.go")], "the Go peer", env)

    binary = ws.build("go-peer", make)
    return Launch([str(binary), f"{HOST}:{port}", str(ws.cert), str(ws.key), str(d / "index.html")], d)


def prepare_java(mode: str) -> Callable[[Workspace, Path, int], Launch]:
    def prepare(ws: Workspace, d: Path, port: int) -> Launch:
        source = str(PEERS_DIR / "JavaPeer.java")
        argv = ["java", *JAVA_OPTIONS, source, mode, str(port), str(ws.cert), str(ws.key), str(d / "index.html")]
        return Launch(argv, d, startup_timeout=30.0)

    return prepare


def prepare_gnutls(ws: Workspace, d: Path, port: int) -> Launch:
    def make(out: Path) -> None:
        source = PEERS_DIR / "loopback_bind.c"
        run_build(
            ["gcc", "-shared", "-fPIC", "-O2", "-o", str(out / "loopback_bind.so"), str(source), "-ldl"],
            "the bind shim",
        )

    # gnutls-serv cannot be told an address and binds the wildcard one: the shim turns that into loopback.
    shim = ws.build("loopback_bind.so", make)
    argv = [
        "gnutls-serv",
        "--http",
        "--port",
        str(port),
        "--x509certfile",
        str(ws.cert),
        "--x509keyfile",
        str(ws.key),
        "--httpdata",
        str(d / "index.html"),
    ]
    return Launch(argv, d, env={"LD_PRELOAD": str(shim)})


def prepare_openssl(ws: Workspace, d: Path, port: int) -> Launch:
    argv = ["openssl", "s_server", "-accept", f"{HOST}:{port}", "-cert", str(ws.cert), "-key", str(ws.key), "-www"]
    return Launch(argv, d)


def prepare_python(ws: Workspace, d: Path, port: int) -> Launch:
    script = str(PEERS_DIR / "python_ssl_server.py")
    return Launch([sys.executable, script, str(port), str(ws.cert), str(ws.key), str(d / "index.html")], d)


# The plaintext answers below were measured on Debian 12 (nginx 1.22.1, Apache 2.4, Tomcat 10.1, Go 1.19,
# OpenJDK 17, GnuTLS 3.7.9, OpenSSL 3.0) and are asserted by tests/test_real_servers.py.
ALERT_TLS12_UNEXPECTED = bytes.fromhex("15 03 03 00 02 02 0a")
JAVA = ("java", "apt-get install openjdk-17-jdk-headless")
SPECS: dict[str, Spec] = {
    spec.name: spec
    for spec in (
        Spec(
            "nginx",
            "nginx",
            Kind.PLAIN_HTTP_400,
            b"The plain HTTP request was sent to HTTPS port",
            (("nginx", "apt-get install nginx"),),
            prepare_nginx,
        ),
        Spec(
            "apache2",
            "Apache httpd",
            Kind.PLAIN_HTTP_400,
            b"speaking plain HTTP to an SSL-enabled server port",
            (("apache2", "apt-get install apache2"), (str(APACHE_MODULES / "mod_ssl.so"), "apt-get install apache2")),
            prepare_apache2,
        ),
        Spec(
            "tomcat",
            "Apache Tomcat",
            Kind.PLAIN_HTTP_400,
            b"This combination of host and port requires TLS.",
            (JAVA, (str(TOMCAT_HOME / "bin/bootstrap.jar"), "apt-get install tomcat10")),
            prepare_tomcat,
        ),
        Spec(
            "go",
            "Go net/http",
            Kind.PLAIN_HTTP_400,
            b"Client sent an HTTP request to an HTTPS server.",
            (("go", "apt-get install golang-go"),),
            prepare_go,
        ),
        Spec(
            "jsse",
            "Java JSSE SSLServerSocket",
            Kind.TLS_RECORDS,
            ALERT_TLS12_UNEXPECTED,
            (JAVA,),
            prepare_java("jsse"),
        ),
        Spec(
            "jdk-httpsserver",
            "JDK com.sun.net.httpserver.HttpsServer",
            Kind.SILENT_CLOSE,
            b"",
            (JAVA,),
            prepare_java("httpsserver"),
        ),
        Spec(
            "gnutls",
            "GnuTLS gnutls-serv",
            Kind.TLS_RECORDS,
            ALERT_TLS12_UNEXPECTED,
            (("gnutls-serv", "apt-get install gnutls-bin"), ("gcc", "apt-get install gcc")),
            prepare_gnutls,
        ),
        Spec(
            "openssl",
            "OpenSSL s_server",
            Kind.SILENT_CLOSE,
            b"",
            (("openssl", "apt-get install openssl"),),
            prepare_openssl,
            body_exact=False,
        ),
        Spec("python-ssl", "Python ssl", Kind.SILENT_CLOSE, b"", (), prepare_python, plaintext_reset=True),
    )
}


class RealServers:
    """What the `real_server` fixture gives: `real_server(name)` is the running peer, or a skip saying why not."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    def __call__(self, name: str) -> Peer:
        try:
            return self.workspace.get(name)
        except PeerUnavailable as e:
            pytest.skip(str(e))
        except PeerFailed as e:
            pytest.fail(str(e), pytrace=False)

    def optional(self, name: str) -> Peer | None:
        """The running peer, or None when it is not installed here; one that is installed but fails, fails."""
        try:
            return self.workspace.get(name)
        except PeerUnavailable:
            return None
        except PeerFailed as e:
            pytest.fail(str(e), pytrace=False)

    def why_not(self, name: str) -> str:
        """Why `optional(name)` gave None, for a skip reason: the PeerUnavailable message, naming what to install."""
        failure = self.workspace.failures.get(name)
        return str(failure) if failure is not None else f"{name}: not started"

    @property
    def names(self) -> list[str]:
        return list(self.workspace.specs)


@pytest.fixture(scope="session")
def real_server() -> Iterator[RealServers]:
    """`real_server(name)`: the real peer `name` (see SPECS), started once per session on first use."""
    workspace = Workspace(Path(tempfile.mkdtemp(prefix="esrs-peers-")))
    atexit.register(workspace.stop_all)  # in case the session dies before its finalizers run
    try:
        yield RealServers(workspace)
    finally:
        workspace.stop_all()
        atexit.unregister(workspace.stop_all)
        shutil.rmtree(workspace.root, ignore_errors=True)
