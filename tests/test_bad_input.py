"""Bad input on the queues, the tasks bucket and the control endpoint: agents keep
running, records stay intact, and the bad input is reported as an error event."""

from __future__ import annotations

import contextlib
import sys
import time

import anyio
import msgspec
import nats
import pytest
from raw_writes import put_raw

from mesh import CorruptRecord, Settings
from mesh.client import Mesh
from mesh.process import spawn_agent
from mesh.testing import AgentProcs, wait_for, write_brief
from mesh.top import take_snapshot
from protocol import (
    Claim,
    Finish,
    RemoteProtocolError,
    TaskRecord,
    WorkItem,
    apply,
    decode_error,
    decode_work_item,
    encode,
    new_task,
)


async def test_garbage_and_forgeries_leave_agents_running_and_records_intact(
    agent_procs: AgentProcs, mesh_client: Mesh
) -> None:
    agent_procs.start("worker", ["echo"], kind="echo")
    await agent_procs.ready(mesh_client)
    reports = []
    sub = await mesh_client.bus.nc.subscribe("mesh.v2.err.>", cb=None)
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
    await put_raw(mesh_client, "task.bad1", bad_record)
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
    reply = await mesh_client.bus.nc.request("mesh.v2.ctl.worker", b"\x01garbage", timeout=5)
    assert b"not_understood" in reply.data

    # 5. An unreadable record that no work item or party refers to.
    await put_raw(mesh_client, "task.bad2", bad_record)

    # The agent is alive and working: a real task completes.
    assert (await mesh_client.run("echo", "still here")).state == "done"

    # The unreadable record with a work item was ended by the agent that held the item,
    # from the item's own copy of the task: nothing of the bad record was trusted.
    async def ended() -> TaskRecord | None:
        with contextlib.suppress(RemoteProtocolError):
            record = await mesh_client.get("bad1")
            return record if record.state == "failed" else None
        return None

    repaired = await wait_for(ended, what="the unreadable record to be ended")
    assert repaired.reason == "error" and "unreadable" in repaired.error
    # (with identities its writer names itself, so a reader checking the end alone finds its key)
    assert repaired.owner == ("worker" if mesh_client.bus.trust.signed else None)
    # The other one is left as it is (no party, no copy), and the CLI says what it is.
    assert (await kv.get("task.bad2")).value == bad_record
    with pytest.raises(CorruptRecord, match="bad2"):
        await mesh_client.wait("bad2")
    assert (await take_snapshot(mesh_client)).unreadable == ["task.bad2"]  # shown, not dropped
    trace = await anyio.run_process(
        [sys.executable, "-m", "mesh", "trace", "bad2", "--server", agent_procs.broker.url], check=False
    )
    stderr = trace.stderr.decode()
    assert trace.returncode == 2 and "not valid protocol" in stderr and "Traceback" not in stderr
    # The forged hold ends: an owner without a work item must show life by writing,
    # and "mallory" never does, so the waiting party ends it no_agent.
    final = await mesh_client.wait(forged)
    if mesh_client.bus.trust.signed:
        # With identities the raw write is unsigned: a forgery, never acted on; the
        # requester holds no valid revision of it, so it ends the task (PROTOCOL.md 6.23).
        assert final.state == "failed" and final.reason == "error" and "forged write" in final.error, final
    else:
        assert final.state == "failed" and final.reason == "no_agent" and "mallory" in final.error

    async def reported() -> bool:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.05)
            except nats.errors.TimeoutError:
                break
            reports.append(decode_error(msg.data))
        bad_items = [r for r in reports if r.subject == queue and "bad work item" in r.error]
        return len(bad_items) >= 3 and {"task.bad1", "task.bad2"} <= {r.key for r in reports}

    await wait_for(reported, what="error reports for every bad input")
    # The agent reported what it met; this client reported the record it could not wait on.
    assert all(r.agent in ("worker", "test-client") and r.error for r in reports)
    assert {r.agent for r in reports if r.key == "task.bad2"} == {"test-client"}
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


async def test_one_brief_run_twice_by_hand_makes_two_agents(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    brief = write_brief(agent_procs.directory, "copier", ["echo"], kind="echo")
    procs = [spawn_agent(brief, server=agent_procs.broker.url) for _ in range(2)]
    try:

        async def both() -> list[str]:
            ids = sorted(c.id for c in await mesh_client.agents())
            return ids if len(ids) == 2 else []

        ids = await wait_for(both, what="two agents from one brief")
        assert all(i.startswith("copier-") for i in ids) and ids[0] != ids[1]
    finally:
        for p in procs:
            p.process.terminate()
        for p in procs:
            p.process.wait(timeout=15)


async def test_a_flood_of_bad_input_is_reported_at_a_bounded_rate(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    agent_procs.start("target", ["echo"], kind="echo")
    await agent_procs.ready(mesh_client)
    reports = []
    sub = await mesh_client.bus.nc.subscribe("mesh.v2.err.target", cb=None)
    for i in range(500):
        await mesh_client.bus.nc.publish("mesh.v2.work.echo", b"\x00not json %d" % i)
    await mesh_client.bus.nc.flush()
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
    await mesh_client.bus.nc.publish("mesh.v2.work.echo", b"\x00 one more")
    while True:
        try:
            reports.append(decode_error((await sub.next_msg(timeout=1.0)).data))
        except nats.errors.TimeoutError:
            break
    assert 20 <= len(reports) < 100, len(reports)  # a burst of 20, then 10 a second: not 501
    # A report made after some were held back says how many: the last one, unless the
    # budget refilled while the flood was still being refused (a slow run) and an
    # earlier one said it.
    told = [r.error for r in reports if "more reports held back since the last one" in r.error]
    assert told, [r.error for r in reports[-3:]]

    # Every refusal is counted, reported or not: the agent's card shows them.
    async def counted() -> bool:
        return any(c.id == "target" and c.refused >= 501 for c in await mesh_client.agents())

    await wait_for(counted, what="the card to count every refused item")


async def test_a_record_corrupted_under_its_owner_ends_the_task_and_the_wait(
    agent_procs: AgentProcs, mesh_client: Mesh
) -> None:
    agent_procs.start("slowpoke", ["slow"], kind="sleep", options={"seconds": 30, "steps": 30})
    await agent_procs.ready(mesh_client)
    record = await mesh_client.submit("slow", "take your time")

    async def claimed() -> bool:
        with contextlib.suppress(Exception):
            return (await mesh_client.get(record.id)).state == "working"
        return False

    await wait_for(claimed, what="the task to be claimed")
    await put_raw(mesh_client, f"task.{record.id}", b'{"v":2,"id":"x","epoch":-1}')
    with anyio.fail_after(20):
        final = await mesh_client.wait(record)
    # Whoever met it first (the owner's next progress write, or this waiting party)
    # ended it from its own copy; the waiting party sees an end, not a decoder error.
    assert final.state == "failed" and final.reason == "error" and "unreadable" in final.error
    assert agent_procs.procs["slowpoke"].process.poll() is None
    trail = [e.kind for e in await mesh_client.history(record.id)]
    assert trail[0] == "created" and trail[-1] == "ended", trail


async def _take_an_item_and_go_silent(ghost: Mesh, capability: str, *, finish: bool) -> str:
    """Play an agent that pulls a work item, writes its claim (and result) and dies
    before its event goes out: returns the task's id."""
    inbox = ghost.bus.nc.new_inbox()
    sub = await ghost.bus.nc.subscribe(inbox)
    request = {"batch": 1, "expires": 5_000_000_000, "group": "mesh", "priority": 0}
    await ghost.bus.nc.publish(
        f"$JS.API.CONSUMER.MSG.NEXT.mesh-v2-work.{capability}", msgspec.json.encode(request), reply=inbox
    )
    msg = await sub.next_msg(timeout=10)
    item = decode_work_item(msg.data)
    events: list[Claim | Finish] = [Claim(actor="ghost", ticket=msg.metadata.sequence.stream)]
    if finish:
        events.append(Finish(actor="ghost", epoch=1, result="the ghost's result"))
    record = item.record
    for event in events:
        record = apply(record, event, time.time())
    record = ghost.bus.trust.stamp(item.record, record)  # its key as owner (and author), with identities
    await ghost.bus._compare_and_set(f"task.{item.task}", encode(record), 0, finished=finish, record=record)
    await ghost.bus.nc.close()  # no event, no acknowledgement: gone
    return item.task


@pytest.mark.parametrize("finish", [False, True], ids=["died-after-claim", "died-after-finish"])
async def test_a_writer_that_dies_after_its_write_leaves_no_hole_in_the_trail(
    agent_procs: AgentProcs, mesh_client: Mesh, finish: bool
) -> None:
    ghost = await Mesh.connect(agent_procs.broker.url, client_id="ghost", settings=Settings(lease_s=1.0))
    await ghost.bus.ensure_queue("dying")  # the queue's lease: 1 s
    submitted = await mesh_client.submit("dying", "work")
    assert await _take_an_item_and_go_silent(ghost, "dying", finish=finish) == submitted.id
    # A real agent gets the silent writer's item a lease later, and records the write
    # the trail lacks before it takes the task over (or drops the item of an ended one).
    agent_procs.start("heir", ["dying"], kind="echo")
    with anyio.fail_after(30):
        final = await mesh_client.wait(submitted)
    assert final.state == "done"
    kinds: list[str] = []

    async def recorded() -> bool:
        kinds[:] = [e.kind for e in await mesh_client.history(submitted.id)]
        return len(kinds) >= 2 and kinds[-1] in ("finish", "ended")

    await wait_for(recorded, what="the trail to show the end")
    trail = await mesh_client.history(submitted.id)
    if finish:
        assert final.result == "the ghost's result"
        assert kinds == ["created", "ended"], kinds
        assert trail[-1].actor == "ghost" and trail[-1].record == final and "heir" in trail[-1].note
    else:
        assert final.author == "heir" and final.lapses == 1
        assert kinds[:2] == ["created", "recovered"] and kinds[-1] == "finish", kinds
        assert trail[1].actor == "ghost" and trail[1].state == "working" and trail[1].epoch == 1
