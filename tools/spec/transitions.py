"""Conformance vectors of :func:`protocol.machine.apply` (``protocol/vectors/transitions.json``).

The cases are data, ``tools/cases/transitions.toml``; two sweeps stay code because they
are generated from the table itself: every (state, event) pair outside it, and the
fencing of each owner event.
"""

from __future__ import annotations

import itertools
from typing import Any

import msgspec

from protocol.errors import Fenced, TransitionError
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
from protocol.machine import TRANSITIONS, apply
from protocol.types import TERMINAL_STATES, TaskRecord, Usage

from .cases import T0, Cases, event, keys, time, wire

__all__ = ["STATES", "sample_event", "transition_vectors"]

#: Every state, in the order the docs list them.
STATES: tuple[str, ...] = ("open", "working", "review", "done", "failed", "cancelled")

#: The tickets of T1's work item and of T2's first review item (world.toml numbers them).
ITEM_T1, REVIEW_ITEM_1 = 41, 51


def sample_event(kind: str, record: TaskRecord, *, actor: str | None = None) -> Event:
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
        "charge": Charge(actor=owner, epoch=epoch, usage=Usage(tokens=1200, cost=0.01), note="turn 2: gpt-4o-mini"),
        "cancel": Cancel(actor=actor or "client-1", note="no longer needed"),
        "expire": Expire(actor=actor or "client-1", reason="no_agent"),
    }
    return events[kind]


def _case(name: str, record: TaskRecord, event: Event, now: float) -> dict[str, Any]:
    case: dict[str, Any] = {"name": name, "record": wire(record), "event": wire(event), "now": now}
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
        case["expect"] = {"record": wire(new)}
    return case


def _listed(cases: Cases, key: str) -> list[dict[str, Any]]:
    """The cases of the array ``key`` of transitions.toml."""

    def build(table: dict[str, Any]) -> dict[str, Any]:
        keys(table, ("name", "record", "event", "at"))
        return _case(table["name"], cases.record(table["record"]), event(table["event"]), time(table["at"]))

    return cases.file("transitions").each(key, build)


def _swept(cases: Cases) -> list[dict[str, Any]]:
    """Refusals generated from the table: every (state, event) pair outside it, and each
    owner event by a non-owner, with a stale epoch and by the previous owner."""
    w = cases.world
    later = w["open"].deadline + 3600
    out = []
    in_state = {state: w[state] for state in ("open", "working", "review", "done", "failed", "cancelled")}
    for state, kind in itertools.product(STATES, EVENT_KINDS):
        if (state, kind) not in TRANSITIONS:
            record = in_state[state]
            now = later if state in TERMINAL_STATES else T0 + 30
            out.append(_case(f"illegal: {kind} in {state}", record, sample_event(kind, record), now))
    working, taken_over = w["working"], w["taken_over"]
    for kind in ("renew", "add_child", "charge", "finish", "fail", "release"):
        out.append(
            _case(f"fenced: {kind} by a non-owner", working, sample_event(kind, working, actor="agent-b"), T0 + 20)
        )
        stale = msgspec.structs.replace(sample_event(kind, taken_over, actor="agent-b"), epoch=1)
        out.append(_case(f"fenced: {kind} with a stale epoch", taken_over, stale, T0 + 40))
        previous = msgspec.structs.replace(stale, actor="agent-a")
        out.append(_case(f"fenced: {kind} by the previous owner", taken_over, previous, T0 + 40))
    return out


def transition_vectors(cases: Cases | None = None) -> list[dict[str, Any]]:
    """Conformance cases for :func:`protocol.machine.apply`: every row of the table
    with every state it can lead to, the deadline rule, and every refusal."""
    cases = cases or Cases()
    out = _listed(cases, "transition") + _swept(cases) + _listed(cases, "refusal")
    _check_coverage(out)
    return out


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
