"""Keeping held items: one task renews every held item's lease and writes its pending
claim when :class:`protocol.AgentCore` says they are due, then sleeps until the next
one is (a quick task costs no timer of its own).

A claim written this way is followed from then on (its record may move on without us:
a cancel, a deadline, a takeover after our lease lapsed), and a hold whose task is no
longer ours has its work stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc

from protocol import AgentCore, RenewLease, WriteClaim

from .bus import MeshError, Reconnects
from .queues import Delivery

__all__ = ["HeldItem", "Keeper", "Flag"]


class HeldItem:
    """One held item, as the pump sees it: its delivery, the scope of its work, and
    how to write its pending claim and follow its record (its timing is the core's)."""

    __slots__ = ("claim", "d", "follow", "follower", "log", "lost", "work")

    def __init__(
        self,
        d: Delivery,
        *,
        work: anyio.CancelScope,
        log: Any,
        claim: Callable[[], Awaitable[bool]],
        follow: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.d, self.work, self.log = d, work, log
        self.claim, self.follow = claim, follow
        self.follower: anyio.CancelScope | None = None
        #: someone else moved the task on: the work was stopped for that, not a drain
        self.lost = False

    def stop(self) -> None:
        """The task is not ours any more: stop its work."""
        self.lost = True
        self.work.cancel()


class Flag:
    """A re-armable wake-up for one waiting loop."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = anyio.Event()


class Keeper:
    """The renewals and pending claims of every item ``core`` holds (see the module
    docstring); claims and the following of records run in ``tasks`` (the task group
    a drain cancels)."""

    def __init__(self, core: AgentCore) -> None:
        self.core = core
        self._holds: dict[int, HeldItem] = {}
        self._wake = Flag()
        self._due = math.inf

    def keep(self, hold: HeldItem, *, task: str, claim_timeout_s: float) -> None:
        """Keep ``hold`` from now on."""
        d = hold.d
        kept = self.core.hold(
            d.ticket,
            task=task,
            kind=d.item.kind,
            lease_s=d.lease_s,
            claim_timeout_s=claim_timeout_s,
            now=time.monotonic(),
        )
        self._holds[d.ticket] = hold
        if min(kept.renew_at, kept.claim_at) < self._due:
            self._wake.set()

    def unkeep(self, hold: HeldItem) -> None:
        """Stop keeping ``hold`` (its work is over)."""
        self.core.release(hold.d.ticket)
        self._holds.pop(hold.d.ticket, None)
        if hold.follower is not None:
            hold.follower.cancel()

    def held(self, ticket: int) -> HeldItem:
        return self._holds[ticket]

    async def run(self, tasks: anyio.abc.TaskGroup) -> None:
        """Perform what the core says is due, and sleep until the next one."""
        while True:
            for due in self.core.on_tick(time.monotonic()):
                hold = self._holds.get(due.ticket)
                if hold is None:
                    continue
                match due:
                    case RenewLease():
                        await hold.d.renew()
                    case WriteClaim():
                        tasks.start_soon(self._claim_now, hold, tasks)
            self._due = self.core.next_wakeup()
            with anyio.move_on_after(max(self._due - time.monotonic(), 0.0)):
                await self._wake.wait()

    async def renew_after_reconnecting(self, reconnects: Reconnects) -> None:
        """Renew every held item at once after a reconnection, before the broker lends
        out those whose lease ran out while we were away."""
        while True:
            await reconnects.wait()
            self.core.on_reconnect(reconnects.at)
            self._wake.set()

    async def _claim_now(self, hold: HeldItem, tasks: anyio.abc.TaskGroup) -> None:
        """Write a hold's pending claim; on success, follow its record from then on."""
        try:
            ok = await hold.claim()
        except MeshError as exc:
            hold.log.warning("claim failed, will retry", error=str(exc) or type(exc).__name__)
            self.core.claim_failed(hold.d.ticket, time.monotonic())
            self._wake.set()
            return
        if not ok:
            hold.stop()
        elif hold.follow is not None and hold.d.ticket in self._holds:
            scope = anyio.CancelScope()
            hold.follower = scope
            tasks.start_soon(self._follow, hold, scope)

    async def _follow(self, hold: HeldItem, scope: anyio.CancelScope) -> None:
        with scope:
            assert hold.follow is not None
            if not await hold.follow():
                hold.stop()
