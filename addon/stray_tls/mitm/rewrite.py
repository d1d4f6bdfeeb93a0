"""The synthetic answer (esrs_rewrite): a labelled status in place of stray TLS, for validating a connectivity check;
off by default, scoped by esrs_filter, and the fallback when an upgrade was not possible."""

from __future__ import annotations

from mitmproxy import ctx, http
from mitmproxy.addonmanager import Loader

from ..core.findings import Finding
from ..core.names import LABEL_HEADER, OPT_REWRITE, OPT_STATUS
from .causes import Failure
from .options import BadOption, Options
from .responses import rewritten_response


class Rewrite(Options):
    """Declares esrs_rewrite and esrs_status, and makes the synthetic answer when they apply."""

    name = "esrs-fix.rewrite"
    OPTIONS = (OPT_REWRITE, OPT_STATUS)

    def declare(self, loader: Loader) -> None:
        loader.add_option(
            OPT_REWRITE,
            bool,
            False,
            "Answer with a synthetic status (esrs_status), labelled with a "
            f"{LABEL_HEADER} header, instead of the 502 when the upstream answered with TLS records (complete or "
            "not), failed the TLS handshake with an alert, or sent its 'plain HTTP to HTTPS port' page. Never "
            "for a silent close or an HTTP response with a TLS body. For validating a connectivity check only: "
            "the synthetic answer is not the server's.",
        )
        loader.add_option(
            OPT_STATUS,
            int,
            200,
            "The status of the synthetic answer when esrs_rewrite is on (100-599).",
        )

    def _configure(self, updated: set[str]) -> None:
        if OPT_STATUS in updated:
            status = ctx.options.esrs_status
            if not 100 <= status <= 599:
                raise BadOption(OPT_STATUS, f"{status} is not an HTTP status code (100-599)")

    @staticmethod
    def on() -> bool:
        return bool(ctx.options.esrs_rewrite)

    @staticmethod
    def status() -> int:
        return int(ctx.options.esrs_status)

    def answer(self, finding: Finding, failure: Failure | None) -> http.Response:
        """The synthetic answer (unlabelled: the decision labels what it gives)."""
        return rewritten_response(finding, self.status(), failure)
