"""Subjects, KV buckets and keys: built and parsed by pure functions.

Everything one mesh puts on a broker lives under one *prefix* (default ``mesh``), so
several meshes can share a broker. The protocol's major version is part of every name
(``mesh-v1-tasks``, ``mesh.v1.evt...``): a v2 mesh can run beside a v1 mesh on the same
broker. Minor evolution happens inside the messages (new fields with defaults).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidName

__all__ = [
    "MAJOR_VERSION",
    "VERSION_HEADER",
    "BOARD_WATCH_SLOTS",
    "Names",
    "validate_capability",
    "validate_agent_id",
    "validate_task_id",
    "capability_tokens",
    "clarification_capability",
]

MAJOR_VERSION = 1
VERSION_HEADER = "Mesh-Version"
#: how many agents of one served capability watch its board; the others take nudges
#: and read the board only when they may have missed work (so a board change costs
#: the broker a bounded fan-out, however many agents serve the capability)
BOARD_WATCH_SLOTS = 3

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
    def events_subjects(self) -> tuple[str, ...]:
        base = f"{self.prefix}.v{MAJOR_VERSION}"
        return (f"{base}.evt.>", f"{base}.err.>")

    @property
    def service_name(self) -> str:
        """Name under which agents register with the NATS services API."""
        return f"{self.prefix}-agent"

    # --- task board keys (in the tasks bucket) ----------------------------------------
    def task_key(self, task_id: str) -> str:
        return f"task.{validate_task_id(task_id)}"

    def parse_task_key(self, key: str) -> str:
        head, _, task_id = key.partition(".")
        if head != "task":
            raise InvalidName(f"not a task key: {key!r}")
        return validate_task_id(task_id)

    def offer_key(self, capability: str, task_id: str) -> str:
        return f"offer.{validate_capability(capability)}.{validate_task_id(task_id)}"

    def parse_offer_key(self, key: str) -> tuple[str, str]:
        parts = key.split(".")
        if len(parts) < 3 or parts[0] != "offer":
            raise InvalidName(f"not an offer key: {key!r}")
        return validate_capability(".".join(parts[1:-1])), validate_task_id(parts[-1])

    def offer_filter(self, served: str) -> str:
        """Key filter an agent serving ``served`` watches: the capability and everything
        below it (longest-prefix routing is decided on receipt by the fit rule)."""
        return f"offer.{validate_capability(served)}.>"

    # --- directory keys -----------------------------------------------------------
    def watch_slot_key(self, served: str, slot: int) -> str:
        """Directory key an agent holds (with a TTL it renews) while it watches the
        board of ``served``: one of :data:`BOARD_WATCH_SLOTS` slots."""
        if not 0 <= slot < BOARD_WATCH_SLOTS:
            raise InvalidName(f"watch slot {slot} out of range 0..{BOARD_WATCH_SLOTS - 1}")
        return f"watch.{validate_capability(served)}.{slot}"

    def parse_watch_slot_key(self, key: str) -> tuple[str, int]:
        parts = key.split(".")
        if len(parts) < 3 or parts[0] != "watch" or not parts[-1].isdigit():
            raise InvalidName(f"not a watch slot key: {key!r}")
        slot = int(parts[-1])
        if not 0 <= slot < BOARD_WATCH_SLOTS:
            raise InvalidName(f"watch slot {slot} out of range in {key!r}")
        return validate_capability(".".join(parts[1:-1])), slot

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

    def parse_event_subject(self, subject: str) -> tuple[str, str, str]:
        """Return (root, task_id, kind) of an event subject."""
        parts = subject.split(".")
        if len(parts) != 6 or parts[:3] != [self.prefix, f"v{MAJOR_VERSION}", "evt"]:
            raise InvalidName(f"not an event subject of mesh {self.prefix!r}: {subject!r}")
        return validate_task_id(parts[3]), validate_task_id(parts[4]), _validate_kind(parts[5])

    def error_subject(self, agent_id: str) -> str:
        return f"{self.prefix}.v{MAJOR_VERSION}.err.{validate_agent_id(agent_id)}"

    def work_subject(self, capability: str) -> str:
        """Where a newly open offer is also *nudged* to one agent per served capability
        (a NATS queue group), so that not every idle agent races for it."""
        return f"{self.prefix}.v{MAJOR_VERSION}.work.{validate_capability(capability)}"

    def work_filters(self, served: str) -> tuple[str, str]:
        """The subjects an agent serving ``served`` takes nudges on: the capability
        itself and everything below it."""
        base = self.work_subject(served)
        return base, f"{base}.>"

    def beat_subject(self, task_id: str, capability: str) -> str:
        """Where an owner announces each lease renewal (core NATS, not stored)."""
        return f"{self.prefix}.v{MAJOR_VERSION}.beat.{validate_task_id(task_id)}.{validate_capability(capability)}"

    def beat_filters(self, served: str) -> tuple[str, str]:
        """The lease beats of every task an agent serving ``served`` could observe."""
        cap = validate_capability(served)
        return f"{self.prefix}.v{MAJOR_VERSION}.beat.*.{cap}", f"{self.prefix}.v{MAJOR_VERSION}.beat.*.{cap}.>"

    def task_beats(self, task_id: str) -> str:
        """The lease beats of one task (for its parties)."""
        return f"{self.prefix}.v{MAJOR_VERSION}.beat.{validate_task_id(task_id)}.>"

    def work_queue(self, served: str) -> str:
        """Queue group of the agents serving ``served``: one of them gets each nudge."""
        return f"{self.prefix}-v{MAJOR_VERSION}-work-{validate_capability(served)}"

    def control_subject(self, agent_id: str) -> str:
        """Request subject of an agent's control endpoint (drain, status)."""
        return f"{self.prefix}.v{MAJOR_VERSION}.ctl.{validate_agent_id(agent_id)}"
