"""Conformance vectors of the rules other than the state machine (``protocol/vectors/rules.json``).

Each list's cases are data in ``tools/cases/`` (the file is named in each function); the
functions here run the protocol's rules on them and write what the rules give.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from protocol.core import AgentCore
from protocol.errors import LocalProtocolError
from protocol.rules import (
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
from protocol.types import Budget, TaskEvent, Usage

from .cases import T0, BadCase, Cases, arguments, keys, time, wire

__all__ = ["RULES_HOW", "action", "rule_vectors"]


def _decision(decision: Take | Drop | HandBack) -> dict[str, Any]:
    match decision:
        case Take(event=event):
            return {"take": wire(event)}
        case Drop(why=why):
            return {"drop": why}
        case HandBack(why=why):
            return {"hand_back": why}
    raise AssertionError(decision)  # pragma: no cover


def _routing(cases: Cases) -> dict[str, Any]:
    """routing.toml."""
    source = cases.file("routing")

    def one(case: dict[str, Any]) -> dict[str, Any]:
        keys(case, ("served", "capability"))
        return {**case, "specificity": specificity(case["served"], case["capability"])}

    def priority(case: dict[str, Any]) -> dict[str, Any]:
        keys(case, ("served", "capability"))
        served = tuple(case["served"])
        return {
            **case,
            "best_match": best_match(served, case["capability"]),
            "priority": pull_priority(served, case["capability"]),
        }

    return {"specificity": source.each("specificity", one), "pull_priority": source.each("pull_priority", priority)}


def _work_items(cases: Cases) -> list[dict[str, Any]]:
    """work_items.toml."""

    def one(case: dict[str, Any]) -> dict[str, Any]:
        keys(case, ("name", "new", "revision"), ("old",))
        old = cases.record(case["old"]) if "old" in case else None
        new = cases.record(case["new"])
        items = work_items(old, new, case["revision"])
        return {
            "name": case["name"],
            "old": None if old is None else wire(old),
            "new": wire(new),
            "revision": case["revision"],
            "items": [wire(i) for i in items],
            "ids": [work_item_id(i) for i in items],
        }

    return cases.file("work_items").each("case", one)


def _deliveries(cases: Cases) -> list[dict[str, Any]]:
    """on_delivery.toml."""

    def one(case: dict[str, Any]) -> dict[str, Any]:
        keys(case, ("name", "item", "record", "agent", "ticket"))
        item, record = cases.item(case["item"]), cases.record(case["record"])
        agent, ticket = case["agent"], case["ticket"]
        return {
            "name": case["name"],
            "item": wire(item),
            "record": wire(record),
            "agent": agent,
            "ticket": ticket,
            "expect": _decision(on_delivery(item, record, agent=agent, ticket=ticket)),
        }

    return cases.file("on_delivery").each("case", one)


def _waiting(cases: Cases) -> list[dict[str, Any]]:
    """judge_waiting.toml."""
    source = cases.file("judge_waiting")
    actor = source.value("actor", str)

    def one(case: dict[str, Any]) -> dict[str, Any]:
        keys(case, ("name", "record", "waited_s", "queue_active", "now"))
        record, now = cases.record(case["record"]), time(case["now"])
        waited_s, queue_active = float(case["waited_s"]), bool(case["queue_active"])
        event = judge_waiting(record, actor=actor, waited_s=waited_s, queue_active=queue_active, now=now)
        return {
            "name": case["name"],
            "record": wire(record),
            "actor": actor,
            "waited_s": waited_s,
            "queue_active": queue_active,
            "now": now,
            "expect": None if event is None else wire(event),
        }

    return source.each("case", one)


def _trail_gaps(cases: Cases) -> list[dict[str, Any]]:
    """trail_gap.toml."""

    def last_event(spec: dict[str, Any]) -> TaskEvent:
        keys(spec, ("kind", "record", "actor"))
        return task_event(spec["kind"], cases.record(spec["record"]), actor=spec["actor"])

    def one(case: dict[str, Any]) -> dict[str, Any]:
        keys(case, ("name", "record", "revision"), ("last_event",))
        record, revision = cases.record(case["record"]), case["revision"]
        last = last_event(case["last_event"]) if "last_event" in case else None
        gap = trail_gap(record, revision, last)
        expect = None
        if gap is not None:
            expect = {"kind": gap.kind, "actor": gap.actor, "items": [wire(i) for i in gap.items]}
        return {
            "name": case["name"],
            "record": wire(record),
            "revision": revision,
            "last_event": None if last is None else wire(last),
            "expect": expect,
        }

    return cases.file("trail_gap").each("case", one)


def _unreadable(cases: Cases) -> list[dict[str, Any]]:
    """end_unreadable.toml."""
    source = cases.file("end_unreadable")
    why = source.value("why", str)

    def one(case: dict[str, Any]) -> dict[str, Any]:
        keys(case, ("name", "copy", "now"))
        copy, now = cases.record(case["copy"]), time(case["now"])
        return {
            "name": case["name"],
            "copy": wire(copy),
            "why": why,
            "now": now,
            "expect": wire(end_unreadable(copy, why=why, now=now)),
        }

    return source.each("case", one)


def action(got: Any) -> dict[str, Any]:
    """An :class:`AgentCore` action as JSON: its class name, snake-cased, and fields."""
    name = re.sub(r"(?<!^)(?=[A-Z])", "_", type(got).__name__).lower()
    return {"action": name, **msgspec.json.decode(msgspec.json.encode(got))}


def _agent(agent: dict[str, Any], connected_at: float, holding: list[Any], lease_s: float) -> AgentCore:
    """The core of ``agent``, connected at ``connected_at``, holding each item of ``holding``
    since then, under a lease of ``lease_s`` and T1's claim timeout of 10 s."""
    core = AgentCore(
        agent=agent["agent"],
        serves=tuple(agent["serves"]),
        capacity=agent["capacity"],
        reviews=agent["reviews"],
        connected_at=connected_at,
    )
    for held in holding:
        keys(held, ("ticket", "task", "kind"))
        core.arrived()
        core.hold(
            held["ticket"],
            task=held["task"],
            kind=held["kind"],
            lease_s=lease_s,
            claim_timeout_s=10.0,
            now=connected_at,
        )
    return core


def _core(cases: Cases) -> list[dict[str, Any]]:
    """agent_core.toml: first on the item alone (``receive``), then, when the item was
    delivered before, on the record read afresh (``decide``)."""
    source = cases.file("agent_core")
    agent, lease_s, defaults = source.table("agent"), source.value("lease_s", float), source.table("defaults")

    def one(case: dict[str, Any]) -> dict[str, Any]:
        keys(
            case,
            ("name", "step", "item", "ticket", "delivered"),
            ("now", "connected_at", "holding", "record", "revision"),
        )
        connected_at = float(case.get("connected_at", defaults["connected_at"]))
        holding = case.get("holding", [])
        core, item = _agent(agent, connected_at, holding, lease_s), cases.item(case["item"])
        args = {"ticket": case["ticket"], "delivered": case["delivered"], "lease_s": lease_s}
        args["now"] = float(case.get("now", defaults["now"]))
        decided: dict[str, Any] = {}
        if case["step"] == "receive":
            got = core.receive(item, **args)
        elif case["step"] == "decide":
            record = cases.record(case["record"])
            got = core.decide(item, record, case["revision"], **args)
            decided = {"record": wire(record), "revision": case["revision"]}
        else:
            raise BadCase(f"step is receive or decide, not {case['step']!r}")
        return {
            "name": case["name"],
            "step": case["step"],
            "agent": agent,
            "connected_at": connected_at,
            "holding": holding,
            "item": wire(item),
            **decided,
            **args,
            "expect": action(got),
        }

    return source.each("case", one)


def _normalized(instruction: str) -> str:
    """The fingerprint's normalization, spelled out for the vectors (``fingerprint`` in
    protocol.rules is the rule; the tests check that the two agree)."""
    return " ".join(instruction.split()).casefold()


def _fingerprint_whitespace() -> list[str]:
    """Every code point that ``str.split()`` treats as whitespace, as ``U+XXXX`` (a sweep
    of every code point: code, not data)."""
    return [f"U+{c:04X}" for c in range(0x110000) if chr(c).isspace()]


def _delegation(cases: Cases) -> dict[str, Any]:
    """delegation.toml."""
    source = cases.file("delegation")

    def print_of(case: dict[str, Any]) -> dict[str, Any]:
        keys(case, ("capability", "instruction", "why"))
        c, i = case["capability"], case["instruction"]
        return {
            "capability": c,
            "instruction": i,
            "normalized": _normalized(i),
            "fingerprint": fingerprint(c, i),
            "why": case["why"],
        }

    def budget_of(case: dict[str, Any]) -> dict[str, Any]:
        keys(case, ("spent", "share"), ("budget",))
        budget = msgspec.convert(case["budget"], Budget) if "budget" in case else None
        used = msgspec.convert(case["spent"], Usage)
        got = split_budget(msgspec.structs.replace(cases.world["working"], budget=budget, spent=used), case["share"])
        return {
            "budget": None if budget is None else wire(budget),
            "spent": wire(used),
            "share": case["share"],
            "child_budget": None if got is None else wire(got),
        }

    base = source.table("delegate_args")

    def delegation(case: dict[str, Any]) -> dict[str, Any]:
        keys(case, ("name", "parent", "args"))
        own = {k: v for k, v in case["args"].items() if k not in base}
        args = arguments(delegate, {**own, **{k: case["args"].get(k, v) for k, v in base.items()}})
        parent = cases.record(case["parent"])
        return {"name": case["name"], "parent": wire(parent), "args": args, "child": wire(delegate(parent, **args))}

    question = source.table("ask")
    with source.case("ask"):
        keys(question, ("parent", "args"))
        parent = cases.record(question["parent"])
        child = ask(parent, **arguments(ask, question["args"]))
    return {
        "fingerprint": source.each("fingerprint", print_of),
        "fingerprint_whitespace": _fingerprint_whitespace(),
        "split_budget": source.each("split_budget", budget_of),
        "delegate": source.each("delegate", delegation),
        "ask": {"parent": wire(parent), "child": wire(child)},
    }


def _trace(cases: Cases) -> dict[str, Any]:
    """traceparent.toml."""
    source = cases.file("traceparent")
    span = source.value("child_span_id", str)

    def made(case: dict[str, Any]) -> dict[str, Any]:
        keys(case, ("trace_id", "span_id"))
        return {**case, "traceparent": traceparent(case["trace_id"], case["span_id"])}

    def refused(value: str) -> bool:
        try:
            new_task(task_id="T", capability="x", instruction="", requester="c", now=T0, trace=value)
        except LocalProtocolError:
            return True
        return False

    make = source.each("make", made)
    with source.case("invalid"):
        invalid = source.array("invalid")
        if taken := [value for value in invalid if not refused(value)]:
            raise BadCase(f"new_task takes {taken[0]!r} as a trace: it is not invalid")
    with source.case("make"):
        parent = make[0]["traceparent"]
    carried = [parent, child_traceparent(parent, span), None, *invalid, *source.array("other_traces")]
    return {
        "make": make,
        "header": [{"trace": value, "header": value if trace_id(value) is not None else None} for value in carried],
        "child": [
            {"parent": parent, "span_id": span, "child": child_traceparent(parent, span)},
            {"parent": None, "span_id": span, "child": None},
        ],
        "invalid": invalid,
    }


def rule_vectors(cases: Cases) -> dict[str, Any]:
    """Every list of rules.json, in the order it has them."""
    return {
        **_routing(cases),
        "work_items": _work_items(cases),
        "on_delivery": _deliveries(cases),
        "judge_waiting": _waiting(cases),
        "trail_gap": _trail_gaps(cases),
        "end_unreadable": _unreadable(cases),
        "agent_core": _core(cases),
        **_delegation(cases),
        "traceparent": _trace(cases),
    }


#: How to replay each list in rules.json (docs/PROTOCOL.md section 6 has the rules).
RULES_HOW: dict[str, str] = {
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
    "(carrying the record if it is terminal), with Nats-Msg-Id `<task>:<revision>:<kind>:<record_tag(record)>`.",
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
