"""Which mitmproxy runs and what differs between its versions (decisions on the version are taken here, never
elsewhere), and the helper outside mitmproxy's addon API that reads `body_size_limit` (`parse_size`)."""

from __future__ import annotations

from typing import Any

from mitmproxy import version

#: mitmproxy majors whose internals this package was written against and tested with.
SUPPORTED_MAJORS = (11, 12)


def mitmproxy_version() -> str:
    """mitmproxy's version string, for messages; decisions on it are taken in this module."""
    return version.VERSION


def mitmproxy_major() -> int:
    """The running major, or 0 when the version string does not start with one; early detection needs a tested one."""
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


def has_local_mode() -> bool:
    """Whether this mitmproxy has a `--mode local` redirector for this platform: asked of mitmproxy_rs, as mitmweb
    asks it (`unavailable_reason`, which came with the Linux redirector in 11.1); 11.0 has one on Windows and macOS
    only, and refuses the mode on Linux."""
    import sys

    from mitmproxy_rs import local

    if hasattr(local.LocalRedirector, "unavailable_reason"):
        return True
    return sys.platform in ("win32", "darwin")


def body_size_limit(options: Any) -> int | None:
    """mitmproxy's `body_size_limit` option in bytes (`"100k"` is 102400), or None when there is no limit."""
    from mitmproxy.utils import human

    return human.parse_size(options.body_size_limit) if options.body_size_limit else None
