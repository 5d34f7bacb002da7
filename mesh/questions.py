"""Answering the questions of work you wait for (design rule 7: every agent and client
implicitly serves ``agent.<its id>``).

A clarification is a child task of the asker's task, addressed to that task's
requester by its capability ``agent.<requester id>``. It has no queue: the one party
that can answer is already following the asker's task (it waits for it), and sees the
question appear among that task's ``children``. An agent that waits for a child
answers the child's questions by asking its own requester in turn (ask, don't guess:
the agent only knows what it was told, and whoever asked it knows more); a client
answers with the function it was given (a person at a terminal, a program).

The answering party holds the question without a work item, so no broker lease
watches it: it renews its claim by writing, and the asker ends the question
``no_agent`` if it stops (:func:`protocol.judge_waiting`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
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
)

from .bus import MeshError, NotFound
from .retry import Backoff, retry

if TYPE_CHECKING:
    from .bus import Bus

__all__ = ["Answerer", "Questions"]

#: answers a clarification: gets the question's record, returns the answer
Answerer = Callable[[TaskRecord], Awaitable[Any]]

log = structlog.get_logger("mesh.questions")

#: how a party looks again for a child its asker recorded but may not have created yet
NEW_CHILD = Backoff(first_s=0.01, max_s=1.0)


class Questions:
    """Finds the questions addressed to ``me`` among the children of a task being
    followed (pass :meth:`on_record` as the follower's ``on_record``) and answers each
    with ``answer`` in a task of ``tg``."""

    def __init__(self, bus: Bus, me: str, answer: Answerer, tg: anyio.abc.TaskGroup) -> None:
        self.bus, self.me, self.answer, self.tg = bus, me, answer, tg
        self.capability = clarification_capability(me)
        self._seen: set[str] = set()

    async def on_record(self, record: TaskRecord) -> None:
        for child_id in record.children:
            if child_id not in self._seen:
                self._seen.add(child_id)
                self.tg.start_soon(self._consider, child_id, record.root)

    async def _consider(self, child_id: str, root: str) -> None:
        # The asker records a child before it creates it (so a successor knows of it):
        # a child we cannot find yet may be a moment from existing.
        try:
            question, revision = await retry(
                lambda: self.bus.read_any(child_id, root=root), retry_on=NotFound, attempts=12, backoff=NEW_CHILD
            )
        except (MeshError, RemoteProtocolError) as exc:
            # Not ours to answer then (never created, or unreadable: its parties end it).
            log.debug("not considered as a question", task=child_id, error=str(exc) or type(exc).__name__)
            return
        if question.capability == self.capability and question.state == "open":
            await answer_question(self.bus, self.me, question, revision, self.answer)


class _Held:
    """The question as we last wrote it."""

    def __init__(self, record: TaskRecord, revision: int) -> None:
        self.record, self.revision = record, revision


async def answer_question(bus: Bus, me: str, question: TaskRecord, revision: int, answer: Answerer) -> None:
    """Claim ``question`` (a first claim creates its key), renew the claim while
    ``answer`` runs, then finish it with the answer (or fail it, if there is none)."""
    try:
        question, revision = await bus.write(question, revision, Claim(actor=me))
    except (TransitionError, MeshError) as exc:
        log.debug("not answering a question", question=question.id, why=str(exc))
        return  # someone else answered, or it ended
    held = _Held(question, revision)

    async def keep() -> None:
        while True:
            await anyio.sleep(question.claim_timeout_s / 3)
            try:
                held.record, held.revision = await bus.write(
                    held.record, held.revision, Renew(actor=me, epoch=question.epoch)
                )
            except (TransitionError, MeshError) as exc:
                # The answer's write will say whether the question is still ours; until
                # then, keep renewing (the broker may be back by the next one).
                log.info("could not renew our claim on a question", question=question.id, error=str(exc))

    end: Finish | Fail
    async with anyio.create_task_group() as tg:
        tg.start_soon(keep)
        try:
            end = Finish(actor=me, epoch=question.epoch, result=await answer(question))
        except Exception as exc:  # no answer (TaskFailed, Lost...): the asker must hear
            log.warning("no answer to a question", question=question.id, error=repr(exc))
            end = Fail(actor=me, epoch=question.epoch, reason="error", message=f"{me} got no answer: {exc}")
        tg.cancel_scope.cancel()
    try:
        await bus.write(held.record, held.revision, end)
        log.info("answered a question", question=question.id, agent=me)
    except (TransitionError, MeshError) as exc:
        log.warning("could not answer a question", question=question.id, error=str(exc))
