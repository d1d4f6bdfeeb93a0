"""`esrs-fix check`: run what the ESRS check runs through a customer's proxy, plus probes that tell the faults apart.

Per port: (1) absolute-form `GET https://HOST:PORT/` (what CECT / NetworkCheck send), (2) CONNECT then TLS then
`GET /`, (3) CONNECT then plaintext `GET /` (does the port speak TLS?), and (4) with `--direct`, TLS straight to
the server.  Every answer gets a `Shape` (what kind of answer it is: the raw TLS record, squid's HTTP/0.9
wrapping, the proxy's own refusal, ...), and the verdict says which hop is at fault, in words.

The probes, authenticated as the proxy asks, are `probes.py` (with `proxyauth.py`); the shapes `shapes.py`; the
verdict, one table by shape, `verdicts.py`. The password never appears in anything the check returns: every answer
is scrubbed as it is read, before any text, hex or JSON is made of it, of the password and of every token sent for
it, and no sentence formats the password. Without credentials, a proxy that offers Negotiate gets the Kerberos ticket
in the cache (single sign-on, as a browser); its tokens are scrubbed the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.names import hostport
from .probes import ProxyAuth, probe_absolute, probe_connect_plain, probe_connect_tls, probe_direct
from .proxyauth import Credentials
from .shapes import CheckOutcome, Probe, Shape, product
from .verdicts import authenticated, verdict


@dataclass
class PortResult:
    host: str
    port: int
    outcome: CheckOutcome
    verdict: str
    probes: list[Probe] = field(default_factory=list)
    auth: ProxyAuth | None = None

    @property
    def shape(self) -> Shape:
        """The shape of the answer to what the check sends (the first probe)."""
        return self.probes[0].shape if self.probes else Shape.UNREACHABLE

    def to_dict(self) -> dict[str, Any]:
        first = self.probes[0].answer if self.probes else None
        return {
            "url": f"https://{hostport(self.host, self.port)}/",
            "outcome": self.outcome.name.lower(),
            "shape": str(self.shape),
            "verdict": self.verdict,
            # who answered what the check sends, as its answer names itself (Server, Proxy-agent, Via)
            "product": product(first),
            "auth": self.auth.to_dict() if self.auth else None,
            "probes": [p.to_dict() for p in self.probes],
        }


def check_port(
    proxy: tuple[str, int],
    host: str,
    port: int,
    timeout: float,
    direct: bool = False,
    credentials: Credentials | None = None,
) -> PortResult:
    auth = ProxyAuth(credentials)
    absolute = probe_absolute(proxy, host, port, timeout, auth)
    probes = [absolute]
    if absolute.unreachable:
        return PortResult(host, port, CheckOutcome.UNTESTED, f"could not test: {absolute.what}", probes, auth)
    tunnel = probe_connect_tls(proxy, host, port, timeout, auth)
    plain = probe_connect_plain(proxy, host, port, timeout, auth)
    probes += [tunnel, plain]
    if direct:
        probes.append(probe_direct(host, port, timeout))
    outcome, said = verdict(absolute, tunnel, auth, timeout, plain)
    return PortResult(host, port, outcome, said + authenticated(auth, probes), probes, auth)


def overall(results: list[PortResult]) -> CheckOutcome:
    if any(r.outcome is CheckOutcome.UNTESTED for r in results):
        return CheckOutcome.UNTESTED
    return CheckOutcome.FAIL if any(r.outcome is CheckOutcome.FAIL for r in results) else CheckOutcome.PASS
