"""The codec. The fuzz rule (after h11): whatever bytes arrive, every ``decode_*``
either returns a value or raises RemoteProtocolError, never anything else. Valid
messages round-trip, and unknown fields are ignored (agents run mixed versions)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from proto_strategies import (
    cards,
    control_replies,
    control_requests,
    error_reports,
    json_values,
    records,
    task_events,
    to_builtins,
    transitions,
    work_items,
)

import protocol as p

DECODERS: dict[str, Callable[[bytes], Any]] = {
    "record": p.decode_record,
    "work_item": p.decode_work_item,
    "card": p.decode_card,
    "event": p.decode_event,
    "transition": p.decode_transition,
    "control": p.decode_control,
    "control_reply": p.decode_control_reply,
    "error": p.decode_error,
}
VALID: dict[str, st.SearchStrategy[Any]] = {
    "record": records(),
    "work_item": work_items(),
    "card": cards,
    "event": task_events,
    "transition": transitions,
    "control": control_requests,
    "control_reply": control_replies,
    "error": error_reports,
}
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decodes_or_refuses(decode: Callable[[bytes], Any], data: bytes) -> Any:
    """The fuzz rule itself."""
    try:
        return decode(data)
    except p.RemoteProtocolError as exc:
        assert str(exc)  # always says what was wrong
        return None


# --- round trips ----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records())
def test_records_survive_a_transition_round_trip(record: p.TaskRecord) -> None:
    """Whatever apply() makes of a valid record is itself valid on the wire."""
    for event in (
        p.Cancel(actor="x"),
        p.Claim(actor="x", ticket=record.ticket),
        p.Claim(actor="x", ticket=7),
        p.Release(actor=record.owner or "x", epoch=record.epoch),
        p.Expire(actor="x", reason="no_agent"),
    ):
        try:
            new = p.apply(record, event, record.updated + 1)
        except p.TransitionError:
            continue
        assert p.decode_record(p.encode(new)) == new


def test_transitions_are_tagged_by_kind() -> None:
    for event in (
        p.Claim(actor="a"),
        p.Claim(actor="a", ticket=41),
        p.Reviewing(actor="a", epoch=1, ticket=52),
        p.Renew(actor="a", epoch=1),
        p.Expire(actor="a", reason="deadline"),
    ):
        doc = msgspec.json.decode(p.encode(event))
        assert doc["kind"] == p.event_kind(event)
        assert p.decode_transition(p.encode(event)) == event


# --- forward compatibility --------------------------------------------------------------------


def _add_unknown_fields(doc: Any, extra: dict[str, Any]) -> Any:
    if isinstance(doc, dict):
        out = {k: _add_unknown_fields(v, extra) for k, v in doc.items()}
        out.update({k: v for k, v in extra.items() if k not in out})
        return out
    if isinstance(doc, list):
        return [_add_unknown_fields(v, extra) for v in doc]
    return doc


def _record_with_unknown_fields(doc: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    # Inside every nested object of a record, but not inside its free JSON (data,
    # checkpoint, result): that is the user's, and kept as it is.
    free = {k: doc.pop(k) for k in ("data", "checkpoint", "result")}
    return {**_add_unknown_fields(doc, extra), **free}


def _with_unknown_fields(name: str, value: msgspec.Struct, extra: dict[str, Any]) -> Any:
    doc = to_builtins(value)
    if name == "record":
        return _record_with_unknown_fields(doc, extra)
    if name == "work_item":
        return {**doc, **extra, "record": _record_with_unknown_fields(doc["record"], extra)}
    return {**doc, **extra}


def test_a_newer_minor_version_decodes() -> None:
    record = p.new_task(task_id="T", capability="x", instruction="i", requester="c", now=1.0)
    doc = to_builtins(record) | {"priority": "high", "sla": {"p99": 3}}
    assert p.decode_record(msgspec.json.encode(doc)) == record


# --- refusals ------------------------------------------------------------------------------


def _record_doc(**changes: Any) -> bytes:
    record = p.new_task(task_id="T", capability="x", instruction="i", requester="c", now=1.0)
    doc = to_builtins(record)
    doc.update(changes)
    return msgspec.json.encode({k: v for k, v in doc.items() if v is not _DROP})


_DROP = object()
_OPEN = p.new_task(task_id="T", capability="x", instruction="i", requester="c", now=1.0)
_ITEM = to_builtins(p.WorkItem(task="T", capability="x", revision=0, record=_OPEN))
_CLAIMED = to_builtins(p.apply(_OPEN, p.Claim(actor="a", ticket=3), 2.0))
_RELEASED = to_builtins(p.apply(p.apply(_OPEN, p.Claim(actor="a", ticket=3), 2.0), p.Release(actor="a", epoch=1), 3.0))
_CREATED = to_builtins(
    p.TaskEvent(kind="created", task="T", root="T", capability="x", actor="c", state="open", at=1.0, record=_OPEN)
)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"id": "a.b"}, "invalid task id"),
        ({"root": "*"}, "invalid task id"),
        ({"parent": "a b"}, "invalid task id"),
        ({"children": ["ok", "a.b"]}, "invalid task id"),
        ({"capability": "X"}, "invalid capability"),
        ({"requester": "a.b"}, "invalid agent id"),
        ({"review": {"capability": "a.>"}}, "invalid capability"),
        ({"review": {"capability": "check", "escalate_to": "Human"}}, "invalid capability"),
        ({"state": "working"}, "without an owner"),
        ({"state": "working", "owner": "a"}, "working at epoch 0"),
        ({"state": "failed"}, "without a reason"),
        ({"state": "review"}, "without a review policy"),
        ({"attempts": 2, "epoch": 0}, "epoch"),
        ({"state": "paused"}, "state"),
        ({"reason": "tired"}, "reason"),
        ({"epoch": -1}, "epoch"),
        ({"ticket": -1}, "ticket"),
        ({"ticket": "41"}, "ticket"),
        ({"claim_timeout_s": 0}, "claim_timeout_s"),
        ({"max_lapses": 0}, "max_lapses"),
        ({"review": {"quorum": 0}}, "quorum"),
        ({"review": {"quorum": 17}}, "quorum"),
        ({"id": _DROP}, "id"),
        ({"created": "yesterday"}, "created"),
        ({"deadline": 10**400}, "deadline"),
    ],
)
def test_invalid_records_are_refused(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(p.RemoteProtocolError, match=match):
        p.decode_record(_record_doc(**changes))


@pytest.mark.parametrize(
    ("decode", "doc", "match"),
    [
        (p.decode_work_item, {**_ITEM, "task": "a.b"}, "invalid task id"),
        (p.decode_work_item, {**_ITEM, "capability": "x.*"}, "invalid capability"),
        (p.decode_work_item, {**_ITEM, "revision": -1}, "revision"),
        (p.decode_work_item, {**_ITEM, "kind": "steal"}, "kind"),
        (p.decode_work_item, {k: v for k, v in _ITEM.items() if k != "record"}, "record"),
        (p.decode_work_item, {**_ITEM, "task": "T9"}, "carries the record of T"),
        (p.decode_work_item, {**_ITEM, "record": {**_ITEM["record"], "capability": "X"}}, "invalid capability"),
        (p.decode_work_item, {**_ITEM, "record": {**_ITEM["record"], "state": "failed"}}, "without a reason"),
        (p.decode_work_item, {**_ITEM, "kind": "review"}, "revision 0"),
        (p.decode_work_item, {**_ITEM, "record": _CLAIMED}, "revision 0"),
        (p.decode_work_item, {**_ITEM, "record": _RELEASED}, "revision 0"),
        (p.decode_card, {"id": "a.b"}, "invalid agent id"),
        (p.decode_card, {"id": "a", "serves": ["ok", "Bad"]}, "invalid capability"),
        (p.decode_card, {"id": "a", "delegates": ["x.>"]}, "invalid capability"),
        (p.decode_card, {"id": "a", "capacity": 0}, "capacity"),
        (p.decode_transition, {"kind": "steal", "actor": "a"}, "kind"),
        (p.decode_transition, {"actor": "a"}, "kind"),
        (p.decode_transition, {"kind": "renew", "actor": "a"}, "epoch"),
        (p.decode_transition, {"kind": "fail", "actor": "a", "epoch": 1, "reason": "cancelled"}, "reason"),
        (p.decode_transition, {"kind": "expire", "actor": "a", "reason": "bored"}, "reason"),
        (p.decode_transition, {"kind": "charge", "actor": "a", "epoch": 1, "usage": {"tokens": -5}}, "tokens"),
        (p.decode_control, {"action": "explode"}, "action"),
        (p.decode_error, {"agent": "a"}, "error"),
        (p.decode_event, {"kind": "claim"}, "task"),
        (p.decode_event, {**_CREATED, "task": "T9"}, "carries the record of T"),
        (p.decode_event, {**_CREATED, "record": {**_CREATED["record"], "state": "review"}}, "review policy"),
        (p.decode_transition, {"kind": "claim", "actor": "a", "ticket": -1}, "ticket"),
        (p.decode_transition, {"kind": "reviewing", "actor": "a", "epoch": 1, "ticket": "x"}, "ticket"),
        (p.decode_transition, {"kind": "reopen", "actor": "a", "epoch": 1}, "kind"),
    ],
)
def test_invalid_messages_are_refused(decode: Callable[[bytes], Any], doc: Any, match: str) -> None:
    with pytest.raises(p.RemoteProtocolError, match=match):
        decode(msgspec.json.encode(doc))


@pytest.mark.parametrize("decode", list(DECODERS.values()))
@pytest.mark.parametrize("data", ["{}", 1, None])
def test_non_bytes_are_refused(decode: Callable[[bytes], Any], data: Any) -> None:
    with pytest.raises(p.RemoteProtocolError, match="expected bytes"):
        decode(data)


@pytest.mark.parametrize("decode", list(DECODERS.values()))
def test_oversized_payloads_are_refused_before_parsing(decode: Callable[[bytes], Any]) -> None:
    with pytest.raises(p.RemoteProtocolError, match="limit"):
        decode(b" " * (p.MAX_MESSAGE_BYTES + 1))


# --- fuzz -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DECODERS))
@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=512))
@example(data=b"")
@example(data=b"\xff\xfe\x00")
@example(data=b"null")
@example(data=b"[" * 10_000 + b"]" * 10_000)
@example(data=b'{"kind":' * 5_000)
@example(data=b"9" * 5_000)
@example(data=b"1e999")
@example(data=b'"\\ud800"')
def test_arbitrary_bytes(name: str, data: bytes) -> None:
    decodes_or_refuses(DECODERS[name], data)


_HUGE = [10**400, -(10**400), 2**64, -(2**63) - 1, 1e308, -1e308, 5e-324, 2**53 + 1]
_WRONG = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(_HUGE),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.integers(1, 20_000).map(lambda depth: f"__DEEP_{depth}__"),
)


def _deepen(encoded: bytes) -> bytes:
    """Replace ``"__DEEP_<n>__"`` placeholders by ``n`` levels of nesting, written as
    bytes (building them as objects would hit the recursion limit of the test
    itself, not of the decoder)."""
    while (start := encoded.find(b'"__DEEP_')) != -1:
        end = encoded.index(b'__"', start + 8)
        depth = int(encoded[start + 8 : end])
        half = depth // 2
        nested = b'{"x":[' * half + b"0" + b"]}" * half
        encoded = encoded[:start] + nested + encoded[end + 3 :]
    return encoded


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        return {**doc, head: _replace(doc[head], rest, value)}
    copy = list(doc)
    copy[head] = _replace(copy[head], rest, value)
    return copy


def _drop(doc: Any, path: tuple[Any, ...]) -> Any:
    if len(path) == 1:
        if isinstance(doc, dict):
            return {k: v for k, v in doc.items() if k != path[0]}
        return [v for i, v in enumerate(doc) if i != path[0]]
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        return {**doc, head: _drop(doc[head], rest)}
    copy = list(doc)
    copy[head] = _drop(copy[head], rest)
    return copy


@st.composite
def mutated_document(draw: st.DrawFn, value: msgspec.Struct) -> Any:
    """A valid message with one JSON-level mutation: a value of the wrong type, a
    huge number, deep nesting (see :func:`_deepen`), a dropped field."""
    doc = to_builtins(value)
    paths = _paths(doc)
    path = draw(st.sampled_from(paths))
    mutation = draw(st.sampled_from(["replace", "replace", "drop", "wrap"]))
    if mutation == "drop" and path:
        doc = _drop(doc, path)
    elif mutation == "wrap":
        doc = _replace(doc, path, {"wrapped": doc} if not path else [draw(_WRONG)])
    else:
        doc = _replace(doc, path, draw(_WRONG))
    return doc


@st.composite
def mutated_bytes(draw: st.DrawFn, encoded: bytes) -> bytes:
    """A valid encoding with byte-level damage: flips, inserts, deletes, truncation."""
    data = bytearray(encoded)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[at:at] = draw(
                st.binary(min_size=1, max_size=8) | st.sampled_from([b"{", b"[", b'"', b"\\", b",", b"\x00"])
            )
        elif op == "delete" and data:
            del data[at : at + draw(st.integers(1, 8))]
        else:
            del data[at:]
    return bytes(data)


@pytest.mark.parametrize("name", sorted(DECODERS))
@FUZZ
@given(data=st.data())
def test_messages(name: str, data: st.DataObject) -> None:
    """For one generated valid message of each kind (generation is the costly part,
    so each value serves every property):

    - it round-trips through encode/decode, from bytes, bytearray and memoryview;
    - unknown fields anywhere in it are ignored (forward compatibility);
    - damaged copies of it (JSON values of the wrong type, huge numbers, deep nesting,
      dropped fields; flipped, inserted, deleted bytes, truncation) decode or raise
      RemoteProtocolError, and a damaged record that decodes is still a valid record.
    """
    decode = DECODERS[name]
    value = data.draw(VALID[name], label="message")
    encoded = p.encode(value)
    assert decode(encoded) == value
    # Buffers other than bytes are accepted too (what NATS clients hand out varies).
    assert decode(bytearray(encoded)) == value  # type: ignore[arg-type]
    assert decode(memoryview(encoded)) == value  # type: ignore[arg-type]

    extra = data.draw(
        st.dictionaries(
            st.text(alphabet="xyz_", min_size=1, max_size=6).map("zz_".__add__), json_values, min_size=1, max_size=3
        ),
        label="unknown fields",
    )
    assert decode(msgspec.json.encode(_with_unknown_fields(name, value, extra))) == value

    for _ in range(2):
        decoded = decodes_or_refuses(decode, _deepen(msgspec.json.encode(data.draw(mutated_document(value)))))
        if name == "record" and decoded is not None:
            # Anything that decodes is a record the rules can work on.
            assert p.check_record(decoded) is decoded
            p.encode(decoded)
        if name == "work_item" and decoded is not None:
            _assert_item_invariants(decoded)
        decodes_or_refuses(decode, data.draw(mutated_bytes(encoded)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_cross_decoding(data: st.DataObject) -> None:
    """A valid message of one kind fed to another kind's decoder."""
    source = data.draw(st.sampled_from(sorted(VALID)))
    encoded = p.encode(data.draw(VALID[source]))
    for decode in DECODERS.values():
        decodes_or_refuses(decode, encoded)


def _assert_item_invariants(item: p.WorkItem) -> None:
    """What every decoded work item promises the rules that act on it."""
    assert p.check_record(item.record) is item.record
    assert item.record.id == item.task
    p.validate_task_id(item.task)
    p.validate_capability(item.capability)
    assert item.kind in ("work", "review") and item.revision >= 0
    if item.revision == 0:
        assert (item.kind, item.record.state, item.record.epoch) == ("work", "open", 0)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=records(), revision=st.integers(0, 3), kind=st.sampled_from(["work", "review"]), data=st.data())
def test_work_items_decode_exactly_when_their_invariants_hold(
    record: p.TaskRecord, revision: int, kind: str, data: st.DataObject
) -> None:
    """A work item built from any valid record decodes if and only if its record is its
    task's and, at revision 0, it is a work item for an open task nobody claimed; and
    whatever decodes satisfies those invariants."""
    task = data.draw(st.just(record.id) | st.sampled_from(["T", "other"]), label="task")
    item = p.WorkItem(task=task, kind=kind, capability="x", revision=revision, record=record)  # type: ignore[arg-type]
    valid = task == record.id and (revision > 0 or (kind, record.state, record.epoch) == ("work", "open", 0))
    decoded = decodes_or_refuses(p.decode_work_item, p.encode(item))
    assert (decoded is not None) == valid
    if decoded is not None:
        assert decoded == item
        _assert_item_invariants(decoded)


@pytest.mark.parametrize("name", ["work_item", "event"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_carried_record_is_checked_like_a_stored_one(name: str, data: st.DataObject) -> None:
    """A record inside a work item or an event is refused by the same invariants as a
    record read from the bucket: a message carrying one that ``decode_record`` refuses is
    refused too."""
    value = data.draw(VALID[name], label="message")
    doc = to_builtins(value)
    if doc.get("record") is None:
        return
    broken = data.draw(
        st.sampled_from(
            [
                {"state": "working", "owner": None},
                {"state": "failed", "reason": None},
                {"state": "review", "review": None},
                {"capability": "Bad"},
                {"id": "a.b"},
                {"epoch": 0, "attempts": 3},
            ]
        ),
        label="broken",
    )
    record = {**doc["record"], **broken}
    raw_record = msgspec.json.encode(record)
    if decodes_or_refuses(p.decode_record, raw_record) is None:
        with pytest.raises(p.RemoteProtocolError):
            DECODERS[name](msgspec.json.encode({**doc, "record": record}))
