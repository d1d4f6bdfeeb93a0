"""Names every part of esrs-fix shares: the label header, the flow metadata key, the options, the defaults.

Defined once here, so that the addon, the content view, the lab, the bench and the tests cannot drift apart.
"""

from __future__ import annotations

#: The header that labels every answer this addon made or touched.
LABEL_HEADER = "X-ESRS-Fix"
#: Where an upstream's own X-ESRS-Fix header goes, so that only the addon's answers carry the label.
UPSTREAM_LABEL_HEADER = "X-ESRS-Fix-Upstream"
#: The key of the structured finding in `flow.metadata`.
METADATA_KEY = "esrs_fix"
#: The marker a reported flow gets (mitmweb and the console show it as an emoji).
MARKER = ":warning:"
#: The marker of a flow healed over TLS: the client got the server's real answer.
HEALED_MARKER = ":adhesive_bandage:"
#: The metadata key of the flow esrs-fix sent over TLS in place of a plaintext one (it holds the healed flow's id).
HEAL_METADATA_KEY = "esrs_fix_heal"
#: The prefix of every log line, comment and answer body the addon writes.
PREFIX = "esrs-fix"

OPT_REWRITE = "esrs_rewrite"
OPT_STATUS = "esrs_status"
OPT_FILTER = "esrs_filter"
OPT_EARLY = "esrs_early"
OPT_HOLD_TIMEOUT = "esrs_hold_timeout"
OPT_REPORT = "esrs_report"
OPT_UPGRADE = "esrs_upgrade"
OPTION_NAMES = (OPT_REWRITE, OPT_STATUS, OPT_FILTER, OPT_EARLY, OPT_HOLD_TIMEOUT, OPT_REPORT, OPT_UPGRADE)

#: Seconds to wait for a TLS record that has begun to complete (`esrs_hold_timeout`'s default).
DEFAULT_HOLD_TIMEOUT = 5

#: Seconds the TLS attempt of an upgrade may take before the client gets the fallback answer.
UPGRADE_TIMEOUT = 30.0

#: The content view's name, as mitmweb and the console list it.
VIEW_NAME = "TLS records"
