"""Sustained load through one agent process: every task done (a regression test for an
agent that stopped claiming when late queue-group nudges revived stale offers)."""

from __future__ import annotations

from collections import Counter

import anyio

from mesh.client import Mesh
from mesh.testing import AgentProcs


async def test_hundreds_of_tasks_with_64_in_flight_all_complete(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    agent_procs.start("busy", ["noop"], kind="echo", capacity=64)
    agent_procs.start("spare", ["noop"], kind="echo", capacity=64)
    await agent_procs.ready(mesh_client)
    states: Counter[str] = Counter()
    limit = anyio.Semaphore(64)

    async def one(i: int) -> None:
        async with limit:
            record = await mesh_client.run("noop", f"task {i}", claim_timeout_s=5.0)
            states[record.state] += 1

    with anyio.fail_after(90):
        async with anyio.create_task_group() as tg:
            for i in range(500):
                tg.start_soon(one, i)
    assert states == {"done": 500}
