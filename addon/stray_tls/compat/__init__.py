"""Everything esrs-fix needs from mitmproxy beyond its addon API: the one package that names mitmproxy's private
modules, reads its version or parses its message texts. What is needed, and where each need is met:

- `versions`: which mitmproxy runs (early detection only on the majors it was tested with), whether mitmweb wants
  a password (asked of mitmweb's own addons), `body_size_limit` in bytes (mitmproxy's own `parse_size`);
- `messages`: findings from mitmproxy's error texts, for flows early detection did not see, and what its texts say
  about a failed TLS attempt (the causes themselves are the upgrade's); every format pinned on both majors by
  `tests/test_compat.py`;
- `options`: the `--set` values mitmproxy deferred until the script loaded, so that a bad one is refused by name;
- `views`: the TLS records content view, on 11's `View` and 12's `Contentview`;
- `http1`, `driver`: the private names of the HTTP/1 layer, resolved at once; a real `Http1Client` fed by hand;
- `early`: TLS records answered the moment they arrive (`read_headers` and `send` wrapped), checked at install by
  driving a real `Http1Client`, and otherwise off, said once;
- `script`: what a script's module holds so that mitmproxy's walk over it each event costs little;
- `replay`: the same request over TLS through mitmproxy's client replay, so that its modes and TLS options apply;
  how it ended without an answer is handed to the product to word.

The rest of esrs-fix says `compat.X` for the names below and never reaches into the submodules.
"""

from .driver import Http1ClientDriver, Said
from .early import EarlyDetection, ErrorAnswer, OnRecords
from .http1 import _Internals as _Internals  # for the tests that reach mitmproxy's HTTP/1 layer through compat
from .messages import (
    SERVER_CLOSED,
    certificate_problem,
    client_gone,
    finding_from_error,
    finding_from_tls_error,
    says_closed_in_handshake,
    says_no_tls_version,
    says_not_tls,
    says_too_large,
)
from .options import deferred_names, deferred_values
from .replay import End, Unanswered, resend_over_tls, strip_proxy_headers
from .script import bind_hook_names
from .versions import SUPPORTED_MAJORS, body_size_limit, mitmproxy_major, mitmproxy_version, mitmweb_wants_a_password
from .views import Priority, Render, register_view, unregister_view

__all__ = [
    "SERVER_CLOSED",
    "SUPPORTED_MAJORS",
    "EarlyDetection",
    "End",
    "ErrorAnswer",
    "Http1ClientDriver",
    "OnRecords",
    "Priority",
    "Render",
    "Said",
    "Unanswered",
    "bind_hook_names",
    "body_size_limit",
    "certificate_problem",
    "client_gone",
    "deferred_names",
    "deferred_values",
    "finding_from_error",
    "finding_from_tls_error",
    "mitmproxy_major",
    "mitmproxy_version",
    "mitmweb_wants_a_password",
    "register_view",
    "resend_over_tls",
    "says_closed_in_handshake",
    "says_no_tls_version",
    "says_not_tls",
    "says_too_large",
    "strip_proxy_headers",
    "unregister_view",
]
