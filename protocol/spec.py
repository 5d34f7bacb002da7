"""Generate the protocol's published artifacts from the code, and check them for drift.

    python -m protocol.spec            # (re)write every artifact
    python -m protocol.spec --check    # exit 1, listing every artifact that drifted

The artifacts are what an implementer in another language works from:

- ``protocol/schema/*.json``: JSON Schemas of every wire message (``msgspec.json.schema``,
  its descriptions normalized with ``inspect.cleandoc``, plus the name patterns the
  decoders enforce);
- ``protocol/vectors/*.json``: conformance vectors: transitions (record + event + time
  -> next record, or the refusal), the other rules, names, and decoding;
- the generated sections of ``docs/PROTOCOL.md``, between ``<!-- BEGIN GENERATED: x -->``
  and ``<!-- END GENERATED: x -->``: the state diagram and transition table (from
  :data:`protocol.machine.TRANSITIONS`), refusals, message examples, names, constants.

Like the rest of the package this imports only the standard library and msgspec; unlike
the rest it reads and writes files (it is a build tool, not part of any agent).
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

from .codec import (
    MAX_MESSAGE_BYTES,
    decode_beat,
    decode_card,
    decode_control,
    decode_control_reply,
    decode_error,
    decode_event,
    decode_offer,
    decode_record,
    decode_transition,
    encode,
)
from .errors import Fenced, LocalProtocolError, RemoteProtocolError, TransitionError
from .events import (
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
    Reopen,
    Reviewing,
    Veto,
)
from .machine import TRANSITIONS, apply
from .names import (
    _AGENT_ID_RE,
    _CAPABILITY_RE,
    _KIND_RE,
    _PREFIX_RE,
    _TASK_ID_RE,
    BOARD_WATCH_SLOTS,
    MAJOR_VERSION,
    VERSION_HEADER,
    Names,
    clarification_capability,
    validate_agent_id,
    validate_capability,
    validate_task_id,
)
from .rules import (
    DEFAULT_CLAIM_WINDOW_S,
    DEFAULT_HOPS,
    DEFAULT_LEASE_S,
    ask,
    board_change,
    claim_delay,
    delegate,
    fingerprint,
    fit,
    new_task,
    specificity,
)
from .types import (
    PROTOCOL_VERSION,
    REASONS,
    TERMINAL_STATES,
    AgentCard,
    Budget,
    ControlReply,
    ControlRequest,
    ErrorReport,
    LeaseBeat,
    NotUnderstood,
    Offer,
    ReviewPolicy,
    ReviewSlot,
    TaskEvent,
    TaskRecord,
    Usage,
    Vote,
)

__all__ = [
    "SCHEMAS",
    "STATES",
    "Artifact",
    "artifacts",
    "json_schema",
    "schema",
    "transition_vectors",
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
    "offer": Offer,
    "agent_card": AgentCard,
    "task_event": TaskEvent,
    "transition": Event,
    "error_report": ErrorReport,
    "lease_beat": LeaseBeat,
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
    ("Offer", "task"): _TASK_ID_RE,
    ("Offer", "capability"): _CAPABILITY_RE,
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
    done: TaskRecord
    failed: TaskRecord
    cancelled: TaskRecord
    rv_working: TaskRecord
    review: TaskRecord
    review_one_vote: TaskRecord
    review_held: TaskRecord
    review_full: TaskRecord
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
    working = apply(open_, Claim(actor="agent-a"), T0 + 1)
    policy = ReviewPolicy(quorum=2, capability="review.medical", max_reworks=1)
    rv_open = _replace(open_, id="T2", root="T2", review=policy)
    rv_working = apply(rv_open, Claim(actor="agent-a"), T0 + 1)
    review = apply(rv_working, Finish(actor="agent-a", epoch=1, result={"summary": "Draft one."}), T0 + 60)
    review_one_vote = apply(review, Approve(actor="critic-1", epoch=1), T0 + 70)
    review_held = apply(review, Reviewing(actor="critic-1", epoch=1), T0 + 62)
    review_full = apply(review_held, Reviewing(actor="critic-2", epoch=1), T0 + 63)
    reworked = apply(review_one_vote, Veto(actor="critic-2", epoch=1, reasons=("Misses the dose change.",)), T0 + 80)
    reclaimed = apply(reworked, Claim(actor="agent-b"), T0 + 90)
    review_last_round = apply(reclaimed, Finish(actor="agent-b", epoch=2, result={"summary": "Draft two."}), T0 + 150)
    esc_policy = ReviewPolicy(quorum=1, capability="review.medical", max_reworks=0, escalate_to="human.review")
    esc_working = apply(_replace(open_, id="T3", root="T3", review=esc_policy), Claim(actor="agent-a"), T0 + 1)
    review_escalating = apply(esc_working, Finish(actor="agent-a", epoch=1, result="Draft."), T0 + 60)
    lapsed = apply(working, Reopen(actor="agent-b", epoch=1), T0 + 30)
    taken_over = apply(lapsed, Claim(actor="agent-b"), T0 + 31)
    twice = apply(apply(taken_over, Reopen(actor="agent-c", epoch=2), T0 + 60), Claim(actor="agent-c"), T0 + 61)
    return _World(
        open=open_,
        working=working,
        done=apply(working, Finish(actor="agent-a", epoch=1, result={"summary": "Done."}), T0 + 60),
        failed=apply(working, Fail(actor="agent-a", epoch=1, reason="error", message="model unavailable"), T0 + 60),
        cancelled=apply(open_, Cancel(actor="client-1", note="no longer needed"), T0 + 5),
        rv_working=rv_working,
        review=review,
        review_one_vote=review_one_vote,
        review_held=review_held,
        review_full=review_full,
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
        "claim": Claim(actor=actor or "agent-b"),
        "renew": Renew(actor=owner, epoch=epoch, progress="half way"),
        "add_child": AddChild(actor=owner, epoch=epoch, child="T1-c1"),
        "finish": Finish(actor=owner, epoch=epoch, result={"summary": "..."}),
        "fail": Fail(actor=owner, epoch=epoch, reason="error", message="tool crashed"),
        "release": Release(actor=owner, epoch=epoch, note="draining"),
        "reopen": Reopen(actor=actor or "agent-b", epoch=epoch),
        "reviewing": Reviewing(actor=actor or "critic-1", epoch=epoch),
        "approve": Approve(actor=actor or "critic-1", epoch=epoch),
        "veto": Veto(actor=actor or "critic-1", epoch=epoch, reasons=("Too vague.",)),
        "charge": Charge(actor=owner, epoch=epoch, usage=Usage(tokens=1200, cost=0.01)),
        "cancel": Cancel(actor=actor or "client-1", note="no longer needed"),
        "expire": Expire(actor=actor or "agent-b", reason="no_agent"),
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
    add("open/claim -> working", w.open, Claim(actor="agent-a"), T0 + 1)
    add("open/cancel -> cancelled", w.open, Cancel(actor="client-1", note="no longer needed"), T0 + 5)
    add("open/expire -> failed (no_agent)", w.open, Expire(actor="agent-b", reason="no_agent"), T0 + 11)
    add("open/expire -> failed (deadline)", w.open, Expire(actor="agent-b", reason="deadline"), late)
    add(
        "working/renew -> working",
        w.working,
        Renew(actor="agent-a", epoch=1, progress="page 3", checkpoint={"page": 3}),
        T0 + 5,
    )
    add("working/renew keeps progress and checkpoint when omitted", w.working, Renew(actor="agent-a", epoch=1), T0 + 5)
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
    add("working/reopen -> open (lease lapsed)", w.working, Reopen(actor="agent-b", epoch=1), T0 + 30)
    add(
        "working/reopen -> failed (error: max_lapses reached)",
        w.twice_lapsed,
        Reopen(actor="agent-a", epoch=3),
        T0 + 90,
    )
    add("working/cancel -> cancelled", w.working, Cancel(actor="client-1", note="no longer needed"), T0 + 20)
    add("working/expire -> failed (deadline)", w.working, Expire(actor="agent-b", reason="deadline"), later)
    add(
        "review/reviewing -> review (takes a free review slot)", w.review, Reviewing(actor="critic-1", epoch=1), T0 + 62
    )
    add(
        "review/reviewing -> review (the holder renews its slot)",
        w.review_held,
        Reviewing(actor="critic-1", epoch=1),
        T0 + 65,
    )
    add(
        "review/reviewing -> review (takes over a lapsed slot at the beat it saw)",
        w.review_full,
        Reviewing(actor="critic-3", epoch=1, takes="critic-1", beat=0),
        T0 + 90,
    )
    add(
        "review/reviewing -> review (a free slot is taken, the named holder keeps its own)",
        w.review_held,
        Reviewing(actor="critic-3", epoch=1, takes="critic-1", beat=0),
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
        Expire(actor="agent-b", reason="no_agent"),
        T0 + 600,
    )
    add("review/expire -> failed (deadline)", w.review, Expire(actor="agent-b", reason="deadline"), late)

    # The deadline rule overrides the table: any event but cancel, by anyone, ends a late task.
    add("deadline: open/claim at the deadline -> failed (deadline)", w.open, Claim(actor="agent-a"), late)
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
    add("fenced: reopen with a stale epoch", w.taken_over, Reopen(actor="agent-c", epoch=1), T0 + 40)
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
    add("refused: the author takes a review slot", w.review, Reviewing(actor="agent-a", epoch=1), T0 + 62)
    add(
        "refused: a reviewer that voted takes a slot again",
        w.review_one_vote,
        Reviewing(actor="critic-1", epoch=1),
        T0 + 75,
    )
    add("fenced: a slot taken on another epoch", w.review, Reviewing(actor="critic-1", epoch=0), T0 + 62)
    add("fenced: a slot taken when every slot is taken", w.review_full, Reviewing(actor="critic-3", epoch=1), T0 + 70)
    renewed = apply(w.review_full, Reviewing(actor="critic-1", epoch=1), T0 + 65)
    add(
        "fenced: a takeover of a slot renewed since it was observed",
        renewed,
        Reviewing(actor="critic-3", epoch=1, takes="critic-1", beat=0),
        T0 + 90,
    )
    add(
        "fenced: a takeover naming a reviewer without a slot",
        w.review_full,
        Reviewing(actor="critic-3", epoch=1, takes="critic-9", beat=0),
        T0 + 90,
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
    taken_over = apply(w.review_full, Reviewing(actor="critic-3", epoch=1, takes="critic-1", beat=0), T0 + 90)
    add(
        "fenced: the vote of a holder whose slot was taken over",
        taken_over,
        Approve(actor="critic-1", epoch=1),
        T0 + 95,
    )
    add("refused: a veto with a blank reason", w.review, Veto(actor="critic-1", epoch=1, reasons=("ok", "  ")), T0 + 70)
    add(
        "refused: expire(deadline) before the deadline",
        w.working,
        Expire(actor="agent-b", reason="deadline"),
        late - 0.001,
    )
    add(
        "refused: expire(deadline) of a task without deadline",
        _replace(w.open, deadline=None),
        Expire(actor="agent-b", reason="deadline"),
        later,
    )
    add("refused: expire(no_agent) of a held task", w.working, Expire(actor="agent-b", reason="no_agent"), T0 + 20)
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


def _rule_vectors() -> dict[str, Any]:
    w = _world()
    fit_inputs: list[dict[str, Any]] = [
        {"served": ["summarize"], "capability": "summarize"},
        {"served": ["summarize"], "capability": "summarize.medical"},
        {"served": ["summarize"], "capability": "summarizex"},
        {"served": ["summarize.medical"], "capability": "summarize"},
        {"served": ["summarize", "summarize.medical"], "capability": "summarize.medical.cardiology"},
        {"served": ["summarize.medical"], "capability": "summarize.medical", "load": 3, "capacity": 4},
        {"served": ["summarize.medical"], "capability": "summarize.medical", "load": 4, "capacity": 4},
        {
            "served": ["summarize.medical"],
            "capability": "summarize.medical",
            "tags": ["cardiology", "renal"],
            "expertise": ["cardiology"],
        },
        {"served": ["summarize.medical"], "capability": "summarize.medical", "completed": 9, "failed": 1},
        {"served": ["a.b.c.d"], "capability": "a.b.c.d", "load": 9, "capacity": 10, "tags": ["x"], "failed": 50},
        {"served": ["a.b.c"], "capability": "a.b.c.d", "tags": ["x"], "expertise": ["x"], "completed": 1000},
    ]
    fits = []
    for args in fit_inputs:
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
        value = fit(**kwargs)
        fits.append({"input": args, "fit": value, "delay": claim_delay(value) if value > 0 else None})
    delays = [
        {"fit": f, "window": window, "jitter": jitter, "delay": claim_delay(f, window=window, jitter=jitter)}
        for f, window, jitter in ((1.0, 0.2, 0.0), (0.5, 0.2, 0.0), (0.5, 0.2, 0.5), (0.25, 1.0, 0.999))
    ]
    specificities = [
        {"served": s, "capability": c, "specificity": specificity(s, c)}
        for s, c in (("a", "a"), ("a", "a.b"), ("a.b", "a.b.c.d"), ("a", "ab"), ("a.b", "a"), ("a.c", "a.b.c"))
    ]
    fingerprints = [
        {"capability": c, "instruction": i, "fingerprint": fingerprint(c, i)}
        for c, i in (
            ("summarize.medical", "Summarize the letter."),
            ("summarize.medical", "  summarize   THE letter. "),
            ("translate", "Summarize the letter."),
            ("x", ""),
        )
    ]
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
    delegation("refused: hop_limit at zero hops", hop0, capability="translate", instruction="x", **base)
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
    boards = []
    for name, old, new, revision in (
        ("created: offered under its capability", None, w.open, 1),
        ("claimed: re-offered as working (observers watch the lease)", w.open, w.working, 2),
        ("renewed: nothing to broadcast", w.working, apply(w.working, Renew(actor="agent-a", epoch=1), T0 + 5), 3),
        ("in review: offered to the reviewers, withdrawn from the workers", w.rv_working, w.review, 4),
        ("one vote, quorum not reached: nothing to broadcast", w.review, w.review_one_vote, 5),
        ("a review slot taken, one still free: nothing to broadcast", w.review, w.review_held, 5),
        ("the last review slot taken: offered as full (reviewers stop starting)", w.review_held, w.review_full, 6),
        (
            "a slot renewed: nothing to broadcast",
            w.review_full,
            apply(w.review_full, Reviewing(actor="critic-1", epoch=1), T0 + 65),
            7,
        ),
        (
            "a slot given back: on offer to reviewers again",
            w.review_full,
            apply(w.review_full, Reviewing(actor="critic-2", epoch=1, release=True), T0 + 70),
            7,
        ),
        ("done: withdrawn", w.working, w.done, 6),
    ):
        change = board_change(old, new, revision)
        boards.append(
            {
                "name": name,
                "old": None if old is None else _builtins(old),
                "new": _builtins(new),
                "revision": revision,
                "put": {k: _builtins(v) for k, v in change.put.items()},
                "delete": list(change.delete),
            }
        )
    return {
        "fit": fits,
        "claim_delay": delays,
        "specificity": specificities,
        "fingerprint": fingerprints,
        "delegate": delegations,
        "ask": {"parent": _builtins(w.working), "child": _builtins(question)},
        "board": boards,
    }


def _name_vectors() -> dict[str, Any]:
    def all_names(prefix: str) -> dict[str, Any]:
        n = Names(prefix)
        return {
            "prefix": prefix,
            "tasks_bucket": n.tasks_bucket,
            "agents_bucket": n.agents_bucket,
            "events_stream": n.events_stream,
            "events_subjects": list(n.events_subjects),
            "service_name": n.service_name,
            "task_key": {"task": "T-1", "key": n.task_key("T-1")},
            "offer_key": {
                "capability": "summarize.medical",
                "task": "T-1",
                "key": n.offer_key("summarize.medical", "T-1"),
            },
            "offer_filter": {"capability": "summarize", "filter": n.offer_filter("summarize")},
            "agent_key": {"agent": "Agent_7", "key": n.agent_key("Agent_7")},
            "watch_slot_key": {"capability": "summarize", "slot": 2, "key": n.watch_slot_key("summarize", 2)},
            "beat_subject": {
                "task": "T-1",
                "capability": "summarize.medical",
                "subject": n.beat_subject("T-1", "summarize.medical"),
            },
            "event_subject": {
                "root": "R",
                "task": "T-1",
                "kind": "add_child",
                "subject": n.event_subject("R", "T-1", "add_child"),
            },
            "events_filter": {"root": "R", "filter": n.events_filter("R")},
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


def _decode_vectors() -> list[dict[str, Any]]:
    """Bytes an implementation must accept (A) or refuse (R) on each message type."""
    w = _world()
    record = _builtins(w.open)
    decoders: dict[str, Callable[[bytes], Any]] = {
        "task_record": decode_record,
        "offer": decode_offer,
        "agent_card": decode_card,
        "task_event": decode_event,
        "transition": decode_transition,
        "control_request": decode_control,
        "control_reply": decode_control_reply,
        "error_report": decode_error,
        "lease_beat": decode_beat,
    }
    inputs: list[tuple[str, str, Any]] = [
        ("task_record", "a valid record", record),
        (
            "task_record",
            "unknown fields are ignored, at any depth",
            {**record, "priority": "high", "budget": {**record["budget"], "currency": "EUR"}},
        ),
        ("task_record", "a newer minor version with extra fields", {**record, "v": 1, "sla": {"p99_s": 3}}),
        ("task_record", "a field of the wrong type", {**record, "epoch": "1"}),
        ("task_record", "a missing required field", {k: v for k, v in record.items() if k != "requester"}),
        ("task_record", "an unknown state", {**record, "state": "paused"}),
        ("task_record", "a reason outside the closed set", {**record, "state": "failed", "reason": "tired"}),
        ("task_record", "failed without a reason", {**record, "state": "failed"}),
        ("task_record", "working without an owner", {**record, "state": "working", "epoch": 1, "attempts": 1}),
        ("task_record", "in review without a review policy", {**record, "state": "review"}),
        ("task_record", "a capability that is not a name", {**record, "capability": "summarize.*"}),
        ("task_record", "a negative epoch", {**record, "epoch": -1}),
        ("task_record", "not an object", [record]),
        ("offer", "a valid offer", {"task": "T1", "capability": "summarize.medical", "revision": 7}),
        ("offer", "a task id that is not a name", {"task": "T.1", "capability": "summarize", "revision": 7}),
        ("agent_card", "a minimal card", {"id": "agent-a"}),
        ("agent_card", "a served capability that is not a name", {"id": "agent-a", "serves": ["Summarize"]}),
        ("agent_card", "capacity below one", {"id": "agent-a", "capacity": 0}),
        ("transition", "a claim", {"kind": "claim", "actor": "agent-a"}),
        ("transition", "an unknown kind", {"kind": "steal", "actor": "agent-a"}),
        ("transition", "no kind", {"actor": "agent-a"}),
        ("transition", "an owner event without epoch", {"kind": "finish", "actor": "agent-a"}),
        ("transition", "negative usage", {"kind": "charge", "actor": "agent-a", "epoch": 1, "usage": {"tokens": -1}}),
        ("lease_beat", "a beat", {"task": "T1", "revision": 42, "epoch": 2, "owner": "agent-a"}),
        ("lease_beat", "an owner that is not a name", {"task": "T1", "revision": 42, "epoch": 2, "owner": "a b"}),
        ("lease_beat", "revision zero", {"task": "T1", "revision": 0, "epoch": 2, "owner": "agent-a"}),
        ("control_request", "drain", {"action": "drain"}),
        ("control_request", "an unknown action", {"action": "reboot"}),
    ]
    out: list[dict[str, Any]] = []
    for message, name, doc in inputs:
        raw = json.dumps(doc, ensure_ascii=False)
        try:
            decoders[message](raw.encode())
        except RemoteProtocolError:
            verdict = "refuse"
        else:
            verdict = "accept"
        out.append({"name": name, "message": message, "input": raw, "expect": verdict})
    raw_cases = [
        ("task_record", "not JSON", "{'id': 1}"),
        ("task_record", "truncated", json.dumps(record)[:-1]),
        ("task_record", "a number too large for a float", json.dumps(record)[:-1] + ', "deadline": 1e999}'),
        ("transition", "empty", ""),
    ]
    for message, name, raw in raw_cases:
        try:
            decoders[message](raw.encode())
        except RemoteProtocolError:
            verdict = "refuse"
        else:
            verdict = "accept"
        out.append({"name": name, "message": message, "input": raw, "expect": verdict})
    return out


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
        return f"array of {_type_of(prop['items'])}"
    text = str(kind)
    bounds = [
        f"{op} {prop[key]}"
        for key, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="))
        if key in prop
    ]
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
    record = apply(w.review_one_vote, Reviewing(actor="critic-2", epoch=1), T0 + 72)
    offer = board_change(w.rv_working, w.review, 41).put["review.medical"]
    out: list[str] = []

    def section(title: str, where: str, obj: Any) -> None:
        out.append(f"#### {title}\n\n{where}\n\n{_fields(type(obj))}\n\n{_json_block(obj)}\n")

    section(
        "Task record",
        f"Value of `{names.task_key('T2')}` in `{names.tasks_bucket}` (a task in review: one approval, one reviewer at work in the other slot).",
        record,
    )
    section("Offer", f"Value of `{names.offer_key('review.medical', 'T2')}` in `{names.tasks_bucket}`.", offer)
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
        f"Published on `{names.event_subject('T2', 'T2', 'approve')}` (stream `{names.events_stream}`), header `{VERSION_HEADER}: {PROTOCOL_VERSION}`.",
        event,
    )
    out.append(
        "#### Transitions\n\nOne object per event kind, tagged by `kind`: what an actor asks to do to a record "
        "(logged, replayed from the vectors, or sent by an agent in any language).\n"
    )
    for kind in EVENT_KINDS:
        record_for = w.review if kind in ("approve", "veto") else w.working
        out.append(
            f"`{kind}`: {_first_line(type(_sample_event(kind, record_for)))}\n\n{_json_block(_sample_event(kind, record_for))}\n"
        )
    section(
        "Error report",
        f"Published on `{names.error_subject('agent-a')}`.",
        ErrorReport(
            agent="agent-a",
            subject="",
            key=names.offer_key("summarize", "T9"),
            error="offer: Expected `int`, got `str` - at `$.revision`",
            at=T0,
        ),
    )
    section(
        "Lease beat",
        f"Published (core NATS, not stored) on `{names.beat_subject('T1', 'summarize')}` after each renewal.",
        LeaseBeat(task="T1", revision=42, epoch=2, owner="agent-a"),
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
        ("Directory bucket (JetStream KV)", pat.agents_bucket, ex.agents_bucket),
        ("Events stream", pat.events_stream, ex.events_stream),
        ("Events stream subjects", ", ".join(pat.events_subjects), ", ".join(ex.events_subjects)),
        ("Task record key (tasks bucket)", pat.task_key("ZZTASK"), ex.task_key("T1")),
        ("Offer key (tasks bucket)", pat.offer_key("zzcap", "ZZTASK"), ex.offer_key("summarize.medical", "T1")),
        ("Offer watch filter of a served capability", pat.offer_filter("zzcap"), ex.offer_filter("summarize")),
        ("Agent card key (directory bucket)", pat.agent_key("ZZAGENT"), ex.agent_key("agent-a")),
        (
            "Board watch slot key (directory bucket)",
            pat.watch_slot_key("zzcap", 0)[:-1] + f"<slot: 0..{BOARD_WATCH_SLOTS - 1}>",
            ex.watch_slot_key("summarize", 0),
        ),
        (
            "Transition event subject",
            pat.event_subject("ZZROOT", "ZZTASK", "zzkind"),
            ex.event_subject("T1", "T1-c1", "claim"),
        ),
        ("Events of one task tree", pat.events_filter("ZZROOT"), ex.events_filter("T1")),
        ("Error reports of an agent", pat.error_subject("ZZAGENT"), ex.error_subject("agent-a")),
        ("Control endpoint of an agent", pat.control_subject("ZZAGENT"), ex.control_subject("agent-a")),
        ("Work subject (nudges) of a capability", pat.work_subject("zzcap"), ex.work_subject("summarize.medical")),
        ("Lease beat subject of a task", pat.beat_subject("ZZTASK", "zzcap"), ex.beat_subject("T1", "summarize")),
        (
            "Lease beats a served capability observes",
            ", ".join(pat.beat_filters("zzcap")),
            ", ".join(ex.beat_filters("summarize")),
        ),
        ("Lease beats of one task", pat.task_beats("ZZTASK"), ex.task_beats("T1")),
        ("Nudge queue group of a served capability", pat.work_queue("zzcap"), ex.work_queue("summarize")),
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
        ("Default lease, seconds (`lease_s`)", DEFAULT_LEASE_S),
        ("Default claim timeout, seconds (`claim_timeout_s`)", defaults.claim_timeout_s),
        ("Default `max_lapses` (owners lost before the task fails)", defaults.max_lapses),
        (
            "Default review policy",
            f"`quorum` {policy.quorum}, `capability` `{policy.capability}`, `max_reworks` {policy.max_reworks}",
        ),
        ("Default contention window, seconds", DEFAULT_CLAIM_WINDOW_S),
        ("Terminal reasons", ", ".join(f"`{r}`" for r in REASONS)),
    ]
    return "\n".join(["| Constant | Value |", "|---|---|", *(f"| {label} | {value} |" for label, value in rows)])


def doc_sections() -> dict[str, str]:
    """Generated section name -> its Markdown body."""
    return {
        "diagram": _diagram(),
        "transitions": _transition_table(),
        "refusals": _refusal_table(),
        "messages": _messages(),
        "names": _names_table(),
        "constants": _constants(),
    }


_SECTION_RE = re.compile(
    r"(<!-- BEGIN GENERATED: (?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- END GENERATED: (?P=name) -->)", re.DOTALL
)
_NOTICE = "<!-- generated by `python -m protocol.spec` from the code; do not edit by hand -->\n"


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
        f"Conformance vectors of agent-mesh protocol v{MAJOR_VERSION}, generated by `python -m protocol.spec` from the "
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
        Artifact(VECTOR_DIR / "rules.json", _json({"about": about, "protocol": MAJOR_VERSION, **_rule_vectors()})),
        Artifact(VECTOR_DIR / "names.json", _json({"about": about, "protocol": MAJOR_VERSION, **_name_vectors()})),
        Artifact(
            VECTOR_DIR / "decode.json",
            _json({"about": about, "protocol": MAJOR_VERSION, "cases": _decode_vectors()}),
        ),
    ]
    return out


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
        prog="python -m protocol.spec", description=__doc__.split("\n\n")[0] if __doc__ else None
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
            print("run `python -m protocol.spec` and review the diff", file=sys.stderr)
            return 1
        print("protocol artifacts are up to date")
        return 0
    for line in write(args.root) or ["protocol artifacts are up to date"]:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
