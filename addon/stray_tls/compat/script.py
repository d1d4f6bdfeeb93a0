"""How mitmproxy's script loader walks a script's module.

For every event, mitmproxy looks the hook up on the script's module itself (`getattr(module, name, None)`) before it
turns to the module's `addons`. A module has none of those names, and CPython formats an AttributeError's message for
each attribute a module lacks: for the eight events of a keep-alive request, a hundredth of stock mitmproxy's whole
work (callgrind, docs/benchmarks.md). A name bound to None is found with one dict lookup, and mitmproxy skips it as
no hook (`if func:`), on 11 and 12 alike.
"""

from __future__ import annotations

from typing import Any


def bind_hook_names(namespace: dict[str, Any]) -> None:
    """Bind every mitmproxy hook name that a script's globals (`namespace`) do not define to None."""
    import mitmproxy.addons  # noqa: F401  (defines every layer's hooks; in mitmproxy it is loaded already)
    from mitmproxy import hooks

    for name in hooks.all_hooks:
        namespace.setdefault(name, None)
