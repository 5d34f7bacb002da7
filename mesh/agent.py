"""The agent runtime: a pump between the broker and the protocol's pure rules.

One :class:`Agent` is one member of the mesh. It

- publishes its card in the directory on a heartbeat (the card expires by itself if
  the process dies) and registers with the NATS services API (``nats micro ls``);
- pulls work items from the queues of the capabilities it serves (and of those below
  them), only while it has free capacity (:mod:`mesh.queues`): the broker hands each
  item to one free agent, specialists first;
- decides what to do with each item by :func:`protocol.on_delivery`: claim the task,
  take a review slot, drop a stale item, or hand it back;
- works a task under the broker's lease on its item, which it renews with in-progress
  acks; claims it in the record lazily (a quick task is claimed and finished in one
  compare-and-set), and acknowledges the item once the result is written;
- reviews results offered to a reviewer capability it serves, in a review slot;
- drains on request: stops pulling, lets held tasks finish within a grace period,
  hands back the rest, leaves the directory.

Nobody here watches other agents' leases: an item whose holder goes silent is lent by
the broker to the next free agent, which takes the task over by the protocol's rule.
Every background activity lives in an anyio task group; nothing is fire-and-forget.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import nats.errors
import structlog

from protocol import (
    MAX_ERROR_CHARS,
    REVIEW_HAND_BACK_S,
    Ack,
    AgentCard,
    AgentCore,
    Approve,
    Claim,
    ControlReply,
    ControlRequest,
    DropItem,
    Fail,
    Finish,
    GiveBack,
    HandBack,
    LimitExceeded,
    Names,
    NotUnderstood,
    ReadRecord,
    Received,
    Refuse,
    Release,
    RemoteProtocolError,
    RenewLease,
    RenewOwn,
    Review,
    Reviewing,
    Take,
    TaskRecord,
    TransitionError,
    Veto,
    Work,
    WriteClaim,
    decode_control,
    decode_record,
    encode,
    on_delivery,
    settle_review,
    settle_work,
    trace_id,
)

from .bus import Bus, Conflict, CorruptRecord, MeshError, NotFound, Settings, Unavailable
from .queues import Delivery, Pulls
from .work import Lost, Reviewer, RoleViolation, TaskContext, TaskFailed, Verdict, Worker

__all__ = ["AgentConfig", "Agent", "IdInUse"]

log = structlog.get_logger("mesh.agent")


class IdInUse(MeshError):
    """Another live agent already runs under this agent id."""


@dataclass(frozen=True)
class AgentConfig:
    id: str
    serves: tuple[str, ...]
    role: str = ""
    description: str = ""
    kind: str = ""
    delegates: tuple[str, ...] = ()
    expertise: tuple[str, ...] = ()
    capacity: int = 1
    version: str = "0.1.0"
    #: the lease of the queues this agent creates (None: the settings' lease)
    lease_s: float | None = None
    heartbeat_s: float = 2.0
    #: work not finished this soon after its item arrived is claimed in the record on
    #: its own (at most a quarter of the task's claim timeout); quicker work is claimed
    #: and finished in one write
    claim_after_s: float = 0.25
    drain_timeout_s: float = 30.0


@dataclass
class _Stats:
    completed: int = 0
    failed: int = 0
    reviews: int = 0


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        worker: Worker,
        *,
        server: str,
        names: Names | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.config = config
        self.worker = worker
        self.server = server
        self.names = names or Names()
        settings = settings or Settings.from_env()
        if config.lease_s is not None:
            settings = dataclasses.replace(settings, lease_s=config.lease_s)
        self.settings = settings
        self.log = log.bind(agent=config.id)
        self.bus: Bus
        self.pulls: Pulls
        self.started = time.time()
        self.stats = _Stats()
        self.draining = False
        self._drain = anyio.Event()
        self._stopped = anyio.Event()
        self._changed = anyio.Event()
        self._held: dict[str, anyio.CancelScope] = {}
        self._reviewing: dict[str, anyio.CancelScope] = {}
        #: the agent's decisions (capacity, leases, lazy claims), without I/O
        self.core = AgentCore(
            agent=config.id,
            serves=config.serves,
            capacity=config.capacity,
            reviews=isinstance(worker, Reviewer),
            claim_after_s=config.claim_after_s,
        )
        #: held items by ticket: their deliveries and work, for the keeper to act on
        self._holds: dict[int, _Hold] = {}
        self._keeper_wake = _Flag()
        self._keeper_due = math.inf
        self._pull_wanted = _Flag()
        self._tasks_tg: anyio.abc.TaskGroup

    # --- life cycle -----------------------------------------------------------------------

    def drain(self) -> None:
        """Ask the agent to drain and stop (thread-unsafe; call from its event loop)."""
        self._drain.set()

    async def stopped(self) -> None:
        """Wait until the agent has left the mesh."""
        await self._stopped.wait()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Join the mesh and work until drained (or cancelled, which drains too)."""
        self.bus = await Bus.connect(self.server, self.names, agent=self.config.id, settings=self.settings)
        self.pulls = Pulls(self.bus, self.config.serves, free=self._free, deliver=self._deliver)
        try:
            async with anyio.create_task_group() as tg:
                async with anyio.create_task_group() as tasks_tg:
                    self._tasks_tg = tasks_tg
                    await self._refuse_a_live_namesake()
                    await tg.start(self._service)
                    await tg.start(self.pulls.run)
                    tg.start_soon(self._keeper)
                    tg.start_soon(self._renew_after_reconnecting)
                    tg.start_soon(self._top_up)
                    self._check_leases()
                    # The card goes up last: in the directory means ready to work.
                    await tg.start(self._heartbeat)
                    self.log.info("agent ready", serves=self.config.serves, capacity=self.config.capacity)
                    task_status.started()
                    try:
                        await self._drain.wait()
                    finally:
                        with anyio.CancelScope(shield=True):
                            await self._drain_held()
                tg.cancel_scope.cancel()
        finally:
            # Leave the directory however we got here (drained, cancelled, crashed).
            with anyio.CancelScope(shield=True):
                try:
                    with anyio.move_on_after(2):
                        await self._remove_our_card()
                except (nats.errors.Error, MeshError) as exc:
                    self.log.warning(
                        "could not remove our card; it expires by itself", error=str(exc) or type(exc).__name__
                    )
                with anyio.move_on_after(5) as closing:
                    await self.bus.close()
                if closing.cancelled_caught:
                    self.log.warning("the broker connection did not close within 5 s; leaving anyway")
            self.log.info("agent left the mesh", completed=self.stats.completed, failed=self.stats.failed)
            self._stopped.set()

    async def _refuse_a_live_namesake(self) -> None:
        """One id, one live process: if an agent answers on our id's control endpoint,
        this process must not join under the same id (it would take that agent's
        control requests and overwrite its card). A card left by a dead process of
        ours does not count: nobody answers for it."""
        try:
            await self.bus.request(
                self.names.control_subject(self.config.id), encode(ControlRequest(action="status")), timeout=2.0
            )
        except (NotFound, Unavailable):
            return  # nobody listens (the usual case), or nobody answered in time
        where = ""
        with contextlib.suppress(MeshError):
            card = await self.bus.card(self.config.id)
            if card is not None:
                where = f" (on {card.host}, pid {card.pid})"
        raise IdInUse(
            f"agent id {self.config.id!r} is in use by a live agent{where}; run this one with another "
            "--id, or stop that one first (`mesh agent drain ID`)"
        )

    async def _remove_our_card(self) -> None:
        """Remove our card, and only ours: a process that leaves must not delete the card
        of another process (which may have the same id by mistake)."""
        card = await self.bus.card(self.config.id)
        if card is None:
            return
        if (card.host, card.pid, card.started) != (socket.gethostname(), os.getpid(), self.started):
            self.log.warning("the card under our id is another process's; leaving it", host=card.host, pid=card.pid)
            return
        await self.bus.remove_card(self.config.id)

    def _check_leases(self) -> None:
        """Say so when a queue we serve has another lease than we were given: the first
        party to need a queue sets its lease, and a running queue is never changed."""
        if self.config.lease_s is None:
            return
        for capability in self.config.serves:
            info = self.pulls.lease_of(capability)
            if info is not None and abs(info - self.config.lease_s) > 1e-3:
                self.log.warning(
                    "the queue's lease differs from the brief's; using the queue's",
                    capability=capability,
                    queue_lease_s=info,
                    brief_lease_s=self.config.lease_s,
                )

    async def _drain_held(self) -> None:
        """Stop pulling; give held tasks the grace period to finish, then hand the rest
        back (each hold releases its task when its scope is cancelled)."""
        self.draining = self.core.draining = True
        self.pulls.paused = True
        self._notify()
        if self._held:
            self.log.info("draining", holding=sorted(self._held), grace_s=self.config.drain_timeout_s)
            with contextlib.suppress(MeshError, nats.errors.Error):  # the card says draining; it may wait
                await self._publish_card()
            with anyio.move_on_after(self.config.drain_timeout_s):
                while self._held:
                    await self._wait_change()
        for scope in [*self._held.values(), *self._reviewing.values()]:
            scope.cancel()
        with anyio.move_on_after(10):
            while self._held or self._reviewing:
                await self._wait_change()
        self._tasks_tg.cancel_scope.cancel()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _wait_change(self) -> None:
        await self._changed.wait()

    def _free(self) -> int:
        return self.core.free()

    def _freed(self) -> None:
        """Capacity came free (or may have): ask the queues for more."""
        self._notify()
        if not self.draining:
            self._pull_wanted.set()

    async def _top_up(self) -> None:
        """Ask the queues for items whenever capacity came free (one task, however many
        tasks end at once)."""
        while True:
            await self._pull_wanted.wait()
            await self.pulls.top_up()

    # --- directory and services -------------------------------------------------------

    def card(self) -> AgentCard:
        return AgentCard(
            id=self.config.id,
            role=self.config.role,
            description=self.config.description,
            kind=self.config.kind,
            serves=self.config.serves,
            delegates=self.config.delegates,
            expertise=self.config.expertise,
            capacity=self.config.capacity,
            load=len(self._held) + len(self._reviewing),
            tasks=tuple(sorted(self._held)),
            draining=self.draining,
            version=self.config.version,
            host=socket.gethostname(),
            pid=os.getpid(),
            started=self.started,
            heartbeat_s=self.config.heartbeat_s,
            completed=self.stats.completed,
            failed=self.stats.failed,
            refused=self.bus.refused,
        )

    async def _publish_card(self) -> None:
        await self.bus.publish_card(self.card(), ttl_s=max(3 * self.config.heartbeat_s, 1.0))

    async def _heartbeat(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        await self._publish_card()
        task_status.started()
        while True:
            await anyio.sleep(self.config.heartbeat_s)
            try:
                await self._publish_card()
            except (nats.errors.Error, MeshError) as exc:
                # Broker away: the card expires and reappears when we reconnect.
                self.log.warning("heartbeat failed", error=str(exc) or type(exc).__name__)

    async def _service(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with self.bus.service(
            version=self.config.version if _semver(self.config.version) else "0.1.0",
            description=f"agent-mesh agent {self.config.id}: {self.config.role or self.config.kind}",
            metadata={"agent": self.config.id, "serves": ",".join(self.config.serves), "role": self.config.role},
            subject=self.names.control_subject(self.config.id),
            handle=self._control,
        ):
            task_status.started()
            await anyio.sleep_forever()

    async def _control(self, data: bytes) -> bytes:
        """Answer a control request (``status``, ``drain``); garbage gets NotUnderstood."""
        try:
            control = decode_control(data)
        except RemoteProtocolError as exc:
            await self.bus.report(f"control request: {exc}", subject=self.names.control_subject(self.config.id))
            return encode(
                NotUnderstood(subject=self.names.control_subject(self.config.id), error=str(exc), at=time.time())
            )
        if control.action == "drain":
            self.log.info("drain requested over the control endpoint")
            self.drain()
        reply = ControlReply(
            agent=self.config.id, action=control.action, draining=self._drain.is_set(), tasks=tuple(sorted(self._held))
        )
        return encode(reply)

    # --- deliveries --------------------------------------------------------------------

    def _deliver(self, delivery: Delivery) -> None:
        """A work item arrived (within our free capacity): decide on it, and work on it,
        in a task of its own, holding one unit of capacity meanwhile."""
        self.core.arrived()
        self._tasks_tg.start_soon(self._handle, delivery)

    async def _handle(self, d: Delivery) -> None:
        item = d.item
        try:
            action = self.core.receive(
                item, ticket=d.ticket, delivered=d.delivered, lease_s=d.lease_s, now=time.monotonic()
            )
            record, revision = item.record, item.revision
            if isinstance(action, ReadRecord):
                got = await self._read(item.task, item.record.root, copy=item.record)
                if got is None:
                    await d.ack()
                    return
                record, revision = got
                action = self.core.decide(
                    item,
                    record,
                    revision,
                    ticket=d.ticket,
                    delivered=d.delivered,
                    lease_s=d.lease_s,
                    now=time.monotonic(),
                )
            await self._act(d, action, record, revision)
        except (nats.errors.Error, MeshError) as exc:
            # Broker away: let the item come back to someone (maybe us) soon.
            self.log.warning("could not act on a work item", task=item.task, error=str(exc) or type(exc).__name__)
            await d.hand_back(1.0)
        except Exception as exc:  # a bug or input we did not foresee: never the agent's end
            self.log.exception("failed on a work item", task=item.task)
            await self.bus.report(f"failed on work item for {item.task}: {exc!r}", subject=d.msg.subject)
            await d.hand_back(1.0)
        finally:
            if d.deciding:
                d.deciding = False
                self.core.settled()
                self._freed()

    async def _act(self, d: Delivery, action: Received, record: TaskRecord, revision: int) -> None:
        """Perform what the core decided on a delivery."""
        item = d.item
        match action:
            case Refuse(why=why):
                self.log.warning("refused an item outside the brief", task=item.task, capability=item.record.capability)
                await self.bus.report(
                    f"role: {why}; refusing work item for {item.task}", subject=self.names.work_subject(d.capability)
                )
                await d.refuse()
            case GiveBack(why=why, wait_s=wait_s):
                self.log.debug("handed an item back", task=item.task, why=why)
                await d.hand_back(wait_s)
            case RenewOwn(ticket=ticket):
                # Our own item again: its lease ran out at the broker while we could not
                # renew (the broker was away). We still hold it: renew, and let this
                # delivery be (acks and renewals go by stream sequence).
                self.log.info("renewed an item the broker lent back to us", task=item.task)
                d.settled = True
                await self._holds[ticket].d.renew()
            case DropItem(why=why, fill_trail=fill):
                self.log.debug("dropped a stale item", task=item.task, why=why)
                if fill:
                    await self._fill_trail(record, revision)
                await d.ack()
            case Work(claim=claim, claim_first=first, fill_trail=fill):
                if fill:
                    await self._fill_trail(record, revision)  # a takeover: its owner went silent
                await self._work(d, record, revision, claim, claim_first=first)
            case Review(take=take):
                await self._review(d, record, revision, take)

    def _hold(
        self,
        d: Delivery,
        record: TaskRecord,
        where: dict[str, anyio.CancelScope],
        log: Any,
        *,
        claim: Callable[[], Awaitable[bool]],
        follow: Callable[[], Awaitable[bool]] | None = None,
    ) -> _Hold:
        """The delivery becomes a held task (or review) in ``where``: its capacity moves
        there from the deliveries being decided on, the keeper renews its lease (and
        writes its pending claim if the work takes a while, then follows its record),
        and its work gets a scope to stop it."""
        hold = _Hold(d, work=anyio.CancelScope(), log=log, claim=claim, follow=follow)
        where[record.id] = hold.work
        d.deciding = False
        kept = self.core.hold(
            d.ticket,
            task=record.id,
            kind=d.item.kind,
            lease_s=d.lease_s,
            claim_timeout_s=record.claim_timeout_s,
            now=time.monotonic(),
        )
        self._holds[d.ticket] = hold
        if min(kept.renew_at, kept.claim_at) < self._keeper_due:
            self._keeper_wake.set()
        return hold

    async def _hand_back_review(self, d: Delivery) -> None:
        """Return a review item we may not review, for another reviewer to take."""
        await d.hand_back(REVIEW_HAND_BACK_S)

    async def _fill_trail(self, record: TaskRecord, revision: int) -> None:
        """The last holder of an item we received went silent: it may have died between
        its write and that write's event and work items. Record what is missing (the
        events stream is the trail, and the archive once the record leaves the bucket)."""
        if await self.bus.fill_trail(record, revision, actor=self.config.id):
            self.log.info("recorded a write its silent writer did not", task=record.id, state=record.state)

    async def _renew_after_reconnecting(self) -> None:
        """Renew every held item at once after a reconnection, before the broker lends
        out those whose lease ran out while we were away."""
        while True:
            await self.bus.reconnects.wait()
            self.core.on_reconnect(self.bus.reconnects.at)
            self._keeper_wake.set()

    def _retake(self, d: Delivery, fresh: TaskRecord) -> Claim | None:
        """The claim to try on ``fresh`` after our pending one met a changed record.
        Only an open task is still ours to claim: if another agent holds it, even
        under our own ticket, the broker lent our item to it (our lease lapsed while we
        worked unclaimed), and taking it back would only make two holders of one item."""
        if fresh.state != "open":
            return None
        decision = on_delivery(d.item, fresh, agent=self.config.id, ticket=d.ticket)
        return decision.event if isinstance(decision, Take) and isinstance(decision.event, Claim) else None

    async def _read(self, task_id: str, root: str, *, copy: TaskRecord | None) -> tuple[TaskRecord, int] | None:
        """The task's record, or None if it is gone. An unreadable one is reported and
        ended from ``copy`` (our own copy of the task, e.g. our work item's): the
        record as it then is is returned."""
        try:
            return await self.bus.read_any(task_id, root=root)
        except NotFound:
            return None
        except CorruptRecord as exc:
            return await self._end_unreadable(exc, copy)

    async def _end_unreadable(self, exc: CorruptRecord, copy: TaskRecord | None) -> tuple[TaskRecord, int] | None:
        self.log.warning("unreadable task record: ending the task", task=exc.task_id, error=str(exc))
        await self.bus.report(str(exc), key=self.names.task_key(exc.task_id))
        try:
            return await self.bus.end_unreadable(exc, copy, actor=self.config.id)
        except (CorruptRecord, NotFound):
            return None

    # --- leases and lazy claims: one keeper for every held item --------------------------

    def _unkeep(self, hold: _Hold) -> None:
        self.core.release(hold.d.ticket)
        self._holds.pop(hold.d.ticket, None)
        if hold.follower is not None:
            hold.follower.cancel()

    async def _keeper(self) -> None:
        """Perform the renewals and pending claims the core says are due, and sleep
        until the next one. One task for all holds: a quick task costs no timer."""
        while True:
            for due in self.core.on_tick(time.monotonic()):
                hold = self._holds.get(due.ticket)
                if hold is None:
                    continue
                match due:
                    case RenewLease():
                        await hold.d.renew()
                    case WriteClaim():
                        self._tasks_tg.start_soon(self._claim_now, hold)
            self._keeper_due = self.core.next_wakeup()
            with anyio.move_on_after(max(self._keeper_due - time.monotonic(), 0.0)):
                await self._keeper_wake.wait()

    async def _claim_now(self, hold: _Hold) -> None:
        """Write a hold's pending claim; on success, follow its record from then on."""
        try:
            ok = await hold.claim()
        except (nats.errors.Error, MeshError) as exc:
            hold.log.warning("claim failed, will retry", error=str(exc) or type(exc).__name__)
            self.core.claim_failed(hold.d.ticket, time.monotonic())
            self._keeper_wake.set()
            return
        if not ok:
            hold.lost = True
            hold.work.cancel()
        elif hold.follow is not None and hold.d.ticket in self._holds:
            scope = anyio.CancelScope()
            hold.follower = scope
            self._tasks_tg.start_soon(self._follow_hold, hold, scope)

    async def _follow_hold(self, hold: _Hold, scope: anyio.CancelScope) -> None:
        with scope:
            assert hold.follow is not None
            if not await hold.follow():
                hold.lost = True
                hold.work.cancel()

    # --- working a task ------------------------------------------------------------------

    async def _work(self, d: Delivery, record: TaskRecord, revision: int, claim: Claim, *, claim_first: bool) -> None:
        ctx = TaskContext(
            self.bus,
            record,
            revision,
            agent=self.config.id,
            delegates=self.config.delegates,
            claim=claim,
            retake=lambda fresh: self._retake(d, fresh),
            patience_s=max(d.lease_s, 5.0),
        )
        log = self.log.bind(task=record.id, root=record.root, epoch=ctx.epoch, trace_id=trace_id(record.trace))
        hold = self._hold(
            d,
            record,
            self._held,
            log,
            claim=lambda: self._write_claim(ctx, log),
            follow=lambda: self._watch_record(ctx, d.lease_s, log),
        )
        scope = hold.work
        outcome = "lost"
        try:
            with scope:
                if claim_first:
                    # Someone held this item before us: claim before working, so a
                    # task that keeps killing its holders is counted (max_lapses).
                    await ctx.claim()  # (the keeper's scheduled claim then only starts following)
                outcome = await self._run_worker(ctx, log)
            if scope.cancelled_caught and outcome == "lost" and not hold.lost:
                with anyio.CancelScope(shield=True):
                    await self._hand_back(d, ctx, log)
                    outcome = "handed back"
        except Lost as exc:
            log.info("the task is not ours", why=str(exc))
            outcome = "abandoned"
        except Exception as exc:  # a bug or input we did not foresee: never the agent's end
            log.exception("failed holding a task")
            await self.bus.report(f"failed holding task {record.id}: {exc!r}", key=self.names.task_key(record.id))
            outcome = "abandoned"
        finally:
            self._unkeep(hold)
            self._held.pop(record.id, None)
            if outcome == "done":
                self.stats.completed += 1
            elif outcome == "failed":
                self.stats.failed += 1
            elif hold.lost:
                outcome = "abandoned"
            self._freed()
            # Only now, with the slot free, settle the item and await the acks of the
            # result's events: the requester may see the end and submit its next task
            # at once, and that task's pull must find us with room. Shielded: the
            # result is committed and its events must be recorded, even while a drain
            # cancels us (bounded by the publish patience). The result's events first,
            # the item last: an acknowledged item means the end is on record (else
            # whoever gets the item next records it).
            with anyio.CancelScope(shield=True):
                await ctx.settle()
                await self._settle(d, ctx, outcome)

    async def _write_claim(self, ctx: TaskContext, log: Any) -> bool:
        try:
            await ctx.claim()
        except Lost as exc:
            log.info("the task is not ours, stopping work", why=str(exc))
            return False
        return True

    async def _settle(self, d: Delivery, ctx: TaskContext, outcome: str) -> None:
        """Acknowledge the item if the task needs it no more; leave it alone if it may
        be someone else's (a takeover lends them the same item)."""
        record: TaskRecord | None = ctx.record
        if outcome == "abandoned":
            try:
                got = await self._read(ctx.record.id, ctx.record.root, copy=ctx.record)
            except (MeshError, nats.errors.Error):
                return  # unsure: leave it; whoever gets it next decides
            record = None if got is None else got[0]
        if isinstance(settle_work(outcome, record), Ack):
            await d.ack()

    async def _watch_record(self, ctx: TaskContext, lease_s: float, log: Any) -> bool:
        """Follow our task's record once claimed: False when someone else moved it on
        (the requester cancelled it or ended it at its deadline, another agent took it
        over because our lease lapsed), so the work stops. A republished write only
        wakes us (anyone may publish on that subject): the bucket decides."""
        async with self.bus.follow(ctx.record.id) as writes:
            while True:
                write = await writes.next(timeout=max(lease_s, 1.0))
                if write is not None and not self._moved_on(write[1], ctx):
                    continue  # our own write, or a hint that says nothing changed for us
                try:
                    fresh, _ = await self.bus.read(ctx.record.id)
                except CorruptRecord as exc:
                    await self._end_unreadable(exc, ctx.record)
                    return False
                except (MeshError, nats.errors.Error):
                    continue
                if self._moved_on_record(fresh, ctx):
                    log.info("the task moved on, stopping work", state=fresh.state, owner=fresh.owner)
                    return False

    def _moved_on(self, data: bytes, ctx: TaskContext) -> bool:
        """Whether a republished write says the task moved on (or cannot be read)."""
        try:
            return self._moved_on_record(decode_record(data), ctx)
        except RemoteProtocolError:
            return True  # the bucket will say what it holds

    def _moved_on_record(self, record: TaskRecord, ctx: TaskContext) -> bool:
        ended_by_others = record.state == "cancelled" or (record.state == "failed" and record.reason == "deadline")
        return record.owner != self.config.id or record.epoch != ctx.epoch or ended_by_others

    async def _run_worker(self, ctx: TaskContext, log: Any) -> str:
        try:
            result = await self.worker.work(ctx)
        except Lost as exc:
            log.warning("lost the task, abandoning it", why=str(exc))
            return "abandoned"
        except TaskFailed as exc:
            return await self._finish(
                ctx, Fail(actor=self.config.id, epoch=ctx.epoch, reason=exc.reason, message=str(exc)), log
            )
        except RoleViolation as exc:
            log.warning("role violation", why=str(exc))
            await self.bus.report(
                f"role violation on task {ctx.record.id}: {exc}", key=self.names.task_key(ctx.record.id)
            )
            return await self._finish(
                ctx, Fail(actor=self.config.id, epoch=ctx.epoch, reason="error", message=f"role violation: {exc}"), log
            )
        except Exception as exc:  # a worker bug fails its task, loudly; it never kills the agent
            log.exception("worker raised")
            await self.bus.report(f"worker raised on task {ctx.record.id}: {exc!r}")
            return await self._finish(
                ctx,
                Fail(actor=self.config.id, epoch=ctx.epoch, reason="error", message=f"{type(exc).__name__}: {exc}"),
                log,
            )
        return await self._finish(ctx, Finish(actor=self.config.id, epoch=ctx.epoch, result=result), log)

    async def _finish(self, ctx: TaskContext, event: Finish | Fail, log: Any) -> str:
        try:
            with anyio.CancelScope(shield=True):  # the result must land whatever stops us now
                try:
                    record = await ctx.end(event)  # acks awaited by _work, once our slot is free
                except LimitExceeded as exc:
                    # A result (or failure message) over a protocol limit: no party could
                    # read that record, so it is never written; the task fails instead.
                    log.warning("result refused: over a protocol limit", why=str(exc))
                    if isinstance(event, Finish):
                        event = Fail(actor=self.config.id, epoch=ctx.epoch, message=f"result too large: {exc}")
                    else:
                        message = event.message[: MAX_ERROR_CHARS - 20] + " ... (truncated)"
                        event = Fail(actor=event.actor, epoch=event.epoch, reason=event.reason, message=message)
                    record = await ctx.end(event)
        except Lost as exc:
            log.warning("result refused: lost the task", why=str(exc))
            return "abandoned"
        log.debug("finished", state=record.state, reason=record.reason)
        return "failed" if record.state == "failed" else "done"

    async def _hand_back(self, d: Delivery, ctx: TaskContext, log: Any) -> None:
        """Return the task (draining): release it in the record if we claimed it, then
        return its item to the queue for the next agent."""
        if ctx.claimed:
            try:
                await ctx.write(
                    Release(actor=self.config.id, epoch=ctx.epoch, note=f"handed back by {self.config.id} (draining)")
                )
            except (Lost, MeshError, nats.errors.Error) as exc:
                log.warning("could not hand back; its lease will lapse", why=str(exc))
                return
        await d.hand_back()
        log.info("handed back")

    # --- reviewing -------------------------------------------------------------------------

    async def _review(self, d: Delivery, record: TaskRecord, revision: int, take: Reviewing) -> None:
        """Review a result in one of its review slots. The slot is taken lazily, like a
        claim: with the vote in one write when the review is quick, else on its own
        after a moment (so the task's parties see a reviewer at work)."""
        assert isinstance(self.worker, Reviewer)
        log = self.log.bind(task=record.id, epoch=record.epoch)
        slot = _Slot(self, d, record, revision, take)
        hold = self._hold(d, record, self._reviewing, log, claim=lambda: slot.write(()))
        scope = hold.work
        verdict: Verdict | None = None
        try:
            with scope:
                ctx = TaskContext(self.bus, record, revision, agent=self.config.id, delegates=self.config.delegates)
                try:
                    verdict = await self.worker.review(ctx)
                except Exception as exc:  # a reviewer bug casts no vote; it never kills the agent
                    log.exception("reviewer raised")
                    await self.bus.report(
                        f"reviewer raised on task {record.id}: {exc!r}", key=self.names.task_key(record.id)
                    )
            with anyio.CancelScope(shield=True):
                if slot.lost or hold.lost:
                    log.info("the review moved on without us")
                    await self._settle_review(d, slot)
                    return
                if verdict is None:
                    await slot.give_back(log)  # drain, or a reviewer error: let another reviewer have it
                    return
                if await slot.vote(verdict, log):
                    self.stats.reviews += 1
                await d.ack()
        except Exception as exc:  # a bug or input we did not foresee: never the agent's end
            log.exception("failed reviewing a task")
            await self.bus.report(f"failed reviewing task {record.id}: {exc!r}", key=self.names.task_key(record.id))
        finally:
            self._unkeep(hold)
            self._reviewing.pop(record.id, None)
            self._freed()

    async def _settle_review(self, d: Delivery, slot: _Slot) -> None:
        """Our slot is gone: acknowledge the item if its round is over; leave it alone if
        a reviewer that took our slot over holds it (the same item, lent again); else
        return it for another reviewer."""
        if d.settled:
            return  # handed back already
        got = await self._read(slot.record.id, slot.record.root, copy=slot.record)
        match settle_review(None if got is None else got[0], round=d.item.round, ticket=d.ticket):
            case Ack():
                await d.ack()
            case GiveBack(wait_s=wait_s):
                await d.hand_back(wait_s)


class _Hold:
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


class _Slot:
    """Our review slot of one task: pending until written (with the vote, or alone
    when the review takes a while); its item's lease is renewed by the keeper."""

    def __init__(self, agent: Agent, d: Delivery, record: TaskRecord, revision: int, take: Reviewing) -> None:
        self.agent, self.d = agent, d
        self.record, self.revision = record, revision
        self.pending: Reviewing | None = take
        self.lost = False

    async def vote(self, verdict: Verdict, log: Any) -> bool:
        me, epoch = self.agent.config.id, self.record.epoch
        reasons = verdict.reasons or ("rejected without reason",)
        vote: Approve | Veto = (
            Approve(actor=me, epoch=epoch) if verdict.approve else Veto(actor=me, epoch=epoch, reasons=reasons)
        )
        if await self.write((vote,)):
            log.info("voted", approve=verdict.approve, state=self.record.state)
            return True
        log.info("vote not needed any more")
        return False

    async def give_back(self, log: Any) -> None:
        """Drain or error: free our slot (if it was written) and return the item."""
        if self.pending is None:
            release = Reviewing(actor=self.agent.config.id, epoch=self.record.epoch, release=True)
            if not await self.write((release,)):
                return
        await self.d.hand_back()
        log.info("gave our review slot back")

    async def write(self, events: tuple[Any, ...]) -> bool:
        """Write ``events`` after our pending slot (if any) by CAS; on a conflict, decide
        again on the fresh record. False when the review is not ours to act on."""
        bus, d = self.agent.bus, self.d
        for _ in range(20):
            if not events and self.pending is None:
                return True  # the slot is written already
            batch = events if self.pending is None else (self.pending, *events)
            try:
                before = self.record
                self.record, self.revision = await bus.write(self.record, self.revision, batch)
                if self.pending is not None:
                    lapsed = next((s.reviewer for s in before.slots if s.ticket == d.ticket), None)
                    self.agent.log.info("took a review slot", task=before.id, ticket=d.ticket, took_over=lapsed)
                self.pending = None
                return True
            except Conflict:
                got = await self.agent._read(self.record.id, self.record.root, copy=self.record)
                if got is None:
                    break
                self.record, self.revision = got
                if self.pending is not None:
                    decision = on_delivery(d.item, self.record, agent=self.agent.config.id, ticket=d.ticket)
                    if isinstance(decision, HandBack):
                        await self.agent._hand_back_review(d)  # another reviewer's to take
                        break
                    if not isinstance(decision, Take):
                        break
                    assert isinstance(decision.event, Reviewing)
                    self.pending = decision.event
            except TransitionError:
                break
            except (nats.errors.Error, MeshError):
                await anyio.sleep(0.2)
        self.lost = True
        return False


class _Flag:
    """A re-armable wake-up for one waiting loop."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = anyio.Event()


def _semver(version: str) -> bool:
    parts = version.split(".")
    return len(parts) == 3 and all(p.isdigit() for p in parts)
