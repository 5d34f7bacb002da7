"""Each MAST failure mode the protocol addresses, injected with a misbehaving agent
(mesh/faults.py) in a real process; the protocol's rule fires and the task still ends
correctly, or with the right reason. The table is docs/FAILURE-MODES.md."""

from __future__ import annotations

import time

from mesh.client import Mesh
from mesh.testing import AgentProcs
from protocol import Claim, Finish, ReviewPolicy, TaskRecord, approvals, new_task


async def test_fm_1_1_and_2_3_off_spec_result_is_vetoed_and_reworked(
    agent_procs: AgentProcs, mesh_client: Mesh
) -> None:
    agent_procs.start("author", ["answer"], kind="mesh.faults:Sloppy")
    agent_procs.start("checker", ["review"], kind="check")
    await agent_procs.ready(mesh_client)
    record = await mesh_client.run(
        "answer",
        "Name the serialization module.",
        review=1,
        criteria="must mention: pickle",
        data={"wrong": "json, probably", "right": "pickle"},
    )
    assert record.state == "done" and record.result == "pickle"
    assert record.reworks == 1 and record.feedback[0].verdict == "veto"
    assert "pickle" in record.feedback[0].reasons[0]


async def test_fm_1_2_delegating_outside_the_brief_is_refused(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    agent_procs.start(
        "rogue", ["task"], kind="mesh.faults:Overreacher", delegates=["allowed"], options={"target": "secrets"}
    )
    await agent_procs.ready(mesh_client)
    record = await mesh_client.run("task", "go get the secrets")
    assert record.state == "failed" and record.reason == "error"
    assert "role violation" in record.error and "secrets" in record.error
    assert record.children == ()  # nothing was delegated


async def test_fm_1_3_step_repetition_is_refused_as_a_loop(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    agent_procs.start("looper", ["spin"], kind="mesh.faults:SelfDelegator", delegates=["spin"])
    await agent_procs.ready(mesh_client)
    record = await mesh_client.run("spin", "do the same thing again")
    tree = await mesh_client.tree(record.id)
    child = tree[1][1]
    assert child.state == "failed" and child.reason == "loop"
    assert len(tree) == 2  # the loop was cut at the first repetition
    assert record.state == "done" and "loop" in str(record.result)


async def test_fm_1_5_a_task_that_never_finishes_ends_at_its_deadline(
    agent_procs: AgentProcs, mesh_client: Mesh
) -> None:
    agent_procs.start("staller", ["forever"], kind="mesh.faults:Staller", lease_s=0.6)
    await agent_procs.ready(mesh_client)
    started = time.monotonic()
    record = await mesh_client.run("forever", "never ends", deadline_s=2.0)
    assert record.state == "failed" and record.reason == "deadline"
    assert time.monotonic() - started < 6


async def test_fm_1_5_hop_limit_ends_a_chain(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    agent_procs.start("a", ["a"], kind="relay", delegates=["b"])
    agent_procs.start("b", ["b"], kind="relay", delegates=["c"])
    agent_procs.start("c", ["c"], kind="echo")
    await agent_procs.ready(mesh_client)
    record = await mesh_client.run("a", "deep", hops=1)
    tree = await mesh_client.tree(record.id)
    assert [r.state for _, r in tree] == ["failed", "failed", "failed"]
    assert tree[2][1].reason == "hop_limit"


async def test_fm_2_1_a_stale_owner_cannot_commit_after_takeover(mesh_client: Mesh) -> None:
    import pytest

    from mesh.bus import Conflict
    from protocol import Fenced

    bus = mesh_client.bus
    record = new_task(task_id="stale1", capability="x", instruction="i", requester="test-client", now=time.time())
    # "old" claims holding work item 5 (a first claim creates the key).
    held, held_rev = await bus.write(record, 0, Claim(actor="old", ticket=5))
    # Nobody may take a held task over without its item...
    with pytest.raises(Fenced):
        await bus.write(held, held_rev, Claim(actor="thief", ticket=6))
    # ... but "old" is partitioned, its lease on item 5 lapses, the broker lends item 5
    # to "new", and "new" takes the task over with a higher epoch.
    taken, rev = await bus.write(held, held_rev, Claim(actor="new", ticket=5))
    assert taken.epoch == 2 and taken.lapses == 1 and taken.owner == "new"
    # The old owner comes back and tries to commit its result: refused by CAS and epoch.
    with pytest.raises(Conflict):
        await bus.write(held, held_rev, Finish(actor="old", epoch=1, result="late"))
    with pytest.raises(Fenced):
        await bus.write(taken, rev, Finish(actor="old", epoch=1, result="late"))
    done, _ = await bus.write(taken, rev, Finish(actor="new", epoch=2, result="on time"))
    assert done.result == "on time" and done.author == "new"


async def test_fm_2_2_an_agent_asks_its_requester_instead_of_guessing(
    agent_procs: AgentProcs, mesh_client: Mesh
) -> None:
    agent_procs.start("asker", ["ambiguous"], kind="mesh.faults:Asker", options={"question": "Which Python version?"})
    await agent_procs.ready(mesh_client)
    asked: list[TaskRecord] = []

    async def answer(question: TaskRecord) -> str:
        asked.append(question)
        return "3.11"

    record = await mesh_client.wait(await mesh_client.submit("ambiguous", "install it"), on_question=answer)
    assert record.state == "done" and record.result == "install it -> using your answer: 3.11"
    assert asked[0].instruction == "Which Python version?"
    assert asked[0].capability == "agent.test-client" and asked[0].parent == record.id


async def test_fm_2_5_feedback_ignored_escalates_to_a_person(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    agent_procs.start("stubborn", ["answer"], kind="mesh.faults:AlwaysWrong")
    agent_procs.start("checker", ["review"], kind="check")
    await agent_procs.ready(mesh_client)
    policy = ReviewPolicy(quorum=1, max_reworks=1, escalate_to="human.review")
    task = await mesh_client.submit("answer", "Name the module.", review=policy, criteria="must mention: pickle")

    async def escalated() -> list[TaskRecord]:
        return await mesh_client.offered("human")

    from mesh.testing import wait_for

    waiting = await wait_for(escalated, what="the task to reach the human inbox")
    assert waiting[0].id == task.id and len(waiting[0].feedback) == 2
    person = await Mesh.connect(_url(mesh_client), client_id="human-ann")
    try:
        done = await person.take_and_finish(task.id, "pickle")
    finally:
        await person.close()
    final = await mesh_client.wait(task)
    assert final.state == "done" and final.result == "pickle" and final.author == "human-ann" and done.state == "done"


def _url(mesh: Mesh) -> str:
    url = mesh.bus.nc.connected_url
    assert url is not None
    return f"nats://{url.hostname}:{url.port}"


async def test_fm_3_3_a_rubber_stamp_cannot_pass_a_wrong_answer_alone(
    agent_procs: AgentProcs, mesh_client: Mesh
) -> None:
    agent_procs.start("wrong", ["answer"], kind="mesh.faults:AlwaysWrong")
    agent_procs.start("stamp", ["review"], kind="mesh.faults:RubberStamp")
    agent_procs.start("checker", ["review"], kind="check")
    await agent_procs.ready(mesh_client)
    record = await mesh_client.run(
        "answer", "Name the module.", review=ReviewPolicy(quorum=2, max_reworks=1), criteria="must mention: pickle"
    )
    # Quorum 2 needs the honest checker too: it vetoes every round.
    assert record.state == "failed" and record.reason == "rejected"
    assert all(v.reviewer == "checker" for v in record.feedback)


async def test_fm_3_1_and_3_2_no_done_without_quorum_of_non_authors(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    # The author also serves `review`: it must never count as a reviewer of its own result.
    agent_procs.start("selfish", ["answer", "review"], kind="mesh.faults:RubberStamp")
    agent_procs.start("other", ["review"], kind="mesh.faults:RubberStamp")
    await agent_procs.ready(mesh_client)
    for _ in range(3):
        record = await mesh_client.run("answer", "anything", review=1)
        assert record.state == "done"
        assert record.author not in approvals(record) and len(approvals(record)) >= 1
        assert record.author not in {v.reviewer for v in record.votes}


async def test_a_slow_reviewer_is_not_mistaken_for_no_reviewer(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    agent_procs.start("author", ["answer"], kind="echo")
    agent_procs.start("slow", ["review"], kind="mesh.faults:SlowReviewer", options={"seconds": 2.5})
    await agent_procs.ready(mesh_client)
    record = await mesh_client.run("answer", "take your time", review=1, claim_timeout_s=1.0)
    assert record.state == "done", (record.state, record.reason, record.error)
    assert [v.reviewer for v in record.votes] == ["slow"]


async def test_fm_2_2_questions_travel_up_a_chain_of_plain_agents(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    agent_procs.start("front", ["front"], kind="relay", delegates=["ambiguous"])
    agent_procs.start("asker", ["ambiguous"], kind="mesh.faults:Asker", options={"question": "Which region?"})
    await agent_procs.ready(mesh_client)
    asked: list[TaskRecord] = []

    async def answer(question: TaskRecord) -> str:
        asked.append(question)
        return "eu-west"

    record = await mesh_client.wait(await mesh_client.submit("front", "deploy it"), on_question=answer)
    assert record.state == "done" and record.result == "deploy it -> using your answer: eu-west"
    # The relay, which cannot answer, passed the question up to the client.
    assert [q.instruction for q in asked] == ["Which region?"] and asked[0].requester == "front"
