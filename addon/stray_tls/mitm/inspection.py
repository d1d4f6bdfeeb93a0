"""What a person asks of esrs-fix inside mitmproxy: the `esrs.upgraded` and `esrs.decode` commands, and the TLS
records content view."""

from __future__ import annotations

import datetime

from mitmproxy import command, exceptions
from mitmproxy.addonmanager import Loader

from ..core import text
from ..core.pasted import PasteError, parse_pasted
from . import contentview
from .flowrecord import iso
from .learned import LearnedTargets


class Inspection:
    """The commands and the content view."""

    name = "esrs-fix.inspection"

    def __init__(self, learned: LearnedTargets) -> None:
        self.learned = learned
        self._view: object = None

    def load(self, loader: Loader) -> None:
        self._view = contentview.register()

    def done(self) -> None:
        contentview.unregister(self._view)

    @command.command("esrs.upgraded")
    def upgraded(self) -> str:
        """The targets learned by esrs_upgrade: plaintext requests to them go over TLS at once."""
        entries = self.learned.entries()
        if not entries:
            return "esrs-fix: no learned targets"
        now = datetime.datetime.now(datetime.UTC).timestamp()
        lines = [f"esrs-fix: {len(entries)} learned target(s) (at most {self.learned.capacity})"]
        for e in entries:
            lines.append(
                f"{e.target}  learned {iso(e.learned_at)}, expires in {max(0, e.expires_at - now):.0f} s; "
                f"plaintext got: {e.plaintext_answer}"
            )
        return "\n".join(lines)

    @command.command("esrs.decode")
    def decode(self, *hexbytes: str) -> str:
        """Decode TLS records from hex, e.g. `esrs.decode 15 03 01 00 02 02 0a` (as `esrs-fix decode`)."""
        try:
            data = parse_pasted(" ".join(hexbytes))
        except PasteError as e:
            raise exceptions.CommandError(str(e)) from e
        return text.decode_text(data)[0]
