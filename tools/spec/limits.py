"""Limit vectors (``protocol/vectors/limits.json``): each limit of ``protocol.limits.LIMITS``
at its bound and one over, on decode and on write.

These cases stay code, not data: each is computed from a limit's value (a string of
exactly that many bytes, a list one longer, the record's rest filled to its limit), so a
table of them would only repeat the limits table and drift from it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from protocol.codec import decode_record
from protocol.events import (
    AddChild,
    Approve,
    Cancel,
    Charge,
    Claim,
    Expire,
    Fail,
    Finish,
    Release,
    Renew,
    Reviewing,
    Veto,
)
from protocol.limits import (
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
from protocol.machine import apply
from protocol.names import MAJOR_VERSION
from protocol.rules import new_task
from protocol.types import TaskEvent

from .cases import T0, Cases, World, wire
from .decode import verdict

__all__ = ["LIMITS_HOW", "limit_vectors"]

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


def _limit_decode_cases(w: World) -> list[tuple[str, str, Any, list[dict[str, Any]], str]]:
    """(name, message, template, fills, intended verdict): each limit at its bound and one over."""
    record = wire(w["open"])
    working = wire(w["working"])
    review = wire(w["review_one_vote"])
    reworked = wire(w["reworked"])
    item = wire(w["t1_item"])
    event = wire(
        TaskEvent(
            kind="created", task="T1", root="T1", capability="summarize.medical", actor="client-1", state="open", at=T0
        )
    )
    vote = review["votes"][0]
    veto = reworked["feedback"][0]
    slot = wire(w["review_held"])["slots"][0]
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
    counted("review slots", ["slots"], MAX_QUORUM, wire(w["review_held"]), repeat=slot)
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
    review_item = wire(w["t2_review_1"])
    for name, path, at in (
        ("a work item's slot", ["slot"], MAX_QUORUM - 1),
        ("a work item's round", ["round"], MAX_REWORKS),
    ):
        both(name, "work_item", review_item, [{"path": path, "value": at}], [{"path": path, "value": at + 1}])
    veto_event = wire(Veto(actor="critic-1", epoch=1, reasons=("Too vague.",)))
    both(
        "a veto's reasons (transition)",
        "transition",
        veto_event,
        [{"path": ["reasons"], "repeat": "Too vague.", "count": MAX_REASONS}],
        [{"path": ["reasons"], "repeat": "Too vague.", "count": MAX_REASONS + 1}],
    )
    renew = wire(Renew(actor="agent-a", epoch=1, progress=""))
    both(
        "a renewal's progress (transition)",
        "transition",
        renew,
        [{"path": ["progress"], "text": "p", "count": MAX_PROGRESS_CHARS}],
        [{"path": ["progress"], "text": "p", "count": MAX_PROGRESS_CHARS + 1}],
    )
    return cases


def _limit_write_cases(w: World) -> list[dict[str, Any]]:
    """Writes at each limit (made) and one over (refused with ``LimitExceeded``)."""
    args = {
        "task_id": "T9",
        "capability": "summarize.medical",
        "instruction": "Summarize.",
        "requester": "client-1",
        "now": T0,
    }
    working = wire(w["working"])
    review = wire(w["review"])
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


def limit_vectors(cases: Cases | None = None) -> dict[str, Any]:
    """The limits (docs/PROTOCOL.md, section Limits) and vectors at and over each one."""
    w = (cases or Cases()).world
    decode_cases = []
    for name, message, template, fills, intended in _limit_decode_cases(w):
        raw = _compact(_fill(template, fills)).encode()
        got = verdict(message, raw.decode())
        assert got == intended, (name, got)
        decode_cases.append(
            {
                "name": name,
                "message": message,
                "template": template,
                "fill": fills,
                "bytes": len(raw),
                "expect": got,
            }
        )
    return {
        "limits": [{"field": lim.field, "limit": lim.limit, "unit": lim.unit, "read": lim.read} for lim in LIMITS],
        "decode": decode_cases,
        "write": _limit_write_cases(w),
    }


#: How to replay each list in limits.json (docs/PROTOCOL.md section Limits has the table).
LIMITS_HOW: dict[str, str] = {
    "fill": "Inputs at a limit are large, so each is given as a `template` (or `args`, `event`) and a list of "
    "fills, applied in order: at `path` (keys and list indices) put `value`, or a string of `count` copies of "
    "`text`, or a list of `count` copies of `repeat`. A decode input is then the template's compact JSON "
    "encoding (no whitespace between tokens, non-ASCII characters unescaped), `bytes` long.",
    "decode": "Decode the filled input as `message`: accept it, or refuse it (RemoteProtocolError).",
    "write": "`new_task` with the filled `args`, or `apply` of the filled `event` to `record` at `now`: the "
    "record is made (`made`), or the write is refused before anything is written, naming the `field` over its "
    "limit (LimitExceeded, a LocalProtocolError).",
}
