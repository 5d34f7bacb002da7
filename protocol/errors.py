"""The protocol's two error roots, after h11.

``LocalProtocolError``: *we* are about to break a rule (an illegal transition we were
asked to make, a malformed name we were asked to build). ``RemoteProtocolError``: a
*peer* broke one (bytes that do not decode, a record that violates an invariant, a
write fenced by a newer epoch). The runtime treats the first as a bug and the second
as input to report and survive.
"""

from __future__ import annotations

__all__ = [
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "TransitionError",
    "Fenced",
    "InvalidName",
]


class ProtocolError(Exception):
    """Base of every error the protocol raises."""


class LocalProtocolError(ProtocolError):
    """The caller asked for something the rules forbid."""


class RemoteProtocolError(ProtocolError):
    """A peer sent something that is not valid protocol."""


class InvalidName(LocalProtocolError, ValueError):
    """A capability, agent id, task id or prefix is not a valid name."""


class TransitionError(LocalProtocolError):
    """An event is not allowed in the record's current state.

    The message names the state, the event and the actor, so a log line alone says
    who tried what, and when.
    """

    def __init__(self, *, state: str, event: str, actor: str, why: str) -> None:
        self.state = state
        self.event = event
        self.actor = actor
        self.why = why
        super().__init__(f"{event} by {actor!r} refused in state {state!r}: {why}")


class Fenced(TransitionError):
    """The actor is not the current owner, or writes with a stale epoch.

    Raised for the write a stale owner makes after another agent took its task over:
    the stale owner must abandon the work.
    """
