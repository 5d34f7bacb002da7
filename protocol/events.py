"""Transition inputs: what an actor asks to do to a task record.

Each is a tagged Struct (``{"kind": "claim", ...}``), so a transition can be logged,
replayed from a conformance vector, or sent over the wire by an agent in any language.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from .types import ErrorText, Lease, NonNegInt, Progress, Reasons, Usage

__all__ = [
    "Claim",
    "Renew",
    "AddChild",
    "Finish",
    "Fail",
    "Release",
    "Reviewing",
    "Approve",
    "Veto",
    "Charge",
    "Cancel",
    "Expire",
    "Event",
    "EVENT_KINDS",
    "OwnerEvent",
]


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind"):
    actor: str


class _OwnerEvent(_Event, frozen=True, kw_only=True):
    """An event only the current owner may make, fenced by ``epoch``."""

    epoch: NonNegInt


class Claim(_Event, frozen=True, kw_only=True, tag="claim"):
    """Take the task: become its owner with the next epoch, holding work item
    ``ticket`` (its sequence in the work stream; ``None`` for a party that holds no
    item, such as a person answering from an inbox).

    A claim of an open task takes it. A claim of a ``working`` task takes it over, and
    is allowed only with the ticket the owner holds: the broker lends an item to one
    agent at a time, so receiving the owner's own item means its lease lapsed."""

    ticket: NonNegInt | None = None
    #: the lease of that item (its queue's ``ack_wait``): recorded in the record
    item_lease_s: Lease | None = None


class Renew(_OwnerEvent, frozen=True, kw_only=True, tag="renew"):
    """Record progress and optionally a checkpoint: a new revision the task's parties see.

    An owner holding no work item (a person, a client answering a question) renews its
    hold this way, since only its writes show that it is alive; an agent renews the
    lease on its work item with the broker instead (in-progress acknowledgements)."""

    progress: Progress | None = None
    checkpoint: Any = None


class AddChild(_OwnerEvent, frozen=True, kw_only=True, tag="add_child"):
    """Checkpoint a handoff: the owner created child task ``child``."""

    child: str


class Finish(_OwnerEvent, frozen=True, kw_only=True, tag="finish"):
    """Submit the result: ``done``, or ``review`` if the task has a review policy."""

    result: Any = None


class Fail(_OwnerEvent, frozen=True, kw_only=True, tag="fail"):
    """Give up the task for good with a reason from the closed set."""

    reason: Literal["error", "rejected", "budget", "hop_limit", "loop", "deadline"] = "error"
    message: ErrorText = ""


class Release(_OwnerEvent, frozen=True, kw_only=True, tag="release"):
    """Hand the task back (drain): it is open again for any eligible agent."""

    #: becomes the record's ``progress``
    note: Progress = ""


class Reviewing(_Event, frozen=True, kw_only=True, tag="reviewing"):
    """A reviewer takes, renews or gives back a review slot of the result at ``epoch``.

    With ``ticket`` (the review work item the reviewer holds) it takes over the slot
    held under that ticket, if another reviewer holds it (the broker delivered the item
    again: its holder's lease lapsed); else it takes a free slot under that ticket. A
    holder may renew (progress only), or with ``release`` give its slot back without
    voting. Each one changes the record's revision, so the parties see who reviews."""

    epoch: NonNegInt
    #: the review work item the actor holds (its sequence in the work stream)
    ticket: NonNegInt | None = None
    #: the holder gives its slot back without voting (draining, a reviewer error)
    release: bool = False


class Approve(_Event, frozen=True, kw_only=True, tag="approve"):
    """A reviewer approves the current result (round = ``reworks``)."""

    epoch: NonNegInt


class Veto(_Event, frozen=True, kw_only=True, tag="veto"):
    """A reviewer sends the result back; reasons are required."""

    epoch: NonNegInt
    reasons: Reasons


class Charge(_OwnerEvent, frozen=True, kw_only=True, tag="charge"):
    """Charge resource usage (tokens, cost) to the task's budget."""

    usage: Usage
    #: what the usage paid for (a model turn, a tool call and how it went): the note of
    #: the task's ``charge`` event, so the trace says where the budget went
    note: Progress = ""


class Cancel(_Event, frozen=True, kw_only=True, tag="cancel"):
    """End the task as ``cancelled`` in any live state, even past its deadline. Then the
    canceller cancels the children it may cancel, and the owner of the cancelled task
    cancels the children it made (it is their requester: with identities, the one
    party besides operators whose cancel of them is valid)."""

    #: becomes the record's ``error``
    note: ErrorText = ""


class Expire(_Event, frozen=True, kw_only=True, tag="expire"):
    """End a task that ran out of time: past its deadline, or left for ``claim_timeout_s``
    with nobody able to act on it (judged by a party: :func:`protocol.judge_waiting`)."""

    reason: Literal["deadline", "no_agent"]


Event = Claim | Renew | AddChild | Finish | Fail | Release | Reviewing | Approve | Veto | Charge | Cancel | Expire
OwnerEvent = Renew | AddChild | Finish | Fail | Release | Charge

EVENT_KINDS: tuple[str, ...] = (
    "claim",
    "renew",
    "add_child",
    "finish",
    "fail",
    "release",
    "reviewing",
    "approve",
    "veto",
    "charge",
    "cancel",
    "expire",
)
