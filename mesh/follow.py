"""Waiting for a task to end, as one of its parties (requester, parent owner).

A party follows its task's events with a core NATS subscription (no JetStream
consumer per wait) and re-reads the record only when an event says the task ended
or a timer is due. While waiting it is also an *observer*: it judges, on its own
monotonic clock, whether an unclaimed task has waited too long (``no_agent``), whether
the owner's lease lapsed (re-open), and whether the deadline passed.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import structlog

from protocol import (
    Expire,
    LeaseView,
    RemoteProtocolError,
    Reopen,
    TaskRecord,
    TransitionError,
    board_change,
    decode_event,
    is_terminal,
)

from .bus import Bus, Conflict, Follow, Unavailable

__all__ = ["wait_terminal", "create_and_wait"]

log = structlog.get_logger("mesh.follow")


async def wait_terminal(bus: Bus, record: TaskRecord, *, observer: str, poll_s: float = 1.0) -> TaskRecord:
    """Return ``record``'s terminal version. Never hangs: every task has a claim
    timeout, a lease, and usually a deadline, and this function enforces all three."""
    async with bus.follow(record) as events:
        current, revision = await bus.read_patiently(record.id)
        return await _follow(bus, events, current, revision, observer=observer, poll_s=poll_s)


async def create_and_wait(
    bus: Bus,
    record: TaskRecord,
    *,
    observer: str,
    poll_s: float = 1.0,
    around: Callable[[Callable[[], Awaitable[TaskRecord]]], Awaitable[TaskRecord]] | None = None,
) -> TaskRecord:
    """Create ``record`` and return its terminal version, as :func:`wait_terminal`.

    Its events are followed from before it exists, so none can be missed, and the
    record and revision this call wrote are where following starts: no read. The
    acks of its offer and "created" event come back while the task is worked; they are
    awaited before returning, however the wait ends, so a caller that exits at once
    loses no offer. ``around(wait)``, if given, runs the wait once the task exists
    (e.g. while answering the task's questions)."""
    async with bus.follow(record) as events:
        revision, announced = await bus.create_and_announce(record)

        def wait() -> Awaitable[TaskRecord]:
            return _follow(bus, events, record, revision, observer=observer, poll_s=poll_s)

        try:
            return await (wait() if around is None else around(wait))
        finally:
            # Shielded: even a cancelled wait leaves an acknowledged offer (bounded by
            # the publish patience).
            with anyio.CancelScope(shield=True):
                await announced.wait()


async def _follow(
    bus: Bus, events: Follow, current: TaskRecord, revision: int, *, observer: str, poll_s: float
) -> TaskRecord:
    """Follow one task from ``current`` (at ``revision``) to its end."""
    task_id = current.id
    view = LeaseView(revision=revision, seen_at=time.monotonic(), lease_s=_patience(current))
    reannounced: set[str] = set()
    watched = not is_terminal(current)
    while not is_terminal(current):
        wait = min(poll_s, max(view.due() - time.monotonic(), 0.0))
        if current.deadline is not None:
            wait = min(wait, max(current.deadline - time.time(), 0.0) + 0.01)
        ended = False
        data = await events.next(max(wait, 0.001))
        if data is not None:
            try:
                event = decode_event(data)
                ended = event.state in ("done", "failed", "cancelled")
                if ended and event.record is not None and event.record.id == task_id:
                    return event.record  # terminal events carry the final record
                if event.state == "working" and current.state != "working":
                    # Claimed: from now on the owner's lease, not the claim timeout, is
                    # how long the record may stay unchanged (judged after a read).
                    view = LeaseView(revision=view.revision, seen_at=time.monotonic(), lease_s=current.lease_s)
            except RemoteProtocolError:
                ended = True  # unreadable event: check the record itself
        # Time without a broker does not count against anyone's patience.
        view = LeaseView(revision=view.revision, seen_at=max(view.seen_at, bus.reconnects.at), lease_s=view.lease_s)
        if not ended and time.monotonic() < view.due() and (current.deadline is None or time.time() < current.deadline):
            continue
        try:
            current, revision = await bus.read(task_id)
        except Unavailable:
            await anyio.sleep(0.25)
            continue
        if revision > view.revision:
            view = LeaseView(revision=revision, seen_at=time.monotonic(), lease_s=_patience(current))
            if current.deadline is None or time.time() < current.deadline:
                continue
        announced = current.state == "open" and current.id in reannounced
        current, revision = await _judge(bus, current, revision, observer, announced_again=announced)
        if current.state == "open":
            reannounced.add(current.id)
        view = LeaseView(revision=revision, seen_at=time.monotonic(), lease_s=_patience(current))
    if watched:
        # We saw the end on the record, not in an event: the writer may have died
        # between committing and publishing. Fill the gap in the trace (idempotent).
        await bus.publish_event("ended", current, revision, actor=observer, note="end observed on the record")
    return current


def _patience(record: TaskRecord) -> float:
    """How long a party lets a record stay unchanged before acting on it."""
    if record.state == "working":
        return record.lease_s
    # An open task is re-announced after half its claim timeout and ends no_agent
    # after the other half.
    return record.claim_timeout_s / 2


async def _judge(
    bus: Bus, record: TaskRecord, revision: int, observer: str, *, announced_again: bool
) -> tuple[TaskRecord, int]:
    """The record has not changed for its patience, or its deadline passed: end or
    re-open it. A lost race just means someone else acted first."""
    if is_terminal(record):
        return record, revision
    if record.deadline is not None and time.time() >= record.deadline:
        event: Expire | Reopen = Expire(actor=observer, reason="deadline")
    elif record.state == "working":
        event = Reopen(actor=observer, epoch=record.epoch)
        log.info("lease lapsed, reopening", task=record.id, owner=record.owner, epoch=record.epoch)
    elif not announced_again:
        # Before declaring no_agent, announce the task once more: its offer may have
        # been lost (broker failover) rather than ignored.
        await bus.publish_board(record.id, board_change(None, record, revision), revision, record, again=True)
        return record, revision
    else:
        event = Expire(actor=observer, reason="no_agent")
    try:
        return await bus.write(record, revision, event)
    except (Conflict, TransitionError, Unavailable):
        await anyio.lowlevel.checkpoint()
        return await bus.read(record.id)
