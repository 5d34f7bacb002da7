"""The last round with real agent processes on a real broker (``ReviewPolicy.reject_quorum``):
a right answer survives a reviewer that vetoes everything (``mesh.faults:Naysayer``);
``reject_quorum`` distinct vetoes still reject; and one reviewer cannot veto twice, so a
lone naysayer's veto stands only when no other reviewer comes."""

from __future__ import annotations

from mesh.client import Mesh
from mesh.testing import AgentProcs, wait_for
from protocol import ReviewPolicy, vetoes

LAST_ROUND = ReviewPolicy(quorum=1, max_reworks=0, reject_quorum=2)


async def test_a_right_answer_survives_one_naysayer_in_the_last_round(
    agent_procs: AgentProcs, mesh_client: Mesh
) -> None:
    agent_procs.start("author", ["write"], kind="echo")
    agent_procs.start("naysayer", ["review"], kind="mesh.faults:Naysayer")
    await agent_procs.ready(mesh_client)
    task = await mesh_client.submit("write", "the right answer", review=LAST_ROUND, claim_timeout_s=30.0)

    async def vetoed() -> bool:
        record = await mesh_client.get(task.id)
        if record.state in ("open", "working"):
            return False  # the author has not finished yet (no rework: max_reworks is 0)
        assert record.state == "review", (record.state, record.reason, record.error)
        return vetoes(record) == {"naysayer"}

    # Today's rule would have failed the task here (rejected); it waits for a second opinion.
    await wait_for(vetoed, what="the naysayer's veto")
    agent_procs.start("checker", ["review"], kind="mesh.faults:RubberStamp")
    final = await mesh_client.wait(task)
    assert final.state == "done", (final.state, final.reason, final.error)
    assert [(v.reviewer, v.verdict) for v in final.votes] == [("naysayer", "veto"), ("checker", "approve")]
    assert final.attempts == 1 and final.reworks == 0  # the veto cost a review, not a redo


async def test_reject_quorum_distinct_vetoes_still_reject(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    agent_procs.start("author", ["write"], kind="echo")
    for name in ("naysayer1", "naysayer2"):
        agent_procs.start(name, ["review"], kind="mesh.faults:Naysayer")
    await agent_procs.ready(mesh_client)
    final = await mesh_client.run("write", "a disputed answer", review=LAST_ROUND, claim_timeout_s=30.0)
    assert (final.state, final.reason) == ("failed", "rejected"), final.error
    assert vetoes(final) == {"naysayer1", "naysayer2"}
    assert "I object to everything" in final.error


async def test_one_reviewer_cannot_veto_twice(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    agent_procs.start("author", ["write"], kind="echo")
    agent_procs.start("naysayer", ["review"], kind="mesh.faults:Naysayer")
    await agent_procs.ready(mesh_client)
    # The naysayer gets the item its own veto opened, and hands it back: nobody else
    # comes, so after the claim timeout the requester ends the round on the one veto.
    final = await mesh_client.run("write", "an answer", review=LAST_ROUND, claim_timeout_s=3.0)
    assert (final.state, final.reason) == ("failed", "rejected"), final.error
    assert [(v.reviewer, v.verdict) for v in final.votes] == [("naysayer", "veto")]
    assert final.updated - final.created >= 3.0  # it waited out the claim timeout for another reviewer
