"""The addon inside mitmproxy: its addons, the record of a flow, the answers esrs-fix makes, the report."""
