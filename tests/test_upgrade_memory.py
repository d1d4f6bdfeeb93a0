"""The upgrade's memories (no network): a remembered failure expires and stops costing clean traffic; the memory of
failures is bounded like the learned targets; only a failure about a proven TLS port is remembered."""

from __future__ import annotations

from mitmproxy.test import tflow

from stray_tls.core import findings
from stray_tls.mitm.causes import AttemptCause, Failure
from stray_tls.mitm.learned import Target
from stray_tls.mitm.upgrade import Upgrade, UpgradeOutcome

from .conftest import FIELD_ALERT


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


ALERT = findings.from_response_head(FIELD_ALERT)
CERTIFICATE = Failure(AttemptCause.CERTIFICATE, "certificate verification failed: self-signed certificate", "")


def test_a_remembered_failure_expires_and_stops_making_clean_traffic_pay() -> None:
    clock = Clock()
    upgrade = Upgrade(clock)
    upgrade.failure_ttl = 30
    assert ALERT is not None and not upgrade
    shared = upgrade._conclude(Target("a", 443), tflow.tflow(), ALERT, UpgradeOutcome(None, failure=CERTIFICATE))
    assert shared is CERTIFICATE and upgrade and upgrade.failed(Target("a", 443)) is not None
    clock.now += 31
    assert not upgrade  # dropped without anybody asking for that target again
    assert upgrade.failed(Target("a", 443)) is None


def test_the_memory_of_failures_is_bounded() -> None:
    upgrade = Upgrade(Clock())
    upgrade.learned.capacity = 8
    assert ALERT is not None
    for i in range(50):
        upgrade._conclude(Target(f"10.0.0.{i}", 443), tflow.tflow(), ALERT, UpgradeOutcome(None, failure=CERTIFICATE))
    assert len(upgrade._failed) == 8
    assert upgrade.failed(Target("10.0.0.49", 443)) is not None and upgrade.failed(Target("10.0.0.0", 443)) is None


def test_only_a_failure_about_a_proven_tls_port_is_remembered() -> None:
    upgrade = Upgrade(Clock())
    silent = findings.silent_close()
    busy = Failure(AttemptCause.BUSY, "no TLS attempt could start", "")
    assert ALERT is not None
    assert upgrade._conclude(Target("s", 80), tflow.tflow(), silent, UpgradeOutcome(None, failure=CERTIFICATE)) is None
    assert upgrade._conclude(Target("b", 443), tflow.tflow(), ALERT, UpgradeOutcome(None, failure=busy)) is None
    assert not upgrade._failed and not upgrade.learned
