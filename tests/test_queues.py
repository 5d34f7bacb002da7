"""Allocation by queues (issue: constant broker cost, no idle agent while work waits).
Real broker, real agent processes: agents pull work only while they have room, a
newcomer takes waiting work at once, queued work is not mistaken for work nobody can
do, finished records leave the live bucket but stay readable, and the broker's
consumers stay bounded however agents come and go."""

from __future__ import annotations

import signal

import anyio

from mesh.broker import Broker
from mesh.bus import NotFound
from mesh.client import Mesh
from mesh.testing import AgentProcs, gone_from_the_bucket, wait_for


async def test_a_newcomer_takes_waiting_work_at_once(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    agent_procs.start("busy", ["slow"], kind="sleep", capacity=1, options={"seconds": 30, "steps": 30})
    await agent_procs.ready(mesh_client)
    records = [await mesh_client.submit("slow", f"job {i}", claim_timeout_s=60) for i in range(3)]

    async def busy_holds_one() -> bool:
        cards = {c.id: c for c in await mesh_client.agents()}
        return cards["busy"].load == 1

    await wait_for(busy_holds_one, what="the first agent to hold one task")
    # Two tasks wait in the queue; a busy agent is never sent any, and a free one
    # joining gets them without waiting for any timer.
    agent_procs.start("fresh", ["slow"], kind="sleep", capacity=2, options={"seconds": 0.1})
    await agent_procs.ready(mesh_client, "fresh")
    finals = []
    with anyio.fail_after(10):
        for r in records:
            final = await mesh_client.wait(r) if r is not records[0] else None
            if final is not None:
                finals.append(final)
    assert [f.owner for f in finals] == ["fresh", "fresh"] and all(f.state == "done" for f in finals)
    await mesh_client.cancel(records[0].id)


async def test_queued_work_waits_for_busy_agents_instead_of_failing_no_agent(
    agent_procs: AgentProcs, mesh_client: Mesh
) -> None:
    agent_procs.start("only", ["slow"], kind="sleep", capacity=1, options={"seconds": 0.8, "steps": 2})
    await agent_procs.ready(mesh_client)
    # Each task waits longer than its claim timeout, behind the others: a queue with an
    # agent at work on it is busy, not empty.
    records = [await mesh_client.submit("slow", f"job {i}", claim_timeout_s=0.5) for i in range(3)]
    finals = [await mesh_client.wait(r) for r in records]
    assert [(f.state, f.owner) for f in finals] == [("done", "only")] * 3


async def test_an_agent_never_holds_more_than_its_capacity(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    agent_procs.start("a", ["job", "other"], kind="sleep", capacity=2, options={"seconds": 0.3})
    agent_procs.start("b", ["job"], kind="sleep", capacity=3, options={"seconds": 0.3})
    await agent_procs.ready(mesh_client)
    loads: list[int] = []

    async def watch_cards() -> None:
        while True:
            for card in await mesh_client.agents():
                loads.append(card.load - card.capacity)
            await anyio.sleep(0.05)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_cards)
        records = [await mesh_client.submit("job" if i % 3 else "other", f"t{i}") for i in range(24)]
        finals = [await mesh_client.wait(r) for r in records]
        tg.cancel_scope.cancel()
    assert all(f.state == "done" for f in finals)
    assert loads and max(loads) <= 0


async def test_finished_records_leave_the_live_bucket_and_stay_readable(
    agent_procs: AgentProcs, mesh_client: Mesh
) -> None:
    agent_procs.start("echoer", ["echo"], kind="echo", env={"MESH_FINISHED_TTL": "1s"})
    await agent_procs.ready(mesh_client)
    done = await mesh_client.run("echo", "keep me")
    live, _ = await mesh_client.bus.read(done.id)
    assert live == done

    await wait_for(
        lambda: gone_from_the_bucket(mesh_client, done.id),
        timeout=20,
        what="the finished record to expire from the live bucket",
    )
    # The events history keeps it: a terminal event carries the final record.
    assert await mesh_client.get(done.id) == done
    history = await mesh_client.history(done.id)
    # A quick task is claimed and finished in one write: one event, naming both.
    assert [e.kind for e in history] == ["created", "finish"] and history[-1].note == "claim + finish in one write"
    try:
        await mesh_client.get("neverexisted")
    except NotFound as exc:
        assert "not in the events history" in str(exc)
    else:
        raise AssertionError("an unknown task was found")


async def test_consumers_stay_bounded_as_agents_join_die_and_leave(
    broker: Broker, agent_procs: AgentProcs, mesh_client: Mesh
) -> None:
    names = mesh_client.names
    js = mesh_client.bus.js

    async def consumers() -> dict[str, int]:
        streams = (names.work_stream, f"KV_{names.tasks_bucket}", names.events_stream)
        return {s: (await js.stream_info(s)).state.consumer_count for s in streams}

    for round_ in range(3):
        ids = [f"w{round_}{i}" for i in range(3)]
        for i, agent_id in enumerate(ids):
            agent_procs.start(agent_id, ["job", f"kind{i}"], kind="sleep", options={"seconds": 0.05})
        await agent_procs.ready(mesh_client, *ids)
        records = [await mesh_client.submit("job" if n % 2 else f"kind{n % 3}", f"r{round_}-{n}") for n in range(12)]
        finals = [await mesh_client.wait(r) for r in records]
        assert all(f.state == "done" for f in finals), [(f.state, f.reason) for f in finals]
        await mesh_client.history(records[0].id)  # reading the trace makes a consumer for the read only
        # One agent dies, one drains, one stays for the next round.
        agent_procs.procs[f"w{round_}0"].kill()
        agent_procs.procs[f"w{round_}1"].process.send_signal(signal.SIGTERM)
        assert agent_procs.procs[f"w{round_}1"].wait(20) == 0
    counts = await consumers()
    # One queue per capability ever used (job, kind0..kind2), none per task or agent;
    # nothing watches the tasks bucket; the trace reader's consumer is gone.
    assert counts == {names.work_stream: 4, f"KV_{names.tasks_bucket}": 0, names.events_stream: 0}, counts


async def test_a_review_only_its_author_could_do_fails_no_agent(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    # The author serves the reviewer capability too: it keeps handing its own review
    # back, which is not a reviewer at work, so the waiting party gives up in time.
    agent_procs.start("selfish", ["answer", "review"], kind="mesh.faults:RubberStamp")
    await agent_procs.ready(mesh_client)
    with anyio.fail_after(20):
        record = await mesh_client.run("answer", "grade yourself", review=1, claim_timeout_s=1.0)
    assert record.state == "failed" and record.reason == "no_agent"
    assert record.votes == () and record.author == "selfish"
