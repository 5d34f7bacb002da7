"""The protocol's rules other than the state machine, as pure functions.

Time, ids and randomness are arguments: every rule here is deterministic.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
from dataclasses import dataclass
from typing import Any

import msgspec

from .errors import LocalProtocolError
from .events import Claim, Expire, Reviewing
from .limits import MAX_QUORUM, MAX_VOTES, check_record_limits
from .machine import free_slots, is_terminal, slot_of, vetoes
from .names import (
    MAX_PRIORITY,
    capability_tokens,
    clarification_capability,
    validate_agent_id,
    validate_capability,
    validate_task_id,
)
from .types import Budget, ReviewPolicy, TaskEvent, TaskRecord, WorkItem

__all__ = [
    "DEFAULT_HOPS",
    "DEFAULT_LEASE_S",
    "DEFAULT_CLAIM_TIMEOUT_S",
    "new_task",
    "specificity",
    "serves",
    "best_match",
    "pull_priority",
    "work_items",
    "work_item_id",
    "event_id",
    "record_tag",
    "MSG_ID_DIGEST_CHARS",
    "is_clarification",
    "Take",
    "Drop",
    "HandBack",
    "on_delivery",
    "judge_waiting",
    "end_unreadable",
    "task_event",
    "TrailGap",
    "trail_gap",
    "fingerprint",
    "delegate",
    "ask",
    "split_budget",
    "traceparent",
    "trace_id",
    "child_traceparent",
]

DEFAULT_HOPS = 8
#: the lease of a queue (its consumer's AckWait) when whoever creates it sets none
DEFAULT_LEASE_S = 10.0
DEFAULT_CLAIM_TIMEOUT_S = 10.0


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
    claim_timeout_s: float = DEFAULT_CLAIM_TIMEOUT_S,
    trace: str | None = None,
) -> TaskRecord:
    """A new root task, open for claiming. ``trace`` is a W3C traceparent (see
    :func:`traceparent`); ids and randomness come from the caller.

    A task over a limit of :mod:`protocol.limits` (too much data, a deadline that is
    not a finite time...) is refused with :class:`~protocol.limits.LimitExceeded`."""
    validate_task_id(task_id)
    validate_capability(capability)
    validate_agent_id(requester)
    _validate_review(review)
    if hops < 0:
        raise LocalProtocolError(f"hops must be >= 0, got {hops}")
    if deadline is not None and deadline <= now:
        raise LocalProtocolError("the deadline is already past")
    record = TaskRecord(
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
        claim_timeout_s=claim_timeout_s,
        trace=None if trace is None else _check_traceparent(trace),
        created=now,
        updated=now,
    )
    check_record_limits(record)
    return record


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


@functools.lru_cache(maxsize=4096)  # a task's trace is read on each of its writes
def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a W3C ``traceparent`` (for logs and headers), or None if the value
    is not one: a peer's record may carry any string there."""
    try:
        return _check_traceparent(traceparent).split("-")[1] if traceparent else None
    except LocalProtocolError:
        return None


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
    """A policy that the decoders would refuse must not be written (its task could
    never be read again, so never end)."""
    if review is not None:
        validate_capability(review.capability)
        if review.escalate_to is not None:
            validate_capability(review.escalate_to)
        if not 1 <= review.quorum <= MAX_QUORUM:
            raise LocalProtocolError(f"review quorum must be 1 to {MAX_QUORUM}, got {review.quorum}")
        if review.max_reworks < 0 or not review.escalation_timeout_s > 0:
            raise LocalProtocolError("review max_reworks must be >= 0 and escalation_timeout_s > 0")
        if not 1 <= review.reject_quorum <= MAX_QUORUM:
            raise LocalProtocolError(f"review reject_quorum must be 1 to {MAX_QUORUM}, got {review.reject_quorum}")
        if review.quorum - 1 + review.reject_quorum > MAX_VOTES:
            # The last round holds up to quorum - 1 approvals and reject_quorum vetoes.
            raise LocalProtocolError(
                f"review quorum + reject_quorum must be at most {MAX_VOTES + 1} (the votes one round may hold), "
                f"got {review.quorum} + {review.reject_quorum}"
            )


# --- longest-prefix routing ------------------------------------------------------------


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


def pull_priority(served: tuple[str, ...], capability: str) -> int | None:
    """The priority at which an agent serving ``served`` pulls from the queue of
    ``capability``, or None if it does not serve it. 0 is the first choice.

    The priority is the number of the capability's tokens that the agent's longest
    served prefix leaves unmatched (capped at :data:`MAX_PRIORITY`): an exact match
    pulls at 0, an agent serving ``summarize`` pulls ``summarize.medical`` work at 1. The
    broker hands each item to a waiting pull of the lowest priority number, so a free
    specialist always gets work before a free generalist, and the generalist gets it
    when no specialist is free (longest-prefix routing without a round trip)."""
    spec = max((specificity(s, capability) for s in served), default=0.0)
    if spec == 0.0:
        return None
    n = len(capability_tokens(capability))
    return min(MAX_PRIORITY, n - round(spec * n))


# --- work items ------------------------------------------------------------------------


def work_items(old: TaskRecord | None, new: TaskRecord, revision: int) -> tuple[WorkItem, ...]:
    """The work items to publish after ``old`` became ``new`` at ``revision`` (``old``
    None: ``new`` was just made, and ``revision`` is 0 if it is not in the bucket).

    An item is made only when someone new must act: a task that becomes open to claim
    (created, sent back for rework, escalated) gets one work item on its capability's
    queue; a result that enters review gets one review item per slot of the quorum on
    the reviewer capability's queue, and a veto of the last round that does not yet
    reject it gets one more, for the slot its voter spent. Nothing else publishes an item: a hand-back
    (``release``) returns the owner's own item to the queue instead, and a lapsed
    owner's item comes back by itself. A clarification (a task on ``agent.<id>``) has
    no queue: the one party that can answer it finds it among the children of the
    task it follows."""
    if new.state == "open" and (old is None or old.state == "review"):
        if is_clarification(new.capability):
            return ()
        return (WorkItem(task=new.id, capability=new.capability, revision=revision, record=new),)
    if new.state == "review" and old is not None and old.state == "review" and old.reworks == new.reworks:
        # A veto of the last round short of its reject quorum frees its voter's slot
        # for another reviewer: one item for it, numbered by the vetoes so far.
        assert new.review is not None
        opened = len(vetoes(new)) - len(vetoes(old))
        if opened <= 0:
            return ()
        slot = (len(vetoes(new)) - 1) % new.review.quorum
        return (
            WorkItem(
                task=new.id,
                kind="review",
                capability=new.review.capability,
                revision=revision,
                round=new.reworks,
                slot=slot,
                record=new,
            ),
        )
    if new.state == "review" and (old is None or old.state != "review"):
        assert new.review is not None
        return tuple(
            WorkItem(
                task=new.id,
                kind="review",
                capability=new.review.capability,
                revision=revision,
                round=new.reworks,
                slot=slot,
                record=new,
            )
            for slot in range(new.review.quorum)
        )
    return ()


def is_clarification(capability: str) -> bool:
    """Whether ``capability`` is a clarification capability (``agent.<id>``): a
    question addressed to one party, never queued."""
    return capability_tokens(capability)[0] == "agent"


#: characters of a record's digest in a ``Nats-Msg-Id``
MSG_ID_DIGEST_CHARS = 16


def record_tag(record: TaskRecord) -> str:
    """What makes a ``Nats-Msg-Id`` unpredictable: the first :data:`MSG_ID_DIGEST_CHARS`
    characters of the base64url SHA-256 of ``"<id>\n<µs>\n<state>\n<epoch>\n<attempts>\n
    <reworks>\n<votes>"``, where ``<µs>`` is ``floor(updated * 1000000)`` and ``<votes>``
    the number of votes.

    Ids of task, revision and kind alone can be squatted: a party publishing a message
    under the id of a write still to come would have the real one dropped as a
    duplicate (the stream's duplicate window). The microsecond of a write is known only
    once it is made. Integers and strings only, never the record's JSON: any party
    that re-sends the message (a decoded copy, another language) makes the same id, so
    a re-send is still stored once."""
    micros = math.floor(record.updated * 1_000_000)
    canonical = "\n".join(
        str(part)
        for part in (record.id, micros, record.state, record.epoch, record.attempts, record.reworks, len(record.votes))
    )
    raw = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(raw).decode()[:MSG_ID_DIGEST_CHARS]


def work_item_id(item: WorkItem) -> str:
    """The item's ``Nats-Msg-Id``: the same item sent twice is stored once."""
    return f"{item.task}:{item.revision}:{item.kind}:{item.slot}:{record_tag(item.record)}"


def event_id(kind: str, record: TaskRecord, revision: int) -> str:
    """The ``Nats-Msg-Id`` of the event of ``kind`` announcing ``record`` at
    ``revision``: the same event sent twice is stored once."""
    return f"{record.id}:{revision}:{kind}:{record_tag(record)}"


@dataclass(frozen=True)
class Take:
    """Act on the item: write ``event`` (a claim, or a review slot) by compare-and-set."""

    event: Claim | Reviewing


@dataclass(frozen=True)
class Drop:
    """Nothing to do for anyone: acknowledge the item so it leaves the queue."""

    why: str


@dataclass(frozen=True)
class HandBack:
    """Not for this agent, but maybe for another: return the item to the queue."""

    why: str


def on_delivery(
    item: WorkItem, record: TaskRecord, *, agent: str, ticket: int, lease_s: float | None = None
) -> Take | Drop | HandBack:
    """What an agent does with work item ``item``, delivered to it as ``ticket`` (its
    sequence in the work stream, lent for ``lease_s``), given the task's current ``record``.

    A work item claims an open task, or takes over a working one whose owner holds this
    very item (the broker lends an item to one agent at a time: getting it means the
    owner's lease lapsed); any other item of a held, reviewed or ended task is stale. A
    review item of the current round takes the slot held under it (a lapsed reviewer's),
    or a free slot; the author, a reviewer that already voted in the round, and a
    reviewer that already holds a slot of the round under another item hand it back for
    another reviewer (one reviewer reviews a result once: the item stands for a slot
    someone else must fill)."""
    if is_terminal(record):
        return Drop(f"task {record.id} is {record.state}")
    if item.kind == "work":
        if record.state == "open" or (record.state == "working" and record.ticket == ticket):
            return Take(Claim(actor=agent, ticket=ticket, item_lease_s=lease_s))
        return Drop(f"task {record.id} is {record.state} under another work item")
    if record.state != "review" or record.review is None or record.reworks != item.round:
        return Drop(f"review round {item.round} of task {record.id} is over")
    if agent == record.author:
        return HandBack("the author cannot review its own result")
    if any(v.reviewer == agent and v.round == record.reworks for v in record.votes):
        return HandBack("already voted in this round")
    mine = slot_of(record, agent)
    if mine is not None and mine.ticket != ticket:
        return HandBack("already reviewing this round under another work item")
    held = next((s for s in record.slots if s.ticket == ticket), None)
    if held is not None or mine is not None or free_slots(record) > 0:
        return Take(Reviewing(actor=agent, epoch=record.epoch, ticket=ticket))
    return Drop(f"every review slot of task {record.id} is taken under other items")


def judge_waiting(record: TaskRecord, *, actor: str, waited_s: float, queue_active: bool, now: float) -> Expire | None:
    """What party ``actor`` waiting on ``record`` does when it has seen the record unchanged
    for ``waited_s`` seconds (on its own monotonic clock); ``queue_active`` says whether
    any agent is at work on, or waiting for, the queue the task is on.

    Past the deadline, the task expires (``deadline``). An open task expires
    ``no_agent`` after ``claim_timeout_s`` with nobody at its queue: a busy queue is a
    queue, not a missing agent. A review that no reviewer started (no slot taken, no
    vote) for ``claim_timeout_s`` expires ``no_agent`` whatever its queue shows: the
    reviewers that may not review it (its author, one that voted) hold and return its
    items too, so the queue cannot tell absent reviewers from busy ones. A task an
    agent holds is the broker's to watch (the lease on its item): None. A task held by
    an owner with no item (a person or a client answering a question, who renews by
    writing) expires ``no_agent`` once unchanged for ``claim_timeout_s``."""
    if is_terminal(record):
        return None
    if record.deadline is not None and now >= record.deadline:
        return Expire(actor=actor, reason="deadline")
    if waited_s < record.claim_timeout_s:
        return None
    if record.state == "working" and record.ticket is None:
        return Expire(actor=actor, reason="no_agent")
    if (record.state == "open" and not queue_active) or (record.state == "review" and not record.slots):
        return Expire(actor=actor, reason="no_agent")
    return None


def task_event(kind: str, record: TaskRecord, *, actor: str, note: str = "", with_record: bool = False) -> TaskEvent:
    """The event published after a write that made ``record`` (PROTOCOL 6.17): its state,
    reason and epoch, ``at`` the time the write was made (a trace orders writes as they
    were made, not as their events went out). Terminal and ``created`` events
    (``with_record``) carry the record: the events stream is also the archive of tasks
    that are not, or no longer, in the live bucket."""
    return TaskEvent(
        record=record if with_record or is_terminal(record) else None,
        kind=kind,
        task=record.id,
        root=record.root,
        parent=record.parent,
        capability=record.capability,
        actor=actor,
        epoch=record.epoch,
        state=record.state,
        reason=record.reason,
        note=note,
        at=record.updated,
    )


#: how much of a decoder's complaint an ended record keeps in its ``error``
_WHY_CHARS = 300


def end_unreadable(copy: TaskRecord, *, why: str, now: float) -> TaskRecord:
    """What a party of a task writes over the task's stored record when that record
    does not decode (a buggy or hostile writer): its own valid ``copy`` of the task
    (the work item's, the requester's, or the one the ``created`` event archived),
    ended ``failed`` with reason ``error``, written by compare-and-set on the
    unreadable revision.

    Nothing of the unreadable record is trusted (owner, result, votes), and the task
    is ended rather than re-opened: its work may have been done and accepted before
    the record was overwritten, and whether to run it again is the requester's call.
    Either way the task does not wedge, and every party waiting on it sees an end."""
    if is_terminal(copy):
        return copy
    return msgspec.structs.replace(
        copy,
        state="failed",
        reason="error",
        error=f"the stored record was unreadable, so the task was ended: {why[:_WHY_CHARS]}",
        slots=(),
        updated=max(now, copy.updated),
    )


@dataclass(frozen=True)
class TrailGap:
    """The trail lacks the event of a record's latest write (its writer went silent
    between its compare-and-set and its event). ``kind`` is the event to record in its
    stead (``ended`` for an end, ``recovered`` otherwise), ``actor`` the party the
    record names as the writer, and ``items`` the work items that write owed (sent
    again: their message ids make a copy that did reach the queue count once)."""

    kind: str
    actor: str
    items: tuple[WorkItem, ...]


def trail_gap(record: TaskRecord, revision: int, last: TaskEvent | None) -> TrailGap | None:
    """Whether the trail, whose latest event for the task is ``last``, lacks the event of
    the write that made ``record`` (at ``revision``).

    A write's event and work items go out together, items first, once the write is
    committed: an event in the trail that shows the record's state at its epoch means
    that write was announced. Checked by a party that receives a work item its last
    holder never acknowledged (it went silent), before it takes the task over or
    drops the item, so the check costs one read only when a party died. A write that
    changes neither state nor epoch (a vote short of the quorum, progress) is not told
    from the one before it, and is not refilled."""
    if revision == 0:
        return None  # not in the bucket: the "created" event was acknowledged before
    if last is not None and last.state == record.state and last.epoch == record.epoch:
        return None
    if is_terminal(record):
        if last is not None and last.state in ("done", "failed", "cancelled"):
            return None
        actor = record.owner or record.requester
        return TrailGap(kind="ended", actor=actor, items=())
    actor = record.owner or record.author or record.requester
    old = None if record.state in ("open", "review") else record
    return TrailGap(kind="recovered", actor=actor, items=work_items(old, record, revision))


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
    # Limits first: an over-limit child cannot be written even as a refusal.
    check_record_limits(child)
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
