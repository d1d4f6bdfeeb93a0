"""Real proxies on loopback, for `esrs-fix check` to be measured against: proxy.py, pproxy, squid, tinyproxy, privoxy.

The launcher is the lab's (`stray_tls.lab.proxies`, which `esrs-fix lab --proxy` uses too); this module makes
session fixtures of it.  Each proxy is started once per pytest session, on first use, with a minimal configuration
in a temporary directory (config, logs, pid files), and stopped by its own pid at the end of the session.  A proxy
that is not installed skips the test that asked for it, with the install command in the reason; one that is
installed but does not come up fails the test, with the tail of its log.

Every proxy that needs to know the origin (squid's `cache_peer`) points at one session-wide ESRS stand-in that
answers plaintext the way JSSE does (`15 03 03 00 02 02 0a`): `jsse_esrs`. `squid-jsse` is squid with the real
JSSE server (tests/realpeers.py, Java) as its `cache_peer` instead; it skips, naming what to install, without Java.

Proxy authentication: `-auth` is Basic (squid, proxy.py); squid's `-ntlm` forms take NTLM through Debian's
`ntlm_fake_auth` (any password, but only `USER`, in any domain), `-negotiate` offers Negotiate first and NTLM too
(its Negotiate takes no SPNEGO token: a client falls back to NTLM), `-ntlm-peer` is `-ntlm` with the stand-in as
its cache_peer, and `-ntlm-peer-300ms` the same with the lab's latency relay, 300 ms each way, between squid and
the stand-in (the relay is the session's too, stopped with the proxies).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stray_tls.core import records
from stray_tls.lab import proxies, servers
from stray_tls.lab.latency import LatencyRelay
from stray_tls.lab.proxies import RealProxy

from .realpeers import RealServers

__all__ = ["FIELD_LATENCY", "PASSWORD", "USER", "RealProxies", "RealProxy", "jsse_esrs", "real_proxies"]

#: JSSE's answer to plaintext on a TLS port: a fatal unexpected_message alert in a TLS 1.2 record.
JSSE_ALERT = records.encode_alert(2, 10, 0x0303)
USER, PASSWORD = "esrsuser", "s3cr%t:pw"  # a password with characters that need percent-encoding in a URL
#: The field's latency between a proxy and the server (issue 19): seconds each way.
FIELD_LATENCY = 0.3


class RealProxies:
    """Starts each proxy on first `get(name)`; `stop_all()` ends them, each by its own pid."""

    #: the fixture's names: a proxy, and the form it runs in (`-peer`: squid with the stand-in origin as its
    #: cache_peer; `-jsse`: squid with the real JSSE server as its cache_peer)
    NAMES = (
        "proxy.py",
        "proxy.py-auth",
        "pproxy",
        "squid",
        "squid-peer",
        "squid-jsse",
        "squid-auth",
        "squid-ntlm",
        "squid-ntlm-peer",
        "squid-ntlm-peer-300ms",
        "squid-negotiate",
        "tinyproxy",
        "privoxy",
    )

    def __init__(self, directory: Path, origin: servers.EsrsServer, real_servers: RealServers | None = None) -> None:
        self.directory = directory
        self.origin = origin
        self.real_servers = real_servers
        self.running: dict[str, RealProxy] = {}
        self.unavailable: dict[str, str] = {}
        #: the latency relays between a proxy and the stand-in, by the proxy's name: the check asks for its port
        self.relays: dict[str, LatencyRelay] = {}

    def _form(self, name: str) -> tuple[str, dict[str, Any]]:
        if name not in self.NAMES:
            raise ValueError(f"unknown proxy {name!r}; known: {', '.join(self.NAMES)}")
        proxy, _, form = name.partition("-")
        if form == "auth":
            return proxy, {"auth": (USER, PASSWORD)}
        if form == "ntlm":
            return proxy, {"auth": (USER, PASSWORD), "scheme": "ntlm"}
        if form == "negotiate":
            return proxy, {"auth": (USER, PASSWORD), "scheme": "negotiate+ntlm"}
        if form == "ntlm-peer":
            return proxy, {"auth": (USER, PASSWORD), "scheme": "ntlm", "peers": [("127.0.0.1", self.origin.port)]}
        if form == "ntlm-peer-300ms":
            if name in self.relays:  # a start that failed before: its relay goes
                self.relays.pop(name).stop()
            relay = LatencyRelay(("127.0.0.1", self.origin.port), FIELD_LATENCY)
            relay.start()
            self.relays[name] = relay
            # by port: the check asks for the relay's port, which squid forwards to the relay
            return proxy, {"auth": (USER, PASSWORD), "scheme": "ntlm", "peers": [("127.0.0.1", relay.port)]}
        if form == "peer":
            return proxy, {"peers": [("127.0.0.1", self.origin.port)]}
        if form == "jsse":
            if self.real_servers is None:
                raise ValueError("squid-jsse needs the real servers (the real_server fixture)")
            return proxy, {"peers": [self.real_servers("jsse").address]}  # a skip naming what to install, if need be
        return proxy, {}

    def get(self, name: str) -> RealProxy:
        if name in self.unavailable:
            pytest.skip(self.unavailable[name])
        if name not in self.running:
            proxy, options = self._form(name)
            try:
                self.running[name] = proxies.start(proxy, self.directory / name, servers.free_port(), **options)
            except proxies.ProxyMissing as e:
                self.unavailable[name] = str(e)
                pytest.skip(str(e))
            except proxies.ProxyFailed as e:
                pytest.fail(str(e))
        return self.running[name]

    def stop_all(self) -> None:
        for proxy in self.running.values():
            proxy.stop()
        for relay in self.relays.values():
            relay.stop()


@pytest.fixture(scope="session")
def jsse_esrs(cert) -> Iterator[servers.EsrsServer]:
    """The session's ESRS stand-in: TLS on a free port; plaintext gets JSSE's alert, 15 03 03 00 02 02 0a."""
    server = servers.EsrsServer(cert, servers.EsrsBehaviour(alert=JSSE_ALERT))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def real_proxies(jsse_esrs: servers.EsrsServer, real_server: RealServers) -> Iterator[RealProxies]:
    """Real proxies, each started on first `real_proxies.get(name)` and stopped at the end of the session."""
    directory = Path(tempfile.mkdtemp(prefix="esrs-realproxies-"))
    os.chmod(directory, 0o755)  # the proxy user must reach its own directory below
    started = RealProxies(directory, jsse_esrs, real_server)
    try:
        yield started
    finally:
        started.stop_all()
        if not os.environ.get("ESRS_KEEP_PROXY_LOGS"):
            shutil.rmtree(directory, ignore_errors=True)
