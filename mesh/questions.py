"""Answering the questions of work you delegated (design rule 7: every agent
implicitly serves ``agent.<its id>``).

A clarification is a task addressed to the asker's requester (``agent.<id>``). When
an agent delegates, its child may ask *it*; nothing else serves ``agent.<id>``, so
while the agent waits for its child it answers those questions itself, by passing
them up to its own requester (ask, don't guess: the agent only knows what it was
told, and whoever asked it knows more). The answer comes back down the same way.

Only questions from this task's own children are taken, so two tasks of one agent
never answer each other's questions.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.abc
import nats.errors
import structlog

from protocol import (
    Claim,
    Fail,
    Finish,
    RemoteProtocolError,
    Renew,
    TaskRecord,
    TransitionError,
    clarification_capability,
    decode_offer,
)

from .bus import MeshError

if TYPE_CHECKING:
    from .bus import Bus
    from .work import TaskContext

__all__ = ["answering_questions", "open_questions"]

T = TypeVar("T")

log = structlog.get_logger("mesh.questions")


async def answering_questions(task: TaskContext, wait: Callable[[], Awaitable[T]]) -> T:
    """Run ``wait()`` (e.g. a delegation) while answering the questions that
    ``task``'s children ask this agent, by passing them up to ``task``'s requester."""
    out: list[T] = []
    failure: list[Exception] = []
    async with anyio.create_task_group() as tg:
        await tg.start(_watch, task)
        try:
            out.append(await wait())
        except Exception as exc:  # re-raised as itself below, not wrapped in an ExceptionGroup
            failure.append(exc)
        tg.cancel_scope.cancel()
    if failure:
        raise failure[0]
    return out[0]


async def open_questions(
    bus: Bus, agent: str, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> AsyncGenerator[str, None]:
    """Ids of open clarification tasks addressed to ``agent`` (``agent.<id>``), as they
    are offered, until the caller stops iterating."""
    watcher = await bus.tasks.watch(bus.names.offer_filter(clarification_capability(agent)))
    task_status.started()
    try:
        async for entry in watcher:
            if entry is None or entry.operation is not None or not entry.value:
                continue
            try:
                offer = decode_offer(entry.value)
            except RemoteProtocolError:
                continue
            if offer.state == "open":
                yield offer.task
    finally:
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await watcher.stop()  # type: ignore[no-untyped-call]


async def _watch(task: TaskContext, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    async with anyio.create_task_group() as tg:
        questions = open_questions(task.bus, task.agent, task_status=task_status)
        try:
            async for question_id in questions:
                tg.start_soon(_answer, task, question_id)
        finally:
            await questions.aclose()


class _Held:
    """The question this agent holds while its answer travels up and back."""

    def __init__(self, record: TaskRecord, revision: int) -> None:
        self.record, self.revision = record, revision


async def _answer(task: TaskContext, question_id: str) -> None:
    bus = task.bus
    try:
        question, revision = await bus.read(question_id)
        if question.state != "open" or question.parent not in task.record.children:
            return  # not one of this task's children's questions
        question, revision = await bus.write(question, revision, Claim(actor=task.agent))
    except (MeshError, TransitionError, RemoteProtocolError, nats.errors.Error):
        return
    held = _Held(question, revision)
    end: Finish | Fail
    async with anyio.create_task_group() as tg:
        tg.start_soon(_keep, task, held)
        try:
            answer = await task.ask(question.instruction)
            end = Finish(actor=task.agent, epoch=question.epoch, result=answer)
        except Exception as exc:  # TaskFailed (no answer), Lost (our own task ended): the asker must hear
            end = Fail(
                actor=task.agent, epoch=question.epoch, reason="error", message=f"{task.agent} got no answer: {exc}"
            )
        tg.cancel_scope.cancel()
    try:
        await bus.write(held.record, held.revision, end)
        log.info("answered a question from delegated work", question=question_id, task=task.record.id, agent=task.agent)
    except (MeshError, TransitionError, nats.errors.Error) as exc:
        log.warning("could not answer a question", question=question_id, error=str(exc))


async def _keep(task: TaskContext, held: _Held) -> None:
    """Renew the question's lease: its asker re-opens it otherwise."""
    while True:
        await anyio.sleep(held.record.lease_s / 3)
        try:
            held.record, held.revision = await task.bus.write(
                held.record, held.revision, Renew(actor=task.agent, epoch=held.record.epoch)
            )
        except (MeshError, TransitionError, nats.errors.Error):
            return
