"""The human inbox on the page: what waits for a person (as `mesh inbox` lists it,
:meth:`mesh.Mesh.offered`), which actions the page offers on each, and doing them
through the CLI's own code paths (:meth:`mesh.Mesh.take_and_finish`,
:meth:`mesh.Mesh.vote`).

An action is offered only if the protocol would accept it from this view's identity
now: the transition is tried on the record with :func:`protocol.apply` (the rule every
party's write goes through), so the page cannot offer an approval to the result's
author, a second vote in one round, or anything on a task that moved on. A view that
may not act at all (with auth on, a key that is not an operator's) offers nothing.
"""

from __future__ import annotations

import time
from typing import Any

from protocol import (
    Approve,
    Claim,
    Finish,
    LimitExceeded,
    TaskRecord,
    TransitionError,
    Veto,
    apply,
)

from ..client import Mesh

__all__ = ["ACTIONS", "offered_actions", "inbox_item", "act"]

#: what a person can do from the inbox
ACTIONS = ("answer", "approve", "veto")


def offered_actions(record: TaskRecord, me: str, *, now: float | None = None) -> list[str]:
    """The actions the protocol would accept from ``me`` on ``record`` now."""
    now = time.time() if now is None else now
    tries: dict[str, Any] = {}
    if record.state == "open":
        tries["answer"] = (Claim(actor=me), Finish(actor=me, epoch=record.epoch + 1, result="?"))
    elif record.state == "review":
        tries["approve"] = (Approve(actor=me, epoch=record.epoch),)
        tries["veto"] = (Veto(actor=me, epoch=record.epoch, reasons=("?",)),)
    out = []
    for name, events in tries.items():
        try:
            after = record
            for event in events:
                after = apply(after, event, now)
        except (TransitionError, LimitExceeded):
            continue
        if after.state not in ("failed", "cancelled"):  # a write past the deadline only ends the task
            out.append(name)
    return out


def inbox_item(record: TaskRecord, me: str | None) -> dict[str, Any]:
    """One inbox entry for the page; ``me`` None: a view that may not act."""
    return {
        "id": record.id,
        "kind": "review" if record.state == "review" else "task",
        "capability": record.capability,
        "requester": record.requester,
        "instruction": record.instruction[:2000],
        "criteria": record.criteria[:1000],
        "result": _short(record.result) if record.state == "review" else None,
        "author": record.author,
        "feedback": [{"reviewer": v.reviewer, "reasons": list(v.reasons)} for v in record.feedback],
        "actions": [] if me is None else offered_actions(record, me),
    }


def _short(value: Any, limit: int = 2000) -> str:
    import json

    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Refused(ValueError):
    """An action the protocol would not accept now (the page showed a stale inbox)."""


async def act(mesh: Mesh, task_id: str, action: str, *, text: str = "", reasons: tuple[str, ...] = ()) -> TaskRecord:
    """Do ``action`` on ``task_id`` as ``mesh``'s identity, as `mesh inbox` does."""
    record = await mesh.get(task_id)
    if action not in offered_actions(record, mesh.id):
        raise Refused(f"{action} is not possible on task {task_id} now (it is {record.state})")
    if action == "answer":
        return await mesh.take_and_finish(task_id, text)
    if action == "approve":
        return await mesh.vote(task_id, approve=True)
    return await mesh.vote(task_id, approve=False, reasons=reasons)
