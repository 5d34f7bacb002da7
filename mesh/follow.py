"""Waiting for a task to end, as one of its parties (requester, parent owner).

A party follows its task's record with a core NATS subscription to the subject on
which the broker republishes every accepted write (no JetStream consumer per wait),
and re-reads the record now and then in case a message was lost. While waiting it
judges, on its own monotonic clock, whether a task that waits for an agent has waited
too long with nobody at its queue (``no_agent``) and whether the deadline passed
(:func:`protocol.judge_waiting`). Held tasks are the broker's to watch: the lease on
their work item moves them to another agent when their owner goes silent.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import structlog

from protocol import RemoteProtocolError, TaskRecord, TransitionError, is_terminal, judge_waiting

from .bus import Bus, Conflict, CorruptRecord, Follow, NotFound, Unavailable

__all__ = ["wait_terminal", "create_and_wait", "OnRecord"]

log = structlog.get_logger("mesh.follow")

#: called with each new version of the followed record (e.g. to answer its questions)
OnRecord = Callable[[TaskRecord], Awaitable[None]]

#: a waiting party re-reads the record this often even if no write was announced (a
#: core message can be lost, e.g. while reconnecting)
REREAD_S = 5.0


async def wait_terminal(
    bus: Bus, record: TaskRecord, *, observer: str, poll_s: float = 1.0, on_record: OnRecord | None = None
) -> TaskRecord:
    """Return ``record``'s terminal version. Never hangs: every task has a claim
    timeout and usually a deadline, and this function enforces both."""
    async with bus.follow(record.id) as writes:
        try:
            current, revision = await bus.read_patiently(record.id, root=record.root)
        except CorruptRecord as exc:
            current, revision = await _end_unreadable(bus, exc, record, observer)
        return await _follow(bus, writes, current, revision, observer=observer, poll_s=poll_s, on_record=on_record)


async def create_and_wait(
    bus: Bus,
    record: TaskRecord,
    *,
    observer: str,
    poll_s: float = 1.0,
    on_record: OnRecord | None = None,
) -> TaskRecord:
    """Create ``record`` and return its terminal version, as :func:`wait_terminal`.

    Its writes are followed from before it exists, so none can be missed, and the
    record this call made is where following starts: no read. The acks of its work
    item and "created" event come back while the task is worked; they are awaited
    before returning, however the wait ends, so a caller that exits at once loses
    nothing."""
    record = bus.stamp_new(record)
    async with bus.follow(record.id) as writes:
        announced = await bus.create_and_announce(record)
        try:
            return await _follow(bus, writes, record, 0, observer=observer, poll_s=poll_s, on_record=on_record)
        finally:
            # Shielded: even a cancelled wait leaves an acknowledged item (bounded by
            # the publish patience).
            with anyio.CancelScope(shield=True):
                await announced.wait()


async def _follow(
    bus: Bus,
    writes: Follow,
    current: TaskRecord,
    revision: int,
    *,
    observer: str,
    poll_s: float,
    on_record: OnRecord | None,
) -> TaskRecord:
    """Follow one task from ``current`` (at ``revision``) to its end."""
    task_id = current.id
    seen_at = read_at = time.monotonic()
    if on_record is not None:
        await on_record(current)
    while not is_terminal(current):
        wait = poll_s
        if current.deadline is not None:
            wait = min(wait, max(current.deadline - time.time(), 0.0) + 0.01)
        write = await writes.next(max(wait, 0.001))
        fresh: tuple[TaskRecord, int] | None = None
        if write is not None:
            try:
                # Verified before it is used (PROTOCOL.md 6.23); a forged write gives our
                # last valid copy back, at the forged revision our next write replaces.
                fresh = await bus.admit(task_id, write[0], write[1], write[2])
            except (RemoteProtocolError, Unavailable):
                fresh = None  # not a record we can use (or not verifiable yet): read the bucket instead
                read_at = 0.0
            if fresh is not None and fresh[1] <= revision:
                # A write that does not follow ours (a duplicate, or the real writes
                # after a forged one that claimed a later revision): the bucket decides.
                # (A republished write is taken as the bucket's: whoever may publish on
                # the record subject may as well write the bucket, until broker
                # permissions let only the server publish there. Reading every end
                # back would cost each wait a round trip, x1.4 on a no-op task, and
                # stop no forger. See docs/FAILURE-MODES.md, "Hostile input".)
                fresh = None
                read_at = 0.0
        now = time.monotonic()
        from_bucket = False
        if fresh is None and now - read_at >= REREAD_S:
            fresh = await _read(bus, current, observer)
            read_at = now
            from_bucket = True
        # What the bucket holds wins even at a lower revision than ours: ours may be forged.
        if (
            fresh is not None
            and fresh[0].id == task_id
            and (fresh[1] > revision or (from_bucket and fresh[1] != revision))
        ):
            current, revision = fresh
            seen_at = now
            if on_record is not None:
                await on_record(current)
            continue
        # Time without a broker does not count against anyone's patience.
        seen_at = max(seen_at, bus.reconnects.at)
        current, revision, seen_at = await _judge(bus, current, revision, observer, waited_s=now - seen_at, at=seen_at)
        if on_record is not None and revision and fresh is None:
            await on_record(current)
    return current


async def _read(bus: Bus, current: TaskRecord, observer: str) -> tuple[TaskRecord, int] | None:
    try:
        return await bus.read_any(current.id, root=current.root)
    except CorruptRecord as exc:
        return await _end_unreadable(bus, exc, current, observer)
    except (Unavailable, NotFound, RemoteProtocolError):
        return None


async def _end_unreadable(bus: Bus, exc: CorruptRecord, copy: TaskRecord, observer: str) -> tuple[TaskRecord, int]:
    """The record we follow does not decode: as a party of the task, end it from our
    own copy (PROTOCOL 6.15), so that neither we nor anyone else waits on it forever."""
    log.warning("unreadable task record: ending the task", task=copy.id, error=str(exc))
    return await bus.end_unreadable(exc, copy, actor=observer)


async def _judge(
    bus: Bus, record: TaskRecord, revision: int, observer: str, *, waited_s: float, at: float
) -> tuple[TaskRecord, int, float]:
    """Apply :func:`protocol.judge_waiting`; return the record, its revision and when
    it was last seen changing. A lost race just means someone else acted first."""
    now = time.time()
    if waited_s < record.claim_timeout_s and (record.deadline is None or now < record.deadline):
        return record, revision, at
    active = False
    if waited_s >= record.claim_timeout_s and record.state == "open":
        try:
            info = await bus.queue_info(record.capability)
        except Unavailable:
            return record, revision, at
        active = info is not None and info.active
    event = judge_waiting(record, actor=observer, waited_s=waited_s, queue_active=active, now=now)
    if event is None:
        # Nobody gave up: the task is queued behind busy agents (or held). Look again
        # after another claim timeout.
        return record, revision, time.monotonic()
    log.info("task ended by its party", task=record.id, reason=event.reason, waited_s=round(waited_s, 3))
    try:
        new, new_revision = await bus.write(record, revision, event)
        return new, new_revision, time.monotonic()
    except (Conflict, TransitionError, Unavailable):
        await anyio.lowlevel.checkpoint()
        fresh = await _read(bus, record, observer)
        if fresh is None:
            return record, revision, time.monotonic()
        return fresh[0], fresh[1], time.monotonic()
