"""Decoding vectors (``protocol/vectors/decode.json``): bytes an implementation must accept
or refuse on each message type. Inputs in ``tools/cases/decode.toml``."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import msgspec

from protocol.codec import (
    decode_card,
    decode_control,
    decode_control_reply,
    decode_error,
    decode_event,
    decode_record,
    decode_transition,
    decode_work_item,
)
from protocol.errors import RemoteProtocolError
from protocol.types import TaskEvent

from .cases import T0, BadCase, Cases, World, keys, wire

__all__ = ["bases", "decode_vectors", "verdict"]

#: The decoders of the published message types, by schema stem.
DECODERS: dict[str, Callable[[bytes], Any]] = {
    "task_record": decode_record,
    "work_item": decode_work_item,
    "agent_card": decode_card,
    "task_event": decode_event,
    "transition": decode_transition,
    "control_request": decode_control,
    "control_reply": decode_control_reply,
    "error_report": decode_error,
}


def verdict(message: str, raw: str) -> str:
    try:
        DECODERS[message](raw.encode())
    except RemoteProtocolError:
        return "refuse"
    return "accept"


def bases(world: World) -> dict[str, Any]:
    """The documents decode cases start from, in JSON's builtin types: the world's records
    and items, and T1's created event carrying its record."""
    created = TaskEvent(
        kind="created",
        task="T1",
        root="T1",
        capability="summarize.medical",
        actor="client-1",
        state="open",
        at=T0,
        record=world["open"],
    )
    return {**{name: wire(value) for name, value in world.items()}, "created_event": wire(created)}


def _merged(doc: Any, changes: dict[str, Any]) -> Any:
    """``doc`` with ``changes`` merged in, tables into tables; keys keep their places."""
    out = dict(doc)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _document(spec: Any, cases: Cases, base: dict[str, Any]) -> Any:
    if isinstance(spec, str):
        return base[spec]
    if not isinstance(spec, dict):
        raise BadCase(f"`doc` is a base's name or a table, not {spec!r}")
    if "json" in spec:
        keys(spec, ("json",))
        return spec["json"]
    keys(spec, ("of",), ("set", "records", "drop", "in_list"))
    doc = base[spec["of"]]
    doc = {**doc, **{field: wire(cases.record(name)) for field, name in spec.get("records", {}).items()}}
    doc = _merged(doc, spec.get("set", {}))
    doc = {k: v for k, v in doc.items() if k not in spec.get("drop", ())}
    return [doc] if spec.get("in_list") else doc


def _raw(spec: Any, base: dict[str, Any]) -> str:
    if isinstance(spec, str):
        return spec
    if not isinstance(spec, dict):
        raise BadCase(f"`raw` is a string or a table, not {spec!r}")
    keys(spec, ("of", "cut"), ("append",))
    text = json.dumps(base[spec["of"]], ensure_ascii=False)
    return text[: len(text) - int(spec["cut"])] + str(spec.get("append", ""))


def decode_vectors(cases: Cases) -> list[dict[str, Any]]:
    """decode.toml's cases, then its numbers."""
    source = cases.file("decode")
    base = bases(cases.world)

    def one(case: dict[str, Any]) -> dict[str, Any]:
        keys(case, ("message", "name"), ("doc", "raw"))
        if ("doc" in case) == ("raw" in case):
            raise BadCase("a case has a `doc` or a `raw` input, one of the two")
        message = case["message"]
        if message not in DECODERS:
            raise BadCase(f"no message {message!r} (one of {', '.join(DECODERS)})")
        if "doc" in case:
            raw = json.dumps(_document(case["doc"], cases, base), ensure_ascii=False)
        else:
            raw = _raw(case["raw"], base)
        return {"name": case["name"], "message": message, "input": raw, "expect": verdict(message, raw)}

    # A number token is put into the record's JSON text as it is: re-encoding would
    # normalize it (1E+0, -0), which is what these cases are about.
    record = json.dumps(base["working"])

    def number(case: dict[str, Any]) -> dict[str, Any]:
        keys(case, ("field", "token", "why"))
        field, token = case["field"], case["token"]
        if not isinstance(field, str) or not isinstance(token, str):
            raise BadCase("`field` and `token` are strings (a token as JSON spells it)")
        raw, count = re.subn(rf'("{re.escape(field)}": )[^,}}]*', lambda m: m.group(1) + token, record, count=1)
        if count != 1:
            raise BadCase(f"the record has no field {field!r}")
        out: dict[str, Any] = {"name": f"{field} = {token}: {case['why']}", "message": "task_record", "input": raw}
        out["expect"] = verdict("task_record", raw)
        if out["expect"] == "accept":
            out["decoded"] = {field: msgspec.to_builtins(getattr(decode_record(raw.encode()), field))}
        return out

    return source.each("case", one) + source.each("number", number)
