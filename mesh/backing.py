"""Which events a verified write backs: for a process that shows or passes on the events
stream as it comes (`mesh watch`, the OTel exporter, the MCP gateway's progress).

Events are not signed: anyone who may write tasks may publish one, with any state,
actor and record (attack 22 in docs/SECURITY.md). An event repeats the state, epoch and
time of the write it announces, so a reader holds each one to the task's verified writes
(PROTOCOL.md 6.17). Looking every event up in the archive would cost a walk of its
task's writes per event; instead a :class:`Backing` follows every write as the broker
republishes it and verifies it in order (one signature check each: the task's chain is
kept), so the write behind an event has usually been verified by the time the event
arrives. An event its follower has not seen a write for (one from before it started,
or a write it missed) is looked up in the archive once per task before it is called
unbacked.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import structlog

from protocol import Forged, RemoteProtocolError, TaskEvent, decode_record

from .bus import MeshError

if TYPE_CHECKING:
    from .client import Mesh

__all__ = ["Backing", "Shown", "BACKING_PATIENCE_S", "BACKED_TASKS"]

log = structlog.get_logger("mesh.backing")

#: how long after its write's time an event waits for the follower to verify that
#: write before the archive is asked (the broker republishes a write before its writer
#: publishes the event: this covers a busy follower and clocks apart by up to 2 s)
BACKING_PATIENCE_S = 3.0
#: tasks whose verified writes are kept (a few dozen bytes a write)
BACKED_TASKS = 4096

#: what an event repeats of the write it announces: (state, epoch, updated)
Shown = tuple[str, int, float]


class Backing:
    """The verified writes of the tasks a follower of events sees, as the broker
    republishes them; :meth:`backed` says whether one of them shows an event. In a mesh
    without identities nothing is verified and every event counts as backed."""

    def __init__(self, mesh: Mesh, *, patience_s: float = BACKING_PATIENCE_S, capacity: int = BACKED_TASKS) -> None:
        self.mesh = mesh
        self.patience_s = patience_s
        self.capacity = capacity
        self._shown: collections.OrderedDict[str, set[Shown]] = collections.OrderedDict()
        self._verified = anyio.Event()
        #: events looked up in the archive (the follower had not verified their write)
        self.looked_up = 0

    @classmethod
    @contextlib.asynccontextmanager
    async def following(cls, mesh: Mesh, *, patience_s: float = BACKING_PATIENCE_S) -> AsyncIterator[Backing]:
        """A :class:`Backing` following the mesh's writes while the block runs: enter
        it before reading the events it is to check."""
        checker = cls(mesh, patience_s=patience_s)
        async with anyio.create_task_group() as tg:
            await tg.start(checker.follow)
            try:
                yield checker
            finally:
                tg.cancel_scope.cancel()

    @property
    def signed(self) -> bool:
        return self.mesh.bus.trust.signed

    async def follow(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Verify every write the broker republishes, until cancelled; started once
        subscribed (so an event read after that finds its write followed)."""
        if not self.signed:
            task_status.started()
            return
        async with self.mesh.bus.follow_all() as writes:
            task_status.started()
            while True:
                write = await writes.next(timeout=60.0)
                if write is None:
                    continue
                revision, data, headers = write
                try:
                    # The id is the record's word until verified: its signature covers it.
                    task_id = decode_record(data).id
                    record = await self.mesh.bus.verified(task_id, revision, data, headers)
                except (Forged, RemoteProtocolError, MeshError) as exc:
                    # shows no event; its parties report a forged or unreadable write
                    log.debug("a republished write backs no event", revision=revision, error=str(exc))
                    continue
                self._note(task_id, [(record.state, record.epoch, record.updated)])

    def _note(self, task_id: str, shown: Iterable[Shown]) -> None:
        writes = self._shown.setdefault(task_id, set())
        writes.update(shown)
        self._shown.move_to_end(task_id)
        while len(self._shown) > self.capacity:
            self._shown.popitem(last=False)
        self._verified.set()
        self._verified = anyio.Event()

    def _shows(self, event: TaskEvent) -> bool:
        return (event.state, event.epoch, event.at) in self._shown.get(event.task, ())

    async def backed(self, event: TaskEvent) -> bool:
        """Whether a verified write of ``event``'s task shows it (its state, epoch and
        time). ``created`` events count as backed: an open task's record is its work
        item until an agent claims it. Waits for a recent write to be verified (up to
        :data:`BACKING_PATIENCE_S` after its time), then asks the archive."""
        if not self.signed or event.kind == "created" or self._shows(event):
            return True
        wait = min(self.patience_s, event.at + self.patience_s - time.time())
        if wait > 0:
            with anyio.move_on_after(wait):
                while not self._shows(event):
                    await self._verified.wait()
            if self._shows(event):
                return True
        self.looked_up += 1
        self._note(event.task, await self.mesh.shown_by_verified_writes(event.task))
        return self._shows(event)
