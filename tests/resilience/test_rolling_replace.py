"""Replacing every agent of an organization one at a time, under load, loses nothing."""

from __future__ import annotations

from collections import Counter

import anyio

from mesh.client import Mesh
from mesh.testing import AgentProcs
from protocol import TaskRecord


async def test_rolling_replacement_under_load_loses_nothing(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    brief = {
        "kind": "sleep",
        "capacity": 4,
        "drain_timeout_s": 5.0,
        "lease_s": 2.0,
        "options": {"seconds": 0.3, "steps": 3},
    }
    generation = {name: f"{name}-v1" for name in ("r1", "r2", "r3")}
    for agent_id in generation.values():
        agent_procs.start(agent_id, ["job"], **brief)
    await agent_procs.ready(mesh_client)

    finals: dict[str, TaskRecord] = {}
    submitted: list[str] = []

    async def load() -> None:
        async def one(i: int) -> None:
            record = await mesh_client.submit("job", f"job {i}", claim_timeout_s=30)
            submitted.append(record.id)
            finals[record.id] = await mesh_client.wait(record)

        async with anyio.create_task_group() as tg:
            for i in range(90):
                tg.start_soon(one, i)
                await anyio.sleep(0.03)

    async def replace_all() -> None:
        for name, old in list(generation.items()):
            new = f"{name}-v2"
            agent_procs.start(new, ["job"], **brief)
            await agent_procs.ready(mesh_client, new)
            agent_procs.procs[old].drain()  # SIGTERM: finish or hand back, then leave
            assert await anyio.to_thread.run_sync(agent_procs.procs[old].wait, 30) == 0
            generation[name] = new

    with anyio.fail_after(90):
        async with anyio.create_task_group() as tg:
            tg.start_soon(replace_all)
            await load()

    assert len(finals) == 90
    assert Counter(r.state for r in finals.values()) == {"done": 90}
    assert {c.id for c in await mesh_client.agents()} == {"r1-v2", "r2-v2", "r3-v2"}
    events = await mesh_client.history(None)
    finishes = Counter(e.task for e in events if e.kind == "finish")
    assert all(finishes[task_id] == 1 for task_id in submitted)
    assert any(r.owner and r.owner.endswith("-v1") for r in finals.values())
    assert any(r.owner and r.owner.endswith("-v2") for r in finals.values())
