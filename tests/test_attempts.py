"""An upgrade's TLS attempts against what holds them: another addon's hook or an intercept (the attempt ends with the
client's answer, and is never sent later), several `--mode`s (a listener that cannot re-send remembers nothing),
many clients waiting on one target (they take turns within their own time), and tarpit targets (one client's slow
attempts leave the slots to other clients).

Real mitmdump on loopback for what the network decides; `Upgrade` with a fake clock for what pure logic decides.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from stray_tls.core import findings
from stray_tls.fieldkit.wire import Answer, send_and_read
from stray_tls.lab import servers
from stray_tls.mitm import causes, upgrade
from stray_tls.mitm.causes import AttemptCause, Failure
from stray_tls.mitm.learned import Target
from stray_tls.mitm.upgrade import Slots, Upgrade, UpgradeOutcome

from .conftest import FIELD_ALERT, reverse_modes

TIMEOUT = 30.0  # a bound on each client, not a speed claim
_ALERT = findings.from_response_head(FIELD_ALERT)
assert _ALERT is not None
ALERT: findings.Finding = _ALERT


def post(port: int, source: str = "127.0.0.1", target: str | None = None, method: str = "POST") -> Answer:
    """A plaintext POST (or GET) to mitmdump on `port` (absolute-form to `target` in regular mode), from `source`."""
    line = f"{method} http://{target}/ HTTP/1.1" if target else f"{method} / HTTP/1.1"
    body = "x=1" if method == "POST" else ""
    head = f"{line}\r\nHost: {target or 'localhost'}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    request = (head + body).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT, source_address=(source, 0)) as sock:
        return send_and_read(sock, request, time.monotonic() + TIMEOUT)


def eventually(check: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


# -- the client's answer ends the attempt

HOLD = 3.0  # seconds the second script holds a replayed request: longer than esrs_upgrade_timeout (1)

HOLDER = f"""
import asyncio

class Hold:
    async def request(self, flow):
        if flow.is_replay == "request":
            if HOW == "intercept":
                flow.intercept()  # as mitmweb's intercept does; "resumed" by hand a while later
                asyncio.get_running_loop().call_later({HOLD}, flow.resume)
            else:
                await asyncio.sleep({HOLD})

addons = [Hold()]
"""


@pytest.mark.e2e
@pytest.mark.parametrize("how", ["sleep", "intercept"])
def test_a_held_attempt_fails_as_held_and_never_reaches_the_server(
    how: str, cert, esrs, mitmdump, tmp_path: Path
) -> None:
    server = esrs()
    script = tmp_path / "hold.py"
    script.write_text(f"HOW = {how!r}\n{HOLDER}")
    args, (port,) = reverse_modes([f"http://127.0.0.1:{server.port}"])
    m = mitmdump([*args, "-s", str(script), "--set", "esrs_upgrade=true", "--set", "esrs_upgrade_timeout=1",
                  "--set", f"ssl_verify_upstream_trusted_ca={cert[0]}"])  # fmt: skip
    answer = post(port)
    assert answer.status == 502
    by = "an intercept" if how == "intercept" else "another addon's hook"
    assert (answer.label or "").startswith(f"upgrade failed: the TLS attempt was held before it went out by {by}")
    assert b"held the TLS attempt's request" in answer.body and b"esrs_upgrade_timeout" in answer.body
    time.sleep(HOLD + 2)  # past the hold: the held request, once released, must still not go out
    assert (server.plaintext_requests, server.tls_requests, server.connections) == (1, 0, 1), m.log_tail()
    # a hold is this moment's, not the target's: the next request makes its own attempt (held again)
    assert post(port).status == 502 and server.plaintext_requests == 2


RESPONSE_HOLDER = f"""
import asyncio

class HoldAnswer:
    def response(self, flow):
        if flow.is_replay == "request":
            flow.intercept()  # as mitmweb's intercept on ~s does; "resumed" by hand a while later
            asyncio.get_running_loop().call_later({HOLD}, flow.resume)

addons = [HoldAnswer()]
"""


@pytest.mark.e2e
def test_an_intercepted_answer_is_a_hold_not_the_servers_timeout(cert, esrs, mitmdump, tmp_path: Path) -> None:
    """The attempt reached the server and an intercept held its answer past the deadline: the client's failure says
    the answer was held (`held`), not that the server did not answer in time."""
    server = esrs()
    script = tmp_path / "hold_answer.py"
    script.write_text(RESPONSE_HOLDER)
    args, (port,) = reverse_modes([f"http://127.0.0.1:{server.port}"])
    m = mitmdump([*args, "-s", str(script), "--set", "esrs_upgrade=true", "--set", "esrs_upgrade_timeout=1",
                  "--set", f"ssl_verify_upstream_trusted_ca={cert[0]}"])  # fmt: skip
    answer = post(port, method="GET")
    assert answer.status == 502, m.log_tail()
    assert (answer.label or "").startswith("upgrade failed: the TLS attempt's answer was held by an intercept")
    assert b"held the TLS attempt's answer" in answer.body and b"did not complete the handshake" not in answer.body
    assert (server.plaintext_requests, server.tls_requests) == (1, 1)


# -- several --modes: a listener that cannot re-send remembers nothing


@pytest.mark.e2e
def test_a_listener_that_cannot_resend_says_so_and_remembers_nothing(cert, esrs, mitmdump) -> None:
    server = esrs()
    first, second = servers.free_port(), servers.free_port()
    # the replay follows the first mode (upstream, to a proxy never dialled); the flow comes through the second
    mitmdump(["--mode", f"upstream:http://127.0.0.1:{servers.free_port()}@{first}",
              "--mode", f"reverse:http://127.0.0.1:{server.port}@{second}",
              "--set", "esrs_upgrade=true", "--set", f"ssl_verify_upstream_trusted_ca={cert[0]}"],
             listeners=2)  # fmt: skip
    for sent in (1, 2):
        answer = post(second)
        assert answer.status == 502
        assert (answer.label or "").startswith("upgrade failed: not sent again: this flow came through a listener")
        assert b"first mode only" in answer.body and b"CONNECT policy" not in answer.body
        assert (server.plaintext_requests, server.tls_requests) == (sent, 0)  # nothing remembered: sent again


# -- fair slots


@pytest.mark.e2e
def test_one_clients_tarpit_targets_leave_slots_to_another_client(cert, esrs, start_server, mitmdump) -> None:
    """Client 127.0.0.1 asks for more tarpit targets than there are slots in all; 127.0.0.2's first request to a
    healthy TLS server is upgraded while every tarpit attempt is still waiting for its answer (none has ended), and
    every tarpit attempt starts in the end: a stalled attempt gives its slot back instead of holding it."""
    count = upgrade.MAX_ATTEMPTS + upgrade.PER_CLIENT
    tarpits = [start_server(servers.TarpitServer()) for _ in range(count)]
    healthy = esrs()
    port = servers.free_port()
    mitmdump(["-p", str(port), "--set", "esrs_upgrade=true", "--set", "esrs_upgrade_timeout=20",
              "--set", f"ssl_verify_upstream_trusted_ca={cert[0]}"])  # fmt: skip
    answers: list[Answer] = []
    threads = [
        threading.Thread(target=lambda t=t: answers.append(post(port, "127.0.0.1", f"127.0.0.1:{t.port}", "GET")))
        for t in tarpits
    ]
    for thread in threads:
        thread.start()
    assert eventually(lambda: sum(t.hellos for t in tarpits) >= upgrade.PER_CLIENT)  # the first client's share
    other = post(port, "127.0.0.2", f"127.0.0.1:{healthy.port}", "GET")
    tarpit_answers_then = len(answers)
    assert other.status == 200 and other.body == servers.OK_BODY and (other.label or "").startswith("upgraded; ")
    assert tarpit_answers_then == 0  # it waited for no tarpit attempt to end (each lasts its 20 s)
    for thread in threads:
        thread.join(TIMEOUT + 30)
    assert sum(t.plaintext_requests for t in tarpits) == count
    assert sum(t.hellos for t in tarpits) == count  # every attempt started: no stalled one kept its slot
    assert len(answers) == count
    assert not [a for a in answers if "no TLS attempt could start" in (a.label or "")]
    assert all((a.label or "").startswith("upgrade failed: no complete answer over TLS") for a in answers), answers[0]


# -- pure logic: Upgrade with a fake clock


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


OTHER = Failure(AttemptCause.OTHER, "the answer over TLS was not HTTP either", "")


def test_waiters_take_turns_each_with_what_is_left_of_its_own_time() -> None:
    """Four flows to one target whose attempts fail with a failure that is not shared: one attempt at a time, and
    each later one has what is left of its flow's time (counted from when it asked), not a fresh timeout."""
    clock = Clock()
    up = Upgrade(clock)
    up.timeout = 10
    given: list[float] = []
    running = 0

    async def fake_send(flow: http.HTTPFlow, options: object, not_http: object, finding: object, seconds: float):
        nonlocal running
        running += 1
        assert running == 1  # never two attempts to the target at once
        given.append(seconds)
        await asyncio.sleep(0)
        clock.now += 4  # each attempt takes 4 s of the fake clock
        running -= 1
        return UpgradeOutcome(None, failure=OTHER)

    up._send = fake_send  # type: ignore[method-assign]

    async def run() -> list[UpgradeOutcome]:
        target = Target("t", 443)
        flows = [tflow.tflow() for _ in range(5)]
        return await asyncio.gather(*(up.attempt(f, target, ALERT, None, lambda r: False) for f in flows))

    outcomes = asyncio.run(run())
    budget = upgrade.SLOT_WAIT + 10  # 13 s from t=0 for every flow
    assert given == [10, budget - 4, budget - 8, budget - 12]  # at t=0, 4, 8 and 12 of 13 s
    assert [o.failure.cause for o in outcomes if o.failure] == [AttemptCause.OTHER] * 4 + [AttemptCause.BUSY]
    assert "no turn for a TLS attempt" in (outcomes[4].failure.message if outcomes[4].failure else "")
    assert not up._failed  # nothing remembered against the target


def test_a_client_at_its_cap_waits_while_another_client_takes_a_slot() -> None:
    async def run() -> None:
        slots = Slots(total=4, per_client=2)
        assert await slots.acquire("a", 0) and await slots.acquire("a", 0)
        assert not await slots.acquire("a", 0.01)  # at its cap: a short wait, then no
        assert await slots.acquire("b", 0)  # another client is not held up by it
        waiter = asyncio.ensure_future(slots.acquire("a", 5))
        await asyncio.sleep(0)
        slots.release("a")  # the freed slot goes to the waiting client at once
        assert await waiter and slots.in_flight == {"a": 2, "b": 1}
        assert "this client's 2 (at most 2 per client)" in slots.busy("a", 3).message

    asyncio.run(run())


def test_a_hold_and_another_listener_are_not_about_the_target() -> None:
    for cause in (AttemptCause.HELD, AttemptCause.NOT_RESENDABLE):
        assert not cause.about_the_target
    up = Upgrade(Clock())
    for cause in (AttemptCause.HELD, AttemptCause.NOT_RESENDABLE):
        failure = causes.failure(cause, "x")
        assert up._conclude(Target("h", 443), tflow.tflow(), ALERT, UpgradeOutcome(None, failure=failure)) is None
    assert not up._failed


def test_the_tls_version_advice_does_not_read_the_alerts_record_version() -> None:
    """Modern servers send their alerts as TLS 1.0 records too: the record's version says nothing about the server's
    TLS versions, so the advice does not hint at it."""
    failure = causes.failure(AttemptCause.TLS_VERSION, "cannot agree on a TLS version")
    assert ALERT.records and ALERT.records[0].version_name == "TLS 1.0"
    assert "TLS 1.0" not in failure.advice and "tls_version_server_min" in failure.advice


def test_a_learned_targets_resend_takes_no_slot() -> None:
    """A flow that got a stray answer before its target was learned is sent over TLS as a learned request is: even
    when every slot is taken (by stalled attempts to other targets), it does not wait for one."""
    up = Upgrade(Clock())
    up.slots = Slots(total=1, per_client=1)
    client = upgrade.client_of(tflow.tflow())
    assert asyncio.run(up.slots.acquire(client, 0))  # every slot taken
    target = Target("t", 443)
    up.learned.remember(target, ALERT.summary, str(ALERT.kind))
    sent: list[float] = []

    async def fake_send(flow: http.HTTPFlow, options: object, not_http: object, finding: object, seconds: float):
        sent.append(seconds)
        return UpgradeOutcome(None, answer=http.Response.make(200))

    up._send = fake_send  # type: ignore[method-assign]
    outcome = asyncio.run(up.attempt(tflow.tflow(), target, ALERT, None, lambda r: False))
    assert outcome.answer is not None and outcome.failure is None and sent == [up.timeout]
