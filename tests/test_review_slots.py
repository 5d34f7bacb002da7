"""Review slots with real agent processes on a real broker: a round of quorum k puts k
review items on the reviewers' queue, so it costs k reviews however many reviewers are
idle; a reviewer killed mid-review loses its item (and so its slot) to another one
when the broker's lease on it lapses; a draining reviewer gives its slot back."""

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
        # The review queue's lease is 2 s (the first reviewer makes the queue): a dead
        # holder's item goes to another reviewer after it, well before the requester's
        # no_agent patience (20 s) runs out.
        agent_procs.start(name, ["review"], kind="mesh.faults:SlowReviewer", lease_s=2.0, options={"seconds": 3.0})
    await agent_procs.ready(mesh_client)
    task = await mesh_client.submit("write", "check me", review=ReviewPolicy(quorum=1), claim_timeout_s=20.0)

    async def taken() -> str | None:
        record = await mesh_client.get(task.id)
        return record.slots[0].reviewer if record.state == "review" and record.slots else None

    doomed = await wait_for(taken, what="a reviewer to take the review slot")
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
    # The review queue's lease is 10 s: had the item to come back by itself, the other
    # reviewer could not start before it.
    task = await mesh_client.submit("write", "check me", review=ReviewPolicy(quorum=1), claim_timeout_s=60.0)

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
