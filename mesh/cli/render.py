"""Plain-text rendering for the CLI: readable without colour or a wide terminal."""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Sequence
from typing import Any

from protocol import AgentCard, ErrorReport, TaskEvent, TaskRecord, approvals, vetoes

__all__ = ["outcome", "agents_table", "event_line", "trace", "inbox", "top_view", "org_cells"]


def _short(value: Any, width: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def outcome(record: TaskRecord) -> str:
    if record.state == "done":
        return (
            str(record.result) if isinstance(record.result, str) else json.dumps(record.result, indent=2, default=str)
        )
    detail = f" ({record.reason}: {record.error})" if record.reason else ""
    return f"task {record.id} {record.state}{detail}"


def agents_table(cards: list[AgentCard], *, now: float) -> str:
    if not cards:
        return "no agents (start one with `mesh agent run BRIEF.toml`)"
    rows = [("AGENT", "ROLE", "SERVES", "LOAD", "DONE", "FAILED", "REFUSED", "STATE", "HOST", "UP")]
    for c in cards:
        rows.append(
            (
                c.id,
                c.role or c.kind,
                ",".join(c.serves),
                f"{c.load}/{c.capacity}",
                str(c.completed),
                str(c.failed),
                str(c.refused),
                "draining" if c.draining else "ready",
                f"{c.host}:{c.pid}",
                f"{int(now - c.started)}s",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


#: how an event no verified write backs is shown (events are unsigned: a false trace)
UNBACKED = "UNBACKED: no verified write shows it"


def event_line(e: TaskEvent, *, unbacked: bool = False) -> str:
    clock = time.strftime("%H:%M:%S", time.localtime(e.at)) + f".{int(e.at * 1000) % 1000:03d}"
    reason = f" ({e.reason})" if e.reason else ""
    note = f"  {_short(e.note, 60)}" if e.note else ""
    false = f"  {UNBACKED}" if unbacked else ""
    return f"{clock} {e.task} {e.kind:9} -> {e.state}{reason}  {e.capability} by {e.actor} epoch {e.epoch}{note}{false}"


def trace(
    tree: list[tuple[int, TaskRecord]],
    events: list[TaskEvent],
    reports: Sequence[ErrorReport] = (),
    unbacked: Collection[tuple[str, float, str]] = (),
) -> str:
    lines = []
    for depth, r in tree:
        took = f"{(r.updated - r.created) * 1000:.0f} ms"
        reason = f" ({r.reason}: {_short(r.error, 50)})" if r.reason else ""
        owner = f" owner {r.author or r.owner} epoch {r.epoch}" if (r.author or r.owner) else ""
        review = ""
        if r.review:
            # approvals toward the quorum; a last round also counts its vetoes toward reject_quorum
            review = f" review {len(approvals(r))}/{r.review.quorum}"
            if vetoes(r) and r.review.reject_quorum > 1:
                review += f", vetoes {len(vetoes(r))}/{r.review.reject_quorum}"
        lines.append(
            f"{'  ' * depth}{r.id} [{r.capability}] {r.state}{reason}{owner} attempts {r.attempts}{review} {took}"
        )
        if r.state == "done" and r.result is not None:
            lines.append(f"{'  ' * depth}  result: {_short(r.result, 100)}")
        for v in r.feedback:
            lines.append(f"{'  ' * depth}  veto by {v.reviewer}: {_short('; '.join(v.reasons), 90)}")
    if events:
        # In the order the transitions were made (their writers' clocks), which the
        # stream's order (the order their events were recorded) can differ from by
        # a few milliseconds across agents.
        events = sorted(events, key=lambda e: e.at)
        t0 = events[0].at
        lines.append("")
        lines.append("events:")
        for e in events:
            reason = f" ({e.reason})" if e.reason else ""
            note = f"  {_short(e.note, 50)}" if e.note else ""
            # Events are unsigned: one that no verified write backs is a false trace.
            false = f"  {UNBACKED}" if (e.task, e.at, e.kind) in unbacked else ""
            lines.append(
                f"  +{(e.at - t0) * 1000:7.1f} ms  {e.task} {e.kind:9} -> {e.state}{reason} by {e.actor}{note}{false}"
            )
    if reports:
        # Writes a party refused (forged, unreadable): never acted on, each named by the
        # party that met it; the task carried on from its last valid revision, or ended.
        t0 = min([e.at for e in events] + [report.at for report in reports])
        lines.append("")
        lines.append("refused writes (never acted on):")
        for report in sorted(reports, key=lambda report: report.at):
            what = "FORGED" if "forged" in report.error else "REFUSED"
            lines.append(
                f"  +{(report.at - t0) * 1000:7.1f} ms  {what} reported by {report.agent}: {_short(report.error, 160)}"
            )
    return "\n".join(lines)


def inbox(records: list[TaskRecord]) -> str:
    if not records:
        return "nothing waits for a person"
    lines = []
    for r in records:
        what = "REVIEW" if r.state == "review" else "TASK"
        lines.append(f"{what} {r.id} [{r.capability}] from {r.requester}: {_short(r.instruction, 100)}")
        if r.criteria:
            lines.append(f"  criteria: {_short(r.criteria, 100)}")
        if r.state == "review":
            lines.append(f"  result by {r.author}: {_short(r.result, 100)}")
        for v in r.feedback:
            lines.append(f"  veto by {v.reviewer}: {_short('; '.join(v.reasons), 90)}")
    lines.append("")
    lines.append("act with: mesh inbox answer ID TEXT | mesh inbox approve ID | mesh inbox veto ID --reason WHY")
    return "\n".join(lines)


def _table(title: str, header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    all_rows = [header, *rows]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header))]
    body = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in all_rows]
    return "\n".join([title, *body])


def top_view(snap: Any) -> str:
    """A plain-text view of a :class:`mesh.top.Snapshot`: agents, active tasks, flags."""
    data = snap.to_json()
    agents: list[tuple[str, ...]] = []
    for a in data["agents"]:
        age = "-" if a["last_progress_age_s"] is None else f"{a['last_progress_age_s']:.0f}s ago"
        agents.append(
            (
                a["id"] + (" (draining)" if a["draining"] else ""),
                a["role"],
                ",".join(a["serves"]),
                f"{a['load']}/{a['capacity']}",
                _short(",".join(a["tasks"]) or "-", 40),
                age,
                str(a["reworks"]),
                str(a["completed"]),
                str(a["failed"]),
            )
        )
    flags = data["flags"]
    tasks: list[tuple[str, ...]] = []
    for t in data["tasks"]:
        marks = [name.upper() for name in ("stuck", "looping") if t["id"] in flags[name]]
        if t["state"] == "open" and t["capability"] in flags["overloaded"]:
            marks.append("OVERLOADED")
        tasks.append(
            (
                t["id"],
                t["capability"],
                t["state"],
                t["owner"] or "-",
                str(t["epoch"]),
                str(t["reworks"]),
                _short(t["progress"], 30),
                f"{t['age_s']:.0f}s",
                " ".join(marks),
            )
        )
    summary = (
        f"stuck: {len(flags['stuck'])}   looping: {len(flags['looping'])}   overloaded capabilities: "
        f"{', '.join(flags['overloaded']) or 'none'}"
    )
    if flags.get("unreadable"):
        unreadable = ", ".join(flags["unreadable"])
        summary += f"\nunreadable (records: their parties end them; items: agents refuse them): {unreadable}"
    for forged in flags.get("forged", ()):
        summary += f"\nFORGED (not shown; its parties report it and carry on from the last valid write): {forged}"
    for missing in flags.get("not_read", ()):
        summary += f"\nNOT READ (this view lacks it): {missing}"
    return "\n\n".join(
        [
            _table(
                f"agents ({len(agents)})",
                ("AGENT", "ROLE", "SERVES", "LOAD", "TASKS", "LAST PROGRESS", "REWORKS", "DONE", "FAILED"),
                agents,
            ),
            _table(
                f"active tasks ({len(tasks)})",
                ("TASK", "CAPABILITY", "STATE", "OWNER", "EPOCH", "REWORKS", "PROGRESS", "AGE", "FLAGS"),
                tasks,
            ),
            summary,
        ]
    )


def org_cells(result: dict[str, Any]) -> str:
    """The org benchmark's cells (bench/org.py's result): measured beside the arithmetic."""
    rows = []
    for c in result["cells"]:
        got, want = c["pooled"], c["predicted"]
        rows.append(
            (
                c["group"],
                f"{c['p']:g}/{c['q']:g}/{c['f']:g}",
                f"{c['rho']:g}",
                c["policy"],
                str(c["n"]),
                f"{got['accuracy']:.2%} ({want['accuracy']:.2%})",
                f"{got['wrong_accepted']:.2%} ({want['wrong_accepted']:.2%})",
                f"{got['right_lost']:.2%} ({want['right_lost']:.2%})",
                f"{got['attempts']:.2f} ({want['attempts']:.2f})",
                f"{got['reviews']:.2f} ({want['reviews']:.2f})",
                f"{c['p50_ms']['median']:.0f}",
            )
        )
    header = (
        "cell",
        "p/q/f",
        "rho",
        "policy",
        "tasks",
        "accuracy (arithmetic)",
        "wrong accepted",
        "right lost",
        "attempts",
        "reviews",
        "p50 ms",
    )
    return _table("measured (independent-error arithmetic, mixed with shared draws by rho)", header, rows)
