"""The label guard: only esrs-fix may label an answer (`X-ESRS-Fix`), and every answer it makes or upgrades says so."""

from __future__ import annotations

import logging
import weakref

from mitmproxy import http

from ..core.names import LABEL_HEADER, METADATA_KEY, UPSTREAM_LABEL_HEADER, printable
from .flowrecord import address
from .responses import lowercase_label

log = logging.getLogger("esrs_fix")

_LABEL_BYTES = LABEL_HEADER.lower().encode()
_LABEL_NAME = LABEL_HEADER.encode()


class Labels:
    """Labels esrs-fix's own answers, and renames an upstream's own label before the client sees it."""

    name = "esrs-fix.labels"

    def __init__(self) -> None:
        # Responses esrs-fix made or upgraded: they carry its label legitimately.
        self._ours: weakref.WeakSet[http.Response] = weakref.WeakSet()

    def ours(self, response: http.Response) -> bool:
        """Whether esrs-fix made or labelled `response`."""
        return response in self._ours

    def labelled(self, response: http.Response, label: str | None = None, *, to: http.Request) -> http.Response:
        """Mark `response` as esrs-fix's answer to `to` (it keeps a label it already has when `label` is None).

        An HTTP/2 or HTTP/3 client gets the label's name in lower case, as those protocols want it: mitmproxy would
        lowercase it anyway, with a log line for every labelled answer."""
        if label is not None:
            headers = response.headers
            fields = headers.fields
            if any(name.lower() == _LABEL_BYTES for name, _ in fields):
                headers[LABEL_HEADER] = label
            else:  # the common case (the guard renamed any upstream label): appended, at a tenth of the cost of `[]=`
                headers.fields = (*fields, (_LABEL_NAME, label.encode("utf-8", "surrogateescape")))
        if not to.http_version.startswith("HTTP/1"):
            lowercase_label(response)
        self._ours.add(response)
        return response

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        # Here, not in `response`, so that streamed bodies are covered too. A flow read back from a file keeps what it
        # recorded, esrs-fix's own label included.
        response = flow.response
        if response is None or not flow.live:
            return
        # A plain scan of the raw fields: five times cheaper than `in headers`, which runs on every response.
        if any(name.lower() == _LABEL_BYTES for name, _ in response.headers.fields) and response not in self._ours:
            values = response.headers.get_all(LABEL_HEADER)
            del response.headers[LABEL_HEADER]
            response.headers.set_all(UPSTREAM_LABEL_HEADER, values)
            flow.metadata[f"{METADATA_KEY}_upstream_label"] = values
            log.warning(
                "esrs-fix: %s (%s): the upstream sent its own %s header %s; renamed to %s so that it is not taken "
                "for this addon's label",
                printable(flow.request.pretty_url),
                address(flow.server_conn.peername or flow.server_conn.address),
                LABEL_HEADER,
                printable(repr(values)),
                UPSTREAM_LABEL_HEADER,
            )
