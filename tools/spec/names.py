"""The names of a mesh (``protocol/vectors/names.json``); inputs in ``tools/cases/names.toml``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from protocol.errors import LocalProtocolError
from protocol.names import (
    _AGENT_ID_RE,
    _CAPABILITY_RE,
    _KIND_RE,
    _PREFIX_RE,
    _TASK_ID_RE,
    MAX_PRIORITY,
    PRIORITY_GROUP,
    VERSION_HEADER,
    Names,
    clarification_capability,
    validate_agent_id,
    validate_capability,
    validate_task_id,
)
from protocol.types import PROTOCOL_VERSION

from .cases import BadCase, Cases

__all__ = ["consumer_created_advisory", "create_subject", "name_vectors", "pull_subject"]


def consumer_created_advisory(names: Names) -> str:
    """JetStream's advisory subject announcing a new consumer (a new queue) on the
    work stream."""
    return f"$JS.EVENT.ADVISORY.CONSUMER.CREATED.{names.work_stream}.*"


def pull_subject(names: Names, capability: str) -> str:
    """The JetStream API subject of a pull request on a capability's queue."""
    return f"$JS.API.CONSUMER.MSG.NEXT.{names.work_stream}.{names.queue_consumer(capability)}"


def create_subject(names: Names, capability: str) -> str:
    """The JetStream API subject that creates a capability's queue (a filtered consumer)."""
    return (
        f"$JS.API.CONSUMER.CREATE.{names.work_stream}.{names.queue_consumer(capability)}."
        f"{names.work_subject(capability)}"
    )


def name_vectors(cases: Cases) -> dict[str, Any]:
    """names.toml's inputs, and the names of a mesh derived from each prefix (their
    arguments, ``T-1``, ``Agent_7``..., are examples fixed here: one of each is enough)."""
    source = cases.file("names")
    with source.case("queue_capabilities"):
        queue_capabilities = [str(c) for c in source.array("queue_capabilities")]

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
            "queue_consumer": [{"capability": c, "consumer": n.queue_consumer(c)} for c in queue_capabilities],
            "pull_subject": {"capability": "summarize.medical", "subject": pull_subject(n, "summarize.medical")},
            "create_subject": {"capability": "summarize.medical", "subject": create_subject(n, "summarize.medical")},
            "consumer_created_advisories": consumer_created_advisory(n),
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

    def split(key: str, validate: Callable[[str], str]) -> dict[str, list[str]]:
        ok, bad = [], []
        with source.case(key):
            for value in source.array(key):
                if not isinstance(value, str):
                    raise BadCase(f"{key} lists strings, not {value!r}")
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
        "meshes": [all_names(prefix) for prefix in source.array("prefixes")],
        "patterns": {
            "capability": _CAPABILITY_RE.pattern,
            "agent_id": _AGENT_ID_RE.pattern,
            "task_id": _TASK_ID_RE.pattern,
            "prefix": _PREFIX_RE.pattern,
            "event_kind": _KIND_RE.pattern,
        },
        "capability": split("capability", validate_capability),
        "agent_id": split("agent_id", validate_agent_id),
        "task_id": split("task_id", validate_task_id),
        "clarification_capability": [
            {"agent": a, "capability": clarification_capability(a)} for a in source.array("clarification_agents")
        ],
    }
