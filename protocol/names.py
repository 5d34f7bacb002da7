"""Subjects, KV buckets and keys: built and parsed by pure functions.

Everything one mesh puts on a broker lives under one *prefix* (default ``mesh``), so
several meshes can share a broker. The protocol's major version is part of every name
(``mesh-v2-tasks``, ``mesh.v2.evt...``): meshes of two major versions can run side by
side on the same broker. Minor evolution happens inside the messages (new fields with defaults).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .errors import InvalidName

__all__ = [
    "MAJOR_VERSION",
    "VERSION_HEADER",
    "PRIORITY_GROUP",
    "MAX_PRIORITY",
    "Names",
    "validate_capability",
    "validate_agent_id",
    "validate_task_id",
    "capability_tokens",
    "clarification_capability",
]

MAJOR_VERSION = 2
VERSION_HEADER = "Mesh-Version"
#: the priority group every queue's consumer declares and every pull names
PRIORITY_GROUP = "mesh"
#: the lowest pull priority (nats-server's prioritized policy takes 0 to 9)
MAX_PRIORITY = 9

_TOKEN = r"[a-z0-9][a-z0-9_-]{0,63}"
_CAPABILITY_RE = re.compile(rf"^{_TOKEN}(\.{_TOKEN}){{0,7}}$")
_AGENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_TASK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
#: an event kind is one lowercase subject token (``claim``, ``add_child``, ``created``)
_KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")

# Patterns are applied with ``fullmatch``: ``re.match`` with ``$`` accepts a trailing
# newline, which would let ``"summarize\n"`` into a subject.


def validate_capability(capability: str) -> str:
    """Return ``capability`` if it is valid, else raise :class:`InvalidName`.

    A capability is 1-8 dot-separated lowercase tokens (``summarize.medical``); the
    tokens become NATS subject tokens, so wildcards and spaces are not allowed.
    """
    if not isinstance(capability, str) or not _CAPABILITY_RE.fullmatch(capability):
        raise InvalidName(
            f"invalid capability {capability!r}: expected 1-8 dot-separated tokens of "
            "lowercase letters, digits, '_' or '-' (e.g. 'summarize.medical')"
        )
    return capability


def validate_agent_id(agent_id: str) -> str:
    if not isinstance(agent_id, str) or not _AGENT_ID_RE.fullmatch(agent_id):
        raise InvalidName(
            f"invalid agent id {agent_id!r}: expected 1-64 letters, digits, '_' or '-' "
            "(no dots: the id is one subject token)"
        )
    return agent_id


def validate_task_id(task_id: str) -> str:
    if not isinstance(task_id, str) or not _TASK_ID_RE.fullmatch(task_id):
        raise InvalidName(f"invalid task id {task_id!r}: expected 1-64 letters, digits, '_' or '-'")
    return task_id


def _validate_kind(kind: str) -> str:
    if not isinstance(kind, str) or not _KIND_RE.fullmatch(kind):
        raise InvalidName(
            f"invalid event kind {kind!r}: expected a lowercase letter then up to 31 lowercase "
            "letters, digits or '_' (one subject token, e.g. 'add_child')"
        )
    return kind


def capability_tokens(capability: str) -> tuple[str, ...]:
    return tuple(validate_capability(capability).split("."))


def clarification_capability(agent_id: str) -> str:
    """The capability every agent (and client) implicitly serves: ``agent.<id>``.

    A question to a requester is a task addressed to this capability. Agent ids may
    contain uppercase letters, capabilities may not, so the id is lowercased; ids that
    differ only in case share an inbox (documented in PROTOCOL.md).
    """
    return validate_capability(f"agent.{validate_agent_id(agent_id).lower()}")


@dataclass(frozen=True)
class Names:
    """All names of one mesh on a broker, derived from its prefix."""

    prefix: str = "mesh"

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, str) or not _PREFIX_RE.fullmatch(self.prefix):
            raise InvalidName(
                f"invalid mesh prefix {self.prefix!r}: expected a lowercase letter then up to "
                "31 lowercase letters, digits, '_' or '-'"
            )

    # --- JetStream resources -------------------------------------------------------
    @property
    def tasks_bucket(self) -> str:
        return f"{self.prefix}-v{MAJOR_VERSION}-tasks"

    @property
    def agents_bucket(self) -> str:
        return f"{self.prefix}-v{MAJOR_VERSION}-agents"

    @property
    def events_stream(self) -> str:
        return f"{self.prefix}-v{MAJOR_VERSION}-events"

    @property
    def archive_stream(self) -> str:
        """Every accepted write of the tasks bucket, copied by the broker (a stream
        sourcing the bucket's): a finished task's verifiable history after its record
        left the bucket."""
        return f"{self.prefix}-v{MAJOR_VERSION}-archive"

    @property
    def events_subjects(self) -> tuple[str, ...]:
        base = f"{self.prefix}.v{MAJOR_VERSION}"
        return (f"{base}.evt.>", f"{base}.err.>")

    @property
    def service_name(self) -> str:
        """Name under which agents register with the NATS services API."""
        return f"{self.prefix}-agent"

    @property
    def work_stream(self) -> str:
        """The work-queue stream holding every queue's items."""
        return f"{self.prefix}-v{MAJOR_VERSION}-work"

    @property
    def work_subjects(self) -> str:
        """The work stream's subjects: every queue's work items."""
        return f"{self.prefix}.v{MAJOR_VERSION}.work.>"

    @property
    def records_subjects(self) -> str:
        """Where the tasks bucket republishes every accepted write (core NATS)."""
        return f"{self.prefix}.v{MAJOR_VERSION}.rec.>"

    # --- keys of the tasks bucket ----------------------------------------------------
    def task_key(self, task_id: str) -> str:
        return f"task.{validate_task_id(task_id)}"

    def parse_task_key(self, key: str) -> str:
        head, _, task_id = key.partition(".")
        if head != "task":
            raise InvalidName(f"not a task key: {key!r}")
        return validate_task_id(task_id)

    def record_subject(self, task_id: str) -> str:
        """The subject on which the broker republishes each accepted write of one
        task's record: a task's parties follow it with a core subscription."""
        return f"{self.prefix}.v{MAJOR_VERSION}.rec.{self.task_key(task_id)}"

    # --- queues (the work stream) ----------------------------------------------------
    def work_subject(self, capability: str) -> str:
        """The subject of a capability's queue: its work items go here."""
        return f"{self.prefix}.v{MAJOR_VERSION}.work.{validate_capability(capability)}"

    def parse_work_subject(self, subject: str) -> str:
        """The capability of a queue's subject."""
        head = f"{self.prefix}.v{MAJOR_VERSION}.work."
        if not subject.startswith(head):
            raise InvalidName(f"not a work subject of mesh {self.prefix!r}: {subject!r}")
        return validate_capability(subject[len(head) :])

    def queue_consumer(self, capability: str) -> str:
        """Name of the durable pull consumer that is a capability's queue: the
        capability with its dots as ``~`` (consumer names allow no dots); a capability
        too long for a name is shortened with a digest."""
        name = validate_capability(capability).replace(".", "~")
        if len(name) > 200:
            digest = hashlib.sha256(capability.encode()).hexdigest()[:16]
            name = f"{name[:180]}~{digest}"
        return name

    # --- directory keys -----------------------------------------------------------
    def agent_key(self, agent_id: str) -> str:
        return f"agent.{validate_agent_id(agent_id)}"

    def parse_agent_key(self, key: str) -> str:
        head, _, agent_id = key.partition(".")
        if head != "agent":
            raise InvalidName(f"not an agent key: {key!r}")
        return validate_agent_id(agent_id)

    # --- subjects -------------------------------------------------------------------
    def event_subject(self, root: str, task_id: str, kind: str) -> str:
        return (
            f"{self.prefix}.v{MAJOR_VERSION}.evt.{validate_task_id(root)}."
            f"{validate_task_id(task_id)}.{_validate_kind(kind)}"
        )

    def events_filter(self, root: str | None = None) -> str:
        base = f"{self.prefix}.v{MAJOR_VERSION}.evt"
        return f"{base}.>" if root is None else f"{base}.{validate_task_id(root)}.>"

    def task_events_filter(self, task_id: str, root: str | None = None) -> str:
        """The events of one task: ``root`` narrows the filter to one literal prefix."""
        base = f"{self.prefix}.v{MAJOR_VERSION}.evt"
        return f"{base}.{'*' if root is None else validate_task_id(root)}.{validate_task_id(task_id)}.*"

    def parse_event_subject(self, subject: str) -> tuple[str, str, str]:
        """Return (root, task_id, kind) of an event subject."""
        parts = subject.split(".")
        if len(parts) != 6 or parts[:3] != [self.prefix, f"v{MAJOR_VERSION}", "evt"]:
            raise InvalidName(f"not an event subject of mesh {self.prefix!r}: {subject!r}")
        return validate_task_id(parts[3]), validate_task_id(parts[4]), _validate_kind(parts[5])

    def error_subject(self, agent_id: str) -> str:
        return f"{self.prefix}.v{MAJOR_VERSION}.err.{validate_agent_id(agent_id)}"

    def control_subject(self, agent_id: str) -> str:
        """Request subject of an agent's control endpoint (drain, status)."""
        return f"{self.prefix}.v{MAJOR_VERSION}.ctl.{validate_agent_id(agent_id)}"
