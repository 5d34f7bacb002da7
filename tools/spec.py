"""Generate the protocol's published artifacts from the code, and check them for drift.

    python -m tools.spec            # (re)write every artifact
    python -m tools.spec --check    # exit 1, listing every artifact that drifted

The artifacts are what an implementer in another language works from:

- ``protocol/schema/*.json``: JSON Schemas of every wire message (``msgspec.json.schema``,
  its descriptions normalized with ``inspect.cleandoc``, plus the name patterns the
  decoders enforce);
- ``protocol/vectors/*.json``: conformance vectors: transitions (record + event + time
  -> next record, or the refusal), the other rules (routing, work items, deliveries,
  waiting, delegation...), names, and decoding;
- the generated sections of ``docs/PROTOCOL.md``, between ``<!-- BEGIN GENERATED: x -->``
  and ``<!-- END GENERATED: x -->``: the state diagram and transition table (from
  :data:`protocol.machine.TRANSITIONS`), refusals, message examples, names, constants.

The generator owns ``protocol/schema/`` and ``protocol/vectors/``: a JSON file there that
it no longer makes is reported by ``--check`` and removed by a write.

It lives outside ``protocol/`` because it reads and writes files, parses arguments and
prints, and ``protocol/`` promises no I/O; it is a build tool of the repository, not part
of any agent, and imports only the standard library, msgspec and ``protocol``.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import re
import sys
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from mesh.settings import Settings
from protocol.codec import (
    MAX_MESSAGE_BYTES,
    decode_card,
    decode_control,
    decode_control_reply,
    decode_error,
    decode_event,
    decode_record,
    decode_transition,
    decode_work_item,
    encode,
)
from protocol.core import AgentCore
from protocol.errors import Fenced, LocalProtocolError, RemoteProtocolError, TransitionError
from protocol.events import (
    EVENT_KINDS,
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
from protocol.limits import (
    HEADER_ROOM_BYTES,
    LIMITS,
    MAX_CARD_BYTES,
    MAX_CHECKPOINT_BYTES,
    MAX_CHILDREN,
    MAX_CLAIM_TIMEOUT_S,
    MAX_CRITERIA_CHARS,
    MAX_DATA_BYTES,
    MAX_DEADLINE_S,
    MAX_ERROR_CHARS,
    MAX_ESCALATION_TIMEOUT_S,
    MAX_FEEDBACK,
    MAX_HEARTBEAT_S,
    MAX_HOPS,
    MAX_INSTRUCTION_CHARS,
    MAX_LAPSES,
    MAX_LINEAGE,
    MAX_PROGRESS_CHARS,
    MAX_QUORUM,
    MAX_REASON_CHARS,
    MAX_REASONS,
    MAX_RECORD_BYTES,
    MAX_RESULT_BYTES,
    MAX_REWORKS,
    MAX_TAG_CHARS,
    MAX_TAGS,
    MAX_VOTES,
    LimitExceeded,
)
from protocol.machine import TRANSITIONS, apply
from protocol.names import (
    _AGENT_ID_RE,
    _CAPABILITY_RE,
    _KIND_RE,
    _PREFIX_RE,
    _TASK_ID_RE,
    MAJOR_VERSION,
    MAX_PRIORITY,
    PRIORITY_GROUP,
    VERSION_HEADER,
    Names,
    clarification_capability,
    validate_agent_id,
    validate_capability,
    validate_task_id,
)
from protocol.rules import (
    DEFAULT_CLAIM_TIMEOUT_S,
    DEFAULT_HOPS,
    DEFAULT_LEASE_S,
    Drop,
    HandBack,
    Take,
    ask,
    best_match,
    child_traceparent,
    delegate,
    end_unreadable,
    fingerprint,
    judge_waiting,
    new_task,
    on_delivery,
    pull_priority,
    specificity,
    split_budget,
    task_event,
    trace_id,
    traceparent,
    trail_gap,
    work_item_id,
    work_items,
)
from protocol.types import (
    PROTOCOL_VERSION,
    REASONS,
    TERMINAL_STATES,
    AgentCard,
    Budget,
    ControlReply,
    ControlRequest,
    ErrorReport,
    NotUnderstood,
    ReviewPolicy,
    ReviewSlot,
    TaskEvent,
    TaskRecord,
    Usage,
    Vote,
    WorkItem,
)

__all__ = [
    "SCHEMAS",
    "STATES",
    "Artifact",
    "artifacts",
    "json_schema",
    "schema",
    "transition_vectors",
    "limit_vectors",
    "doc_sections",
    "render_doc",
    "check",
    "write",
    "main",
]

#: Every state, in the order the docs list them.
STATES: tuple[str, ...] = ("open", "working", "review", "done", "failed", "cancelled")

#: Published schemas: file stem -> wire type.
SCHEMAS: dict[str, Any] = {
    "task_record": TaskRecord,
    "work_item": WorkItem,
    "agent_card": AgentCard,
    "task_event": TaskEvent,
    "transition": Event,
    "error_report": ErrorReport,
    "not_understood": NotUnderstood,
    "control_request": ControlRequest,
    "control_reply": ControlReply,
}

DOC = Path("docs") / "PROTOCOL.md"
SCHEMA_DIR = Path("protocol") / "schema"
VECTOR_DIR = Path("protocol") / "vectors"
_SCHEMA_BASE = f"https://agent-mesh.dev/protocol/v{MAJOR_VERSION}/schema/"

#: A fixed wall clock for every example: 2023-11-14T22:13:20Z.
T0 = 1_700_000_000.0

#: Work stream sequences of the examples' work items (a claim or a review slot names the
#: item it holds: its ticket). T1, T2 and T3 are opened with items 41, 42 and 43; T2's
#: first review round has items 51 and 52; its rework item is 61.
ITEM_T1, ITEM_T2, ITEM_T3 = 41, 42, 43
REVIEW_ITEM_1, REVIEW_ITEM_2 = 51, 52
REWORK_ITEM = 61

# --- schemas ----------------------------------------------------------------------------------

#: Name fields the decoders validate beyond their type: (struct, field) -> regex.
_PATTERNS: dict[tuple[str, str], re.Pattern[str]] = {
    ("TaskRecord", "id"): _TASK_ID_RE,
    ("TaskRecord", "root"): _TASK_ID_RE,
    ("TaskRecord", "parent"): _TASK_ID_RE,
    ("TaskRecord", "children"): _TASK_ID_RE,
    ("TaskRecord", "capability"): _CAPABILITY_RE,
    ("TaskRecord", "requester"): _AGENT_ID_RE,
    ("ReviewPolicy", "capability"): _CAPABILITY_RE,
    ("ReviewPolicy", "escalate_to"): _CAPABILITY_RE,
    ("WorkItem", "task"): _TASK_ID_RE,
    ("WorkItem", "capability"): _CAPABILITY_RE,
    ("AgentCard", "id"): _AGENT_ID_RE,
    ("AgentCard", "serves"): _CAPABILITY_RE,
    ("AgentCard", "delegates"): _CAPABILITY_RE,
}


def _add_pattern(prop: dict[str, Any], pattern: str) -> None:
    if prop.get("type") == "string":
        prop["pattern"] = pattern
    elif prop.get("type") == "array":
        _add_pattern(prop["items"], pattern)
    for branch in prop.get("anyOf", ()):
        _add_pattern(branch, pattern)


#: Keywords whose value is one schema, and those whose value is a list or a name -> schema map.
_SUBSCHEMA = frozenset({"items", "additionalProperties", "contains", "propertyNames", "not", "if", "then", "else"})
_SUBSCHEMA_LISTS = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
_SUBSCHEMA_MAPS = frozenset({"$defs", "properties", "patternProperties", "dependentSchemas"})


def _clean_descriptions(node: dict[str, Any]) -> dict[str, Any]:
    """``node`` (a schema) with every ``description``, its own and its subschemas',
    normalized by :func:`inspect.cleandoc`. Data (``default``, ``enum``, ...) is left as it is."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "description" and isinstance(value, str):
            value = inspect.cleandoc(value)
        elif key in _SUBSCHEMA and isinstance(value, dict):
            value = _clean_descriptions(value)
        elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
            value = [_clean_descriptions(v) if isinstance(v, dict) else v for v in value]
        elif key in _SUBSCHEMA_MAPS and isinstance(value, dict):
            value = {k: _clean_descriptions(v) if isinstance(v, dict) else v for k, v in value.items()}
        out[key] = value
    return out


def json_schema(tp: Any) -> dict[str, Any]:
    """``msgspec.json.schema(tp)`` made independent of how it renders docstrings, plus the
    name patterns the decoders enforce.

    msgspec puts a type's docstring into its ``description``, and how much of the source's
    indentation survives depends on msgspec (0.22 keeps it, 0.23 strips it) and on Python
    (3.13 strips it when compiling). Every description is normalized with
    :func:`inspect.cleandoc`, so the published artifacts depend on our docstrings only."""
    body = _clean_descriptions(msgspec.json.schema(tp))
    for (struct, field), regex in _PATTERNS.items():
        definition = body.get("$defs", {}).get(struct)
        if definition is not None and field in definition.get("properties", {}):
            _add_pattern(definition["properties"][field], regex.pattern)
    return body


def schema(stem: str) -> dict[str, Any]:
    """The JSON Schema of one published message type."""
    tp = SCHEMAS[stem]
    body = json_schema(tp)
    title = "Event" if tp is Event else tp.__name__
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{_SCHEMA_BASE}{stem}.json",
        "title": title,
        **body,
    }


# --- a small world of records, for vectors and examples -------------------------------------


def _replace(record: TaskRecord, **changes: Any) -> TaskRecord:
    return msgspec.structs.replace(record, **changes)


@dataclass(frozen=True)
class _World:
    """Canonical records in every state, reached by real transitions."""

    open: TaskRecord
    working: TaskRecord
    #: claimed by a party that holds no work item (a person answering from an inbox)
    held_without_item: TaskRecord
    released: TaskRecord
    done: TaskRecord
    failed: TaskRecord
    cancelled: TaskRecord
    rv_open: TaskRecord
    rv_working: TaskRecord
    review: TaskRecord
    review_one_vote: TaskRecord
    review_held: TaskRecord
    review_full: TaskRecord
    reworked: TaskRecord
    reclaimed: TaskRecord
    review_last_round: TaskRecord
    review_escalating: TaskRecord
    taken_over: TaskRecord
    twice_lapsed: TaskRecord

    @property
    def deadline(self) -> float:
        assert self.open.deadline is not None
        return self.open.deadline


def _world() -> _World:
    open_ = new_task(
        task_id="T1",
        capability="summarize.medical",
        instruction="Summarize the discharge letter for the family doctor.",
        requester="client-1",
        now=T0,
        data={"letter": "Patient admitted with ..."},
        criteria="Mentions every medication change.",
        tags=("cardiology",),
        deadline=T0 + 3600,
        budget=Budget(tokens=20_000, cost=2.0),
    )
    working = apply(open_, Claim(actor="agent-a", ticket=ITEM_T1), T0 + 1)
    policy = ReviewPolicy(quorum=2, capability="review.medical", max_reworks=1)
    rv_open = _replace(open_, id="T2", root="T2", review=policy)
    rv_working = apply(rv_open, Claim(actor="agent-a", ticket=ITEM_T2), T0 + 1)
    review = apply(rv_working, Finish(actor="agent-a", epoch=1, result={"summary": "Draft one."}), T0 + 60)
    review_one_vote = apply(review, Approve(actor="critic-1", epoch=1), T0 + 70)
    review_held = apply(review, Reviewing(actor="critic-1", epoch=1, ticket=REVIEW_ITEM_1), T0 + 62)
    review_full = apply(review_held, Reviewing(actor="critic-2", epoch=1, ticket=REVIEW_ITEM_2), T0 + 63)
    reworked = apply(review_one_vote, Veto(actor="critic-2", epoch=1, reasons=("Misses the dose change.",)), T0 + 80)
    reclaimed = apply(reworked, Claim(actor="agent-b", ticket=REWORK_ITEM), T0 + 90)
    review_last_round = apply(reclaimed, Finish(actor="agent-b", epoch=2, result={"summary": "Draft two."}), T0 + 150)
    esc_policy = ReviewPolicy(quorum=1, capability="review.medical", max_reworks=0, escalate_to="human.review")
    esc_working = apply(
        _replace(open_, id="T3", root="T3", review=esc_policy), Claim(actor="agent-a", ticket=ITEM_T3), T0 + 1
    )
    review_escalating = apply(esc_working, Finish(actor="agent-a", epoch=1, result="Draft."), T0 + 60)
    # agent-a's lease on item 41 lapses: the broker lends the item to agent-b, then to agent-c.
    taken_over = apply(working, Claim(actor="agent-b", ticket=ITEM_T1), T0 + 31)
    twice = apply(taken_over, Claim(actor="agent-c", ticket=ITEM_T1), T0 + 61)
    return _World(
        open=open_,
        working=working,
        held_without_item=apply(open_, Claim(actor="alice"), T0 + 1),
        released=apply(working, Release(actor="agent-a", epoch=1, note="draining"), T0 + 20),
        done=apply(working, Finish(actor="agent-a", epoch=1, result={"summary": "Done."}), T0 + 60),
        failed=apply(working, Fail(actor="agent-a", epoch=1, reason="error", message="model unavailable"), T0 + 60),
        cancelled=apply(open_, Cancel(actor="client-1", note="no longer needed"), T0 + 5),
        rv_open=rv_open,
        rv_working=rv_working,
        review=review,
        review_one_vote=review_one_vote,
        review_held=review_held,
        review_full=review_full,
        reworked=reworked,
        reclaimed=reclaimed,
        review_last_round=review_last_round,
        review_escalating=review_escalating,
        taken_over=taken_over,
        twice_lapsed=twice,
    )


def _in_state(world: _World, state: str) -> TaskRecord:
    return {
        "open": world.open,
        "working": world.working,
        "review": world.review,
        "done": world.done,
        "failed": world.failed,
        "cancelled": world.cancelled,
    }[state]


def _sample_event(kind: str, record: TaskRecord, *, actor: str | None = None) -> Event:
    """A well-formed event of ``kind``, made by whoever would normally make it."""
    owner = actor or record.owner or "agent-a"
    epoch = record.epoch
    events: dict[str, Event] = {
        "claim": Claim(actor=actor or "agent-b", ticket=ITEM_T1),
        "renew": Renew(actor=owner, epoch=epoch, progress="half way"),
        "add_child": AddChild(actor=owner, epoch=epoch, child="T1-c1"),
        "finish": Finish(actor=owner, epoch=epoch, result={"summary": "..."}),
        "fail": Fail(actor=owner, epoch=epoch, reason="error", message="tool crashed"),
        "release": Release(actor=owner, epoch=epoch, note="draining"),
        "reviewing": Reviewing(actor=actor or "critic-1", epoch=epoch, ticket=REVIEW_ITEM_1),
        "approve": Approve(actor=actor or "critic-1", epoch=epoch),
        "veto": Veto(actor=actor or "critic-1", epoch=epoch, reasons=("Too vague.",)),
        "charge": Charge(actor=owner, epoch=epoch, usage=Usage(tokens=1200, cost=0.01)),
        "cancel": Cancel(actor=actor or "client-1", note="no longer needed"),
        "expire": Expire(actor=actor or "client-1", reason="no_agent"),
    }
    return events[kind]


# --- transition vectors ------------------------------------------------------------------------


def _builtins(obj: Any) -> Any:
    return msgspec.json.decode(encode(obj))


def _case(name: str, record: TaskRecord, event: Event, now: float) -> dict[str, Any]:
    case: dict[str, Any] = {"name": name, "record": _builtins(record), "event": _builtins(event), "now": now}
    try:
        new = apply(record, event, now)
    except TransitionError as exc:
        case["expect"] = {
            "error": "Fenced" if isinstance(exc, Fenced) else "TransitionError",
            "state": exc.state,
            "event": exc.event,
            "actor": exc.actor,
        }
    else:
        case["expect"] = {"record": _builtins(new)}
    return case


def transition_vectors() -> list[dict[str, Any]]:
    """Conformance cases for :func:`protocol.machine.apply`: every row of the table
    with every state it can lead to, the deadline rule, and every refusal."""
    w = _world()
    late, later = w.deadline, w.deadline + 3600
    cases: list[dict[str, Any]] = []

    def add(name: str, record: TaskRecord, event: Event, now: float) -> None:
        cases.append(_case(name, record, event, now))

    # Every row of TRANSITIONS, with each state it may lead to.
    add(
        "open/claim -> working (under the work item the claimer holds)",
        w.open,
        Claim(actor="agent-a", ticket=ITEM_T1),
        T0 + 1,
    )
    add("open/claim -> working (a party holding no work item)", w.open, Claim(actor="alice"), T0 + 1)
    add(
        "open/claim -> working (a released task, claimed again)",
        w.released,
        Claim(actor="agent-b", ticket=ITEM_T1),
        T0 + 25,
    )
    add(
        "working/claim -> working (takeover: the owner's work item was lent to the claimer)",
        w.working,
        Claim(actor="agent-b", ticket=ITEM_T1),
        T0 + 31,
    )
    add(
        "working/claim -> working (the owner's own item, delivered to it again after a restart)",
        w.working,
        Claim(actor="agent-a", ticket=ITEM_T1),
        T0 + 31,
    )
    add(
        "working/claim -> failed (error: the takeover reaches max_lapses)",
        w.twice_lapsed,
        Claim(actor="agent-a", ticket=ITEM_T1),
        T0 + 91,
    )
    add("open/cancel -> cancelled", w.open, Cancel(actor="client-1", note="no longer needed"), T0 + 5)
    add("open/expire -> failed (no_agent)", w.open, Expire(actor="client-1", reason="no_agent"), T0 + 11)
    add("open/expire -> failed (deadline)", w.open, Expire(actor="client-1", reason="deadline"), late)
    add(
        "working/renew -> working",
        w.working,
        Renew(actor="agent-a", epoch=1, progress="page 3", checkpoint={"page": 3}),
        T0 + 5,
    )
    add("working/renew keeps progress and checkpoint when omitted", w.working, Renew(actor="agent-a", epoch=1), T0 + 5)
    add(
        "working/renew by an owner holding no work item (its sign of life)",
        w.held_without_item,
        Renew(actor="alice", epoch=1),
        T0 + 5,
    )
    add("working/add_child -> working", w.working, AddChild(actor="agent-a", epoch=1, child="T1-c1"), T0 + 5)
    once = apply(w.working, AddChild(actor="agent-a", epoch=1, child="T1-c1"), T0 + 5)
    add(
        "working/add_child of a known child is idempotent",
        once,
        AddChild(actor="agent-a", epoch=1, child="T1-c1"),
        T0 + 6,
    )
    add(
        "working/charge -> working (within budget)",
        w.working,
        Charge(actor="agent-a", epoch=1, usage=Usage(tokens=20_000, cost=2.0)),
        T0 + 5,
    )
    add(
        "working/charge -> failed (budget: tokens)",
        w.working,
        Charge(actor="agent-a", epoch=1, usage=Usage(tokens=20_001)),
        T0 + 5,
    )
    add(
        "working/charge -> failed (budget: cost)",
        w.working,
        Charge(actor="agent-a", epoch=1, usage=Usage(cost=2.5)),
        T0 + 5,
    )
    add(
        "working/finish -> done (no review policy)",
        w.working,
        Finish(actor="agent-a", epoch=1, result={"summary": "Done."}),
        T0 + 60,
    )
    add(
        "working/finish -> review (review policy)",
        w.rv_working,
        Finish(actor="agent-a", epoch=1, result={"summary": "Draft one."}),
        T0 + 60,
    )
    add(
        "working/fail -> failed",
        w.working,
        Fail(actor="agent-a", epoch=1, reason="rejected", message="not a medical letter"),
        T0 + 60,
    )
    add("working/release -> open", w.working, Release(actor="agent-a", epoch=1, note="draining"), T0 + 20)
    add("working/cancel -> cancelled", w.working, Cancel(actor="client-1", note="no longer needed"), T0 + 20)
    add("working/expire -> failed (deadline)", w.working, Expire(actor="client-1", reason="deadline"), later)
    add(
        "working/expire -> failed (no_agent: an owner holding no work item stopped writing)",
        w.held_without_item,
        Expire(actor="client-1", reason="no_agent"),
        T0 + 20,
    )
    add(
        "review/reviewing -> review (takes a free review slot under its item)",
        w.review,
        Reviewing(actor="critic-1", epoch=1, ticket=REVIEW_ITEM_1),
        T0 + 62,
    )
    add(
        "review/reviewing -> review (takes the other free slot under another item)",
        w.review_held,
        Reviewing(actor="critic-2", epoch=1, ticket=REVIEW_ITEM_2),
        T0 + 63,
    )
    add(
        "review/reviewing -> review (takes over the slot held under its item: the holder's lease lapsed)",
        w.review_full,
        Reviewing(actor="critic-3", epoch=1, ticket=REVIEW_ITEM_1),
        T0 + 90,
    )
    add(
        "review/reviewing -> review (the holder renews its slot)",
        w.review_held,
        Reviewing(actor="critic-1", epoch=1),
        T0 + 65,
    )
    add(
        "review/reviewing -> review (the holder renews its slot under its own item)",
        w.review_held,
        Reviewing(actor="critic-1", epoch=1, ticket=REVIEW_ITEM_1),
        T0 + 65,
    )
    add(
        "review/reviewing -> review (a holder names another holder's item: that holder's slot is dropped)",
        w.review_full,
        Reviewing(actor="critic-1", epoch=1, ticket=REVIEW_ITEM_2),
        T0 + 90,
    )
    add(
        "review/reviewing -> review (the holder gives its slot back)",
        w.review_full,
        Reviewing(actor="critic-2", epoch=1, release=True),
        T0 + 70,
    )
    add(
        "review/approve -> review (a holder approves: its slot is spent)",
        w.review_full,
        Approve(actor="critic-1", epoch=1),
        T0 + 70,
    )
    add(
        "review/veto -> open (a holder vetoes: every slot is released)",
        w.review_full,
        Veto(actor="critic-2", epoch=1, reasons=("Misses the dose change.",)),
        T0 + 70,
    )
    add("review/approve -> review (quorum not yet reached)", w.review, Approve(actor="critic-1", epoch=1), T0 + 70)
    add("review/approve -> done (quorum reached)", w.review_one_vote, Approve(actor="critic-2", epoch=1), T0 + 80)
    add(
        "review/veto -> open (sent back for rework)",
        w.review_one_vote,
        Veto(actor="critic-2", epoch=1, reasons=("Misses the dose change.",)),
        T0 + 80,
    )
    add(
        "review/veto -> failed (rejected: past max_reworks)",
        w.review_last_round,
        Veto(actor="critic-1", epoch=2, reasons=("Still wrong.",)),
        T0 + 160,
    )
    add(
        "review/veto -> open (escalated past max_reworks)",
        w.review_escalating,
        Veto(actor="critic-1", epoch=1, reasons=("Unsure.",)),
        T0 + 70,
    )
    add(
        "review/approve: a reviewer of an earlier round votes again",
        w.review_last_round,
        Approve(actor="critic-1", epoch=2),
        T0 + 160,
    )
    add("review/cancel -> cancelled", w.review, Cancel(actor="client-1"), T0 + 70)
    add(
        "review/expire -> failed (no_agent: no reviewer came)",
        w.review,
        Expire(actor="client-1", reason="no_agent"),
        T0 + 600,
    )
    add("review/expire -> failed (deadline)", w.review, Expire(actor="client-1", reason="deadline"), late)

    # The deadline rule overrides the table: any event but cancel, by anyone, ends a late task.
    add(
        "deadline: open/claim at the deadline -> failed (deadline)",
        w.open,
        Claim(actor="agent-a", ticket=ITEM_T1),
        late,
    )
    add(
        "deadline: working/finish after the deadline -> failed (deadline)",
        w.working,
        Finish(actor="agent-a", epoch=1),
        later,
    )
    add(
        "deadline: working/renew by a stranger after the deadline -> failed (deadline)",
        w.working,
        Renew(actor="stranger", epoch=0),
        later,
    )
    add(
        "deadline: working/claim under another item after the deadline -> failed (deadline)",
        w.working,
        Claim(actor="agent-b", ticket=99),
        later,
    )
    add(
        "deadline: review/approve after the deadline -> failed (deadline)",
        w.review,
        Approve(actor="critic-1", epoch=1),
        later,
    )
    add("deadline: cancel after the deadline still cancels", w.working, Cancel(actor="client-1"), later)

    # Refusals: every (state, event) pair outside the table.
    for state, kind in itertools.product(STATES, EVENT_KINDS):
        if (state, kind) not in TRANSITIONS:
            record = _in_state(w, state)
            add(
                f"illegal: {kind} in {state}",
                record,
                _sample_event(kind, record),
                later if state in TERMINAL_STATES else T0 + 30,
            )

    # Refusals by the handlers: fencing, reviews, expiry.
    for kind in ("renew", "add_child", "charge", "finish", "fail", "release"):
        add(f"fenced: {kind} by a non-owner", w.working, _sample_event(kind, w.working, actor="agent-b"), T0 + 20)
        stale = msgspec.structs.replace(_sample_event(kind, w.taken_over, actor="agent-b"), epoch=1)
        add(f"fenced: {kind} with a stale epoch", w.taken_over, stale, T0 + 40)
        add(
            f"fenced: {kind} by the previous owner",
            w.taken_over,
            msgspec.structs.replace(stale, actor="agent-a"),
            T0 + 40,
        )
    add(
        "fenced: a claim of a held task under another work item",
        w.working,
        Claim(actor="agent-b", ticket=99),
        T0 + 20,
    )
    add("fenced: a claim of a held task without a work item", w.working, Claim(actor="agent-b"), T0 + 20)
    add(
        "fenced: a claim of a task held without a work item",
        w.held_without_item,
        Claim(actor="agent-b", ticket=ITEM_T1),
        T0 + 20,
    )
    add("fenced: approve on another epoch", w.review, Approve(actor="critic-1", epoch=0), T0 + 70)
    add("fenced: veto on another epoch", w.review, Veto(actor="critic-1", epoch=2, reasons=("x",)), T0 + 70)
    add("refused: the author approves its own result", w.review, Approve(actor="agent-a", epoch=1), T0 + 70)
    add("refused: the author vetoes its own result", w.review, Veto(actor="agent-a", epoch=1, reasons=("x",)), T0 + 70)
    add("refused: a reviewer votes twice", w.review_one_vote, Approve(actor="critic-1", epoch=1), T0 + 75)
    add(
        "refused: a reviewer vetoes after approving",
        w.review_one_vote,
        Veto(actor="critic-1", epoch=1, reasons=("x",)),
        T0 + 75,
    )
    add("refused: a veto without reasons", w.review, Veto(actor="critic-1", epoch=1, reasons=()), T0 + 70)
    add(
        "refused: the author takes a review slot",
        w.review,
        Reviewing(actor="agent-a", epoch=1, ticket=REVIEW_ITEM_1),
        T0 + 62,
    )
    add(
        "refused: a reviewer that voted takes a slot again",
        w.review_one_vote,
        Reviewing(actor="critic-1", epoch=1, ticket=REVIEW_ITEM_2),
        T0 + 75,
    )
    add(
        "fenced: a slot taken on another epoch",
        w.review,
        Reviewing(actor="critic-1", epoch=0, ticket=REVIEW_ITEM_1),
        T0 + 62,
    )
    add(
        "fenced: a slot taken under a new item when every slot is held under others",
        w.review_full,
        Reviewing(actor="critic-3", epoch=1, ticket=99),
        T0 + 70,
    )
    add(
        "fenced: a slot taken without an item when every slot is held",
        w.review_full,
        Reviewing(actor="critic-3", epoch=1),
        T0 + 70,
    )
    add(
        "fenced: a slot given back by a reviewer without one",
        w.review,
        Reviewing(actor="critic-1", epoch=1, release=True),
        T0 + 70,
    )
    add(
        "fenced: approve by a non-holder when every slot is taken",
        w.review_full,
        Approve(actor="critic-3", epoch=1),
        T0 + 70,
    )
    add(
        "fenced: veto by a non-holder when every slot is taken",
        w.review_full,
        Veto(actor="critic-3", epoch=1, reasons=("x",)),
        T0 + 70,
    )
    taken_over = apply(w.review_full, Reviewing(actor="critic-3", epoch=1, ticket=REVIEW_ITEM_1), T0 + 90)
    add(
        "fenced: the vote of a holder whose slot was taken over",
        taken_over,
        Approve(actor="critic-1", epoch=1),
        T0 + 95,
    )
    add(
        "fenced: the renewal of a holder whose slot was taken over",
        taken_over,
        Reviewing(actor="critic-1", epoch=1),
        T0 + 95,
    )
    add("refused: a veto with a blank reason", w.review, Veto(actor="critic-1", epoch=1, reasons=("ok", "  ")), T0 + 70)
    add(
        "refused: expire(deadline) before the deadline",
        w.working,
        Expire(actor="client-1", reason="deadline"),
        late - 0.001,
    )
    add(
        "refused: expire(deadline) of a task without deadline",
        _replace(w.open, deadline=None),
        Expire(actor="client-1", reason="deadline"),
        later,
    )
    add(
        "refused: expire(no_agent) of a task an agent holds under a work item",
        w.working,
        Expire(actor="client-1", reason="no_agent"),
        T0 + 20,
    )
    add("refused: cancel of a done task, even after the deadline", w.done, Cancel(actor="client-1"), later)

    _check_coverage(cases)
    return cases


def _check_coverage(cases: list[dict[str, Any]]) -> None:
    """Refuse to publish vectors that miss a row, a target state or a refusal."""
    reached: set[tuple[str, str, str]] = set()
    refused: set[tuple[str, str]] = set()
    for case in cases:
        state, kind = case["record"]["state"], case["event"]["kind"]
        if "record" in case["expect"]:
            if not case["name"].startswith("deadline:"):
                reached.add((state, kind, case["expect"]["record"]["state"]))
        else:
            refused.add((state, kind))
    wanted = {(s, k, t) for (s, k), targets in TRANSITIONS.items() for t in targets}
    missing = wanted - reached
    unexpected = reached - wanted
    illegal = {p for p in itertools.product(STATES, EVENT_KINDS) if p not in TRANSITIONS}
    if missing or unexpected or illegal - refused:
        raise RuntimeError(
            f"transition vectors out of step with TRANSITIONS: missing {sorted(missing)}, "
            f"not in the table {sorted(unexpected)}, refusals missing {sorted(illegal - refused)}"
        )


# --- other vectors --------------------------------------------------------------------------


def _decision(decision: Take | Drop | HandBack) -> dict[str, Any]:
    match decision:
        case Take(event=event):
            return {"take": _builtins(event)}
        case Drop(why=why):
            return {"drop": why}
        case HandBack(why=why):
            return {"hand_back": why}
    raise AssertionError(decision)  # pragma: no cover


def _routing_vectors() -> dict[str, Any]:
    specificities = [
        {"served": s, "capability": c, "specificity": specificity(s, c)}
        for s, c in (("a", "a"), ("a", "a.b"), ("a.b", "a.b.c.d"), ("a", "ab"), ("a.b", "a"), ("a.c", "a.b.c"))
    ]
    priorities = []
    for served, capability in (
        (["summarize"], "summarize"),
        (["summarize"], "summarize.medical"),
        (["summarize.medical"], "summarize.medical.cardiology"),
        (["summarize"], "summarize.medical.cardiology"),
        (["summarize", "summarize.medical"], "summarize.medical.cardiology"),
        (["a"], "a.b.c.d.e.f.g.h"),
        (["summarize"], "summarizex"),
        (["summarize.medical"], "summarize"),
        (["review", "translate"], "review.medical"),
        ([], "summarize"),
    ):
        priorities.append(
            {
                "served": served,
                "capability": capability,
                "best_match": best_match(tuple(served), capability),
                "priority": pull_priority(tuple(served), capability),
            }
        )
    return {"specificity": specificities, "pull_priority": priorities}


def _work_item_vectors(w: _World) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def case(name: str, old: TaskRecord | None, new: TaskRecord, revision: int) -> None:
        items = work_items(old, new, revision)
        out.append(
            {
                "name": name,
                "old": None if old is None else _builtins(old),
                "new": _builtins(new),
                "revision": revision,
                "items": [_builtins(i) for i in items],
                "ids": [work_item_id(i) for i in items],
            }
        )

    refused_child = delegate(
        _replace(w.working, hops_left=0),
        child_id="T1-c1",
        capability="translate",
        instruction="x",
        actor="agent-a",
        now=T0 + 10,
    )
    escalated = apply(w.review_escalating, Veto(actor="critic-1", epoch=1, reasons=("Unsure.",)), T0 + 70)
    rejected = apply(w.review_last_round, Veto(actor="critic-1", epoch=2, reasons=("Still wrong.",)), T0 + 160)
    case("created: one work item at revision 0 (the record is not in the bucket yet)", None, w.open, 0)
    case("refused at birth (written to the bucket already failed): none", None, refused_child, 1)
    case("claimed (the claim creates the key): none", w.open, w.working, 1)
    case("renewed: none", w.working, apply(w.working, Renew(actor="agent-a", epoch=1), T0 + 5), 2)
    case("released: none (the owner hands its own item back)", w.working, w.released, 2)
    case("taken over: none (the lapsed owner's item was lent to the claimer)", w.working, w.taken_over, 2)
    case("done: none", w.working, w.done, 2)
    case("cancelled while open: none", w.open, w.cancelled, 1)
    case("in review: one review item per slot of the quorum", w.rv_working, w.review, 2)
    case("a review slot taken: none", w.review, w.review_held, 3)
    case("one approval: none", w.review, w.review_one_vote, 3)
    case("vetoed: one work item for the rework", w.review_one_vote, w.reworked, 4)
    case("the rework in review: the review items of round 1", w.reclaimed, w.review_last_round, 6)
    case("escalated past max_reworks: one work item on the escalation capability", w.review_escalating, escalated, 3)
    case("rejected past max_reworks: none", w.review_last_round, rejected, 7)
    question = ask(w.working, child_id="T1-q1", question="Which edition?", actor="agent-a", now=T0 + 12)
    case("a clarification (capability agent.<id>): none, its requester finds it among the children", None, question, 0)
    return out


def _delivery_vectors(w: _World) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    (t1_item,) = work_items(None, w.open, 0)
    (t2_item,) = work_items(None, w.rv_open, 0)
    first, second = work_items(w.rv_working, w.review, 2)
    one_vote_held = apply(w.review_one_vote, Reviewing(actor="critic-2", epoch=1, ticket=REVIEW_ITEM_2), T0 + 72)
    approved = apply(w.review_one_vote, Approve(actor="critic-2", epoch=1), T0 + 80)

    def case(name: str, item: WorkItem, record: TaskRecord, agent: str, ticket: int) -> None:
        out.append(
            {
                "name": name,
                "item": _builtins(item),
                "record": _builtins(record),
                "agent": agent,
                "ticket": ticket,
                "expect": _decision(on_delivery(item, record, agent=agent, ticket=ticket)),
            }
        )

    case("work item, task open (not in the bucket yet): claim it under the item", t1_item, w.open, "agent-a", ITEM_T1)
    case("work item, task open again after a hand-back: claim it", t1_item, w.released, "agent-b", ITEM_T1)
    case("work item, task held under this very item: take it over", t1_item, w.working, "agent-b", ITEM_T1)
    case("work item redelivered to its own owner (a restart): claim it again", t1_item, w.working, "agent-a", ITEM_T1)
    case("work item, task held under another item: stale, drop it", t1_item, w.working, "agent-b", 99)
    case("work item, task held by a party holding no item: drop it", t1_item, w.held_without_item, "agent-b", ITEM_T1)
    case("work item, task in review: drop it", t2_item, w.review, "agent-b", ITEM_T2)
    case("work item, task done: drop it", t1_item, w.done, "agent-b", ITEM_T1)
    case("work item, task cancelled: drop it", t1_item, w.cancelled, "agent-b", ITEM_T1)
    case("work item, task failed: drop it", t1_item, w.failed, "agent-b", ITEM_T1)
    case("review item, a slot free: take a slot under the item", first, w.review, "critic-1", REVIEW_ITEM_1)
    case(
        "review item, its slot held by another reviewer: take it over", first, w.review_full, "critic-3", REVIEW_ITEM_1
    )
    case("review item redelivered to its holder: renew the slot", first, w.review_held, "critic-1", REVIEW_ITEM_1)
    case(
        "review item to a reviewer holding a slot under another item: hand it back",
        second,
        w.review_full,
        "critic-1",
        REVIEW_ITEM_2,
    )
    case("review item to the author: hand it back", first, w.review, "agent-a", REVIEW_ITEM_1)
    case(
        "review item to a reviewer that voted this round: hand it back",
        second,
        w.review_one_vote,
        "critic-1",
        REVIEW_ITEM_2,
    )
    case("review item, every slot taken under other items: drop it", first, one_vote_held, "critic-3", REVIEW_ITEM_1)
    case("review item of an earlier round: drop it", first, w.review_last_round, "critic-3", REVIEW_ITEM_1)
    case("review item, the result sent back for rework: drop it", first, w.reworked, "critic-3", REVIEW_ITEM_1)
    case("review item, the review is over (done): drop it", first, approved, "critic-3", REVIEW_ITEM_1)
    return out


def _waiting_vectors(w: _World) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    timeout = w.open.claim_timeout_s

    def case(name: str, record: TaskRecord, waited_s: float, queue_active: bool, now: float) -> None:
        event = judge_waiting(record, actor="client-1", waited_s=waited_s, queue_active=queue_active, now=now)
        out.append(
            {
                "name": name,
                "record": _builtins(record),
                "actor": "client-1",
                "waited_s": waited_s,
                "queue_active": queue_active,
                "now": now,
                "expect": None if event is None else _builtins(event),
            }
        )

    case("open, unchanged for less than claim_timeout_s: wait", w.open, timeout - 0.1, False, T0 + 20)
    case("open, nobody at its queue for claim_timeout_s: no_agent", w.open, timeout, False, T0 + 20)
    case(
        "open, agents at work on or waiting at its queue: wait (a queue, not a missing agent)",
        w.open,
        600.0,
        True,
        T0 + 700,
    )
    case("open, at the deadline: deadline, however short the wait", w.open, 0.0, True, w.deadline)
    case("working under a work item: the broker's to watch, wait", w.working, 3000.0, False, T0 + 3000)
    case("working under a work item, past the deadline: deadline", w.working, 0.0, True, w.deadline + 1)
    case(
        "working without a work item, unchanged for claim_timeout_s: no_agent",
        w.held_without_item,
        timeout,
        True,
        T0 + 20,
    )
    case("working without a work item, changed recently: wait", w.held_without_item, timeout / 2, False, T0 + 20)
    case("review, no slot held, nobody at the reviewers' queue: no_agent", w.review, timeout, False, T0 + 80)
    case(
        "review, no slot held, agents at the reviewers' queue: no_agent all the same",
        w.review,
        timeout,
        True,
        T0 + 80,
    )
    case("review, no slot held, changed recently: wait", w.review_one_vote, timeout / 2, False, T0 + 80)
    case("review, a slot held: the broker's to watch, wait", w.review_held, 600.0, False, T0 + 700)
    case("review, a slot held, past the deadline: deadline", w.review_held, 0.0, True, w.deadline)
    case("ended: nothing to judge", w.done, 10.0**6, False, w.deadline + 3600)
    # An escalated task waits for a person: its claim_timeout_s is the review policy's
    # escalation_timeout_s (3600 s here), not the 10 s it had.
    escalated = apply(
        _replace(w.review_escalating, deadline=None), Veto(actor="critic-1", epoch=1, reasons=("Unsure.",)), T0 + 70
    )
    long = escalated.claim_timeout_s
    case("escalated, nobody at the person's queue for 600 s: wait", escalated, 600.0, False, T0 + 670)
    case(
        "escalated, nobody at the person's queue for escalation_timeout_s: no_agent", escalated, long, False, T0 + 3670
    )
    return out


def _trail_gap_vectors(w: _World) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def case(name: str, record: TaskRecord, revision: int, last: TaskEvent | None) -> None:
        gap = trail_gap(record, revision, last)
        expect = None
        if gap is not None:
            expect = {"kind": gap.kind, "actor": gap.actor, "items": [_builtins(i) for i in gap.items]}
        out.append(
            {
                "name": name,
                "record": _builtins(record),
                "revision": revision,
                "last_event": None if last is None else _builtins(last),
                "expect": expect,
            }
        )

    created = task_event("created", w.open, actor="client-1")
    claimed = task_event("claim", w.working, actor="agent-a")
    case("open, never written (revision 0): nothing to fill", w.open, 0, created)
    case("working, the claim's event in the trail: nothing missing", w.working, 3, claimed)
    case("working, the trail ends at created: the claim is missing", w.working, 3, created)
    case("working, no event at all: the claim is missing", w.working, 3, None)
    case("taken over, the trail shows the first claim only: missing", w.taken_over, 5, claimed)
    case("done, the trail ends at the claim: the end is missing", w.done, 4, claimed)
    case(
        "done, its finish event in the trail: nothing missing", w.done, 4, task_event("finish", w.done, actor="agent-a")
    )
    case(
        "done, an ended event already recorded: nothing missing",
        w.done,
        4,
        task_event("ended", w.done, actor="agent-b"),
    )
    case(
        "review, the trail ends at the claim: the finish and its review items are missing",
        w.review,
        6,
        task_event("claim", w.rv_working, actor="agent-a"),
    )
    case(
        "open again after a veto, the trail ends at the finish: the veto and its work item are missing",
        w.reworked,
        8,
        task_event("finish", w.review, actor="agent-a"),
    )
    return out


def _end_unreadable_vectors(w: _World) -> list[dict[str, Any]]:
    why = "task record: Expected `int` >= 0 - at `$.epoch`"
    return [
        {
            "name": name,
            "copy": _builtins(copy),
            "why": why,
            "now": now,
            "expect": _builtins(end_unreadable(copy, why=why, now=now)),
        }
        for name, copy, now in (
            ("the work item's copy (open): ended failed/error", w.open, T0 + 100),
            ("the owner's copy (working): ended failed/error", w.working, T0 + 100),
            ("a reviewer's copy (review, a slot held): ended failed/error, slots emptied", w.review_held, T0 + 100),
            ("a copy that is already terminal: unchanged", w.done, T0 + 100),
        )
    ]


def _action(action: Any) -> dict[str, Any]:
    """An :class:`AgentCore` action as JSON: its class name, snake-cased, and fields."""
    name = re.sub(r"(?<!^)(?=[A-Z])", "_", type(action).__name__).lower()
    return {"action": name, **msgspec.json.decode(msgspec.json.encode(action))}


def _core_vectors(w: _World) -> list[dict[str, Any]]:
    """What an agent does with a delivered work item (protocol/core.py): first on the
    item alone (``receive``), then, when the item was delivered before, on the record
    read afresh (``decide``)."""
    out: list[dict[str, Any]] = []
    agent = {"agent": "agent-b", "serves": ["summarize", "review"], "capacity": 4, "reviews": True}

    def case(
        name: str,
        step: str,
        item: WorkItem,
        *,
        ticket: int,
        delivered: int,
        now: float = 500.0,
        connected_at: float = 0.0,
        holding: tuple[tuple[int, str, str], ...] = (),
        record: TaskRecord | None = None,
        revision: int = 0,
    ) -> None:
        core = AgentCore(
            agent="agent-b", serves=("summarize", "review"), capacity=4, reviews=True, connected_at=connected_at
        )
        for held_ticket, task, kind in holding:
            core.arrived()
            core.hold(held_ticket, task=task, kind=kind, lease_s=30.0, claim_timeout_s=10.0, now=connected_at)
        args: dict[str, Any] = {"ticket": ticket, "delivered": delivered, "lease_s": 30.0, "now": now}
        got: Any
        if step == "receive":
            got = core.receive(item, ticket=ticket, delivered=delivered, lease_s=30.0, now=now)
        else:
            assert record is not None
            got = core.decide(item, record, revision, ticket=ticket, delivered=delivered, lease_s=30.0, now=now)
        out.append(
            {
                "name": name,
                "step": step,
                "agent": agent,
                "connected_at": connected_at,
                "holding": [{"ticket": t, "task": task, "kind": k} for t, task, k in holding],
                "item": _builtins(item),
                **({"record": _builtins(record), "revision": revision} if step == "decide" else {}),
                **args,
                "expect": _action(got),
            }
        )

    [work] = work_items(None, w.open, 0)
    [rework] = work_items(w.review_one_vote, w.reworked, 9)
    review = work_items(w.rv_working, w.review, 6)
    forged = WorkItem(
        task="T9",
        capability="translate",
        revision=0,
        record=_replace(w.open, id="T9", root="T9", capability="translate"),
    )
    case("a first delivery of an open task: work it, claim lazily", "receive", work, ticket=ITEM_T1, delivered=1)
    case("a work item of a capability the agent does not serve: refuse", "receive", forged, ticket=70, delivered=1)
    case("delivered before: read the record, then decide", "receive", work, ticket=ITEM_T1, delivered=2)
    case(
        "our own held item lent back to us (the broker was away): renew it",
        "receive",
        work,
        ticket=ITEM_T1,
        delivered=2,
        holding=((ITEM_T1, "T1", "work"),),
    )
    case("a review item of a result: take a slot, lazily", "receive", review[0], ticket=REVIEW_ITEM_1, delivered=1)
    case(
        "a second slot of a result we are reviewing: give it back",
        "receive",
        review[1],
        ticket=REVIEW_ITEM_2,
        delivered=1,
        holding=((REVIEW_ITEM_1, "T2", "review"),),
    )
    case(
        "a held task's item, its owner silent for a lease: take over, claim first, fill the trail",
        "decide",
        work,
        ticket=ITEM_T1,
        delivered=2,
        record=w.working,
        revision=3,
    )
    case(
        "the same, less than a lease after our (re)connection: give it back until then",
        "decide",
        work,
        ticket=ITEM_T1,
        delivered=2,
        now=500.0,
        connected_at=480.0,
        record=w.working,
        revision=3,
    )
    case(
        "an item of a task another item holds: drop it, checking the trail",
        "decide",
        work,
        ticket=99,
        delivered=2,
        record=w.working,
        revision=3,
    )
    case(
        "an item of an ended task: drop it, checking the trail",
        "decide",
        work,
        ticket=ITEM_T1,
        delivered=2,
        record=w.done,
        revision=4,
    )
    case(
        "a rework's item: claim first (it was held before)",
        "decide",
        rework,
        ticket=REWORK_ITEM,
        delivered=2,
        record=w.reworked,
        revision=9,
    )
    return out


#: Instructions whose normalization a naive port gets wrong (JavaScript's ``\\s`` and
#: ``toLowerCase``, ASCII-only folding, Unicode normalization): each with why.
_FINGERPRINT_CASES: tuple[tuple[str, str, str], ...] = (
    ("summarize.medical", "Summarize the letter.", "ASCII"),
    ("summarize.medical", "  summarize   THE letter. ", "runs collapsed, ends trimmed, case folded"),
    ("translate", "Summarize the letter.", "the capability is part of the identity"),
    ("x", "", "empty"),
    ("x", "\tA\n\r\x0b\x0cB ", "ASCII whitespace: tab, newline, return, vertical tab, form feed"),
    ("x", "A\u00a0B\u2028C\u2029D\u3000E\u1680F\u202fG", "NBSP, line and paragraph separators, ideographic space"),
    ("x", "A\x1cB\x1dC\x1eD\x1fE\x85F", "U+001C..U+001F and NEL are whitespace (not in JavaScript's \\s)"),
    (
        "x",
        "A\ufeffB\u200bC\u180eD",
        "BOM, zero width space and U+180E are NOT whitespace (JavaScript's \\s has U+FEFF)",
    ),
    ("x", "Stra\u00dfe STRASSE \u1e9e", "full folding: sharp s (U+00DF, U+1E9E) folds to ss; toLowerCase keeps it"),
    ("x", "\u0130stanbul ISTANBUL \u0131", "U+0130 folds to i + U+0307, dotless U+0131 stays: no Turkish rule"),
    (
        "x",
        "\u039f\u0394\u039f\u03a3 \u03bf\u03b4\u03bf\u03c2",
        "sigma: U+03A3, U+03C2 fold to U+03C3 (toLowerCase makes a final U+03C2)",
    ),
    ("x", "\ufb01le \u017f \u212a \u212b", "ligature fi, long s, Kelvin and Angstrom signs fold to fi, s, k, U+00E5"),
    ("x", "\uab70\uabbf \u13a0", "Cherokee small letters fold to the capitals (the one script that folds up)"),
    ("x", "Caf\u00e9 Cafe\u0301", "no Unicode normalization: precomposed é and e + U+0301 stay different"),
    ("x", "\U0001f600 \U00010400\U00010428", "astral: an emoji kept, Deseret U+10400 folds to U+10428"),
)


def _normalized(instruction: str) -> str:
    """The fingerprint's normalization, spelled out for the vectors (``fingerprint`` in
    protocol.rules is the rule; the tests check that the two agree)."""
    return " ".join(instruction.split()).casefold()


def _fingerprint_whitespace() -> list[str]:
    """Every code point that ``str.split()`` treats as whitespace, as ``U+XXXX``."""
    return [f"U+{c:04X}" for c in range(0x110000) if chr(c).isspace()]


def _delegation_vectors(w: _World) -> dict[str, Any]:
    fingerprints = [
        {
            "capability": c,
            "instruction": i,
            "normalized": _normalized(i),
            "fingerprint": fingerprint(c, i),
            "why": why,
        }
        for c, i, why in _FINGERPRINT_CASES
    ]
    budgets = []
    for budget, used, share in (
        (Budget(tokens=20_000, cost=2.0), Usage(), 0.5),
        (Budget(tokens=20_000, cost=2.0), Usage(tokens=5_001, cost=0.5), 0.25),
        (Budget(tokens=100), Usage(tokens=100), 0.5),
        (Budget(tokens=100, cost=1.0), Usage(tokens=150, cost=1.5), 1.0),
        (Budget(cost=1.0), Usage(tokens=7), 0.3),
        (None, Usage(tokens=7), 0.5),
    ):
        got = split_budget(_replace(w.working, budget=budget, spent=used), share)
        budgets.append(
            {
                "budget": None if budget is None else _builtins(budget),
                "spent": _builtins(used),
                "share": share,
                "child_budget": None if got is None else _builtins(got),
            }
        )
    hop0 = _replace(w.working, hops_left=0)
    spent = _replace(w.working, spent=Usage(tokens=20_000, cost=1.0))
    delegations: list[dict[str, Any]] = []

    def delegation(name: str, parent: TaskRecord, **args: Any) -> None:
        child = delegate(parent, **args)
        delegations.append({"name": name, "parent": _builtins(parent), "args": args, "child": _builtins(child)})

    base: dict[str, Any] = {"child_id": "T1-c1", "actor": "agent-a", "now": T0 + 10}
    delegation(
        "handoff: one hop fewer, half the budget, the parent's deadline",
        w.working,
        capability="translate",
        instruction="Translate to French.",
        **base,
    )
    delegation(
        "handoff: an earlier deadline is kept",
        w.working,
        capability="translate",
        instruction="x",
        deadline=T0 + 600,
        **base,
    )
    delegation(
        "handoff: a later deadline is cut to the parent's",
        w.working,
        capability="translate",
        instruction="x",
        deadline=T0 + 7200,
        **base,
    )
    delegation(
        "handoff: a share of what is left", spent, capability="translate", instruction="x", budget_share=0.25, **base
    )
    delegation(
        "handoff: the child's trace shares the parent's trace id",
        _replace(w.working, trace=traceparent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")),
        capability="translate",
        instruction="x",
        span_id="b7ad6b7169203331",
        **base,
    )
    delegation(
        "refused: hop_limit at zero hops (the child's hops_left stays 0: it is clamped, never negative)",
        hop0,
        capability="translate",
        instruction="x",
        **base,
    )
    delegation(
        "handoff at one hop left: the child has 0 and may not delegate again",
        _replace(w.working, hops_left=1),
        capability="translate",
        instruction="x",
        **base,
    )
    delegation(
        "refused: loop (same capability and instruction as an ancestor)",
        w.working,
        capability="summarize.medical",
        instruction=" summarize the DISCHARGE letter for the family doctor. ",
        **base,
    )
    delegation(
        "refused: budget exhausted",
        _replace(w.working, spent=Usage(tokens=20_000)),
        capability="translate",
        instruction="x",
        **base,
    )
    delegation(
        "refused: deadline already passed",
        w.working,
        capability="translate",
        instruction="x",
        child_id="T1-c1",
        actor="agent-a",
        now=T0 + 3600,
    )
    question = ask(
        w.working, child_id="T1-q1", question="Which language does the doctor read?", actor="agent-a", now=T0 + 10
    )
    return {
        "fingerprint": fingerprints,
        "fingerprint_whitespace": _fingerprint_whitespace(),
        "split_budget": budgets,
        "delegate": delegations,
        "ask": {"parent": _builtins(w.working), "child": _builtins(question)},
    }


def _trace_vectors() -> dict[str, Any]:
    parent = traceparent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
    invalid = []
    for value in (
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
    ):
        try:
            new_task(task_id="T", capability="x", instruction="", requester="c", now=T0, trace=value)
        except LocalProtocolError:
            invalid.append(value)
    # A record may carry any string as its trace (a peer wrote it); only a valid
    # traceparent is copied into a message's `traceparent` header.
    carried = [parent, child_traceparent(parent, "b7ad6b7169203331"), None, *invalid, "not a trace", "00-" + "f" * 52]
    headers = [{"trace": value, "header": value if trace_id(value) is not None else None} for value in carried]
    return {
        "make": [
            {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7", "traceparent": parent}
        ],
        "header": headers,
        "child": [
            {"parent": parent, "span_id": "b7ad6b7169203331", "child": child_traceparent(parent, "b7ad6b7169203331")},
            {"parent": None, "span_id": "b7ad6b7169203331", "child": None},
        ],
        "invalid": invalid,
    }


_NS = 1_000_000_000


def _ns(seconds: float) -> int:
    return int(seconds * _NS)


def _resource_vectors() -> dict[str, Any]:
    """The JetStream resources of a mesh with the default prefix and the reference
    runtime's default settings, as the JetStream API reports them (``$JS.API.STREAM.INFO``
    and ``$JS.API.CONSUMER.INFO`` ``config``; durations in nanoseconds)."""
    names = Names()
    settings = Settings()
    capability = "summarize.medical"
    streams = [
        {
            "name": f"KV_{names.tasks_bucket}",
            "what": "the tasks bucket",
            "must": {
                "subjects": [f"$KV.{names.tasks_bucket}.>"],
                "retention": "limits",
                "max_msgs_per_subject": 1,
                "discard": "new",
                "allow_direct": True,
                "allow_rollup_hdrs": True,
                "deny_delete": True,
                "allow_msg_ttl": True,
                "max_msg_size": MAX_RECORD_BYTES + HEADER_ROOM_BYTES,
                "republish": {"src": f"$KV.{names.tasks_bucket}.>", "dest": names.records_subjects},
            },
            "default": {"storage": settings.storage, "num_replicas": settings.replicas, "max_age": 0},
        },
        {
            "name": f"KV_{names.agents_bucket}",
            "what": "the directory bucket",
            "must": {
                "subjects": [f"$KV.{names.agents_bucket}.>"],
                "retention": "limits",
                "max_msgs_per_subject": 1,
                "discard": "new",
                "allow_rollup_hdrs": True,
                "deny_delete": True,
                "allow_msg_ttl": True,
                "subject_delete_marker_ttl": _ns(60),
                "max_msg_size": MAX_CARD_BYTES + HEADER_ROOM_BYTES,
            },
            "default": {"storage": settings.storage, "num_replicas": settings.replicas, "max_age": 0},
        },
        {
            "name": names.events_stream,
            "what": "the events stream (trace and archive)",
            "must": {
                "subjects": list(names.events_subjects),
                "retention": "limits",
                "allow_direct": True,
                "duplicate_window": _ns(120),
            },
            "default": {
                "storage": settings.storage,
                "num_replicas": settings.replicas,
                "max_age": _ns(settings.retention_s),
                "max_bytes": settings.retention_bytes,
            },
        },
        {
            "name": names.work_stream,
            "what": "the work stream (every queue's items)",
            "must": {
                "subjects": [names.work_subjects],
                "retention": "workqueue",
                "allow_direct": True,
                "duplicate_window": _ns(120),
            },
            "default": {
                "storage": settings.storage,
                "num_replicas": settings.replicas,
                "max_age": _ns(settings.retention_s),
            },
        },
    ]
    queue = {
        "stream": names.work_stream,
        "capability": capability,
        "must": {
            "durable_name": names.queue_consumer(capability),
            "filter_subject": names.work_subject(capability),
            "ack_policy": "explicit",
            "max_deliver": -1,
            "priority_groups": [PRIORITY_GROUP],
            "priority_policy": "prioritized",
        },
        "default": {
            "ack_wait": _ns(settings.lease_s),
            "max_waiting": 4096,
            "inactive_threshold": _ns(settings.queue_idle_s),
        },
    }
    ttl = str(int(settings.finished_ttl_s))
    task = f"$KV.{names.tasks_bucket}.{names.task_key('T1')}"
    headers = [
        {
            "what": "a record write that leaves the task live (compare-and-set on revision 4)",
            "subject": task,
            "headers": {"Nats-Expected-Last-Subject-Sequence": "4"},
        },
        {
            "what": "a record write that ends the task: it carries the finished-record TTL (whole seconds)",
            "subject": task,
            "headers": {"Nats-Expected-Last-Subject-Sequence": "4", "Nats-TTL": ttl},
            "default": {"Nats-TTL": ttl},
        },
        {
            "what": "a card put: its TTL is a few heartbeats (three of 2 s here)",
            "subject": f"$KV.{names.agents_bucket}.{names.agent_key('agent-a')}",
            "headers": {"Nats-TTL": "6"},
            "default": {"Nats-TTL": "6"},
        },
        {
            "what": "a work item (with the task's trace, when it is a valid traceparent)",
            "subject": names.work_subject(capability),
            "headers": {
                VERSION_HEADER: str(MAJOR_VERSION),
                "Nats-Msg-Id": "T1:0:work:0",
                "traceparent": traceparent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"),
            },
        },
        {
            "what": "a task event (with the task's trace, when it is a valid traceparent)",
            "subject": names.event_subject("T1", "T1", "claim"),
            "headers": {
                VERSION_HEADER: str(MAJOR_VERSION),
                "Nats-Msg-Id": "T1:1:claim",
                "traceparent": traceparent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"),
            },
        },
        {
            "what": "an error report",
            "subject": names.error_subject("agent-a"),
            "headers": {VERSION_HEADER: str(MAJOR_VERSION)},
        },
    ]
    return {"streams": streams, "queue": queue, "headers": headers}


#: How to read resources.json (docs/PROTOCOL.md section 6.20 has the rules).
_RESOURCES_HOW: dict[str, str] = {
    "streams": "Each JetStream stream a mesh (prefix `mesh`) uses, by `name`: a party that creates it MUST give it "
    "every setting in `must`, and the values in `default` unless its operator chose others; a party that finds it "
    "MAY compare the `config` of `$JS.API.STREAM.INFO.<name>` with `must`. Durations are nanoseconds, sizes bytes; "
    "a bucket is the stream `KV_<bucket>`.",
    "queue": "The durable pull consumer that is a capability's queue, as `$JS.API.CONSUMER.INFO` reports its "
    "`config`: `must` for every queue (its names derived from the capability as in names.json), `default` the "
    "reference runtime's choice (`ack_wait` is the lease).",
    "headers": "The headers each kind of write carries, exactly: KV writes carry no `Mesh-Version` (their value's "
    "`v` says the version); stream publishes and error reports do. Values under `default` are the reference "
    "runtime's settings, not rules.",
}


def _rule_vectors() -> dict[str, Any]:
    w = _world()
    return {
        **_routing_vectors(),
        "work_items": _work_item_vectors(w),
        "on_delivery": _delivery_vectors(w),
        "judge_waiting": _waiting_vectors(w),
        "trail_gap": _trail_gap_vectors(w),
        "end_unreadable": _end_unreadable_vectors(w),
        "agent_core": _core_vectors(w),
        **_delegation_vectors(w),
        "traceparent": _trace_vectors(),
    }


#: A capability too long for a consumer name (over 200 characters): its queue's consumer
#: name is shortened with a digest.
_LONG_CAPABILITY = ".".join(f"{c}{'x' * 29}" for c in "abcdefgh")


def _consumer_created_advisory(names: Names) -> str:
    """JetStream's advisory subject announcing a new consumer (a new queue) on the
    work stream."""
    return f"$JS.EVENT.ADVISORY.CONSUMER.CREATED.{names.work_stream}.*"


def _pull_subject(names: Names, capability: str) -> str:
    """The JetStream API subject of a pull request on a capability's queue."""
    return f"$JS.API.CONSUMER.MSG.NEXT.{names.work_stream}.{names.queue_consumer(capability)}"


def _create_subject(names: Names, capability: str) -> str:
    """The JetStream API subject that creates a capability's queue (a filtered consumer)."""
    return (
        f"$JS.API.CONSUMER.CREATE.{names.work_stream}.{names.queue_consumer(capability)}."
        f"{names.work_subject(capability)}"
    )


def _name_vectors() -> dict[str, Any]:
    def all_names(prefix: str) -> dict[str, Any]:
        n = Names(prefix)
        return {
            "prefix": prefix,
            "tasks_bucket": n.tasks_bucket,
            "agents_bucket": n.agents_bucket,
            "events_stream": n.events_stream,
            "events_subjects": list(n.events_subjects),
            "work_stream": n.work_stream,
            "work_subjects": n.work_subjects,
            "records_subjects": n.records_subjects,
            "service_name": n.service_name,
            "task_key": {"task": "T-1", "key": n.task_key("T-1")},
            "record_subject": {"task": "T-1", "subject": n.record_subject("T-1")},
            "agent_key": {"agent": "Agent_7", "key": n.agent_key("Agent_7")},
            "work_subject": {"capability": "summarize.medical", "subject": n.work_subject("summarize.medical")},
            "queue_consumer": [
                {"capability": c, "consumer": n.queue_consumer(c)}
                for c in ("summarize", "summarize.medical", "agent.client-1", _LONG_CAPABILITY)
            ],
            "pull_subject": {"capability": "summarize.medical", "subject": _pull_subject(n, "summarize.medical")},
            "create_subject": {"capability": "summarize.medical", "subject": _create_subject(n, "summarize.medical")},
            "consumer_created_advisories": _consumer_created_advisory(n),
            "event_subject": {
                "root": "R",
                "task": "T-1",
                "kind": "add_child",
                "subject": n.event_subject("R", "T-1", "add_child"),
            },
            "events_filter": {"root": "R", "filter": n.events_filter("R")},
            "task_events_filter": [
                {"task": "T-1", "root": "R", "filter": n.task_events_filter("T-1", "R")},
                {"task": "T-1", "root": None, "filter": n.task_events_filter("T-1")},
            ],
            "error_subject": {"agent": "Agent_7", "subject": n.error_subject("Agent_7")},
            "control_subject": {"agent": "Agent_7", "subject": n.control_subject("Agent_7")},
        }

    def split(values: Iterable[str], validate: Callable[[str], str]) -> dict[str, list[str]]:
        ok, bad = [], []
        for value in values:
            try:
                validate(value)
            except LocalProtocolError:
                bad.append(value)
            else:
                ok.append(value)
        return {"valid": ok, "invalid": bad}

    return {
        "version_header": {"name": VERSION_HEADER, "value": str(PROTOCOL_VERSION)},
        "priority_group": PRIORITY_GROUP,
        "max_priority": MAX_PRIORITY,
        "meshes": [all_names("mesh"), all_names("acme-prod")],
        "patterns": {
            "capability": _CAPABILITY_RE.pattern,
            "agent_id": _AGENT_ID_RE.pattern,
            "task_id": _TASK_ID_RE.pattern,
            "prefix": _PREFIX_RE.pattern,
            "event_kind": _KIND_RE.pattern,
        },
        "capability": split(
            [
                "summarize",
                "summarize.medical",
                "a.b.c.d.e.f.g.h",
                "x-1_y",
                "9lives",
                "Summarize",
                "a..b",
                "a.",
                "a.*",
                "a.>",
                "a~b",
                "a b",
                "a.b.c.d.e.f.g.h.i",
                "-a",
                "summarize\n",
                "x" * 65,
                "",
            ],
            validate_capability,
        ),
        "agent_id": split(
            ["agent-1", "Agent_7", "A", "x" * 64, "a.b", "a b", "-a", "*", "x" * 65, "a\n", ""], validate_agent_id
        ),
        "task_id": split(["T-1", "01HZX", "x" * 64, "a.b", "_a", ">", "x" * 65, ""], validate_task_id),
        "clarification_capability": [
            {"agent": a, "capability": clarification_capability(a)} for a in ("client-1", "Agent_7")
        ],
    }


#: The decoders of the published message types, by schema stem.
_DECODERS: dict[str, Callable[[bytes], Any]] = {
    "task_record": decode_record,
    "work_item": decode_work_item,
    "agent_card": decode_card,
    "task_event": decode_event,
    "transition": decode_transition,
    "control_request": decode_control,
    "control_reply": decode_control_reply,
    "error_report": decode_error,
}


def _decode_vectors() -> list[dict[str, Any]]:
    """Bytes an implementation must accept (A) or refuse (R) on each message type."""
    w = _world()
    record = _builtins(w.open)
    item = _builtins(work_items(None, w.open, 0)[0])
    review_item = _builtins(work_items(w.rv_working, w.review, 2)[0])
    created = _builtins(
        TaskEvent(
            kind="created",
            task="T1",
            root="T1",
            capability="summarize.medical",
            actor="client-1",
            state="open",
            at=T0,
            record=w.open,
        )
    )
    inputs: list[tuple[str, str, Any]] = [
        ("task_record", "a valid record", record),
        (
            "task_record",
            "unknown fields are ignored, at any depth",
            {**record, "priority": "high", "budget": {**record["budget"], "currency": "EUR"}},
        ),
        ("task_record", "a newer minor version with extra fields", {**record, "sla": {"p99_s": 3}}),
        ("task_record", "a field of the wrong type", {**record, "epoch": "1"}),
        ("task_record", "a missing required field", {k: v for k, v in record.items() if k != "requester"}),
        ("task_record", "an unknown state", {**record, "state": "paused"}),
        ("task_record", "a reason outside the closed set", {**record, "state": "failed", "reason": "tired"}),
        ("task_record", "failed without a reason", {**record, "state": "failed"}),
        ("task_record", "working without an owner", {**record, "state": "working", "epoch": 1, "attempts": 1}),
        ("task_record", "working at epoch 0", {**record, "state": "working", "owner": "agent-a"}),
        ("task_record", "in review without a review policy", {**record, "state": "review"}),
        ("task_record", "a capability that is not a name", {**record, "capability": "summarize.*"}),
        ("task_record", "a negative epoch", {**record, "epoch": -1}),
        ("task_record", "a negative ticket", {**record, "ticket": -1}),
        ("task_record", "not an object", [record]),
        ("work_item", "a new task's work item (revision 0, the open record)", item),
        ("work_item", "a review item", review_item),
        (
            "work_item",
            "unknown fields are ignored, in the item and its record",
            {**item, "priority": 3, "record": {**item["record"], "zz_new": 1}},
        ),
        ("work_item", "revision 0 with a claimed record", {**item, "record": _builtins(w.working)}),
        (
            "work_item",
            "revision 0 with an open record past its first claim (a released task is in the bucket)",
            {**item, "record": _builtins(w.released)},
        ),
        ("work_item", "a review item at revision 0", {**review_item, "revision": 0}),
        ("work_item", "the record of another task", {**item, "task": "T9"}),
        ("work_item", "a task id that is not a name", {**item, "task": "T.1"}),
        ("work_item", "a queue capability that is not a name", {**item, "capability": "summarize.*"}),
        ("work_item", "an unknown kind", {**item, "kind": "steal"}),
        ("work_item", "a negative revision", {**item, "revision": -1}),
        ("work_item", "no record", {k: v for k, v in item.items() if k != "record"}),
        (
            "work_item",
            "a record that breaks an invariant (working without an owner)",
            {**item, "revision": 5, "record": {**item["record"], "state": "working", "epoch": 1, "attempts": 1}},
        ),
        ("agent_card", "a minimal card", {"id": "agent-a"}),
        ("agent_card", "a served capability that is not a name", {"id": "agent-a", "serves": ["Summarize"]}),
        ("agent_card", "capacity below one", {"id": "agent-a", "capacity": 0}),
        ("task_event", "a created event carrying the record", created),
        ("task_event", "an event carrying another task's record", {**created, "task": "T9"}),
        (
            "task_event",
            "an event carrying a record that breaks an invariant",
            {**created, "record": {**record, "state": "failed"}},
        ),
        ("transition", "a claim under a work item", {"kind": "claim", "actor": "agent-a", "ticket": 41}),
        ("transition", "a claim holding no work item", {"kind": "claim", "actor": "alice"}),
        ("transition", "a claim with a negative ticket", {"kind": "claim", "actor": "agent-a", "ticket": -1}),
        ("transition", "an unknown kind", {"kind": "steal", "actor": "agent-a"}),
        ("transition", "a kind of version 1 (reopen)", {"kind": "reopen", "actor": "agent-a", "epoch": 1}),
        ("transition", "no kind", {"actor": "agent-a"}),
        ("transition", "an owner event without epoch", {"kind": "finish", "actor": "agent-a"}),
        ("transition", "negative usage", {"kind": "charge", "actor": "agent-a", "epoch": 1, "usage": {"tokens": -1}}),
        ("control_request", "drain", {"action": "drain"}),
        ("control_request", "an unknown action", {"action": "reboot"}),
    ]
    out: list[dict[str, Any]] = []
    for message, name, doc in inputs:
        raw = json.dumps(doc, ensure_ascii=False)
        out.append({"name": name, "message": message, "input": raw, "expect": _verdict(message, raw)})
    raw_cases = [
        ("task_record", "not JSON", "{'id': 1}"),
        ("task_record", "truncated", json.dumps(record)[:-1]),
        ("task_record", "a number too large for a float", json.dumps(record)[:-1] + ', "deadline": 1e999}'),
        ("work_item", "truncated", json.dumps(item)[:-1]),
        ("transition", "empty", ""),
    ]
    for message, name, raw in raw_cases:
        out.append({"name": name, "message": message, "input": raw, "expect": _verdict(message, raw)})
    out += _number_vectors(w)
    return out


#: Integers versus floats on the wire, as JSON number tokens put into a record: an integer
#: field takes only a token without fraction or exponent; a float field takes any number.
_NUMBER_CASES: tuple[tuple[str, str, str], ...] = (
    ("epoch", "1", "an integer field: an integer token"),
    ("epoch", "1.0", "an integer field: a fraction, even .0, is a float"),
    ("epoch", "1e0", "an integer field: an exponent makes a float"),
    ("epoch", "1E+0", "an integer field: an exponent makes a float (upper case)"),
    ("hops_left", "-0", "an integer field: -0 is the integer 0"),
    ("epoch", "true", "an integer field: a boolean is not a number"),
    ("epoch", '"1"', "an integer field: a string is not a number"),
    ("hops_left", "32", "an integer field at its bound"),
    ("hops_left", "33", "an integer field over its bound"),
    ("ticket", "9007199254740993", "a stream sequence above 2^53: kept exactly (JavaScript's JSON.parse would not)"),
    ("claim_timeout_s", "10", "a float field: an integer token is a float"),
    ("claim_timeout_s", "1E+1", "a float field: an exponent"),
    ("claim_timeout_s", "0.5", "a float field: a fraction"),
    ("claim_timeout_s", "-0", "a float field: -0 is 0.0, not above its bound of 0"),
    ("claim_timeout_s", "1e999", "a float field: out of a double's range"),
    ("claim_timeout_s", "false", "a float field: a boolean is not a number"),
    ("created", "1700000000", "a timestamp as an integer token"),
)


def _number_vectors(w: _World) -> list[dict[str, Any]]:
    """Decode vectors on how numbers are judged: each puts one raw token into a record."""
    base = json.dumps(_builtins(_replace(w.working, ticket=41)))
    out: list[dict[str, Any]] = []
    for field, token, why in _NUMBER_CASES:
        raw, count = re.subn(rf'("{field}": )[^,}}]*', rf"\g<1>{token}", base, count=1)
        assert count == 1, field
        case: dict[str, Any] = {"name": f"{field} = {token}: {why}", "message": "task_record", "input": raw}
        case["expect"] = _verdict("task_record", raw)
        if case["expect"] == "accept":
            case["decoded"] = {field: msgspec.to_builtins(getattr(decode_record(raw.encode()), field))}
        out.append(case)
    return out


def _verdict(message: str, raw: str) -> str:
    try:
        _DECODERS[message](raw.encode())
    except RemoteProtocolError:
        return "refuse"
    return "accept"


# --- limit vectors ------------------------------------------------------------------------------

#: A character that takes 4 bytes in UTF-8: fills a text field to its character limit
#: with the most bytes, so the record limit is reachable without breaking a field's.
_WIDE = "\U0001f600"


def _fill(doc: Any, fills: Sequence[dict[str, Any]]) -> Any:
    """``doc`` with each fill applied: at ``path``, ``value``, or a string of ``count``
    copies of ``text``, or a list of ``count`` copies of ``repeat``."""
    out = json.loads(json.dumps(doc))
    for f in fills:
        *parents, last = f["path"]
        node = out
        for key in parents:
            node = node[key]
        if "value" in f:
            node[last] = f["value"]
        elif "text" in f:
            node[last] = f["text"] * f["count"]
        else:
            node[last] = [f["repeat"]] * f["count"]
    return out


def _compact(doc: Any) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def _bytes_fill(path: list[str], size: int) -> dict[str, Any]:
    """A JSON string whose encoding is ``size`` bytes (two of them quotes)."""
    return {"path": path, "text": "x", "count": size - 2}


def _limit_decode_cases(w: _World) -> list[tuple[str, str, Any, list[dict[str, Any]], str]]:
    """(name, message, template, fills, intended verdict): each limit at its bound and one over."""
    record = _builtins(w.open)
    working = _builtins(w.working)
    review = _builtins(w.review_one_vote)
    reworked = _builtins(w.reworked)
    item = _builtins(work_items(None, w.open, 0)[0])
    event = _builtins(
        TaskEvent(
            kind="created", task="T1", root="T1", capability="summarize.medical", actor="client-1", state="open", at=T0
        )
    )
    vote = review["votes"][0]
    veto = reworked["feedback"][0]
    slot = _builtins(w.review_held)["slots"][0]
    cases: list[tuple[str, str, Any, list[dict[str, Any]], str]] = []

    def both(name: str, message: str, doc: Any, at: list[dict[str, Any]], over: list[dict[str, Any]]) -> None:
        cases.append((f"{name} at the limit", message, doc, at, "accept"))
        cases.append((f"{name} one over the limit", message, doc, over, "refuse"))

    def sized(name: str, path: list[str], limit: int, doc: Any = record, message: str = "task_record") -> None:
        both(name, message, doc, [_bytes_fill(path, limit)], [_bytes_fill(path, limit + 1)])

    def counted(name: str, path: list[str | int], limit: int, doc: Any, **unit: Any) -> None:
        both(
            name,
            "task_record",
            doc,
            [{"path": path, **unit, "count": limit}],
            [{"path": path, **unit, "count": limit + 1}],
        )

    for doc_name, message, doc in (
        ("record", "task_record", record),
        ("work item", "work_item", item),
        ("event", "task_event", event),
        ("card", "agent_card", {"id": "agent-a"}),
    ):
        cases.append((f"a {doc_name} of version {MAJOR_VERSION}", message, {**doc, "v": MAJOR_VERSION}, [], "accept"))
        cases.append((f"a {doc_name} of version 99", message, {**doc, "v": 99}, [], "refuse"))
        cases.append((f"a {doc_name} of version 1", message, {**doc, "v": 1}, [], "refuse"))
    sized("data (encoded)", ["data"], MAX_DATA_BYTES)
    sized("result (encoded)", ["result"], MAX_RESULT_BYTES)
    sized("checkpoint (encoded)", ["checkpoint"], MAX_CHECKPOINT_BYTES)
    sized("a work item's record data (encoded)", ["record", "data"], MAX_DATA_BYTES, item, "work_item")
    # The whole record: every text field full of 4-byte characters, result and checkpoint
    # at their limits, and data filling the rest up to the record's limit.
    wide = [
        {"path": [f], "text": _WIDE, "count": n}
        for f, n in (
            ("instruction", MAX_INSTRUCTION_CHARS),
            ("criteria", MAX_CRITERIA_CHARS),
            ("error", MAX_ERROR_CHARS),
        )
    ]
    full = [*wide, _bytes_fill(["result"], MAX_RESULT_BYTES), _bytes_fill(["checkpoint"], MAX_CHECKPOINT_BYTES)]
    rest = MAX_RECORD_BYTES - len(_compact(_fill(record, [*full, _bytes_fill(["data"], 2)])).encode())
    both(
        "the record (encoded)",
        "task_record",
        record,
        [*full, _bytes_fill(["data"], rest + 2)],
        [*full, _bytes_fill(["data"], rest + 3)],
    )
    card_rest = MAX_CARD_BYTES - len(_compact({"id": "agent-a", "description": ""}).encode())
    both(
        "the card (encoded)",
        "agent_card",
        {"id": "agent-a"},
        [{"path": ["description"], "text": "x", "count": card_rest}],
        [{"path": ["description"], "text": "x", "count": card_rest + 1}],
    )
    for field, limit in (
        ("instruction", MAX_INSTRUCTION_CHARS),
        ("criteria", MAX_CRITERIA_CHARS),
        ("progress", MAX_PROGRESS_CHARS),
        ("error", MAX_ERROR_CHARS),
    ):
        counted(f"{field} (characters)", [field], limit, record, text=_WIDE)
    counted("tags", ["tags"], MAX_TAGS, record, repeat="cardiology")
    counted("a tag (characters)", ["tags", 0], MAX_TAG_CHARS, record, text="t")
    counted("children", ["children"], MAX_CHILDREN, working, repeat="T1-c1")
    counted("lineage", ["lineage"], MAX_LINEAGE, record, repeat="0123456789abcdef")
    counted("votes", ["votes"], MAX_VOTES, review, repeat=vote)
    counted("review slots", ["slots"], MAX_QUORUM, _builtins(w.review_held), repeat=slot)
    counted("feedback", ["feedback"], MAX_FEEDBACK, reworked, repeat=veto)
    counted("a veto's reasons", ["feedback", 0, "reasons"], MAX_REASONS, reworked, repeat="Too vague.")
    counted("a veto's reason (characters)", ["feedback", 0, "reasons", 0], MAX_REASON_CHARS, reworked, text="r")
    numbers: list[tuple[str, list[Any], float, float, Any]] = [
        ("hops_left", ["hops_left"], MAX_HOPS, MAX_HOPS + 1, record),
        ("max_lapses", ["max_lapses"], MAX_LAPSES, MAX_LAPSES + 1, record),
        ("lapses", ["lapses"], MAX_LAPSES, MAX_LAPSES + 1, record),
        ("reworks", ["reworks"], MAX_REWORKS, MAX_REWORKS + 1, record),
        ("review quorum", ["review", "quorum"], MAX_QUORUM, MAX_QUORUM + 1, review),
        ("review max_reworks", ["review", "max_reworks"], MAX_REWORKS, MAX_REWORKS + 1, review),
        ("claim_timeout_s", ["claim_timeout_s"], MAX_CLAIM_TIMEOUT_S, MAX_CLAIM_TIMEOUT_S + 1, record),
        (
            "review escalation_timeout_s",
            ["review", "escalation_timeout_s"],
            MAX_ESCALATION_TIMEOUT_S,
            MAX_ESCALATION_TIMEOUT_S + 1,
            review,
        ),
        ("deadline (seconds after created)", ["deadline"], T0 + MAX_DEADLINE_S, T0 + MAX_DEADLINE_S + 1, record),
    ]
    for name, path, at, over, doc in numbers:
        both(name, "task_record", doc, [{"path": path, "value": at}], [{"path": path, "value": over}])
    both(
        "card heartbeat_s",
        "agent_card",
        {"id": "agent-a"},
        [{"path": ["heartbeat_s"], "value": MAX_HEARTBEAT_S}],
        [{"path": ["heartbeat_s"], "value": MAX_HEARTBEAT_S + 1}],
    )
    review_item = _builtins(work_items(w.rv_working, w.review, 2)[0])
    for name, path, at in (
        ("a work item's slot", ["slot"], MAX_QUORUM - 1),
        ("a work item's round", ["round"], MAX_REWORKS),
    ):
        both(name, "work_item", review_item, [{"path": path, "value": at}], [{"path": path, "value": at + 1}])
    veto_event = _builtins(Veto(actor="critic-1", epoch=1, reasons=("Too vague.",)))
    both(
        "a veto's reasons (transition)",
        "transition",
        veto_event,
        [{"path": ["reasons"], "repeat": "Too vague.", "count": MAX_REASONS}],
        [{"path": ["reasons"], "repeat": "Too vague.", "count": MAX_REASONS + 1}],
    )
    renew = _builtins(Renew(actor="agent-a", epoch=1, progress=""))
    both(
        "a renewal's progress (transition)",
        "transition",
        renew,
        [{"path": ["progress"], "text": "p", "count": MAX_PROGRESS_CHARS}],
        [{"path": ["progress"], "text": "p", "count": MAX_PROGRESS_CHARS + 1}],
    )
    return cases


def _limit_write_cases(w: _World) -> list[dict[str, Any]]:
    """Writes at each limit (made) and one over (refused with ``LimitExceeded``)."""
    args = {
        "task_id": "T9",
        "capability": "summarize.medical",
        "instruction": "Summarize.",
        "requester": "client-1",
        "now": T0,
    }
    working = _builtins(w.working)
    review = _builtins(w.review)
    owner = {"actor": "agent-a", "epoch": 1}
    specs: list[tuple[str, str, Any, Any, str, list[Any], Any, Any]] = [
        # (name, rule, record, input, fill target, path, at, over); a fill value of
        # ("bytes", n) is a string whose encoding is n bytes, ("text", c, n) n copies of c.
        ("new task data (encoded)", "new_task", None, args, "args", ["data"], ("bytes", MAX_DATA_BYTES), None),
        (
            "new task instruction",
            "new_task",
            None,
            args,
            "args",
            ["instruction"],
            ("text", "i", MAX_INSTRUCTION_CHARS),
            None,
        ),
        ("new task criteria", "new_task", None, args, "args", ["criteria"], ("text", "c", MAX_CRITERIA_CHARS), None),
        ("new task tags", "new_task", None, args, "args", ["tags"], ("list", "t", MAX_TAGS), None),
        ("new task hops", "new_task", None, args, "args", ["hops"], MAX_HOPS, MAX_HOPS + 1),
        (
            "new task claim_timeout_s",
            "new_task",
            None,
            args,
            "args",
            ["claim_timeout_s"],
            MAX_CLAIM_TIMEOUT_S,
            MAX_CLAIM_TIMEOUT_S + 1,
        ),
        (
            "new task deadline",
            "new_task",
            None,
            args,
            "args",
            ["deadline"],
            T0 + MAX_DEADLINE_S,
            T0 + MAX_DEADLINE_S + 1,
        ),
        (
            "finish with a result (encoded)",
            "apply",
            working,
            {"kind": "finish", **owner},
            "event",
            ["result"],
            ("bytes", MAX_RESULT_BYTES),
            None,
        ),
        (
            "renew with a checkpoint (encoded)",
            "apply",
            working,
            {"kind": "renew", **owner},
            "event",
            ["checkpoint"],
            ("bytes", MAX_CHECKPOINT_BYTES),
            None,
        ),
        (
            "renew with progress",
            "apply",
            working,
            {"kind": "renew", **owner},
            "event",
            ["progress"],
            ("text", "p", MAX_PROGRESS_CHARS),
            None,
        ),
        (
            "fail with a message",
            "apply",
            working,
            {"kind": "fail", **owner},
            "event",
            ["message"],
            ("text", "m", MAX_ERROR_CHARS),
            None,
        ),
        (
            "cancel with a note",
            "apply",
            working,
            {"kind": "cancel", "actor": "client-1"},
            "event",
            ["note"],
            ("text", "n", MAX_ERROR_CHARS),
            None,
        ),
        (
            "veto with reasons",
            "apply",
            review,
            {"kind": "veto", "actor": "critic-1", "epoch": 1},
            "event",
            ["reasons"],
            ("list", "Too vague.", MAX_REASONS),
            None,
        ),
    ]
    out: list[dict[str, Any]] = []
    for name, rule, record, doc, target, path, at, over in specs:
        for where, value in (("at the limit", at), ("one over the limit", over)):
            fills = [_value_fill(path, value, at)]
            case: dict[str, Any] = {"name": f"{name} {where}", "rule": rule}
            if record is not None:
                case["record"] = record
                case["now"] = T0 + 30
            case[target] = doc
            case["fill"] = {target: fills}
            case["expect"] = _write_verdict(case)
            out.append(case)
    # A child beyond MAX_CHILDREN: the parent's list is full.
    full = {**working, "children": [f"T1-c{i}" for i in range(MAX_CHILDREN - 1)]}
    for where, child in (("at the limit", "T1-last"), ("one over the limit", None)):
        record = full if child is not None else {**full, "children": [*full["children"], "T1-last"]}
        case = {
            "name": f"add a child {where}",
            "rule": "apply",
            "record": record,
            "now": T0 + 30,
            "event": {"kind": "add_child", **owner, "child": "T1-new"},
            "fill": {},
        }
        case["expect"] = _write_verdict(case)
        out.append(case)
    return out


_EVENT_CLASSES: dict[str, Any] = {
    str(cls.__struct_config__.tag): cls
    for cls in (Claim, Renew, AddChild, Finish, Fail, Release, Reviewing, Approve, Veto, Charge, Cancel, Expire)
}


def _value_fill(path: list[Any], value: Any, at: Any) -> dict[str, Any]:
    """The fill that sets ``path`` to ``value``; ``None`` means one over ``at``."""
    spec = value if value is not None else (*at[:-1], at[-1] + 1)
    if isinstance(spec, tuple):
        if spec[0] == "bytes":
            return _bytes_fill(path, spec[1])
        if spec[0] == "text":
            return {"path": path, "text": spec[1], "count": spec[2]}
        return {"path": path, "repeat": spec[1], "count": spec[2]}
    return {"path": path, "value": spec}


def _write_verdict(case: dict[str, Any]) -> Any:
    fills = case["fill"]
    try:
        if case["rule"] == "new_task":
            kwargs = _fill(case["args"], fills.get("args", []))
            if "tags" in kwargs:
                kwargs["tags"] = tuple(kwargs["tags"])
            new = new_task(**kwargs)
        else:
            record = decode_record(_compact(case["record"]).encode())
            # Built without the decoder's checks: the write side must refuse what a
            # careless caller hands it, not only what the decoder would let through.
            fields = _fill(case["event"], fills.get("event", []))
            cls = _EVENT_CLASSES[fields.pop("kind")]
            event = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
            new = apply(record, event, case["now"])
    except LimitExceeded as exc:
        return {"error": "LimitExceeded", "field": exc.field}
    # The record made is what the transition rules say; only the verdict is the point here
    # (and a record at the limits is too large to repeat in every vector).
    assert new is not None
    return "made"


def limit_vectors() -> dict[str, Any]:
    """The limits (docs/PROTOCOL.md, section Limits) and vectors at and over each one."""
    w = _world()
    decode_cases = []
    for name, message, template, fills, intended in _limit_decode_cases(w):
        raw = _compact(_fill(template, fills)).encode()
        verdict = _verdict(message, raw.decode())
        assert verdict == intended, (name, verdict)
        decode_cases.append(
            {
                "name": name,
                "message": message,
                "template": template,
                "fill": fills,
                "bytes": len(raw),
                "expect": verdict,
            }
        )
    return {
        "limits": [{"field": lim.field, "limit": lim.limit, "unit": lim.unit, "read": lim.read} for lim in LIMITS],
        "decode": decode_cases,
        "write": _limit_write_cases(w),
    }


# --- docs -------------------------------------------------------------------------------------


def _diagram() -> str:
    edges: dict[tuple[str, str], list[str]] = {}
    for (state, kind), targets in TRANSITIONS.items():
        for target in targets:
            edges.setdefault((state, target), []).append(kind)
    lines = ["```mermaid", "stateDiagram-v2", "    [*] --> open: create"]
    for (state, target), kinds in edges.items():
        lines.append(f"    {state} --> {target}: {', '.join(kinds)}")
    for state in STATES:
        if state in TERMINAL_STATES:
            lines.append(f"    {state} --> [*]")
    lines += [
        "    note left of failed",
        "        any event but cancel at or after",
        "        the deadline ends a live task here",
        "        with reason deadline",
        "    end note",
        "```",
    ]
    return "\n".join(lines)


def _first_line(obj: Any) -> str:
    """The first paragraph of ``obj``'s docstring, on one line."""
    doc = inspect.cleandoc(obj.__doc__ or "")
    return " ".join(re.split(r"\n\s*\n", doc)[0].split()).replace("``", "`")


def _transition_table() -> str:
    by_kind = {cls.__struct_config__.tag: cls for cls in typing.get_args(Event)}
    rows = ["| State | Event | Leads to | What the event is |", "|---|---|---|---|"]
    for (state, kind), targets in TRANSITIONS.items():
        rows.append(f"| `{state}` | `{kind}` | {', '.join(f'`{t}`' for t in targets)} | {_first_line(by_kind[kind])} |")
    rows.append(
        "| `open`, `working`, `review` | any but `cancel`, at or after `deadline` | `failed` (`deadline`) | The deadline rule, checked before the row's own effect. |"
    )
    return "\n".join(rows)


def _refusal_table() -> str:
    rows = ["| Case | State | Event | Refusal |", "|---|---|---|---|"]
    for case in transition_vectors():
        expect = case["expect"]
        if "error" in expect and not case["name"].startswith("illegal: "):
            name = case["name"].split(": ", 1)[1]
            rows.append(f"| {name} | `{expect['state']}` | `{expect['event']}` | `{expect['error']}` |")
    illegal = sum(1 for p in itertools.product(STATES, EVENT_KINDS) if p not in TRANSITIONS)
    rows.append(f"| any of the {illegal} (state, event) pairs not in the table | | | `TransitionError` |")
    return "\n".join(rows)


def _type_of(prop: dict[str, Any]) -> str:
    """A short human reading of a JSON Schema property."""
    if "$ref" in prop:
        return f"`{prop['$ref'].rsplit('/', 1)[-1]}`"
    if "anyOf" in prop:
        return " or ".join(_type_of(branch) for branch in prop["anyOf"])
    if "enum" in prop:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    kind = prop.get("type")
    if kind is None:
        return "any JSON"
    if kind == "array":
        most = f", at most {prop['maxItems']}" if "maxItems" in prop else ""
        return f"array of {_type_of(prop['items'])}{most}"
    text = str(kind)
    bounds = [
        f"{op} {prop[key]}"
        for key, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="))
        if key in prop
    ]
    if "maxLength" in prop:
        bounds.append(f"at most {prop['maxLength']} characters")
    if bounds:
        text += f" ({', '.join(bounds)})"
    if "pattern" in prop:
        text += " (a name, see Names)"
    return text


def _fields(tp: Any) -> str:
    """The field table of a wire struct, from its JSON Schema."""
    body = json_schema(tp)
    name = tp.__name__
    definition = body["$defs"][name]
    rows = ["| Field | Type | Default |", "|---|---|---|"]
    for field, prop in definition["properties"].items():
        default = "required" if field in definition.get("required", ()) else f"`{json.dumps(prop.get('default'))}`"
        rows.append(f"| `{field}` | {_type_of(prop)} | {default} |")
    return "\n".join(rows)


def _json_block(obj: Any) -> str:
    return "```json\n" + msgspec.json.format(encode(obj), indent=2).decode() + "\n```"


def _messages() -> str:
    w = _world()
    names = Names()
    record = apply(w.review_one_vote, Reviewing(actor="critic-2", epoch=1, ticket=REVIEW_ITEM_2), T0 + 72)
    (item,) = work_items(None, w.open, 0)
    review_items = work_items(w.rv_working, w.review, 2)
    out: list[str] = []

    def section(title: str, where: str, obj: Any, after: str = "") -> None:
        out.append(
            f"#### {title}\n\n{where}\n\n{_fields(type(obj))}\n\n{_json_block(obj)}\n"
            + (f"\n{after}\n" if after else "")
        )

    section(
        "Task record",
        f"Value of `{names.task_key('T2')}` in `{names.tasks_bucket}`, republished on "
        f"`{names.record_subject('T2')}` (a task in review: one approval, one reviewer at work in "
        "the other slot, under review item 52).",
        record,
    )
    section(
        "Work item",
        f"Published on `{names.work_subject(item.capability)}` (stream `{names.work_stream}`, the queue of "
        f"`{item.capability}`) with headers `Nats-Msg-Id: {work_item_id(item)}` and "
        f"`{VERSION_HEADER}: {PROTOCOL_VERSION}`: task T1's work item as its requester makes it, carrying the "
        "open record (revision 0: the record is not in the tasks bucket yet).",
        item,
        "A review item has the same shape, with `kind` `review`, the reviewer capability as `capability`, "
        "the round and the slot: T2's first round has "
        + " and ".join(
            f"`{work_item_id(r)}` (round {r.round}, slot {r.slot}, on `{names.work_subject(r.capability)}`)"
            for r in review_items
        )
        + ".",
    )
    card = AgentCard(
        id="agent-a",
        role="medical summarizer",
        description="Summarizes clinical letters for family doctors.",
        kind="llm",
        serves=("summarize.medical",),
        delegates=("translate",),
        expertise=("cardiology",),
        capacity=4,
        load=1,
        tasks=("T1",),
        version="0.1.0",
        host="node-1",
        pid=4242,
        started=T0,
        completed=17,
        failed=1,
    )
    section("Agent card", f"Value of `{names.agent_key('agent-a')}` in `{names.agents_bucket}`.", card)
    event = TaskEvent(
        kind="approve",
        task="T2",
        root="T2",
        capability="summarize.medical",
        actor="critic-1",
        epoch=1,
        state="review",
        at=T0 + 70,
    )
    section(
        "Task event",
        f"Published on `{names.event_subject('T2', 'T2', 'approve')}` (stream `{names.events_stream}`), headers "
        f"`{VERSION_HEADER}: {PROTOCOL_VERSION}` and `Nats-Msg-Id: T2:5:approve` (task, record revision, kind). "
        "`created` events and the events of transitions that end a task carry the record in `record`.",
        event,
    )
    out.append(
        "#### Transitions\n\nOne object per event kind, tagged by `kind`: what an actor asks to do to a record "
        "(logged, replayed from the vectors, or sent by an agent in any language).\n"
    )
    for kind in EVENT_KINDS:
        record_for = w.review if kind in ("approve", "veto", "reviewing") else w.working
        sample = _sample_event(kind, record_for)
        out.append(f"`{kind}`: {_first_line(type(sample))}\n\n{_json_block(sample)}\n")
    try:
        decode_work_item(b'{"task":"T9","capability":"summarize","revision":"7"}')
    except RemoteProtocolError as exc:
        bad_item = str(exc)
    section(
        "Error report",
        f"Published on `{names.error_subject('agent-a')}`.",
        ErrorReport(
            agent="agent-a", subject=names.work_subject("summarize"), error=f"bad work item: {bad_item}", at=T0
        ),
    )
    section(
        "Not understood",
        f"Reply to a request on `{names.control_subject('agent-a')}` the agent cannot decode.",
        NotUnderstood(
            subject=names.control_subject("agent-a"),
            error="control request: Invalid enum value 'reboot' - at `$.action`",
            at=T0,
        ),
    )
    section("Control request", f"Request on `{names.control_subject('agent-a')}`.", ControlRequest(action="drain"))
    section(
        "Control reply",
        "The answer to a control request.",
        ControlReply(agent="agent-a", action="drain", draining=True, tasks=("T1",)),
    )
    for tp in (ReviewPolicy, Vote, ReviewSlot, Budget, Usage):
        out.append(f"#### {tp.__name__} (nested)\n\n{_first_line(tp) or 'Part of a task record.'}\n\n{_fields(tp)}\n")
    return "\n".join(out).rstrip()


def _names_table() -> str:
    pat, ex = Names("zzprefix"), Names()
    subs = {
        "zzprefix": "<prefix>",
        "ZZROOT": "<root>",
        "ZZTASK": "<task>",
        "ZZAGENT": "<agent>",
        "zzcap": "<capability>",
        "zzkind": "<kind>",
        "zzagent": "<agent, lowercased>",
    }

    def pattern(text: str) -> str:
        for key, value in subs.items():
            text = text.replace(key, value)
        return text

    rows: list[tuple[str, str, str]] = [
        ("Tasks bucket (JetStream KV)", pat.tasks_bucket, ex.tasks_bucket),
        ("Task record key (tasks bucket)", pat.task_key("ZZTASK"), ex.task_key("T1")),
        (
            "Republished record writes (RePublish destination of the tasks bucket)",
            pat.records_subjects,
            ex.records_subjects,
        ),
        ("Republished writes of one task's record", pat.record_subject("ZZTASK"), ex.record_subject("T1")),
        ("Work stream (JetStream, work-queue retention)", pat.work_stream, ex.work_stream),
        ("Work stream subjects", pat.work_subjects, ex.work_subjects),
        (
            "Queue subject of a capability (its work items)",
            pat.work_subject("zzcap"),
            ex.work_subject("summarize.medical"),
        ),
        (
            "Queue of a capability (durable pull consumer of the work stream)",
            "<capability with each . as ~>",
            ex.queue_consumer("summarize.medical"),
        ),
        ("Priority group of every queue", PRIORITY_GROUP, PRIORITY_GROUP),
        (
            "Pull request subject of a queue",
            _pull_subject(pat, "zzcap").replace("zzcap", "<queue>"),
            _pull_subject(ex, "summarize.medical"),
        ),
        (
            "Queue creation subject",
            _create_subject(pat, "zzcap").replace(".zzcap.", ".<queue>.", 1),
            _create_subject(ex, "summarize.medical"),
        ),
        ("Advisories of new queues", _consumer_created_advisory(pat), _consumer_created_advisory(ex)),
        ("Events stream", pat.events_stream, ex.events_stream),
        ("Events stream subjects", ", ".join(pat.events_subjects), ", ".join(ex.events_subjects)),
        (
            "Transition event subject",
            pat.event_subject("ZZROOT", "ZZTASK", "zzkind"),
            ex.event_subject("T1", "T1-c1", "claim"),
        ),
        ("Events of one task tree", pat.events_filter("ZZROOT"), ex.events_filter("T1")),
        ("Events of one task", pat.task_events_filter("ZZTASK", "ZZROOT"), ex.task_events_filter("T1-c1", "T1")),
        ("Directory bucket (JetStream KV)", pat.agents_bucket, ex.agents_bucket),
        ("Agent card key (directory bucket)", pat.agent_key("ZZAGENT"), ex.agent_key("agent-a")),
        ("Error reports of an agent", pat.error_subject("ZZAGENT"), ex.error_subject("agent-a")),
        ("Control endpoint of an agent", pat.control_subject("ZZAGENT"), ex.control_subject("agent-a")),
        ("Services API name (`$SRV.*`)", pat.service_name, ex.service_name),
        (
            "Clarification capability of an agent",
            clarification_capability("ZZAGENT"),
            clarification_capability("Client-1"),
        ),
        ("Version header", f"{VERSION_HEADER}: <major>", f"{VERSION_HEADER}: {PROTOCOL_VERSION}"),
    ]
    lines = ["| Name | Pattern | Example |", "|---|---|---|"]
    lines += [f"| {label} | `{pattern(p)}` | `{e}` |" for label, p, e in rows]
    lines += [
        "",
        "| Token | Grammar (full match) |",
        "|---|---|",
        f"| `<prefix>` | `{_PREFIX_RE.pattern}` |",
        f"| `<capability>` | `{_CAPABILITY_RE.pattern}` |",
        f"| `<agent>` | `{_AGENT_ID_RE.pattern}` |",
        f"| `<task>`, `<root>` | `{_TASK_ID_RE.pattern}` |",
        f"| `<kind>` | `{_KIND_RE.pattern}` |",
    ]
    return "\n".join(lines)


def _constants() -> str:
    defaults = TaskRecord(id="T", capability="x", instruction="", requester="c", root="T", created=0.0, updated=0.0)
    policy = ReviewPolicy()
    rows = [
        ("Protocol major version (`v` field, names, header)", PROTOCOL_VERSION),
        ("Largest message accepted, bytes", MAX_MESSAGE_BYTES),
        ("Default hop limit of a new task", DEFAULT_HOPS),
        ("Default lease of a queue (its consumer's `ack_wait`), seconds", DEFAULT_LEASE_S),
        ("Default claim timeout, seconds (`claim_timeout_s`)", DEFAULT_CLAIM_TIMEOUT_S),
        ("Default `max_lapses` (owners lost before the task fails)", defaults.max_lapses),
        (
            "Default review policy",
            f"`quorum` {policy.quorum}, `capability` `{policy.capability}`, `max_reworks` {policy.max_reworks}, "
            f"`escalation_timeout_s` {policy.escalation_timeout_s}",
        ),
        ("Priority group of every queue and pull", f"`{PRIORITY_GROUP}`"),
        ("Pull priorities (0 is served first)", f"0 to {MAX_PRIORITY}"),
        ("Terminal reasons", ", ".join(f"`{r}`" for r in REASONS)),
    ]
    assert defaults.claim_timeout_s == DEFAULT_CLAIM_TIMEOUT_S
    return "\n".join(["| Constant | Value |", "|---|---|", *(f"| {label} | {value} |" for label, value in rows)])


def _limits_table() -> str:
    lines = ["| Field | Limit | Unit | Refused on write by | Refused on read by | Why |", "|---|---|---|---|---|---|"]
    for lim in LIMITS:
        value = int(lim.limit) if lim.limit == int(lim.limit) else lim.limit
        lines.append(f"| `{lim.field}` | {value} | {lim.unit} | {lim.write} | {lim.read} | {lim.why} |")
    return "\n".join(lines)


def _setting(key: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and key in _DURATIONS and value % _NS == 0:
        return f"`{key}` {value // _NS} s"
    return f"`{key}` `{json.dumps(value)}`"


#: Settings that the JetStream API gives in nanoseconds (shown in seconds in the docs).
_DURATIONS = frozenset({"max_age", "duplicate_window", "subject_delete_marker_ttl", "ack_wait", "inactive_threshold"})


def _resources_table() -> str:
    vectors = _resource_vectors()
    lines = ["| Resource | MUST have | Reference default (an operator's choice) |", "|---|---|---|"]
    for stream in vectors["streams"]:
        must = "<br>".join(_setting(k, v) for k, v in stream["must"].items())
        default = "<br>".join(_setting(k, v) for k, v in stream["default"].items())
        lines.append(f"| stream `{stream['name']}`: {stream['what']} | {must} | {default} |")
    queue = vectors["queue"]
    must = "<br>".join(_setting(k, v) for k, v in queue["must"].items())
    default = "<br>".join(_setting(k, v) for k, v in queue["default"].items())
    lines.append(f"| consumer of `{queue['stream']}`: the queue of `{queue['capability']}` | {must} | {default} |")
    lines += ["", "| Write | Subject | Headers (exactly) |", "|---|---|---|"]
    for case in vectors["headers"]:
        headers = "<br>".join(f"`{k}: {v}`" for k, v in case["headers"].items())
        lines.append(f"| {case['what']} | `{case['subject']}` | {headers} |")
    return "\n".join(lines)


def doc_sections() -> dict[str, str]:
    """Generated section name -> its Markdown body."""
    return {
        "diagram": _diagram(),
        "transitions": _transition_table(),
        "refusals": _refusal_table(),
        "messages": _messages(),
        "names": _names_table(),
        "constants": _constants(),
        "limits": _limits_table(),
        "resources": _resources_table(),
    }


_SECTION_RE = re.compile(
    r"(<!-- BEGIN GENERATED: (?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- END GENERATED: (?P=name) -->)", re.DOTALL
)
_NOTICE = "<!-- generated by `python -m tools.spec` from the code; do not edit by hand -->\n"


def render_doc(text: str) -> tuple[str, list[str]]:
    """``text`` with every generated section rewritten; and the names of sections the
    generator knows that ``text`` has no markers for (or has twice)."""
    sections = doc_sections()
    seen: list[str] = []

    def fill(match: re.Match[str]) -> str:
        name = match.group("name")
        seen.append(name)
        if name not in sections:
            return match.group(0)
        return f"{match.group(1)}{_NOTICE}\n{sections[name]}\n\n{match.group(4)}"

    rendered = _SECTION_RE.sub(fill, text)
    problems = [name for name in sections if seen.count(name) != 1]
    problems += [f"{name} (unknown section)" for name in seen if name not in sections]
    return rendered, problems


# --- files ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    """One generated file: its path relative to the repository root and its text."""

    path: Path
    text: str


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def artifacts() -> list[Artifact]:
    """Every generated schema and vector file (the docs are rendered separately, since
    only parts of them are generated)."""
    out = [Artifact(SCHEMA_DIR / f"{stem}.json", _json(schema(stem))) for stem in SCHEMAS]
    about = (
        f"Conformance vectors of agent-mesh protocol v{MAJOR_VERSION}, generated by `python -m tools.spec` from the "
        "reference implementation. See docs/PROTOCOL.md, section Conformance."
    )
    out += [
        Artifact(
            VECTOR_DIR / "transitions.json",
            _json(
                {
                    "about": about,
                    "protocol": MAJOR_VERSION,
                    "how": "Decode `record` (TaskRecord) and `event` (transition), apply the event at wall-clock time "
                    "`now`; the result must equal `expect.record` field for field (the `error` and `progress` texts an "
                    "implementation writes itself are informative, see docs/PROTOCOL.md 5.1), or the event must be "
                    "refused with `expect.error` (`Fenced` is the kind of `TransitionError` for stale or foreign writers).",
                    "cases": transition_vectors(),
                }
            ),
        ),
        Artifact(
            VECTOR_DIR / "rules.json",
            _json({"about": about, "protocol": MAJOR_VERSION, "how": _RULES_HOW, **_rule_vectors()}),
        ),
        Artifact(VECTOR_DIR / "names.json", _json({"about": about, "protocol": MAJOR_VERSION, **_name_vectors()})),
        Artifact(
            VECTOR_DIR / "decode.json",
            _json({"about": about, "protocol": MAJOR_VERSION, "cases": _decode_vectors()}),
        ),
        Artifact(
            VECTOR_DIR / "resources.json",
            _json({"about": about, "protocol": MAJOR_VERSION, "how": _RESOURCES_HOW, **_resource_vectors()}),
        ),
        Artifact(
            VECTOR_DIR / "limits.json",
            _json({"about": about, "protocol": MAJOR_VERSION, "how": _LIMITS_HOW, **limit_vectors()}),
        ),
    ]
    return out


#: How to replay each list in limits.json (docs/PROTOCOL.md section Limits has the table).
_LIMITS_HOW: dict[str, str] = {
    "fill": "Inputs at a limit are large, so each is given as a `template` (or `args`, `event`) and a list of "
    "fills, applied in order: at `path` (keys and list indices) put `value`, or a string of `count` copies of "
    "`text`, or a list of `count` copies of `repeat`. A decode input is then the template's compact JSON "
    "encoding (no whitespace between tokens, non-ASCII characters unescaped), `bytes` long.",
    "decode": "Decode the filled input as `message`: accept it, or refuse it (RemoteProtocolError).",
    "write": "`new_task` with the filled `args`, or `apply` of the filled `event` to `record` at `now`: the "
    "record is made (`made`), or the write is refused before anything is written, naming the `field` over its "
    "limit (LimitExceeded, a LocalProtocolError).",
}

#: How to replay each list in rules.json (docs/PROTOCOL.md section 6 has the rules).
_RULES_HOW: dict[str, str] = {
    "specificity": "Matched tokens of `served` over tokens of `capability` when `served` is a token prefix of it, "
    "else 0.",
    "pull_priority": "`best_match`: the longest served capability that is a token prefix of `capability` (null if "
    "none); `priority`: tokens of `capability` it leaves unmatched, at most max_priority (null if none serves it).",
    "work_items": "After `old` (null: a new task) became `new` at `revision`, publish exactly `items` (equal field for "
    "field), each with the `Nats-Msg-Id` in `ids`.",
    "on_delivery": "Work item `item`, delivered to `agent` as stream sequence `ticket`, with the task's current "
    "`record`: `take` the transition shown (write it by compare-and-set), `drop` (acknowledge the item) or "
    "`hand_back` (return it to the queue). The `why` texts are informative.",
    "judge_waiting": "A party `actor` that saw `record` unchanged for `waited_s` seconds on its own clock, with "
    "`queue_active` telling whether any agent works on or waits at the task's queue, at wall-clock `now`: apply "
    "the `expect` transition, or (null) keep waiting.",
    "trail_gap": "A party that received an item its last holder never acknowledged, with the task's `record` at "
    "`revision` and the latest event the trail holds for it (`last_event`, null if none): null if the trail shows "
    "that write; else publish the `items` (their usual message ids), then an event of `kind` in the name of `actor` "
    "(carrying the record if it is terminal), with Nats-Msg-Id `<task>:<revision>:<kind>`.",
    "end_unreadable": "The record a party writes, by compare-and-set on the unreadable revision, over a stored record "
    "that does not decode: its own `copy` of the task ended at wall-clock `now`, `why` being the decoder's message "
    "(the first 300 characters are kept).",
    "agent_core": "An agent (`agent`: its id, what it serves, its capacity, whether it reviews), connected to the "
    "broker at monotonic time `connected_at` and holding the items in `holding`, receives `item` as stream "
    "sequence `ticket`, delivered for the `delivered`-th time from a queue whose lease is `lease_s`, at monotonic "
    "time `now`. `receive`: what it does on the item alone; `decide`: what it does given the task's `record` at "
    "`revision`, read afresh. `expect.action` names the action (refuse, give_back, renew_own, read_record, "
    "drop_item, work, review); its other fields are the action's. `why` texts are informative.",
    "fingerprint": "First 16 hex digits of SHA-256 over UTF-8 of capability + newline + `normalized`: the "
    "instruction split at runs of the code points in `fingerprint_whitespace`, the non-empty pieces joined with one "
    "space, then Unicode full case folding (CaseFolding.txt statuses C and F; no Turkic T, no normalization). `why` "
    "says what a case catches.",
    "fingerprint_whitespace": "Every code point the fingerprint treats as whitespace: Unicode's White_Space "
    "property plus U+001C..U+001F (Python's `str.split()`). JavaScript's `\\s` differs: it has U+FEFF and lacks "
    "U+001C..U+001F and U+0085.",
    "split_budget": "A child's budget from its parent's `budget`, `spent` and the `share`.",
    "delegate": "The child record `delegate(parent, **args)` makes (args by name; `now` is wall-clock time).",
    "ask": "The clarification child of `parent` (its instruction is the question, its id `child.id`, made by the "
    "parent's owner at `child.created`).",
    "traceparent": "W3C trace context: `make` builds one from a trace id and a span id; `child` keeps the parent's "
    "trace id with a new span id (null parent: null); `invalid` values are refused as a task's `trace` when a "
    "party makes a task; `header`: the `traceparent` header a message about a task with `trace` carries (null: "
    "none), since a record read from a peer may carry any string there.",
}


def _stale(root: Path, fresh: Sequence[Artifact]) -> list[Path]:
    """Generated-looking files that the generator no longer makes."""
    wanted = {a.path for a in fresh}
    found: list[Path] = []
    for folder in (SCHEMA_DIR, VECTOR_DIR):
        if (root / folder).is_dir():
            found += [p.relative_to(root) for p in sorted((root / folder).glob("*.json"))]
    return [p for p in found if p not in wanted]


def check(root: Path) -> list[str]:
    """What drifted from the code under ``root``: one line per problem, empty if none."""
    problems: list[str] = []
    fresh = artifacts()
    for artifact in fresh:
        target = root / artifact.path
        if not target.exists():
            problems.append(f"{artifact.path}: missing")
        elif target.read_text(encoding="utf-8") != artifact.text:
            problems.append(f"{artifact.path}: differs from the code")
    problems += [f"{path}: no longer generated" for path in _stale(root, fresh)]
    doc = root / DOC
    if not doc.exists():
        problems.append(f"{DOC}: missing")
    else:
        text = doc.read_text(encoding="utf-8")
        rendered, missing = render_doc(text)
        problems += [f"{DOC}: generated section {name} has no markers" for name in missing]
        fresh_sections = {m.group("name"): m.group(0) for m in _SECTION_RE.finditer(rendered)}
        for match in _SECTION_RE.finditer(text):
            name = match.group("name")
            if fresh_sections.get(name, match.group(0)) != match.group(0):
                problems.append(f"{DOC}: generated section {name} differs from the code")
    return problems


def write(root: Path) -> list[str]:
    """Write every artifact under ``root``; return what changed."""
    changed: list[str] = []
    fresh = artifacts()
    for artifact in fresh:
        target = root / artifact.path
        if not target.exists() or target.read_text(encoding="utf-8") != artifact.text:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(artifact.text, encoding="utf-8")
            changed.append(f"wrote {artifact.path}")
    for path in _stale(root, fresh):
        (root / path).unlink()
        changed.append(f"removed {path}")
    doc = root / DOC
    if doc.exists():
        text = doc.read_text(encoding="utf-8")
        rendered, missing = render_doc(text)
        if missing:
            raise SystemExit(f"{DOC}: no markers for generated sections {missing}")
        if rendered != text:
            doc.write_text(rendered, encoding="utf-8")
            changed.append(f"wrote {DOC}")
    else:
        changed.append(f"skipped {DOC} (missing)")
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.spec", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if an artifact drifted from the code"
    )
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent, help="repository root")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.root)
        for problem in problems:
            print(f"drift: {problem}", file=sys.stderr)
        if problems:
            print("run `python -m tools.spec` and review the diff", file=sys.stderr)
            return 1
        print("protocol artifacts are up to date")
        return 0
    for line in write(args.root) or ["protocol artifacts are up to date"]:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
