"""The upgrade (esrs_upgrade): the same request sent again over TLS, one attempt per target at a time.

The addon decides *whether* a flow is upgraded; this room does it and remembers what came of it:

- targets that answered over TLS are learned (`learned`), and their later requests go over TLS at once;
- while a TLS attempt to a target is in flight, other flows to it wait for its outcome (`pending`) instead of
  making plaintext or TLS attempts of their own: a crowd costs the far server one attempt, not one per client;
- a failed attempt is remembered for `failure_ttl` seconds (`failed`; the `esrs_upgrade_retry_after` option), and
  flows to its target within that time get the same labelled failure at once;
- one attempt holds at most `body_size_limit` bytes, or `UPGRADE_BODY_CAP` when that is unset;
- why an attempt failed, and the advice for each cause, are `causes`'s.

The network is slow: an attempt has `timeout` seconds in all (the `esrs_upgrade_timeout` option) for connect,
CONNECT, handshake and answer. A flow's own time counts from when it asked for an upgrade: a flow that waited for
another flow's attempt and then makes its own (that failure was not the target's: `busy`, `too_large`, ...) has what
is left of its time, not a fresh timeout; waiters take turns, one attempt per target at a time, so that N clients
never make the last one wait N timeouts. When the client has its answer the attempt is over: it can never reach
the server later (`compat.resend_over_tls`). How the request goes over TLS (SNI, verified name, `Proxy-*` headers
stripped) is `route.tls_route`'s decision, the same as for learned requests.

Attempt slots, the fairness policy: a slot is what a new target's attempt holds while it starts (connect, CONNECT,
handshake, answer), for `SLOT_HOLD` seconds at most: an attempt that takes longer goes on within its own time, and
its slot goes to the next one. At most `MAX_ATTEMPTS` attempts start at once, whatever the number of targets (a
scan cannot open a burst of connections), and at most `PER_CLIENT` of them for one client address; slots are handed
out first come, first served among the clients under their cap. So one client's slow targets (tarpits that take the
handshake and never answer) cannot keep another client's first upgrade waiting more than about `SLOT_HOLD`
seconds, nor a burst of one client's new targets the others'. A flow waits for a slot within its own time; when
that runs out its client gets the labelled `busy` failure, and nothing is remembered against the target. Requests
to a learned target take no slot: each is its client's own request over TLS, as a learned request is (and as
stock mitmproxy would send it), so a crowd that got stray answers before the target was learned is not held up.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mitmproxy import http

from .. import compat
from ..core.findings import UPGRADABLE, Finding
from ..core.names import (
    DEFAULT_UPGRADE_RETRY,
    DEFAULT_UPGRADE_TIMEOUT,
    OPT_UPGRADE_TIMEOUT,
    UPGRADE_BODY_CAP,
    UPGRADE_METADATA_KEY,
)
from .causes import ENDED_GRACE, AttemptCause, Failure, attempt_cause, failure, words_for
from .flowrecord import attempt_ended, label_attempt, upstream_proxy
from .learned import LearnedTargets, Target
from .route import tls_route

#: TLS attempts to new targets starting at once, all clients together; more wait for a slot (within their own time).
MAX_ATTEMPTS = 32
#: TLS attempts starting at once for one client address: half the slots, so that another client always finds one.
PER_CLIENT = 16
#: Seconds an attempt holds its slot at most: then it goes on without one (a stalled target holds no slot).
SLOT_HOLD = 2.0
#: Seconds a flow may spend waiting (for another flow's attempt, for a slot) on top of its attempt's own timeout.
SLOT_WAIT = 3.0
#: Seconds a stray answer's address stays suspect at most while its flow decides whether to upgrade (see `suspect`).
SUSPECT_WAIT = 2.0


def target_of(flow: http.HTTPFlow) -> Target:
    """Where the plaintext request went: the request's host and port, and the upstream proxy in upstream mode."""
    return Target(flow.request.host, flow.request.port, upstream_proxy(flow))


@dataclass
class UpgradeOutcome:
    """What an upgrade came to: the server's answer (body included), or why not."""

    #: The TLS attempt's own flow (a replayed copy); None when the flow took another flow's failure.
    attempt: http.HTTPFlow | None
    #: The server's answer over TLS, whole, when upgraded.
    answer: http.Response | None = None
    failure: Failure | None = None
    #: The outcome was another flow's: this flow waited for that attempt instead of making its own.
    shared: bool = False
    #: This upgrade taught esrs-fix the target (it was not learned before).
    newly_learned: bool = False


class Upgrade:
    """Learned targets, attempts in flight (one per target), remembered failures; see the module's docstring."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.learned = LearnedTargets()
        self.timeout: float = DEFAULT_UPGRADE_TIMEOUT
        self.failure_ttl: float = DEFAULT_UPGRADE_RETRY
        self._clock = clock
        self._in_flight: dict[Target, asyncio.Future[Failure | None]] = {}
        #: Failures about a proven TLS port, oldest first (bounded as the learned targets are), until they expire.
        self._failed: OrderedDict[Target, tuple[Failure, Finding, float]] = OrderedDict()
        self._suspects: dict[tuple[str, int], tuple[asyncio.Future[None], float]] = {}
        #: When the next remembered failure or suspicion runs out: the moment to drop what expired.
        self._next_expiry = math.inf
        self.slots = Slots()
        self._bodies: dict[str, _Body] = {}

    def __bool__(self) -> bool:
        """Whether any target is learned, suspect, pending or failed: clean traffic pays this test and nothing more."""
        if self._next_expiry != math.inf and self._next_expiry <= self._clock():  # no clock read when nothing expires
            self._drop_expired()
        return bool(self.learned or self._suspects or self._in_flight or self._failed)

    def _drop_expired(self) -> None:
        now = self._clock()
        for target in [t for t, (_, _, until) in self._failed.items() if until <= now]:
            del self._failed[target]
        for key in [k for k, (_, until) in self._suspects.items() if until <= now]:
            self.clear_suspect(*key)
        until = [u for *_, u in self._failed.values()] + [u for _, u in self._suspects.values()]
        self._next_expiry = min(until, default=math.inf)

    def _expires(self, until: float) -> float:
        self._next_expiry = min(self._next_expiry, until)
        return until

    def suspect(self, host: str, port: int) -> None:
        """Stray TLS just came from `host:port`, and its flow may upgrade: until the flow starts its attempt (or decides
        not to), new requests to the address wait a moment instead of going out in plaintext themselves.

        Called where the stray bytes are read, before any hook runs: under load, the hooks of the flow that got them
        take long enough for a crowd's requests to be sent in plaintext. Keyed by address alone (the flow, and so the
        upstream proxy, is not known there); a suspicion ends after `SUSPECT_WAIT` seconds in any case.
        """
        key = (host, port)
        if key not in self._suspects:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not in mitmproxy's event loop (a unit test driving the addon by hand)
                return
            self._suspects[key] = (loop.create_future(), self._expires(self._clock() + SUSPECT_WAIT))

    def clear_suspect(self, host: str, port: int) -> None:
        """The suspected flow has started its attempt or decided: the waiting requests go on (and find the attempt)."""
        suspicion = self._suspects.pop((host, port), None)
        if suspicion is not None and not suspicion[0].done():
            suspicion[0].set_result(None)

    def suspected(self, host: str, port: int) -> asyncio.Future[None] | None:
        """The suspicion on `host:port` to wait for, if there is one that has not run out."""
        suspicion = self._suspects.get((host, port))
        if suspicion is None:
            return None
        if suspicion[1] <= self._clock():
            self.clear_suspect(host, port)
            return None
        return suspicion[0]

    def pending(self, target: Target) -> asyncio.Future[Failure | None] | None:
        """The outcome of the attempt to `target` in flight (a failure to share, or None), or None if there is none."""
        return self._in_flight.get(target)

    def failed(self, target: Target) -> tuple[Failure, Finding] | None:
        """The remembered failure of the last attempt to `target`, and what its plaintext attempt got."""
        remembered = self._failed.get(target)
        if remembered is None:
            return None
        if remembered[2] <= self._clock():
            del self._failed[target]
            return None
        return remembered[0], remembered[1]

    def forget_failures(self) -> None:
        """Options that decide an attempt's fate changed (trust, TLS versions, the time limit): try again."""
        self._failed.clear()

    async def wait(self, pending: asyncio.Future[Failure | None], deadline: float | None = None) -> None:
        """Wait for another flow's attempt (shielded: a waiter that goes away does not cancel it), until `deadline`
        (this clock's time) at most, or as long as that attempt may take (a slot, then the attempt itself)."""
        seconds = self.timeout + SLOT_WAIT if deadline is None else deadline - self._clock()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(pending), max(0.0, seconds))

    def failure_of(self, attempt: http.HTTPFlow, seconds: float) -> Failure:
        """Why a TLS attempt (an upgrade's copy, or a flow sent as learned) failed, with advice that fits."""
        return _failure_of(attempt, seconds)

    def sink(self, attempt: http.HTTPFlow) -> _Body | None:
        """Where a TLS attempt's answer body goes as it streams in (mitmproxy's `response.stream` callable): only an
        attempt this upgrade made has one (a user's replay of an attempt's flow carries its marker too)."""
        body = self._bodies.get(attempt.id)
        if body is not None:
            body.response = attempt.response
            # Its answer, said now, before the built-in addons' response hook (which runs before any script's: `-w`
            # saves the flow there); `_send` says otherwise if the answer turns out too large or not HTTP.
            attempt_ended(attempt, None)
        return body

    async def attempt(
        self,
        flow: http.HTTPFlow,
        target: Target,
        finding: Finding,
        options: Any,
        not_http: Callable[[http.Response], bool],
    ) -> UpgradeOutcome:
        """Upgrade `flow` (its plaintext attempt got `finding`): its request again over TLS, or another flow's outcome.

        `not_http(response)`: whether the answer over TLS is esrs-fix's own 502 (it was TLS records again). The flow
        has `SLOT_WAIT` plus `timeout` seconds from now in all, waiting for other flows' attempts included.
        """
        deadline = self._clock() + SLOT_WAIT + self.timeout
        while (pending := self._in_flight.get(target)) is not None:
            await self.wait(pending, deadline)
            if not pending.done():  # this flow's time ran out while another flow's attempt went on
                return UpgradeOutcome(None, failure=_turn_expired(self.timeout))
            shared = pending.result()
            if self.learned.lookup(target) is None and shared is not None:
                return UpgradeOutcome(None, failure=shared, shared=True)
            # learned, or a failure that was that request's own: this flow's turn (unless another waiter took it)
        if (remembered := self.failed(target)) is not None:
            return UpgradeOutcome(None, failure=remembered[0], shared=True)
        if deadline - self._clock() <= 0:
            return UpgradeOutcome(None, failure=_turn_expired(self.timeout))
        if self.learned.lookup(target) is not None:  # proven: nothing to share, and no slot (a learned request's)
            return await self._send(
                flow, options, not_http, finding, max(min(self.timeout, deadline - self._clock()), 0.001)
            )
        future: asyncio.Future[Failure | None] = asyncio.get_running_loop().create_future()
        self._in_flight[target] = future
        self.clear_suspect(target.host, target.port)  # those waiting on the suspicion now find this attempt
        outcome: UpgradeOutcome | None = None
        try:
            outcome = await self._send_in_a_slot(flow, options, not_http, finding, deadline)
        finally:
            del self._in_flight[target]
            future.set_result(self._conclude(target, flow, finding, outcome))
        return outcome

    def _conclude(
        self, target: Target, flow: http.HTTPFlow, finding: Finding, outcome: UpgradeOutcome | None
    ) -> Failure | None:
        """Learn the target or remember its failure; the failure the waiting flows share (None: nothing to share)."""
        if outcome is None:  # cancelled (shutdown): nothing learned, nothing to share
            return None
        failure = outcome.failure
        if failure is None or failure.cause is AttemptCause.TOO_LARGE:  # TLS worked (a big answer is this request's)
            outcome.newly_learned = self.learned.remember(
                target, finding.summary, str(finding.kind), _evidence(finding, flow)
            )
            return None
        # Only a failure about the target, after evidence that it is a TLS port, speaks for other requests to it: a
        # silent close proves nothing (a plain server may close an idle connection), and a busy moment passes.
        if not (failure.cause.about_the_target and finding.kind in UPGRADABLE):
            return None
        if failure.cause is AttemptCause.NOT_TLS:  # evidence against a TLS port: shared with waiters, never remembered
            return failure
        if self.failure_ttl > 0:
            self._failed[target] = (failure, finding, self._expires(self._clock() + self.failure_ttl))
            self._failed.move_to_end(target)
            while len(self._failed) > self.learned.capacity:
                self._failed.popitem(last=False)
        return failure

    async def _send_in_a_slot(
        self,
        flow: http.HTTPFlow,
        options: Any,
        not_http: Callable[[http.Response], bool],
        finding: Finding,
        deadline: float,
    ) -> UpgradeOutcome:
        client = client_of(flow)
        wait = deadline - self._clock()
        if not await self.slots.acquire(client, wait):
            return UpgradeOutcome(None, failure=self.slots.busy(client, wait))
        seconds = max(min(self.timeout, deadline - self._clock()), 0.001)
        send = asyncio.ensure_future(self._send(flow, options, not_http, finding, seconds))
        try:
            try:
                await asyncio.wait({send}, timeout=SLOT_HOLD)
            finally:
                self.slots.release(client)  # done, or stalled: the attempt goes on without its slot
            return await send
        finally:
            if not send.done():  # cancelled (the flow's client went away, shutdown): the attempt ends with it
                send.cancel()

    async def _send(
        self,
        flow: http.HTTPFlow,
        options: Any,
        not_http: Callable[[http.Response], bool],
        finding: Finding,
        seconds: float,
    ) -> UpgradeOutcome:
        started = self._clock()
        limit = compat.body_size_limit(options)

        def keep_body(copy: http.HTTPFlow) -> None:
            self._bodies[copy.id] = _Body(UPGRADE_BODY_CAP if limit is None else limit)
            label_attempt(copy, flow)  # whose attempt it is, before any hook or UI sees it

        attempt = await compat.resend_over_tls(
            flow, options, seconds, UPGRADE_METADATA_KEY, tls_route(flow, options), words_for, ENDED_GRACE, keep_body
        )
        body = self._bodies.pop(attempt.id, None)
        failed: Failure | None = None
        if attempt.error is not None:
            failed = _failure_of(attempt, self._clock() - started)
        elif attempt.response is None:
            failed = failure(AttemptCause.OTHER, "no answer over TLS")
        elif not_http(attempt.response):
            failed = failure(AttemptCause.OTHER, "the answer over TLS was not HTTP either")
        elif body is not None and body.too_large:
            failed = failure(AttemptCause.TOO_LARGE, f"the answer over TLS is larger than {body.limit} bytes")
        attempt_ended(attempt, failed)
        if failed is not None:
            return UpgradeOutcome(attempt, failure=failed)
        assert attempt.response is not None
        answer = attempt.response.copy()
        if body is not None:
            answer.raw_content = bytes(body.kept)
        return UpgradeOutcome(attempt, answer=answer)


def client_of(flow: http.HTTPFlow) -> str:
    """The client address whose share of the attempt slots `flow`'s attempt takes ("" when there is none)."""
    peername = flow.client_conn.peername
    return str(peername[0]) if peername else ""


class Slots:
    """Attempt slots: `total` in flight at once, `per_client` of them for one client address; first come, first
    served among the clients under their cap (a client at its cap does not hold up the others behind it)."""

    def __init__(self, total: int = MAX_ATTEMPTS, per_client: int = PER_CLIENT) -> None:
        self.total = total
        self.per_client = per_client
        self.in_flight: dict[str, int] = {}
        self._taken = 0
        self._waiting: list[tuple[str, asyncio.Future[None]]] = []

    def _free_for(self, client: str) -> bool:
        return self._taken < self.total and self.in_flight.get(client, 0) < self.per_client

    def _take(self, client: str) -> None:
        self._taken += 1
        self.in_flight[client] = self.in_flight.get(client, 0) + 1

    async def acquire(self, client: str, seconds: float) -> bool:
        """Take a slot for `client`, waiting `seconds` at most; whether one was taken.

        A waiter is handed a slot the moment one frees that it may take, so none that could take a free slot is
        waiting: a newcomer that finds one free jumps nobody."""
        if self._free_for(client):
            self._take(client)
            return True
        entry = (client, asyncio.get_running_loop().create_future())
        self._waiting.append(entry)
        try:
            await asyncio.wait({entry[1]}, timeout=max(0.0, seconds))
        except BaseException:  # cancelled (the client went away, shutdown): a slot handed out meanwhile goes back
            if entry[1].done():
                self.release(client)
            else:
                self._waiting.remove(entry)
            raise
        if entry[1].done():
            return True
        self._waiting.remove(entry)
        return False

    def release(self, client: str) -> None:
        """An attempt ended: its slot goes to the longest waiter that may take it."""
        self._taken -= 1
        if (left := self.in_flight.get(client, 0) - 1) > 0:
            self.in_flight[client] = left
        else:
            self.in_flight.pop(client, None)
        self._hand_out()

    def _hand_out(self) -> None:
        for entry in list(self._waiting):
            waiter, granted = entry
            if self._free_for(waiter):
                self._waiting.remove(entry)
                self._take(waiter)
                granted.set_result(None)

    def busy(self, client: str, seconds: float) -> Failure:
        """The failure for a flow that got no slot within `seconds`."""
        mine = self.in_flight.get(client, 0)
        whose = (
            f"this client's {mine} (at most {self.per_client} per client)"
            if mine >= self.per_client
            else f"{self._taken} in all (at most {self.total})"
        )
        return failure(AttemptCause.BUSY, f"no TLS attempt could start within {seconds:g} s: {whose} were in flight")


def _evidence(finding: Finding, flow: http.HTTPFlow) -> dict[str, Any]:
    return {**finding.to_dict(), "taught_by": flow.id}


def _failure_of(attempt: http.HTTPFlow, seconds: float) -> Failure:
    assert attempt.error is not None
    cause, detail = attempt_cause(attempt.error.msg)
    if cause in (AttemptCause.CLOSED, AttemptCause.RESET):
        phase = "after the TLS handshake" if attempt.server_conn.tls_established else "before the TLS handshake ended"
        detail = f"{detail} ({phase}, {seconds:.1f} s into the attempt)"
    return failure(cause, detail)


def _turn_expired(timeout: float) -> Failure:
    """The failure for a flow whose time ran out while other flows' attempts to its target went on, one at a time."""
    return Failure(
        AttemptCause.BUSY,
        f"no turn for a TLS attempt within {SLOT_WAIT + timeout:g} s: other requests' attempts to this target took it",
        "One TLS attempt per target at a time, and this request's time ran out waiting for the others; try again, "
        f"or raise {OPT_UPGRADE_TIMEOUT} if the server is only slow.",
    )


class _Body:
    """A TLS attempt's response body, kept chunk by chunk (mitmproxy's stream callable), up to `limit` bytes.

    At the end of the body (mitmproxy calls the stream with b"" then, before the response hook) the attempt's own
    response gets what was kept: the attempt's flow then carries the body it received when mitmdump prints it, `-w`
    saves it and mitmweb lists it (the built-in addons' response hooks run before any script's), instead of a
    streamed response's missing content. An answer over the limit keeps none (its
    flow says "content missing", and its comment why)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept = bytearray()
        self.too_large = False
        #: The attempt's response that the body belongs to (set when the stream starts, in `Upgrade.sink`).
        self.response: http.Response | None = None

    def __call__(self, chunk: bytes) -> bytes:
        if not chunk:  # the end of the body
            if self.response is not None and not self.too_large:
                self.response.raw_content = bytes(self.kept)
        elif not self.too_large:
            if len(self.kept) + len(chunk) > self.limit:
                self.too_large, self.kept = True, bytearray()
            else:
                self.kept += chunk
        return chunk
