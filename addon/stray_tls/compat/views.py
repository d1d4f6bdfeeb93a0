"""Registering a content view: mitmproxy 11's `View` and 12's `Contentview` behind one pair of functions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..core import records as tls

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
