"""The JSON Schemas of the wire messages (``protocol/schema/*.json``)."""

from __future__ import annotations

import inspect
import re
from typing import Any

import msgspec

from protocol.events import Event
from protocol.names import _AGENT_ID_RE, _CAPABILITY_RE, _TASK_ID_RE, MAJOR_VERSION
from protocol.types import (
    AgentCard,
    ControlReply,
    ControlRequest,
    ErrorReport,
    NotUnderstood,
    TaskEvent,
    TaskRecord,
    WorkItem,
)

__all__ = ["SCHEMAS", "json_schema", "schema"]

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


_BASE = f"https://agent-mesh.dev/protocol/v{MAJOR_VERSION}/schema/"

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
        "$id": f"{_BASE}{stem}.json",
        "title": title,
        **body,
    }
