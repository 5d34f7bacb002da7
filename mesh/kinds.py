"""Built-in agent kinds: deterministic workers for tests, benchmarks and the demo.

A kind turns a brief into a :class:`~mesh.work.Worker`. Built-ins are listed in
:data:`KINDS`, an explicit registry; user code is named ``package.module:Class`` and
constructed as ``Class(brief)``.
"""

from __future__ import annotations

import importlib
import math
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio

from .briefs import Brief
from .work import TaskContext, TaskFailed, Verdict, Worker

__all__ = ["KINDS", "KindError", "make_worker", "Echo", "Sleep", "Fail", "Relay", "Extract", "Check"]


class KindError(ValueError):
    pass


class Echo:
    """Returns the instruction (optionally with a prefix): the no-op task."""

    def __init__(self, brief: Brief) -> None:
        self.prefix = str(brief.options.get("prefix", ""))

    async def work(self, task: TaskContext) -> Any:
        return f"{self.prefix}{task.instruction}"


class Sleep:
    """Works for ``seconds`` (option, or a number in the task data), reporting progress
    and checkpointing how far it got, so a successor resumes where it stopped."""

    def __init__(self, brief: Brief) -> None:
        self.seconds = float(brief.options.get("seconds", 1.0))
        self.steps = int(brief.options.get("steps", 10))

    async def work(self, task: TaskContext) -> Any:
        seconds = float(task.data.get("seconds", self.seconds)) if isinstance(task.data, dict) else self.seconds
        start = int(task.record.checkpoint or 0) if isinstance(task.record.checkpoint, int) else 0
        for step in range(start, self.steps):
            await anyio.sleep(seconds / self.steps)
            await task.progress(f"step {step + 1}/{self.steps}", checkpoint=step + 1)
        return {"slept": seconds, "resumed_from": start}


class Fail:
    """Always fails with reason ``error`` (for tests of failure handling)."""

    def __init__(self, brief: Brief) -> None:
        self.message = str(brief.options.get("message", "this agent always fails"))

    async def work(self, task: TaskContext) -> Any:
        raise TaskFailed(self.message)


class Relay:
    """Hands the task on: delegates the instruction to ``options.to`` (default: the
    first capability in ``delegates``) and returns the child's result."""

    def __init__(self, brief: Brief) -> None:
        to = brief.options.get("to") or (brief.delegates[0] if brief.delegates else None)
        if not to:
            raise KindError(f"brief {brief.name!r}: kind relay needs `delegates` or options.to")
        self.to = str(to)
        self.review = brief.review

    async def work(self, task: TaskContext) -> Any:
        child = await task.delegate(self.to, task.instruction, data=task.data, criteria=task.record.criteria, review=self.review)
        if child.state != "done":
            raise TaskFailed(f"{self.to} task {child.id} ended {child.state}: {child.reason} {child.error}".strip())
        return child.result


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")
_WORD = re.compile(r"[a-z][a-z0-9_]+")
_STOP = frozenset(
    "the a an and or of to in is are be for on that this with as by it its from at which can not if when "
    "may was were will has have than then there their these those into also such any all each other only".split()
)


class Extract:
    """Extractive summary: the ``sentences`` highest-scoring sentences of the text
    (``data.text`` or the instruction), in their original order. Scores are summed
    term frequencies of non-stopwords normalised by sentence length: a real, if
    simple, method that needs no model."""

    def __init__(self, brief: Brief) -> None:
        self.sentences = int(brief.options.get("sentences", 3))

    async def work(self, task: TaskContext) -> Any:
        text = task.data.get("text") if isinstance(task.data, dict) else None
        return summarize(str(text or task.instruction), self.sentences)


def summarize(text: str, n: int) -> str:
    sentences = [s.strip() for s in _SENTENCE.split(" ".join(text.split())) if s.strip()]
    if len(sentences) <= n:
        return " ".join(sentences)
    freq = Counter(w for w in _WORD.findall(text.lower()) if w not in _STOP)

    def score(sentence: str) -> float:
        words = [w for w in _WORD.findall(sentence.lower()) if w not in _STOP]
        return sum(freq[w] for w in words) / math.sqrt(len(words) + 1)

    best = sorted(range(len(sentences)), key=lambda i: (-score(sentences[i]), i))[:n]
    return " ".join(sentences[i] for i in sorted(best))


class Check:
    """A reviewer: vetoes an empty result, and one that lacks any term the task's
    acceptance criteria require (criteria like ``must mention: pickle, protocol``)."""

    def __init__(self, brief: Brief) -> None:
        self.min_chars = int(brief.options.get("min_chars", 1))

    async def work(self, task: TaskContext) -> Any:
        verdict = await self.review(task)
        return {"approve": verdict.approve, "reasons": list(verdict.reasons)}

    async def review(self, task: TaskContext) -> Verdict:
        result = "" if task.record.result is None else str(task.record.result)
        reasons = []
        if len(result.strip()) < self.min_chars:
            reasons.append(f"the result has fewer than {self.min_chars} characters")
        criteria = task.record.criteria
        if "must mention:" in criteria:
            terms = [t.strip() for t in criteria.split("must mention:", 1)[1].split(",") if t.strip()]
            missing = [t for t in terms if t.lower() not in result.lower()]
            if missing:
                reasons.append(f"does not mention {', '.join(missing)} (acceptance criteria: {criteria!r})")
        return Verdict(approve=not reasons, reasons=tuple(reasons))


KINDS: dict[str, Callable[[Brief], Worker]] = {
    "echo": Echo,
    "sleep": Sleep,
    "fail": Fail,
    "relay": Relay,
    "extract": Extract,
    "check": Check,
}


def make_worker(brief: Brief) -> Worker:
    """Build the worker a brief asks for."""
    if brief.kind in KINDS:
        return KINDS[brief.kind](brief)
    if ":" not in brief.kind:
        raise KindError(
            f"brief {brief.name!r}: unknown kind {brief.kind!r}; use one of {', '.join(sorted(KINDS))} "
            "or `package.module:Class`"
        )
    module_name, _, class_name = brief.kind.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise KindError(f"brief {brief.name!r}: cannot import {module_name!r} for kind {brief.kind!r}: {exc}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise KindError(f"brief {brief.name!r}: module {module_name!r} has no {class_name!r}")
    worker = cls(brief)
    if not hasattr(worker, "work"):
        raise KindError(f"brief {brief.name!r}: {brief.kind} has no async `work(task)` method")
    return worker  # type: ignore[no-any-return]
