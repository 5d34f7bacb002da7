"""Chaos: agents killed with SIGKILL at random and restarted while 300 tasks run.
No task is lost, none completes twice, every task ends with a reason."""

from __future__ import annotations

import random
from collections import Counter

import anyio

from mesh.client import Mesh
from mesh.testing import AgentProcs, wait_for
from protocol import REASONS, TaskRecord, is_terminal

TASKS = 300
AGENTS = 4


async def test_random_sigkills_lose_nothing_and_complete_nothing_twice(
    agent_procs: AgentProcs, mesh_client: Mesh
) -> None:
    rng = random.Random(20261121)
    names = [f"c{i}" for i in range(AGENTS)]
    # A 1 s lease on the queue (made by the first agent): a killed holder's work goes to
    # another agent a second later.
    brief = {"kind": "sleep", "capacity": 8, "lease_s": 1.0, "options": {"seconds": 0.3, "steps": 3}}
    for name in names:
        agent_procs.start(name, ["chaos"], **brief)
    await agent_procs.ready(mesh_client)

    records = [await mesh_client.submit("chaos", f"task {i}", claim_timeout_s=30.0) for i in range(TASKS)]
    finals: dict[str, TaskRecord] = {}
    kills = 0

    async def wait_all() -> None:
        async def one(record_id: str) -> None:
            finals[record_id] = await mesh_client.wait(record_id)

        async with anyio.create_task_group() as tg:
            for r in records:
                tg.start_soon(one, r.id)

    async def chaos(scope: anyio.CancelScope) -> None:
        nonlocal kills
        while True:
            await anyio.sleep(0.4)
            victim = rng.choice(names)
            agent_procs.procs[victim].kill()
            agent_procs.procs[victim].wait(10)
            kills += 1
            await anyio.sleep(0.2)
            agent_procs.start(victim, ["chaos"], **brief)

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            tg.start_soon(chaos, tg.cancel_scope)
            await wait_all()
            tg.cancel_scope.cancel()

    assert kills >= 5, f"only {kills} kills happened: the test did not test much"
    results = [finals[r.id] for r in records]
    assert len(results) == TASKS
    assert all(is_terminal(r) for r in results)
    states = Counter(r.state for r in results)
    for r in results:
        if r.state == "failed":
            # The only acceptable failure: a task whose owner was lost max_lapses times.
            assert r.reason in REASONS and r.reason == "error" and r.lapses >= r.max_lapses, r
    assert states["done"] >= TASKS * 0.95, states

    # Nothing completed twice: at most one accepted finish per task. (An owner killed
    # between committing its result and publishing the event leaves its work item
    # unacknowledged: the agent it goes to next finds the task ended and records the
    # end as an "ended" event, a lease later.)
    finishes: Counter[str] = Counter()
    ends: Counter[str] = Counter()

    async def every_end_recorded() -> bool:
        events = await mesh_client.history(None)
        finishes.clear()
        ends.clear()
        finishes.update(e.task for e in events if e.kind == "finish")
        ends.update(e.task for e in events if e.kind in ("finish", "ended"))
        return all(ends[r.id] >= 1 for r in results if r.state == "done")

    await wait_for(every_end_recorded, timeout=20, what="an end event for every finished task")
    assert max(finishes.values()) == 1
    lapsed = sum(1 for r in results if r.lapses)
    print(f"chaos: {TASKS} tasks, {kills} SIGKILLs, {lapsed} tasks failed over, states {dict(states)}")
