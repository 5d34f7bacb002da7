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
    lease_beats,
    offers,
    records,
    task_events,
    to_builtins,
    transitions,
)

import protocol as p

DECODERS: dict[str, Callable[[bytes], Any]] = {
    "record": p.decode_record,
    "offer": p.decode_offer,
    "card": p.decode_card,
    "event": p.decode_event,
    "transition": p.decode_transition,
    "control": p.decode_control,
    "control_reply": p.decode_control_reply,
    "error": p.decode_error,
    "beat": p.decode_beat,
}
VALID: dict[str, st.SearchStrategy[Any]] = {
    "record": records(),
    "offer": offers,
    "card": cards,
    "event": task_events,
    "transition": transitions,
    "control": control_requests,
    "control_reply": control_replies,
    "error": error_reports,
    "beat": lease_beats,
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
    for event in (p.Cancel(actor="x"), p.Claim(actor="x"), p.Expire(actor="x", reason="no_agent")):
        try:
            new = p.apply(record, event, record.updated + 1)
        except p.TransitionError:
            continue
        assert p.decode_record(p.encode(new)) == new


def test_transitions_are_tagged_by_kind() -> None:
    for event in (p.Claim(actor="a"), p.Renew(actor="a", epoch=1), p.Expire(actor="a", reason="deadline")):
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


def _with_unknown_fields(name: str, value: msgspec.Struct, extra: dict[str, Any]) -> Any:
    doc = to_builtins(value)
    if name != "record":
        return {**doc, **extra}
    # Inside every nested object of a record, but not inside its free JSON (data,
    # checkpoint, result): that is the user's, and kept as it is.
    free = {k: doc.pop(k) for k in ("data", "checkpoint", "result")}
    return {**_add_unknown_fields(doc, extra), **free}


def test_a_newer_minor_version_decodes() -> None:
    record = p.new_task(task_id="T", capability="x", instruction="i", requester="c", now=1.0)
    doc = to_builtins(record) | {"v": 1, "priority": "high", "sla": {"p99": 3}}
    assert p.decode_record(msgspec.json.encode(doc)) == record


# --- refusals ------------------------------------------------------------------------------


def _record_doc(**changes: Any) -> bytes:
    record = p.new_task(task_id="T", capability="x", instruction="i", requester="c", now=1.0)
    doc = to_builtins(record)
    doc.update(changes)
    return msgspec.json.encode({k: v for k, v in doc.items() if v is not _DROP})


_DROP = object()


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
        ({"state": "failed"}, "without a reason"),
        ({"state": "review"}, "without a review policy"),
        ({"attempts": 2, "epoch": 0}, "epoch"),
        ({"state": "paused"}, "state"),
        ({"reason": "tired"}, "reason"),
        ({"epoch": -1}, "epoch"),
        ({"lease_s": 0}, "lease_s"),
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
        (p.decode_offer, {"task": "a.b", "capability": "x", "revision": 1}, "invalid task id"),
        (p.decode_offer, {"task": "T", "capability": "x.*", "revision": 1}, "invalid capability"),
        (p.decode_offer, {"task": "T", "capability": "x", "revision": -1}, "revision"),
        (p.decode_offer, {"task": "T", "capability": "x", "revision": 1, "state": "done"}, "state"),
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
        (p.decode_beat, {"task": "T", "revision": 3, "epoch": 1, "owner": "a.b"}, "invalid agent id"),
        (p.decode_beat, {"task": "T", "revision": 0, "epoch": 1, "owner": "a"}, "start at 1"),
        (p.decode_beat, {"task": "T", "revision": 3, "owner": "a"}, "epoch"),
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
        decodes_or_refuses(decode, data.draw(mutated_bytes(encoded)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_cross_decoding(data: st.DataObject) -> None:
    """A valid message of one kind fed to another kind's decoder."""
    source = data.draw(st.sampled_from(sorted(VALID)))
    encoded = p.encode(data.draw(VALID[source]))
    for decode in DECODERS.values():
        decodes_or_refuses(decode, encoded)
