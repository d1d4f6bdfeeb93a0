"""The deferred `--set` values of a script's options (`options.deferred`, and its private `.val`)."""

from __future__ import annotations

from typing import Any


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


def deferred_names(options: Any) -> list[str]:
    """The names of `--set` options no addon has declared (yet): mitmproxy keeps them aside and ignores them."""
    return sorted(getattr(options, "deferred", {}))
