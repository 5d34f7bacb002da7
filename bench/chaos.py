"""Chaos, the long version of tests/resilience/test_chaos.py: 1,000 tasks through 4
`mesh agent run` processes while one of them is killed with SIGKILL at random every
~0.4 s and restarted. Reports tasks lost, tasks completed twice (more than one
accepted ``finish`` event), the end states and reasons, failovers and the time taken.

The kills start with the first submission and go on until every task has ended, so
they fall on tasks being worked (the queue's lease is 1 s: a killed holder's items go
to another agent a lease after its last renewal).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

import anyio

from bench.common import AgentRun, log_problems, mesh_settings, progress, tempdir, write_brief
from bench.common import broker as fresh_broker

NAME = "chaos"
LEASE_S = 1.0
SETUP = (
    "4 `mesh agent run` sleep processes (capacity 8, queue lease 1 s), {tasks} tasks of 0.3 s (3 progress "
    "writes each), SIGKILL of a random agent every 0.2-0.6 s from the first submission on, restarted 0.2 s later"
)


async def _run(url: str, runs: dict[str, AgentRun], tasks: int, rng: random.Random) -> dict[str, Any]:
    from mesh.client import Mesh

    mesh = await Mesh.connect(url, client_id="chaos-client", settings=mesh_settings(lease_s=LEASE_S))
    kills = 0
    finals: dict[str, Any] = {}
    try:
        t0 = time.monotonic()

        async def wait_one(task_id: str) -> None:
            finals[task_id] = await mesh.wait(task_id)

        async def chaos() -> None:
            nonlocal kills
            while True:
                await anyio.sleep(0.2 + 0.4 * rng.random())
                victim = runs[rng.choice(sorted(runs))]
                await anyio.to_thread.run_sync(victim.kill)
                kills += 1
                await anyio.sleep(0.2)
                await anyio.to_thread.run_sync(victim.start)

        with anyio.fail_after(600):
            async with anyio.create_task_group() as tg:
                tg.start_soon(chaos)
                async with anyio.create_task_group() as waiters:
                    for i in range(tasks):
                        record = await mesh.submit("chaos", f"task {i}", claim_timeout_s=60.0)
                        waiters.start_soon(wait_one, record.id)
                    progress(NAME, f"submitted {tasks} tasks in {time.monotonic() - t0:.1f} s, {kills} kills so far")
                tg.cancel_scope.cancel()
        elapsed = time.monotonic() - t0
        # An owner killed between writing its result and recording the event leaves its
        # item unacknowledged: the next agent to get it records the end ("ended"), a
        # lease later. Wait for every end to be on record.
        deadline = time.monotonic() + 20
        while True:
            events = await mesh.history(None)
            ends = Counter(e.task for e in events if e.kind in ("finish", "ended"))
            missing = [t for t, r in finals.items() if r.state == "done" and not ends[t]]
            if not missing or time.monotonic() > deadline:
                break
            await anyio.sleep(0.5)
    finally:
        await mesh.close()
    finishes = Counter(e.task for e in events if e.kind == "finish")
    recorded_late = sum(1 for e in events if e.kind == "ended")
    states = Counter(r.state for r in finals.values())
    reasons = Counter(r.reason for r in finals.values() if r.reason)
    result = {
        "tasks": tasks,
        "agents": len(runs),
        "kills": kills,
        "lost": tasks - len(finals),
        "not_terminal": sum(1 for r in finals.values() if r.state not in ("done", "failed", "cancelled")),
        "completed_twice": sum(1 for n in finishes.values() if n > 1),
        "ends_unrecorded": len(missing),
        "ends_recorded_by_next_holder": recorded_late,
        "states": dict(states),
        "reasons": dict(reasons),
        "failed_over": sum(1 for r in finals.values() if r.lapses),
        "attempts_per_task": sum(r.attempts for r in finals.values()) / max(len(finals), 1),
        "elapsed_s": elapsed,
        "tasks_per_s": tasks / elapsed if elapsed else 0.0,
        "setup": SETUP.format(tasks=f"{tasks:,}"),
    }
    progress(
        NAME,
        f"{result['kills']} SIGKILLs; lost {result['lost']}, completed twice {result['completed_twice']}, "
        f"states {result['states']}, failed over {result['failed_over']}, ends recorded by the next holder "
        f"{recorded_late}, unrecorded {len(missing)}",
    )
    return result


def main(*, quick: bool = False) -> dict[str, Any]:
    tasks = 60 if quick else 1000
    rng = random.Random(20261121)
    with tempdir() as d, fresh_broker() as b:
        runs = {}
        for i in range(4):
            brief = write_brief(
                d,
                f"c{i}",
                ["chaos"],
                kind="sleep",
                capacity=8,
                options={"seconds": 0.3, "steps": 3},
                lease_s=LEASE_S,
            )
            runs[f"c{i}"] = AgentRun(brief, b.url, f"c{i}", d)
        for r in runs.values():
            r.start()
        for r in runs.values():
            r.wait_ready(30)
        try:
            result = anyio.run(_run, b.url, runs, tasks, rng)
        finally:
            for r in runs.values():
                r.stop()
        result["log_problems"] = log_problems([r.log for r in runs.values()])
        return result
