"""Reviewing one result: what an agent does with a review item its core told it to
take.

A :class:`ReviewRun` holds one review slot of a result under the broker's lease on
its item. The slot is taken lazily, like a claim: with the vote in one write when the
review is quick, else on its own after a moment (the agent's keeper writes it, so the
task's parties see a reviewer at work). A reviewer that cannot judge gives its slot
back; one whose slot went to another reviewer settles its item by the protocol's rule.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import anyio

from protocol import (
    REVIEW_HAND_BACK_S,
    Ack,
    Approve,
    GiveBack,
    HandBack,
    Reviewing,
    Take,
    TaskRecord,
    TransitionError,
    Veto,
    on_delivery,
    settle_review,
)

from .bus import BrokerError, Conflict, MeshError, Unavailable
from .queues import Delivery
from .retry import retry
from .work import Reviewer, TaskContext, Verdict

if TYPE_CHECKING:
    from .agent import Agent

__all__ = ["ReviewRun"]

#: a slot write that meets this many other writes in a row gives the review up
SLOT_WRITE_ATTEMPTS = 20
#: how long a slot write waits for a broker that is away (its item's lease is renewed
#: meanwhile; past this the review is given up, and its item comes back to someone)
SLOT_WRITE_PATIENCE_S = 4.0


class ReviewRun:
    """Our review slot of one task, held by ``agent`` under delivery ``d``: pending
    until written (with the vote, or alone when the review takes a while)."""

    def __init__(self, agent: Agent, d: Delivery, record: TaskRecord, revision: int, take: Reviewing) -> None:
        self.agent, self.d, self.me = agent, d, agent.config.id
        self.record, self.revision = record, revision
        self.pending: Reviewing | None = take
        self.lost = False
        self.log = agent.log.bind(task=record.id, epoch=record.epoch)

    async def run(self) -> None:
        agent, d, log, record = self.agent, self.d, self.log, self.record
        assert isinstance(agent.worker, Reviewer)
        hold = agent.hold(d, record, log, review=True, claim=lambda: self.write(()))
        verdict: Verdict | None = None
        try:
            with hold.work:
                ctx = TaskContext(agent.bus, record, self.revision, agent=self.me, delegates=agent.config.delegates)
                try:
                    verdict = await agent.worker.review(ctx)
                except Exception as exc:  # a reviewer bug casts no vote; it never kills the agent
                    log.exception("reviewer raised")
                    await agent.bus.report(
                        f"reviewer raised on task {record.id}: {exc!r}", key=agent.names.task_key(record.id)
                    )
            with anyio.CancelScope(shield=True):
                if self.lost or hold.lost:
                    log.info("the review moved on without us")
                    await self._settle()
                    return
                if verdict is None:
                    await self._give_back()  # drain, or a reviewer error: let another reviewer have it
                    return
                if await self._vote(verdict):
                    agent.stats.reviews += 1
                await d.ack()
        except Exception as exc:  # a bug or input we did not foresee: never the agent's end
            log.exception("failed reviewing a task")
            await agent.bus.report(f"failed reviewing task {record.id}: {exc!r}", key=agent.names.task_key(record.id))
        finally:
            agent.release(hold, record.id)

    async def _settle(self) -> None:
        """Our slot is gone: acknowledge the item if its round is over; leave it alone if
        a reviewer that took our slot over holds it (the same item, lent again); else
        return it for another reviewer."""
        d = self.d
        if d.settled:
            return  # handed back already
        got = await self.agent.read(self.record.id, self.record.root, copy=self.record)
        match settle_review(None if got is None else got[0], round=d.item.round, ticket=d.ticket):
            case Ack():
                await d.ack()
            case GiveBack(wait_s=wait_s):
                await d.hand_back(wait_s)

    async def _vote(self, verdict: Verdict) -> bool:
        epoch = self.record.epoch
        reasons = verdict.reasons or ("rejected without reason",)
        vote: Approve | Veto = (
            Approve(actor=self.me, epoch=epoch)
            if verdict.approve
            else Veto(actor=self.me, epoch=epoch, reasons=reasons)
        )
        if await self.write((vote,)):
            self.log.info("voted", approve=verdict.approve, state=self.record.state)
            return True
        self.log.info("vote not needed any more")
        return False

    async def _give_back(self) -> None:
        """Drain or error: free our slot (if it was written) and return the item."""
        if self.pending is None:
            release = Reviewing(actor=self.me, epoch=self.record.epoch, release=True)
            if not await self.write((release,)):
                return
        await self.d.hand_back()
        self.log.info("gave our review slot back")

    async def write(self, events: tuple[Any, ...]) -> bool:
        """Write ``events`` after our pending slot (if any) by CAS; on a conflict, decide
        again on the fresh record. False when the review is not ours to act on."""
        bus, d = self.agent.bus, self.d
        for _ in range(SLOT_WRITE_ATTEMPTS):
            if not events and self.pending is None:
                return True  # the slot is written already
            batch = events if self.pending is None else (self.pending, *events)
            try:
                before = self.record
                self.record, self.revision = await retry(
                    functools.partial(bus.write, before, self.revision, batch),
                    retry_on=(Unavailable, BrokerError),
                    patience_s=SLOT_WRITE_PATIENCE_S,
                )
                if self.pending is not None:
                    lapsed = next((s.reviewer for s in before.slots if s.ticket == d.ticket), None)
                    self.log.info("took a review slot", ticket=d.ticket, took_over=lapsed)
                self.pending = None
                return True
            except Conflict:
                if not await self._decide_again():
                    break
            except (TransitionError, MeshError) as exc:
                self.log.info("could not write our review", error=str(exc) or type(exc).__name__)
                break
        self.lost = True
        return False

    async def _decide_again(self) -> bool:
        """After a conflict: read the record, and (while our slot is pending) decide on
        the item again. False when the review is not ours to act on."""
        got = await self.agent.read(self.record.id, self.record.root, copy=self.record)
        if got is None:
            return False
        self.record, self.revision = got
        if self.pending is None:
            return True
        decision = on_delivery(self.d.item, self.record, agent=self.me, ticket=self.d.ticket)
        if isinstance(decision, HandBack):
            await self.d.hand_back(REVIEW_HAND_BACK_S)  # another reviewer's to take
            return False
        if not isinstance(decision, Take) or not isinstance(decision.event, Reviewing):
            return False
        self.pending = decision.event
        return True
