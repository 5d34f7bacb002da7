"""Task spans from the events stream: one span per task, built from its events.

Pure bookkeeping, no OpenTelemetry here (mesh/otel.py turns these into the SDK's
spans): feed each :class:`~protocol.TaskEvent` in stream order, get back the spans of
the tasks that just ended. A task's span ids are its W3C ``traceparent``'s (so a
child's parent is its parent task's span, and an agent's model-call spans, which name
the task's traceparent as their parent, land under it); its attributes come from the
final record the terminal event carries, and its span events from the transitions
seen on the way (docs/OPERATING.md lists them).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import msgspec

from protocol import TERMINAL_STATES, TaskEvent, TaskRecord

__all__ = ["SpanBuilder", "SpanEvent", "TaskSpan", "span_ids"]

#: what a transition is called on the span (the protocol's event kind otherwise)
EVENT_NAMES = {
    "claim": "claim",
    "release": "hand-back",
    "approve": "vote",
    "veto": "veto",
    "renew": "progress",
    "add_child": "delegate",
    "reviewing": "review slot",
    "finish": "result",
}

#: the longest note kept on a span event (notes carry vetoes' reasons, errors, progress)
NOTE_CHARS = 512


@dataclass
class SpanEvent:
    name: str
    #: wall-clock seconds
    at: float
    attributes: dict[str, str | int | float | bool] = field(default_factory=dict)


@dataclass
class TaskSpan:
    """What the exporter turns into one OpenTelemetry span."""

    task: str
    name: str
    trace_id: str
    span_id: str
    #: the parent task, and its span id where known (the exporter looks up the rest)
    parent_task: str | None
    parent_span_id: str | None
    root: str
    start: float
    end: float
    attributes: dict[str, str | int | float | bool]
    events: list[SpanEvent]
    #: the failure reason: the span's status is an error
    error: str | None = None
    #: whether the builder saw the task from its creation (else its earlier transitions
    #: are missing: the exporter started, or was restarted, while the task ran)
    whole: bool = True


def span_ids(traceparent: str | None) -> tuple[str, str] | None:
    """(trace id, span id) of a W3C traceparent, or None if it is not one."""
    if not traceparent:
        return None
    parts = traceparent.split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        if int(parts[1], 16) == 0 or int(parts[2], 16) == 0:
            return None
    except ValueError:
        return None
    return parts[1], parts[2]


@dataclass
class _Open:
    """A task seen but not ended yet."""

    #: when its ``created`` event was seen (None: not seen)
    start: float | None = None
    span_id: str | None = None
    state: str = "open"
    events: list[SpanEvent] = field(default_factory=list)


class SpanBuilder:
    """Feed events in stream order; get each task's span when it ends.

    Memory is bounded: at most ``max_open`` unfinished tasks are followed (the oldest
    is forgotten first: its span is still made from its final record, without the
    transitions before) and ``max_known`` span ids of tasks are kept to find parents."""

    def __init__(self, *, max_open: int = 100_000, max_known: int = 200_000) -> None:
        self.max_open, self.max_known = max_open, max_known
        self._open: OrderedDict[str, _Open] = OrderedDict()
        #: task id -> its span id, for its children
        self._known: OrderedDict[str, str] = OrderedDict()
        #: tasks whose span was made (a repeated terminal event makes none)
        self._ended: OrderedDict[str, None] = OrderedDict()
        #: tasks forgotten before they ended (``max_open``)
        self.forgotten = 0

    def span_id_of(self, task_id: str) -> str | None:
        return self._known.get(task_id)

    def feed(self, event: TaskEvent) -> list[TaskSpan]:
        if event.task in self._ended:
            return []
        if event.record is not None:
            self._learn(event.record)
        task = self._task(event.task)
        if event.kind == "created":
            task.start = event.at if task.start is None else task.start
            record = event.record
            if record is not None and record.parent is not None and record.capability.startswith("agent."):
                # A question to the requester (a clarification task): shown on the asker.
                self._task(record.parent).events.append(
                    SpanEvent("clarification", event.at, {"mesh.actor": event.actor, "mesh.question.task": record.id})
                )
        else:
            self._transition(task, event)
        task.state = event.state
        if event.state not in TERMINAL_STATES:
            return []
        self._open.pop(event.task, None)
        self._remember(self._ended, event.task, None, self.max_known)
        if event.record is None:
            return []  # a terminal event always carries the record (PROTOCOL 6.17); a peer's may not
        span = self._span(event.record, task, end=event.at)
        return [] if span is None else [span]

    def _task(self, task_id: str) -> _Open:
        task = self._open.get(task_id)
        if task is None:
            task = self._open[task_id] = _Open()
            if len(self._open) > self.max_open:
                self._open.popitem(last=False)
                self.forgotten += 1
        return task

    def _learn(self, record: TaskRecord) -> None:
        ids = span_ids(record.trace)
        if ids is not None:
            self._remember(self._known, record.id, ids[1], self.max_known)

    @staticmethod
    def _remember(table: OrderedDict[str, str] | OrderedDict[str, None], key: str, value: object, most: int) -> None:
        table[key] = value  # type: ignore[assignment]
        if len(table) > most:
            table.popitem(last=False)

    def _transition(self, task: _Open, event: TaskEvent) -> None:
        attributes: dict[str, str | int | float | bool] = {
            "mesh.actor": event.actor,
            "mesh.epoch": event.epoch,
            "mesh.state": event.state,
        }
        if event.note:
            attributes["mesh.note"] = event.note[:NOTE_CHARS]
        if event.reason:
            attributes["mesh.reason"] = event.reason
        if event.kind == "claim" and task.state == "working":
            # A claim of a held task is a takeover: the owner's lease lapsed.
            task.events.append(SpanEvent("lapse", event.at, dict(attributes)))
        if event.kind == "approve":
            attributes["mesh.verdict"] = "approve"
        elif event.kind == "veto":
            attributes["mesh.verdict"] = "veto"
        task.events.append(SpanEvent(EVENT_NAMES.get(event.kind, event.kind), event.at, attributes))
        if event.kind == "veto" and event.state in ("open", "working"):
            task.events.append(SpanEvent("re-open", event.at, {"mesh.state": event.state, "mesh.why": "rework"}))
        elif event.kind == "release" and event.state == "open":
            task.events.append(SpanEvent("re-open", event.at, {"mesh.state": "open", "mesh.why": "hand-back"}))

    def _span(self, record: TaskRecord, task: _Open, *, end: float) -> TaskSpan | None:
        ids = span_ids(record.trace)
        if ids is None:
            return None  # no trace context: nothing to place the span in
        parent_span = self._known.get(record.parent) if record.parent else None
        attributes: dict[str, str | int | float | bool] = {
            "mesh.task.id": record.id,
            "mesh.task.capability": record.capability,
            "mesh.task.root": record.root,
            "mesh.task.requester": record.requester,
            "mesh.task.state": record.state,
            "mesh.task.epoch": record.epoch,
            "mesh.task.attempts": record.attempts,
            "mesh.task.lapses": record.lapses,
            "mesh.task.reworks": record.reworks,
            "mesh.task.hops_left": record.hops_left,
            "mesh.task.children": len(record.children),
            "mesh.task.tokens": record.spent.tokens,
            "mesh.task.cost": record.spent.cost,
            "mesh.task.result_bytes": 0 if record.result is None else len(msgspec.json.encode(record.result)),
        }
        for key, value in (
            ("mesh.task.parent", record.parent),
            ("mesh.task.owner", record.owner),
            ("mesh.task.author", record.author),
            ("mesh.task.reason", record.reason),
            ("mesh.task.error", record.error[:NOTE_CHARS] if record.error else None),
        ):
            if value:
                attributes[key] = value
        if record.votes:
            attributes["mesh.task.approvals"] = sum(v.verdict == "approve" for v in record.votes)
        return TaskSpan(
            task=record.id,
            name=f"task {record.capability}",
            trace_id=ids[0],
            span_id=ids[1],
            parent_task=record.parent,
            parent_span_id=parent_span,
            root=record.root,
            start=min(record.created, task.start if task.start is not None else record.created),
            end=max(end, record.created),
            attributes=attributes,
            events=task.events,
            error=record.reason if record.state == "failed" else None,
            whole=task.start is not None,
        )
