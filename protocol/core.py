"""An agent's decisions, without I/O: the sans-IO core a runtime pumps (after h11's
``Connection``).

:class:`AgentCore` holds what one agent knows about the work items it holds: their
leases, their lazy claims, its free capacity, when it last (re)connected to the
broker. The runtime feeds it what happens (an item delivered, a record read, a
reconnection, the clock) and performs the actions it returns: terminate, hand back,
renew or drop an item, work a task, review a result, write a pending claim. It sleeps
until :meth:`AgentCore.next_wakeup`. Every rule here is in PROTOCOL.md sections 6.3,
6.5, 6.8, 6.12 and 6.17; time is an argument (the runtime's monotonic clock), so the
rules are tested without a broker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .events import Claim, Reviewing
from .machine import is_terminal
from .rules import Drop, HandBack, Take, on_delivery, serves
from .types import TaskRecord, WorkItem

__all__ = [
    "AgentCore",
    "Hold",
    "Refuse",
    "GiveBack",
    "RenewOwn",
    "ReadRecord",
    "DropItem",
    "Work",
    "Review",
    "RenewLease",
    "WriteClaim",
    "Ack",
    "Leave",
    "Received",
    "Decided",
    "renew_every",
    "settle_work",
    "settle_review",
    "REVIEW_HAND_BACK_S",
]

#: how long a review item an agent may not review (the author's own result, one it
#: voted on or is reviewing) stays away from the queue when handed back: long enough
#: for another reviewer's pull to come first, short enough not to keep one waiting
REVIEW_HAND_BACK_S = 0.1


def renew_every(lease_s: float) -> float:
    """How often a holder renews an item's lease: three times per lease (6.5)."""
    return max(lease_s / 3, 0.05)


# --- actions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Refuse:
    """Terminate the item (no agent gets it again) and report it: it is not for us."""

    why: str


@dataclass(frozen=True)
class GiveBack:
    """Return the item to its queue, to be delivered again in ``wait_s``."""

    why: str
    wait_s: float


@dataclass(frozen=True)
class RenewOwn:
    """Our own held item again (its lease ran out at the broker while we could not
    renew): renew it, and let this delivery be."""

    ticket: int


@dataclass(frozen=True)
class ReadRecord:
    """The item was held before: the record it carries is old news. Read the task's
    record, then :meth:`AgentCore.decide`."""


@dataclass(frozen=True)
class DropItem:
    """Acknowledge the item: nothing to do. With ``fill_trail``, first record the
    write its silent last holder may not have (rule ``trail_gap``, 6.17)."""

    why: str
    fill_trail: bool


@dataclass(frozen=True)
class Work:
    """Work the task: ``claim`` it (lazily, unless ``claim_first``: someone held its
    item before, so the claim goes first and a task that kills its holders is
    counted). With ``fill_trail``, record its silent last holder's write first."""

    claim: Claim
    claim_first: bool
    fill_trail: bool


@dataclass(frozen=True)
class Review:
    """Review the result in a slot, taken lazily with ``take``."""

    take: Reviewing


@dataclass(frozen=True)
class RenewLease:
    """Send an in-progress acknowledgement for held item ``ticket``."""

    ticket: int


@dataclass(frozen=True)
class WriteClaim:
    """Write the pending claim (or review slot) of held item ``ticket``: its work took
    longer than the claim delay, and its parties must see it held."""

    ticket: int


@dataclass(frozen=True)
class Ack:
    """Acknowledge the item."""


@dataclass(frozen=True)
class Leave:
    """Leave the item alone: it may be another agent's now (a takeover lends the
    same item), or the next holder decides."""


Received = Refuse | GiveBack | RenewOwn | ReadRecord | DropItem | Work | Review
Decided = GiveBack | DropItem | Work | Review


@dataclass
class Hold:
    """One held item: the task (or review) it stands for, its lease, and when it must
    next be renewed and, while its claim is pending, claimed."""

    ticket: int
    task: str
    kind: str
    lease_s: float
    renew_at: float
    claim_at: float


@dataclass
class AgentCore:
    """One agent's view of its work items. ``now`` is always the runtime's monotonic
    clock. See the module docstring."""

    agent: str
    serves: tuple[str, ...]
    capacity: int
    reviews: bool = False
    claim_after_s: float = 0.25
    #: when the agent last reconnected to the broker (-inf: never; a first connection
    #: is not a return from an outage)
    connected_at: float = -math.inf
    draining: bool = False
    holds: dict[int, Hold] = field(default_factory=dict)
    #: deliveries being decided on: they hold capacity until they are held or settled
    deciding: int = 0

    # --- capacity ----------------------------------------------------------------------

    def free(self) -> int:
        """Items the agent may still ask its queues for."""
        if self.draining:
            return 0
        return self.capacity - len(self.holds) - self.deciding

    def reviewing(self, task: str) -> bool:
        return any(h.task == task and h.kind == "review" for h in self.holds.values())

    # --- deliveries --------------------------------------------------------------------

    def arrived(self) -> None:
        """A delivery arrived: it counts against capacity from now until it is held
        (:meth:`hold`) or settled (:meth:`settled`)."""
        self.deciding += 1

    def receive(self, item: WorkItem, *, ticket: int, delivered: int, lease_s: float, now: float) -> Received:
        """What to do first with work item ``item``, delivered as ``ticket`` (its stream
        sequence) for the ``delivered``-th time from a queue whose lease is ``lease_s``."""
        if item.kind == "work" and not serves(self.serves, item.record.capability):
            # Only a forged item gets here: our queues hold our capabilities' work.
            return Refuse(f"{self.agent} serves {list(self.serves)}, not {item.record.capability!r}")
        if item.kind == "review" and not self.reviews:
            return GiveBack("we do not review", REVIEW_HAND_BACK_S)
        if ticket in self.holds:
            return RenewOwn(ticket)
        if item.kind == "review" and self.reviewing(item.task):
            # Another slot of a result we are reviewing: a round puts one item per
            # slot on the queue, and two can reach one reviewer.
            return GiveBack("already reviewing this result", REVIEW_HAND_BACK_S)
        if delivered > 1:
            return ReadRecord()
        return self.decide(
            item, item.record, item.revision, ticket=ticket, delivered=delivered, lease_s=lease_s, now=now
        )

    def decide(
        self,
        item: WorkItem,
        record: TaskRecord,
        revision: int,
        *,
        ticket: int,
        delivered: int,
        lease_s: float,
        now: float,
    ) -> Decided:
        """What to do with ``item`` given the task's ``record`` at ``revision`` (the
        item's own copy on a first delivery)."""
        decision = on_delivery(item, record, agent=self.agent, ticket=ticket, lease_s=lease_s)
        refill = delivered > 1 and revision > 0
        match decision:
            case Drop(why=why):
                return DropItem(why, fill_trail=refill)
            case HandBack(why=why):
                return GiveBack(why, REVIEW_HAND_BACK_S)
            case Take(event=Claim() as claim):
                takeover = record.state == "working"
                if takeover and record.owner != self.agent:
                    # An outage is not a lapse: the broker may lend out items whose
                    # lease ran out while it was away from us, so their owners get a
                    # full lease after our reconnection to renew (6.5).
                    wait = self.connected_at + lease_s - now
                    if wait > 0:
                        return GiveBack(f"reconnected less than a lease ago; {record.owner} may be renewing", wait)
                return Work(claim, claim_first=delivered > 1 or takeover, fill_trail=refill and takeover)
            case Take(event=Reviewing() as take):
                return Review(take)
        raise AssertionError(f"unknown decision {decision!r}")  # pragma: no cover

    def hold(self, ticket: int, *, task: str, kind: str, lease_s: float, claim_timeout_s: float, now: float) -> Hold:
        """Start holding a decided delivery: renew its lease, and write its pending claim
        (or slot) after the claim delay, at most a quarter of the task's claim timeout
        (6.3: quicker work is claimed and finished in one write)."""
        self.deciding = max(0, self.deciding - 1)
        claim_at = now + min(self.claim_after_s, claim_timeout_s / 4)
        hold = Hold(ticket, task, kind, lease_s, renew_at=now + renew_every(lease_s), claim_at=claim_at)
        self.holds[ticket] = hold
        return hold

    def settled(self) -> None:
        """A delivery was decided without being held (dropped, handed back, refused)."""
        self.deciding = max(0, self.deciding - 1)

    def release(self, ticket: int) -> None:
        """The held item's work is over (whatever happened to the item)."""
        self.holds.pop(ticket, None)

    # --- leases and lazy claims ----------------------------------------------------------

    def claimed(self, ticket: int) -> None:
        """The hold's claim (or slot) is written."""
        hold = self.holds.get(ticket)
        if hold is not None:
            hold.claim_at = math.inf

    def claim_failed(self, ticket: int, now: float) -> None:
        """Writing the claim met an unavailable broker: try again a renewal later."""
        hold = self.holds.get(ticket)
        if hold is not None:
            hold.claim_at = now + renew_every(hold.lease_s)

    def on_reconnect(self, now: float) -> None:
        """Back on the broker: renew every held item at once, before the broker lends
        out those whose lease ran out while we were away."""
        self.connected_at = now
        for hold in self.holds.values():
            hold.renew_at = now

    def on_tick(self, now: float) -> list[RenewLease | WriteClaim]:
        """What is due at ``now``: lease renewals and pending claims (each claim is
        returned once; :meth:`claim_failed` schedules it again)."""
        due: list[RenewLease | WriteClaim] = []
        for hold in self.holds.values():
            if now >= hold.renew_at:
                due.append(RenewLease(hold.ticket))
                hold.renew_at = now + renew_every(hold.lease_s)
            if now >= hold.claim_at:
                due.append(WriteClaim(hold.ticket))
                hold.claim_at = math.inf
        return due

    def next_wakeup(self) -> float:
        """When :meth:`on_tick` next has something to do (``inf``: nothing held)."""
        return min((min(h.renew_at, h.claim_at) for h in self.holds.values()), default=math.inf)


# --- settling an item once its work is over --------------------------------------------------


def settle_work(outcome: str, record: TaskRecord | None) -> Ack | Leave:
    """What to do with a work item once its work is over. ``outcome`` is ``done`` or
    ``failed`` (our result is written: acknowledge), ``abandoned`` (we lost the task;
    ``record`` is the task as read afterwards, None if gone), or anything else (handed
    back, or unsure): leave it. A lost task's item is acknowledged only if the task
    ended or is in review, where the work item stands for nothing any more; otherwise
    the broker may have lent it to the agent that took the task over (6.5)."""
    if outcome in ("done", "failed"):
        return Ack()
    if outcome == "abandoned" and (record is None or is_terminal(record) or record.state == "review"):
        return Ack()
    return Leave()


def settle_review(record: TaskRecord | None, *, round: int, ticket: int) -> Ack | GiveBack | Leave:
    """What a reviewer whose slot is gone does with its review item, given the task's
    ``record`` as read now: acknowledge it if its round is over, leave it if a
    reviewer that took the slot over holds it (the same item, lent again), else give
    it back for another reviewer."""
    if record is None or record.state != "review" or record.reworks != round:
        return Ack()
    if any(s.ticket == ticket for s in record.slots):
        return Leave()
    return GiveBack("our slot went to nobody", REVIEW_HAND_BACK_S)
