"""A mitmproxy script for the upgrade bench only (`mitmdump -s esrs_fix.py -s upgrade_probe.py`): the learned count.

A request for `http://esrs-bench.probe/` is answered by the proxy itself, with the output of esrs-fix's console
command `esrs.upgraded` ("esrs-fix: N learned target(s) (at most 1024)", then one line per target). Nothing goes
upstream. Every other request passes untouched; load it after esrs_fix.py.
"""

from __future__ import annotations

from mitmproxy import ctx, http

PROBE_HOST = "esrs-bench.probe"


class LearnedProbe:
    def request(self, flow: http.HTTPFlow) -> None:
        if flow.request.host == PROBE_HOST:
            text = str(ctx.master.commands.call("esrs.upgraded"))
            flow.response = http.Response.make(200, text.encode(), {"Content-Type": "text/plain; charset=utf-8"})


addons = [LearnedProbe()]
