"""Minimal reproductions of what the soak fuzz (bench/fuzz.py) found, one test each,
against real agent processes and a real broker."""

from __future__ import annotations

import time

import anyio
import msgspec
import pytest

from mesh.client import Mesh
from mesh.testing import AgentProcs, wait_for
from protocol import TaskRecord, decode_record, encode, new_task


async def test_a_task_whose_trace_is_not_a_traceparent_still_ends(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    agent_procs.start("worker", ["echo"], kind="echo")
    await agent_procs.ready(mesh_client)
    record = new_task(task_id="oddtrace", capability="echo", instruction="x", requester="test-client", now=time.time())
    # The decoders take any string as the trace (a peer's record, or a forged one, passes).
    record = decode_record(msgspec.json.encode(msgspec.structs.replace(record, trace="no_dashes_here")))
    announced = await mesh_client.bus.create_and_announce(record)
    await announced.wait()
    with anyio.fail_after(15):
        final = await mesh_client.wait(record)
    assert final.state in ("done", "failed")


async def test_a_forged_write_on_the_record_subject_does_not_stop_the_owner(
    agent_procs: AgentProcs, mesh_client: Mesh
) -> None:
    agent_procs.start("sleeper", ["nap"], kind="sleep", options={"seconds": 1.5, "steps": 3})
    await agent_procs.ready(mesh_client)
    record = await mesh_client.submit("nap", "sleep")

    async def working() -> TaskRecord | None:
        current = await mesh_client.get(record.id)
        return current if current.state == "working" else None

    held = await wait_for(working, what="the task to be claimed")
    # What the bucket would republish if someone took the task over (with the headers
    # of a republished write); the bucket never had it.
    forged = msgspec.structs.replace(held, owner="mallory", epoch=held.epoch + 1, attempts=held.attempts + 1)
    await mesh_client.bus.nc.publish(
        mesh_client.names.record_subject(record.id), encode(forged), headers={"Nats-Sequence": "1000000"}
    )
    with anyio.fail_after(30):
        final = await mesh_client.wait(record)
    assert final.state == "done"
    assert final.attempts == 1, "the owner stopped and the task was worked again"


async def _held_task(agent_procs: AgentProcs, mesh_client: Mesh) -> TaskRecord:
    """A real task being worked (1.5 s of sleep) by a real agent."""
    agent_procs.start("sleeper", ["nap"], kind="sleep", options={"seconds": 1.5, "steps": 3})
    await agent_procs.ready(mesh_client)
    record = await mesh_client.submit("nap", "sleep")

    async def working() -> TaskRecord | None:
        current = await mesh_client.get(record.id)
        return current if current.state == "working" else None

    held: TaskRecord = await wait_for(working, what="the task to be claimed")
    return held


async def _forge_write(mesh_client: Mesh, record: TaskRecord, revision: int) -> None:
    """Publish ``record`` on its record subject as the bucket republishes a write (a core
    message: anyone with publish rights can send one; the bucket never stores it)."""
    await mesh_client.bus.nc.publish(
        mesh_client.names.record_subject(record.id), encode(record), headers={"Nats-Sequence": str(revision)}
    )


# A republished write is taken as the bucket's (reading every end back cost x1.4 on a
# no-op task and stops no forger who can as well write the bucket): what closes this is
# the broker's permissions, which let only the server publish on the record subjects
# (mesh/auth.py; without auth anyone can, and this test fails).
@pytest.mark.auth
async def test_a_forged_end_on_the_record_subject_does_not_end_the_wait(
    agent_procs: AgentProcs, mesh_client: Mesh
) -> None:
    held = await _held_task(agent_procs, mesh_client)
    forged = msgspec.structs.replace(held, state="done", result={"forged": True}, author="mallory")
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            finals: list[TaskRecord] = []

            async def wait() -> None:
                finals.append(await mesh_client.wait(held.id))

            tg.start_soon(wait)
            await anyio.sleep(0.2)  # the wait is following the record subject
            await _forge_write(mesh_client, forged, 1_000_000)
    assert finals[0].author == "sleeper" and finals[0].result != {"forged": True}


async def test_a_forged_write_with_a_huge_revision_does_not_hide_the_real_end(
    agent_procs: AgentProcs, mesh_client: Mesh
) -> None:
    held = await _held_task(agent_procs, mesh_client)
    forged = msgspec.structs.replace(held, progress="forged")
    t0 = time.monotonic()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            finals: list[TaskRecord] = []

            async def wait() -> None:
                finals.append(await mesh_client.wait(held.id))

            tg.start_soon(wait)
            await anyio.sleep(0.2)
            await _forge_write(mesh_client, forged, 10**12)
    assert finals[0].state == "done" and finals[0].author == "sleeper"
    # the end is seen when it is written (1.5 s of work), not at the next re-read
    assert time.monotonic() - t0 < 4.0
