"""Review slots with real agent processes on a real broker: a review is reserved before
it is done, so a quorum of k costs k reviews however many reviewers are idle, and a
reviewer killed mid-review loses its slot to another one, which finishes the review."""

from __future__ import annotations

import signal

import pytest

from mesh.client import Mesh
from mesh.testing import AgentProcs, wait_for
from protocol import ReviewPolicy

REVIEWERS = ("rev1", "rev2", "rev3", "rev4")


def reviews_started(agent_procs: AgentProcs) -> dict[str, int]:
    """How many reviews each reviewer started: one log line per slot it took."""
    return {name: agent_procs.log(name).count("took a review slot") for name in REVIEWERS}


@pytest.mark.parametrize("quorum", [1, 2])
async def test_four_idle_reviewers_do_quorum_reviews_and_no_more(
    agent_procs: AgentProcs, mesh_client: Mesh, quorum: int
) -> None:
    agent_procs.start("author", ["write"], kind="echo")
    for name in REVIEWERS:
        # Slow enough that, without reservation, every idle reviewer would be at work at once.
        agent_procs.start(name, ["review"], kind="mesh.faults:SlowReviewer", options={"seconds": 1.5})
    await agent_procs.ready(mesh_client)
    record = await mesh_client.run("write", "check me", review=ReviewPolicy(quorum=quorum))
    assert record.state == "done", (record.state, record.reason, record.error)
    assert len(record.votes) == quorum and record.slots == ()
    started = reviews_started(agent_procs)
    assert sum(started.values()) == quorum, started
    assert all(started[v.reviewer] == 1 for v in record.votes)
    # Nobody else's review ran and was thrown away.
    assert not any("vote not needed any more" in agent_procs.log(name) for name in REVIEWERS)


async def test_a_killed_slot_holder_loses_its_slot_to_another_reviewer(
    agent_procs: AgentProcs, mesh_client: Mesh
) -> None:
    agent_procs.start("author", ["write"], kind="echo")
    for name in REVIEWERS:
        agent_procs.start(name, ["review"], kind="mesh.faults:SlowReviewer", options={"seconds": 3.0})
    await agent_procs.ready(mesh_client)
    # Slot lease min(lease_s, claim_timeout_s / 4) = 2 s: a dead holder is noticed within
    # about two leases, well before the requester's no_agent patience (20 s) runs out.
    task = await mesh_client.submit(
        "write", "check me", review=ReviewPolicy(quorum=1), lease_s=2.0, claim_timeout_s=20.0
    )

    async def renewed() -> str | None:
        record = await mesh_client.get(task.id)
        if record.state == "review" and record.slots and record.slots[0].beat >= 1:
            return record.slots[0].reviewer
        return None

    # Its holder has renewed the slot at least once: it is at work, and observers have
    # seen its lease alive before they see it lapse.
    doomed = await wait_for(renewed, what="a reviewer to take the review slot and renew it")
    agent_procs.procs[doomed].kill()  # SIGKILL mid-review: no vote, no slot given back
    final = await mesh_client.wait(task)
    assert final.state == "done", (final.state, final.reason, final.error)
    [vote] = final.votes
    assert vote.reviewer != doomed and vote.verdict == "approve"
    survivor = agent_procs.log(vote.reviewer)
    assert f"took_over={doomed}" in survivor, survivor
    started = reviews_started(agent_procs)
    assert started[doomed] == 1 and started[vote.reviewer] == 1 and sum(started.values()) == 2, started


async def test_a_draining_reviewer_gives_its_slot_back(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    agent_procs.start("author", ["write"], kind="echo")
    for name in REVIEWERS[:2]:
        agent_procs.start(
            name, ["review"], kind="mesh.faults:SlowReviewer", drain_timeout_s=0.5, options={"seconds": 2.0}
        )
    await agent_procs.ready(mesh_client)
    # A 10 s slot lease: had the slot to lapse, the other reviewer could not start before it.
    task = await mesh_client.submit(
        "write", "check me", review=ReviewPolicy(quorum=1), lease_s=10.0, claim_timeout_s=60.0
    )

    async def held() -> str | None:
        record = await mesh_client.get(task.id)
        return record.slots[0].reviewer if record.state == "review" and record.slots else None

    leaver = await wait_for(held, what="a reviewer to take the review slot")
    agent_procs.procs[leaver].process.send_signal(signal.SIGTERM)
    assert agent_procs.procs[leaver].wait(20) == 0
    assert "gave our review slot back" in agent_procs.log(leaver)
    final = await mesh_client.wait(task)
    assert final.state == "done", (final.state, final.reason, final.error)
    [vote] = final.votes
    assert vote.reviewer != leaver
    # The other reviewer took the slot the leaver gave back, not a lapsed one.
    assert "took_over=None" in agent_procs.log(vote.reviewer)
    assert final.updated - task.created < 10.0
