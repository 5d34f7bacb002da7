"""Pulling work: an agent's side of the queues.

Each capability has a queue: a durable pull consumer on the work stream (see
:meth:`Bus.ensure_queue`). An agent asks each queue it serves for at most as many items
as it has free capacity, at the priority :func:`protocol.pull_priority` gives it, and
the broker hands every item to one waiting pull, lowest priority number first. A free
agent therefore never idles while its queue holds work, and a busy one is never sent
any. The broker lends each item under the queue's lease (its AckWait): the holder
renews it with in-progress acks, and an item whose holder went silent is lent to the
next agent.

An agent may wait on several queues at once (several served capabilities, and the
queues of capabilities below one it serves), so more items can arrive than it has room
for; those it hands straight back.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import structlog

from protocol import RemoteProtocolError, WorkItem, decode_work_item, pull_priority

from .bus import Bus, Lent, Listening, MeshError, NotADelivery, PullInbox, PullStatus, SquattedQueue

__all__ = ["Delivery", "Pulls"]

log = structlog.get_logger("mesh.queues")

#: how long one pull request waits for items before the broker ends it (it is renewed)
PULL_EXPIRES_S = 10.0
#: pull requests an agent keeps waiting on one queue at most (the broker looks at every
#: waiting request of a queue when an item arrives: one per agent is plenty, since a
#: request for n items absorbs up to n)
MAX_REQUESTS = 1


class Delivery:
    """One work item lent to this agent: the item, and the message to settle it with."""

    __slots__ = ("capability", "deciding", "delivered", "item", "lease_s", "lent", "settled", "ticket")

    def __init__(self, item: WorkItem, lent: Lent, *, capability: str, lease_s: float) -> None:
        self.item = item
        self.lent = lent
        self.capability = capability
        self.lease_s = lease_s
        #: the item's sequence in the work stream: the ticket a claim or slot names;
        #: and how many times the broker delivered it (more than once: a holder
        #: lapsed, or an agent handed it back)
        self.ticket, self.delivered = lent.position()
        self.settled = False
        #: the agent is still deciding what to do with it (it holds capacity meanwhile)
        self.deciding = True

    @property
    def subject(self) -> str:
        return self.lent.subject

    async def ack(self) -> None:
        """Done with it (worked, or nothing to do): the item leaves the queue."""
        await self._settle(self.lent.ack)

    async def hand_back(self, delay_s: float = 0.0) -> None:
        """Return it to the queue for another agent (after ``delay_s``)."""
        await self._settle(functools.partial(self.lent.nak, delay_s))

    async def refuse(self) -> None:
        """Never deliver it again (it does not decode: no agent could act on it)."""
        await self._settle(self.lent.term)

    async def renew(self) -> None:
        """Renew the lease: the broker keeps the item ours for another AckWait."""
        if self.settled:
            return
        try:
            await self.lent.in_progress()
        except MeshError as exc:
            # The next renewal is due within a third of the lease, and all are renewed
            # at once after a reconnection: one lost renewal costs nothing.
            log.debug("a lease renewal was lost", ticket=self.ticket, error=str(exc))

    async def _settle(self, settle: Callable[[], Awaitable[None]]) -> None:
        if self.settled:
            return
        self.settled = True
        try:
            await settle()
        except MeshError as exc:
            # A lost settlement is harmless: an unacked item comes back after its lease,
            # and whoever gets it finds the task's record moved on and drops it.
            log.info("a settlement was lost; the item comes back after its lease", ticket=self.ticket, error=str(exc))


@dataclass
class _Queue:
    capability: str
    priority: int
    lease_s: float
    #: our inbox for this queue's deliveries and pull statuses
    inbox: PullInbox | None = None
    #: open pull requests, oldest first: [expires at (monotonic), items still to come].
    #: The broker fills them in order; deliveries and its "request ended" statuses
    #: bring them down, and one whose end we never heard of is dropped once expired.
    requests: collections.deque[list[float]] = dataclasses.field(default_factory=collections.deque)
    #: a queue of review items: ask for one item at a time, so the next item of a round
    #: goes to the next reviewer in line (the broker fills requests in order), not to
    #: us again (who may not review the same result twice)
    one_at_a_time: bool = False

    @property
    def asked(self) -> int:
        self._expire()
        return int(sum(r[1] for r in self.requests))

    def ask(self, count: int) -> None:
        self.requests.append([time.monotonic() + PULL_EXPIRES_S, float(count)])

    def delivered(self) -> None:
        self._expire()
        for request in self.requests:
            if request[1] > 0:
                request[1] -= 1
                break
        while self.requests and self.requests[0][1] <= 0:
            self.requests.popleft()

    def ended(self) -> None:
        """The broker ended our oldest request (expired, or refused)."""
        if self.requests:
            self.requests.popleft()

    def _expire(self) -> None:
        late = time.monotonic() - 1.0
        while self.requests and self.requests[0][0] < late:
            self.requests.popleft()


class Pulls:
    """The pull requests of one agent on every queue it serves.

    ``free()`` says how many more items the agent can take now; :meth:`top_up` (called
    whenever that may have grown) asks each queue for the difference. Deliveries go to
    ``deliver``; anything beyond ``free()`` is handed back before it gets there.
    """

    def __init__(
        self,
        bus: Bus,
        serves: tuple[str, ...],
        *,
        free: Callable[[], int],
        deliver: Callable[[Delivery], None],
        may_pull: Callable[[str], bool] = lambda capability: True,
    ) -> None:
        self.bus = bus
        self.serves = serves
        #: whether our key lets us pull from a capability's queue (the broker refuses
        #: the queues of capabilities it is not bound to: we do not ask them)
        self._may_pull = may_pull
        self._free = free
        self._deliver = deliver
        self._queues: dict[str, _Queue] = {}
        self._lock = anyio.Lock()
        self._running = False
        self.paused = False
        #: items handed back because they arrived beyond capacity (for benchmarks)
        self.overflow = 0

    @property
    def capabilities(self) -> list[str]:
        return sorted(self._queues)

    def lease_of(self, capability: str) -> float | None:
        """The lease of a queue we pull from."""
        queue = self._queues.get(capability)
        return None if queue is None else queue.lease_s

    def check_leases(self, lease_s: float | None, log: Any) -> None:
        """Say so when a queue we serve has another lease than ``lease_s`` (the brief's):
        the first party to need a queue sets its lease, and a running queue is never
        changed."""
        if lease_s is None:
            return
        for capability in self.serves:
            queue_lease_s = self.lease_of(capability)
            if queue_lease_s is not None and abs(queue_lease_s - lease_s) > 1e-3:
                log.warning(
                    "the queue's lease differs from the brief's; using the queue's",
                    capability=capability,
                    queue_lease_s=queue_lease_s,
                    brief_lease_s=lease_s,
                )

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Pull until cancelled: set up the queues, keep up with new ones (generalists
        also serve the queues of capabilities below theirs), start afresh after every
        reconnection (pull requests do not survive a broker restart)."""
        advisories = await self.bus.on_new_queue(self._on_created)
        self._running = True
        try:
            await self._discover()
            task_status.started()
            while True:
                with anyio.move_on_after(PULL_EXPIRES_S):
                    await self.bus.reconnects.wait()
                    log.info("reconnected: pulling afresh", queues=self.capabilities)
                    for queue in self._queues.values():
                        queue.requests.clear()
                    await self._rediscover()
                await self.top_up()
        finally:
            self._running = False
            with anyio.CancelScope(shield=True):
                inboxes: list[Listening | PullInbox] = [advisories]
                inboxes += [q.inbox for q in self._queues.values() if q.inbox is not None]
                for inbox in inboxes:
                    await inbox.close()

    async def _rediscover(self) -> None:
        try:
            await self._discover()
        except MeshError as exc:
            # The queues we knew are still pulled from; new ones are found by their
            # advisory, or after the next reconnection.
            log.warning("could not look for queues after reconnecting", error=str(exc) or type(exc).__name__)

    async def _discover(self) -> None:
        """Make sure our own queues exist, and find the queues below them."""
        for served in self.serves:
            await self.bus.ensure_queue(served)
        # Our own queues by name (a listing finds queues by what they take: one whose
        # name was squatted by a consumer of other items would not be listed as ours)
        for capability in dict.fromkeys((*self.serves, *await self.bus.queues())):
            await self._add(capability)
        await self.top_up()

    async def _add(self, capability: str) -> None:
        priority = pull_priority(self.serves, capability)
        if priority is None or capability in self._queues:
            return
        if not self._may_pull(capability):
            log.debug("not pulling from a queue our key is not bound to", capability=capability)
            return
        try:
            info = await self.bus.queue_info(capability)
        except SquattedQueue as exc:
            # Not pulled from (we would get another capability's items); said loudly,
            # and tried again after the next reconnection or a new queue's advisory.
            log.error("not pulling from a squatted queue", capability=capability, error=str(exc))
            await self.bus.report(str(exc))
            return
        if info is None or capability in self._queues:
            return
        queue = _Queue(capability=capability, priority=priority, lease_s=info.lease_s)
        queue.inbox = await self.bus.pull_inbox(
            functools.partial(self._on_item, queue), functools.partial(self._on_status, queue)
        )
        self._queues[capability] = queue
        log.debug("pulling from a queue", capability=capability, priority=priority, lease_s=info.lease_s)

    async def _on_created(self, consumer: str) -> None:
        """A queue appeared (a requester's first task of a new capability): pull from
        it too if it is below a capability we serve. The queue's filter subject, not
        its name (which a long capability shortens), says which capability it is."""
        try:
            capability = await self.bus.queue_capability(consumer)
            if capability is None or pull_priority(self.serves, capability) is None:
                return
            await self._add(capability)
            await self.top_up()
        except (MeshError, ValueError) as exc:
            log.warning("could not follow a new queue", consumer=consumer, error=str(exc) or type(exc).__name__)

    async def top_up(self) -> None:
        """Ask each queue for as many items as we have room for, minus those asked for
        already."""
        if self.paused or not self._running:
            return
        async with self._lock:
            free = self._free()
            for queue in list(self._queues.values()):
                asked = queue.asked
                want = free - asked
                if queue.one_at_a_time:
                    want = min(want, 1 - asked)
                # One request waiting per queue at most: the broker looks at every
                # waiting request of a queue when an item arrives (many agents, many
                # requests), and a request for n items takes up to n as they come.
                if want <= 0 or len(queue.requests) >= MAX_REQUESTS:
                    continue
                queue.ask(want)
                assert queue.inbox is not None
                try:
                    await queue.inbox.pull(
                        queue.capability, batch=want, priority=queue.priority, expires_s=PULL_EXPIRES_S
                    )
                except MeshError as exc:
                    queue.requests.pop()
                    log.warning("could not pull", capability=queue.capability, error=str(exc) or type(exc).__name__)

    async def _on_item(self, queue: _Queue, lent: Lent) -> None:
        queue.delivered()
        if not lent.settleable:
            return
        try:
            item = decode_work_item(lent.data)
        except RemoteProtocolError as exc:
            await _refuse_garbage(self.bus, lent, str(exc))
            await self.top_up()  # that took one of our requested items: ask again
            return
        try:
            delivery = Delivery(item, lent, capability=queue.capability, lease_s=queue.lease_s)
        except NotADelivery as exc:  # someone else published on our inbox
            await self.bus.report(str(exc), subject=lent.subject)
            await self.top_up()
            return
        if item.kind == "review":
            queue.one_at_a_time = True
        if self.paused or self._free() <= 0:
            # More arrived than we have room for (we wait on several queues): let the
            # next free agent have it at once.
            self.overflow += 1
            await delivery.hand_back()
            return
        self._deliver(delivery)
        if not queue.requests:
            # That used up our request: ask again now for the room we still have,
            # rather than when work ends (a requester's next task could reach the
            # queue first and go to a lower-priority agent).
            await self.top_up()

    async def _on_status(self, queue: _Queue, status: PullStatus) -> None:
        if status.code == "100":  # an idle heartbeat
            return
        if status.code in ("408", "409"):
            queue.ended()
            if "Consumer Deleted" in status.description:
                await self._queue_deleted(queue)
            await self.top_up()
            return
        log.warning("pull refused", capability=queue.capability, status=status.code, description=status.description)

    async def _queue_deleted(self, queue: _Queue) -> None:
        """The queue went idle and the broker removed it: ours come back at once,
        others when a requester makes them again."""
        self._queues.pop(queue.capability, None)
        if queue.inbox is not None:
            await queue.inbox.close()
        if queue.capability not in self.serves:
            return
        self.bus.forget_queue(queue.capability)
        try:
            await self.bus.ensure_queue(queue.capability)
            await self._add(queue.capability)
        except MeshError as exc:
            # Pulled from again after the next reconnection (or when a requester makes it).
            log.warning("could not make our queue again", capability=queue.capability, error=str(exc))


async def _refuse_garbage(bus: Bus, lent: Lent, why: str) -> None:
    """An item no agent could act on: never deliver it again, and say so."""
    log.warning("bad work item refused", subject=lent.subject, error=why)
    await bus.report(f"bad work item: {why}", subject=lent.subject)
    try:
        await lent.term()
    except MeshError as exc:
        # Not refused, then: it comes back after its lease, and is refused again.
        log.info("could not refuse a bad work item", subject=lent.subject, error=str(exc))
