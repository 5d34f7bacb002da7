"""Built-in agent kinds: deterministic workers for tests, benchmarks and the demo,
and (imported only when a brief asks for them) the model-driven roles of ``agents/``.

A kind turns a brief into a :class:`~mesh.work.Worker`. Built-ins are listed in
:data:`KINDS`, an explicit registry; user code is named ``package.module:Class`` and
constructed as ``Class(brief)``.

Review of an agent's own results (a brief's ``review_results``) is a handoff: the
result goes to reviewers as a task whose data is ``{"review": {instruction, criteria,
data, result, author}}``; a reviewer kind answers it with ``{"approve", "reasons"}``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio
import msgspec

from protocol import ReviewPolicy, TaskRecord, best_match

from .briefs import Brief
from .work import Reviewer, TaskContext, TaskFailed, Verdict, Worker

__all__ = [
    "KINDS",
    "KindError",
    "make_worker",
    "Echo",
    "Sleep",
    "Fail",
    "Relay",
    "Pipeline",
    "Extract",
    "Check",
    "ReviewedResults",
    "review_request",
    "reviewed_record",
    "request_review",
    "settle_rejected",
]


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
    and checkpointing how far it got, so a successor resumes where it stopped. More
    than :attr:`MAX_SECONDS` (or not a number of seconds) fails the task: a sleep of
    1e308 s would hold a slot for ever."""

    MAX_SECONDS = 24 * 3600.0

    def __init__(self, brief: Brief) -> None:
        self.seconds = float(brief.options.get("seconds", 1.0))
        self.steps = int(brief.options.get("steps", 10))
        if not 0 <= self.seconds < math.inf or not 1 <= self.steps <= 10_000:
            raise ValueError("seconds must be 0 or more and finite, steps 1 to 10000")

    async def work(self, task: TaskContext) -> Any:
        seconds = float(task.data.get("seconds", self.seconds)) if isinstance(task.data, dict) else self.seconds
        if not 0 <= seconds <= self.MAX_SECONDS:  # also NaN
            raise TaskFailed(f"seconds must be 0 to {self.MAX_SECONDS:g}, got {seconds!r}")
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
        child = await task.delegate(
            self.to, task.instruction, data=task.data, criteria=task.record.criteria, review=self.review
        )
        if child.state != "done":
            raise TaskFailed(f"{self.to} task {child.id} ended {child.state}: {child.reason} {child.error}".strip())
        return child.result


class Pipeline:
    """Hands the task through ``options.steps`` (capabilities, default: ``delegates``)
    in order; each step gets the data so far merged with the previous step's result,
    and the last step's result is returned. The brief's ``review`` applies to the last
    step, with ``options.criteria`` added to the task's acceptance criteria."""

    def __init__(self, brief: Brief) -> None:
        steps = brief.options.get("steps", list(brief.delegates))
        if not isinstance(steps, list) or not steps or not all(isinstance(x, str) for x in steps):
            raise KindError(
                f"brief {brief.name!r}: field `options.steps`: list the capabilities to hand the task through"
            )
        for step in steps:
            if best_match(brief.delegates, step) is None:
                raise KindError(
                    f"brief {brief.name!r}: field `options.steps`: {step!r} is not in `delegates`; add it there"
                )
        self.steps: list[str] = steps
        self.review = brief.review
        self.criteria = str(brief.options.get("criteria", ""))

    async def work(self, task: TaskContext) -> Any:
        data: dict[str, Any] = (
            dict(task.data) if isinstance(task.data, dict) else ({} if task.data is None else {"input": task.data})
        )
        result: Any = None
        for i, step in enumerate(self.steps):
            last = i == len(self.steps) - 1
            criteria = task.record.criteria
            if last and self.criteria:
                criteria = f"{criteria}\n{self.criteria}".strip()
            await task.progress(f"step {i + 1}/{len(self.steps)}: {step}")
            child = await task.delegate(
                step, task.instruction, data=data, criteria=criteria, review=self.review if last else None
            )
            if child.state != "done":
                raise TaskFailed(
                    f"step {step} (task {child.id}) ended {child.state}: {child.reason} {child.error}".strip()
                )
            result = child.result
            data = {**data, **result} if isinstance(result, dict) else {**data, step: result}
        return result


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
        verdict = self.judge(reviewed_record(task))
        return {"approve": verdict.approve, "reasons": list(verdict.reasons)}

    async def review(self, task: TaskContext) -> Verdict:
        return self.judge(task.record)

    def judge(self, record: TaskRecord) -> Verdict:
        reasons = criteria_flaws(record)
        result = "" if record.result is None else str(record.result)
        if len(result.strip()) < self.min_chars:
            reasons.insert(0, f"the result has fewer than {self.min_chars} characters")
        return Verdict(approve=not reasons, reasons=tuple(reasons))


def criteria_flaws(record: TaskRecord) -> list[str]:
    """Reasons ``record.result`` misses its acceptance criteria, for criteria a program
    can check: ``must mention: a, b``."""
    result = (
        "" if record.result is None else record.result if isinstance(record.result, str) else json.dumps(record.result)
    )
    criteria = record.criteria
    reasons = []
    if "must mention:" in criteria:
        terms = [t.strip() for t in criteria.split("must mention:", 1)[1].splitlines()[0].split(",") if t.strip()]
        missing = [t for t in terms if t.lower() not in result.lower()]
        if missing:
            reasons.append(f"does not mention {', '.join(missing)} (acceptance criteria: {criteria!r})")
    return reasons


# --- reviewing one's own results (a brief's `review_results`) ---------------------------


def review_request(data: Any) -> dict[str, Any] | None:
    """The ``review`` part of a review task's data, if this is one."""
    if isinstance(data, dict) and isinstance(data.get("review"), dict):
        return data["review"]  # type: ignore[no-any-return]
    return None


def reviewed_record(task: TaskContext) -> TaskRecord:
    """What a reviewer judges: the task itself when it is in review, or the result
    described by a review task's data (as a record with that instruction, criteria,
    data, result and author)."""
    request = review_request(task.data)
    if task.record.state == "review" or request is None:
        return task.record
    return msgspec.structs.replace(
        task.record,
        instruction=str(request.get("instruction", "")),
        criteria=str(request.get("criteria", "")),
        data=request.get("data"),
        result=request.get("result"),
        author=str(request.get("author") or "") or None,
        feedback=(),
    )


def _verdict(child: TaskRecord) -> Verdict:
    result = child.result
    if child.state == "done" and isinstance(result, dict) and isinstance(result.get("approve"), bool):
        reasons = tuple(str(r) for r in result.get("reasons") or () if str(r).strip())
        if not result["approve"] and not reasons:
            reasons = (f"{child.author or child.owner} vetoed without giving a reason",)
        return Verdict(approve=result["approve"], reasons=reasons)
    if child.state == "done":
        return Verdict(approve=False, reasons=(f"review task {child.id} answered without a verdict: {result!r}",))
    return Verdict(
        approve=False, reasons=(f"review task {child.id} ended {child.state} ({child.reason}): {child.error}",)
    )


async def request_review(task: TaskContext, result: Any, policy: ReviewPolicy, *, round: int) -> Verdict:
    """Have ``result`` checked before returning it: ``policy.quorum`` review tasks to
    ``policy.capability`` (a handoff, so it must be in the brief's ``delegates``);
    every one must approve. (Distinct reviewers are likely, not guaranteed: for a
    guaranteed quorum of distinct reviewers, the requester sets the task's review.)"""
    digest = hashlib.sha256(json.dumps(result, sort_keys=True, default=str).encode()).hexdigest()[:8]
    request = {
        "instruction": task.instruction,
        "criteria": task.record.criteria,
        "data": task.data,
        "result": result,
        "author": task.agent,
    }
    reasons: list[str] = []
    for i in range(policy.quorum):
        child = await task.delegate(
            policy.capability,
            f"Review (round {round + 1}, reviewer {i + 1} of {policy.quorum}, result {digest}) the result of task "
            f"{task.record.id}: {task.instruction}",
            data={"review": request},
            criteria=task.record.criteria,
        )
        verdict = _verdict(child)
        reasons += verdict.reasons if not verdict.approve else ()
    return Verdict(approve=not reasons, reasons=tuple(reasons))


async def settle_rejected(task: TaskContext, result: Any, reasons: tuple[str, ...], policy: ReviewPolicy) -> Any:
    """A result its reviewers kept vetoing: hand the decision to ``policy.escalate_to``
    (whose answer is final), or fail the task ``rejected``."""
    if policy.escalate_to is None:
        raise TaskFailed("reviewers rejected the result: " + "; ".join(reasons), reason="rejected")
    request = {
        "instruction": task.instruction,
        "criteria": task.record.criteria,
        "data": task.data,
        "result": result,
        "author": task.agent,
        "vetoes": list(reasons),
    }
    child = await task.delegate(
        policy.escalate_to,
        f"Decide: reviewers kept vetoing the result of task {task.record.id}: {task.instruction}",
        data={"review": request},
        criteria=task.record.criteria,
    )
    if child.state != "done":
        raise TaskFailed(
            f"escalation to {policy.escalate_to} (task {child.id}) ended {child.state}: {child.error}",
            reason="rejected",
        )
    return child.result


class ReviewedResults:
    """A worker whose brief sets ``review_results``: its result is reviewed before it
    is returned; a vetoed result is escalated or fails ``rejected`` (kinds that can
    rework with the reasons, like ``llm``, handle ``review_results`` themselves)."""

    def __init__(self, worker: Worker, policy: ReviewPolicy) -> None:
        self.worker = worker
        self.policy = policy
        if isinstance(worker, Reviewer):
            self.review = worker.review

    async def work(self, task: TaskContext) -> Any:
        result = await self.worker.work(task)
        verdict = await request_review(task, result, self.policy, round=0)
        if verdict.approve:
            return result
        return await settle_rejected(task, result, verdict.reasons, self.policy)


def _lazy(target: str, doc: str) -> Callable[[Brief], Worker]:
    """A kind implemented in ``agents/``, imported only when a brief asks for it: the
    runtime never imports agents/ (or litellm) for briefs that do not use them."""

    def make(brief: Brief) -> Worker:
        module_name, _, class_name = target.partition(":")
        worker: Worker = getattr(importlib.import_module(module_name), class_name)(brief)
        return worker

    make.__doc__ = doc
    make.__qualname__ = make.__name__ = target
    return make


KINDS: dict[str, Callable[[Brief], Worker]] = {
    "echo": Echo,
    "sleep": Sleep,
    "fail": Fail,
    "relay": Relay,
    "pipeline": Pipeline,
    "extract": Extract,
    "check": Check,
    "llm": _lazy(
        "agents.llm:LLMAgent",
        "A model (litellm) acting through delegate, ask, finish; reviews with approve/veto. Offline without a model.",
    ),
    "critic": _lazy(
        "agents.critic:Critic",
        "A red-team reviewer: looks for flaws against the acceptance criteria, vetoes with reasons (model or rules).",
    ),
    "retrieve": _lazy(
        "agents.research:Researcher",
        "Retrieves passages of Python's documentation (pydoc_data.topics) ranked by BM25.",
    ),
    "writer": _lazy(
        "agents.research:Writer",
        "Writes an answer citing its passages: with a model if configured, else extractively (and says so).",
    ),
}


def make_worker(brief: Brief) -> Worker:
    """Build the worker a brief asks for (wrapped to review its own results if the
    brief sets ``review_results`` and the kind does not handle that itself)."""
    worker = _construct(brief)
    if brief.review_results is not None and not getattr(worker, "handles_review_results", False):
        return ReviewedResults(worker, brief.review_results)
    return worker


def _construct(brief: Brief) -> Worker:
    try:
        return _construct_kind(brief)
    except (ValueError, TypeError, KeyError, ArithmeticError) as exc:
        # A kind reads its settings from `options`: a wrong type there is the brief's fault.
        raise KindError(
            f"brief {brief.name!r}: kind {brief.kind!r} cannot use its [options] ({type(exc).__name__}: {exc}); "
            "see `mesh kinds` for what each kind takes"
        ) from None


def _construct_kind(brief: Brief) -> Worker:
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
