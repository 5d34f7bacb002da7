"""Transition inputs: what an actor asks to do to a task record.

Each is a tagged Struct (``{"kind": "claim", ...}``), so a transition can be logged,
replayed from a conformance vector, or sent over the wire by an agent in any language.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from .types import NonNegInt, Usage

__all__ = [
    "Claim",
    "Renew",
    "AddChild",
    "Finish",
    "Fail",
    "Release",
    "Reopen",
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
    """Take an open task: become owner with the next epoch."""


class Renew(_OwnerEvent, frozen=True, kw_only=True, tag="renew"):
    """Renew the lease; optionally record progress and a checkpoint."""

    progress: str | None = None
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
    message: str = ""


class Release(_OwnerEvent, frozen=True, kw_only=True, tag="release"):
    """Hand the task back (drain): it is open again for any eligible agent."""

    note: str = ""


class Reopen(_Event, frozen=True, kw_only=True, tag="reopen"):
    """An observer judged the owner's lease expired (no new revision for ``lease_s``
    on the observer's own monotonic clock) and re-opens the task. ``epoch`` is the
    epoch the observer saw, so an observation older than a new claim is refused."""

    epoch: NonNegInt


class Reviewing(_Event, frozen=True, kw_only=True, tag="reviewing"):
    """A reviewer takes, renews or gives back a review slot. A reviewer without a slot
    takes a free one; failing that, with ``takes``, the slot of that holder, if it
    still shows ``beat`` (the observer judged its lease lapsed). A holder renews its
    slot (``beat`` + 1), or with ``release`` gives it back without voting. Each one
    changes the record's revision, so the parties waiting on the task see life while a
    slow reviewer (a model, a person) is at work."""

    epoch: NonNegInt
    #: the holder whose lapsed slot the actor takes over (only when no slot is free)
    takes: str | None = None
    #: the ``beat`` of that holder's slot the actor saw unchanged for the review lease
    beat: NonNegInt = 0
    #: the holder gives its slot back without voting (draining, a reviewer error)
    release: bool = False


class Approve(_Event, frozen=True, kw_only=True, tag="approve"):
    """A reviewer approves the current result (round = ``reworks``)."""

    epoch: NonNegInt


class Veto(_Event, frozen=True, kw_only=True, tag="veto"):
    """A reviewer sends the result back; reasons are required."""

    epoch: NonNegInt
    reasons: tuple[str, ...]


class Charge(_OwnerEvent, frozen=True, kw_only=True, tag="charge"):
    """Charge resource usage (tokens, cost) to the task's budget."""

    usage: Usage


class Cancel(_Event, frozen=True, kw_only=True, tag="cancel"):
    """End the task as ``cancelled`` in any live state, even past its deadline; the
    canceller then cancels the task's children."""

    note: str = ""


class Expire(_Event, frozen=True, kw_only=True, tag="expire"):
    """End a task that ran out of time: past its deadline, or open with no agent
    claiming it for ``claim_timeout_s`` (judged by the observer)."""

    reason: Literal["deadline", "no_agent"]


Event = (
    Claim | Renew | AddChild | Finish | Fail | Release | Reopen | Reviewing | Approve | Veto | Charge | Cancel | Expire
)
OwnerEvent = Renew | AddChild | Finish | Fail | Release | Charge

EVENT_KINDS: tuple[str, ...] = (
    "claim",
    "renew",
    "add_child",
    "finish",
    "fail",
    "release",
    "reopen",
    "reviewing",
    "approve",
    "veto",
    "charge",
    "cancel",
    "expire",
)
