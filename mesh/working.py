"""Working one task: what an agent does with a work item its core told it to work.

A :class:`TaskRun` holds one task under the broker's lease on its item: it runs the
worker, claims the task in the record lazily (the agent's keeper writes the claim if
the work takes a while, then follows the record), writes the result, and settles the
item once the result's events are recorded. Draining hands the task back; losing it
(a takeover, a cancel, a deadline) stops the work.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio

from protocol import (
    MAX_ERROR_CHARS,
    Ack,
    Cancel,
    Claim,
    Fail,
    Finish,
    LimitExceeded,
    Release,
    RemoteProtocolError,
    TaskRecord,
    TransitionError,
    decode_record,
    renew_every,
    settle_work,
    trace_id,
)

from .bus import CorruptRecord, MeshError
from .queues import Delivery
from .work import Lost, RoleViolation, TaskContext, TaskFailed

if TYPE_CHECKING:
    from .agent import Agent

__all__ = ["TaskRun"]


class TaskRun:
    """One task held by ``agent`` under delivery ``d`` (see the module docstring)."""

    def __init__(
        self, agent: Agent, d: Delivery, record: TaskRecord, revision: int, claim: Claim, *, claim_first: bool
    ) -> None:
        self.agent, self.d, self.me = agent, d, agent.config.id
        self.claim_first = claim_first
        self.ctx = TaskContext(
            agent.bus,
            record,
            revision,
            agent=self.me,
            delegates=agent.config.delegates,
            claim=claim,
            retake=lambda fresh: agent.retake(d, fresh),
            patience_s=max(d.lease_s, 5.0),
        )
        self.log = agent.log.bind(
            task=record.id, root=record.root, epoch=self.ctx.epoch, trace_id=trace_id(record.trace)
        )
        #: our task as its requester (or an operator) cancelled it, seen while working
        self.cancelled: TaskRecord | None = None

    async def run(self) -> None:
        agent, d, ctx, log = self.agent, self.d, self.ctx, self.log
        record = ctx.record
        hold = agent.hold(d, record, log, review=False, claim=self._write_claim, follow=self._watch_record)
        outcome = "lost"
        try:
            with hold.work:
                if self.claim_first:
                    # Someone held this item before us: claim before working, so a
                    # task that keeps killing its holders is counted (max_lapses).
                    await ctx.claim()  # (the keeper's scheduled claim then only starts following)
                outcome = await self._run_worker()
            if hold.work.cancelled_caught and outcome == "lost" and not hold.lost:
                with anyio.CancelScope(shield=True):
                    await self._hand_back()
                    outcome = "handed back"
        except Lost as exc:
            log.info("the task is not ours", why=str(exc))
            outcome = "abandoned"
        except Exception as exc:  # a bug or input we did not foresee: never the agent's end
            log.exception("failed holding a task")
            await agent.bus.report(f"failed holding task {record.id}: {exc!r}", key=agent.names.task_key(record.id))
            outcome = "abandoned"
        finally:
            if outcome == "done":
                agent.stats.completed += 1
            elif outcome == "failed":
                agent.stats.failed += 1
            elif hold.lost:
                outcome = "abandoned"
            agent.release(hold, record.id)
            # Only now, with the slot free, settle the item and await the acks of the
            # result's events: the requester may see the end and submit its next task
            # at once, and that task's pull must find us with room. Shielded: the
            # result is committed and its events must be recorded, even while a drain
            # cancels us (bounded by the publish patience). The result's events first,
            # the item last: an acknowledged item means the end is on record (else
            # whoever gets the item next records it).
            with anyio.CancelScope(shield=True):
                await ctx.settle()
                await self._settle(outcome)
                if self.cancelled is not None:
                    await self._cancel_children(self.cancelled)

    async def _write_claim(self) -> bool:
        try:
            await self.ctx.claim()
        except Lost as exc:
            self.log.info("the task is not ours, stopping work", why=str(exc))
            return False
        return True

    async def _settle(self, outcome: str) -> None:
        """Acknowledge the item if the task needs it no more; leave it alone if it may
        be someone else's (a takeover lends them the same item)."""
        ctx = self.ctx
        record: TaskRecord | None = ctx.record
        if outcome == "abandoned":
            try:
                got = await self.agent.read(ctx.record.id, ctx.record.root, copy=ctx.record)
            except MeshError:
                return  # unsure: leave it; whoever gets it next decides
            record = None if got is None else got[0]
        if isinstance(settle_work(outcome, record), Ack):
            await self.d.ack()

    async def _watch_record(self) -> bool:
        """Follow our task's record once claimed, writing it at least every third of our
        lease meanwhile: False when someone else moved it on, so the work stops."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._heartbeats)
            ours = await self._watch()
            tg.cancel_scope.cancel()
        return ours

    async def _heartbeats(self) -> None:
        """Write our record whenever a third of our lease passed since our last write
        (PROTOCOL.md 6.5): the ticket a takeover names is in the record for anyone to
        copy, so every reader counts a takeover only after a whole lease without a
        write. A task done within a third of a lease writes none."""
        every = renew_every(self.d.lease_s)
        while True:
            wait = self.ctx.record.updated + every - time.time()
            if wait > 0:
                await anyio.sleep(wait)
                continue
            try:
                await self.ctx.heartbeat()
            except Lost:
                return  # not ours any more: the watch sees why
            except MeshError as exc:
                self.log.warning("could not write a heartbeat", error=str(exc) or type(exc).__name__)
                await anyio.sleep(every)

    async def _watch(self) -> bool:
        """False when someone else moved the task on (the requester cancelled it or
        ended it at its deadline, another agent took it over because our lease lapsed).
        A republished write only wakes us (anyone may publish on that subject): the
        bucket decides."""
        bus, ctx = self.agent.bus, self.ctx
        async with bus.follow(ctx.record.id) as writes:
            while True:
                write = await writes.next(timeout=max(self.d.lease_s, 1.0))
                if write is not None and not self._says_moved_on(write[1]):
                    continue  # our own write, or a hint that says nothing changed for us
                try:
                    fresh, _ = await bus.read(ctx.record.id)
                except CorruptRecord as exc:
                    await self.agent.end_unreadable(exc, ctx.record)
                    return False
                except MeshError:
                    continue
                if self._moved_on(fresh):
                    self.log.info("the task moved on, stopping work", state=fresh.state, owner=fresh.owner)
                    if fresh.state == "cancelled":
                        self.cancelled = fresh
                    return False

    def _says_moved_on(self, data: bytes) -> bool:
        """Whether a republished write says the task moved on (or cannot be read)."""
        try:
            return self._moved_on(decode_record(data))
        except RemoteProtocolError:
            return True  # the bucket will say what it holds

    def _moved_on(self, record: TaskRecord) -> bool:
        ended_by_others = record.state == "cancelled" or (record.state == "failed" and record.reason == "deadline")
        return record.owner != self.me or record.epoch != self.ctx.epoch or ended_by_others

    async def _run_worker(self) -> str:
        agent, ctx, log, me = self.agent, self.ctx, self.log, self.me
        try:
            result = await agent.worker.work(ctx)
        except Lost as exc:
            log.warning("lost the task, abandoning it", why=str(exc))
            return "abandoned"
        except TaskFailed as exc:
            return await self._finish(Fail(actor=me, epoch=ctx.epoch, reason=exc.reason, message=str(exc)))
        except RoleViolation as exc:
            log.warning("role violation", why=str(exc))
            await agent.bus.report(
                f"role violation on task {ctx.record.id}: {exc}", key=agent.names.task_key(ctx.record.id)
            )
            return await self._finish(Fail(actor=me, epoch=ctx.epoch, reason="error", message=f"role violation: {exc}"))
        except Exception as exc:  # a worker bug fails its task, loudly; it never kills the agent
            log.exception("worker raised")
            await agent.bus.report(f"worker raised on task {ctx.record.id}: {exc!r}")
            message = f"{type(exc).__name__}: {exc}"
            return await self._finish(Fail(actor=me, epoch=ctx.epoch, reason="error", message=message))
        return await self._finish(Finish(actor=me, epoch=ctx.epoch, result=result))

    async def _finish(self, event: Finish | Fail) -> str:
        log = self.log
        try:
            with anyio.CancelScope(shield=True):  # the result must land whatever stops us now
                try:
                    record = await self.ctx.end(event)  # acks awaited by run(), once our slot is free
                except LimitExceeded as exc:
                    # A result (or failure message) over a protocol limit: no party could
                    # read that record, so it is never written; the task fails instead.
                    log.warning("result refused: over a protocol limit", why=str(exc))
                    record = await self.ctx.end(_within_limits(event, exc))
        except Lost as exc:
            log.warning("result refused: lost the task", why=str(exc))
            return "abandoned"
        log.debug("finished", state=record.state, reason=record.reason)
        return "failed" if record.state == "failed" else "done"

    async def _cancel_children(self, record: TaskRecord) -> None:
        """Cancel the children we made for a task its requester cancelled: we are their
        requester, the one party (with operators) whose cancel every reader accepts in a
        mesh with identities (PROTOCOL.md 5, ``cancel``). Their owners do the same below."""
        for child in record.children:
            try:
                await self.agent.bus.transition(
                    child, lambda _: Cancel(actor=self.me, note=f"parent {record.id} cancelled"), root=record.root
                )
            except TransitionError:
                continue  # it ended already
            except (MeshError, RemoteProtocolError) as exc:  # its deadline still ends it
                self.log.warning("could not cancel a child", child=child, error=str(exc))

    async def _hand_back(self) -> None:
        """Return the task (draining): release it in the record if we claimed it, then
        return its item to the queue for the next agent."""
        ctx, me = self.ctx, self.me
        if ctx.claimed:
            try:
                await ctx.write(Release(actor=me, epoch=ctx.epoch, note=f"handed back by {me} (draining)"))
            except (Lost, MeshError) as exc:
                self.log.warning("could not hand back; its lease will lapse", why=str(exc))
                return
        await self.d.hand_back()
        self.log.info("handed back")


def _within_limits(event: Finish | Fail, exc: LimitExceeded) -> Fail:
    """The failure to write instead of ``event``, which a protocol limit refused: a
    result too large fails the task; a failure message too long is cut to fit."""
    if isinstance(event, Finish):
        return Fail(actor=event.actor, epoch=event.epoch, message=f"result too large: {exc}")
    message = event.message[: MAX_ERROR_CHARS - 20] + " ... (truncated)"
    return Fail(actor=event.actor, epoch=event.epoch, reason=event.reason, message=message)
