"""The client API: what a program (or the CLI) uses to put work into the mesh.

    async with await Mesh.connect("nats://127.0.0.1:4222") as mesh:
        record = await mesh.run("summarize", "Summarize this.", data={"text": ...})

A client is a party to the tasks it submits, never a coordinator: it creates the
record and follows it; agents do the rest.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import time
from collections.abc import AsyncIterator, Collection
from typing import Any

import anyio
import anyio.abc

from protocol import (
    AgentCard,
    Approve,
    Budget,
    Cancel,
    Claim,
    ControlReply,
    ControlRequest,
    ErrorReport,
    Finish,
    LimitExceeded,
    Names,
    RemoteProtocolError,
    ReviewPolicy,
    TaskEvent,
    TaskRecord,
    TransitionError,
    Veto,
    decode_control_reply,
    decode_error,
    decode_event,
    encode,
    is_terminal,
    new_task,
    traceparent,
)

from .backing import Backing
from .bus import Bus, CorruptRecord, MeshError, NotFound, Settings, Unavailable
from .defaults import DEFAULT_SERVER, default_server
from .follow import OnRecord, create_and_wait, wait_terminal
from .identity import default_id, load_seed
from .questions import Answerer, Questions
from .work import new_id

__all__ = ["DEFAULT_SERVER", "default_server", "Answerer", "Mesh", "OverLimit"]


class OverLimit(MeshError, ValueError):
    """The task is over a protocol limit (docs/PROTOCOL.md 6.18: too much data, too long
    an instruction, too distant a deadline...); nothing was written. ``field``, ``size``
    and ``limit`` say which and by how much."""

    def __init__(self, exc: LimitExceeded) -> None:
        self.field, self.size, self.limit = exc.field, exc.size, exc.limit
        super().__init__(f"task refused: {exc}")


class Mesh:
    def __init__(self, bus: Bus, client_id: str) -> None:
        self.bus = bus
        self.id = client_id
        self.names = bus.names

    @classmethod
    async def connect(
        cls,
        url: str | None = None,
        *,
        client_id: str | None = None,
        names: Names | None = None,
        settings: Settings | None = None,
    ) -> Mesh:
        settings = settings or Settings.from_env()
        # With a key, a client is who its key says (mesh/identity.py)
        client_id = client_id or default_id(settings.nkey) or f"client-{new_id()[:8]}"
        bus = await Bus.connect(url or default_server(), names or Names(), agent=client_id, settings=settings)
        return cls(bus, client_id)

    async def close(self) -> None:
        await self.bus.drain()

    async def __aenter__(self) -> Mesh:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- tasks ------------------------------------------------------------------------------

    async def submit(
        self,
        capability: str,
        instruction: str,
        *,
        data: Any = None,
        criteria: str = "",
        tags: tuple[str, ...] = (),
        review: ReviewPolicy | int | None = None,
        deadline_s: float | None = None,
        hops: int = 8,
        budget: Budget | None = None,
        claim_timeout_s: float = 10.0,
        task_id: str | None = None,
    ) -> TaskRecord:
        """Create a task; returns the open record once its work item and "created"
        event are acknowledged. ``review=2`` asks for a quorum of two approvals from
        agents serving ``review`` (or pass a full policy). ``claim_timeout_s`` is how
        long it may wait with no agent at its queue before it ends ``no_agent``."""
        record = self._new_task(
            capability,
            instruction,
            data=data,
            criteria=criteria,
            tags=tags,
            review=review,
            deadline_s=deadline_s,
            hops=hops,
            budget=budget,
            claim_timeout_s=claim_timeout_s,
            task_id=task_id,
        )
        record = self.bus.stamp_new(record)
        await self.bus.create(record)
        return record

    def _new_task(
        self,
        capability: str,
        instruction: str,
        *,
        data: Any = None,
        criteria: str = "",
        tags: tuple[str, ...] = (),
        review: ReviewPolicy | int | None = None,
        deadline_s: float | None = None,
        hops: int = 8,
        budget: Budget | None = None,
        claim_timeout_s: float = 10.0,
        task_id: str | None = None,
    ) -> TaskRecord:
        if isinstance(review, int):
            review = ReviewPolicy(quorum=review)
        now = time.time()
        try:
            return new_task(
                task_id=task_id or new_id(),
                capability=capability,
                instruction=instruction,
                requester=self.id,
                now=now,
                data=data,
                criteria=criteria,
                tags=tags,
                review=review,
                hops=hops,
                deadline=None if deadline_s is None else now + deadline_s,
                budget=budget,
                claim_timeout_s=claim_timeout_s,
                trace=traceparent(secrets.token_hex(16), secrets.token_hex(8)),
            )
        except LimitExceeded as exc:
            raise OverLimit(exc) from None

    async def wait(
        self,
        task: TaskRecord | str,
        *,
        on_question: Answerer | None = None,
        on_record: OnRecord | None = None,
    ) -> TaskRecord:
        """Wait for the task to end; also judges no_agent and the deadline.

        With ``on_question``, questions that agents working on the task ask this
        client (clarification tasks addressed to ``agent.<client id>``) are answered by
        calling it with the question's record. ``on_record`` is called with each
        version of the record seen (progress, a new owner, review), to show it; the
        same version may come more than once."""
        if isinstance(task, TaskRecord):
            record = task
        else:
            try:
                record = await self.get(task)
            except CorruptRecord as exc:
                # Unreadable: end it from the copy its "created" event archived (raises
                # CorruptRecord if there is none: then nobody can say what the task was).
                record, _ = await self.bus.end_unreadable(exc, None, actor=self.id)
        if on_question is None:
            return await wait_terminal(self.bus, record, observer=self.id, on_record=on_record)
        final: list[TaskRecord] = []
        failure: list[Exception] = []
        async with anyio.create_task_group() as tg:
            questions = Questions(self.bus, self.id, on_question, tg)

            async def seen(current: TaskRecord) -> None:
                await questions.on_record(current)
                if on_record is not None:
                    await on_record(current)

            try:
                final.append(await wait_terminal(self.bus, record, observer=self.id, on_record=seen))
            except Exception as exc:  # re-raised as itself, not inside an ExceptionGroup
                failure.append(exc)
            tg.cancel_scope.cancel()
        if failure:
            raise failure[0]
        return final[0]

    async def run(self, capability: str, instruction: str, **kwargs: Any) -> TaskRecord:
        """Submit and wait: the final record. (Takes :meth:`submit`'s arguments.)

        Quicker than ``wait(submit(...))``: the task's record writes are followed from
        before it is created, so nothing need be read back, and the acks of its work
        item and event come back while an agent already works on it."""
        record = self._new_task(capability, instruction, **kwargs)
        return await create_and_wait(self.bus, record, observer=self.id)

    async def get(self, task_id: str, *, root: str | None = None) -> TaskRecord:
        """The task's record: live, or (a task never claimed yet, or finished and gone
        from the live bucket) as the events history keeps it."""
        record, _ = await self.bus.read_patiently(task_id, root=root)
        return record

    async def cancel(self, task_id: str, note: str = "", *, root: str | None = None) -> TaskRecord:
        """Cancel a task and, depth first, every descendant still running that this
        party may cancel. In a mesh with identities only a task's requester or an
        operator may (PROTOCOL.md 6.23): a child's requester is its parent's owner, which
        cancels the children it made when it sees its own task cancelled."""
        record = await self.get(task_id, root=root)
        if not self._may_cancel(record):
            raise MeshError(
                f"task {task_id}: only its requester ({record.requester}) or an operator may cancel it; "
                "connect with one of their keys (--nkey or MESH_NKEY)"
            )
        return await self._cancel_tree(record, note or f"cancelled by {self.id}")

    def _may_cancel(self, record: TaskRecord) -> bool:
        signer, trust = self.bus.trust.signer, self.bus.trust
        return signer is None or signer.public_key in (record.requester_key, *trust.operators)

    async def _cancel_tree(self, record: TaskRecord, note: str) -> TaskRecord:
        if not is_terminal(record):
            with contextlib.suppress(TransitionError):  # it ended meanwhile: nothing to cancel
                record, _ = await self.bus.transition(
                    record.id, lambda _: Cancel(actor=self.id, note=note), root=record.root
                )
        for child_id in record.children:
            with contextlib.suppress(NotFound, RemoteProtocolError):  # never created, or its parties end it
                child = await self.get(child_id, root=record.root)
                if self._may_cancel(child):  # else its requester (our task's owner) does
                    await self._cancel_tree(child, f"parent {record.id} cancelled")
        return await self.get(record.id, root=record.root)

    async def tree(self, task_id: str) -> list[tuple[int, TaskRecord]]:
        """The task and its descendants, depth first, with their depth."""
        out: list[tuple[int, TaskRecord]] = []

        async def walk(tid: str, depth: int, root: str | None) -> None:
            try:
                record = await self.get(tid, root=root)
            except (NotFound, RemoteProtocolError):
                return
            out.append((depth, record))
            for child in record.children:
                await walk(child, depth + 1, record.root)

        await walk(task_id, 0, None)
        return out

    # --- acting as a person (the human inbox) -------------------------------------------------

    async def offered(self, capability: str) -> list[TaskRecord]:
        """Tasks waiting in the queues of ``capability`` and below (open to claim, or
        results to review), as their work items carry them, newest state first."""
        records: dict[str, TaskRecord] = {}
        for _, item in await self.bus.waiting_items(f"{capability}.>") + await self.bus.waiting_items(capability):
            if item.task in records:
                continue
            with contextlib.suppress(NotFound, RemoteProtocolError):  # gone, or its parties end it: not offered
                record = await self.get(item.task, root=item.record.root)
                if record.state in ("open", "review"):
                    records[item.task] = record
        return list(records.values())

    async def take_and_finish(self, task_id: str, result: Any) -> TaskRecord:
        """Claim an open task as this client and finish it with ``result``, in one
        write (a person answering from an inbox holds no work item); then take its
        item off the queue."""
        record, revision = await self.bus.read_any(task_id)
        record, _ = await self.bus.write(
            record, revision, (Claim(actor=self.id), Finish(actor=self.id, epoch=record.epoch + 1, result=result))
        )
        await self._clear_items(task_id, record.capability)
        return record

    async def vote(self, task_id: str, *, approve: bool, reasons: tuple[str, ...] = ()) -> TaskRecord:
        """Approve or veto a result under review, as this client."""

        def event(record: TaskRecord) -> Approve | Veto:
            if approve:
                return Approve(actor=self.id, epoch=record.epoch)
            return Veto(actor=self.id, epoch=record.epoch, reasons=reasons)

        record, _ = await self.bus.transition(task_id, event)
        if record.state != "review" and record.review is not None:
            await self._clear_items(task_id, record.review.capability)
        return record

    @functools.cached_property
    def _clears_items(self) -> bool:
        """Whether our key may take a waiting item off a queue: an operator's or a
        person's (a client key bound to the capabilities it answers) may; an agent's or
        a requester's may not (the broker refuses it: docs/SECURITY.md, attack 25)."""
        nkey = self.bus.settings.nkey
        if not nkey:
            return True
        identity = load_seed(nkey)
        if identity.role == "client":
            return identity.serves is None or bool(identity.serves)
        return identity.role in ("operator", None)

    async def _clear_items(self, task_id: str, capability: str) -> None:
        """Take the items of a task that ended without an agent off its queue (people
        answer from the inbox, holding none); best effort: a later delivery would find
        the task ended and drop them, and until then readers of the queue skip them."""
        if not self._clears_items:
            return
        for sequence, item in await self.bus.waiting_items(capability):
            if item.task == task_id:
                await self.bus.delete_item(sequence)

    # --- directory -------------------------------------------------------------------------

    async def agents(self) -> list[AgentCard]:
        """Live agents' cards (cards of agents that stopped heartbeating have expired)."""
        return await self.bus.cards()

    async def control(self, agent_id: str, action: str, timeout: float = 5.0) -> ControlReply:
        """Send a control request (``status``, ``drain``) to one agent."""
        try:
            reply = await self.bus.request(
                self.names.control_subject(agent_id),
                encode(ControlRequest(action=action)),  # type: ignore[arg-type]  # decoded and checked by the agent
                timeout=timeout,
            )
        except NotFound:
            raise MeshError(f"no agent {agent_id!r} is listening (see `mesh agents`)") from None
        except Unavailable:
            raise MeshError(f"agent {agent_id!r} did not answer within {timeout}s") from None
        return decode_control_reply(reply)

    # --- events ------------------------------------------------------------------------------

    async def events(self, *, root: str | None = None, history: bool = False) -> AsyncIterator[TaskEvent]:
        """Events from the stream: live ones, or (``history``) all stored ones first."""
        async for data in self.bus.events(self.names.events_filter(root), history=history):
            try:
                yield decode_event(data)
            except RemoteProtocolError:
                continue

    async def reports(self, task_ids: Collection[str]) -> list[ErrorReport]:
        """The error reports stored about these tasks' records, oldest first: writes a
        party refused to act on, forged (PROTOCOL.md 6.23) or unreadable (6.15), each
        naming its revision and, for a forgery, its signer."""
        keys = {self.names.task_key(task_id) for task_id in task_ids}
        subject = self.names.events_subjects[1]
        out = []
        for data in await self.bus.stored(self.names.events_stream, subject):
            with contextlib.suppress(RemoteProtocolError):  # a foreign message is not ours to judge here
                report = decode_error(data)
                if report.key in keys:
                    out.append(report)
        return out

    async def unbacked(self, events: Collection[TaskEvent]) -> set[tuple[str, float, str]]:
        """With identities, the events (task, at, kind) that no verified write of their
        task backs: an event repeats the state, epoch and time of the write it follows,
        and events are unsigned, so one that no valid write shows is a false trace.
        ``created`` events are left out (an open task's first write may be still to
        come). Empty in a mesh without identities (nothing is verified there). One
        archive walk per task: to check events as they come, use :meth:`backing`."""
        if not self.bus.trust.signed:
            return set()
        shown: dict[str, set[tuple[str, int, float]]] = {}
        out = set()
        for event in events:
            if event.kind == "created":
                continue
            if event.task not in shown:
                shown[event.task] = await self.shown_by_verified_writes(event.task)
            if (event.state, event.epoch, event.at) not in shown[event.task]:
                out.add((event.task, event.at, event.kind))
        return out

    async def shown_by_verified_writes(self, task_id: str) -> set[tuple[str, int, float]]:
        """(state, epoch, updated) of each verified write of the task: those the archive
        holds, checked in order, and the bucket's (the archive's copy may lag it)."""
        writes: set[tuple[str, int, float]] = {
            (r.state, r.epoch, r.updated) for r in await self.bus.archived_chain(task_id)
        }
        with contextlib.suppress(NotFound, CorruptRecord):
            live, _ = await self.bus.read(task_id)
            writes.add((live.state, live.epoch, live.updated))
        return writes

    def backing(self) -> contextlib.AbstractAsyncContextManager[Backing]:
        """Check events as they come (``async with mesh.backing() as backing: ...
        await backing.backed(event)``): every write the broker republishes meanwhile is
        verified as it comes, so an event's check seldom reads the archive."""
        return Backing.following(self)

    async def history(self, root: str | None) -> list[TaskEvent]:
        """All stored events of one task tree (or of the whole mesh), in order."""
        out = []
        for data in await self.bus.stored(self.names.events_stream, self.names.events_filter(root)):
            with contextlib.suppress(RemoteProtocolError):  # a foreign message is not ours to judge here
                out.append(decode_event(data))
        return out
