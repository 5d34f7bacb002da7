"""The agent runtime: a pump between the broker and the protocol's pure rules.

One :class:`Agent` is one member of the mesh. It

- publishes its card in the directory on a heartbeat (the card expires by itself if
  the process dies) and registers with the NATS services API (``nats micro ls``);
- pulls work items from the queues of the capabilities it serves (and of those below
  them), only while it has free capacity (:mod:`mesh.queues`): the broker hands each
  item to one free agent, specialists first;
- decides what to do with each item by :class:`protocol.AgentCore` (the agent's
  decisions without I/O): claim the task, take a review slot, drop a stale item, or
  hand it back; the core also says when each held item's lease is to be renewed and
  its lazy claim written, which one keeper task performs (:mod:`mesh.keeper`);
- works a task under the broker's lease on its item (:mod:`mesh.working`): claims it in
  the record lazily (a quick task is claimed and finished in one compare-and-set), and
  acknowledges the item once the result is written;
- reviews results offered to a reviewer capability it serves, in a review slot
  (:mod:`mesh.reviewing`);
- drains on request: stops pulling, lets held tasks finish within a grace period,
  hands back the rest, leaves the directory.

Nobody here watches other agents' leases: an item whose holder goes silent is lent by
the broker to the next free agent, which takes the task over by the protocol's rule.
Every background activity lives in an anyio task group; nothing is fire-and-forget.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import structlog

from protocol import (
    AgentCore,
    Claim,
    DropItem,
    GiveBack,
    Names,
    ReadRecord,
    Received,
    Refuse,
    RenewOwn,
    Review,
    Take,
    TaskRecord,
    Work,
    on_delivery,
)

from .bus import Bus, CorruptRecord, MeshError, NotFound, Settings
from .identity import IdentityError, load_seed, may_serve
from .keeper import Flag, HeldItem, Keeper
from .presence import Presence
from .queues import Delivery, Pulls
from .reviewing import ReviewRun
from .work import Reviewer, Serving, Worker
from .working import TaskRun

__all__ = ["AgentConfig", "Agent"]

log = structlog.get_logger("mesh.agent")


@dataclass(frozen=True)
class AgentConfig:
    id: str
    serves: tuple[str, ...]
    role: str = ""
    description: str = ""
    kind: str = ""
    #: the name of the brief the agent runs (its id is this plus a suffix, or given)
    brief: str = ""
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
        self.presence = Presence(self)
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
        #: renews held items' leases and writes their pending claims
        self.keeper = Keeper(self.core)
        self._pull_wanted = Flag()
        self._tasks_tg: anyio.abc.TaskGroup

    # --- what the agent's presence, task and review runs read -----------------------

    def load(self) -> int:
        """Tasks and reviews held."""
        return len(self._held) + len(self._reviewing)

    def held_tasks(self) -> tuple[str, ...]:
        return tuple(sorted(self._held))

    def reviews_held(self) -> int:
        return len(self._reviewing)

    def drain_requested(self) -> bool:
        return self._drain.is_set()

    # --- life cycle -----------------------------------------------------------------------

    def drain(self) -> None:
        """Ask the agent to drain and stop (thread-unsafe; call from its event loop)."""
        self._drain.set()

    async def stopped(self) -> None:
        """Wait until the agent has left the mesh."""
        await self._stopped.wait()

    def _bound_queues(self) -> Callable[[str], bool]:
        """The queues our key lets us pull from (the broker refuses the others): a
        served capability outside them is said now, not left as a queue that never
        delivers. Queues below a served capability are pulled from only if bound."""
        nkey = self.settings.nkey
        identity = load_seed(nkey) if nkey else None
        if identity is None or identity.role == "operator":
            return lambda capability: True
        serves = identity.serves
        outside = [capability for capability in self.config.serves if not may_serve(serves, capability)]
        if outside:
            raise IdentityError(
                f"the key {identity.path} is bound to {', '.join(serves or ()) or 'no capability'}, and this agent "
                f"serves {', '.join(outside)} too: bind the key to what the brief serves (`mesh keys bind "
                f"{identity.name} --serves ...`), rewrite the broker's auth config and reload it"
            )
        return lambda capability: may_serve(serves, capability)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Join the mesh and work until drained (or cancelled, which drains too)."""
        may_pull = self._bound_queues()
        self.bus = await Bus.connect(self.server, self.names, agent=self.config.id, settings=self.settings)
        self.pulls = Pulls(self.bus, self.config.serves, free=self._free, deliver=self._deliver, may_pull=may_pull)
        try:
            async with anyio.create_task_group() as tg:
                if isinstance(self.worker, Serving):
                    # Before any task, and outliving them all: cancelled with tg below.
                    await tg.start(self.worker.serve)
                async with anyio.create_task_group() as tasks_tg:
                    self._tasks_tg = tasks_tg
                    await self.presence.refuse_a_live_namesake()
                    await tg.start(self.presence.serve)
                    await tg.start(self.pulls.run)
                    tg.start_soon(self.keeper.run, tasks_tg)
                    tg.start_soon(self.keeper.renew_after_reconnecting, self.bus.reconnects)
                    tg.start_soon(self._top_up)
                    self.pulls.check_leases(self.config.lease_s, self.log)
                    # The card goes up last: in the directory means ready to work.
                    await tg.start(self.presence.heartbeat)
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
                await self.presence.leave()
                with anyio.move_on_after(5) as closing:
                    await self.bus.close()
                if closing.cancelled_caught:
                    self.log.warning("the broker connection did not close within 5 s; leaving anyway")
            self.log.info("agent left the mesh", completed=self.stats.completed, failed=self.stats.failed)
            self._stopped.set()

    async def _drain_held(self) -> None:
        """Stop pulling; give held tasks the grace period to finish, then hand the rest
        back (each hold releases its task when its scope is cancelled)."""
        self.draining = self.core.draining = True
        self.pulls.paused = True
        self._notify()
        if self._held:
            self.log.info("draining", holding=sorted(self._held), grace_s=self.config.drain_timeout_s)
            with contextlib.suppress(MeshError):  # the card says draining; it may wait
                await self.presence.publish_card()
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
                got = await self.read(item.task, item.record.root, copy=item.record)
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
        except MeshError as exc:
            # Broker away: let the item come back to someone (maybe us) soon.
            self.log.warning("could not act on a work item", task=item.task, error=str(exc) or type(exc).__name__)
            await d.hand_back(1.0)
        except Exception as exc:  # a bug or input we did not foresee: never the agent's end
            self.log.exception("failed on a work item", task=item.task)
            await self.bus.report(f"failed on work item for {item.task}: {exc!r}", subject=d.subject)
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
                await self.keeper.held(ticket).d.renew()
            case DropItem(why=why, fill_trail=fill):
                self.log.debug("dropped a stale item", task=item.task, why=why)
                if fill:
                    await self._fill_trail(record, revision)
                await d.ack()
            case Work(claim=claim, claim_first=first, fill_trail=fill):
                if fill:
                    await self._fill_trail(record, revision)  # a takeover: its owner went silent
                await TaskRun(self, d, record, revision, claim, claim_first=first).run()
            case Review(take=take):
                await ReviewRun(self, d, record, revision, take).run()

    # --- what task and review runs ask of the agent (mesh.working, mesh.reviewing) -------

    def hold(
        self,
        d: Delivery,
        record: TaskRecord,
        log: Any,
        *,
        review: bool,
        claim: Callable[[], Awaitable[bool]],
        follow: Callable[[], Awaitable[bool]] | None = None,
    ) -> HeldItem:
        """The delivery becomes a held task (or review): its capacity moves there from
        the deliveries being decided on, the keeper renews its lease (and writes its
        pending claim if the work takes a while, then follows its record), and its
        work gets a scope to stop it (a drain cancels it)."""
        hold = HeldItem(d, work=anyio.CancelScope(), log=log, claim=claim, follow=follow)
        (self._reviewing if review else self._held)[record.id] = hold.work
        d.deciding = False
        self.keeper.keep(hold, task=record.id, claim_timeout_s=record.claim_timeout_s)
        return hold

    def release(self, hold: HeldItem, task_id: str) -> None:
        """The held task's (or review's) work is over: stop keeping its item, free its
        capacity, and ask the queues for more."""
        self.keeper.unkeep(hold)
        (self._reviewing if hold.d.item.kind == "review" else self._held).pop(task_id, None)
        self._freed()

    async def _fill_trail(self, record: TaskRecord, revision: int) -> None:
        """The last holder of an item we received went silent: it may have died between
        its write and that write's event and work items. Record what is missing (the
        events stream is the trail, and the archive once the record leaves the bucket)."""
        if await self.bus.fill_trail(record, revision, actor=self.config.id):
            self.log.info("recorded a write its silent writer did not", task=record.id, state=record.state)

    def retake(self, d: Delivery, fresh: TaskRecord) -> Claim | None:
        """The claim to try on ``fresh`` after our pending one met a changed record.
        Only an open task is still ours to claim: if another agent holds it, even
        under our own ticket, the broker lent our item to it (our lease lapsed while we
        worked unclaimed), and taking it back would only make two holders of one item."""
        if fresh.state != "open":
            return None
        decision = on_delivery(d.item, fresh, agent=self.config.id, ticket=d.ticket)
        return decision.event if isinstance(decision, Take) and isinstance(decision.event, Claim) else None

    async def read(self, task_id: str, root: str, *, copy: TaskRecord | None) -> tuple[TaskRecord, int] | None:
        """The task's record, or None if it is gone. An unreadable one is reported and
        ended from ``copy`` (our own copy of the task, e.g. our work item's): the
        record as it then is is returned."""
        try:
            return await self.bus.read_any(task_id, root=root)
        except NotFound:
            return None
        except CorruptRecord as exc:
            return await self.end_unreadable(exc, copy)

    async def end_unreadable(self, exc: CorruptRecord, copy: TaskRecord | None) -> tuple[TaskRecord, int] | None:
        """Report an unreadable record and end its task from ``copy`` (PROTOCOL 6.15)."""
        self.log.warning("unreadable task record: ending the task", task=exc.task_id, error=str(exc))
        try:
            return await self.bus.end_unreadable(exc, copy, actor=self.config.id)
        except (CorruptRecord, NotFound):
            return None
