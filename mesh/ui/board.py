"""The live view's picture of the mesh, kept in the ``mesh ui`` process: every card of
the directory and every task record it has seen, each with the version of the view at
which its row last changed, and the flags of `mesh top`'s analysis
(:func:`mesh.top.analyse`: one analysis, two views).

A page asks for a slice (a table, a filter, a page) and is sent only the rows that
changed since it was last sent that slice (:class:`Viewer`): with 1,000 agents and
10,000 tasks a browser holds one page of each, and an event costs a row, not a redraw.
No I/O here: the feed (:mod:`mesh.ui.feed`) puts records and cards in, the server
(:mod:`mesh.ui.server`) takes pages out.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from protocol import AgentCard, TaskRecord, is_terminal

from ..top import Snapshot, analyse

__all__ = ["Board", "Query", "Viewer", "PAGE_SIZE", "FINISHED_KEPT"]

#: rows a page shows
PAGE_SIZE = 50
#: finished tasks the view keeps (the newest), after their records leave the live bucket
FINISHED_KEPT = 2000
#: finished tasks beyond FINISHED_KEPT held before the oldest are forgotten, all at once:
#: forgetting costs a pass over the board, once per this many ends, not once per end
FINISHED_SLACK = 500
#: forged writes the page lists (the newest; every party reports each on its error subject)
FORGED_SHOWN = 20
#: the task filters a page may ask for
TASK_FILTERS = ("active", "flagged", "finished", "all")


@dataclass
class _Row:
    version: int
    json: dict[str, Any]


@dataclass
class _Task:
    record: TaskRecord
    revision: int
    row: _Row


@dataclass
class _Agent:
    card: AgentCard
    #: when the view last saw the card written (the view's monotonic clock)
    seen: float
    row: _Row


@dataclass(frozen=True)
class Query:
    """What one page shows of a table: a filter, a text to find, a page number."""

    table: str
    filter: str = "active"
    text: str = ""
    page: int = 0


@dataclass
class Flags:
    stuck: frozenset[str] = frozenset()
    looping: frozenset[str] = frozenset()
    overloaded: frozenset[str] = frozenset()

    def of(self, record: TaskRecord) -> list[str]:
        out = [name for name in ("stuck", "looping") if record.id in getattr(self, name)]
        if record.state == "open" and record.capability in self.overloaded:
            out.append("overloaded")
        return out


class Board:
    """Cards and records as last seen, with row versions (see the module docstring)."""

    def __init__(self, *, stuck_after: float = 30.0, loop_after: int = 3) -> None:
        self.version = 0
        self.agents: dict[str, _Agent] = {}
        self.tasks: dict[str, _Task] = {}
        self.flags = Flags()
        self.stuck_after, self.loop_after = stuck_after, loop_after
        #: roots of the task trees that changed since the feed last took them
        self.touched_roots: set[str] = set()
        #: what the view could not read or decode (shown on the page, never dropped silently)
        self.not_read: list[str] = []
        self.unreadable: list[str] = []
        #: task record writes that failed verification, newest last (at most FORGED_SHOWN)
        self.forged: list[str] = []
        #: (created, id) of the tasks held, oldest first, all of them and by whether they
        #: ended: a page is a slice, not a sort of the board on every update
        self._all: list[tuple[float, str]] = []
        self._active: list[tuple[float, str]] = []
        self._finished: list[tuple[float, str]] = []
        self._states: dict[str, int] = {}

    # --- in -------------------------------------------------------------------------------

    def _bump(self) -> int:
        self.version += 1
        return self.version

    def put_record(self, record: TaskRecord, revision: int, *, fresh: bool = False) -> bool:
        """A record as written at ``revision`` (0: not yet in the bucket, read from its
        work item or its ``created`` event). An older write than the one held is ignored.
        ``fresh``: read again after an outage (no revision known), taken unless the one
        held was written later."""
        held = self.tasks.get(record.id)
        if held is not None:
            if fresh:
                if record.updated < held.record.updated:
                    return False
                revision = held.revision
            elif revision < held.revision or (revision == 0 and held.revision == 0):
                return False
        if held is not None and held.record == record:
            held.revision = revision
            return False
        row = _Row(self._bump(), task_row(record, self.flags.of(record)))
        self.tasks[record.id] = _Task(record, revision, row)
        key = (record.created, record.id)
        if held is None:
            bisect.insort(self._all, key)
        else:
            self._states[held.record.state] -= 1
            if is_terminal(held.record) != is_terminal(record):
                _remove(self._finished if is_terminal(held.record) else self._active, key)
        if held is None or is_terminal(held.record) != is_terminal(record):
            bisect.insort(self._finished if is_terminal(record) else self._active, key)
        self._states[record.state] = self._states.get(record.state, 0) + 1
        self.touched_roots.add(record.root)
        if is_terminal(record) and (held is None or not is_terminal(held.record)):
            self._forget_old_finished()
        return True

    def _forget_old_finished(self) -> None:
        if len(self._finished) <= FINISHED_KEPT + FINISHED_SLACK:
            return
        finished = [t for t in self.tasks.values() if is_terminal(t.record)]
        if len(finished) > FINISHED_KEPT:
            finished.sort(key=lambda t: t.record.updated)
            for t in finished[: len(finished) - FINISHED_KEPT]:
                del self.tasks[t.record.id]
                self._states[t.record.state] -= 1
            self._all = [key for key in self._all if key[1] in self.tasks]
            self._finished = [key for key in self._finished if key[1] in self.tasks]
            self._bump()

    def put_card(self, card: AgentCard, now: float) -> None:
        held = self.agents.get(card.id)
        if held is not None and held.card == card:
            held.seen = now
            return
        self.agents[card.id] = _Agent(card, now, _Row(self._bump(), agent_row(card)))

    def put_forged(self, lines: list[str]) -> None:
        """Writes that failed verification (never shown as their tasks' state)."""
        fresh = [line for line in lines if line not in self.forged]
        if fresh:
            self.forged = (self.forged + fresh)[-FORGED_SHOWN:]
            self._bump()

    def drop_card(self, agent_id: str) -> None:
        if self.agents.pop(agent_id, None) is not None:
            self._bump()

    def expire_cards(self, now: float) -> None:
        """Drop cards not written for three heartbeats (the card's own TTL), in case
        the bucket's expiry marker was missed (a reconnection)."""
        for agent_id, held in list(self.agents.items()):
            if now - held.seen > 3 * held.card.heartbeat_s + 1.0:
                self.drop_card(agent_id)

    def snapshot(self, now: float) -> Snapshot:
        """`mesh top`'s view of what the board holds: its live tasks analysed, with what
        could not be read, did not decode or failed verification."""
        live = [t.record for t in self.tasks.values() if not is_terminal(t.record)]
        agents = sorted((a.card for a in self.agents.values()), key=lambda card: card.id)
        snap = analyse(now, agents, live, stuck_after=self.stuck_after, loop_after=self.loop_after)
        snap.unreadable, snap.not_read, snap.forged = list(self.unreadable), list(self.not_read), list(self.forged)
        return snap

    def reflag(self, now: float) -> None:
        """Run `mesh top`'s analysis over the live tasks; re-version the rows whose
        flags changed."""
        live = [t.record for t in self.tasks.values() if not is_terminal(t.record)]
        snap = analyse(
            now,
            [a.card for a in self.agents.values()],
            live,
            stuck_after=self.stuck_after,
            loop_after=self.loop_after,
        )
        flags = Flags(frozenset(snap.stuck), frozenset(snap.looping), frozenset(snap.overloaded))
        if flags == self.flags:
            return
        old, self.flags = self.flags, flags
        for held in self.tasks.values():
            if old.of(held.record) != flags.of(held.record):
                held.row = _Row(self._bump(), task_row(held.record, flags.of(held.record)))

    # --- out ------------------------------------------------------------------------------

    def page(self, query: Query) -> tuple[list[tuple[str, _Row]], int]:
        """The rows of one page of ``query``, in order, and how many rows match in all."""
        if query.table == "agents":
            agents = sorted(
                (a for a in self.agents.values() if _matches(query.text, a.card.id, a.card.role, *a.card.serves)),
                key=lambda a: a.card.id,
            )
            rows = [(a.card.id, a.row) for a in agents]
        else:
            keys = {"active": self._active, "finished": self._finished}.get(query.filter, self._all)
            if query.filter == "flagged":
                keys = [k for k in self._active if self.flags.of(self.tasks[k[1]].record)]
            if query.text:
                keys = [k for k in keys if _matches(query.text, *_task_fields(self.tasks[k[1]].record))]
            end = max(len(keys) - max(query.page, 0) * PAGE_SIZE, 0)
            page = [(task_id, self.tasks[task_id].row) for _, task_id in reversed(keys[max(end - PAGE_SIZE, 0) : end])]
            return page, len(keys)
        start = max(query.page, 0) * PAGE_SIZE
        return rows[start : start + PAGE_SIZE], len(rows)

    def summary(self) -> dict[str, Any]:
        return {
            "agents": len(self.agents),
            "tasks": {state: n for state, n in self._states.items() if n},
            "stuck": len(self.flags.stuck),
            "looping": len(self.flags.looping),
            "overloaded": sorted(self.flags.overloaded),
            "not_read": self.not_read,
            "unreadable": self.unreadable,
            "forged": self.forged,
        }

    def record(self, task_id: str) -> TaskRecord | None:
        held = self.tasks.get(task_id)
        return None if held is None else held.record


@dataclass
class Viewer:
    """One open page: what it was last sent of each of its tables, so that the next
    update carries only what changed."""

    queries: dict[str, Query]
    sent: dict[str, dict[str, int]] = field(default_factory=dict)
    order: dict[str, list[str]] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    at_version: int = -1

    def update(self, board: Board) -> dict[str, Any] | None:
        """What changed for this page since its last update (None: nothing)."""
        if board.version == self.at_version:
            return None
        self.at_version = board.version
        out: dict[str, Any] = {}
        for table, query in self.queries.items():
            rows, total = board.page(query)
            sent = self.sent.setdefault(table, {})
            changed = [row.json for key, row in rows if sent.get(key) != row.version]
            order = [key for key, _ in rows]
            if not changed and order == self.order.get(table) and total == self.totals.get(table):
                continue
            self.sent[table] = {key: row.version for key, row in rows}
            self.order[table], self.totals[table] = order, total
            out[table] = {"rows": changed, "order": order, "total": total, "page": query.page}
        summary = board.summary()
        if summary != self.summary:
            self.summary = out["summary"] = summary
        return out or None


def _matches(text: str, *fields: str) -> bool:
    return not text or any(text.lower() in f.lower() for f in fields)


def _task_fields(record: TaskRecord) -> tuple[str, str, str]:
    return record.id, record.capability, record.owner or ""


def _remove(keys: list[tuple[float, str]], key: tuple[float, str]) -> None:
    i = bisect.bisect_left(keys, key)
    if i < len(keys) and keys[i] == key:
        del keys[i]


def task_row(record: TaskRecord, flags: Iterable[str]) -> dict[str, Any]:
    """A task as a row of the page: what `mesh top` shows of it, and budget spent."""
    spent = record.spent
    return {
        "id": record.id,
        "capability": record.capability,
        "state": record.state,
        "reason": record.reason,
        "owner": record.owner,
        "epoch": record.epoch,
        "attempts": record.attempts,
        "lapses": record.lapses,
        "reworks": record.reworks,
        "hops_left": record.hops_left,
        "spent": {"tokens": spent.tokens, "cost": spent.cost} if (spent.tokens or spent.cost) else None,
        "budget": None if record.budget is None else {"tokens": record.budget.tokens, "cost": record.budget.cost},
        "progress": record.progress[:200],
        "created": record.created,
        "updated": record.updated,
        "root": record.root,
        "parent": record.parent,
        "flags": list(flags),
    }


def agent_row(card: AgentCard) -> dict[str, Any]:
    return {
        "id": card.id,
        "role": card.role or card.kind,
        "serves": list(card.serves),
        "load": card.load,
        "capacity": card.capacity,
        "draining": card.draining,
        "version": card.version,
        "host": card.host,
        "started": card.started,
        "completed": card.completed,
        "failed": card.failed,
    }
