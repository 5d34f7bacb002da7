"""Misbehaving workers, for tests that inject the known multi-agent failure modes
(docs/FAILURE-MODES.md). Use them in a brief as ``kind = "mesh.faults:Name"``.

Each one misbehaves in one specific, deterministic way, so a test can show which
protocol rule catches it.
"""

from __future__ import annotations

from typing import Any

import anyio

from .briefs import Brief
from .work import TaskContext, Verdict

__all__ = [
    "AlwaysWrong",
    "Sloppy",
    "RubberStamp",
    "SelfDelegator",
    "Rephraser",
    "Staller",
    "Overreacher",
    "Asker",
    "SlowReviewer",
    "Naysayer",
]


class AlwaysWrong:
    """An author that ignores the task and its reviewers' feedback (FM-1.1, FM-2.5)."""

    def __init__(self, brief: Brief) -> None:
        self.answer = str(brief.options.get("answer", "something else entirely"))

    async def work(self, task: TaskContext) -> Any:
        return self.answer


class Sloppy:
    """Wrong on the first try; reads the reviewers' vetoes and gets it right on rework
    (the answer is in ``data.right``)."""

    def __init__(self, brief: Brief) -> None:
        pass

    async def work(self, task: TaskContext) -> Any:
        data = task.data if isinstance(task.data, dict) else {}
        if not task.record.feedback:
            return data.get("wrong", "a careless answer")
        return data.get("right", "a careful answer")


class RubberStamp:
    """A reviewer that approves everything without looking (FM-3.3)."""

    def __init__(self, brief: Brief) -> None:
        pass

    async def work(self, task: TaskContext) -> Any:
        return "looks good"

    async def review(self, task: TaskContext) -> Verdict:
        return Verdict(approve=True)


class SelfDelegator:
    """Hands its own task to its own capability, unchanged: a loop (FM-1.3)."""

    def __init__(self, brief: Brief) -> None:
        pass

    async def work(self, task: TaskContext) -> Any:
        child = await task.delegate(task.record.capability, task.instruction)
        return child.result if child.state == "done" else f"child {child.state}: {child.reason}"


class Rephraser:
    """Hands its task back to its own capability, reworded each time: a near-loop the
    fingerprint rule cannot see; the hop limit ends it and `mesh top` flags it."""

    def __init__(self, brief: Brief) -> None:
        self.delay = float(brief.options.get("delay", 0.0))

    async def work(self, task: TaskContext) -> Any:
        await anyio.sleep(self.delay)
        child = await task.delegate(task.record.capability, f"{task.instruction} (rephrased)")
        return child.result if child.state == "done" else f"child {child.state}: {child.reason}"


class Staller:
    """Holds its task forever, renewing the lease but making no progress (FM-1.5)."""

    def __init__(self, brief: Brief) -> None:
        pass

    async def work(self, task: TaskContext) -> Any:
        await anyio.sleep_forever()


class Overreacher:
    """Tries to delegate to a capability its brief does not allow (FM-1.2)."""

    def __init__(self, brief: Brief) -> None:
        self.target = str(brief.options.get("target", "forbidden"))

    async def work(self, task: TaskContext) -> Any:
        child = await task.delegate(self.target, task.instruction)
        return child.result


class Asker:
    """Asks its requester instead of guessing, and uses the answer (FM-2.2)."""

    def __init__(self, brief: Brief) -> None:
        self.question = str(brief.options.get("question", "Which one do you mean?"))

    async def work(self, task: TaskContext) -> Any:
        answer = await task.ask(self.question)
        return f"{task.instruction} -> using your answer: {answer}"


class SlowReviewer:
    """A reviewer that takes its time (``options.seconds``) and then approves, like a
    model or a person would: slower than the task's claim timeout."""

    def __init__(self, brief: Brief) -> None:
        self.seconds = float(brief.options.get("seconds", 3.0))

    async def work(self, task: TaskContext) -> Any:
        return "reviewed"

    async def review(self, task: TaskContext) -> Verdict:
        await anyio.sleep(self.seconds)
        return Verdict(approve=True)


class Naysayer:
    """A reviewer that vetoes everything, right or wrong: the noisiest checker there is.
    Under ``reject_quorum`` > 1 it costs the last round a review, never the task."""

    def __init__(self, brief: Brief) -> None:
        pass

    async def work(self, task: TaskContext) -> Any:
        return "no"

    async def review(self, task: TaskContext) -> Verdict:
        return Verdict(approve=False, reasons=("I object to everything",))
