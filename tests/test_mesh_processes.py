"""The runtime with real agent processes on a real broker (issue: runtime & CLI)."""

from __future__ import annotations

import itertools
import signal
from collections import Counter

import anyio
import pytest

from mesh.client import Mesh
from mesh.testing import AgentProcs, wait_for


async def test_task_from_one_process_is_done_by_an_agent_in_another(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    agent_procs.start("echoer", ["echo"], kind="echo", options={"prefix": "echo: "})
    await agent_procs.ready(mesh_client)
    record = await mesh_client.run("echo", "hello")
    assert record.state == "done"
    assert record.result == "echo: hello"
    assert record.owner == "echoer"
    assert record.epoch == 1 and record.attempts == 1
    assert agent_procs.procs["echoer"].process.pid != 0


async def test_two_agents_of_one_capability_share_the_load(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    for name in ("w1", "w2"):
        agent_procs.start(name, ["work"], kind="sleep", capacity=2, options={"seconds": 0.2, "steps": 2})
    await agent_procs.ready(mesh_client)
    records = [await mesh_client.submit("work", f"job {i}") for i in range(12)]
    finals = [await mesh_client.wait(r) for r in records]
    assert all(r.state == "done" for r in finals), [(r.state, r.reason) for r in finals]
    owners = Counter(r.owner for r in finals)
    assert set(owners) == {"w1", "w2"}, owners


async def test_specialist_beats_generalist_and_generalist_covers_when_alone(
    agent_procs: AgentProcs, mesh_client: Mesh
) -> None:
    agent_procs.start("general", ["summarize"], kind="echo", capacity=4)
    agent_procs.start("medic", ["summarize.medical"], kind="echo", capacity=4)
    await agent_procs.ready(mesh_client)
    special = [await mesh_client.run("summarize.medical", f"case {i}") for i in range(5)]
    assert [r.owner for r in special] == ["medic"] * 5
    plain = await mesh_client.run("summarize", "a plain text")
    assert plain.owner == "general"
    # Without the specialist, the generalist takes specialised work (longest prefix).
    agent_procs.procs["medic"].drain()
    assert agent_procs.procs["medic"].wait(20) == 0
    fallback = await mesh_client.run("summarize.medical", "case 6")
    assert fallback.state == "done" and fallback.owner == "general"


async def test_a_task_nobody_serves_fails_no_agent(mesh_client: Mesh) -> None:
    record = await mesh_client.run("nobody.serves.this", "anything", claim_timeout_s=0.5)
    assert record.state == "failed"
    assert record.reason == "no_agent"


async def test_handoff_chain_completes(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    agent_procs.start("front", ["front"], kind="relay", delegates=["middle"])
    agent_procs.start("middle", ["middle"], kind="relay", delegates=["back"])
    agent_procs.start("back", ["back"], kind="echo", options={"prefix": "back got: "})
    await agent_procs.ready(mesh_client)
    record = await mesh_client.run("front", "pass it on")
    assert record.state == "done"
    assert record.result == "back got: pass it on"
    tree = await mesh_client.tree(record.id)
    assert [(depth, r.capability, r.owner, r.state) for depth, r in tree] == [
        (0, "front", "front", "done"),
        (1, "middle", "middle", "done"),
        (2, "back", "back", "done"),
    ]
    assert [r.hops_left for _, r in tree] == [8, 7, 6]
    events = await mesh_client.history(record.root)
    assert {e.task for e in events} == {r.id for _, r in tree}


async def test_drain_under_load_loses_nothing(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    # The leaver cannot finish 20 s of work within its 0.5 s grace: it must hand back.
    # (Long enough that a slow CI machine cannot finish it before the SIGTERM arrives.)
    agent_procs.start(
        "leaver", ["job"], kind="sleep", capacity=3, drain_timeout_s=0.5, options={"seconds": 20.0, "steps": 100}
    )
    await agent_procs.ready(mesh_client)
    records = [await mesh_client.submit("job", f"job {i}") for i in range(6)]

    async def leaver_busy() -> bool:
        cards = {c.id: c for c in await mesh_client.agents()}
        return "leaver" in cards and cards["leaver"].load == 3

    await wait_for(leaver_busy, what="leaver to hold three tasks")
    agent_procs.start("stayer", ["job"], kind="sleep", capacity=6, options={"seconds": 0.3, "steps": 3})
    await agent_procs.ready(mesh_client, "stayer")
    agent_procs.procs["leaver"].process.send_signal(signal.SIGTERM)
    assert agent_procs.procs["leaver"].wait(30) == 0
    finals = [await mesh_client.wait(r) for r in records]
    assert [r.state for r in finals] == ["done"] * 6, [(r.state, r.reason, r.error) for r in finals]
    log = agent_procs.log("leaver")
    assert "handed back" in log
    # Handed-back work was redone by the stayer under a newer epoch, never twice done.
    assert all(r.owner == "stayer" or r.epoch == 1 for r in finals)
    assert "leaver" not in {c.id for c in await mesh_client.agents()}


async def test_owner_killed_its_task_moves_to_another_agent(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    # The first agent of a capability makes its queue, with its brief's lease: the time
    # the broker waits for a silent holder before it lends the work to someone else.
    agent_procs.start("doomed", ["slow"], kind="sleep", lease_s=1.0, options={"seconds": 30, "steps": 30})
    await agent_procs.ready(mesh_client)
    record = await mesh_client.submit("slow", "long job", data={"seconds": 1.0})

    async def checkpointed() -> bool:
        r = await mesh_client.get(record.id)
        return r.owner == "doomed" and isinstance(r.checkpoint, int) and r.checkpoint >= 1

    await wait_for(checkpointed, what="doomed to claim and checkpoint some progress")
    agent_procs.procs["doomed"].kill()  # SIGKILL: no drain, no hand-back
    agent_procs.start("rescuer", ["slow"], kind="sleep", options={"seconds": 0.5, "steps": 5})
    final = await mesh_client.wait(record)
    assert final.state == "done"
    assert final.owner == "rescuer"
    assert final.epoch == 2 and final.lapses == 1
    # The successor resumed from the dead owner's checkpoint, not from zero.
    assert final.result["resumed_from"] >= 1


async def test_an_owner_writes_its_record_every_third_of_its_lease(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    """The ticket a takeover names is in the record for anyone to copy, so every reader
    counts a takeover only after a whole lease without a write (PROTOCOL.md 6.5): an
    owner at work writes a heartbeat (a renew, no progress, no event) every third of
    its lease, and a task done sooner writes none."""
    agent_procs.start("steady", ["steady"], kind="sleep", lease_s=1.5, options={"seconds": 3.0, "steps": 1})
    await agent_procs.ready(mesh_client)
    record = await mesh_client.submit("steady", "a long step")
    with anyio.fail_after(30):
        final = await mesh_client.wait(record)
    assert final.state == "done" and final.item_lease_s == 1.5, final
    writes = await mesh_client.bus.archived_chain(record.id)
    beats = [w for w in writes if w.state == "working" and w.progress == "" and w.progress_at == writes[0].progress_at]
    # 3 s of work, a write every 0.5 s: the claim and some 5 heartbeats (a slow machine, fewer)
    assert len(beats) >= 4, [(w.state, w.progress, w.updated) for w in writes]
    gaps = [b.updated - a.updated for a, b in itertools.pairwise(beats)]
    assert max(gaps) < 1.5, gaps  # never a whole lease without a write
    kinds = [e.kind for e in await mesh_client.history(record.root) if e.task == record.id]
    assert "renew" not in kinds, kinds


async def test_cancel_cascades_to_descendants(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    agent_procs.start("boss", ["plan"], kind="relay", delegates=["grind"])
    agent_procs.start("grinder", ["grind"], kind="sleep", options={"seconds": 30, "steps": 30})
    await agent_procs.ready(mesh_client)
    record = await mesh_client.submit("plan", "do it slowly")

    async def child_working() -> bool:
        r = await mesh_client.get(record.id)
        return bool(r.children) and (await mesh_client.get(r.children[0])).state == "working"

    await wait_for(child_working, what="the child task to be worked on")
    cancelled = await mesh_client.cancel(record.id)
    assert cancelled.state == "cancelled" and cancelled.reason == "cancelled"
    child = await mesh_client.get(cancelled.children[0])
    assert child.state == "cancelled"

    async def grinder_idle() -> bool:
        cards = {c.id: c for c in await mesh_client.agents()}
        return cards["grinder"].load == 0

    await wait_for(grinder_idle, what="the grinder to stop working on the cancelled child")


@pytest.mark.parametrize("quorum", [1, 2])
async def test_review_quorum_of_distinct_reviewers(agent_procs: AgentProcs, mesh_client: Mesh, quorum: int) -> None:
    agent_procs.start("author", ["write"], kind="echo")
    for name in ("rev1", "rev2"):
        agent_procs.start(name, ["review"], kind="check")
    await agent_procs.ready(mesh_client)
    record = await mesh_client.run(
        "write", "the answer mentions pickle", review=quorum, criteria="must mention: pickle"
    )
    assert record.state == "done"
    approvers = {v.reviewer for v in record.votes if v.verdict == "approve"}
    assert len(approvers) >= quorum and "author" not in approvers


async def test_veto_sends_back_then_fails_rejected(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    from protocol import ReviewPolicy

    agent_procs.start("author", ["write"], kind="echo")
    agent_procs.start("strict", ["review"], kind="check")
    await agent_procs.ready(mesh_client)
    record = await mesh_client.run(
        "write",
        "an answer without the word",
        review=ReviewPolicy(quorum=1, max_reworks=1),
        criteria="must mention: pickle",
    )
    assert record.state == "failed" and record.reason == "rejected"
    assert record.reworks == 1
    assert len(record.feedback) == 2 and all("pickle" in v.reasons[0] for v in record.feedback)


async def test_agent_run_is_cancellable_and_leaves_cleanly(broker, mesh_client: Mesh) -> None:  # type: ignore[no-untyped-def]
    from mesh.agent import Agent, AgentConfig
    from mesh.briefs import Brief
    from mesh.kinds import Echo

    agent = Agent(
        AgentConfig(id="inproc", serves=("echo",)), Echo(Brief(name="inproc", serves=("echo",))), server=broker.url
    )
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            await tg.start(agent.run)
            assert (await mesh_client.run("echo", "x")).owner == "inproc"
            scope.cancel()
    assert scope.cancelled_caught
    await wait_for(lambda: agent._stopped.is_set(), what="agent stopped")

    async def gone() -> bool:
        return "inproc" not in {c.id for c in await mesh_client.agents()}

    await wait_for(gone, what="card removed on leave")


async def test_a_signal_while_joining_stops_the_agent_cleanly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM before the agent has joined (here: a 'broker' that accepts the TCP
    connection and never speaks) ends the process at once with exit 0 and a log line,
    not with Python's default handler (exit 143, or a KeyboardInterrupt traceback)."""
    import subprocess
    import sys

    accepted = anyio.Event()

    async def silent(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            accepted.set()
            await anyio.sleep_forever()

    brief = tmp_path / "echo.toml"
    brief.write_text('name = "joiner"\nrole = "echo"\nkind = "echo"\nserves = ["echo"]\n')
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    cmd = [sys.executable, "-m", "mesh", "agent", "run", str(brief), "--server", f"nats://127.0.0.1:{port}"]
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, silent)
        async with await anyio.open_process(cmd, stderr=subprocess.STDOUT) as proc:
            with anyio.fail_after(20):
                await accepted.wait()  # the agent is connecting: it has not joined
                proc.send_signal(signal.SIGTERM)
                assert proc.stdout is not None
                out = b"".join([chunk async for chunk in proc.stdout])
                await proc.wait()
        tg.cancel_scope.cancel()
    assert proc.returncode == 0, out.decode()
    assert "signal received while joining; leaving" in out.decode()
