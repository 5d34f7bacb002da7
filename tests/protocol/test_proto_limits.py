"""Limits on sizes, counts and durations (protocol/limits.py): refused on write with
LimitExceeded naming field, size and limit; refused on read with RemoteProtocolError;
values at a limit pass both ways. And the published vectors replay, built from their
own description (the `how` of limits.json), not from the generator's helpers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proto_strategies import records

import protocol as p

ROOT = Path(p.__file__).resolve().parent.parent
VECTORS = json.loads((ROOT / "protocol" / "vectors" / "limits.json").read_text(encoding="utf-8"))
T0 = 1_700_000_000.0

DECODERS = {
    "task_record": p.decode_record,
    "work_item": p.decode_work_item,
    "agent_card": p.decode_card,
    "task_event": p.decode_event,
    "transition": p.decode_transition,
}
EVENTS = {
    cls.__struct_config__.tag: cls
    for cls in (p.Claim, p.Renew, p.AddChild, p.Finish, p.Fail, p.Release, p.Veto, p.Cancel, p.Approve)
}

few = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- the published vectors, replayed from their description -------------------------------------


def fill(doc: Any, fills: list[dict[str, Any]]) -> Any:
    out = json.loads(json.dumps(doc))
    for f in fills:
        node = out
        for key in f["path"][:-1]:
            node = node[key]
        last = f["path"][-1]
        if "value" in f:
            node[last] = f["value"]
        elif "text" in f:
            node[last] = f["text"] * f["count"]
        else:
            node[last] = [f["repeat"]] * f["count"]
    return out


def compact(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


@pytest.mark.parametrize("case", VECTORS["decode"], ids=[c["name"] for c in VECTORS["decode"]])
def test_limit_decode_vector(case: dict[str, Any]) -> None:
    raw = compact(fill(case["template"], case["fill"]))
    assert len(raw) == case["bytes"]
    decode = DECODERS[case["message"]]
    if case["expect"] == "accept":
        decode(raw)
    else:
        with pytest.raises(p.RemoteProtocolError):
            decode(raw)


@pytest.mark.parametrize("case", VECTORS["write"], ids=[c["name"] for c in VECTORS["write"]])
def test_limit_write_vector(case: dict[str, Any]) -> None:
    def attempt() -> p.TaskRecord:
        if case["rule"] == "new_task":
            args = fill(case["args"], case["fill"].get("args", []))
            return p.new_task(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})
        record = p.decode_record(compact(case["record"]))
        fields = fill(case["event"], case["fill"].get("event", []))
        event = EVENTS[fields.pop("kind")](**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
        return p.apply(record, event, case["now"])

    if case["expect"] == "made":
        made = attempt()
        assert p.decode_record(p.encode(made)) == made  # what may be written may be read
    else:
        with pytest.raises(p.LimitExceeded) as refused:
            attempt()
        assert refused.value.field == case["expect"]["field"]
        assert refused.value.size > refused.value.limit


def test_every_limit_has_vectors_both_ways() -> None:
    names = [c["name"] for c in VECTORS["decode"] + VECTORS["write"]]
    for at in (n for n in names if n.endswith(" at the limit")):
        assert at.replace(" at the limit", " one over the limit") in names
    assert len(VECTORS["limits"]) == len(p.LIMITS)
    text = " ".join(names)
    for word in ("data", "result", "checkpoint", "instruction", "criteria", "progress", "error", "tags", "children",
                 "hops", "lineage", "votes", "feedback", "reasons", "quorum", "max_reworks", "max_lapses",
                 "claim_timeout_s", "escalation_timeout_s", "deadline", "heartbeat_s", "the record", "the card",
                 "version 99"):  # fmt: skip
        assert word in text, word


def test_the_largest_record_fits_a_nats_message_with_its_envelope() -> None:
    """A work item and a terminal event carry a record: at the limit they still fit."""
    case = next(c for c in VECTORS["decode"] if c["name"] == "the record (encoded) at the limit")
    record = p.decode_record(compact(fill(case["template"], case["fill"])))
    item = p.WorkItem(task=record.id, capability=record.capability, revision=7, record=record)
    event = p.TaskEvent(
        kind="ended", task=record.id, root=record.root, capability=record.capability, actor="x", state="open", at=T0
    )
    event = msgspec.structs.replace(event, record=record)
    for message in (item, event):
        assert len(p.encode(message)) < p.MAX_MESSAGE_BYTES - 64 * 1024  # room for headers
    p.decode_work_item(p.encode(item))
    p.decode_event(p.encode(event))


# --- properties: every limit both ways ----------------------------------------------------------


def base() -> p.TaskRecord:
    return p.new_task(task_id="T1", capability="summarize", instruction="Summarize.", requester="client-1", now=T0)


def working() -> p.TaskRecord:
    return p.apply(base(), p.Claim(actor="agent-a", ticket=41), T0 + 1)


def in_review(quorum: int = 1) -> p.TaskRecord:
    record = msgspec.structs.replace(base(), review=p.ReviewPolicy(quorum=quorum))
    record = p.apply(record, p.Claim(actor="agent-a", ticket=41), T0 + 1)
    return p.apply(record, p.Finish(actor="agent-a", epoch=1, result="draft"), T0 + 2)


def read_back(record: p.TaskRecord) -> p.TaskRecord:
    """What a reader makes of ``record`` (written without the write side's checks)."""
    return p.decode_record(p.encode(record))


def both_ways_refused(record: p.TaskRecord, field: str) -> None:
    with pytest.raises(p.LimitExceeded) as refused:
        p.check_record_limits(record)
    assert refused.value.field == field
    assert str(refused.value).startswith(f"{field} is ")
    assert f"over the limit of {int(refused.value.limit)} " in str(refused.value)
    with pytest.raises(p.RemoteProtocolError):
        read_back(record)


def both_ways_accepted(record: p.TaskRecord) -> None:
    p.check_record_limits(record)
    assert read_back(record) == record


#: (field, limit, how to make a value of size n)
TEXT_FIELDS = [
    ("instruction", p.MAX_INSTRUCTION_CHARS),
    ("criteria", p.MAX_CRITERIA_CHARS),
    ("progress", p.MAX_PROGRESS_CHARS),
    ("error", p.MAX_ERROR_CHARS),
]
JSON_FIELDS = [("data", p.MAX_DATA_BYTES), ("result", p.MAX_RESULT_BYTES), ("checkpoint", p.MAX_CHECKPOINT_BYTES)]
COUNT_FIELDS = [
    ("tags", p.MAX_TAGS, "t"),
    ("children", p.MAX_CHILDREN, "c1"),
    ("lineage", p.MAX_LINEAGE, "0123456789abcdef"),
]

#: sizes around a limit: at it, just under, just over, far over
around = st.sampled_from([0, -1, 1, 2, 50])


@few
@given(field=st.sampled_from(TEXT_FIELDS), delta=around, char=st.sampled_from(["x", "é", "\U0001f600", "\n"]))
def test_text_limits(field: tuple[str, int], delta: int, char: str) -> None:
    name, limit = field
    record = msgspec.structs.replace(base(), **{name: char * (limit + delta)})
    if delta <= 0:
        both_ways_accepted(record)
    else:
        both_ways_refused(record, name)


@few
@given(field=st.sampled_from(JSON_FIELDS), delta=around, nested=st.booleans())
def test_encoded_size_limits(field: tuple[str, int], delta: int, nested: bool) -> None:
    name, limit = field
    # a string of n-2 characters encodes to n bytes; {"k":[""]} is 10 bytes
    value: Any = "x" * (limit + delta - 2)
    if nested:
        value = {"k": ["x" * (limit + delta - 10)]}
    assert len(msgspec.json.encode(value)) == limit + delta
    record = msgspec.structs.replace(base(), **{name: value})
    if delta <= 0:
        both_ways_accepted(record)
    else:
        both_ways_refused(record, name)


@few
@given(field=st.sampled_from(COUNT_FIELDS), delta=around)
def test_count_limits(field: tuple[str, int, str], delta: int) -> None:
    name, limit, item = field
    record = msgspec.structs.replace(base(), **{name: (item,) * (limit + delta)})
    if delta <= 0:
        both_ways_accepted(record)
    else:
        both_ways_refused(record, name)


@few
@given(delta=around)
def test_vote_limits(delta: int) -> None:
    record = in_review(quorum=p.MAX_QUORUM)
    vote = p.Vote(reviewer="critic-1", verdict="veto", reasons=("r",))
    for field, changed in (
        ("votes", msgspec.structs.replace(record, votes=(vote,) * (p.MAX_VOTES + delta))),
        ("feedback", msgspec.structs.replace(record, feedback=(vote,) * (p.MAX_FEEDBACK + delta))),
        ("votes[].reasons", msgspec.structs.replace(record, votes=(msgspec.structs.replace(vote, reasons=("r",) * (p.MAX_REASONS + delta)),))),
        ("feedback[].reasons[]", msgspec.structs.replace(record, feedback=(msgspec.structs.replace(vote, reasons=("r" * (p.MAX_REASON_CHARS + delta),)),))),
    ):  # fmt: skip
        if delta <= 0:
            both_ways_accepted(changed)
        else:
            both_ways_refused(changed, field)


@few
@given(delta=st.sampled_from([0, -1, 1, 1000]))
def test_number_limits(delta: int) -> None:
    policy = p.ReviewPolicy()
    for field, changed in (
        ("hops_left", msgspec.structs.replace(base(), hops_left=p.MAX_HOPS + delta)),
        ("max_lapses", msgspec.structs.replace(base(), max_lapses=p.MAX_LAPSES + delta)),
        ("review.max_reworks", msgspec.structs.replace(base(), review=msgspec.structs.replace(policy, max_reworks=p.MAX_REWORKS + delta))),
        ("review.quorum", msgspec.structs.replace(base(), review=msgspec.structs.replace(policy, quorum=p.MAX_QUORUM + delta))),
        ("claim_timeout_s", msgspec.structs.replace(base(), claim_timeout_s=p.MAX_CLAIM_TIMEOUT_S + delta)),
        ("review.escalation_timeout_s", msgspec.structs.replace(base(), review=msgspec.structs.replace(policy, escalation_timeout_s=p.MAX_ESCALATION_TIMEOUT_S + delta))),
        ("deadline", msgspec.structs.replace(base(), deadline=T0 + p.MAX_DEADLINE_S + delta)),
    ):  # fmt: skip
        if delta <= 0:
            both_ways_accepted(changed)
        else:
            both_ways_refused(changed, field)


@few
@given(value=st.sampled_from([math.inf, -math.inf, math.nan]))
def test_non_finite_numbers_are_refused_on_write(value: float) -> None:
    """JSON has no such numbers: written, they would become null (or be refused by every
    reader), so the writer refuses them."""
    for kwargs in ({"deadline": value}, {"claim_timeout_s": value}, {"budget": p.Budget(cost=value)}):
        with pytest.raises(p.LocalProtocolError):
            p.new_task(task_id="T1", capability="x", instruction="i", requester="c", now=T0, **kwargs)
    with pytest.raises(p.LimitExceeded):
        p.apply(working(), p.Charge(actor="agent-a", epoch=1, usage=p.Usage(cost=value)), T0 + 2)
    with pytest.raises(p.LimitExceeded):
        p.apply(working(), p.Renew(actor="agent-a", epoch=1, progress="x"), value)


@few
@given(v=st.integers(-(2**63), 2**63 - 1).filter(lambda v: v != p.PROTOCOL_VERSION), record=records())
def test_other_versions_are_refused_on_read(v: int, record: p.TaskRecord) -> None:
    """A record (or item, event, card) of another major version is refused, not worked."""
    doc = msgspec.json.decode(p.encode(record))
    with pytest.raises(p.RemoteProtocolError):
        p.decode_record(json.dumps({**doc, "v": v}).encode())
    item = msgspec.json.decode(p.encode(p.WorkItem(task=record.id, capability="x", revision=3, record=record)))
    with pytest.raises(p.RemoteProtocolError):
        p.decode_work_item(json.dumps({**item, "v": v}).encode())
    with pytest.raises(p.RemoteProtocolError):
        p.decode_work_item(json.dumps({**item, "record": {**doc, "v": v}}).encode())
    with pytest.raises(p.RemoteProtocolError):
        p.decode_card(json.dumps({"id": "agent-a", "v": v}).encode())


@few
@given(record=records())
def test_generated_records_are_within_limits(record: p.TaskRecord) -> None:
    """The shared strategy makes only records the limits allow (the other tests rely on it)."""
    p.check_record_limits(record)


# --- the write side names field, size and limit -------------------------------------------------


def test_a_result_too_large_is_refused_naming_field_size_and_limit() -> None:
    result = "x" * p.MAX_RESULT_BYTES
    with pytest.raises(p.LimitExceeded) as refused:
        p.apply(working(), p.Finish(actor="agent-a", epoch=1, result=result), T0 + 2)
    exc = refused.value
    assert (exc.field, exc.size, exc.limit, exc.unit) == ("result", p.MAX_RESULT_BYTES + 2, p.MAX_RESULT_BYTES, "bytes")
    assert str(exc) == f"result is {p.MAX_RESULT_BYTES + 2} bytes, over the limit of {p.MAX_RESULT_BYTES} bytes"
    assert isinstance(exc, p.LocalProtocolError)


def test_a_child_too_many_is_refused() -> None:
    record = msgspec.structs.replace(working(), children=tuple(f"c{i}" for i in range(p.MAX_CHILDREN)))
    p.apply(record, p.AddChild(actor="agent-a", epoch=1, child="c0"), T0 + 2)  # already a child: no growth
    with pytest.raises(p.LimitExceeded, match="children is 257 entries, over the limit of 256"):
        p.apply(record, p.AddChild(actor="agent-a", epoch=1, child="new"), T0 + 2)


def test_delegation_keeps_the_limits() -> None:
    parent = working()
    with pytest.raises(p.LimitExceeded, match="data"):
        p.delegate(parent, child_id="C1", capability="x", instruction="i", actor="agent-a", now=T0 + 2,
                   data="x" * p.MAX_DATA_BYTES)  # fmt: skip
    deep = msgspec.structs.replace(parent, lineage=("0123456789abcdef",) * p.MAX_LINEAGE)
    with pytest.raises(p.LimitExceeded, match="lineage"):
        p.delegate(deep, child_id="C1", capability="x", instruction="i", actor="agent-a", now=T0 + 2)


def test_a_record_over_the_limit_in_bytes_is_refused_before_parsing() -> None:
    raw = b'{"id": "T1"' + b" " * p.MAX_RECORD_BYTES + b"}"
    with pytest.raises(p.RemoteProtocolError, match="over the limit"):
        p.decode_record(raw)
