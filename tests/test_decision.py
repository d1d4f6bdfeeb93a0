"""The one decision (`mitm/decision.py`) from its inputs alone, exhaustively; and esrs-fix's addons, one concern each,
each declaring its own options."""

from __future__ import annotations

import itertools

import pytest
from mitmproxy import http
from mitmproxy.test import taddons

from stray_tls.core.findings import REWRITABLE, UPGRADABLE, Confidence, Finding, Kind
from stray_tls.core.names import OPTION_NAMES
from stray_tls.mitm.addon import EsrsFix
from stray_tls.mitm.causes import AttemptCause, failure
from stray_tls.mitm.decision import ClientAnswer, choose
from stray_tls.mitm.upgrade import UpgradeOutcome

ANSWER = http.Response.make(200, b"over TLS")


def outcomes() -> list[UpgradeOutcome | None]:
    """No upgrade made, an upgraded answer, and a failure of every cause."""
    failed = [UpgradeOutcome(None, failure=failure(cause, "d")) for cause in AttemptCause]
    return [None, UpgradeOutcome(None, answer=ANSWER), *failed]


def expected(kind: Kind, outcome: UpgradeOutcome | None, in_scope: bool, rewrite: bool) -> ClientAnswer:
    """The decision as docs/how-it-works.md and DESIGN.md state it, written independently of `choose`."""
    if outcome is not None and outcome.answer is not None:
        return ClientAnswer.UPGRADED  # the real answer beats a synthetic one
    cause = outcome.failure.cause if outcome is not None and outcome.failure is not None else None
    if cause is AttemptCause.NOT_TLS and kind is Kind.PLAIN_HTTP_400:
        return ClientAnswer.PASSED_ON  # evidence the port speaks plain HTTP: the server's own page, untouched
    if in_scope and rewrite and kind in REWRITABLE:
        return ClientAnswer.REWRITTEN
    if cause is not None and kind in UPGRADABLE:
        return ClientAnswer.UPGRADE_FAILED  # a proven TLS port whose TLS attempt failed: the labelled failure
    return ClientAnswer.AS_IS


@pytest.mark.parametrize("kind", list(Kind))
def test_the_decision_from_its_inputs_alone(kind: Kind) -> None:
    finding = Finding(kind, Confidence.HIGH, "x", detail="d")
    seen = set()
    for outcome, in_scope, rewrite in itertools.product(outcomes(), (False, True), (False, True)):
        answer = choose(finding, outcome, in_scope=in_scope, rewrite=rewrite)
        assert answer is expected(kind, outcome, in_scope, rewrite), (kind, outcome, in_scope, rewrite)
        seen.add(answer)
    assert ClientAnswer.UPGRADED in seen and ClientAnswer.AS_IS in seen


def test_every_answer_is_reachable() -> None:
    reached = {
        choose(Finding(kind, Confidence.HIGH, "x"), outcome, in_scope=in_scope, rewrite=rewrite)
        for kind in Kind
        for outcome in outcomes()
        for in_scope in (False, True)
        for rewrite in (False, True)
    }
    assert reached == set(ClientAnswer)


def test_each_addon_declares_its_own_options_and_together_all_of_them() -> None:
    fix = EsrsFix()
    try:
        declared: dict[str, set[str]] = {}
        with taddons.context(loadcore=False) as tctx:
            for part in fix.parts:
                before = set(tctx.options.keys())
                tctx.master.addons.add(part)
                declared[type(part).__name__] = set(tctx.options.keys()) - before
                assert declared[type(part).__name__] == set(getattr(part, "OPTIONS", ())), type(part).__name__
        owners = [name for name, options in declared.items() if options]
        assert sorted(owners) == ["Decision", "Detection", "Rewrite", "Upgrading"]
        assert set().union(*declared.values()) == set(OPTION_NAMES)
        assert sum(len(o) for o in declared.values()) == len(OPTION_NAMES)  # each declared once
        names = [getattr(part, "name", "") for part in fix.parts]
        assert len(set(names)) == len(names) and all(n.startswith("esrs-fix.") for n in names)
    finally:
        fix.unload()


def test_hooks_run_in_the_order_that_keeps_the_label_guard_and_learned_routing_first() -> None:
    """mitmproxy calls each hook on the addons in list order: the label guard renames an upstream's own label before
    a learned flow is labelled, and learned routing takes its flows before detection judges an answer."""
    fix = EsrsFix()
    order = [type(a).__name__ for a in fix.parts]
    assert order.index("Labels") < order.index("Upgrading") < order.index("Detection")
    fix.unload()


def test_esrs_fix_calls_every_hook_its_parts_have() -> None:
    """mitmproxy sees one addon; a hook a part implements but `HOOKS` does not list would never be called."""
    import mitmproxy.tools.main  # noqa: F401  (imports every layer, and so defines every hook)
    from mitmproxy import hooks

    from stray_tls.mitm.addon import HOOKS

    fix = EsrsFix()
    try:
        implemented = {name for part in fix.parts for name in dir(part) if name in hooks.all_hooks}
        assert {"requestheaders", "response", "configure", "tls_failed_server"} <= implemented
        assert implemented <= set(HOOKS), implemented - set(HOOKS)
        for name in implemented:
            assert callable(getattr(fix, name))
        assert not hasattr(fix, "addons")  # mitmproxy would walk the parts as addons of their own on every event
    finally:
        fix.unload()


def test_a_hook_of_several_parts_calls_them_in_order_each_after_the_awaitable_before_it() -> None:
    import asyncio

    from stray_tls.mitm.addon import _one_hook

    seen: list[str] = []

    def sync(name: str):  # type: ignore[no-untyped-def]
        return lambda flow: seen.append(f"{name}:{flow}")

    async def slow(flow: str) -> None:
        await asyncio.sleep(0)
        seen.append(f"slow:{flow}")

    def starts_slow(flow: str):  # type: ignore[no-untyped-def]
        seen.append(f"starts:{flow}")
        return slow(flow)

    assert _one_hook([sync("only")]) is not None and _one_hook([seen.append]) == seen.append  # one handler: itself
    assert _one_hook([sync("a"), sync("b")])("f") is None and seen == ["a:f", "b:f"]
    seen.clear()
    pending = _one_hook([sync("a"), starts_slow, sync("c")])("f")
    assert seen == ["a:f", "starts:f"]  # what follows an awaitable waits for it
    asyncio.run(pending)  # type: ignore[arg-type]
    assert seen == ["a:f", "starts:f", "slow:f", "c:f"]


def test_the_parts_commands_are_esrs_fixs() -> None:
    fix = EsrsFix()
    try:
        with taddons.context(fix) as tctx:
            assert tctx.master.commands.call("esrs.upgraded") == "esrs-fix: no learned targets"
            assert "unexpected_message" in tctx.master.commands.call(
                "esrs.decode", "15", "03", "01", "00", "02", "02", "0a"
            )
    finally:
        fix.unload()
