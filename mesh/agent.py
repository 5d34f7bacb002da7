"""The agent runtime: a pump between the broker and the protocol's pure rules.

One :class:`Agent` is one member of the mesh. It

- publishes its card in the directory on a heartbeat (the card expires by itself if
  the process dies) and registers with the NATS services API (``nats micro ls``);
- takes nudges for the capabilities it serves (one agent of a queue group each) and
  keeps up with their board: a few agents per capability watch it live, the rest
  read it when they may have missed work; claims open tasks by fit-weighted
  contention (:func:`protocol.claim_delay`), up to its capacity;
- works each claimed task under a lease it renews, and writes the result by CAS;
- reviews tasks offered to a reviewer capability it serves;
- observes the leases of other agents' tasks in its capabilities and re-opens a task
  whose owner stopped renewing (judged on this process's monotonic clock);
- drains on request: stops claiming, lets held tasks finish within a grace period,
  hands back the rest, leaves the directory.

Every background activity lives in an anyio task group; nothing is fire-and-forget.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import math
import os
import random
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import nats.errors
import nats.js.errors
import nats.micro
import structlog
from nats.micro.request import Request

from protocol import (
    BOARD_WATCH_SLOTS,
    DEFAULT_CLAIM_WINDOW_S,
    DEFAULT_LEASE_S,
    VERSION_HEADER,
    AgentCard,
    Approve,
    Claim,
    ControlReply,
    Fail,
    Finish,
    LeaseBeat,
    LeaseView,
    Names,
    NotUnderstood,
    Offer,
    ProtocolError,
    Release,
    RemoteProtocolError,
    Reopen,
    Reviewing,
    ReviewSlot,
    SlotsView,
    TaskRecord,
    TransitionError,
    Veto,
    claim_delay,
    decode_beat,
    decode_control,
    decode_offer,
    encode,
    fit,
    is_terminal,
    offers_for,
    review_lease_s,
    serves,
    take_slot,
)

from .bus import Bus, Conflict, MeshError, NotFound, Settings, translate_errors
from .work import Lost, Reviewer, RoleViolation, TaskContext, TaskFailed, Verdict, Worker

__all__ = ["AgentConfig", "Agent"]

log = structlog.get_logger("mesh.agent")


#: how many times a busy agent passed a nudge on
NUDGE_HOPS_HEADER = "Mesh-Nudge-Hops"
#: JetStream's "wrong last sequence" API error codes: a compare-and-set lost
_WRONG_LAST_SEQUENCE = (10071, 10164)


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
    lease_s: float = DEFAULT_LEASE_S
    heartbeat_s: float = 2.0
    claim_window_s: float = DEFAULT_CLAIM_WINDOW_S
    drain_timeout_s: float = 30.0


@dataclass
class _Known:
    """What this agent knows about one task from the board."""

    offer: Offer
    seen_at: float
    view: LeaseView
    #: this agent got the queue-group nudge for the offer: it is the first choice of its
    #: group and claims without the backup delay
    nudged: bool = False
    #: this agent's random draw for the offer (jitter, backup delay), drawn once
    draw: float = 0.0
    #: for a full review: the holders' review slots as we last saw them (their leases)
    slots: SlotsView | None = None


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
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.worker = worker
        self.server = server
        self.names = names or Names()
        self.settings = settings or Settings.from_env()
        self.rng = rng or random.Random()
        self.log = log.bind(agent=config.id)
        self.bus: Bus
        self.started = time.time()
        self.stats = _Stats()
        self.draining = False
        self._drain = anyio.Event()
        self._stopped = anyio.Event()
        # One wake-up flag per waiting loop: a shared Event would be re-armed by
        # whichever loop woke first, and the others would miss the next change.
        self._wake_claimer = _Flag()
        self._wake_leases = _Flag()
        self._wake_drain = _Flag()
        self._known: dict[str, _Known] = {}
        self._held: dict[str, anyio.CancelScope] = {}
        self._reviewing: set[str] = set()
        self._attempting: set[str] = set()
        #: task id -> board revision up to which its offers are stale (taken or ended)
        self._gone: collections.OrderedDict[str, int] = collections.OrderedDict()
        #: served capabilities whose board we watch (we hold a watch slot)
        self._watching: set[str] = set()
        #: served capabilities whose nudges we passed on while busy: read the board when free
        self._missed: set[str] = set()
        self._scanning: set[str] = set()
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
        nc = self.bus.nc
        try:
            async with anyio.create_task_group() as tg:
                async with anyio.create_task_group() as tasks_tg:
                    self._tasks_tg = tasks_tg
                    await tg.start(self._service)
                    for served in self.config.serves:
                        await tg.start(self._nudges, served)
                        await tg.start(self._board, served)
                    # The card goes up last: in the directory means ready to work.
                    await tg.start(self._heartbeat)
                    tg.start_soon(self._claimer)
                    tg.start_soon(self._leases)
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
                        await self.bus.agents.purge(
                            self.names.agent_key(self.config.id), msg_ttl=self.settings.marker_ttl_s
                        )
                except (nats.errors.Error, MeshError) as exc:
                    self.log.warning(
                        "could not remove our card; it expires by itself", error=str(exc) or type(exc).__name__
                    )
                with anyio.move_on_after(5) as closing:
                    await nc.close()
                if closing.cancelled_caught:
                    self.log.warning("the broker connection did not close within 5 s; leaving anyway")
            self.log.info("agent left the mesh", completed=self.stats.completed, failed=self.stats.failed)
            self._stopped.set()

    async def _drain_held(self) -> None:
        """Stop claiming; give held tasks the grace period to finish, then hand the rest
        back (each ``_hold`` releases its task when its scope is cancelled)."""
        self.draining = True
        self._notify()
        if self._held:
            self.log.info("draining", holding=sorted(self._held), grace_s=self.config.drain_timeout_s)
            with contextlib.suppress(Exception):
                await self._publish_card()
            with anyio.move_on_after(self.config.drain_timeout_s):
                while self._held:
                    await self._wake_drain.wait()
        for scope in list(self._held.values()):
            scope.cancel()
        with anyio.move_on_after(10):
            while self._held:
                await self._wake_drain.wait()
        # Pending claim attempts and reviews hold nothing on the board: just stop them.
        self._tasks_tg.cancel_scope.cancel()

    def _notify(self) -> None:
        self._wake_claimer.set()
        self._wake_leases.set()
        self._wake_drain.set()

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
        )

    async def _publish_card(self) -> None:
        subject = f"$KV.{self.names.agents_bucket}.{self.names.agent_key(self.config.id)}"
        await self.bus.js.publish(subject, encode(self.card()), msg_ttl=max(3 * self.config.heartbeat_s, 1.0))

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
        service = await nats.micro.add_service(
            self.bus.nc,
            name=self.names.service_name,
            version=self.config.version if _semver(self.config.version) else "0.1.0",
            description=f"agent-mesh agent {self.config.id}: {self.config.role or self.config.kind}",
            metadata={"agent": self.config.id, "serves": ",".join(self.config.serves), "role": self.config.role},
        )
        await service.add_endpoint(
            name="control", subject=self.names.control_subject(self.config.id), handler=self._control
        )
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await service.stop()

    async def _control(self, request: Request) -> None:
        try:
            control = decode_control(request.data)
        except RemoteProtocolError as exc:
            await request.respond(
                encode(
                    NotUnderstood(subject=self.names.control_subject(self.config.id), error=str(exc), at=time.time())
                )
            )
            return
        if control.action == "drain":
            self.log.info("drain requested over the control endpoint")
            self.drain()
        await request.respond(
            encode(
                ControlReply(
                    agent=self.config.id,
                    action=control.action,
                    draining=self._drain.is_set(),
                    tasks=tuple(sorted(self._held)),
                )
            )
        )

    # --- the board -----------------------------------------------------------------------

    async def _board(self, served: str, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Keep up with the board of one served capability.

        At most :data:`BOARD_WATCH_SLOTS` agents watch it live, each holding a watch
        slot: a directory key with a TTL that its holder renews on its heartbeat, so a
        dead watcher's slot frees itself. Every other agent takes nudges and reads the
        board once whenever it may have missed work: on joining, after reconnecting,
        and on becoming free after passing nudges on. A board change thus reaches a
        bounded number of agents however many serve the capability; watchers are also
        the agents that observe the leases of working tasks (with the tasks' parties).
        """
        slot = await self._take_watch_slot(served)
        if slot is None:
            await self._scan_board(served)
        first = True
        while True:
            if slot is not None:
                async with anyio.create_task_group() as tg:
                    await tg.start(self._watch_board, served)
                    await tg.start(self._lease_beats, served)
                    if first:
                        task_status.started()
                        first = False
                    self._watching.add(served)
                    try:
                        await self._hold_watch_slot(*slot)
                    finally:
                        self._watching.discard(served)
                    tg.cancel_scope.cancel()
            elif first:
                task_status.started()
                first = False
            # Not a watcher: try for a slot again every few heartbeats (a dead
            # watcher's slot expires after three; no hurry: the requesters observe
            # their tasks' leases too); read the board afresh if the broker connection
            # came back in between.
            with anyio.move_on_after(self.config.heartbeat_s * (2 + 2 * self.rng.random())):
                await self.bus.reconnects.wait()
                await self._scan_board(served)
            slot = await self._take_watch_slot(served)

    async def _take_watch_slot(self, served: str) -> tuple[str, int] | None:
        """Try to become a watcher of ``served``'s board by taking a free slot: one read
        per slot (held slots cost nothing more), and a compare-and-set on a free one."""
        for slot in range(BOARD_WATCH_SLOTS):
            key = self.names.watch_slot_key(served, slot)
            try:
                last = await self._free_watch_slot(key)
                revision = None if last is None else await self._set_watch_slot(key, last=last)
            except (nats.errors.Error, MeshError) as exc:
                self.log.warning("cannot reach the directory for a watch slot", error=str(exc) or type(exc).__name__)
                return None
            if revision is not None:
                self.log.info("watching the board", capability=served, slot=slot)
                return key, revision
        return None

    async def _free_watch_slot(self, key: str) -> int | None:
        """The revision to compare-and-set against if the slot is ours to take, or None
        if another agent holds it. Free means: never written (0), a tombstone left by an
        expired or given-up slot, or held by an earlier run of this agent that died
        without giving it up (ids are unique in a mesh)."""
        try:
            with translate_errors(key):
                try:
                    entry = await self.bus.agents.get(key)
                except nats.js.errors.KeyDeletedError as deleted:
                    return deleted.entry.revision if deleted.entry else 0
        except NotFound:
            return 0
        if entry.value and entry.value != self.config.id.encode():
            return None
        return entry.revision or 0

    async def _set_watch_slot(self, key: str, *, last: int) -> int | None:
        """Compare-and-set our id into a watch slot with a fresh TTL (``last=0``: the
        key must not exist); the new revision, or None if ``last`` is not current."""
        try:
            with translate_errors(key):
                ack = await self.bus.js.publish(
                    f"$KV.{self.names.agents_bucket}.{key}",
                    self.config.id.encode(),
                    headers={"Nats-Expected-Last-Subject-Sequence": str(last)},
                    msg_ttl=max(3 * self.config.heartbeat_s, 1.0),
                )
        except nats.js.errors.APIError as exc:
            if exc.err_code in _WRONG_LAST_SEQUENCE:
                return None
            raise
        return ack.seq

    async def _hold_watch_slot(self, key: str, revision: int) -> None:
        """Renew our watch slot every heartbeat; return when it is someone else's (it
        expired while we could not renew). Give it up when we stop."""
        held = True
        try:
            while True:
                await anyio.sleep(self.config.heartbeat_s)
                try:
                    renewed = await self._set_watch_slot(key, last=revision)
                except (nats.errors.Error, MeshError) as exc:
                    # Broker away: keep watching (an extra watcher is harmless) and retry.
                    self.log.warning("watch slot renewal failed, will retry", error=str(exc) or type(exc).__name__)
                    continue
                if renewed is None:
                    held = False
                    self.log.info("lost our board watch slot", key=key)
                    return
                revision = renewed
        finally:
            if held:
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    with contextlib.suppress(nats.errors.Error, MeshError):
                        with translate_errors(key):
                            await self.bus.agents.delete(key, last=revision)

    async def _lease_beats(self, served: str, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """As a watcher, see the owners' renewals of ``served``'s tasks as they land."""
        await self._take_messages(self.names.beat_filters(served), self._pump_beats, task_status=task_status)

    async def _take_messages(
        self,
        subjects: tuple[str, ...],
        pump: Callable[[Any], Coroutine[Any, Any, None]],
        *,
        queue: str = "",
        task_status: anyio.abc.TaskStatus[None],
    ) -> None:
        """Subscribe (core NATS) to ``subjects`` and ``pump`` each subscription's
        messages until cancelled; unsubscribe on the way out."""
        subs = [await self.bus.nc.subscribe(subject, queue=queue) for subject in subjects]
        task_status.started()
        try:
            async with anyio.create_task_group() as tg:
                for sub in subs:
                    tg.start_soon(pump, sub)
        finally:
            with anyio.CancelScope(shield=True):
                for sub in subs:
                    with contextlib.suppress(nats.errors.Error):
                        await sub.unsubscribe()

    async def _pump_beats(self, sub: Any) -> None:
        async for msg in sub.messages:
            try:
                beat = decode_beat(msg.data)
            except RemoteProtocolError as exc:
                await self.bus.report(f"bad lease beat: {exc}", subject=msg.subject)
                continue
            known = self._known.get(beat.task)
            if known is not None and known.offer.state == "working":
                known.view = known.view.observe(beat.revision, time.monotonic())

    async def _scan_board(self, served: str) -> None:
        """Read ``served``'s board once, for an agent that does not watch it: its open
        offers and reviews become known to us as a backup would know them."""
        if served in self._scanning:
            return
        self._scanning.add(served)
        try:
            entries = await self.bus.snapshot(self.names.offer_filter(served))
        except (nats.errors.Error, MeshError) as exc:
            self.log.warning("could not read the board", capability=served, error=str(exc) or type(exc).__name__)
            return
        finally:
            self._scanning.discard(served)
        for entry in entries:
            try:
                await self._on_offer(entry.key, entry.value, None, entry.revision or 0, claimable_only=True)
            except (nats.errors.Error, MeshError) as exc:
                self.log.warning("could not handle an offer", key=entry.key, error=str(exc) or type(exc).__name__)

    async def _watch_board(self, served: str, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Follow the board for one served capability. The watcher is a server-side
        consumer that does not survive a broker restart, so after every reconnection
        we watch afresh (its first values are the board as it is now)."""
        started = False
        while True:
            try:
                watcher = await self.bus.tasks.watch(self.names.offer_filter(served))
            except (nats.errors.Error, MeshError, TimeoutError) as exc:
                self.log.warning("cannot watch the board yet, retrying", error=str(exc) or type(exc).__name__)
                await anyio.sleep(0.5)
                continue
            if not started:
                task_status.started()
                started = True
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._pump_offers, watcher)
                    await self.bus.reconnects.wait()
                    tg.cancel_scope.cancel()
                self.log.info("re-watching the board after reconnecting", capability=served)
            finally:
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await watcher.stop()  # type: ignore[no-untyped-call]

    async def _pump_offers(self, watcher: Any) -> None:
        async for entry in watcher:
            if entry is None:
                continue
            try:
                await self._on_offer(entry.key, entry.value, entry.operation, entry.revision or 0)
            except (nats.errors.Error, MeshError) as exc:
                self.log.warning("could not handle an offer", key=entry.key, error=str(exc) or type(exc).__name__)

    async def _nudges(self, served: str, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Take the nudges NATS deals to one agent of our queue group per open offer.
        Nudges are core NATS messages (at most once): the board is the backup."""
        await self._take_messages(
            self.names.work_filters(served),
            functools.partial(self._pump_nudges, served=served),
            queue=self.names.work_queue(served),
            task_status=task_status,
        )

    async def _pump_nudges(self, sub: Any, *, served: str) -> None:
        async for msg in sub.messages:
            try:
                offer = decode_offer(msg.data)
            except RemoteProtocolError as exc:
                await self.bus.report(f"bad nudge: {exc}", subject=msg.subject)
                continue
            busy = (
                self.draining
                or self._fit(offer) == 0.0
                or (len(self._held) + len(self._reviewing) + len(self._attempting) >= self.config.capacity)
            )
            if busy:
                # Pass it on to another member of the group, a few times at most; past
                # that the watchers take it from the board, and so do we once free.
                if served not in self._watching:
                    self._missed.add(served)
                hops = int((msg.headers or {}).get(NUDGE_HOPS_HEADER, "0") or 0)
                if hops < 3:
                    await self.bus.nc.publish(
                        msg.subject, msg.data, headers={**(msg.headers or {}), NUDGE_HOPS_HEADER: str(hops + 1)}
                    )
                continue
            capability = offer.capability if offer.state == "open" else msg.subject.split(".work.", 1)[1]
            try:
                key = self.names.offer_key(capability, offer.task)
                await self._on_offer(key, msg.data, None, offer.revision, nudged=True)
            except (ProtocolError, nats.errors.Error, MeshError) as exc:
                self.log.warning("could not handle a nudge", error=str(exc) or type(exc).__name__)

    async def _on_offer(
        self,
        key: str,
        value: bytes | None,
        operation: str | None,
        revision: int,
        *,
        nudged: bool = False,
        claimable_only: bool = False,
    ) -> None:
        try:
            _, task_id = self.names.parse_offer_key(key)
        except ProtocolError as exc:
            await self.bus.report(f"bad offer key: {exc}", key=key)
            return
        if operation is not None:  # DEL or PURGE: nobody needs to act any more
            self._forget(task_id, revision)
            self._notify()
            return
        try:
            offer = decode_offer(value or b"")
            if offer.task != task_id:
                raise RemoteProtocolError(f"offer for {offer.task} stored under key {key}")
        except RemoteProtocolError as exc:
            self.log.warning("bad offer ignored", key=key, error=str(exc))
            await self.bus.report(str(exc), key=key)
            return
        if offer.revision <= self._gone.get(task_id, -1):
            return  # a late nudge or a stale offer for a task we saw taken or ended
        if claimable_only and offer.state == "working":
            return  # leases are for the watchers and the task's parties to observe
        now = time.monotonic()
        known = self._known.get(task_id)
        if known is not None and known.offer.revision >= offer.revision:
            if nudged and known.offer.revision == offer.revision and not known.nudged:
                known.nudged = True  # the board was faster than the nudge
                self._notify()
            return
        self._known[task_id] = _Known(
            offer=offer,
            seen_at=now,
            view=LeaseView(revision=offer.revision, seen_at=now, lease_s=offer.lease_s),
            nudged=nudged,
            draw=self.rng.random() * 0.999,
        )
        self._notify()

    def _forget(self, task_id: str, revision: int) -> None:
        """Drop a task from the board view and ignore its offers up to ``revision``
        (bounded memory: the oldest entries go first)."""
        self._known.pop(task_id, None)
        self._gone[task_id] = max(revision, self._gone.get(task_id, -1))
        self._gone.move_to_end(task_id)
        while len(self._gone) > 50_000:
            self._gone.popitem(last=False)

    def _fit(self, offer: Offer) -> float:
        if offer.state == "review":
            # Reviews are offered under the reviewer capability, matched exactly. A full
            # review is not on offer: only a slot whose holder's lease lapsed can be taken.
            known = self._known.get(offer.task)
            if offer.author == self.config.id or (offer.full and (known is None or not self._lapsed_slots(known))):
                return 0.0
            return 1.0 if len(self._held) + len(self._reviewing) < self.config.capacity else 0.0
        capability = offer.capability
        served = self.config.serves
        return fit(
            served=served,
            capability=capability,
            tags=offer.tags,
            expertise=self.config.expertise,
            load=len(self._held) + len(self._reviewing),
            capacity=self.config.capacity,
            completed=self.stats.completed,
            failed=self.stats.failed,
        )

    async def _claimer(self) -> None:
        """Start claim (or review) attempts on open offers whose fit-weighted delay has
        run out, while there is free capacity. Offers not yet due hold no capacity
        (so a nudge is never refused for a backup that may never be needed)."""
        while True:
            if self._missed and not self.draining and self._free() > 0:
                for served in sorted(self._missed):
                    self._tasks_tg.start_soon(self._scan_board, served)
                self._missed.clear()
            next_due = None if self.draining else self._start_due_attempts()
            wait = math.inf if next_due is None else max(next_due - time.monotonic(), 0.0)
            with anyio.move_on_after(wait):
                await self._wake_claimer.wait()

    def _due(self, known: _Known) -> float | None:
        """When this agent would claim (or review) the offer, or None if it may not."""
        f = self._fit(known.offer)
        if f <= 0:
            return None
        window = self.config.claim_window_s
        # The jitter breaks ties between agents that saw the offer together; a nudge
        # went to this agent alone, so the nudged agent goes without (a sub-millisecond
        # sleep costs a whole event-loop tick, about 1 ms).
        jitter = 0.0 if known.nudged else known.draw * 0.2
        due = known.seen_at + claim_delay(f, window=window, jitter=jitter)
        if not known.nudged:
            # A backup: the nudged agent of our group should have it by then.
            due += window * (0.5 + 0.5 * known.draw)
        return due

    def _free(self) -> int:
        return self.config.capacity - len(self._held) - len(self._reviewing) - len(self._attempting)

    def _start_due_attempts(self) -> float | None:
        """Start the attempts that are due; return when the next one will be."""
        # In-flight attempts are counted by task id, not on the board entry: a newer
        # offer for the same task (e.g. our own claim's) replaces the entry mid-attempt.
        free = self._free()
        if free <= 0:
            return None  # woken again when something finishes; skip scoring every offer
        now = time.monotonic()
        candidates = []
        for task_id, known in self._known.items():
            if (
                known.offer.state == "working"
                or task_id in self._attempting
                or task_id in self._held
                or task_id in self._reviewing
            ):
                continue
            due = self._due(known)
            if due is not None:
                candidates.append((due, task_id))
        candidates.sort()
        started = 0
        for due, task_id in candidates:
            if due > now or started >= free:
                return due if due > now else now + 0.001
            self._attempting.add(task_id)
            self._tasks_tg.start_soon(self._attempt, task_id, self._known[task_id], due)
            started += 1
        return None

    async def _attempt(self, task_id: str, known: _Known, due: float) -> None:
        try:
            await anyio.sleep(max(due - time.monotonic(), 0.0))
            if self.draining or self._known.get(task_id) is not known:
                return  # the board moved on while we waited (usually: a better fit claimed it)
            if known.offer.state == "review":
                await self._review(task_id, known)
            else:
                await self._claim(task_id, known)
        except (nats.errors.Error, MeshError) as exc:
            # Broker away: try again later (the offer stays known).
            self.log.warning("claim attempt failed, will retry", task=task_id, error=str(exc) or type(exc).__name__)
            known.seen_at = time.monotonic() + 0.5
        finally:
            self._attempting.discard(task_id)
            self._notify()

    async def _read(self, task_id: str) -> tuple[TaskRecord, int] | None:
        try:
            return await self.bus.read(task_id)
        except NotFound:
            self._known.pop(task_id, None)
            return None
        except RemoteProtocolError as exc:
            self.log.warning("unreadable task record", task=task_id, error=str(exc))
            await self.bus.report(str(exc), key=self.names.task_key(task_id))
            self._known.pop(task_id, None)
            return None

    async def _current(self, task_id: str, known: _Known) -> tuple[TaskRecord, int] | None:
        """The record as the offer carried it (if it did), else as read now. Acting on
        the carried copy is safe: our write is a compare-and-set on its revision."""
        if known.offer.record is not None:
            return known.offer.record, known.offer.revision
        return await self._read(task_id)

    async def _claim(self, task_id: str, known: _Known) -> None:
        got = await self._current(task_id, known)
        if got is None:
            return
        record, revision = got
        if record.state != "open":
            self._track(task_id, record, revision)
            return
        if not serves(self.config.serves, record.capability):
            # Only a forged or corrupted offer gets here: the watch filters by what we serve.
            self._known.pop(task_id, None)
            why = f"role: {self.config.id} serves {list(self.config.serves)}, not {record.capability!r}; not claiming {task_id}"
            self.log.warning("refused to claim outside the brief", task=task_id, capability=record.capability)
            await self.bus.report(why, key=self.names.task_key(task_id))
            return
        try:
            # Announcing the claim (offer, event) goes on while we start working.
            record, revision = await self.bus.write(
                record, revision, Claim(actor=self.config.id), announce_in=self._tasks_tg
            )
        except (Conflict, TransitionError):
            # Someone else was faster (or our copy was stale): forget this offer; the
            # board brings a newer one if the task is still someone's to take.
            self._forget(task_id, revision)
            return
        if record.state != "working":  # e.g. the deadline passed while it was open
            return
        self._known.pop(task_id, None)
        scope = anyio.CancelScope()
        self._held[task_id] = scope
        self._tasks_tg.start_soon(
            self._hold,
            TaskContext(self.bus, record, revision, agent=self.config.id, delegates=self.config.delegates),
            scope,
        )

    def _track(self, task_id: str, record: TaskRecord, revision: int) -> None:
        """Bring our view of a task in line with its record (the truth), after the
        board proved stale: claim it if open, watch its lease if held, forget it if
        it ended (and clean its stale offer off the board)."""
        known = self._known.get(task_id)
        if is_terminal(record):
            self._known.pop(task_id, None)
            self._tasks_tg.start_soon(self._clean_offer, record)
            return
        if known is None:
            return
        if (record.state == "review") != (known.offer.state == "review"):
            self._known.pop(task_id, None)  # the task is someone else's business now
            return
        # The offer the board should show now, built by the protocol's own rule (so
        # fields such as a review's `full` are never lost here).
        (known.offer,) = offers_for(record, revision).values()
        known.view = known.view.observe(revision, time.monotonic())
        self._notify()

    async def _clean_offer(self, record: TaskRecord) -> None:
        """Remove the offers of an ended task whose last writer died before doing so."""
        caps = {record.capability} | ({record.review.capability} if record.review else set())
        for cap in caps:
            key = self.names.offer_key(cap, record.id)
            with contextlib.suppress(MeshError, nats.errors.Error):
                with translate_errors(key):
                    entry = await self.bus.tasks.get(key)
                if entry.value:
                    await self.bus.tasks.purge(key, msg_ttl=self.settings.marker_ttl_s)

    # --- working a task ------------------------------------------------------------------

    async def _hold(self, ctx: TaskContext, scope: anyio.CancelScope) -> None:
        record = ctx.record
        trace_id = record.trace.split("-")[1] if record.trace else None
        log = self.log.bind(task=record.id, root=record.root, epoch=record.epoch, trace_id=trace_id)
        self._notify()
        outcome: str = "lost"
        try:
            with scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._renew, ctx, tg.cancel_scope)
                    # Said from a task of its own, which runs as soon as the work first
                    # waits (at the latest on writing its result): a console log line
                    # costs ~0.2 ms that would otherwise delay every task's start.
                    tg.start_soon(_say, log, "claimed", {"capability": record.capability, "attempt": record.attempts})
                    outcome = await self._run_worker(ctx, log)
                    tg.cancel_scope.cancel()
            if scope.cancelled_caught and outcome == "lost":
                with anyio.CancelScope(shield=True):
                    await self._hand_back(ctx, log)
        finally:
            self._held.pop(record.id, None)
            if outcome == "done":
                self.stats.completed += 1
            elif outcome == "failed":
                self.stats.failed += 1
            self._notify()
            # Only now, with the slot free, await the acks of the result's board change
            # and event: the requester may see the end and submit its next task at once,
            # and that task's nudge must find us with room (else it waits for a backup).
            # Shielded: the result is committed and its event must be recorded, even
            # while a drain cancels us (bounded by the publish patience).
            with anyio.CancelScope(shield=True):
                await ctx.settle()

    async def _run_worker(self, ctx: TaskContext, log: Any) -> str:
        try:
            result = await self.worker.work(ctx)
        except Lost as exc:
            log.warning("lost the task, abandoning it", why=str(exc))
            return "abandoned"
        except TaskFailed as exc:
            return await self._finish(
                ctx, Fail(actor=self.config.id, epoch=ctx.record.epoch, reason=exc.reason, message=str(exc)), log
            )
        except RoleViolation as exc:
            log.warning("role violation", why=str(exc))
            await self.bus.report(
                f"role violation on task {ctx.record.id}: {exc}", key=self.names.task_key(ctx.record.id)
            )
            return await self._finish(
                ctx,
                Fail(actor=self.config.id, epoch=ctx.record.epoch, reason="error", message=f"role violation: {exc}"),
                log,
            )
        except Exception as exc:  # a worker bug fails its task, loudly; it never kills the agent
            log.exception("worker raised")
            await self.bus.report(f"worker raised on task {ctx.record.id}: {exc!r}")
            return await self._finish(
                ctx,
                Fail(
                    actor=self.config.id, epoch=ctx.record.epoch, reason="error", message=f"{type(exc).__name__}: {exc}"
                ),
                log,
            )
        return await self._finish(ctx, Finish(actor=self.config.id, epoch=ctx.record.epoch, result=result), log)

    async def _finish(self, ctx: TaskContext, event: Finish | Fail, log: Any) -> str:
        try:
            record = await ctx.end(event)  # acks awaited by _hold, once our slot is free
        except Lost as exc:
            log.warning("result refused: lost the task", why=str(exc))
            return "abandoned"
        log.info("finished", state=record.state, reason=record.reason)
        return "failed" if record.state == "failed" else "done"

    async def _renew(self, ctx: TaskContext, work_scope: anyio.CancelScope) -> None:
        while True:
            await anyio.sleep(ctx.record.lease_s / 3)
            try:
                await ctx.renew()
            except Lost as exc:
                self.log.warning("lease lost, stopping work", task=ctx.record.id, why=str(exc))
                work_scope.cancel()
                return
            except (nats.errors.Error, MeshError) as exc:
                self.log.warning(
                    "lease renewal failed, will retry", task=ctx.record.id, error=str(exc) or type(exc).__name__
                )
                continue
            # Observers learn of the renewal now rather than at their next read, so a
            # lapse is judged from about the last renewal, not up to a lease later.
            beat = LeaseBeat(task=ctx.record.id, revision=ctx.revision, epoch=ctx.record.epoch, owner=self.config.id)
            try:
                await self.bus.nc.publish(
                    self.names.beat_subject(ctx.record.id, ctx.record.capability),
                    encode(beat),
                    headers={VERSION_HEADER: "1"},
                )
            except nats.errors.Error as exc:  # a hint: observers fall back to reading the record
                self.log.debug("lease beat not sent", task=ctx.record.id, error=str(exc) or type(exc).__name__)

    async def _hand_back(self, ctx: TaskContext, log: Any) -> None:
        try:
            await ctx.write(
                Release(
                    actor=self.config.id, epoch=ctx.record.epoch, note=f"handed back by {self.config.id} (draining)"
                )
            )
            log.info("handed back")
        except (Lost, MeshError, nats.errors.Error) as exc:
            log.warning("could not hand back; its lease will lapse", why=str(exc))

    # --- reviewing -------------------------------------------------------------------------

    async def _review(self, task_id: str, known: _Known) -> None:
        """Review a result in one of its ``quorum`` review slots: take a slot by CAS first
        (a free one, or one whose holder's lease we saw lapse), review while renewing it,
        then vote. A reviewer that finds every slot taken does not review: it watches the
        holders' slot leases instead (:meth:`_check_slots`)."""
        if not isinstance(self.worker, Reviewer):
            return
        # A takeover is judged against the slots as they are now, not as an offer had them.
        got = await (self._read(task_id) if known.offer.full else self._current(task_id, known))
        if got is None:
            return
        taken = await self._take_slot(task_id, known, *got)
        if taken is None:
            return
        record, revision, took = taken
        epoch = record.epoch
        log = self.log.bind(task=task_id, epoch=epoch)
        log.info("took a review slot", took_over=took.takes, holders=[s.reviewer for s in record.slots])
        self._reviewing.add(task_id)
        self._notify()
        try:
            ctx = TaskContext(self.bus, record, revision, agent=self.config.id, delegates=self.config.delegates)
            verdict: Verdict | None = None
            with anyio.CancelScope() as work:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._still_reviewing, task_id, epoch, review_lease_s(record), work)
                    try:
                        verdict = await self.worker.review(ctx)
                    except Exception as exc:  # a reviewer bug casts no vote; it never kills the agent
                        log.exception("reviewer raised")
                        await self.bus.report(
                            f"reviewer raised on task {task_id}: {exc!r}", key=self.names.task_key(task_id)
                        )
                    tg.cancel_scope.cancel()
            if work.cancelled_caught:
                return  # our slot was taken over, or the review ended: a vote would be refused
            if verdict is None:
                given_back = await self._give_back_slot(task_id, epoch)
                if given_back is not None:
                    self._forget(task_id, given_back)  # let another reviewer have it, not us again
                return
            approve, reasons = verdict.approve, verdict.reasons or ("rejected without reason",)

            def vote(current: TaskRecord) -> Approve | Veto:
                if approve:
                    return Approve(actor=self.config.id, epoch=epoch)
                return Veto(actor=self.config.id, epoch=epoch, reasons=reasons)

            try:
                after, _ = await self.bus.transition(task_id, vote)
                log.info("voted", approve=approve, state=after.state)
                self.stats.reviews += 1
            except (TransitionError, Conflict) as exc:
                log.info("vote not needed any more", why=str(exc))
        except anyio.get_cancelled_exc_class():
            # Stopping (drain): give the slot back rather than make others wait out its lease.
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await self._give_back_slot(task_id, epoch)
            raise
        finally:
            self._reviewing.discard(task_id)
            self._known.pop(task_id, None)
            self._notify()

    async def _take_slot(
        self, task_id: str, known: _Known, record: TaskRecord, revision: int
    ) -> tuple[TaskRecord, int, Reviewing] | None:
        """Take (or take over) a review slot by CAS. A conflict is re-read and judged
        again: the rules fence a take by free slots and beats, not by revision. None when
        there is no slot for us (the task is then watched, forgotten or cleaned up)."""
        for _ in range(20):
            event = take_slot(record, self.config.id, self._lapsed_slots(known))
            if event is None:
                self._observe_review(task_id, known, record, revision)
                return None
            try:
                after, after_revision = await self.bus.write(record, revision, event)
            except Conflict:
                got = await self._read(task_id)
                if got is None:
                    return None
                record, revision = got
                continue
            except TransitionError as exc:
                self.log.info("no review slot for us", task=task_id, why=exc.why)
                return None
            if after.state != "review":  # e.g. the deadline passed
                self._track(task_id, after, after_revision)
                return None
            return after, after_revision, event
        return None

    def _observe_review(self, task_id: str, known: _Known, record: TaskRecord, revision: int) -> None:
        """Bring our view of a review we hold no slot in up to ``record``: watch the slot
        leases of a review we may still help with; forget one that is not ours to review."""
        if is_terminal(record):
            self._track(task_id, record, revision)
            return
        voted = any(v.reviewer == self.config.id and v.round == record.reworks for v in record.votes)
        if record.state != "review" or record.review is None or record.author == self.config.id or voted:
            self._forget(task_id, revision)
            return
        if self._known.get(task_id) is not known or known.offer.revision > revision:
            return  # the board brought a newer offer meanwhile
        now = time.monotonic()
        known.offer = offers_for(record, revision)[record.review.capability]
        known.view = LeaseView(revision=revision, seen_at=now, lease_s=known.offer.lease_s)
        known.slots = (known.slots or SlotsView(lease_s=known.offer.lease_s)).observe(record.slots, now)
        self._notify()

    def _check_slots(self, task_id: str, known: _Known, record: TaskRecord, revision: int) -> None:
        """Our look at a full review, due when a holder's slot lease may have lapsed: note
        which holders renewed; if one did not (or a slot came free), the claimer takes it."""
        if known.slots is None and known.offer.record is not None:
            # The offer carried the slots as they were when we first saw it.
            known.slots = SlotsView(lease_s=known.offer.lease_s).observe(known.offer.record.slots, known.seen_at)
        self._observe_review(task_id, known, record, revision)
        if self._known.get(task_id) is known and take_slot(record, self.config.id, self._lapsed_slots(known)):
            self.log.info("a review slot is free or lapsed", task=task_id, holders=[s.reviewer for s in record.slots])

    def _lapsed_slots(self, known: _Known) -> tuple[ReviewSlot, ...]:
        """Other reviewers' slots we saw unchanged for a slot lease (time without a
        broker does not count: nobody could renew then)."""
        now = time.monotonic()
        if known.slots is None or now - self.bus.reconnects.at < known.slots.lease_s:
            return ()
        return tuple(s for s in known.slots.lapsed(now) if s.reviewer != self.config.id)

    def _watches_slots(self, task_id: str, known: _Known) -> bool:
        """A full review we could take a lapsed slot of: its slot leases are ours to watch."""
        return (
            known.offer.state == "review"
            and known.offer.full
            and known.offer.author != self.config.id
            and task_id not in self._reviewing
            and isinstance(self.worker, Reviewer)
        )

    def _observe_due(self, known: _Known) -> float:
        """When to look at a watched task again: its owner's lease, or the first review
        slot lease that may lapse (and at least once per slot lease)."""
        slots = None if known.offer.state != "review" or known.slots is None else known.slots.due(time.monotonic())
        return known.view.due() if slots is None else min(slots, known.view.due())

    async def _give_back_slot(self, task_id: str, epoch: int) -> int | None:
        """Release our review slot without voting, so another reviewer need not wait out
        its lease; the revision written, if any. Best effort: a slot we could not give
        back lapses by itself."""
        try:
            _, revision = await self.bus.transition(
                task_id, lambda _: Reviewing(actor=self.config.id, epoch=epoch, release=True)
            )
        except (TransitionError, MeshError, nats.errors.Error) as exc:
            self.log.info("could not give our review slot back; it lapses by itself", task=task_id, why=str(exc))
            return None
        self.log.info("gave our review slot back", task=task_id)
        return revision

    async def _still_reviewing(self, task_id: str, epoch: int, lease_s: float, work: anyio.CancelScope) -> None:
        """Renew our review slot (a ``reviewing`` heartbeat) three times per slot lease;
        the heartbeats also show the task's waiting parties that a slow review is alive.
        A refused renewal means our slot was taken over (we were silent for a lease) or
        the review is over: stop reviewing (``work``), our vote would be refused."""
        while True:
            await anyio.sleep(lease_s / 3)
            try:
                after, _ = await self.bus.transition(task_id, lambda _: Reviewing(actor=self.config.id, epoch=epoch))
            except TransitionError as exc:
                self.log.info("review no longer ours, stopping it", task=task_id, why=exc.why)
                work.cancel()
                return
            except (MeshError, nats.errors.Error) as exc:
                self.log.warning(
                    "review slot renewal failed, will retry", task=task_id, error=str(exc) or type(exc).__name__
                )
                continue
            if after.state != "review":
                self.log.info("review ended while reviewing, stopping it", task=task_id, state=after.state)
                work.cancel()
                return

    # --- observing other agents' leases --------------------------------------------------

    async def _leases(self) -> None:
        """Re-open tasks of our capabilities whose owner stopped renewing its lease.

        Each observer judges expiry on its own monotonic clock, from the last record
        revision it saw; a renewal shows up as a newer revision when it re-reads."""
        while True:
            now = time.monotonic()
            # Time spent disconnected from the broker does not count against a lease:
            # nobody could renew then.
            since = self.bus.reconnects.at
            due = [
                (max(self._observe_due(k), since + k.view.lease_s), task_id)
                for task_id, k in self._known.items()
                if (k.offer.state == "working" and k.offer.owner != self.config.id) or self._watches_slots(task_id, k)
            ]
            expired = [task_id for at, task_id in due if at <= now]
            for task_id in expired:
                try:
                    await self._check_lease(task_id)
                except (nats.errors.Error, MeshError) as exc:
                    self.log.warning(
                        "lease check failed, will retry", task=task_id, error=str(exc) or type(exc).__name__
                    )
            next_due = min((at for at, _ in due if at > now), default=now + 1.0)
            with anyio.move_on_after(max(next_due - time.monotonic(), 0.01)):
                await self._wake_leases.wait()

    async def _check_lease(self, task_id: str) -> None:
        known = self._known.get(task_id)
        got = await self._read(task_id)
        if got is None or known is None:
            return
        record, revision = got
        if known.offer.state == "review":  # a full review: its slot leases
            self._check_slots(task_id, known, record, revision)
            return
        if is_terminal(record):
            self._track(task_id, record, revision)
            return
        if revision > known.view.revision:
            self._track(task_id, record, revision)
            if record.state == "working":
                return
        if record.state != "working":
            known.view = known.view.observe(revision, time.monotonic())
            return
        try:
            await self.bus.write(record, revision, Reopen(actor=self.config.id, epoch=record.epoch))
            self.log.info("reopened task after lease lapsed", task=task_id, owner=record.owner, epoch=record.epoch)
        except (Conflict, TransitionError):
            pass
        known.view = known.view.observe(revision + 1, time.monotonic())


async def _say(log: Any, event: str, fields: dict[str, Any]) -> None:
    log.info(event, **fields)


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
