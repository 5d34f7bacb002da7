"""Broker faults: agents ride out a nats-server restart (JetStream file store)."""

from __future__ import annotations

import anyio

from mesh.broker import Broker
from mesh.client import Mesh
from mesh.testing import AgentProcs, wait_for


async def test_agents_carry_on_after_the_broker_restarts(agent_procs: AgentProcs, broker: Broker) -> None:
    agent_procs.start("w1", ["job"], kind="sleep", capacity=4, lease_s=3.0, options={"seconds": 0.5, "steps": 5})
    agent_procs.start("w2", ["job"], kind="sleep", capacity=4, lease_s=3.0, options={"seconds": 0.5, "steps": 5})
    mesh = await Mesh.connect(broker.url, client_id="before")
    await agent_procs.ready(mesh)
    before = [await mesh.submit("job", f"before {i}") for i in range(8)]
    await mesh.close()

    broker.kill()  # SIGKILL: no clean shutdown; the store stays
    broker.start()

    mesh = await Mesh.connect(broker.url, client_id="after")
    try:
        finals = [await mesh.wait(r.id) for r in before]
        assert [r.state for r in finals] == ["done"] * 8, [(r.state, r.reason, r.error) for r in finals]
        # New work after the restart is picked up by the same (reconnected) agents.
        await agent_procs.ready(mesh, "w1", "w2", timeout=20)
        after = [await mesh.run("job", f"after {i}") for i in range(4)]
        assert [r.state for r in after] == ["done"] * 4
        assert {r.owner for r in after} <= {"w1", "w2"}
    finally:
        await mesh.close()
    for p in agent_procs.procs.values():
        assert p.process.poll() is None, "an agent died during the broker restart"


async def test_an_outage_longer_than_the_lease_is_not_a_lapse(agent_procs: AgentProcs, broker: Broker) -> None:
    """The broker is down for 1.5 leases while an agent works: nobody could renew in that
    time, so when the broker is back (and lends out the item whose lease ran out while
    it was down) the owner keeps its task: no takeover, no work done twice."""
    brief = {"kind": "sleep", "capacity": 2, "lease_s": 2.0, "options": {"seconds": 6.0, "steps": 3}}
    agent_procs.start("o1", ["long"], **brief)
    agent_procs.start("o2", ["long"], **brief)
    mesh = await Mesh.connect(broker.url, client_id="before")
    await agent_procs.ready(mesh)
    record = await mesh.submit("long", "hold on through the outage", claim_timeout_s=30)

    async def held() -> str | None:
        current = await mesh.get(record.id)
        return current.owner if current.state == "working" else None

    owner = await wait_for(held, what="an agent to claim the task")
    await mesh.close()

    broker.kill()
    await anyio.sleep(3.0)  # 1.5 leases without a broker
    broker.start()

    mesh = await Mesh.connect(broker.url, client_id="after")
    try:
        final = await mesh.wait(record.id)
    finally:
        await mesh.close()
    assert final.state == "done" and final.owner == owner
    assert final.epoch == 1 and final.lapses == 0, (final.epoch, final.lapses, final.progress)
