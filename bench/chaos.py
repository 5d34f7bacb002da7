"""Chaos, the long version of tests/resilience/test_chaos.py: 1,000 tasks through 4
`mesh agent run` processes while one of them is killed with SIGKILL at random every
~0.4 s and restarted. Reports tasks lost, tasks completed twice (more than one
accepted ``finish`` event), the end states and reasons, failovers and the time taken.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

import anyio

from bench.common import AgentRun, progress, tempdir, write_brief
from bench.common import broker as fresh_broker

NAME = "chaos"
SETUP = "4 `mesh agent run` sleep processes (capacity 8), {tasks} tasks of 0.3 s with a 1 s lease, SIGKILL of a random agent every 0.2-0.6 s, restarted 0.2 s later"


async def _run(url: str, runs: dict[str, AgentRun], tasks: int, rng: random.Random) -> dict[str, Any]:
    from mesh.client import Mesh

    mesh = await Mesh.connect(url, client_id="chaos-client")
    kills = 0
    finals: dict[str, Any] = {}
    try:
        records = [await mesh.submit("chaos", f"task {i}", lease_s=1.0, claim_timeout_s=60.0) for i in range(tasks)]
        progress(NAME, f"submitted {tasks} tasks; killing an agent every ~0.4 s")
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
                    for r in records:
                        waiters.start_soon(wait_one, r.id)
                tg.cancel_scope.cancel()
        elapsed = time.monotonic() - t0
        events = await mesh.history(None)
    finally:
        await mesh.close()
    finishes = Counter(e.task for e in events if e.kind == "finish")
    states = Counter(r.state for r in finals.values())
    reasons = Counter(r.reason for r in finals.values() if r.reason)
    result = {
        "tasks": tasks,
        "agents": len(runs),
        "kills": kills,
        "lost": tasks - len(finals),
        "not_terminal": sum(1 for r in finals.values() if r.state not in ("done", "failed", "cancelled")),
        "completed_twice": sum(1 for n in finishes.values() if n > 1),
        "states": dict(states),
        "reasons": dict(reasons),
        "failed_over": sum(1 for r in finals.values() if r.lapses),
        "elapsed_s": elapsed,
        "tasks_per_s": tasks / elapsed if elapsed else 0.0,
        "setup": SETUP.format(tasks=f"{tasks:,}"),
    }
    progress(
        NAME,
        f"{result['kills']} SIGKILLs; lost {result['lost']}, completed twice {result['completed_twice']}, "
        f"states {result['states']}, failed over {result['failed_over']}",
    )
    return result


def main(*, quick: bool = False) -> dict[str, Any]:
    tasks = 60 if quick else 1000
    rng = random.Random(20261121)
    with tempdir() as d, fresh_broker() as b:
        runs = {}
        for i in range(4):
            brief = write_brief(d, f"c{i}", ["chaos"], kind="sleep", capacity=8, options={"seconds": 0.3, "steps": 3})
            runs[f"c{i}"] = AgentRun(brief, b.url, f"c{i}", d)
        for r in runs.values():
            r.start()
        for r in runs.values():
            r.wait_ready(30)
        try:
            return anyio.run(_run, b.url, runs, tasks, rng)
        finally:
            for r in runs.values():
                r.stop()
