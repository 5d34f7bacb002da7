"""agent-mesh wire protocol v1, sans-IO.

Imports only the standard library and msgspec; reads no clock; does no I/O. Feed it
records and events, it returns the next record or a :class:`ProtocolError`.
"""

from .cards import a2a_card
from .codec import (
    MAX_MESSAGE_BYTES,
    check_record,
    decode_card,
    decode_control,
    decode_control_reply,
    decode_error,
    decode_event,
    decode_offer,
    decode_record,
    decode_transition,
    encode,
)
from .errors import Fenced, InvalidName, LocalProtocolError, ProtocolError, RemoteProtocolError, TransitionError
from .events import (
    EVENT_KINDS,
    AddChild,
    Approve,
    Cancel,
    Charge,
    Claim,
    Event,
    Expire,
    Fail,
    Finish,
    Release,
    Renew,
    Reopen,
    Reviewing,
    Veto,
)
from .machine import TRANSITIONS, apply, approvals, event_kind, is_terminal
from .names import (
    MAJOR_VERSION,
    VERSION_HEADER,
    Names,
    capability_tokens,
    clarification_capability,
    validate_agent_id,
    validate_capability,
    validate_task_id,
)
from .rules import (
    DEFAULT_CLAIM_WINDOW_S,
    DEFAULT_HOPS,
    DEFAULT_LEASE_S,
    BoardChange,
    LeaseView,
    ask,
    best_match,
    board_change,
    child_traceparent,
    claim_delay,
    delegate,
    fingerprint,
    fit,
    new_task,
    offers_for,
    serves,
    specificity,
    split_budget,
    traceparent,
)
from .types import (
    PROTOCOL_VERSION,
    REASONS,
    TERMINAL_STATES,
    A2ACard,
    A2AInterface,
    A2ASkill,
    AgentCard,
    Budget,
    ControlReply,
    ControlRequest,
    ErrorReport,
    NotUnderstood,
    Offer,
    Reason,
    ReviewPolicy,
    State,
    TaskEvent,
    TaskRecord,
    Usage,
    Verdict,
    Vote,
)

__all__ = [
    "MAX_MESSAGE_BYTES", "check_record", "decode_card", "decode_control", "decode_control_reply",
    "decode_error", "decode_event", "decode_offer", "decode_record", "decode_transition", "encode",
    "Fenced", "InvalidName", "LocalProtocolError", "ProtocolError", "RemoteProtocolError", "TransitionError",
    "EVENT_KINDS", "AddChild", "Approve", "Cancel", "Charge", "Claim", "Event", "Expire", "Fail", "Finish",
    "Release", "Renew", "Reopen", "Reviewing", "Veto",
    "TRANSITIONS", "apply", "approvals", "event_kind", "is_terminal",
    "MAJOR_VERSION", "VERSION_HEADER", "Names", "capability_tokens", "clarification_capability",
    "validate_agent_id", "validate_capability", "validate_task_id",
    "DEFAULT_CLAIM_WINDOW_S", "DEFAULT_HOPS", "DEFAULT_LEASE_S", "BoardChange", "LeaseView", "ask",
    "best_match", "board_change", "claim_delay", "delegate", "fingerprint", "fit", "new_task",
    "offers_for", "serves", "specificity", "split_budget", "traceparent", "child_traceparent",
    "a2a_card",
    "PROTOCOL_VERSION", "REASONS", "TERMINAL_STATES", "A2ACard", "A2AInterface", "A2ASkill", "AgentCard",
    "Budget", "ControlReply", "ControlRequest", "ErrorReport", "NotUnderstood", "Offer", "Reason",
    "ReviewPolicy", "State", "TaskEvent", "TaskRecord", "Usage", "Verdict", "Vote",
]
