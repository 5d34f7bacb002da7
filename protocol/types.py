"""Wire types: small frozen msgspec Structs, JSON on the wire.

Schema evolution (so agents of mixed versions can share a mesh): new fields always get
defaults, fields are never retyped or renamed, unknown fields are ignored on decode.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

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
    "Offer",
    "AgentCard",
    "TaskEvent",
    "NotUnderstood",
    "ErrorReport",
    "LeaseBeat",
    "ControlRequest",
    "ControlReply",
    "A2ASkill",
    "A2AInterface",
    "A2ACard",
]

PROTOCOL_VERSION = 1

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
Quorum = Annotated[int, msgspec.Meta(ge=1, le=16)]


class _Wire(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=False):
    """Base of all wire types."""


class ReviewPolicy(_Wire, frozen=True, kw_only=True):
    """Verification before done: ``quorum`` distinct non-author approvals."""

    quorum: Quorum = 1
    capability: str = "review"
    max_reworks: NonNegInt = 2
    #: capability to hand the task to past ``max_reworks`` (e.g. ``human.review``);
    #: without one the task fails with reason ``rejected``.
    escalate_to: str | None = None
    #: how long an escalated task waits to be taken (people are slower than agents):
    #: it becomes the escalated task's ``claim_timeout_s``
    escalation_timeout_s: PosFloat = 3600.0


class Vote(_Wire, frozen=True, kw_only=True):
    reviewer: str
    verdict: Verdict
    reasons: tuple[str, ...] = ()
    #: the rework round the vote was cast in (``TaskRecord.reworks`` at the time)
    round: NonNegInt = 0
    at: float = 0.0


class ReviewSlot(_Wire, frozen=True, kw_only=True):
    """One of the ``quorum`` review slots of a round, held by a reviewer at work.

    A reviewer takes a slot (a ``reviewing`` transition) before it reviews, and holds it
    under a lease it renews with further ``reviewing`` heartbeats, each adding one to
    ``beat``. An observer that sees the same slot (``reviewer``, ``since``, ``beat``)
    unchanged for the review lease on its own monotonic clock may take it over, naming
    the ``beat`` it saw: a holder that renewed in between keeps its slot."""

    reviewer: str
    #: renewals so far: a per-slot fencing token for takeovers
    beat: NonNegInt = 0
    #: wall-clock time the slot was taken; shown, and part of the slot's identity (a
    #: reviewer that loses and retakes a slot never looks unchanged), never compared
    #: with another clock
    since: float = 0.0


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

    v: int = PROTOCOL_VERSION
    id: str
    capability: str
    instruction: str
    #: free JSON input for the task (documents, parameters)
    data: Any = None
    #: what a reviewer checks the result against
    criteria: str = ""
    #: expertise tags; agents declaring them fit better
    tags: tuple[str, ...] = ()
    requester: str
    state: State = "open"
    owner: str | None = None
    #: fencing token: grows by one on every claim
    epoch: NonNegInt = 0
    #: number of claims so far
    attempts: NonNegInt = 0
    #: times an owner was lost (lease expired); at ``max_lapses`` the task fails
    #: with ``error`` instead of poisoning agent after agent
    lapses: NonNegInt = 0
    max_lapses: Annotated[int, msgspec.Meta(ge=1)] = 3
    reworks: NonNegInt = 0
    review: ReviewPolicy | None = None
    votes: tuple[Vote, ...] = ()
    #: review slots held in the current round: reviewers at work who have not voted yet.
    #: With this round's approvals they never number more than ``review.quorum``
    slots: tuple[ReviewSlot, ...] = ()
    #: vetoes of earlier rounds, kept so the reworking owner sees every reason
    feedback: tuple[Vote, ...] = ()
    hops_left: NonNegInt = 8
    #: wall-clock seconds (Unix time); the one clock the protocol compares across
    #: machines, because a deadline is a promise to a person
    deadline: float | None = None
    budget: Budget | None = None
    spent: Usage = Usage()
    parent: str | None = None
    root: str
    #: fingerprints of (capability, instruction) of every ancestor: loop refusal
    lineage: tuple[str, ...] = ()
    children: tuple[str, ...] = ()
    checkpoint: Any = None
    progress: str = ""
    #: when the owner last reported progress (or claimed); a lease renewed with no
    #: progress for long marks the task as stuck in `mesh top`
    progress_at: float | None = None
    #: W3C ``traceparent`` of the task (children share the trace id); also sent as the
    #: ``traceparent`` header of the task's events
    trace: str | None = None
    result: Any = None
    #: who produced ``result`` (excluded from reviewing it)
    author: str | None = None
    reason: Reason | None = None
    error: str = ""
    #: owner's lease: observers re-open the task when its revision has not changed for
    #: this long, measured on their own monotonic clock
    lease_s: PosFloat = 10.0
    #: how long an open, never-claimed task waits for an agent before ``no_agent``
    claim_timeout_s: PosFloat = 10.0
    created: float
    updated: float


class Offer(_Wire, frozen=True, kw_only=True):
    """Board entry ``offer.<capability>.<task id>``: the only thing broadcast to every
    agent serving a capability. Written when a task opens (to be claimed) or enters
    review (to be reviewed), deleted when nobody needs to act on it any more. It is a
    hint: the record is the truth, and a claim is a CAS on ``revision``."""

    v: int = PROTOCOL_VERSION
    task: str
    capability: str
    #: ``open``: claim it; ``working``: watch the owner's lease; ``review``: review it
    #: (take a review slot), or, when ``full``, watch the slot holders' leases
    state: Literal["open", "working", "review"] = "open"
    #: revision of the task record the offer was made at
    revision: NonNegInt
    epoch: NonNegInt = 0
    owner: str | None = None
    tags: tuple[str, ...] = ()
    author: str | None = None
    #: the lease observers of this offer judge: the owner's (``TaskRecord.lease_s``) for
    #: ``open`` and ``working``, a review slot's (:func:`protocol.review_lease_s`) for ``review``
    lease_s: PosFloat = 10.0
    deadline: float | None = None
    #: a ``review`` offer whose review slots are all taken (held, or spent on approvals):
    #: no open offer to reviewers any more, who watch the holders' slot leases instead
    full: bool = False
    #: the record at ``revision``, when small enough to broadcast: a claimer or reviewer
    #: may then skip reading it (its compare-and-set on ``revision`` still decides)
    record: TaskRecord | None = None


class AgentCard(_Wire, frozen=True, kw_only=True):
    """Directory entry ``agent.<id>``, rewritten on every heartbeat with a message TTL,
    so it disappears by itself when the agent stops heartbeating."""

    v: int = PROTOCOL_VERSION
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
    heartbeat_s: PosFloat = 2.0
    #: counters since start, for fit (track record) and `mesh top`
    completed: NonNegInt = 0
    failed: NonNegInt = 0


class TaskEvent(_Wire, frozen=True, kw_only=True):
    """One event per transition, on ``<prefix>.v1.evt.<root>.<task>.<kind>``."""

    v: int = PROTOCOL_VERSION
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

    v: int = PROTOCOL_VERSION
    kind: Literal["not_understood"] = "not_understood"
    subject: str = ""
    error: str
    at: float = 0.0


class ErrorReport(_Wire, frozen=True, kw_only=True):
    """Published on ``<prefix>.v1.err.<agent>`` when an agent meets bad input or fails."""

    v: int = PROTOCOL_VERSION
    agent: str
    subject: str = ""
    key: str = ""
    error: str
    at: float = 0.0


class LeaseBeat(_Wire, frozen=True, kw_only=True):
    """Published (core NATS, not stored) on ``<prefix>.v1.beat.<task>.<capability>`` by
    an owner each time a lease renewal lands, so that observers see renewals when they
    happen instead of when they next read the record. A hint: an observer still reads
    the record before it re-opens a task."""

    v: int = PROTOCOL_VERSION
    task: str
    #: the record's revision after the renewal
    revision: int
    epoch: int
    owner: str


class ControlRequest(_Wire, frozen=True, kw_only=True):
    """Request on an agent's control endpoint."""

    v: int = PROTOCOL_VERSION
    action: Literal["status", "drain"]


class ControlReply(_Wire, frozen=True, kw_only=True):
    v: int = PROTOCOL_VERSION
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
