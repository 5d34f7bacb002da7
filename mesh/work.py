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
    ask,
    best_match,
    delegate,
    fingerprint,
)

from .bus import Bus, Conflict, NotFound, Unavailable
from .follow import wait_terminal
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
        delay, waited = 0.05, 0.0
        while True:
            try:
                return await self._write_once(event)
            except Unavailable as exc:
                if waited >= max(self.record.lease_s, 5.0):
                    raise Lost(f"broker unavailable for {waited:.1f}s: {exc}") from None
                await anyio.sleep(delay)
                waited += delay
                delay = min(delay * 2, 1.0)

    async def _write_once(self, event: Any) -> TaskRecord:
        async with self._lock:
            try:
                self.record, self.revision = await self.bus.write(self.record, self.revision, event)
            except Conflict:
                fresh, rev = await self.bus.read(self.record.id)
                if fresh.owner != self.agent or fresh.epoch != self.record.epoch or fresh.state != "working":
                    raise Lost(
                        f"task {self.record.id} is {fresh.state}, owner {fresh.owner} epoch {fresh.epoch}"
                    ) from None
                self.record, self.revision = fresh, rev
                self.record, self.revision = await self.bus.write(self.record, self.revision, event)
            except Fenced as exc:
                raise Lost(str(exc)) from None
            except TransitionError as exc:
                raise Lost(str(exc)) from None
            if self.record.state != "working" and event.__struct_config__.tag in ("renew", "add_child", "charge"):
                raise Lost(f"task {self.record.id} ended: {self.record.state} ({self.record.reason})")
            return self.record

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
        if existing is None:
            # Checkpoint first: a successor must know about the child even if we die
            # right after creating it.
            await self.write(AddChild(actor=self.agent, epoch=self.record.epoch, child=child.id))
            await self.bus.create(child)
        else:
            child = existing
        # While we wait, questions the child asks us are passed up to our requester.
        return await answering_questions(self, lambda: wait_terminal(self.bus, child, observer=self.agent))

    async def _existing_child(self, print_: str) -> TaskRecord | None:
        for child_id in self.record.children:
            try:
                child, _ = await self.bus.read(child_id)
            except NotFound:
                continue
            if fingerprint(child.capability, child.instruction) == print_ and child.state != "cancelled":
                return child
        return None
