"""Chaos, the long version of tests/resilience/test_chaos.py: tasks through 4
`mesh agent run` processes while one of them is killed with SIGKILL at random and
restarted, from the first submission until every task has ended (churn: agents keep
dying and coming back throughout). Reports tasks lost, tasks completed twice (more
than one accepted ``finish`` event), the end states and reasons, and:

- **failover under churn**: for every takeover in the trail (a ``claim`` whose note
  says "taken over from <owner>"), the time from the SIGKILL of that owner (the first
  kill of its id after its own claim) to the takeover write, as a distribution, in
  seconds and in leases, against the bound the protocol promises (one lease after the
  owner's last renewal: the owner renews every lease/3, so at most a lease after the
  kill, plus the broker's redelivery and the taker's read and write);
- **trail completeness**: per task, the claims and takeovers the final record counts
  (``attempts``, ``lapses``) against the events stored for them (holes: committed
  writes with no event), and tasks with more than one terminal event.

Everything scales with the queue's lease (``--chaos-lease``, 1 s by default): tasks
take 0.3 lease, a kill comes every 0.2-0.6 lease. The requester keeps
:data:`INFLIGHT` tasks in flight, half the agents' slots, so live agents always have
room for a dead one's items: the takeover times measure detection and redelivery,
not a queue of work waiting for a slot.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from bench.common import AgentRun, log_problems, mesh_settings, pct, progress, samples, tempdir, write_brief
from bench.common import broker as fresh_broker

NAME = "chaos"
#: the default queue lease of this benchmark (the deployment default is 10 s: `--chaos-lease 10`)
LEASE_S = 1.0
AGENTS = 4
CAPACITY = 8
#: tasks in flight at once: half the slots, so a dead agent's items find a free slot
INFLIGHT = AGENTS * CAPACITY // 2
#: seconds from a kill to the restart of the same agent
RESTART_AFTER_S = 0.2
SETUP = (
    "{agents} `mesh agent run` sleep processes (capacity {capacity}, queue lease {lease:g} s), {tasks} tasks of "
    "{work:g} s (3 progress writes each), {inflight} in flight; SIGKILL of a random agent every {k0:g}-{k1:g} s from "
    "the first submission until every task has ended, restarted {restart:g} s later"
)
TAKEN_OVER = re.compile(r"taken over from (\S+)")
TERMINAL = ("done", "failed", "cancelled")


def lease_s() -> float:
    """The queue lease of this run: ``BENCH_CHAOS_LEASE`` (set by ``--chaos-lease``), or 1 s."""
    return float(os.environ.get("BENCH_CHAOS_LEASE") or LEASE_S)


def results_name() -> str:
    """The results file's stem: a run with another lease does not replace the 1 s run."""
    lease = lease_s()
    return NAME if lease == LEASE_S else f"{NAME}-lease{lease:g}"


def margin_s(lease: float) -> float:
    """The margin we allow a takeover beyond one lease after the kill: the broker's
    redelivery timer, the pull that receives the item, the taker's read and claim are
    milliseconds on an idle machine; 0.5 s (or a tenth of a long lease) absorbs the
    scheduling of a loaded 2-core machine running a dozen processes."""
    return max(0.5, 0.1 * lease)


def _steps(note: str) -> list[str]:
    """The transitions a write applied, from its event's note ("claim + finish in one write")."""
    head = note.split(";", 1)[0]
    return head[: -len(" in one write")].split(" + ") if head.endswith(" in one write") else []


def _claims(event: Any) -> bool:
    """Whether ``event`` records a committed claim (alone or with others in one write),
    or stands for one: a ``recovered`` event of a working record records a claim whose
    writer died before its own event (PROTOCOL 6.17)."""
    if event.kind == "recovered":
        return bool(event.state == "working")
    return event.kind == "claim" or "claim" in _steps(event.note)


#: events a later holder records for a write whose writer died before its own event
FILLED = ("recovered", "ended")


def _takes_over(event: Any) -> bool:
    """Whether ``event`` records a takeover: a claim of a task held by another owner
    (its note says so), or one that failed the task at ``max_lapses``."""
    if event.kind == "claim" and event.state == "failed":
        return True
    return _claims(event) and TAKEN_OVER.search(event.note) is not None


def failovers(
    events: Sequence[Any],
    kills: dict[str, list[float]],
    lease: float,
    graced: frozenset[str] = frozenset(),
    starts: dict[str, list[float]] | None = None,
    ready: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
    """Kill -> takeover for every takeover in ``events`` (a task's stored events, in
    order); ``kills`` and ``starts``: agent id -> wall-clock times it was killed and
    restarted; ``graced``: tasks whose item an agent handed back under the takeover
    grace (from the agents' logs); ``ready``: agent id -> times it logged ``agent ready``
    (its pulls are up)."""
    starts = starts or {}
    serving = ready or starts  # without the logs' ready times, a start will do

    def up(agent: str, at: float, since: dict[str, list[float]]) -> bool:
        """Whether ``agent`` was started (or ready) at ``at`` and not killed since."""
        killed = max((t for t in kills.get(agent, []) if t <= at), default=-math.inf)
        return max((t for t in since.get(agent, []) if t <= at), default=-math.inf) > killed

    agents = set(kills) | set(starts) | set(serving)

    # Two passes: a slow writer's claim event may be stored after the takeover's.
    claim_at = {(e.task, e.epoch): (e.actor, e.at) for e in events if _claims(e) and e.state != "failed"}
    takeovers = []
    for e in events:
        if not _takes_over(e):
            continue
        # A takeover that reaches max_lapses fails the task at the owner's epoch (and its
        # note is whatever progress the record had); any other names the owner and
        # writes the next epoch.
        prev = claim_at.get((e.task, e.epoch if e.state == "failed" else e.epoch - 1))
        taken = TAKEN_OVER.search(e.note)
        owner = prev[0] if e.state == "failed" and prev else taken.group(1) if taken else "?"
        row: dict[str, Any] = {
            "task": e.task,
            "owner": owner,
            "taker": e.actor,
            "epoch": e.epoch,
            "at": e.at,
            "graced": e.task in graced,
        }
        if prev is None or prev[0] != owner:
            row["why"] = "no claim event of the owner"  # a hole in the trail
        else:
            row["owner_claimed_at"] = prev[1]
            killed = [t for t in kills.get(owner, []) if prev[1] < t < e.at]
            if killed:
                row["kill_to_takeover_s"] = e.at - killed[0]
                # The item's first taker may die too, before its claim is written: then the
                # broker lends the item out again a lease later, and the trail shows one
                # takeover two leases after the owner's death. Another agent killed when it
                # could have held the item (from 0.6 lease after the owner's death to 0.6
                # lease before the takeover) makes that likely.
                lease_end = killed[0] + lease
                row["second_death"] = any(
                    lease_end - 0.4 * lease < t < e.at - 0.6 * lease and up(agent, t - 0.001, serving)
                    for agent, ts in kills.items()
                    for t in ts
                )
                # Agents serving (ready, not killed since) when the owner's lease ran out:
                # none, and the item waits for the next agent to come up.
                row["ready_at_lease_end"] = sum(1 for a in agents if up(a, lease_end, serving))
                # How long the taker had been serving: briefly, and the item waited for it.
                row["taker_up_s"] = e.at - max((t for t in serving.get(e.actor, []) if t <= e.at), default=-math.inf)
            else:
                row["why"] = "owner not killed"  # a live owner lost its task
                row["claim_to_takeover_s"] = e.at - prev[1]
        takeovers.append(row)
    measured = [r["kill_to_takeover_s"] for r in takeovers if "kill_to_takeover_s" in r]
    bound = lease + margin_s(lease)
    over = sorted((r for r in takeovers if r.get("kill_to_takeover_s", 0.0) > bound), key=lambda r: r["at"])
    with_grace = [r["kill_to_takeover_s"] for r in takeovers if "kill_to_takeover_s" in r and r["graced"]]
    without = [r["kill_to_takeover_s"] for r in takeovers if "kill_to_takeover_s" in r and not r["graced"]]
    return {
        "lease_s": lease,
        "margin_s": margin_s(lease),
        "bound_s": bound,
        "count": len(measured),
        "takeovers": len(takeovers),
        "unattributed": dict(Counter(r["why"] for r in takeovers if "why" in r)),
        "unattributed_examples": [r for r in takeovers if "why" in r][:8],
        "live_owner_claim_to_takeover_s": [r["claim_to_takeover_s"] for r in takeovers if "claim_to_takeover_s" in r],
        "s": _dist(measured),
        "leases": _dist([m / lease for m in measured]),
        "graced_s": _dist(with_grace),
        "not_graced_s": _dist(without),
        "over_bound": len(over),
        "over_bound_graced": sum(1 for r in over if r["graced"]),
        "over_bound_no_agent_ready": sum(1 for r in over if not r["graced"] and r.get("ready_at_lease_end") == 0),
        "over_bound_second_death": sum(
            1 for r in over if not r["graced"] and r.get("ready_at_lease_end") != 0 and r.get("second_death")
        ),
        "over_1_5_leases": sum(1 for m in measured if m > 1.5 * lease),
        "over_examples": over[:8],
        "samples_ms": samples(measured),
    }


def _dist(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p95": pct(values, 95),
        "max": max(values) if values else math.nan,
        "min": min(values) if values else math.nan,
    }


def trail(events: Sequence[Any], finals: dict[str, Any]) -> dict[str, Any]:
    """Committed claims and takeovers (the final records' ``attempts`` and ``lapses``)
    against the events stored for them; tasks with more than one terminal event."""
    by_task: dict[str, list[Any]] = defaultdict(list)
    for e in events:
        by_task[e.task].append(e)
    claims = takeovers = claim_events = takeover_events = filled = 0
    holes: Counter[str] = Counter()
    extra: Counter[str] = Counter()
    multi_terminal: list[dict[str, Any]] = []
    examples: list[dict[str, Any]] = []
    for task, record in finals.items():
        evs = by_task.get(task, [])
        # A takeover that fails the task (max_lapses) counts a lapse but no attempt.
        n_claims = sum(1 for e in evs if _claims(e) and not (e.kind == "claim" and e.state == "failed"))
        n_takeovers = sum(1 for e in evs if _takes_over(e))
        # Writes whose writer died before its event, recorded by the item's next holder.
        filled += sum(1 for e in evs if e.kind in FILLED)
        terminal = [e for e in evs if e.state in TERMINAL]
        claims += record.attempts
        takeovers += record.lapses
        claim_events += n_claims
        takeover_events += n_takeovers
        task_holes = {
            "claim": record.attempts - n_claims,
            "takeover": record.lapses - n_takeovers,
            "end": (1 if record.state in TERMINAL else 0) - min(len(terminal), 1),
        }
        for what, n in task_holes.items():
            if n > 0:
                holes[what] += n
            elif n < 0:
                extra[what] += -n
        if any(n > 0 for n in task_holes.values()) and len(examples) < 8:
            examples.append(
                {"task": task, **{k: v for k, v in task_holes.items() if v}, "kinds": [e.kind for e in evs]}
            )
        if len(terminal) > 1:
            multi_terminal.append(
                {
                    "task": task,
                    "events": [f"{e.kind}->{e.state}" + (f" ({e.reason})" if e.reason else "") for e in terminal],
                }
            )
    return {
        "tasks": len(finals),
        "claims_committed": claims,
        "claim_events": claim_events,
        "takeovers_committed": takeovers,
        "takeover_events": takeover_events,
        "holes": dict(holes),
        "filled": filled,
        "hole_tasks": examples,
        "events_without_write": dict(extra),
        "multi_terminal": len(multi_terminal),
        "multi_terminal_examples": multi_terminal[:8],
    }


#: what an agent logs when it hands an item back under the takeover grace
GRACE_LINE = "not taking over yet"


def ready_times(paths: Sequence[Path]) -> dict[str, list[float]]:
    """Agent id (the log file's name) -> wall-clock times it logged ``agent ready``."""
    out: dict[str, list[float]] = {}
    for path in paths:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if "agent ready" in line:
                with contextlib.suppress(ValueError, IndexError):
                    stamp = datetime.datetime.fromisoformat(line.split(" ", 1)[0])
                    out.setdefault(path.stem, []).append(stamp.timestamp())
    return out


def graced_tasks(paths: Sequence[Path]) -> tuple[int, frozenset[str]]:
    """Hand-backs under the takeover grace in the agents' logs, and the tasks they held back."""
    count, tasks = 0, set()
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if GRACE_LINE in line:
                count += 1
                if found := re.search(r"task=(\S+)", line):
                    tasks.add(found.group(1))
    return count, frozenset(tasks)


async def _run(
    url: str, runs: dict[str, AgentRun], tasks: int, lease: float, rng: random.Random
) -> tuple[dict[str, Any], list[Any], dict[str, list[float]], dict[str, list[float]]]:
    from mesh.client import Mesh

    mesh = await Mesh.connect(url, client_id="chaos-client", settings=mesh_settings(lease_s=lease))
    kills: dict[str, list[float]] = defaultdict(list)
    starts: dict[str, list[float]] = defaultdict(list)
    finals: dict[str, Any] = {}
    room = anyio.Semaphore(INFLIGHT)
    try:
        t0 = time.monotonic()

        async def wait_one(task_id: str) -> None:
            try:
                finals[task_id] = await mesh.wait(task_id)
            finally:
                room.release()

        def kill(victim: AgentRun) -> None:
            if victim.proc is not None and victim.proc.poll() is None:
                kills[victim.agent_id].append(time.time())  # the trail's clock: events' `at`
                victim.kill()

        def restart(victim: AgentRun) -> None:
            starts[victim.agent_id].append(time.time())
            victim.start()

        async def chaos() -> None:
            while True:
                await anyio.sleep((0.2 + 0.4 * rng.random()) * lease)
                victim = runs[rng.choice(sorted(runs))]
                await anyio.to_thread.run_sync(kill, victim)
                await anyio.sleep(RESTART_AFTER_S)
                await anyio.to_thread.run_sync(restart, victim)

        with anyio.fail_after(600):
            async with anyio.create_task_group() as tg:
                tg.start_soon(chaos)
                async with anyio.create_task_group() as waiters:
                    for i in range(tasks):
                        await room.acquire()
                        record = await mesh.submit("chaos", f"task {i}", claim_timeout_s=60.0 * lease)
                        waiters.start_soon(wait_one, record.id)
                    progress(NAME, f"submitted {tasks} tasks in {time.monotonic() - t0:.1f} s")
                tg.cancel_scope.cancel()
        elapsed = time.monotonic() - t0
        # An owner killed between writing its result and recording the event leaves its
        # item unacknowledged: the next agent to get it records the end ("ended"), a
        # lease later. Wait for every end to be on record.
        deadline = time.monotonic() + max(20.0, 2 * lease)
        while True:
            events = await mesh.history(None)
            ends = Counter(e.task for e in events if e.kind in ("finish", "ended"))
            missing = [t for t, r in finals.items() if r.state == "done" and not ends[t]]
            if not missing or time.monotonic() > deadline:
                break
            await anyio.sleep(0.5)
    finally:
        await mesh.close()
    n_kills = sum(len(v) for v in kills.values())
    finishes = Counter(e.task for e in events if e.kind == "finish")
    recorded_late = sum(1 for e in events if e.kind == "ended")
    states = Counter(r.state for r in finals.values())
    reasons = Counter(r.reason for r in finals.values() if r.reason)
    result = {
        "tasks": tasks,
        "agents": len(runs),
        "lease_s": lease,
        "inflight": INFLIGHT,
        "kills": n_kills,
        "lost": tasks - len(finals),
        "not_terminal": sum(1 for r in finals.values() if r.state not in TERMINAL),
        "completed_twice": sum(1 for n in finishes.values() if n > 1),
        "ends_unrecorded": len(missing),
        "ends_recorded_by_next_holder": recorded_late,
        "states": dict(states),
        "reasons": dict(reasons),
        "failed_over": sum(1 for r in finals.values() if r.lapses),
        "attempts_per_task": sum(r.attempts for r in finals.values()) / max(len(finals), 1),
        "elapsed_s": elapsed,
        "tasks_per_s": tasks / elapsed if elapsed else 0.0,
        "trail": trail(events, finals),
        "setup": SETUP.format(
            agents=len(runs),
            capacity=CAPACITY,
            lease=lease,
            tasks=f"{tasks:,}",
            work=0.3 * lease,
            inflight=INFLIGHT,
            k0=0.2 * lease,
            k1=0.6 * lease,
            restart=RESTART_AFTER_S,
        ),
    }
    return result, events, kills, starts


def main(*, quick: bool = False) -> dict[str, Any]:
    lease = lease_s()
    tasks = int(os.environ.get("BENCH_CHAOS_TASKS") or (60 if quick else 1000))
    rng = random.Random(20261121)
    with tempdir() as d, fresh_broker() as b:
        runs = {}
        for i in range(AGENTS):
            brief = write_brief(
                d,
                f"c{i}",
                ["chaos"],
                kind="sleep",
                capacity=CAPACITY,
                options={"seconds": 0.3 * lease, "steps": 3},
                lease_s=lease,
            )
            runs[f"c{i}"] = AgentRun(brief, b.url, f"c{i}", d)
        for r in runs.values():
            r.start()
        for r in runs.values():
            r.wait_ready(30)
        try:
            result, events, kills, starts = anyio.run(_run, b.url, runs, tasks, lease, rng)
        finally:
            for r in runs.values():
                r.stop()
        logs = [r.log for r in runs.values()]
        result["log_problems"] = log_problems(logs)
        # The takeover grace (mesh/agent.py `_takeover_grace`): an agent that (re)connected
        # less than a lease ago hands a dead owner's item back for the rest of that lease.
        result["grace_hand_backs"], graced = graced_tasks(logs)
        fo = result["failover"] = failovers(events, kills, lease, graced, starts, ready_times(logs))
        first = min(min(v) for v in [*kills.values(), *starts.values()] if v) if kills else 0.0
        result["kill_log"] = {a: [round(t - first, 3) for t in ts] for a, ts in sorted(kills.items())}
        result["start_log"] = {a: [round(t - first, 3) for t in ts] for a, ts in sorted(starts.items())}
        s = fo["s"]
        progress(
            NAME,
            f"{result['kills']} SIGKILLs; lost {result['lost']}, completed twice {result['completed_twice']}, "
            f"states {result['states']}, failed over {result['failed_over']}; kill->takeover n={s['n']} "
            f"p50 {s['p50']:.2f} s p95 {s['p95']:.2f} s max {s['max']:.2f} s (lease {lease:g} s), "
            f"{fo['over_bound']} over {fo['bound_s']:g} s ({fo['over_bound_graced']} after a grace hand-back); "
            f"trail holes {result['trail']['holes']}, multi-terminal {result['trail']['multi_terminal']}",
        )
        return result
