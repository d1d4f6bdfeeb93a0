"""The addon inside mitmproxy: its addons, the record of a flow, the responses esrs-fix makes, the report."""
