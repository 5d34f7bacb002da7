"""What a model is told: built from the agent's brief and *only its task's context*
(the task, its acceptance criteria, the requester's answers, its children's results,
earlier reviewers' vetoes). There is no global transcript: an agent never sees
other tasks or other agents' conversations. Pure functions, no I/O, no clock."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from mesh.briefs import Brief
from protocol import TaskRecord

__all__ = ["system_prompt", "task_prompt", "review_prompt", "clip"]


def clip(value: Any, limit: int) -> str:
    """``value`` as text (JSON unless it is a string), cut to ``limit`` characters."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: max(limit - 40, 0)] + f" … [{len(text) - limit + 40} more characters]"


def system_prompt(
    brief: Brief,
    *,
    mode: Literal["work", "review"],
    tools: Sequence[str],
    can_delegate: bool,
    preface: str = "",
) -> str:
    lines = [f"You are {brief.name}" + (f", the {brief.role}" if brief.role else "") + "."]
    lines.append(
        "You are one agent in a mesh of independent agents. You see only the task you are given; "
        "you act only through your tools."
    )
    if preface:
        lines += ["", preface.strip()]
    if brief.brief.strip():
        lines += ["", "Your brief:", brief.brief.strip()]
    if brief.may:
        lines += ["", "You may:"] + [f"- {rule}" for rule in brief.may]
    if brief.must_not:
        lines += ["", "You must not:"] + [f"- {rule}" for rule in brief.must_not]
    lines.append("")
    if mode == "review":
        lines.append(
            "You are reviewing another agent's result. Judge it against the task's acceptance criteria and "
            "your brief. Call `approve` if it meets them, or `veto` with one specific reason per flaw. "
            "You cannot change the result yourself."
        )
    else:
        if can_delegate and brief.delegates:
            lines.append(f"You may delegate work with `delegate` to: {', '.join(brief.delegates)}.")
        elif brief.delegates:
            lines.append("You cannot delegate this task: it has no hops left. Do the work yourself.")
        else:
            lines.append("You do not delegate: do the work yourself.")
        lines.append(
            "If the instruction is ambiguous, `ask` your requester rather than guess. When done, call "
            "`finish` with the complete result. If your brief forbids the task, `decline` it and say why."
        )
    extra = [t for t in tools if t not in ("delegate", "ask", "finish", "decline", "approve", "veto")]
    if extra:
        lines.append(f"Other tools you have: {', '.join(extra)}.")
    return "\n".join(lines)


def _limits(record: TaskRecord, now: float) -> list[str]:
    out = []
    if record.deadline is not None:
        out.append(f"deadline in {max(record.deadline - now, 0):.0f} s")
    if record.budget is not None and record.budget.tokens is not None:
        out.append(f"{max(record.budget.tokens - record.spent.tokens, 0)} tokens left")
    if record.budget is not None and record.budget.cost is not None:
        out.append(f"{max(record.budget.cost - record.spent.cost, 0):.4f} USD left")
    out.append(f"{record.hops_left} hops left")
    return out


def task_prompt(record: TaskRecord, *, children: Sequence[TaskRecord] = (), now: float, data_chars: int = 8000) -> str:
    """The task as the owner sees it: instruction, criteria, data, the vetoes of earlier
    rounds, the requester's answers to questions asked, and delegated work's results."""
    lines = [f"Task {record.id} (capability {record.capability}), requested by {record.requester}.", "", "Instruction:"]
    lines.append(record.instruction)
    if record.criteria:
        lines += ["", "Acceptance criteria:", record.criteria]
    if record.data is not None:
        lines += ["", "Input data (JSON):", clip(record.data, data_chars)]
    if record.feedback:
        lines += ["", f"Reviewers sent earlier results back ({record.reworks} rework(s) so far). Address every point:"]
        lines += [f"- {v.reviewer}: {reason}" for v in record.feedback for reason in v.reasons]
    answers = [c for c in children if c.capability.startswith("agent.")]
    work = [c for c in children if not c.capability.startswith("agent.")]
    if answers:
        lines += ["", "Your requester's answers to your questions:"]
        for c in answers:
            answer = clip(c.result, 1000) if c.state == "done" else f"(no answer: {c.state} {c.reason or ''})"
            lines.append(f"- Q: {c.instruction}\n  A: {answer}")
    if work:
        lines += ["", "Work you delegated for this task:"]
        for c in work:
            outcome = clip(c.result, 2000) if c.state == "done" else f"{c.state} {c.reason or ''} {c.error}".strip()
            lines.append(f"- [{c.capability}] {clip(c.instruction, 200)}: {outcome}")
    lines += ["", "Limits: " + ", ".join(_limits(record, now)) + "."]
    return "\n".join(lines)


def review_prompt(record: TaskRecord, *, data_chars: int = 8000, findings: Sequence[str] = ()) -> str:
    """The result under review with what it is judged against."""
    lines = [f"Review the result of task {record.id} (capability {record.capability}) by {record.author}.", ""]
    lines += ["Instruction given to the author:", record.instruction]
    lines += ["", "Acceptance criteria:", record.criteria or "(none stated: judge against the instruction)"]
    if record.data is not None:
        lines += ["", "Input data the author had (JSON):", clip(record.data, data_chars)]
    lines += ["", "Result to review:", clip(record.result, data_chars)]
    if record.feedback:
        lines += ["", "Earlier vetoes of this task (check they were addressed):"]
        lines += [f"- {v.reviewer}: {reason}" for v in record.feedback for reason in v.reasons]
    if findings:
        lines += ["", "Automatic checks found (verify them; they may be wrong):"] + [f"- {f}" for f in findings]
    return "\n".join(lines)
