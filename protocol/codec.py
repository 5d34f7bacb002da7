"""Encoding and decoding. The fuzz rule (after h11): any bytes either decode to a
valid message or raise :class:`RemoteProtocolError`, never anything else."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from .errors import InvalidName, RemoteProtocolError
from .events import Event
from .limits import MAX_CARD_BYTES, MAX_RECORD_BYTES, record_breach
from .names import validate_agent_id, validate_capability, validate_task_id
from .types import (
    AgentCard,
    ControlReply,
    ControlRequest,
    ErrorReport,
    NotUnderstood,
    TaskEvent,
    TaskRecord,
    WorkItem,
)

__all__ = [
    "MAX_MESSAGE_BYTES",
    "encode",
    "decode_record",
    "decode_work_item",
    "decode_card",
    "decode_event",
    "decode_transition",
    "decode_control",
    "decode_control_reply",
    "decode_error",
    "check_record",
]

#: Larger payloads are refused before parsing (NATS' own default max_payload is 1 MiB).
MAX_MESSAGE_BYTES = 1024 * 1024

T = TypeVar("T")

_encoder = msgspec.json.Encoder()


def encode(obj: msgspec.Struct) -> bytes:
    return _encoder.encode(obj)


def _decoder(tp: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(tp)


_DECODERS: dict[Any, msgspec.json.Decoder[Any]] = {
    tp: _decoder(tp)
    for tp in (
        TaskRecord,
        WorkItem,
        AgentCard,
        TaskEvent,
        Event,
        ControlRequest,
        ControlReply,
        ErrorReport,
        NotUnderstood,
    )
}


def _decode(data: bytes, tp: type[T] | Any, what: str) -> Any:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise RemoteProtocolError(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) > MAX_MESSAGE_BYTES:
        raise RemoteProtocolError(f"{what}: {len(data)} bytes is over the {MAX_MESSAGE_BYTES}-byte limit")
    try:
        return _DECODERS[tp].decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise RemoteProtocolError(f"{what}: {exc}") from None


def check_record(record: TaskRecord, size: int | None = None) -> TaskRecord:
    """Invariants a decoded record must satisfy beyond its schema, and the limits the
    schema cannot state (encoded sizes, the deadline's distance). ``size`` is the length
    of the record's encoding if known: an upper bound above ``MAX_RECORD_BYTES`` is no
    use, the record is then measured."""
    breach = record_breach(record, size if size is not None and size <= MAX_RECORD_BYTES else None)
    if breach is not None:
        raise RemoteProtocolError(f"task record {record.id}: {breach}")
    try:
        validate_task_id(record.id)
        validate_task_id(record.root)
        validate_capability(record.capability)
        validate_agent_id(record.requester)
        if record.parent is not None:
            validate_task_id(record.parent)
        for child in record.children:
            validate_task_id(child)
        # The reviewer and escalation capabilities become queue subjects.
        if record.review is not None:
            validate_capability(record.review.capability)
            if record.review.escalate_to is not None:
                validate_capability(record.review.escalate_to)
    except InvalidName as exc:
        raise RemoteProtocolError(f"task record: {exc}") from None
    if record.state == "working" and record.owner is None:
        raise RemoteProtocolError(f"task record {record.id}: state working without an owner")
    if record.state in ("failed",) and record.reason is None:
        raise RemoteProtocolError(f"task record {record.id}: failed without a reason")
    if record.state == "review" and record.review is None:
        raise RemoteProtocolError(f"task record {record.id}: in review without a review policy")
    if record.state == "working" and record.epoch < 1:
        raise RemoteProtocolError(f"task record {record.id}: state working at epoch {record.epoch}")
    if record.epoch < (1 if record.attempts else 0) or record.attempts < 0:
        raise RemoteProtocolError(f"task record {record.id}: epoch {record.epoch} below its claims")
    return record


def decode_record(data: bytes) -> TaskRecord:
    if isinstance(data, (bytes, bytearray, memoryview)) and len(data) > MAX_RECORD_BYTES:
        raise RemoteProtocolError(f"task record: {len(data)} bytes is over the limit of {MAX_RECORD_BYTES} bytes")
    record: TaskRecord = _decode(data, TaskRecord, "task record")
    return check_record(record, len(data))


def decode_work_item(data: bytes) -> WorkItem:
    item: WorkItem = _decode(data, WorkItem, "work item")
    try:
        validate_task_id(item.task)
        validate_capability(item.capability)
    except InvalidName as exc:
        raise RemoteProtocolError(f"work item: {exc}") from None
    check_record(item.record, len(data))
    if item.record.id != item.task:
        raise RemoteProtocolError(f"work item for {item.task} carries the record of {item.record.id}")
    if item.revision == 0 and (item.kind != "work" or item.record.state != "open" or item.record.epoch != 0):
        raise RemoteProtocolError(
            f"work item for {item.task}: revision 0 (a task not in the bucket yet) must be an open, unclaimed task"
        )
    return item


def decode_card(data: bytes) -> AgentCard:
    if isinstance(data, (bytes, bytearray, memoryview)) and len(data) > MAX_CARD_BYTES:
        raise RemoteProtocolError(f"agent card: {len(data)} bytes is over the limit of {MAX_CARD_BYTES} bytes")
    card: AgentCard = _decode(data, AgentCard, "agent card")
    try:
        validate_agent_id(card.id)
        for cap in (*card.serves, *card.delegates):
            validate_capability(cap)
    except InvalidName as exc:
        raise RemoteProtocolError(f"agent card: {exc}") from None
    return card


def decode_event(data: bytes) -> TaskEvent:
    event: TaskEvent = _decode(data, TaskEvent, "task event")
    if event.record is not None:
        check_record(event.record, len(data))
        if event.record.id != event.task:
            raise RemoteProtocolError(f"event of {event.task} carries the record of {event.record.id}")
    return event


def decode_transition(data: bytes) -> Event:
    event: Event = _decode(data, Event, "transition")
    return event


def decode_control(data: bytes) -> ControlRequest:
    request: ControlRequest = _decode(data, ControlRequest, "control request")
    return request


def decode_control_reply(data: bytes) -> ControlReply:
    reply: ControlReply = _decode(data, ControlReply, "control reply")
    return reply


def decode_error(data: bytes) -> ErrorReport:
    report: ErrorReport = _decode(data, ErrorReport, "error report")
    return report
