"""The task state machine: one transition table, one pure ``apply``.

``apply(record, event, now)`` returns the next record or raises a
:class:`~protocol.errors.TransitionError` naming state, event and actor. The runtime
writes the returned record with a compare-and-set on the revision it read, so two
actors racing on the same record serialize: one wins, the other re-reads.

The docs' state diagram is generated from :data:`TRANSITIONS`; nothing else lists
which state an event may lead to.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from .errors import Fenced, TransitionError
from .events import (
    AddChild,
    Approve,
    Cancel,
    Charge,
    Claim,
    Event,
    Expire,
    Fail,
    Finish,
    Release,
    Renew,
    Reviewing,
    Veto,
)
from .limits import MAX_ERROR_CHARS, check_record_limits
from .types import TERMINAL_STATES, ReviewSlot, TaskRecord, Usage, Vote

__all__ = [
    "TRANSITIONS",
    "apply",
    "is_terminal",
    "approvals",
    "vetoes",
    "last_round",
    "event_kind",
    "slot_of",
    "free_slots",
    "review_full",
    "takeover_at",
]

#: (state, event kind) -> the states the event may lead to. A pair not listed is an
#: illegal transition. Terminal states have no outgoing transitions.
TRANSITIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("open", "claim"): ("working",),
    ("working", "claim"): ("working", "failed"),
    ("open", "cancel"): ("cancelled",),
    ("open", "expire"): ("failed",),
    ("working", "renew"): ("working",),
    ("working", "add_child"): ("working",),
    ("working", "charge"): ("working", "failed"),
    ("working", "finish"): ("done", "review"),
    ("working", "fail"): ("failed",),
    ("working", "release"): ("open",),
    ("working", "cancel"): ("cancelled",),
    ("working", "expire"): ("failed",),
    ("review", "reviewing"): ("review",),
    ("review", "approve"): ("review", "done"),
    ("review", "veto"): ("review", "open", "failed"),
    ("review", "cancel"): ("cancelled",),
    ("review", "expire"): ("open", "failed"),
}


def is_terminal(record: TaskRecord) -> bool:
    return record.state in TERMINAL_STATES


def event_kind(event: Event) -> str:
    kind = type(event).__struct_config__.tag
    assert isinstance(kind, str)
    return kind


def approvals(record: TaskRecord) -> frozenset[str]:
    """Distinct non-author reviewers approving the current round."""
    return frozenset(
        v.reviewer
        for v in record.votes
        if v.verdict == "approve" and v.round == record.reworks and v.reviewer != record.author
    )


def vetoes(record: TaskRecord) -> frozenset[str]:
    """Distinct non-author reviewers vetoing the current round."""
    return frozenset(
        v.reviewer
        for v in record.votes
        if v.verdict == "veto" and v.round == record.reworks and v.reviewer != record.author
    )


def last_round(record: TaskRecord) -> bool:
    """In the last review round the policy allows: a veto can no longer send it back."""
    return record.review is not None and record.reworks >= record.review.max_reworks


def slot_of(record: TaskRecord, reviewer: str) -> ReviewSlot | None:
    """The review slot ``reviewer`` holds in the current round, if any."""
    return next((s for s in record.slots if s.reviewer == reviewer), None)


def takeover_at(record: TaskRecord) -> float | None:
    """The earliest ``updated`` a takeover of ``record`` may carry: a whole lease after
    its owner last wrote it (an owner at work writes at least every third of its lease,
    PROTOCOL.md 6.5); None when nothing bounds it (the task is not being worked, or its
    owner holds no item, or recorded no lease)."""
    if record.state != "working" or record.ticket is None or record.item_lease_s is None:
        return None
    return record.updated + record.item_lease_s


def free_slots(record: TaskRecord) -> int:
    """Review slots nobody has taken in the current round: ``quorum`` less the slots
    held and the approvals already cast (an approval spends its voter's slot)."""
    if record.state != "review" or record.review is None:
        return 0
    return max(0, record.review.quorum - len(approvals(record)) - len(record.slots))


def review_full(record: TaskRecord) -> bool:
    """In review with every slot taken: no reviewer may start on it but by taking over
    a slot whose holder's lease lapsed."""
    return record.state == "review" and free_slots(record) == 0


def apply(record: TaskRecord, event: Event, now: float) -> TaskRecord:
    """Apply one event at wall-clock time ``now``; return the new record.

    An event that would make a record over a limit of :mod:`protocol.limits` (a result
    too large, a child too many) is refused with :class:`~protocol.limits.LimitExceeded`:
    no party could read that record."""
    kind = event_kind(event)
    if (record.state, kind) not in TRANSITIONS:
        why = "the task is terminal" if is_terminal(record) else "not a legal transition"
        raise TransitionError(state=record.state, event=kind, actor=event.actor, why=why)
    if record.deadline is not None and now >= record.deadline and not isinstance(event, Cancel):
        # Enforced on every transition: whatever was asked, a late task ends here.
        return _end(record, now, "failed", reason="deadline", error="deadline passed")
    new = _HANDLERS[type(event)](record, event, now)
    assert new.state in TRANSITIONS[(record.state, kind)], (record.state, kind, new.state)
    check_record_limits(new)
    return new


# --- handlers ---------------------------------------------------------------------------


def _refuse(record: TaskRecord, event: Event, why: str) -> TransitionError:
    return TransitionError(state=record.state, event=event_kind(event), actor=event.actor, why=why)


def _check_owner(record: TaskRecord, event: Renew | AddChild | Charge | Finish | Fail | Release) -> None:
    if event.actor != record.owner:
        raise Fenced(
            state=record.state,
            event=event_kind(event),
            actor=event.actor,
            why=f"not the owner (owner is {record.owner!r})",
        )
    if event.epoch != record.epoch:
        raise Fenced(
            state=record.state,
            event=event_kind(event),
            actor=event.actor,
            why=f"stale epoch {event.epoch} (current epoch is {record.epoch})",
        )


def _end(record: TaskRecord, now: float, state: str, *, reason: str | None, error: str = "") -> TaskRecord:
    return msgspec.structs.replace(record, state=state, reason=reason, error=error, updated=now)


def _claim(record: TaskRecord, event: Claim, now: float) -> TaskRecord:
    lapses = record.lapses
    progress = ""
    if record.state == "working":
        # A takeover: only the holder of the owner's own work item may make it, and it
        # holds that item because the broker saw the owner's lease lapse.
        if event.ticket is None or event.ticket != record.ticket:
            raise Fenced(
                state=record.state,
                event="claim",
                actor=event.actor,
                why=f"held by {record.owner!r} under work item {record.ticket}, not {event.ticket}",
            )
        lapses += 1
        progress = f"taken over from {record.owner} (lease lapsed)"
        if lapses >= record.max_lapses:
            # The progress says what this write was (its event's note), not what the
            # lost owner last reported.
            return _end(
                msgspec.structs.replace(record, lapses=lapses, progress=progress, progress_at=now),
                now,
                "failed",
                reason="error",
                error=f"owner lost {lapses} times (last: {record.owner}); giving up",
            )
    return msgspec.structs.replace(
        record,
        state="working",
        owner=event.actor,
        epoch=record.epoch + 1,
        attempts=record.attempts + 1,
        ticket=event.ticket,
        item_lease_s=event.item_lease_s,
        lapses=lapses,
        progress=progress,
        progress_at=now,
        updated=now,
    )


def _renew(record: TaskRecord, event: Renew, now: float) -> TaskRecord:
    _check_owner(record, event)
    return msgspec.structs.replace(
        record,
        progress=record.progress if event.progress is None else event.progress,
        progress_at=record.progress_at if event.progress is None and event.checkpoint is None else now,
        checkpoint=record.checkpoint if event.checkpoint is None else event.checkpoint,
        updated=now,
    )


def _add_child(record: TaskRecord, event: AddChild, now: float) -> TaskRecord:
    _check_owner(record, event)
    children = record.children if event.child in record.children else (*record.children, event.child)
    return msgspec.structs.replace(record, children=children, updated=now)


def _charge(record: TaskRecord, event: Charge, now: float) -> TaskRecord:
    _check_owner(record, event)
    spent = Usage(
        tokens=record.spent.tokens + event.usage.tokens,
        cost=record.spent.cost + event.usage.cost,
    )
    new = msgspec.structs.replace(record, spent=spent, updated=now)
    budget = record.budget
    if budget is not None and (
        (budget.tokens is not None and spent.tokens > budget.tokens)
        or (budget.cost is not None and spent.cost > budget.cost)
    ):
        return _end(
            new,
            now,
            "failed",
            reason="budget",
            error=f"budget exceeded: spent {spent.tokens} tokens, {spent.cost:.6f} cost",
        )
    return new


def _finish(record: TaskRecord, event: Finish, now: float) -> TaskRecord:
    _check_owner(record, event)
    state = "done" if record.review is None else "review"
    return msgspec.structs.replace(
        record, state=state, result=event.result, author=event.actor, votes=(), slots=(), updated=now
    )


def _fail(record: TaskRecord, event: Fail, now: float) -> TaskRecord:
    _check_owner(record, event)
    return _end(record, now, "failed", reason=event.reason, error=event.message)


def _release(record: TaskRecord, event: Release, now: float) -> TaskRecord:
    _check_owner(record, event)
    return msgspec.structs.replace(
        record, state="open", owner=None, ticket=None, item_lease_s=None, progress=event.note, updated=now
    )


def _vote_guard(record: TaskRecord, event: Approve | Veto | Reviewing) -> None:
    if event.epoch != record.epoch:
        raise Fenced(
            state=record.state,
            event=event_kind(event),
            actor=event.actor,
            why=f"vote on epoch {event.epoch} but the result under review is epoch {record.epoch}",
        )
    if event.actor == record.author:
        raise _refuse(record, event, "the author cannot review its own result")
    if any(v.reviewer == event.actor and v.round == record.reworks for v in record.votes):
        raise _refuse(record, event, "this reviewer already voted on this result")


def _holders(record: TaskRecord) -> str:
    return ", ".join(s.reviewer for s in record.slots) or "nobody (approvals spent them)"


def _slots_full(record: TaskRecord, event: Approve | Veto | Reviewing, what: str) -> Fenced:
    return Fenced(
        state=record.state,
        event=event_kind(event),
        actor=event.actor,
        why=f"{what}: every review slot is taken (held by {_holders(record)})",
    )


def _check_voter(record: TaskRecord, event: Approve | Veto) -> tuple[ReviewSlot, ...]:
    """The vote check; returns the slots left once the voter's slot is spent. A voter
    without a slot votes only if a slot is free (its vote takes and spends it at once:
    people answering in an inbox, agents that do not reserve); a holder whose slot was
    taken over while no slot is free is refused as ``Fenced``."""
    _vote_guard(record, event)
    if slot_of(record, event.actor) is None and free_slots(record) == 0:
        raise _slots_full(record, event, "not a review slot holder")
    return tuple(s for s in record.slots if s.reviewer != event.actor)


def _reviewing(record: TaskRecord, event: Reviewing, now: float) -> TaskRecord:
    _vote_guard(record, event)
    mine = slot_of(record, event.actor)
    held = None if event.ticket is None else next((s for s in record.slots if s.ticket == event.ticket), None)
    if event.release:
        if mine is None:
            raise Fenced(
                state=record.state, event="reviewing", actor=event.actor, why="holds no review slot to give back"
            )
        slots = tuple(s for s in record.slots if s is not mine)
        progress = f"{event.actor} gave its review slot back"
    elif mine is not None:
        # A renewal; a holder that got its own item again keeps its slot under it.
        ticket = mine.ticket if event.ticket is None else event.ticket
        renewed = msgspec.structs.replace(mine, ticket=ticket)
        slots = tuple(renewed if s is mine else s for s in record.slots if s is mine or s is not held)
        progress = f"{event.actor} is reviewing"
    elif held is not None:
        # The broker lent the holder's item to us: its lease lapsed.
        slots = tuple(
            ReviewSlot(reviewer=event.actor, ticket=event.ticket, since=now) if s is held else s for s in record.slots
        )
        progress = f"{event.actor} took over the review slot of {held.reviewer}"
    elif free_slots(record) > 0:
        slots = (*record.slots, ReviewSlot(reviewer=event.actor, ticket=event.ticket, since=now))
        progress = f"{event.actor} is reviewing"
    else:
        raise _slots_full(record, event, "no slot to take")
    return msgspec.structs.replace(record, slots=slots, progress=progress, updated=now)


def _approve(record: TaskRecord, event: Approve, now: float) -> TaskRecord:
    slots = _check_voter(record, event)
    vote = Vote(reviewer=event.actor, verdict="approve", round=record.reworks, at=now)
    new = msgspec.structs.replace(record, votes=(*record.votes, vote), slots=slots, updated=now)
    assert record.review is not None
    if len(approvals(new)) >= record.review.quorum:
        return msgspec.structs.replace(new, state="done", slots=())
    return new


def _veto(record: TaskRecord, event: Veto, now: float) -> TaskRecord:
    slots = _check_voter(record, event)
    if not event.reasons or not all(r.strip() for r in event.reasons):
        raise _refuse(record, event, "a veto must give at least one non-empty reason")
    policy = record.review
    assert policy is not None
    vote = Vote(reviewer=event.actor, verdict="veto", reasons=event.reasons, round=record.reworks, at=now)
    feedback = (*record.feedback, vote)
    if last_round(record):
        new = msgspec.structs.replace(record, votes=(*record.votes, vote), slots=slots, feedback=feedback, updated=now)
        held = len(vetoes(new))
        if held < policy.reject_quorum:
            # The last round: one veto is one opinion. The voter's slot opens for another
            # reviewer; the round ends at the quorum's approvals or reject_quorum vetoes.
            progress = f"vetoed by {held} of the {policy.reject_quorum} reviewers it takes to reject; asking another"
            return msgspec.structs.replace(new, progress=progress)
        return _past_bound(new, now, "; ".join(event.reasons))
    # A veto ends the round: every slot is released.
    return msgspec.structs.replace(
        record,
        state="open",
        owner=None,
        ticket=None,
        item_lease_s=None,
        reworks=record.reworks + 1,
        votes=(),
        slots=(),
        feedback=feedback,
        progress="sent back for rework",
        updated=now,
    )


def _past_bound(record: TaskRecord, now: float, error: str) -> TaskRecord:
    """The last round rejected the result (its vetoes already recorded): escalate, or
    fail ``rejected``."""
    policy = record.review
    assert policy is not None
    if policy.escalate_to is not None:
        # Past the bound a person (or another authority) decides; its answer is final.
        return msgspec.structs.replace(
            record,
            state="open",
            capability=policy.escalate_to,
            review=None,
            owner=None,
            ticket=None,
            item_lease_s=None,
            claim_timeout_s=policy.escalation_timeout_s,
            slots=(),
            progress=f"escalated to {policy.escalate_to} after {record.reworks} reworks",
            updated=now,
        )
    return _end(
        msgspec.structs.replace(record, slots=()), now, "failed", reason="rejected", error=error[:MAX_ERROR_CHARS]
    )


def _cancel(record: TaskRecord, event: Cancel, now: float) -> TaskRecord:
    return _end(record, now, "cancelled", reason="cancelled", error=event.note)


def _expire(record: TaskRecord, event: Expire, now: float) -> TaskRecord:
    if event.reason == "deadline":
        # apply() already ended every task past its deadline; reaching here means
        # the deadline has not passed.
        raise _refuse(record, event, "the deadline has not passed")
    if record.state == "working" and record.ticket is not None:
        # An agent's hold is watched by the broker (the lease on its item); only an
        # owner holding no item (a person, a client answering a question) is judged
        # by the task's parties, from the record's revisions.
        raise _refuse(record, event, "no_agent only ends a task no agent holds")
    if record.state == "working":
        return _end(record, now, "failed", reason="no_agent", error=f"{record.owner} stopped answering")
    if record.state == "review" and vetoes(record):
        # A last round short of its reject quorum that no other reviewer takes up: the
        # vetoes it has are all the judgment there will be.
        said = (r for v in record.votes if v.verdict == "veto" and v.round == record.reworks for r in v.reasons)
        return _past_bound(record, now, "; ".join(said))
    return _end(record, now, "failed", reason="no_agent", error=f"no agent took {record.capability!r}")


_HANDLERS: dict[type, Callable[[TaskRecord, object, float], TaskRecord]] = {
    Claim: _claim,  # type: ignore[dict-item]
    Renew: _renew,  # type: ignore[dict-item]
    AddChild: _add_child,  # type: ignore[dict-item]
    Charge: _charge,  # type: ignore[dict-item]
    Finish: _finish,  # type: ignore[dict-item]
    Fail: _fail,  # type: ignore[dict-item]
    Release: _release,  # type: ignore[dict-item]
    Reviewing: _reviewing,  # type: ignore[dict-item]
    Approve: _approve,  # type: ignore[dict-item]
    Veto: _veto,  # type: ignore[dict-item]
    Cancel: _cancel,  # type: ignore[dict-item]
    Expire: _expire,  # type: ignore[dict-item]
}
