"""The critic (kind ``critic``): a red-team reviewer. Its brief is to find flaws in a
result against the acceptance criteria, not to agree with it; a veto must say what
is wrong. With a model configured it is the LLM agent with that brief (and is shown
what the rules below found); without one it judges by rules a program can check:

- the result is not empty;
- it mentions every term the criteria require (``must mention: a, b``);
- if it is an answer with citations (``{answer, citations}``), every sentence is
  supported by a passage it cites, and every citation is one of the passages the
  task was given (the research desk's fact-check).
"""

from __future__ import annotations

from typing import Any

from mesh.briefs import Brief
from mesh.kinds import KindError, review_request
from mesh.work import TaskContext, Verdict
from protocol import TaskRecord

from .llm import LLMAgent
from .research import check_support

__all__ = ["Critic", "RED_TEAM"]

RED_TEAM = """\
You are a critic: a red team for other agents' results. Your job is to find what is
wrong with the result, not to agree with it. Check it against every acceptance
criterion and the instruction: unsupported or invented claims, missing parts,
errors, answers to a different question, anything the criteria forbid. Approve only
when you looked for flaws and found none that matters. When you veto, give each flaw
as a specific reason the author can act on (quote the part that is wrong)."""


class Critic(LLMAgent):
    """A red-team reviewer: looks for flaws against the acceptance criteria, vetoes
    with reasons (a model, or rules a program can check)."""

    def __init__(self, brief: Brief) -> None:
        threshold = brief.options.get("support_threshold", 0.8)
        if not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise KindError(f"brief {brief.name!r}: field `options.support_threshold`: a number in (0, 1], e.g. 0.8")
        self.threshold = float(threshold)
        super().__init__(brief, system=RED_TEAM, ignore_options=("support_threshold",))

    def findings(self, record: TaskRecord) -> list[str]:
        reasons = super().findings(record)
        if _is_answer(record.result) or (isinstance(record.data, dict) and "passages" in record.data):
            reasons += check_support(record.result, record.data, threshold=self.threshold)
        return reasons

    async def work(self, task: TaskContext) -> Any:
        # A critic reviews; asked to work on a task that is not a review, it says so.
        if not _is_review_task(task):
            verdict = Verdict(approve=False, reasons=(f"{self.brief.name} is a critic: it only reviews results",))
            return {"approve": verdict.approve, "reasons": list(verdict.reasons)}
        return await super().work(task)


def _is_answer(result: Any) -> bool:
    return isinstance(result, dict) and "answer" in result and "citations" in result


def _is_review_task(task: TaskContext) -> bool:
    return review_request(task.data) is not None
