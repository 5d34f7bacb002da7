"""Agent kinds: the runtime's deterministic workers (for tests, benchmarks and the
demo), and the registry that finds the kinds installed distributions publish.

A kind turns a brief into a :class:`~mesh.work.Worker`. The runtime's own kinds are
listed in :data:`KINDS`, an explicit registry. Other kinds are published by installed
distributions under the entry-point group ``agent_mesh.kinds`` (see :func:`kinds`;
the roles of ``agents/`` come that way, so the runtime never names them); a brief may
also name any class as ``package.module:Class``. Each is constructed as ``Class(brief)``.

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
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import anyio
import msgspec

from protocol import ReviewPolicy, TaskRecord, best_match

from .briefs import Brief
from .work import Reviewer, Serving, TaskContext, TaskFailed, Verdict, Worker

__all__ = [
    "KINDS",
    "ENTRY_POINT_GROUP",
    "Kind",
    "kinds",
    "kind_conflicts",
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
    request = _review_request(task, result)
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


def _review_request(task: TaskContext, result: Any) -> dict[str, Any]:
    """What a reviewer (or the escalation) is shown of a result: the work asked and who did it."""
    return {
        "instruction": task.instruction,
        "criteria": task.record.criteria,
        "data": task.data,
        "result": result,
        "author": task.agent,
    }


async def settle_rejected(task: TaskContext, result: Any, reasons: tuple[str, ...], policy: ReviewPolicy) -> Any:
    """A result its reviewers kept vetoing: hand the decision to ``policy.escalate_to``
    (whose answer is final), or fail the task ``rejected``."""
    if policy.escalate_to is None:
        raise TaskFailed("reviewers rejected the result: " + "; ".join(reasons), reason="rejected")
    request = {
        **_review_request(task, result),
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
        if isinstance(worker, Serving):
            self.serve = worker.serve

    async def work(self, task: TaskContext) -> Any:
        result = await self.worker.work(task)
        verdict = await request_review(task, result, self.policy, round=0)
        if verdict.approve:
            return result
        return await settle_rejected(task, result, verdict.reasons, self.policy)


KINDS: dict[str, Callable[[Brief], Worker]] = {
    "echo": Echo,
    "sleep": Sleep,
    "fail": Fail,
    "relay": Relay,
    "pipeline": Pipeline,
    "extract": Extract,
    "check": Check,
}
"""The kinds the runtime itself implements. Every other named kind is published by an
installed distribution under the entry-point group :data:`ENTRY_POINT_GROUP` (the
roles in ``agents/`` are published that way by this project's own pyproject.toml)."""

#: the entry-point group a distribution declares its worker kinds in:
#: ``[project.entry-points."agent_mesh.kinds"] name = "package.module:Class"``
ENTRY_POINT_GROUP = "agent_mesh.kinds"


@dataclass(frozen=True)
class Kind:
    """A kind by name: where it comes from, and how to get its constructor (loading a
    published kind imports its module, so this happens only when a brief uses it or
    ``mesh kinds`` describes it)."""

    name: str
    #: ``mesh`` for a built-in; else the distribution, its version and the entry point's value
    origin: str
    make: Callable[[Brief], Worker] | None = None
    entry_point: EntryPoint | None = None

    def load(self) -> Callable[[Brief], Worker]:
        """The constructor; :class:`KindError` (one line, naming the entry point) if a
        published kind cannot be imported."""
        if self.make is not None:
            return self.make
        assert self.entry_point is not None
        try:
            loaded: Callable[[Brief], Worker] = self.entry_point.load()
        except Exception as exc:  # any error of third-party import code: name the entry point, not a traceback
            raise KindError(
                f"kind {self.name!r} ({self.origin}) cannot be loaded: {type(exc).__name__}: {_one_line(exc)}"
            ) from None
        if not callable(loaded):
            raise KindError(f"kind {self.name!r} ({self.origin}) is not a class or function of a brief")
        return loaded

    def summary(self) -> str:
        """The first sentence of the constructor's docstring."""
        paragraph = " ".join(((self.load().__doc__ or "").strip().split("\n\n") or [""])[0].split())
        return _SENTENCE.split(paragraph, maxsplit=1)[0]


def kinds() -> dict[str, Kind]:
    """Every kind by name: the built-ins, then the ones installed distributions publish
    (read afresh on each call: it is called once per agent). A published kind cannot
    replace a built-in, and two distributions publishing one name make it unusable
    until one is removed; both are reported by :func:`kind_conflicts`."""
    out = {name: Kind(name, "mesh", make=make) for name, make in KINDS.items()}
    for name, eps in _published().items():
        if name not in out and len(eps) == 1:
            out[name] = Kind(name, _origin(eps[0]), entry_point=eps[0])
    return out


def kind_conflicts() -> list[str]:
    """One line for each published kind that :func:`kinds` leaves out, and why."""
    out = []
    for name, eps in sorted(_published().items()):
        if name in KINDS:
            out += [f"kind {name!r} ({_origin(ep)}) is ignored: {name!r} is a built-in kind" for ep in eps]
        elif len(eps) > 1:
            out.append(f"kind {name!r} is published twice: {'; '.join(_origin(ep) for ep in eps)}")
    return out


def _published() -> dict[str, list[EntryPoint]]:
    out: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        # An editable install and a regular one of the same distribution list one entry twice.
        if all(ep.value != seen.value for seen in out.get(ep.name, [])):
            out.setdefault(ep.name, []).append(ep)
    return out


def _origin(ep: EntryPoint) -> str:
    dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "an unknown distribution"
    return f"{dist}: {ep.group} {ep.name} = {ep.value}"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


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
        known = kinds()
        if brief.kind not in known:
            raise KindError(
                f"brief {brief.name!r}: unknown kind {brief.kind!r}; use one of {', '.join(sorted(known))} "
                "or `package.module:Class` (`mesh kinds` lists them)"
            )
        try:
            make = known[brief.kind].load()
        except KindError as exc:
            raise KindError(f"brief {brief.name!r}: {exc}") from None
        return make(brief)
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
