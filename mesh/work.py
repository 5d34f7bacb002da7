"""What an agent's implementation sees: the :class:`Worker` interface and the
:class:`TaskContext` through which it acts on the protocol (progress, delegate, ask,
charge). Workers never touch NATS or the record directly."""

from __future__ import annotations

import secrets
import time
from typing import Any, Literal, Protocol, runtime_checkable

import anyio
import msgspec

from protocol import (
    AddChild,
    Charge,
    Fenced,
    Renew,
    ReviewPolicy,
    TaskRecord,
    TransitionError,
    Usage,
    apply,
    ask,
    best_match,
    delegate,
    fingerprint,
)

from .bus import Announcement, Bus, Conflict, NotFound, Unavailable
from .follow import create_and_wait, wait_terminal
from .questions import answering_questions

__all__ = [
    "Worker",
    "Reviewer",
    "Verdict",
    "TaskFailed",
    "RoleViolation",
    "Lost",
    "TaskContext",
    "new_id",
]


def new_id() -> str:
    return secrets.token_hex(8)


def _applied(record: TaskRecord, event: Any, now: float) -> TaskRecord | None:
    """``event`` applied to ``record`` at ``now``, or None if the rules refuse it."""
    try:
        return apply(record, event, now)
    except TransitionError:
        return None


class TaskFailed(Exception):
    """Raised by a worker to end its task ``failed`` with a reason from the closed set."""

    def __init__(
        self, message: str, reason: Literal["error", "rejected", "budget", "hop_limit", "loop", "deadline"] = "error"
    ) -> None:
        super().__init__(message)
        self.reason = reason


class RoleViolation(Exception):
    """The brief does not allow this (e.g. delegating to a capability not in ``delegates``)."""


class Lost(Exception):
    """This agent no longer owns the task (fenced by a newer epoch, cancelled, ended)."""


class Verdict(msgspec.Struct, frozen=True):
    approve: bool
    reasons: tuple[str, ...] = ()


@runtime_checkable
class Worker(Protocol):
    async def work(self, task: TaskContext) -> Any: ...


@runtime_checkable
class Reviewer(Protocol):
    async def review(self, task: TaskContext) -> Verdict: ...


class TaskContext:
    """The owner's handle on one held task. All writes are compare-and-set on the
    revision this context last wrote or read, so a stale owner learns it lost the task
    on its next write (:class:`Lost`)."""

    def __init__(self, bus: Bus, record: TaskRecord, revision: int, *, agent: str, delegates: tuple[str, ...]) -> None:
        self.bus = bus
        self.record = record
        self.revision = revision
        self.agent = agent
        self.delegates = delegates
        self._lock = anyio.Lock()
        #: the acks :meth:`end` left outstanding, for :meth:`settle`
        self._announced: Announcement | None = None

    @property
    def instruction(self) -> str:
        return self.record.instruction

    @property
    def data(self) -> Any:
        return self.record.data

    @property
    def idempotency_key(self) -> str:
        """Key for side effects: ``task_id:epoch``. A new owner after failover has a new
        epoch; a stale owner's repeat of the same effect carries the old key."""
        return f"{self.record.id}:{self.record.epoch}"

    async def write(self, event: Any) -> TaskRecord:
        """Apply ``event`` to our record by CAS. While the broker is unreachable we
        retry for up to a lease period (others cannot take the task meanwhile: they
        cannot reach the broker either, and do not count that time); after that the
        task is given up as :class:`Lost`."""
        record, announced = await self._write(event)
        await announced.wait()
        return record

    async def end(self, event: Any) -> TaskRecord:
        """:meth:`write` the task's last transition (finish, fail), returning before
        the acks of its board change and event: the agent frees the task's slot first
        (the requester may see the end and submit its next task at once), then awaits
        them with :meth:`settle`."""
        record, self._announced = await self._write(event)
        return record

    async def settle(self) -> None:
        """Await the acks of :meth:`end`'s board change and event, if it left any
        (re-sent through a broker failover; see :class:`Announcement`)."""
        announced, self._announced = self._announced, None
        if announced is not None:
            await announced.wait()

    async def _write(self, event: Any) -> tuple[TaskRecord, Announcement]:
        # One clock reading for every attempt: applying the event to the same record
        # then gives the same result, so a retry can recognise its own earlier write.
        now = time.time()
        delay, waited = 0.05, 0.0
        while True:
            try:
                return await self._write_once(event, now)
            except Unavailable as exc:
                if waited >= max(self.record.lease_s, 5.0):
                    raise Lost(f"broker unavailable for {waited:.1f}s: {exc}") from None
                await anyio.sleep(delay)
                waited += delay
                delay = min(delay * 2, 1.0)

    async def _write_once(self, event: Any, now: float) -> tuple[TaskRecord, Announcement]:
        async with self._lock:
            try:
                self.record, self.revision, announced = await self.bus.write_and_announce(
                    self.record, self.revision, event, now
                )
            except Conflict:
                fresh, rev = await self.bus.read(self.record.id)
                if fresh == _applied(self.record, event, now):
                    # Our own write, from an attempt whose ack was lost and whose check
                    # found the broker away too: it landed; announce it now.
                    old, self.record, self.revision = self.record, fresh, rev
                    announced = await self.bus.announce(old, fresh, rev, event)
                else:
                    if fresh.owner != self.agent or fresh.epoch != self.record.epoch or fresh.state != "working":
                        raise Lost(
                            f"task {self.record.id} is {fresh.state}, owner {fresh.owner} epoch {fresh.epoch}"
                        ) from None
                    self.record, self.revision = fresh, rev
                    self.record, self.revision, announced = await self.bus.write_and_announce(
                        self.record, self.revision, event, now
                    )
            except Fenced as exc:
                raise Lost(str(exc)) from None
            except TransitionError as exc:
                raise Lost(str(exc)) from None
            if self.record.state != "working" and event.__struct_config__.tag in ("renew", "add_child", "charge"):
                await announced.wait()  # e.g. over budget: this write ended the task
                raise Lost(f"task {self.record.id} ended: {self.record.state} ({self.record.reason})")
            return self.record, announced

    async def progress(self, text: str, checkpoint: Any = None) -> None:
        """Report progress (renews the lease); ``checkpoint`` is kept for a successor."""
        await self.write(Renew(actor=self.agent, epoch=self.record.epoch, progress=text, checkpoint=checkpoint))

    async def renew(self) -> None:
        await self.write(Renew(actor=self.agent, epoch=self.record.epoch))

    async def charge(self, *, tokens: int = 0, cost: float = 0.0) -> None:
        """Charge usage to the task's budget; past it the task fails ``budget`` and the
        worker is stopped."""
        await self.write(Charge(actor=self.agent, epoch=self.record.epoch, usage=Usage(tokens=tokens, cost=cost)))

    async def delegate(
        self,
        capability: str,
        instruction: str,
        *,
        data: Any = None,
        criteria: str = "",
        review: ReviewPolicy | None = None,
        budget_share: float = 0.5,
    ) -> TaskRecord:
        """Hand a piece of work to another capability and wait for its final record.

        After a failover the new owner calls this again with the same arguments and
        gets the earlier child back (finished: its result; pending: it waits for it),
        found through the checkpointed ``children`` list."""
        if best_match(self.delegates, capability) is None:
            raise RoleViolation(
                f"{self.agent} may not delegate to {capability!r}: its brief's delegates are {list(self.delegates)}"
            )
        return await self._hand_off(
            lambda child_id: delegate(
                self.record,
                child_id=child_id,
                capability=capability,
                instruction=instruction,
                actor=self.agent,
                now=time.time(),
                data=data,
                criteria=criteria,
                review=review,
                budget_share=budget_share,
                span_id=secrets.token_hex(8),
            )
        )

    async def ask(self, question: str) -> str:
        """Ask the requester; returns its answer (the clarification task's result)."""
        child = await self._hand_off(
            lambda child_id: ask(
                self.record,
                child_id=child_id,
                question=question,
                actor=self.agent,
                now=time.time(),
                span_id=secrets.token_hex(8),
            )
        )
        if child.state != "done":
            raise TaskFailed(f"clarification {child.id} ended {child.state}: {child.error}")
        return str(child.result)

    async def _hand_off(self, build: Any) -> TaskRecord:
        child: TaskRecord = build(new_id())
        existing = await self._existing_child(fingerprint(child.capability, child.instruction))
        # While we wait, questions the child asks us are passed up to our requester.
        if existing is not None:
            return await answering_questions(self, lambda: wait_terminal(self.bus, existing, observer=self.agent))
        # Checkpoint first: a successor must know about the child even if we die
        # right after creating it. (The checkpoint's event acks need not hold that up.)
        _, announced = await self._write(AddChild(actor=self.agent, epoch=self.record.epoch, child=child.id))
        try:
            return await create_and_wait(
                self.bus, child, observer=self.agent, around=lambda wait: answering_questions(self, wait)
            )
        finally:
            with anyio.CancelScope(shield=True):  # bounded by the publish patience
                await announced.wait()

    async def _existing_child(self, print_: str) -> TaskRecord | None:
        for child_id in self.record.children:
            try:
                child, _ = await self.bus.read(child_id)
            except NotFound:
                continue
            if fingerprint(child.capability, child.instruction) == print_ and child.state != "cancelled":
                return child
        return None
