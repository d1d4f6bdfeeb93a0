"""How a plaintext request goes to its target over TLS: one decision, for the upgrade's attempt and learned requests.

`tls_route(flow)` says it (scheme, request target, SNI and the name the certificate is verified against, headers
stripped); `Route.prepare` applies it to the request, and the connection's SNI is set from `Route.sni`: by
`compat.resend_over_tls` on the attempt's connection, by the addon on a learned flow's `server_conn`. The name is
the one mitmproxy itself uses when the same request goes out as https://:

- regular and upstream mode: the request's host (mitmproxy's HTTP layer sends the address's host as SNI);
- reverse mode: the reverse target's host, from the mode spec, whatever SNI the client sent to mitmproxy, as
  mitmproxy does for `reverse:https://` (modes.py sets `server.sni` to the spec's host); with `keep_host_header`
  mitmproxy leaves SNI to the client's, or the target's host when the client sent none, and so does this;
- the modes where the request's host is only the address the client connected to (transparent, WireGuard, local,
  TUN, SOCKS5): the name the client asked for in its Host header, when it sent one.

mitmproxy verifies the upstream's certificate against the connection's SNI (tlsconfig.py), so the two are one name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mitmproxy import http

from .. import compat

#: Modes in which the request's host is where the client's connection went (often an address), not a name the
#: client asked for: there the Host header says which name the server's certificate must carry.
ADDRESS_MODES = frozenset({"transparent", "wireguard", "local", "tun", "socks5"})


@dataclass(frozen=True, slots=True)
class Route:
    """How one request goes to its target over TLS."""

    #: The SNI sent, and the name the server's certificate is verified against.
    sni: str
    #: HTTP/1: the request target in origin-form inside TLS (the authority dropped), as for mitmproxy's https flows.
    origin_form: bool

    def prepare(self, request: http.Request) -> None:
        """Make `request` the one that goes over TLS: https, its target's form, no header meant for a proxy (those
        go to the upstream proxy's CONNECT, never to the origin)."""
        request.scheme = "https"
        if self.origin_form:
            request.authority = ""
        compat.strip_proxy_headers(request)


def tls_route(flow: http.HTTPFlow, options: Any = None) -> Route:
    """The route over TLS for `flow`'s request (see the module's docstring); `options`: mitmproxy's (its
    `keep_host_header`; absent, as in a bare test context, it counts as off)."""
    request = flow.request
    mode = flow.client_conn.proxy_mode
    kind = getattr(mode, "type_name", "")
    if kind in ADDRESS_MODES:
        name = request.pretty_host
    elif kind == "reverse" and (request.host, request.port) == tuple(getattr(mode, "address", ())):
        # read here only: a mitmproxy option is deep-copied at each read, and every learned request comes this way
        keep_host_header = bool(getattr(options, "keep_host_header", False))
        name = (flow.client_conn.sni or request.host) if keep_host_header else request.host
    else:
        name = request.host
    return Route(sni=name, origin_form=request.http_version.startswith("HTTP/1"))
