"""What `mesh top` shows: a snapshot of the mesh's operations, with the three things
a person must notice early flagged (sensitivity to operations):

- **stuck**: a task that is held (its lease renewed) but whose owner reported no progress for
  ``stuck_after`` seconds (alive, but not getting anywhere);
- **looping**: a chain of handoffs in which one capability recurs ``loop_after``
  times (exact repeats are refused by the protocol; near-repeats are flagged here);
- **overloaded**: a capability with open tasks and no agent with free capacity.

Nothing read is left out silently: records and work items that do not decode are
listed as unreadable, and a part of the broker that could not be read (the directory,
the live tasks, the queues' waiting items) is named in ``not_read``: the view is then
partial, and says so. In a mesh with identities every record is verified as any party
verifies it (PROTOCOL.md 6.23) before it is shown: a write that fails is listed as
forged, with its signer, and never shown as the task's state.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from protocol import AgentCard, Forged, RemoteProtocolError, TaskRecord, is_terminal, serves

from .bus import MeshError
from .client import Mesh

T = TypeVar("T")

__all__ = ["Reading", "Snapshot", "analyse", "read_mesh", "take_snapshot"]


@dataclass
class Snapshot:
    at: float
    agents: list[AgentCard]
    tasks: list[TaskRecord]
    stuck: list[str] = field(default_factory=list)
    looping: list[str] = field(default_factory=list)
    overloaded: list[str] = field(default_factory=list)
    #: keys of task records that do not decode (shown, not silently dropped: the first
    #: party of each task to read it ends it; see PROTOCOL 6.15)
    unreadable: list[str] = field(default_factory=list)
    #: what could not be read from the broker, and why: the snapshot lacks it
    not_read: list[str] = field(default_factory=list)
    #: task record writes that failed verification (a mesh with identities): which,
    #: why, and who signed them; none of them is shown as its task's state
    forged: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        by_owner: dict[str, list[TaskRecord]] = {}
        for t in self.tasks:
            if t.owner:
                by_owner.setdefault(t.owner, []).append(t)
        agents = []
        for card in self.agents:
            held = by_owner.get(card.id, [])
            last = max((t.progress_at or t.created for t in held), default=None)
            agents.append(
                {
                    "id": card.id,
                    "role": card.role,
                    "serves": list(card.serves),
                    "load": card.load,
                    "capacity": card.capacity,
                    "tasks": [t.id for t in held],
                    "draining": card.draining,
                    "last_progress_age_s": None if last is None else round(self.at - last, 3),
                    "reworks": sum(t.reworks for t in held),
                    "completed": card.completed,
                    "failed": card.failed,
                    "refused": card.refused,
                }
            )
        tasks = [
            {
                "id": t.id,
                "capability": t.capability,
                "state": t.state,
                "owner": t.owner,
                "epoch": t.epoch,
                "attempts": t.attempts,
                "reworks": t.reworks,
                "progress": t.progress,
                "parent": t.parent,
                "root": t.root,
                "progress_age_s": None if t.progress_at is None else round(self.at - t.progress_at, 3),
                "age_s": round(self.at - t.created, 3),
            }
            for t in self.tasks
        ]
        return {
            "at": self.at,
            "agents": agents,
            "tasks": tasks,
            "flags": {
                "stuck": self.stuck,
                "looping": self.looping,
                "overloaded": self.overloaded,
                "unreadable": self.unreadable,
                "forged": self.forged,
                "not_read": self.not_read,
            },
        }


async def take_snapshot(mesh: Mesh, *, stuck_after: float = 30.0, loop_after: int = 3) -> Snapshot:
    """Read the directory, the live tasks bucket and the work items waiting in the
    queues (open tasks never claimed exist only there), then flag what needs a
    person's attention. A source the broker does not give is named in ``not_read``."""
    reading = await read_mesh(mesh)
    live = [record for record in reading.tasks if not is_terminal(record)]
    snap = analyse(time.time(), reading.agents, live, stuck_after=stuck_after, loop_after=loop_after)
    snap.unreadable = reading.unreadable
    snap.forged = reading.forged
    snap.not_read = reading.not_read
    return snap


@dataclass
class Reading:
    """What the broker holds now: live agents' cards, the task records of the live
    bucket (finished ones too, until they expire) and of never-claimed tasks (from
    their work items), what did not decode, what failed verification, and what could
    not be read."""

    agents: list[AgentCard]
    tasks: list[TaskRecord]
    unreadable: list[str]
    not_read: list[str]
    forged: list[str] = field(default_factory=list)


async def read_mesh(mesh: Mesh) -> Reading:
    """Read what :func:`take_snapshot` (and ``mesh ui``) analyse; a source the broker
    does not give is named in ``not_read``."""
    not_read: list[str] = []
    mesh.bus.trust.remember_all()  # a view rereads every live record: verify each once
    agents = await _read("the directory of agents", mesh.agents(), not_read) or []
    tasks: dict[str, TaskRecord] = {}
    unreadable: list[str] = []
    forged: list[str] = []
    for key, value, headers, revision in await _read("the live tasks", mesh.bus.task_writes(), not_read) or []:
        try:
            task_id = mesh.names.parse_task_key(key)
            # Verified as a party verifies it (no-op without identities); unlike a party,
            # a reader only looks: it neither reports nor restores (the task's parties do).
            record = await mesh.bus.verified(task_id, revision, value, headers)
        except Forged as exc:
            forged.append(f"{key} revision {revision}: {exc.why} (signed by {exc.signer or 'nobody'})")
            continue
        except (RemoteProtocolError, ValueError):
            unreadable.append(key)
            continue
        except MeshError as exc:  # the archive did not answer for a first write
            not_read.append(f"{key} ({exc})")
            continue
        tasks[record.id] = record
    bad_items: list[int] = []
    waiting = await _read("the queues' waiting items", mesh.bus.waiting_items(unreadable=bad_items), not_read)
    for _, item in waiting or []:
        if item.task not in tasks and item.revision == 0:
            tasks[item.task] = item.record
    unreadable = sorted(unreadable) + [f"work item {seq}" for seq in bad_items]
    return Reading(agents=agents, tasks=list(tasks.values()), unreadable=unreadable, not_read=not_read, forged=forged)


async def _read(what: str, reading: Awaitable[T], not_read: list[str]) -> T | None:
    """What ``reading`` returns; None (and ``what`` noted in ``not_read``) if the
    broker did not give it."""
    try:
        return await reading
    except MeshError as exc:
        not_read.append(f"{what}: {exc}")
        return None


def analyse(
    now: float, agents: list[AgentCard], tasks: list[TaskRecord], *, stuck_after: float, loop_after: int
) -> Snapshot:
    snap = Snapshot(at=now, agents=agents, tasks=sorted(tasks, key=lambda t: t.created))
    by_id = {t.id: t for t in tasks}
    for t in snap.tasks:
        if t.state == "working" and t.progress_at is not None and now - t.progress_at >= stuck_after:
            snap.stuck.append(t.id)
        chain, node = [t.capability], t
        while node.parent is not None and node.parent in by_id:
            node = by_id[node.parent]
            chain.append(node.capability)
        if chain.count(t.capability) >= loop_after:
            snap.looping.append(t.id)
    open_caps = sorted({t.capability for t in tasks if t.state == "open"})
    for cap in open_caps:
        if not any(serves(a.serves, cap) and a.load < a.capacity and not a.draining for a in agents):
            snap.overloaded.append(cap)
    return snap
