"""Bad input on the queues, the tasks bucket and the control endpoint: agents keep
running, records stay intact, and the bad input is reported as an error event."""

from __future__ import annotations

import sys
import time

import anyio
import msgspec
import nats

from mesh.client import Mesh
from mesh.testing import AgentProcs, wait_for
from protocol import WorkItem, decode_error, encode, new_task


async def test_garbage_and_forgeries_leave_agents_running_and_records_intact(
    agent_procs: AgentProcs, mesh_client: Mesh
) -> None:
    agent_procs.start("worker", ["echo"], kind="echo")
    await agent_procs.ready(mesh_client)
    reports = []
    sub = await mesh_client.nc.subscribe("mesh.v2.err.>", cb=None)
    js = mesh_client.bus.js
    queue = "mesh.v2.work.echo"

    # 1. Garbage bytes, wrong types and a huge payload as work items on a queue.
    await js.publish(queue, b"\x00\xff not json")
    await js.publish(queue, b'{"task": 5, "revision": "x"}')
    await js.publish(queue, b"[" * 100_000)
    # 2. A record in the bucket that violates its schema, and a well-formed item for it
    #    (whose copy of the record is stale: the agent's compare-and-set fails, it reads
    #    the bucket, and must refuse what it finds there).
    bad_record = b'{"v":2,"id":"bad1","state":"working","epoch":-3}'
    kv = mesh_client.bus.tasks
    await kv.put("task.bad1", bad_record)
    looks_fine = new_task(task_id="bad1", capability="echo", instruction="x", requester="test-client", now=time.time())
    await js.publish(queue, encode(WorkItem(task="bad1", capability="echo", revision=99, record=looks_fine)))
    # 3. A forged owner: a record claiming "mallory" holds the task without a work item.
    forged = new_task(
        task_id="forged1",
        capability="echo",
        instruction="mine now",
        requester="test-client",
        now=time.time(),
        claim_timeout_s=1.0,
    )
    forged = msgspec.structs.replace(forged, state="working", owner="mallory", epoch=1, attempts=1)
    await kv.create("task.forged1", encode(forged))
    # 4. Garbage on the agent's control endpoint gets a not_understood answer.
    reply = await mesh_client.nc.request("mesh.v2.ctl.worker", b"\x01garbage", timeout=5)
    assert b"not_understood" in reply.data

    # The agent is alive and working: a real task completes.
    assert (await mesh_client.run("echo", "still here")).state == "done"
    # The bad record is untouched, byte for byte, and the CLI says what it is.
    assert (await kv.get("task.bad1")).value == bad_record
    trace = await anyio.run_process(
        [sys.executable, "-m", "mesh", "trace", "bad1", "--server", agent_procs.broker.url], check=False
    )
    stderr = trace.stderr.decode()
    assert trace.returncode == 2 and "not valid protocol" in stderr and "Traceback" not in stderr
    # The forged hold ends: an owner without a work item must show life by writing,
    # and "mallory" never does, so the waiting party ends it no_agent.
    final = await mesh_client.wait(forged)
    assert final.state == "failed" and final.reason == "no_agent" and "mallory" in final.error

    async def reported() -> bool:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.05)
            except nats.errors.TimeoutError:
                break
            reports.append(decode_error(msg.data))
        bad_items = [r for r in reports if r.subject == queue and "bad work item" in r.error]
        return len(bad_items) >= 3 and "task.bad1" in {r.key for r in reports}

    await wait_for(reported, what="error reports for every bad input")
    assert all(r.agent == "worker" and r.error for r in reports)
    assert agent_procs.procs["worker"].process.poll() is None
    status = await mesh_client.control("worker", "status")
    assert status.agent == "worker" and not status.draining
    # Refused items left the queue for good (terminated), not redelivered forever.
    info = await mesh_client.bus.queue_info("echo")
    assert info is not None and info.pending == 0 and info.held == 0


async def test_a_second_live_agent_under_one_id_is_refused(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    agent_procs.start("twin", ["echo"], kind="echo")
    await agent_procs.ready(mesh_client)
    [card] = await mesh_client.agents()
    second = agent_procs.start("twin-again", ["echo"], agent_id="twin-2", kind="echo")
    second.process.kill()  # only its brief file is needed: run it again under the live id
    proc = await anyio.run_process(
        [
            sys.executable,
            "-m",
            "mesh",
            "agent",
            "run",
            str(agent_procs.directory / "twin-again.toml"),
            "--id",
            "twin",
            "--server",
            agent_procs.broker.url,
        ],
        check=False,
    )
    stderr = proc.stderr.decode()
    assert proc.returncode == 2 and "agent id 'twin' is in use by a live agent" in stderr, stderr
    assert "Traceback" not in stderr
    # The first one is untouched: its card (the refused process must not remove it)
    # and its work.
    assert [c.pid for c in await mesh_client.agents()] == [card.pid]
    assert (await mesh_client.run("echo", "still me")).owner == "twin"


async def test_a_flood_of_bad_input_is_reported_at_a_bounded_rate(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    agent_procs.start("target", ["echo"], kind="echo")
    await agent_procs.ready(mesh_client)
    reports = []
    sub = await mesh_client.nc.subscribe("mesh.v2.err.target", cb=None)
    for i in range(500):
        await mesh_client.nc.publish("mesh.v2.work.echo", b"\x00not json %d" % i)
    await mesh_client.nc.flush()
    # (Core publishes: the stream stores them, the agent refuses each one.) Wait until
    # the queue is empty, then count what was reported.

    async def all_refused() -> bool:
        info = await mesh_client.bus.queue_info("echo")
        return info is not None and info.pending == 0 and info.held == 0

    await wait_for(all_refused, timeout=30, what="the agent to refuse every bad item")
    assert (await mesh_client.run("echo", "fine")).state == "done"
    # The budget refills with time (10 reports a second): the next bad item, a moment
    # later, is reported, with how many were held back.
    await anyio.sleep(0.3)
    await mesh_client.nc.publish("mesh.v2.work.echo", b"\x00 one more")
    while True:
        try:
            reports.append(decode_error((await sub.next_msg(timeout=1.0)).data))
        except nats.errors.TimeoutError:
            break
    assert 20 <= len(reports) < 100, len(reports)  # a burst of 20, then 10 a second: not 501
    assert "more reports held back since the last one" in reports[-1].error, reports[-1].error
