"""The bench's raw figures: a run writes them where git ignores them; the figures the README cites change only
when `--out docs/bench-results.json` says so."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CITED = ROOT / "docs" / "bench-results.json"


def test_a_bench_run_writes_its_figures_where_git_ignores_them() -> None:
    from scripts.benchparts import main

    default = main.parse([], "").out
    assert main.parse(["--quick", "--only", "micro"], "").out == default  # a smoke run too
    assert default != CITED
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: cannot ask git what it ignores")
    ignored = subprocess.run([git, "check-ignore", "-q", str(default)], cwd=ROOT, check=False)
    assert ignored.returncode == 0, f"{default} is not ignored by git: a bench run would leave it to be committed"
    assert main.parse(["--out", str(CITED)], "").out == CITED  # the cited figures, when asked for by name


def test_the_upgrade_goals_are_judged_from_the_measured_values() -> None:
    from scripts.benchparts import upgrade, upgradeloads, upgradesetup

    assert (
        upgradesetup.verdict(1.05, upgradesetup.LEARNED_GOAL),
        upgradesetup.verdict(1.051, upgradesetup.LEARNED_GOAL),
    ) == ("ok", "MISS")
    assert upgrade.paired([2.0, 3.3], [2.0, 3.0]) == pytest.approx([1.0, 1.1])
    one_attempt = {"plaintext_requests": 1, "handshakes": 64, "handshakes_before_first_answer": 1}
    assert all(upgradeloads.crowd_goals("slow_handshake", one_attempt, right=64).values())
    for missed, saw, right in (
        ("every_answer_right", one_attempt, 63),
        ("plaintext_requests_at_most_2", {**one_attempt, "plaintext_requests": 3}, 64),
        ("one_handshake_before_the_first_answer", {**one_attempt, "handshakes_before_first_answer": 2}, 64),
        ("handshakes_at_most_one_per_client", {**one_attempt, "handshakes": 65}, 64),
    ):
        goals = upgradeloads.crowd_goals("slow_handshake", saw, right)
        assert [k for k, ok in goals.items() if not ok] == [missed]
    # the far target: requests sent before the first plaintext answer was back could not know; no plaintext goal
    assert all(upgradeloads.crowd_goals("far", {**one_attempt, "plaintext_requests": 60}, right=64).values())


@pytest.mark.e2e
def test_the_upgrade_crowd_counts_at_the_server(tmp_path: Path) -> None:
    """The crowd part on real mitmdumps (this interpreter's mitmproxy): esrs-fix meets its goals, and the counts
    tell it from stock, which begins a handshake per client before the slow server's first answer."""
    from scripts.benchparts import upgrade, upgradeloads, upgradesetup
    from scripts.benchparts.common import Setup, Wrong

    setup = Setup(tmp_path, rounds=1, quick=True, pcap_mb=1)
    wrong = Wrong()
    peers = upgradesetup.Peers.start(tmp_path, 1)
    try:
        data = upgradeloads.crowd(setup, peers, wrong)
    finally:
        peers.stop()
    assert wrong.count == 0, wrong.examples
    for case in data["cases"].values():
        assert case["addon"]["goals_met"], case["addon"]
        assert case["addon"]["tls_answers"] == case["stock"]["tls_answers"] == upgradesetup.CROWD
        assert case["stock"]["plaintext_requests"] == 0
    slow = data["cases"]["slow_handshake"]
    assert slow["stock"]["handshakes_before_first_answer"] > 1, slow["stock"]
    assert any(line.lstrip().startswith("crowd:") for line in upgrade.crowd_lines(data)), "the table has no crowd rows"


@pytest.mark.e2e
def test_instructions_per_learned_request_are_counted_and_repeat(tmp_path: Path) -> None:
    """The instructions part on real mitmdumps under callgrind (--quick batches): every answer right, a count per
    request for each proxy (and for each leg of the first request), and the count a measure can rest on: the same
    batch through the same mitmdump counts again within 3 %, wherever the machine's other work is."""
    from scripts.benchparts import instructions, upgrade, upgradesetup
    from scripts.benchparts.common import Setup, Wrong

    if instructions.available():
        pytest.skip(instructions.available())
    setup = Setup(tmp_path, rounds=1, quick=True, pcap_mb=1)
    wrong = Wrong()
    peers = upgradesetup.Peers.start(tmp_path, 25)  # the first requests go to a new target each
    try:
        result = instructions.case(setup, peers, wrong, "keepalive")
        first = instructions.first(setup, peers, wrong)
        proxy = instructions.start(tmp_path, peers, "again", addon=False)
        try:
            url = upgradesetup.target(peers.keep, "", "https")
            counts = [
                instructions.counted(
                    proxy, tmp_path, "again", lambda: asyncio.run(upgrade._batch(proxy, url, 10, "stock", True, wrong))
                )
                for _ in range(3)
            ]
        finally:
            proxy.mitmdump.stop(timeout=120)
    finally:
        peers.stop()
    assert wrong.count == 0, wrong.examples
    per = result["instructions_per_request"]
    assert per["stock"][0] > 1e6 and per["addon"][0] > 1e6  # a request through mitmdump is millions of them
    assert result["ratio"] == per["addon"][0] / per["stock"][0]
    legs = first["instructions_per_request"]
    assert min(legs.values()) > 1e6
    assert first["ratio"] == legs["addon_upgraded"] / (legs["stock_https"] + legs["stock_plaintext"])
    assert legs["addon_upgraded"] > legs["stock_https"]  # the upgrade makes both requests
    # the first counted batch after the warm one still fills caches: the second and third repeat each other
    assert abs(counts[2] - counts[1]) / counts[1] < 0.03, counts
