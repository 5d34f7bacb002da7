"""Churn: an agent that has just started takes a dead owner's task over as soon as the
broker lends it the item, one lease after the owner's last renewal. The takeover
grace (no takeover within a lease of a reconnection: an outage is not a lapse) must
not count an agent's first connection, or every restarted agent would hold a dead
owner's item back for a lease and failover under churn would take up to two."""

from __future__ import annotations

import time

from mesh.client import Mesh
from mesh.testing import AgentProcs, wait_for

LEASE_S = 3.0


async def test_a_freshly_started_agent_takes_over_within_a_lease(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    brief = {"kind": "sleep", "lease_s": LEASE_S}
    agent_procs.start("doomed", ["slow"], **brief, options={"seconds": 60, "steps": 60})
    await agent_procs.ready(mesh_client)
    record = await mesh_client.submit("slow", "long job", claim_timeout_s=60)

    async def held() -> bool:
        return (await mesh_client.get(record.id)).owner == "doomed"

    await wait_for(held, what="doomed to claim the task")
    agent_procs.procs["doomed"].kill()  # SIGKILL: its item comes back a lease after its last renewal
    killed_at = time.time()
    # Started now, the rescuer is connected less than a lease when the item comes back.
    agent_procs.start("rescuer", ["slow"], **brief, options={"seconds": 0.2, "steps": 2})
    final = await mesh_client.wait(record)
    assert final.state == "done" and final.owner == "rescuer"
    assert final.epoch == 2 and final.lapses == 1
    assert "not taking over yet" not in agent_procs.log("rescuer")
    takeover = next(e for e in await mesh_client.history(record.root) if "taken over from doomed" in e.note)
    # One lease after the kill at most (the owner renewed up to lease/3 before it),
    # with room for a slow start of the rescuer on a loaded machine; the grace would
    # have made it a lease after the rescuer's connection.
    assert takeover.at - killed_at < 1.8 * LEASE_S, takeover.at - killed_at
