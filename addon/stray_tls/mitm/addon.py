"""esrs-fix inside mitmproxy: spot TLS where HTTP was expected, explain it, upgrade or rewrite it only when asked.

One addon per concern, as mitmproxy's built-ins are written, each declaring and validating its own options:

- `Labels` (labels.py): only esrs-fix labels an answer; the upstream's own label is renamed;
- `Upgrading` (upgrading.py): esrs_upgrade and its times; learned routing (requests to known targets);
- `Detection` (detection.py): esrs_early, esrs_hold_timeout; the hooks that see answers, errors and handshakes;
- `Rewrite` (rewrite.py): esrs_rewrite, esrs_status; the synthetic answer;
- `Decision` (decision.py): esrs_filter, esrs_report; the one decision of what a client gets, and the flow's record;
- `Inspection` (inspection.py): the esrs.upgraded and esrs.decode commands, the TLS records view;
- `Spelling` (options.py): a misspelt esrs option, said at start-up.

Hooks run in the order of `EsrsFix.addons`: the label guard before a learned flow is labelled, learned routing
before detection judges an answer. They speak mitmproxy's public API only; its internals live in `compat`.
"""

from __future__ import annotations

from .decision import Decision
from .detection import Detection
from .inspection import Inspection
from .labels import Labels
from .options import Spelling
from .responses import ErrorResponses
from .rewrite import Rewrite
from .upgrade import Upgrade
from .upgrading import Upgrading


class EsrsFix:
    """esrs-fix's addons, wired together: `addons` is the list `esrs_fix.py` gives mitmproxy (its parts by name too)."""

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
        self.addons: list[object] = [
            self.labels,
            self.upgrading,
            self.detection,
            self.rewrite,
            self.decision,
            self.inspection,
            Spelling(),
        ]

    def unload(self) -> None:
        """For a test or a bench driving the addons by hand: what mitmproxy's `done` hook does to each (the early
        detection unwrapped, the view unregistered, the report closed). Not `done`: mitmproxy calls that on each
        part itself."""
        for addon in self.addons:
            if (done := getattr(addon, "done", None)) is not None:
                done()
