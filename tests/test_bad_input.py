"""Bad input on the board and the directory: agents keep running, records stay
intact, and the bad input is reported as an error event."""

from __future__ import annotations

import time

import msgspec
import nats

from mesh.client import Mesh
from mesh.testing import AgentProcs, wait_for
from protocol import decode_error, encode, new_task


async def test_garbage_and_forgeries_leave_agents_running_and_records_intact(
    agent_procs: AgentProcs, mesh_client: Mesh
) -> None:
    agent_procs.start("worker", ["echo"], kind="echo")
    await agent_procs.ready(mesh_client)
    reports = []
    sub = await mesh_client.nc.subscribe("mesh.v1.err.>", cb=None)

    kv = mesh_client.bus.tasks
    # 1. Garbage bytes, wrong types and a huge payload on offer keys.
    await kv.put("offer.echo.junk1", b"\x00\xff not json")
    await kv.put("offer.echo.junk2", b'{"task": 5, "revision": "x"}')
    await kv.put("offer.echo.junk3", b"[" * 100_000)
    # 2. A task record that violates its schema, offered as if it were real.
    bad_record = b'{"v":1,"id":"bad1","state":"working","epoch":-3}'
    await kv.put("task.bad1", bad_record)
    await kv.put("offer.echo.bad1", b'{"task":"bad1","capability":"echo","revision":1}')
    # 3. A forged owner: a record claiming "mallory" holds the task, who never renews.
    forged = new_task(
        task_id="forged1",
        capability="echo",
        instruction="mine now",
        requester="test-client",
        now=time.time(),
        lease_s=1.0,
    )
    forged = msgspec.structs.replace(forged, state="working", owner="mallory", epoch=1, attempts=1)
    await kv.create("task.forged1", encode(forged))
    await kv.put(
        "offer.echo.forged1",
        b'{"task":"forged1","capability":"echo","state":"working","revision":1,"epoch":1,"owner":"mallory","lease_s":1.0}',
    )
    # 4. Garbage on the agent's control endpoint gets a not_understood answer.
    reply = await mesh_client.nc.request("mesh.v1.ctl.worker", b"\x01garbage", timeout=5)
    assert b"not_understood" in reply.data

    # The agent is alive and working: a real task completes.
    assert (await mesh_client.run("echo", "still here")).state == "done"
    # The bad record is untouched, byte for byte.
    assert (await kv.get("task.bad1")).value == bad_record
    # The forged task is taken back from its absent "owner" when its lease lapses.
    final = await mesh_client.wait(forged)
    assert final.state == "done" and final.owner == "worker" and final.epoch == 2

    async def reported() -> bool:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.05)
            except nats.errors.TimeoutError:
                break
            reports.append(decode_error(msg.data))
        keys = {r.key for r in reports}
        return {"offer.echo.junk1", "offer.echo.junk2", "offer.echo.junk3", "task.bad1"} <= keys

    await wait_for(reported, what="error reports for every bad input")
    assert all(r.agent == "worker" and r.error for r in reports)
    assert agent_procs.procs["worker"].process.poll() is None
    status = await mesh_client.control("worker", "status")
    assert status.agent == "worker" and not status.draining
