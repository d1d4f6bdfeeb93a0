"""esrs-fix inside mitmproxy: spot TLS where HTTP was expected, explain it, upgrade or rewrite it only when asked.

One addon per concern, as mitmproxy's built-ins are written, each declaring and validating its own options:

- `Labels` (labels.py): only esrs-fix labels an answer; the upstream's own label is renamed;
- `Upgrading` (upgrading.py): esrs_upgrade and its times; learned routing (requests to known targets);
- `Detection` (detection.py): esrs_early, esrs_hold_timeout; the hooks that see answers, errors and handshakes;
- `Rewrite` (rewrite.py): esrs_rewrite, esrs_status; the synthetic answer;
- `Decision` (decision.py): esrs_filter, esrs_report; the one decision of what a client gets, and the flow's record;
- `Inspection` (inspection.py): the esrs.upgraded and esrs.decode commands, the TLS records view;
- `Spelling` (options.py): a misspelt esrs option, said at start-up.

Hooks run in the order of `EsrsFix.parts`: the label guard before a learned flow is labelled, learned routing
before detection judges an answer. They speak mitmproxy's public API only; its internals live in `compat`.

mitmproxy is given one addon, `EsrsFix`, whose hooks are its parts' own, in that order (`_one_hook`): for every event
mitmproxy walks each addon it knows and builds the hook's arguments anew for each one that has the hook, which for
seven parts cost a keep-alive request 3 % of stock mitmproxy's whole work (callgrind, docs/benchmarks.md). The parts
are written as mitmproxy's built-ins are, and each declares its options in `load` and validates them in `configure`;
`EsrsFix` only calls them as mitmproxy would: in order, an awaitable one returns awaited before the next runs, an
exception ending the event for the parts after it (as it does for the addons of one script).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .. import compat
from .decision import Decision
from .detection import Detection
from .inspection import Inspection
from .labels import Labels
from .options import Spelling
from .responses import ErrorResponses
from .rewrite import Rewrite
from .upgrade import Upgrade
from .upgrading import Upgrading

#: The mitmproxy hooks esrs-fix's parts implement (tests/test_decision.py checks that no part has another).
HOOKS = (
    "load",
    "configure",
    "running",
    "done",
    "requestheaders",
    "request",
    "responseheaders",
    "response",
    "error",
    "server_disconnected",
    "tls_failed_server",
)


class EsrsFix:
    """esrs-fix inside mitmproxy: the one addon `esrs_fix.py` gives mitmproxy. Its parts (`parts`, one concern each,
    by name too) do the work; each hook of this addon is theirs, called in their order."""

    name = "esrs-fix"

    def __init__(self) -> None:
        #: The attempts and what they taught (learned targets, attempts in flight, remembered failures).
        self.upgrade = Upgrade()
        error_responses = ErrorResponses()
        self.labels = Labels()
        self.rewrite = Rewrite()
        self.decision = Decision(self.labels, error_responses, self.upgrade, self.rewrite)
        self.upgrading = Upgrading(self.upgrade, self.decision, self.labels, error_responses)
        self.detection = Detection(self.decision, self.labels, error_responses, self.upgrade)
        self.inspection = Inspection(self.upgrade.learned)
        self.parts: list[Any] = [
            self.labels,
            self.upgrading,
            self.detection,
            self.rewrite,
            self.decision,
            self.inspection,
            Spelling(),
        ]
        for hook in HOOKS:
            handlers = [getattr(part, hook) for part in self.parts if hasattr(part, hook)]
            if handlers:
                setattr(self, hook, _one_hook(handlers))
        for part in self.parts:  # the parts' commands, where mitmproxy looks for them (esrs.upgraded, esrs.decode)
            for attribute in dir(part):
                if not attribute.startswith("_") and hasattr(getattr(part, attribute), "command_name"):
                    setattr(self, attribute, getattr(part, attribute))

    def unload(self) -> None:
        """For a test or a bench driving the addon by hand: what mitmproxy's `done` hook does (the early detection
        unwrapped, the view unregistered, the report closed)."""
        if (done := getattr(self, "done", None)) is not None:
            done()


def _one_hook(handlers: Sequence[Callable[..., Any]]) -> Callable[..., Any]:
    """The parts' handlers of one hook as one: each called in turn, as mitmproxy calls the hooks of several addons;
    when one returns an awaitable, the rest run after it (returned as one awaitable). A single handler is itself."""
    if len(handlers) == 1:
        return handlers[0]

    def hook(*args: Any) -> Awaitable[None] | None:
        for n, handler in enumerate(handlers):
            result = handler(*args)
            if result is not None and inspect.isawaitable(result):
                return _after(result, handlers[n + 1 :], args)
        return None

    return hook


async def _after(first: Awaitable[Any], handlers: Sequence[Callable[..., Any]], args: tuple[Any, ...]) -> None:
    await first
    for handler in handlers:
        result = handler(*args)
        if result is not None and inspect.isawaitable(result):
            await result


def as_script(namespace: dict[str, Any]) -> None:
    """What a script that gives mitmproxy esrs-fix does with its own globals (`esrs_fix.py`, the single file): every
    hook name bound to None, which mitmproxy skips at a fraction of the cost of a name a module lacks (see
    `compat.bind_hook_names`)."""
    compat.bind_hook_names(namespace)
