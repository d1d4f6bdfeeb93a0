"""How esrs-fix's addons declare and validate their options, as mitmproxy's built-ins do (`load`, `configure`), and
the one-line errors a user gets for a bad value or a misspelt name.

Each addon declares its own options in `load` and validates them in `_configure`; `Options` gives every one the same
treatment: a `--set` value of the wrong type refused by name at start-up, a bad value refused at run time (mitmproxy
keeps the old one), and at start-up one error line instead of a traceback.
"""

from __future__ import annotations

import difflib
import logging

from mitmproxy import ctx, exceptions
from mitmproxy.addonmanager import Loader

from .. import compat
from ..core.names import OPTION_NAMES

log = logging.getLogger("esrs_fix")


class BadOption(exceptions.OptionsError):
    """A value `configure` refuses: the sentence names the option and the value."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"{option}: {problem}")
        self.option = option


class Options:
    """An addon's own options (`OPTIONS`), declared in `declare` and validated in `_configure` (raising `BadOption`)."""

    #: The options this addon declares.
    OPTIONS: tuple[str, ...] = ()

    def declare(self, loader: Loader) -> None:
        """Add the options (`loader.add_option`); called by `load`."""

    def load(self, loader: Loader) -> None:
        self.declare(loader)
        apply_deferred(loader, self.OPTIONS)

    def _configure(self, updated: set[str]) -> None:
        """Validate and apply the changed options; raise `BadOption` for a value that cannot be."""

    def configure(self, updated: set[str]) -> None:
        """Apply changed options. A bad value refused at run time (`:set`, mitmweb's options editor) raises, and
        mitmproxy keeps the old value; at start-up (the script loader configures every option at once) it is one
        error line instead of a traceback, the option keeps its default, and mitmdump's start-up check exits 1."""
        if not self.OPTIONS or not updated.issuperset(self.OPTIONS):
            self._configure(updated)
            return
        pending = set(updated)
        while True:
            try:
                self._configure(pending)
                return
            except BadOption as e:
                log.error("esrs-fix: %s", e)
                pending.discard(e.option)
                ctx.options.update(**{e.option: ctx.options.default(e.option)})


def apply_deferred(loader: Loader, names: tuple[str, ...]) -> None:
    """Refuse a `--set` value of the wrong type, naming the option.

    mitmproxy parses a script option's `--set` value only after the script has loaded, and when that fails it drops
    the value and runs on with the default. Applying our own deferred values here, via the public `options.set`,
    finds the bad value first. It is logged as an error, not raised: an OptionsError raised while a script registers
    is swallowed, whereas an error logged at startup makes mitmdump (its `errorcheck` addon) exit with status 1.
    """
    options = loader.master.options
    for name in names:
        values = compat.deferred_values(options, name)
        if values is None:
            continue
        try:
            options.set(*(f"{name}={v}" for v in values))
        except exceptions.OptionsError as e:
            log.error("esrs-fix: %s: invalid value %r (%s)", name, " ".join(values), e)


class Spelling:
    """A misspelt `--set esrs_...` is kept by mitmproxy as an option nobody declared, and silently ignored: said once,
    at start-up, with the nearest name."""

    name = "esrs-fix.spelling"

    def configure(self, updated: set[str]) -> None:
        if not updated.issuperset(OPTION_NAMES):  # at start-up only, when every option is configured at once
            return
        for name in compat.deferred_names(ctx.options):
            if name.startswith("esrs") and name not in OPTION_NAMES:
                near = difflib.get_close_matches(name, OPTION_NAMES, n=1)
                hint = f"; did you mean {near[0]}?" if near else f"; esrs-fix's options: {', '.join(OPTION_NAMES)}"
                log.warning("esrs-fix: unknown option %s is ignored%s", name, hint)
