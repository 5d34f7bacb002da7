"""Limits on sizes, counts and durations: protocol rules, not runtime settings.

Every party checks them twice: on write (:func:`protocol.rules.new_task`,
:func:`protocol.rules.delegate` and :func:`protocol.machine.apply` refuse to make a
record outside them, with :class:`LimitExceeded`) and on read (the decoders refuse one
with :class:`~protocol.errors.RemoteProtocolError`). A peer that ignores them cannot make
a record that another party stores, forwards or works.

The numbers are chosen so that a serious deployment never meets them by accident, and
so that the largest record still travels in one NATS message: the broker's default
``max_payload`` is 1 MiB, and a work item and a terminal event each carry a whole
record. Bulk content belongs in an object store; a task carries a reference to it.

Sizes of free JSON fields (``data``, ``result``, ``checkpoint``) are the bytes of the
value's compact JSON encoding (UTF-8, no whitespace between tokens, non-ASCII not
escaped). Text lengths count Unicode code points, as JSON Schema's ``maxLength`` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgspec

from .errors import LocalProtocolError

__all__ = [
    "MAX_RECORD_BYTES",
    "MAX_CARD_BYTES",
    "HEADER_ROOM_BYTES",
    "MAX_DATA_BYTES",
    "MAX_RESULT_BYTES",
    "MAX_CHECKPOINT_BYTES",
    "MAX_INSTRUCTION_CHARS",
    "MAX_CRITERIA_CHARS",
    "MAX_PROGRESS_CHARS",
    "MAX_ERROR_CHARS",
    "MAX_TAGS",
    "MAX_TAG_CHARS",
    "MAX_CHILDREN",
    "MAX_HOPS",
    "MAX_LINEAGE",
    "MAX_QUORUM",
    "MAX_REWORKS",
    "MAX_FEEDBACK",
    "MAX_VOTES",
    "MAX_REASONS",
    "MAX_REASON_CHARS",
    "MAX_LAPSES",
    "MAX_CLAIM_TIMEOUT_S",
    "MAX_ESCALATION_TIMEOUT_S",
    "MAX_DEADLINE_S",
    "MAX_LEASE_S",
    "MAX_HEARTBEAT_S",
    "MAX_CARD_AGE_S",
    "Limit",
    "LIMITS",
    "LimitExceeded",
    "Breach",
    "record_breach",
    "check_record_limits",
    "json_size",
]

KIB = 1024

#: Encoded task record. A work item or a terminal event is a record plus an envelope of
#: well under 1 KiB; 768 KiB leaves a quarter of NATS' default 1 MiB ``max_payload``
#: for envelopes and headers, so a record that may be written can always be delivered.
MAX_RECORD_BYTES = 768 * KIB
#: Encoded agent card: a directory entry (ids, capability lists, a description and the ids
#: of the tasks the agent holds), rewritten on every heartbeat. 256 KiB holds hundreds of
#: capabilities and the tasks of an agent with a capacity in the thousands.
MAX_CARD_BYTES = 256 * KIB
#: What a bucket's value-size limit (its stream's ``max_msg_size``) leaves beyond
#: ``MAX_RECORD_BYTES`` or ``MAX_CARD_BYTES`` for a write's headers (compare-and-set,
#: TTL): the broker counts them, and refuses a larger value from a peer that does not.
HEADER_ROOM_BYTES = 4 * KIB
#: Task input. 256 KiB is about 64k tokens of text, more than most models take in one
#: request; documents larger than that go to an object store, referenced from ``data``.
MAX_DATA_BYTES = 256 * KIB
#: Task output, for the same reason as ``data``; with ``data`` at its limit too, the
#: record still fits under ``MAX_RECORD_BYTES``.
MAX_RESULT_BYTES = 256 * KIB
#: A resume point (a cursor, a step, a partial summary), rewritten with every progress
#: report and copied into every later revision: not a copy of the work.
MAX_CHECKPOINT_BYTES = 64 * KIB
#: A long prompt is a few thousand tokens; 32k characters (about 8k tokens) leaves room,
#: and bulk input belongs in ``data``.
MAX_INSTRUCTION_CHARS = 32 * KIB
#: What a reviewer checks against: a checklist, not a document.
MAX_CRITERIA_CHARS = 8 * KIB
#: One line shown in `mesh top` and the trail.
MAX_PROGRESS_CHARS = 2 * KIB
#: Why a task failed (a message and a short excerpt of a traceback); also a cancel note.
MAX_ERROR_CHARS = 8 * KIB
#: Expertise tags: labels, shown, not routed on.
MAX_TAGS = 16
MAX_TAG_CHARS = 64
#: Children of one task. A fan-out wider than this is a batch job: split it in levels.
#: The parent's list is rewritten with every write of the parent.
MAX_CHILDREN = 256
#: Hop limit of a task (the default is 8). Each hop is a handoff between agents; a chain
#: of 32 is far past any plan an agent can follow, and loops are refused anyway.
MAX_HOPS = 32
#: Ancestors' fingerprints: one per level, and a task ``MAX_HOPS`` deep may still make a
#: (refused) child.
MAX_LINEAGE = MAX_HOPS + 1
#: Review approvals asked for. Sixteen independent reviews of one result is already a
#: committee; each one is a paid model call.
MAX_QUORUM = 16
#: Rework rounds before a task is rejected or escalated. Each round is a full redo and a
#: full review; past a handful a person should decide.
MAX_REWORKS = 16
#: Vetoes kept for the reworking owner: one per round (the rounds and the final one).
MAX_FEEDBACK = MAX_REWORKS + 1
#: Votes of the current round: at most the quorum's approvals and the veto that ends it.
MAX_VOTES = MAX_QUORUM + 1
#: Reasons of one veto, and the length of each: a short list of points to fix.
MAX_REASONS = 8
MAX_REASON_CHARS = 1 * KIB
#: Owners lost before a task fails ``error`` (the default is 3): a task that kills 16
#: agents in turn is poison, not bad luck.
MAX_LAPSES = 16
#: How long a task may sit with nobody able to act on it before it ends ``no_agent``.
#: A week covers a person's inbox over a weekend or a holiday; a longer wait is a
#: schedule, and a schedule is a ``deadline``.
MAX_CLAIM_TIMEOUT_S = 7 * 24 * 3600.0
#: An escalated task's claim timeout (people are slower than agents): the same week.
MAX_ESCALATION_TIMEOUT_S = MAX_CLAIM_TIMEOUT_S
#: A deadline at most this long after the task was created. A promise to a person is
#: counted in days or weeks; a year is the largest calendar anyone plans a task in, and a
#: finite bound keeps every sum of times finite.
MAX_DEADLINE_S = 366 * 24 * 3600.0
#: Lease of a queue (its consumer's ack wait). A dead owner's work comes back after one
#: lease, and a live owner renews every third of one: a longer lease only slows failover.
MAX_LEASE_S = 3600.0
#: An agent's heartbeat period (its card's TTL follows it). A presence renewed less than
#: hourly says nothing about whether the agent is there.
MAX_HEARTBEAT_S = 3600.0
#: The longest a card stays in the directory after its last put: its TTL is three
#: heartbeats, and the directory's stream ages out anything older (a card put without
#: a TTL, or with a longer one, goes too).
MAX_CARD_AGE_S = 3 * MAX_HEARTBEAT_S


@dataclass(frozen=True)
class Limit:
    """One row of the limits table (docs/PROTOCOL.md, section Limits)."""

    #: the field, as ``record.field`` (or ``card``, ``lease``...)
    field: str
    limit: float
    unit: str
    #: how a reader enforces it: ``schema`` (the JSON Schema says it), ``decoder`` (a
    #: check after decoding) or ``runtime`` (not on the wire)
    read: str
    why: str
    #: who refuses to write it
    write: str = "new_task, delegate, apply"


#: Why each limit has its value, in a few words (the comments above the constants say more).
_WHY: dict[str, str] = {
    "record": "a work item and a terminal event carry the record: it fits NATS' 1 MiB max_payload with room for them",
    "card": "a directory entry rewritten on every heartbeat: hundreds of capabilities, thousands of held tasks",
    "data": "about 64k tokens of text; bulk input goes to an object store, referenced from `data`",
    "result": "as `data`; both at their limits still fit in a record",
    "checkpoint": "a resume point copied into every later revision, not a copy of the work",
    "instruction": "a long prompt (about 8k tokens); bulk input belongs in `data`",
    "criteria": "a checklist for the reviewer, not a document",
    "progress": "one line in `mesh top` and the trail",
    "error": "a message and a short traceback excerpt",
    "tags": "labels shown with the task",
    "children": "a wider fan-out is a batch job: split it in levels",
    "hops": "32 handoffs is far past any plan; the default is 8",
    "lineage": "one fingerprint per level, plus a refused child of the deepest",
    "quorum": "sixteen reviews of one result is a committee; each is a paid model call",
    "max_reworks": "each round is a full redo and review; past a handful a person decides",
    "feedback": "one veto per round",
    "votes": "the round's approvals and the veto that ends it",
    "reasons": "a short list of points to fix",
    "max_lapses": "a task that kills 16 agents in turn is poison",
    "claim_timeout_s": "a week covers a person's inbox over a holiday; a longer wait is a deadline",
    "deadline": "finite, at most a year after `created`: the largest calendar a task is planned in",
    "lease": "a dead owner's work comes back after one lease: a longer one only slows failover",
    "heartbeat_s": "a presence renewed less than hourly says nothing",
}

LIMITS: tuple[Limit, ...] = (
    Limit("task record (encoded)", MAX_RECORD_BYTES, "bytes", "decoder", _WHY["record"]),
    Limit("agent card (encoded)", MAX_CARD_BYTES, "bytes", "decoder", _WHY["card"], write="-"),
    Limit("record.data (encoded)", MAX_DATA_BYTES, "bytes", "decoder", _WHY["data"]),
    Limit("record.result (encoded)", MAX_RESULT_BYTES, "bytes", "decoder", _WHY["result"]),
    Limit("record.checkpoint (encoded)", MAX_CHECKPOINT_BYTES, "bytes", "decoder", _WHY["checkpoint"]),
    Limit("record.instruction", MAX_INSTRUCTION_CHARS, "characters", "schema", _WHY["instruction"]),
    Limit("record.criteria", MAX_CRITERIA_CHARS, "characters", "schema", _WHY["criteria"]),
    Limit("record.progress", MAX_PROGRESS_CHARS, "characters", "schema", _WHY["progress"]),
    Limit("record.error", MAX_ERROR_CHARS, "characters", "schema", _WHY["error"]),
    Limit("record.tags", MAX_TAGS, "entries", "schema", _WHY["tags"]),
    Limit("record.tags[]", MAX_TAG_CHARS, "characters", "schema", _WHY["tags"]),
    Limit("record.children", MAX_CHILDREN, "entries", "schema", _WHY["children"]),
    Limit("record.hops_left", MAX_HOPS, "hops", "schema", _WHY["hops"]),
    Limit("record.lineage", MAX_LINEAGE, "entries", "schema", _WHY["lineage"]),
    Limit("record.review.quorum", MAX_QUORUM, "approvals", "schema", _WHY["quorum"]),
    Limit("record.review.max_reworks", MAX_REWORKS, "rounds", "schema", _WHY["max_reworks"]),
    Limit("record.feedback", MAX_FEEDBACK, "entries", "schema", _WHY["feedback"]),
    Limit("record.votes", MAX_VOTES, "entries", "schema", _WHY["votes"]),
    Limit("record.slots", MAX_QUORUM, "entries", "schema", _WHY["quorum"]),
    Limit("record.votes[].reasons, record.feedback[].reasons", MAX_REASONS, "entries", "schema", _WHY["reasons"]),
    Limit(
        "record.votes[].reasons[], record.feedback[].reasons[]",
        MAX_REASON_CHARS,
        "characters",
        "schema",
        _WHY["reasons"],
    ),
    Limit("record.max_lapses, record.lapses", MAX_LAPSES, "lapses", "schema", _WHY["max_lapses"]),
    Limit("record.reworks, votes[].round, work item round", MAX_REWORKS, "rounds", "schema", _WHY["max_reworks"]),
    Limit("work item slot", MAX_QUORUM - 1, "(index)", "schema", "one item per review slot of the quorum"),
    Limit("record.claim_timeout_s", MAX_CLAIM_TIMEOUT_S, "seconds", "schema", _WHY["claim_timeout_s"]),
    Limit("record.review.escalation_timeout_s", MAX_ESCALATION_TIMEOUT_S, "seconds", "schema", _WHY["claim_timeout_s"]),
    Limit("record.deadline", MAX_DEADLINE_S, "seconds after created", "decoder", _WHY["deadline"]),
    Limit("lease of a queue (consumer ack_wait)", MAX_LEASE_S, "seconds", "runtime", _WHY["lease"], "MESH_LEASE_S"),
    Limit("card.heartbeat_s", MAX_HEARTBEAT_S, "seconds", "schema", _WHY["heartbeat_s"], write="-"),
)


class LimitExceeded(LocalProtocolError):
    """We were asked to write a value over a protocol limit. ``field`` names it,
    ``size`` is the value's size (or the value, for a duration or a count) and ``limit``
    the bound, in ``unit``."""

    def __init__(self, field: str, size: float, limit: float, unit: str) -> None:
        self.field = field
        self.size = size
        self.limit = limit
        self.unit = unit
        super().__init__(str(Breach(field, size, limit, unit)))


def _num(x: float) -> str:
    return str(int(x)) if isinstance(x, int) or (math.isfinite(x) and x == int(x)) else repr(x)


_encoder = msgspec.json.Encoder()


def json_size(value: Any) -> int:
    """Bytes of ``value``'s compact JSON encoding."""
    return len(_encoder.encode(value))


@dataclass(frozen=True)
class Breach:
    """A limit a record breaks: the write side raises it as :class:`LimitExceeded`, the
    read side as a :class:`~protocol.errors.RemoteProtocolError`."""

    field: str
    size: float
    limit: float
    unit: str

    def __str__(self) -> str:
        if self.unit == _NOT_FINITE:
            return f"{self.field} is {self.size!r}: {_NOT_FINITE}"
        return f"{self.field} is {_num(self.size)} {self.unit}, over the limit of {_num(self.limit)} {self.unit}"


_NOT_FINITE = "not a finite number"


def _finite(field: str, value: float | None) -> Breach | None:
    if value is not None and not math.isfinite(value):
        return Breach(field, value, 0, _NOT_FINITE)
    return None


def record_breach(record: Any, size: int | None = None) -> Breach | None:
    """The first limit ``record`` (a :class:`~protocol.types.TaskRecord`) breaks, or None.

    ``size`` is the length of its encoding if the caller has it (a reader has the bytes);
    free JSON fields are measured only when the whole record is larger than the smallest
    of their limits, so a small record costs no encoding at all."""
    if size is None:
        # Non-finite floats first: JSON has no such numbers (they would encode as null).
        breach = _float_breach(record)
        if breach is not None:
            return breach
        size = json_size(record)
    if size <= MAX_CHECKPOINT_BYTES and _plainly_within(record):
        return None  # the common case, every write and read: no list of checks built
    # (field, size, limit, unit), the most specific first: a 900 KB `data` is named as
    # such, not as a record too large.
    checks: list[tuple[str, float, float, str]] = []
    if size > MAX_CHECKPOINT_BYTES:
        checks += [
            ("data", json_size(record.data), MAX_DATA_BYTES, "bytes"),
            ("result", json_size(record.result), MAX_RESULT_BYTES, "bytes"),
            ("checkpoint", json_size(record.checkpoint), MAX_CHECKPOINT_BYTES, "bytes"),
        ]
    checks += [
        ("task record", size, MAX_RECORD_BYTES, "bytes"),
        ("instruction", len(record.instruction), MAX_INSTRUCTION_CHARS, "characters"),
        ("criteria", len(record.criteria), MAX_CRITERIA_CHARS, "characters"),
        ("progress", len(record.progress), MAX_PROGRESS_CHARS, "characters"),
        ("error", len(record.error), MAX_ERROR_CHARS, "characters"),
        ("tags", len(record.tags), MAX_TAGS, "entries"),
        ("tags[]", max(map(len, record.tags), default=0), MAX_TAG_CHARS, "characters"),
        ("children", len(record.children), MAX_CHILDREN, "entries"),
        ("hops_left", record.hops_left, MAX_HOPS, "hops"),
        ("lineage", len(record.lineage), MAX_LINEAGE, "entries"),
        ("feedback", len(record.feedback), MAX_FEEDBACK, "entries"),
        ("votes", len(record.votes), MAX_VOTES, "entries"),
        ("slots", len(record.slots), MAX_QUORUM, "entries"),
        ("max_lapses", record.max_lapses, MAX_LAPSES, "lapses"),
        ("lapses", record.lapses, MAX_LAPSES, "lapses"),
        ("reworks", record.reworks, MAX_REWORKS, "rounds"),
        ("claim_timeout_s", record.claim_timeout_s, MAX_CLAIM_TIMEOUT_S, "seconds"),
    ]
    for name, votes in (("votes", record.votes), ("feedback", record.feedback)):
        for vote in votes:
            checks += [
                (f"{name}[].reasons", len(vote.reasons), MAX_REASONS, "entries"),
                (f"{name}[].reasons[]", max(map(len, vote.reasons), default=0), MAX_REASON_CHARS, "characters"),
            ]
    review = record.review
    if review is not None:
        checks += [
            ("review.quorum", review.quorum, MAX_QUORUM, "approvals"),
            ("review.max_reworks", review.max_reworks, MAX_REWORKS, "rounds"),
            ("review.escalation_timeout_s", review.escalation_timeout_s, MAX_ESCALATION_TIMEOUT_S, "seconds"),
        ]
    if record.deadline is not None:
        checks.append(("deadline", record.deadline - record.created, MAX_DEADLINE_S, "seconds after created"))
    for field, value, limit, unit in checks:
        if value > limit:
            return Breach(field, value, limit, unit)
    return None


def _plainly_within(record: Any) -> bool:
    """The checks of :func:`record_breach` for a record too small for its free JSON
    fields to matter, as plain comparisons (True: no limit broken)."""
    review = record.review
    return (
        len(record.instruction) <= MAX_INSTRUCTION_CHARS
        and len(record.criteria) <= MAX_CRITERIA_CHARS
        and len(record.progress) <= MAX_PROGRESS_CHARS
        and len(record.error) <= MAX_ERROR_CHARS
        and len(record.tags) <= MAX_TAGS
        and all(len(tag) <= MAX_TAG_CHARS for tag in record.tags)
        and len(record.children) <= MAX_CHILDREN
        and record.hops_left <= MAX_HOPS
        and len(record.lineage) <= MAX_LINEAGE
        and len(record.feedback) <= MAX_FEEDBACK
        and len(record.votes) <= MAX_VOTES
        and len(record.slots) <= MAX_QUORUM
        and record.max_lapses <= MAX_LAPSES
        and record.lapses <= MAX_LAPSES
        and record.reworks <= MAX_REWORKS
        and record.claim_timeout_s <= MAX_CLAIM_TIMEOUT_S
        and all(
            len(vote.reasons) <= MAX_REASONS and all(len(r) <= MAX_REASON_CHARS for r in vote.reasons)
            for vote in (*record.votes, *record.feedback)
        )
        and (
            review is None
            or (
                review.quorum <= MAX_QUORUM
                and review.max_reworks <= MAX_REWORKS
                and review.escalation_timeout_s <= MAX_ESCALATION_TIMEOUT_S
            )
        )
        and (record.deadline is None or record.deadline - record.created <= MAX_DEADLINE_S)
    )


def _float_breach(record: Any) -> Breach | None:
    if _finite_floats(record):
        return None
    floats: list[tuple[str, float | None]] = [
        ("created", record.created),
        ("updated", record.updated),
        ("deadline", record.deadline),
        ("claim_timeout_s", record.claim_timeout_s),
        ("progress_at", record.progress_at),
        ("spent.cost", record.spent.cost),
    ]
    if record.budget is not None:
        floats.append(("budget.cost", record.budget.cost))
    if record.review is not None:
        floats.append(("review.escalation_timeout_s", record.review.escalation_timeout_s))
    return next((b for name, value in floats if (b := _finite(name, value)) is not None), None)


def _finite_floats(record: Any) -> bool:
    isfinite = math.isfinite
    return (
        isfinite(record.created)
        and isfinite(record.updated)
        and (record.deadline is None or isfinite(record.deadline))
        and isfinite(record.claim_timeout_s)
        and (record.progress_at is None or isfinite(record.progress_at))
        and isfinite(record.spent.cost)
        and (record.budget is None or record.budget.cost is None or isfinite(record.budget.cost))
        and (record.review is None or isfinite(record.review.escalation_timeout_s))
    )


def check_record_limits(record: Any) -> None:
    """Raise :class:`LimitExceeded` if ``record`` breaks a limit (the write side)."""
    breach = record_breach(record)
    if breach is not None:
        raise LimitExceeded(breach.field, breach.size, breach.limit, breach.unit)
