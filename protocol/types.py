"""Wire types: small frozen msgspec Structs, JSON on the wire.

Schema evolution (so agents of mixed versions can share a mesh): new fields always get
defaults, fields are never retyped or renamed, unknown fields are ignored on decode.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from . import limits as L

__all__ = [
    "PROTOCOL_VERSION",
    "State",
    "Reason",
    "TERMINAL_STATES",
    "REASONS",
    "Verdict",
    "ReviewPolicy",
    "Vote",
    "ReviewSlot",
    "Budget",
    "Usage",
    "TaskRecord",
    "WorkItem",
    "AgentCard",
    "TaskEvent",
    "NotUnderstood",
    "ErrorReport",
    "ControlRequest",
    "ControlReply",
    "A2ASkill",
    "A2AInterface",
    "A2ACard",
]

PROTOCOL_VERSION = 2

State = Literal["open", "working", "review", "done", "failed", "cancelled"]
TERMINAL_STATES: frozenset[str] = frozenset({"done", "failed", "cancelled"})

#: The closed set of reasons a task can end without ``done``.
Reason = Literal["hop_limit", "deadline", "budget", "no_agent", "rejected", "loop", "error", "cancelled"]
REASONS: tuple[str, ...] = (
    "hop_limit",
    "deadline",
    "budget",
    "no_agent",
    "rejected",
    "loop",
    "error",
    "cancelled",
)

Verdict = Literal["approve", "veto"]

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]
PosFloat = Annotated[float, msgspec.Meta(gt=0)]
Quorum = Annotated[int, msgspec.Meta(ge=1, le=L.MAX_QUORUM)]
#: The ``v`` field of every message: the protocol's major version, nothing else (a record
#: of another major version follows other rules; working it would break them).
Version = Annotated[int, msgspec.Meta(ge=PROTOCOL_VERSION, le=PROTOCOL_VERSION)]
# Limits (protocol/limits.py says why each has its value); the decoders enforce these,
# the JSON Schemas publish them, and the write side checks them in protocol.limits.
Reworks = Annotated[int, msgspec.Meta(ge=0, le=L.MAX_REWORKS)]
Hops = Annotated[int, msgspec.Meta(ge=0, le=L.MAX_HOPS)]
Lapses = Annotated[int, msgspec.Meta(ge=1, le=L.MAX_LAPSES)]
LapseCount = Annotated[int, msgspec.Meta(ge=0, le=L.MAX_LAPSES)]
SlotIndex = Annotated[int, msgspec.Meta(ge=0, le=L.MAX_QUORUM - 1)]
ClaimTimeout = Annotated[float, msgspec.Meta(gt=0, le=L.MAX_CLAIM_TIMEOUT_S)]
EscalationTimeout = Annotated[float, msgspec.Meta(gt=0, le=L.MAX_ESCALATION_TIMEOUT_S)]
Heartbeat = Annotated[float, msgspec.Meta(gt=0, le=L.MAX_HEARTBEAT_S)]
Lease = Annotated[float, msgspec.Meta(gt=0, le=L.MAX_LEASE_S)]
Instruction = Annotated[str, msgspec.Meta(max_length=L.MAX_INSTRUCTION_CHARS)]
Criteria = Annotated[str, msgspec.Meta(max_length=L.MAX_CRITERIA_CHARS)]
Progress = Annotated[str, msgspec.Meta(max_length=L.MAX_PROGRESS_CHARS)]
ErrorText = Annotated[str, msgspec.Meta(max_length=L.MAX_ERROR_CHARS)]
Tag = Annotated[str, msgspec.Meta(max_length=L.MAX_TAG_CHARS)]
ReasonText = Annotated[str, msgspec.Meta(max_length=L.MAX_REASON_CHARS)]
Reasons = Annotated[tuple[ReasonText, ...], msgspec.Meta(max_length=L.MAX_REASONS)]


class _Wire(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=False):
    """Base of all wire types."""


class ReviewPolicy(_Wire, frozen=True, kw_only=True):
    """Verification before done: ``quorum`` distinct non-author approvals."""

    quorum: Quorum = 1
    capability: str = "review"
    max_reworks: Reworks = 2
    #: capability to hand the task to past ``max_reworks`` (e.g. ``human.review``);
    #: without one the task fails with reason ``rejected``.
    escalate_to: str | None = None
    #: how long an escalated task waits to be taken (people are slower than agents):
    #: it becomes the escalated task's ``claim_timeout_s``
    escalation_timeout_s: EscalationTimeout = 3600.0
    #: distinct vetoes that reject a result in the last round (``reworks == max_reworks``):
    #: short of them the round goes on with another reviewer, so one noisy reviewer costs
    #: a review, not the task. 1 is the rule of every other round: the first veto decides.
    reject_quorum: Quorum = 1


class Vote(_Wire, frozen=True, kw_only=True):
    reviewer: str
    verdict: Verdict
    reasons: Reasons = ()
    #: the rework round the vote was cast in (``TaskRecord.reworks`` at the time)
    round: Reworks = 0
    at: float = 0.0
    #: the voter's public key (nkey ``U...``): the one that signed the write casting this
    #: vote (protocol.signing); one key votes once a round, whatever name it gives
    key: str | None = None


class ReviewSlot(_Wire, frozen=True, kw_only=True):
    """One of the ``quorum`` review slots of a round, held by a reviewer at work.

    A reviewer takes a slot (a ``reviewing`` transition) under the review work item it
    holds, whose sequence in the work stream is the slot's ``ticket``. The broker lends
    the item to one reviewer at a time, under its queue's lease: if that reviewer stops
    renewing, the broker delivers the same item to another reviewer, who takes the slot
    over by naming the same ticket."""

    reviewer: str
    #: the review work item the holder holds (its stream sequence)
    ticket: NonNegInt | None = None
    #: wall-clock time the slot was taken; shown only
    since: float = 0.0
    #: the holder's public key: the one that signed the write taking the slot
    key: str | None = None


class Budget(_Wire, frozen=True, kw_only=True):
    """Ceilings; ``None`` means unlimited."""

    tokens: NonNegInt | None = None
    cost: NonNegFloat | None = None


class Usage(_Wire, frozen=True, kw_only=True):
    tokens: NonNegInt = 0
    cost: NonNegFloat = 0.0


class TaskRecord(_Wire, frozen=True, kw_only=True):
    """The truth about one task: the value of key ``task.<id>`` in the tasks bucket.

    Every change is a compare-and-set on the key's revision, made by applying one
    event to the record with :func:`protocol.machine.apply`.
    """

    v: Version = PROTOCOL_VERSION
    id: str
    capability: str
    instruction: Instruction
    #: free JSON input for the task (documents, parameters)
    data: Any = None
    #: what a reviewer checks the result against
    criteria: Criteria = ""
    #: expertise tags (shown with the task and in agents' cards; no allocation rule reads them)
    tags: Annotated[tuple[Tag, ...], msgspec.Meta(max_length=L.MAX_TAGS)] = ()
    requester: str
    #: the requester's public key (nkey ``U...``), recorded at submission: the key that
    #: may cancel the task (with operators'). None in a mesh without identities
    requester_key: str | None = None
    state: State = "open"
    owner: str | None = None
    #: the owner's public key, recorded by its claim (the key that signed it): the key
    #: that may write the owner's transitions at this epoch
    owner_key: str | None = None
    #: fencing token: grows by one on every claim
    epoch: NonNegInt = 0
    #: number of claims so far
    attempts: NonNegInt = 0
    #: the work item the owner holds: its sequence in the work stream. The broker lends
    #: an item to one agent at a time under its queue's lease; a delivery of the same
    #: item to another agent means the owner stopped renewing, and that agent may take
    #: the task over (:class:`protocol.events.Claim` with this ticket)
    ticket: NonNegInt | None = None
    #: the lease of the owner's work item (its queue's ``ack_wait``), recorded by its
    #: claim: the owner writes its record at least every third of it while it works, and
    #: a takeover counts only once the record has gone unwritten for a whole lease
    #: (PROTOCOL.md 6.5, 6.23). None for an owner holding no item
    item_lease_s: Lease | None = None
    #: times an owner was lost (its lease lapsed and another agent took the task over);
    #: at ``max_lapses`` the task fails with ``error`` instead of poisoning agent after agent
    lapses: LapseCount = 0
    max_lapses: Lapses = 3
    reworks: Reworks = 0
    review: ReviewPolicy | None = None
    votes: Annotated[tuple[Vote, ...], msgspec.Meta(max_length=L.MAX_VOTES)] = ()
    #: review slots held in the current round: reviewers at work who have not voted yet.
    #: With this round's approvals they never number more than ``review.quorum``
    slots: Annotated[tuple[ReviewSlot, ...], msgspec.Meta(max_length=L.MAX_QUORUM)] = ()
    #: vetoes of earlier rounds, kept so the reworking owner sees every reason
    feedback: Annotated[tuple[Vote, ...], msgspec.Meta(max_length=L.MAX_FEEDBACK)] = ()
    hops_left: Hops = 8
    #: wall-clock seconds (Unix time); the one clock the protocol compares across
    #: machines, because a deadline is a promise to a person
    deadline: float | None = None
    budget: Budget | None = None
    spent: Usage = Usage()
    parent: str | None = None
    root: str
    #: fingerprints of (capability, instruction) of every ancestor: loop refusal
    lineage: Annotated[tuple[str, ...], msgspec.Meta(max_length=L.MAX_LINEAGE)] = ()
    children: Annotated[tuple[str, ...], msgspec.Meta(max_length=L.MAX_CHILDREN)] = ()
    checkpoint: Any = None
    progress: Progress = ""
    #: when the owner last reported progress (or claimed); a lease renewed with no
    #: progress for long marks the task as stuck in `mesh top`
    progress_at: float | None = None
    #: W3C ``traceparent`` of the task (children share the trace id); also sent as the
    #: ``traceparent`` header of the task's events
    trace: str | None = None
    result: Any = None
    #: who produced ``result`` (excluded from reviewing it)
    author: str | None = None
    #: the author's public key: no vote signed by it counts
    author_key: str | None = None
    reason: Reason | None = None
    error: ErrorText = ""
    #: how long a waiting party lets the task sit unchanged while nobody can act on it
    #: before it ends ``no_agent`` (:func:`protocol.judge_waiting`): open with nobody at
    #: its queue, in review with no reviewer started, or held without a work item by an
    #: owner that stopped writing
    claim_timeout_s: ClaimTimeout = 10.0
    created: float
    updated: float


class WorkItem(_Wire, frozen=True, kw_only=True):
    """A message in the work stream, on ``<prefix>.v2.work.<capability>``: someone
    serving ``capability`` must act on task ``task``. Agents *pull* items from the
    queue of each capability they serve only while they have free capacity; the broker
    lends each item to one agent at a time, under the queue's lease.

    ``kind`` says what to do: ``work``, claim the task and work on it; ``review``, take
    a review slot of round ``round`` and vote. The item carries the record as it was at
    ``revision``; a claim or a slot is a compare-and-set on that revision (or on a newer
    one read from the bucket). Revision 0 means the record is not in the tasks bucket
    yet: a new task exists only in its work item until someone claims, cancels or
    expires it, which *creates* the key."""

    v: Version = PROTOCOL_VERSION
    task: str
    kind: Literal["work", "review"] = "work"
    #: the queue: the task's capability for ``work``, its reviewer capability for ``review``
    capability: str
    #: revision of the record when the item was made (0: not in the bucket yet)
    revision: NonNegInt
    #: the review round (``TaskRecord.reworks``) a review item is for
    round: Reworks = 0
    #: which of the round's ``quorum`` review slots the item stands for (0 for work)
    slot: SlotIndex = 0
    record: TaskRecord


class AgentCard(_Wire, frozen=True, kw_only=True):
    """Directory entry ``agent.<id>``, rewritten on every heartbeat with a message TTL,
    so it disappears by itself when the agent stops heartbeating."""

    v: Version = PROTOCOL_VERSION
    id: str
    role: str = ""
    description: str = ""
    kind: str = ""
    serves: tuple[str, ...] = ()
    delegates: tuple[str, ...] = ()
    expertise: tuple[str, ...] = ()
    capacity: Annotated[int, msgspec.Meta(ge=1)] = 1
    load: NonNegInt = 0
    tasks: tuple[str, ...] = ()
    draining: bool = False
    version: str = ""
    public_key: str | None = None
    host: str = ""
    pid: int = 0
    started: float = 0.0
    heartbeat_s: Heartbeat = 2.0
    #: counters since start, for `mesh top`
    completed: NonNegInt = 0
    failed: NonNegInt = 0
    #: bad input this agent refused since start (messages or records that did not
    #: decode, items outside its brief), reported on its error subject or held back
    refused: NonNegInt = 0


class TaskEvent(_Wire, frozen=True, kw_only=True):
    """One event per record write, on ``<prefix>.v2.evt.<root>.<task>.<kind>``: the kind of
    the write's last transition (``note`` names them all when it applied several), or
    ``created`` for a new task; ``ended`` for an end found on the record that its writer
    did not announce, or for an unreadable record a party ended; ``recovered`` for
    another write its writer did not announce (it went silent right after writing)."""

    v: Version = PROTOCOL_VERSION
    kind: str
    task: str
    root: str
    parent: str | None = None
    capability: str
    actor: str
    epoch: NonNegInt = 0
    state: State
    reason: Reason | None = None
    note: str = ""
    at: float
    #: terminal events carry the final record, so a waiting party needs no extra read
    record: TaskRecord | None = None


class NotUnderstood(_Wire, frozen=True, kw_only=True):
    """Answer to a message an agent cannot decode or does not know."""

    v: Version = PROTOCOL_VERSION
    kind: Literal["not_understood"] = "not_understood"
    subject: str = ""
    error: str
    at: float = 0.0


class ErrorReport(_Wire, frozen=True, kw_only=True):
    """Published on ``<prefix>.v2.err.<agent>`` when an agent meets bad input or fails."""

    v: Version = PROTOCOL_VERSION
    agent: str
    subject: str = ""
    key: str = ""
    error: str
    at: float = 0.0


class ControlRequest(_Wire, frozen=True, kw_only=True):
    """Request on an agent's control endpoint."""

    v: Version = PROTOCOL_VERSION
    action: Literal["status", "drain"]


class ControlReply(_Wire, frozen=True, kw_only=True):
    v: Version = PROTOCOL_VERSION
    agent: str
    action: str
    ok: bool = True
    draining: bool = False
    tasks: tuple[str, ...] = ()
    error: str = ""


# --- A2A-compatible card view (a2a-sdk field names, mirrored, no SDK dependency) ------


class A2ASkill(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    id: str
    name: str
    description: str = ""
    tags: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()


class A2AInterface(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    url: str
    protocol_binding: str
    protocol_version: str


class A2ACard(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    name: str
    description: str
    version: str
    supported_interfaces: tuple[A2AInterface, ...] = ()
    skills: tuple[A2ASkill, ...] = ()
    capabilities: dict[str, Any] = {}
