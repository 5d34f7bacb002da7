"""The protocol's rules other than the state machine, as pure functions.

Time, ids and randomness are arguments: every rule here is deterministic.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any

import msgspec

from .errors import LocalProtocolError
from .events import Reviewing
from .machine import free_slots, review_full, slot_of
from .names import capability_tokens, clarification_capability, validate_agent_id, validate_capability, validate_task_id
from .types import Budget, Offer, ReviewPolicy, ReviewSlot, TaskRecord

__all__ = [
    "DEFAULT_HOPS",
    "DEFAULT_LEASE_S",
    "DEFAULT_CLAIM_WINDOW_S",
    "new_task",
    "specificity",
    "serves",
    "best_match",
    "fit",
    "claim_delay",
    "LeaseView",
    "review_lease_s",
    "SlotsView",
    "take_slot",
    "fingerprint",
    "delegate",
    "ask",
    "split_budget",
    "traceparent",
    "child_traceparent",
    "offers_for",
    "BoardChange",
    "board_change",
]

DEFAULT_HOPS = 8
DEFAULT_LEASE_S = 10.0
#: the contention window: a fit-0 agent waits this long before claiming
DEFAULT_CLAIM_WINDOW_S = 0.2


def new_task(
    *,
    task_id: str,
    capability: str,
    instruction: str,
    requester: str,
    now: float,
    data: Any = None,
    criteria: str = "",
    tags: tuple[str, ...] = (),
    review: ReviewPolicy | None = None,
    hops: int = DEFAULT_HOPS,
    deadline: float | None = None,
    budget: Budget | None = None,
    lease_s: float = DEFAULT_LEASE_S,
    claim_timeout_s: float = 10.0,
    trace: str | None = None,
) -> TaskRecord:
    """A new root task, open for claiming. ``trace`` is a W3C traceparent (see
    :func:`traceparent`); ids and randomness come from the caller."""
    validate_task_id(task_id)
    validate_capability(capability)
    validate_agent_id(requester)
    _validate_review(review)
    if hops < 0:
        raise LocalProtocolError(f"hops must be >= 0, got {hops}")
    if deadline is not None and deadline <= now:
        raise LocalProtocolError("the deadline is already past")
    return TaskRecord(
        id=task_id,
        capability=capability,
        instruction=instruction,
        data=data,
        criteria=criteria,
        tags=tags,
        requester=requester,
        review=review,
        hops_left=hops,
        deadline=deadline,
        budget=budget,
        root=task_id,
        lease_s=lease_s,
        claim_timeout_s=claim_timeout_s,
        trace=None if trace is None else _check_traceparent(trace),
        created=now,
        updated=now,
    )


_HEX = frozenset("0123456789abcdef")


def traceparent(trace_id: str, span_id: str) -> str:
    """A W3C trace-context ``traceparent`` (version 00, sampled) from a 32-hex-digit
    trace id and a 16-hex-digit span id."""
    return _check_traceparent(f"00-{trace_id}-{span_id}-01")


def child_traceparent(parent: str | None, span_id: str) -> str | None:
    """The traceparent of a child task: the parent's trace id, a new span id."""
    if parent is None:
        return None
    return traceparent(_check_traceparent(parent).split("-")[1], span_id)


def _check_traceparent(value: str) -> str:
    parts = value.split("-")
    if (
        len(parts) != 4
        or [len(p) for p in parts] != [2, 32, 16, 2]
        or not all(set(p) <= _HEX for p in parts)
        or parts[1] == "0" * 32
        or parts[2] == "0" * 16
    ):
        raise LocalProtocolError(f"not a W3C traceparent: {value!r} (expected 00-<32 hex>-<16 hex>-<2 hex>)")
    return value


def _validate_review(review: ReviewPolicy | None) -> None:
    if review is not None:
        validate_capability(review.capability)
        if review.escalate_to is not None:
            validate_capability(review.escalate_to)


# --- longest-prefix routing and fit -----------------------------------------------------


@functools.lru_cache(maxsize=8192)
def specificity(served: str, capability: str) -> float:
    """How specifically ``served`` matches ``capability``: 1.0 for an exact match,
    ``len(served)/len(capability)`` in tokens for a prefix, 0.0 for no match.
    ``summarize`` serves ``summarize.medical`` at 0.5."""
    s, c = capability_tokens(served), capability_tokens(capability)
    if len(s) > len(c) or c[: len(s)] != s:
        return 0.0
    return len(s) / len(c)


def best_match(served: tuple[str, ...], capability: str) -> str | None:
    """The longest served capability that covers ``capability``, if any."""
    scored = [(specificity(s, capability), s) for s in served]
    best = max(scored, default=(0.0, ""))
    return best[1] if best[0] > 0 else None


def serves(served: tuple[str, ...], capability: str) -> bool:
    return best_match(served, capability) is not None


def fit(
    *,
    served: tuple[str, ...],
    capability: str,
    tags: tuple[str, ...] = (),
    expertise: tuple[str, ...] = (),
    load: int = 0,
    capacity: int = 1,
    completed: int = 0,
    failed: int = 0,
) -> float:
    """How well an agent fits a task, in [0, 1]; 0 means it may not claim it.

    Specificity dominates, strictly: an agent whose served capability matches more
    tokens of the task's capability always fits better than one matching fewer, however
    busy it is (as long as it is not full). Within one specificity, *quality* decides:
    free capacity, declared expertise for the task's tags, and track record::

        quality = 0.6 + 0.25 * free + 0.1 * expert + 0.05 * track      in (0.6, 1]
        fit     = specificity - (1 - quality) / n                      n = tokens of capability

    Specificities of one capability are ``k / n`` for ``k`` matched tokens, so the
    penalty (under ``0.4 / n``) never crosses into the band below. For a one-token
    capability ``fit == quality``; for ``summarize`` serving ``summarize.medical`` it
    is ``0.5 * quality``. (A plain product ``specificity * quality`` lets a busy exact
    match lose to an idle three-of-four-token prefix.)

    The track record only ever *lowers* fit: ``1 - failed / (completed + failed + 1)``
    is 1.0 for an agent that never failed, new or old. (A smoothed success rate would
    lower the fit of a perfect agent after its first success and so delay every
    claim it makes; an idle, exact, never-failing agent must claim at once.)
    """
    spec = max((specificity(s, capability) for s in served), default=0.0)
    if spec == 0.0 or load >= capacity:
        return 0.0
    free = 1.0 - max(load, 0) / capacity
    expert = 1.0 if not tags else len(set(tags) & set(expertise)) / len(set(tags))
    track = 1.0 - max(failed, 0) / (max(completed, 0) + max(failed, 0) + 1)
    # Weights sum to 1: an idle exact match that never failed has fit 1 (no delay).
    quality = 0.6 + 0.25 * free + 0.1 * expert + 0.05 * track
    return min(1.0, spec - (1.0 - quality) / len(capability_tokens(capability)))


def claim_delay(fit_value: float, *, window: float = DEFAULT_CLAIM_WINDOW_S, jitter: float = 0.0) -> float:
    """Seconds to wait before claiming: ``(1 - fit) * window`` plus up to 1% of the
    window of jitter (``jitter`` in [0, 1) is the caller's random draw). The best fit
    claims first; everyone else sees the task taken and stands down."""
    if not 0.0 <= jitter < 1.0:
        raise LocalProtocolError(f"jitter must be in [0, 1), got {jitter}")
    if not 0.0 < fit_value <= 1.0:
        raise LocalProtocolError(f"an agent with fit {fit_value} may not claim")
    return (1.0 - fit_value) * window + jitter * window * 0.01


# --- leases --------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseView:
    """One observer's view of a lease: the last revision it saw, and when it saw it on
    its *own* monotonic clock. No two machines' clocks are ever compared."""

    revision: int
    seen_at: float
    lease_s: float

    def observe(self, revision: int, now: float) -> LeaseView:
        """A (possibly) newer revision was read at monotonic time ``now``."""
        if revision > self.revision:
            return LeaseView(revision=revision, seen_at=now, lease_s=self.lease_s)
        return self

    def expired(self, now: float) -> bool:
        return now - self.seen_at >= self.lease_s

    def due(self) -> float:
        """Monotonic time at which the lease expires unless a new revision shows up."""
        return self.seen_at + self.lease_s


# --- review slots ----------------------------------------------------------------------


def review_lease_s(record: TaskRecord) -> float:
    """The lease of a review slot: the owner's lease, but at most a quarter of the claim
    timeout. A waiting party ends a review nobody touches for ``claim_timeout_s`` with
    ``no_agent``; an observer notices a dead holder within two slot leases (one to see
    its last beat, one to see it unchanged), so a takeover comes well before that."""
    return min(record.lease_s, record.claim_timeout_s / 4)


@dataclass(frozen=True)
class SlotsView:
    """One observer's view of the review slots of one task: each slot as last seen, and
    when it was first seen in that form on the observer's *own* monotonic clock. A
    holder's heartbeat changes its slot (``beat``); a slot seen unchanged for
    ``lease_s`` has lapsed, for this observer. (The record's revision alone cannot
    tell: with a quorum above one, a live holder's heartbeats move it while another
    holder is dead.)"""

    lease_s: float
    seen: tuple[tuple[ReviewSlot, float], ...] = ()

    def observe(self, slots: tuple[ReviewSlot, ...], now: float) -> SlotsView:
        """The slots of a record read at monotonic time ``now``."""
        first_seen = dict(self.seen)
        return SlotsView(lease_s=self.lease_s, seen=tuple((s, first_seen.get(s, now)) for s in slots))

    def lapsed(self, now: float) -> tuple[ReviewSlot, ...]:
        return tuple(s for s, at in self.seen if now - at >= self.lease_s)

    def due(self, now: float) -> float | None:
        """When the next slot not lapsed yet lapses unless it is renewed (None: none)."""
        return min((at + self.lease_s for _, at in self.seen if now - at < self.lease_s), default=None)


def take_slot(record: TaskRecord, reviewer: str, lapsed: tuple[ReviewSlot, ...] = ()) -> Reviewing | None:
    """The ``reviewing`` event by which ``reviewer`` holds a review slot of ``record``
    before it reviews, or None if it may not review it now.

    A slot it holds already is renewed; else a free slot is taken; else a slot among
    ``lapsed`` (as judged by a :class:`SlotsView`) that the record still shows exactly
    so is taken over. None for the author, for a reviewer that voted in this round, and
    when every slot is taken by holders not known to have lapsed."""
    if record.state != "review" or record.review is None:
        return None
    if reviewer == record.author or any(v.reviewer == reviewer and v.round == record.reworks for v in record.votes):
        return None
    if slot_of(record, reviewer) is not None or free_slots(record) > 0:
        return Reviewing(actor=reviewer, epoch=record.epoch)
    for slot in lapsed:
        if slot.reviewer != reviewer and slot in record.slots:
            return Reviewing(actor=reviewer, epoch=record.epoch, takes=slot.reviewer, beat=slot.beat)
    return None


# --- delegation, loops, budgets -----------------------------------------------------------


def fingerprint(capability: str, instruction: str) -> str:
    """Identity of a piece of work, for loop refusal: capability plus the instruction
    with whitespace and case folded."""
    norm = " ".join(instruction.split()).casefold()
    return hashlib.sha256(f"{capability}\n{norm}".encode()).hexdigest()[:16]


def split_budget(parent: TaskRecord, share: float) -> Budget | None:
    """A child's budget: ``share`` of what the parent has left."""
    if not 0.0 < share <= 1.0:
        raise LocalProtocolError(f"budget share must be in (0, 1], got {share}")
    b = parent.budget
    if b is None:
        return None
    tokens = None if b.tokens is None else max(0, int((b.tokens - parent.spent.tokens) * share))
    cost = None if b.cost is None else max(0.0, (b.cost - parent.spent.cost) * share)
    return Budget(tokens=tokens, cost=cost)


def delegate(
    parent: TaskRecord,
    *,
    child_id: str,
    capability: str,
    instruction: str,
    actor: str,
    now: float,
    data: Any = None,
    criteria: str = "",
    tags: tuple[str, ...] = (),
    review: ReviewPolicy | None = None,
    deadline: float | None = None,
    budget_share: float = 0.5,
    span_id: str | None = None,
) -> TaskRecord:
    """The child task of a handoff by ``parent``'s owner.

    Rules: one hop fewer; a deadline no later than the parent's; a share of the
    parent's remaining budget. A child the rules forbid is still created, already
    ``failed`` with the reason (``hop_limit``, ``loop``, ``budget``, ``deadline``), so
    the refusal is on record and the parent's owner reads it like any other outcome.
    """
    if actor != parent.owner or parent.state != "working":
        raise LocalProtocolError(f"only the owner of a working task may delegate ({actor!r} is not)")
    validate_task_id(child_id)
    validate_capability(capability)
    _validate_review(review)
    if parent.deadline is not None:
        deadline = parent.deadline if deadline is None else min(deadline, parent.deadline)
    lineage = (*parent.lineage, fingerprint(parent.capability, parent.instruction))
    budget = split_budget(parent, budget_share)
    child = TaskRecord(
        id=child_id,
        capability=capability,
        instruction=instruction,
        data=data,
        criteria=criteria,
        tags=tags,
        requester=actor,
        review=review,
        hops_left=max(parent.hops_left - 1, 0),
        deadline=deadline,
        budget=budget,
        parent=parent.id,
        root=parent.root,
        lineage=lineage,
        trace=None if span_id is None else child_traceparent(parent.trace, span_id),
        lease_s=parent.lease_s,
        claim_timeout_s=parent.claim_timeout_s,
        created=now,
        updated=now,
    )
    refusal: tuple[str, str] | None = None
    if parent.hops_left == 0:
        refusal = ("hop_limit", f"{parent.id} has no hops left")
    elif fingerprint(capability, instruction) in lineage:
        refusal = ("loop", f"same capability and instruction as an ancestor of {parent.id}")
    elif budget is not None and (budget.tokens == 0 or budget.cost == 0.0):
        refusal = ("budget", f"{parent.id} has no budget left to share")
    elif deadline is not None and deadline <= now:
        refusal = ("deadline", f"the deadline of {child_id} has already passed")
    if refusal is not None:
        return msgspec.structs.replace(child, state="failed", reason=refusal[0], error=refusal[1])
    return child


def ask(
    parent: TaskRecord, *, child_id: str, question: str, actor: str, now: float, span_id: str | None = None
) -> TaskRecord:
    """A clarification: a child task addressed to the requester's own capability
    ``agent.<requester>``. Its result is the answer."""
    return delegate(
        parent,
        child_id=child_id,
        capability=clarification_capability(parent.requester),
        instruction=question,
        actor=actor,
        now=now,
        budget_share=1.0,
        span_id=span_id,
    )


# --- the board ---------------------------------------------------------------------------


def offers_for(record: TaskRecord, revision: int) -> dict[str, Offer]:
    """The offers that should be on the board for ``record`` at ``revision``, by
    capability. Open and working tasks are offered under their capability (agents
    claim open ones and watch the lease of working ones); tasks in review are offered
    under the reviewer capability, marked ``full`` once every review slot is taken
    (reviewers then watch the slot leases instead of starting a review); terminal
    tasks are on no board."""
    lease_s = record.lease_s
    if record.state in ("open", "working"):
        cap = record.capability
    elif record.state == "review":
        assert record.review is not None
        cap = record.review.capability
        lease_s = review_lease_s(record)
    else:
        return {}
    return {
        cap: Offer(
            task=record.id,
            capability=record.capability,
            state=record.state,
            revision=revision,
            epoch=record.epoch,
            owner=record.owner,
            tags=record.tags,
            author=record.author,
            lease_s=lease_s,
            deadline=record.deadline,
            full=review_full(record),
        )
    }


@dataclass(frozen=True)
class BoardChange:
    put: dict[str, Offer]
    delete: tuple[str, ...]


def board_change(old: TaskRecord | None, new: TaskRecord, revision: int) -> BoardChange:
    """What to write to the board after ``old`` became ``new`` at ``revision``.

    Only changes of who-must-act are broadcast: lease renewals, progress, checkpoints
    and slot heartbeats never touch the board (they go to the record only, which just
    the task's parties watch). A review becoming full (or free again) is broadcast:
    reviewers must stop (or may start) taking slots."""
    before = {} if old is None else offers_for(old, 0)
    after = offers_for(new, revision)
    changed = (
        old is None
        or old.state != new.state
        or old.epoch != new.epoch
        or old.capability != new.capability
        or review_full(old) != review_full(new)
    )
    put = after if changed else {}
    delete = tuple(cap for cap in before if cap not in after)
    return BoardChange(put=put, delete=delete)
