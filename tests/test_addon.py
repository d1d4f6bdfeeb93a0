"""The addon through mitmproxy's own test harness (taddons, tflow): options, annotations, scope, fallbacks."""

from __future__ import annotations

import logging

import pytest
from mitmproxy import exceptions, http
from mitmproxy.test import taddons, tflow

from stray_tls import compat
from stray_tls.core import findings
from stray_tls.core.names import LABEL_HEADER, MARKER, METADATA_KEY
from stray_tls.lab.servers import NGINX_400_BODY
from stray_tls.mitm.addon import EsrsFix
from stray_tls.mitm.responses import rewritten_response

from .conftest import FIELD_ALERT, SUMMARY, hook


def stray_flow(addon: EsrsFix, url: str = "http://esrs.example:443/") -> http.HTTPFlow:
    """A flow as the early detection leaves it: the synthetic 502 in place of the upstream's answer."""
    f = tflow.tflow()
    f.request = http.Request.make("GET", url)
    response = addon.detection._on_records(f.request, FIELD_ALERT, True)
    assert response is not None
    f.response = response
    return f


@pytest.mark.parametrize(
    ("status", "headline"),
    [(200, b"SYNTHETIC 200 OK: "), (429, b"SYNTHETIC 429 Too Many Requests: "), (299, b"SYNTHETIC 299: ")],
)
def test_a_synthetic_answer_names_its_status_with_the_standard_reason(status: int, headline: bytes) -> None:
    finding = findings.from_response_head(FIELD_ALERT)
    assert finding is not None
    response = rewritten_response(finding, status)
    assert response.status_code == status and headline in (response.content or b"")


def test_options_are_validated(addon: EsrsFix) -> None:
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError, match="esrs_status"):
            tctx.configure(addon, esrs_status=700)
        with pytest.raises(exceptions.OptionsError, match="esrs_status"):
            tctx.configure(addon, esrs_status=99)
        with pytest.raises(exceptions.OptionsError, match="esrs_filter"):
            tctx.configure(addon, esrs_filter="~d [unclosed")
        tctx.configure(addon, esrs_status=204, esrs_filter="~d esrs")
        assert addon.decision.filter is not None
        tctx.configure(addon, esrs_filter="")
        assert addon.decision.filter is None


def test_stray_alert_is_annotated_and_answered_with_a_labelled_502(addon: EsrsFix, caplog) -> None:
    caplog.set_level(logging.WARNING)
    with taddons.context(addon):
        f = stray_flow(addon)
        hook(addon, "response", f)
        assert f.response is not None and f.response.status_code == 502
        assert f.response.headers[LABEL_HEADER] == f"detected; {SUMMARY}"
        content = f.response.content or b""
        assert SUMMARY.encode() in content and b"15 03 01 00 02 02 0a" in content
        assert f.marked == MARKER
        assert f.comment == f"esrs-fix: detected {SUMMARY}; the client got esrs-fix's labelled 502"
        meta = f.metadata[METADATA_KEY]
        assert meta["kind"] == "tls_records" and meta["raw_hex"] == "1503010002020a" and meta["rewritten"] is False
        assert meta["records"][0]["alert"]["description_name"] == "unexpected_message"
    (line,) = [r.getMessage() for r in caplog.records if "esrs-fix" in r.getMessage()]
    assert "http://esrs.example:443/" in line and SUMMARY in line and "not rewritten" in line


def test_rewrite_is_off_by_default_and_scoped_by_the_filter(addon: EsrsFix) -> None:
    with taddons.context(addon) as tctx:
        default = stray_flow(addon)
        hook(addon, "response", default)
        assert default.response is not None and default.response.status_code == 502
        tctx.configure(addon, esrs_rewrite=True, esrs_status=200, esrs_filter="~d esrs.example")
        inside = stray_flow(addon, "http://esrs.example:443/")
        outside = stray_flow(addon, "http://other.example:443/")
        hook(addon, "response", inside)
        hook(addon, "response", outside)
        assert inside.response is not None and inside.response.status_code == 200
        assert inside.response.headers[LABEL_HEADER] == f"synthetic 200; {SUMMARY}"
        assert b"SYNTHETIC 200" in (inside.response.content or b"")
        assert inside.metadata[METADATA_KEY]["rewritten_status"] == 200
        assert outside.response is not None and outside.response.status_code == 502
        assert outside.metadata[METADATA_KEY]["rewritten"] is False
        assert outside.marked == MARKER  # reported although not rewritten


def test_clean_responses_are_untouched(addon: EsrsFix) -> None:
    with taddons.context(addon) as tctx:
        tctx.configure(addon, esrs_rewrite=True)
        for status, body in [
            (200, b"hello"),
            (200, b"\x15\x03\x01 binary, not records"),
            (400, b"bad request"),
            (204, b""),
        ]:
            f = tflow.tflow(resp=True)
            assert f.response is not None
            f.response.status_code = status
            f.response.content = body
            before = f.response.get_state()
            hook(addon, "response", f)
            assert f.response.get_state() == before
            assert not f.marked and METADATA_KEY not in f.metadata


def test_plain_http_400_page_is_rewritable_and_tls_body_only_reported(addon: EsrsFix) -> None:
    with taddons.context(addon) as tctx:
        f = tflow.tflow(resp=True)
        assert f.response is not None
        f.response.status_code = 400
        f.response.headers["content-type"] = "text/html"
        f.response.content = NGINX_400_BODY  # nginx's whole page, as nginx sends it
        hook(addon, "response", f)
        assert f.metadata[METADATA_KEY]["kind"] == "plain_http_400"
        assert f.response.status_code == 400  # not rewritten: rewriting is off
        tctx.configure(addon, esrs_rewrite=True, esrs_status=299)
        g = tflow.tflow(resp=True)
        assert g.response is not None
        g.response.content = FIELD_ALERT
        hook(addon, "response", g)
        assert g.metadata[METADATA_KEY]["kind"] == "tls_in_body"
        # reported, not rewritten: the answer has a real HTTP status
        assert g.response.status_code == 200 and LABEL_HEADER not in g.response.headers
        assert g.metadata[METADATA_KEY]["rewritten"] is False
        h = tflow.tflow(resp=True)
        assert h.response is not None
        h.response.status_code = 400
        h.response.content = b"Client sent an HTTP request to an HTTPS server.\n"
        hook(addon, "response", h)
        assert h.response.status_code == 299 and h.response.headers[LABEL_HEADER].startswith("synthetic 299;")


def test_error_hook_fallback_recovers_the_bytes(addon: EsrsFix) -> None:
    with taddons.context(addon):
        f = tflow.tflow(err=True)
        assert f.error is not None
        f.error.msg = "Cannot parse HTTP response: Bad HTTP response line: b'\\x15\\x03\\x01\\x00\\x02\\x02'"
        hook(addon, "error", f)
        assert f.comment == f"esrs-fix: detected {SUMMARY}; the client got mitmproxy's own error"
        assert f.marked == MARKER
        assert f.metadata[METADATA_KEY]["raw_hex"] == "1503010002020a"
        g = tflow.tflow(err=True)
        assert g.error is not None
        g.error.msg = "Connection refused"
        hook(addon, "error", g)
        assert not g.marked


def test_early_detection_is_installed_and_removed(addon: EsrsFix) -> None:
    from mitmproxy.proxy.layers.http import _http1

    original = _http1.Http1Client.read_headers
    with taddons.context(addon) as tctx:
        tctx.configure(addon, esrs_early=True)
        assert addon.detection.early.active and _http1.Http1Client.read_headers is not original
        tctx.configure(addon, esrs_early=False)
        assert not addon.detection.early.active and _http1.Http1Client.read_headers is original


def test_missing_internals_give_one_warning_and_public_hooks_still_work(addon: EsrsFix, monkeypatch, caplog) -> None:
    def gone(self: object) -> None:
        raise AttributeError("module 'mitmproxy.proxy.layers.http._http1' has no attribute 'Http1Client'")

    monkeypatch.setattr(compat._Internals, "__init__", gone)
    caplog.set_level(logging.WARNING)
    with taddons.context(addon) as tctx:
        tctx.configure(addon, esrs_early=True)
        assert not addon.detection.early.active
        warnings = [r.getMessage() for r in caplog.records if "early detection is off" in r.getMessage()]
        assert len(warnings) == 1 and "Http1Client" in warnings[0] and "esrs_rewrite cannot apply" in warnings[0]
        f = tflow.tflow(err=True)
        assert f.error is not None
        f.error.msg = "unexpected server response: b'\\x15\\x03\\x01\\x00\\x02\\x02\\n'"
        hook(addon, "error", f)
        assert f.metadata[METADATA_KEY]["summary"] == SUMMARY


def test_unsupported_mitmproxy_major_keeps_early_detection_off(addon: EsrsFix, monkeypatch) -> None:
    monkeypatch.setattr(compat.versions, "mitmproxy_major", lambda: 99)
    assert not addon.detection.early.install()
    assert "not one of the tested majors" in addon.detection.early.reason


def test_options_changed_at_run_time_apply_to_new_flows(addon: EsrsFix) -> None:
    with taddons.context(addon) as tctx:
        first = stray_flow(addon)
        hook(addon, "response", first)
        tctx.options.update(esrs_rewrite=True, esrs_status=204)  # as `set` in the console does
        second = stray_flow(addon)
        hook(addon, "response", second)
        tctx.options.update(esrs_filter="~d nowhere.example")
        third = stray_flow(addon)
        hook(addon, "response", third)
        statuses = [f.response.status_code for f in (first, second, third) if f.response is not None]
        assert statuses == [502, 204, 502]


def test_a_users_comment_and_marker_are_kept(addon: EsrsFix) -> None:
    with taddons.context(addon):
        f = stray_flow(addon)
        f.comment = "ticket 4711: customer's proxy"
        f.marked = ":star:"
        hook(addon, "response", f)
        assert (
            f.comment
            == f"ticket 4711: customer's proxy\nesrs-fix: detected {SUMMARY}; the client got esrs-fix's labelled 502"
        )
        assert f.marked == ":star:"
        assert f.metadata[METADATA_KEY]["kind"] == "tls_records"


def test_a_flow_that_is_not_live_is_history(addon: EsrsFix) -> None:
    """Read back with -r: no renaming, no rewriting, no annotation (the real -r/-w run is in test_inspect)."""
    with taddons.context(addon) as tctx:
        tctx.configure(addon, esrs_rewrite=True)
        f = tflow.tflow(resp=True)
        assert f.response is not None
        f.live = False
        f.response.status_code = 400
        f.response.content = b"The plain HTTP request was sent to HTTPS port"
        f.response.headers[LABEL_HEADER] = "detected; recorded"
        before = f.get_state()
        hook(addon, "responseheaders", f)
        hook(addon, "response", f)
        assert f.get_state() == before


def test_the_upgraded_command_lists_learned_targets(addon: EsrsFix) -> None:
    from stray_tls.mitm.learned import Target

    with taddons.context(addon) as tctx:
        assert tctx.master.commands.execute("esrs.upgraded") == "esrs-fix: no learned targets"
        addon.upgrade.learned.remember(Target("esrs.lab", 443, "127.0.0.1:3128"), SUMMARY, "tls_records")
        out = tctx.master.commands.execute("esrs.upgraded")
        assert "esrs.lab:443 via 127.0.0.1:3128" in out and f"plaintext got: {SUMMARY}" in out


@pytest.mark.parametrize(
    ("mode", "sni"),
    [
        ("transparent", "esrs.example"),
        ("wireguard", "esrs.example"),
        ("regular", "10.0.0.7"),
        ("reverse:http://x", "10.0.0.7"),
    ],
)
def test_a_learned_request_in_an_address_mode_verifies_the_name_the_client_asked_for(
    addon: EsrsFix, mode: str, sni: str
) -> None:
    """Transparent, WireGuard, local, TUN, SOCKS5: the request's host is the address the client connected to, and the
    certificate must carry the name of its Host header; elsewhere the request's host, as mitmproxy's own https://
    choice. The route's name is set on the connection in every mode (reverse mode once took the client's SNI)."""
    from mitmproxy.proxy.mode_specs import ProxyMode

    from stray_tls.mitm.learned import Target

    with taddons.context(addon) as tctx:
        tctx.configure(addon, esrs_upgrade=True)
        f = tflow.tflow()
        f.client_conn.proxy_mode = ProxyMode.parse(mode)
        f.request.host, f.request.port = "10.0.0.7", 443
        f.request.headers["Host"] = "esrs.example"
        f.request.headers["Proxy-Connection"] = "keep-alive"
        f.server_conn.sni = None  # (tflow names one)
        addon.upgrade.learned.remember(Target("10.0.0.7", 443), SUMMARY, "tls_records")
        assert hook(addon, "requestheaders", f) is None
        assert f.request.scheme == "https"
        assert f.server_conn.sni == sni
        assert "Proxy-Connection" not in f.request.headers  # meant for a proxy: never sent to the origin


@pytest.mark.parametrize(
    ("option", "value"),
    [("esrs_upgrade_timeout", 0), ("esrs_upgrade_timeout", 3601), ("esrs_upgrade_retry_after", -1)],
)
def test_the_upgrades_time_options_are_validated(addon: EsrsFix, option: str, value: int) -> None:
    with taddons.context(addon) as tctx, pytest.raises(exceptions.OptionsError, match=option):
        tctx.configure(addon, **{option: value})


@pytest.mark.parametrize(
    ("mode", "name"),
    [("transparent", "esrs.example"), ("local", "esrs.example"), ("socks5", "esrs.example"), ("regular", "10.0.0.7")],
)
def test_the_tls_attempt_verifies_the_name_the_mode_gives(mode: str, name: str) -> None:
    """The upgrade's TLS attempt (SNI and certificate check) uses the name the learned path uses."""
    from mitmproxy.proxy.mode_specs import ProxyMode

    from stray_tls.mitm.route import tls_route

    f = tflow.tflow()
    f.client_conn.proxy_mode = ProxyMode.parse(mode)
    f.request.host = "10.0.0.7"
    f.request.headers["Host"] = "esrs.example"
    assert tls_route(f).sni == name


def test_upgrading_without_early_detection_says_what_it_cannot_upgrade(addon: EsrsFix, caplog) -> None:
    with caplog.at_level(logging.WARNING), taddons.context(addon) as tctx:
        tctx.configure(addon, esrs_early=False, esrs_upgrade=True)
    assert "esrs_upgrade upgrades only 'plain HTTP to HTTPS port' pages while early detection is off" in caplog.text
    assert "TLS records and silent closes need it" in caplog.text


def test_upgrading_with_early_detection_says_nothing_of_the_kind(addon: EsrsFix, caplog) -> None:
    with caplog.at_level(logging.WARNING), taddons.context(addon) as tctx:
        tctx.configure(addon, esrs_early=True, esrs_upgrade=True)
    assert addon.detection.early.active and "early detection is off" not in caplog.text


def test_a_stray_answer_makes_new_requests_to_its_address_wait_for_its_flow(addon: EsrsFix) -> None:
    """The moment stray TLS is read (before any hook of its flow runs), new requests to that address wait for the
    flow's decision instead of going out in plaintext; they go on once it decided (here: no attempt, plaintext)."""
    import asyncio

    async def run() -> None:
        with taddons.context(addon) as tctx:
            tctx.configure(addon, esrs_upgrade=True)
            stray = stray_flow(addon)  # early detection has read the field alert from esrs.example:443
            other = tflow.tflow()
            other.request = http.Request.make("GET", "http://esrs.example:443/")
            waiting = hook(addon, "requestheaders", other)
            assert waiting is not None  # it waits, where a clean request costs nothing
            task = asyncio.ensure_future(waiting)
            await asyncio.sleep(0.05)
            assert not task.done()
            elsewhere = tflow.tflow()
            elsewhere.request = http.Request.make("GET", "http://esrs.example:8443/")
            assert hook(addon, "requestheaders", elsewhere) is None  # another address does not wait
            addon.upgrade.clear_suspect(stray.request.host, stray.request.port)  # the stray flow decided
            await asyncio.wait_for(task, 5)
            assert other.request.scheme == "http"  # nothing was learned: plaintext, as it was sent

    asyncio.run(run())
