"""What an agent's implementation sees: the :class:`Worker` interface and the
:class:`TaskContext` through which it acts on the protocol (progress, delegate, ask,
charge). Workers never touch NATS or the record directly."""

from __future__ import annotations

import contextlib
import functools
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol, runtime_checkable

import anyio
import anyio.abc
import msgspec

from protocol import (
    MAX_PROGRESS_CHARS,
    AddChild,
    Charge,
    Fenced,
    RemoteProtocolError,
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
    takeover_at,
)

from .bus import Announcement, Bus, Conflict, CorruptRecord, NotFound, Unavailable
from .follow import OnRecord, create_and_wait, wait_terminal
from .otel import ModelCall, model_call
from .questions import Questions
from .retry import BROKER_BACKOFF, retry

__all__ = [
    "Worker",
    "Reviewer",
    "Serving",
    "Verdict",
    "TaskFailed",
    "RoleViolation",
    "Lost",
    "TaskContext",
    "new_id",
]


def new_id() -> str:
    return secrets.token_hex(8)


def _applied(record: TaskRecord, events: tuple[Any, ...], now: float) -> TaskRecord | None:
    """``events`` applied to ``record`` at ``now``, or None if the rules refuse them."""
    try:
        for event in events:
            record = apply(record, event, now)
    except TransitionError:
        return None
    return record


#: a write that meets this many other parties' writes in a row gives the task up
CONFLICT_RETRIES = 10
#: a takeover is written this long after the owner's lease ran out by our clock
TAKEOVER_MARGIN_S = 0.01


class TaskFailed(Exception):
    """Raised by a worker to end its task ``failed`` with a reason from the closed set."""

    def __init__(
        self, message: str, reason: Literal["error", "rejected", "budget", "hop_limit", "loop", "deadline"] = "error"
    ) -> None:
        super().__init__(message)
        self.reason = reason


class RoleViolation(Exception):
    """The brief does not allow this (e.g. delegating to a capability not in ``delegates``)."""


class _TooEarly(Exception):
    """Our pending takeover would be dated before the owner's lease ran out (the owner
    wrote again since we last waited): wait again, and write it with a fresh clock."""


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


@runtime_checkable
class Serving(Protocol):
    """A worker that keeps something open while its agent runs (connections to tool
    servers): the agent starts ``serve`` in its task group before it takes work
    (an error before ``task_status.started()`` stops the agent's start) and cancels
    it after the last task has ended."""

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None: ...


class TaskContext:
    """The owner's handle on one held task. All writes are compare-and-set on the
    revision this context last wrote or read, so a stale owner learns it lost the task
    on its next write (:class:`Lost`).

    A context may start *unclaimed* (``claim`` given): the agent works before it writes
    its claim, and the claim goes out with the first write, in the same
    compare-and-set (a quick task is claimed and finished in one write). ``retake``
    says, for a record that changed under a pending claim, which claim to try instead
    (None: the task is someone else's now)."""

    def __init__(
        self,
        bus: Bus,
        record: TaskRecord,
        revision: int,
        *,
        agent: str,
        delegates: tuple[str, ...],
        claim: Any = None,
        retake: Callable[[TaskRecord], Any] | None = None,
        patience_s: float = 10.0,
    ) -> None:
        self.bus = bus
        self.record = record
        self.revision = revision
        self.agent = agent
        self.delegates = delegates
        self._claim = claim
        self._retake = retake
        self._patience_s = patience_s
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
    def claimed(self) -> bool:
        """Whether our claim is written (until then the task is ours only by the
        broker's lease on its work item)."""
        return self._claim is None

    @property
    def epoch(self) -> int:
        """Our epoch as owner (the one our claim makes, if it is not written yet)."""
        return self.record.epoch + (0 if self._claim is None else 1)

    @property
    def idempotency_key(self) -> str:
        """Key for side effects: ``task_id:epoch``. A new owner after failover has a new
        epoch; a stale owner's repeat of the same effect carries the old key."""
        return f"{self.record.id}:{self.epoch}"

    async def claim(self) -> None:
        """Write our pending claim now (a task that takes a while: its parties should
        see it held)."""
        if self._claim is not None:
            await self.write(())

    async def write(self, event: Any) -> TaskRecord:
        """Apply ``event`` (or a sequence of events) to our record by CAS. While the
        broker is unreachable we retry for up to a lease period (others cannot take the
        task meanwhile: they cannot reach the broker either, and its lease is paused
        for nobody); after that the task is given up as :class:`Lost`."""
        record, announced = await self._write(event)
        await announced.wait()
        return record

    async def end(self, event: Any) -> TaskRecord:
        """:meth:`write` the task's last transition (finish, fail), returning before
        the acks of its events: the agent frees the task's slot first (the requester
        may see the end and submit its next task at once), then awaits them with
        :meth:`settle`."""
        record, self._announced = await self._write(event)
        return record

    async def settle(self) -> None:
        """Await the acks of :meth:`end`'s events and work items, if it left any
        (re-sent through a broker failover; see :class:`Announcement`)."""
        announced, self._announced = self._announced, None
        if announced is not None:
            await announced.wait()

    async def _write(self, event: Any) -> tuple[TaskRecord, Announcement]:
        events = tuple(event) if isinstance(event, (tuple, list)) else (event,)
        # The pauses between attempts, not the attempts (each may wait out the
        # broker's timeout), count against our patience.
        attempts = BROKER_BACKOFF.attempts_within(self._patience_s)
        while True:
            await self._wait_out_the_owners_lease()
            # One clock reading for every attempt: applying the events to the same record
            # then gives the same result, so a retry can recognise its own earlier write.
            now = time.time()
            try:
                return await retry(
                    functools.partial(self._write_once, events, now), retry_on=Unavailable, attempts=attempts
                )
            except _TooEarly:
                continue  # the owner wrote again meanwhile: its lease runs from that write
            except Unavailable as exc:
                raise Lost(f"broker unavailable for {self._patience_s:.1f}s of retries: {exc}") from None

    async def _wait_out_the_owners_lease(self) -> None:
        """Before our pending claim takes over a task being worked: wait until its owner
        has left the record unwritten for a whole lease. The broker lent us the owner's
        item, so its lease lapsed there, but every reader counts a takeover only from
        then (the ticket is in the record for anyone to copy; PROTOCOL.md 6.5)."""
        earliest = takeover_at(self.record) if self._claim is not None else None
        if earliest is not None and earliest > time.time():
            await anyio.sleep(earliest - time.time() + TAKEOVER_MARGIN_S)

    async def _write_once(self, events: tuple[Any, ...], now: float) -> tuple[TaskRecord, Announcement]:
        async with self._lock:
            batch = events if self._claim is None else (self._claim, *events)
            if not batch:
                return self.record, Announcement.done()
            try:
                announced = await self._compare_and_set(events, now)
            except Fenced as exc:
                raise Lost(str(exc)) from None
            except TransitionError as exc:
                raise Lost(str(exc)) from None
            self._claim = None
            kinds = {e.__struct_config__.tag for e in events}
            if self.record.state != "working" and kinds and kinds <= {"renew", "add_child", "charge"}:
                await announced.wait()  # e.g. over budget: this write ended the task
                raise Lost(f"task {self.record.id} ended: {self.record.state} ({self.record.reason})")
            return self.record, announced

    async def _compare_and_set(self, events: tuple[Any, ...], now: float) -> Announcement:
        """Write our pending claim (if any) and ``events`` on the record, re-reading after
        each conflict (votes, a cancel, a parent's write may come between) while the
        task is still ours; :class:`Lost` once it is not, or after many conflicts."""
        for _ in range(CONFLICT_RETRIES):
            batch = events if self._claim is None else (self._claim, *events)
            earliest = takeover_at(self.record) if self._claim is not None else None
            if earliest is not None and now < earliest:
                raise _TooEarly()
            try:
                self.record, self.revision, announced = await self.bus.write_and_announce(
                    self.record, self.revision, batch, now
                )
                return announced
            except Conflict:
                fresh, rev = await self._read_after_conflict()
            if rev and fresh == self._as_written(batch, now):
                # Our own write, from an attempt whose ack was lost and whose check
                # found the broker away too: it landed; announce it now.
                old, self.record, self.revision = self.record, fresh, rev
                return await self.bus.announce(old, fresh, rev, batch)
            self._still_ours(fresh)
            self.record, self.revision = fresh, rev
        raise Lost(f"task {self.record.id}: {CONFLICT_RETRIES} writes in a row met another party's write")

    async def _read_after_conflict(self) -> tuple[TaskRecord, int]:
        try:
            return await self.bus.read_any(self.record.id, root=self.record.root)
        except CorruptRecord as exc:
            # Someone wrote a record no conforming agent would: nothing in it can be
            # trusted, so the task ends (from our copy) and our work stops.
            # (It already reported the record; gone, or unreadable again as someone else
            # wrote: our work stops either way.)
            with contextlib.suppress(CorruptRecord, NotFound):
                await self.bus.end_unreadable(exc, self.record, actor=self.bus.agent)
            raise Lost(f"task {self.record.id}: unreadable record, task ended ({exc})") from None
        except NotFound:
            raise Lost(f"task {self.record.id} is gone") from None

    def _as_written(self, batch: tuple[Any, ...], now: float) -> TaskRecord | None:
        """The record our write of ``batch`` at ``now`` stored: the events applied, and
        our key recorded where the write makes us a party (a mesh with identities)."""
        applied = _applied(self.record, batch, now)
        return None if applied is None else self.bus.trust.stamp(self.record, applied)

    def _still_ours(self, fresh: TaskRecord) -> None:
        """After a conflict: may we write to ``fresh``? Raise :class:`Lost` if not."""
        if self._claim is not None:
            claim = None if self._retake is None else self._retake(fresh)
            if claim is None:
                raise Lost(f"task {fresh.id} is {fresh.state} (owner {fresh.owner}, epoch {fresh.epoch})")
            self._claim = claim
            return
        if fresh.owner != self.agent or fresh.epoch != self.record.epoch or fresh.state != "working":
            raise Lost(f"task {self.record.id} is {fresh.state}, owner {fresh.owner} epoch {fresh.epoch}")

    async def heartbeat(self) -> None:
        """Write the record without changing it otherwise (a ``renew`` with no progress):
        an owner at work writes at least every third of its lease, or anyone may take
        the task over with its ticket (PROTOCOL.md 6.5). No event; ``progress_at``
        stays, so a stuck task still shows as stuck."""
        await self.write(Renew(actor=self.agent, epoch=self.epoch))

    async def progress(self, text: str, checkpoint: Any = None) -> None:
        """Report progress (renews the lease); ``checkpoint`` is kept for a successor."""
        await self.write(Renew(actor=self.agent, epoch=self.epoch, progress=text, checkpoint=checkpoint))

    def model_call(
        self, *, model: str, provider: str, max_tokens: int | None = None, temperature: float | None = None
    ) -> ModelCall:
        """A span for one model call made for this task, the child of the task's span
        (OpenTelemetry, GenAI conventions), when this process sends traces (``OTEL_*``
        settings and the otel extra); a no-op otherwise. ``with task.model_call(...) as
        call: reply = ...; call.usage(input_tokens=..., output_tokens=...)``."""
        return model_call(
            self.record.trace,
            agent=self.agent,
            model=model,
            provider=provider,
            max_tokens=max_tokens,
            temperature=temperature,
        )

    async def charge(self, *, tokens: int = 0, cost: float = 0.0, note: str = "") -> None:
        """Charge usage to the task's budget; past it the task fails ``budget`` and the
        worker is stopped. ``note`` (what it paid for) is the ``charge`` event's note."""
        note = note[:MAX_PROGRESS_CHARS]
        await self.write(Charge(actor=self.agent, epoch=self.epoch, usage=Usage(tokens=tokens, cost=cost), note=note))

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

    async def children(self) -> list[TaskRecord]:
        """Records of the work this task delegated so far (its checkpointed
        ``children``, after a failover or an earlier round), wherever they are: live,
        or finished and archived. A child that cannot be found or read is left out."""
        out = []
        for child_id in self.record.children:
            try:
                child, _ = await self.bus.read_any(child_id, root=self.record.root)
            except (NotFound, RemoteProtocolError):
                continue
            out.append(child)
        return out

    async def _hand_off(self, build: Any) -> TaskRecord:
        await self.claim()  # a task that hands work off takes a while: show it held
        child: TaskRecord = build(new_id())
        existing = await self._existing_child(fingerprint(child.capability, child.instruction))
        announced: Announcement | None = None
        if existing is None:
            # Checkpoint first: a successor must know about the child even if we die
            # right after creating it. (The checkpoint's event acks need not hold that up.)
            _, announced = await self._write(AddChild(actor=self.agent, epoch=self.epoch, child=child.id))
        try:
            # While we wait, questions the child asks us are passed up to our requester.
            return await _answering(
                self,
                lambda on_record: (
                    wait_terminal(self.bus, existing, observer=self.agent, on_record=on_record)
                    if existing is not None
                    else create_and_wait(self.bus, child, observer=self.agent, on_record=on_record)
                ),
            )
        finally:
            if announced is not None:
                with anyio.CancelScope(shield=True):  # bounded by the publish patience
                    await announced.wait()

    async def _existing_child(self, print_: str) -> TaskRecord | None:
        """The child already made for this work (same fingerprint), unless cancelled."""
        return next(
            (
                child
                for child in await self.children()
                if fingerprint(child.capability, child.instruction) == print_ and child.state != "cancelled"
            ),
            None,
        )


async def _answering(task: TaskContext, wait: Callable[[OnRecord], Awaitable[TaskRecord]]) -> TaskRecord:
    """Run ``wait(on_record)`` (following a child) while answering the questions the
    child addresses to us, by asking our own requester."""
    out: list[TaskRecord] = []
    failure: list[Exception] = []

    async def pass_up(question: TaskRecord) -> str:
        return await task.ask(question.instruction)

    async with anyio.create_task_group() as tg:
        questions = Questions(task.bus, task.agent, pass_up, tg)
        try:
            out.append(await wait(questions.on_record))
        except Exception as exc:  # re-raised as itself below, not wrapped in an ExceptionGroup
            failure.append(exc)
        tg.cancel_scope.cancel()
    if failure:
        raise failure[0]
    return out[0]
