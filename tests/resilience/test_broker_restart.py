"""Broker faults: agents ride out a nats-server restart (JetStream file store)."""

from __future__ import annotations

from mesh.broker import Broker
from mesh.client import Mesh
from mesh.testing import AgentProcs


async def test_agents_carry_on_after_the_broker_restarts(agent_procs: AgentProcs, broker: Broker) -> None:
    agent_procs.start("w1", ["job"], kind="sleep", capacity=4, options={"seconds": 0.5, "steps": 5})
    agent_procs.start("w2", ["job"], kind="sleep", capacity=4, options={"seconds": 0.5, "steps": 5})
    mesh = await Mesh.connect(broker.url, client_id="before")
    await agent_procs.ready(mesh)
    before = [await mesh.submit("job", f"before {i}", lease_s=3.0) for i in range(8)]
    await mesh.close()

    broker.kill()  # SIGKILL: no clean shutdown; the store stays
    broker.start()

    mesh = await Mesh.connect(broker.url, client_id="after")
    try:
        finals = [await mesh.wait(r.id) for r in before]
        assert [r.state for r in finals] == ["done"] * 8, [(r.state, r.reason, r.error) for r in finals]
        # New work after the restart is picked up by the same (reconnected) agents.
        await agent_procs.ready(mesh, "w1", "w2", timeout=20)
        after = [await mesh.run("job", f"after {i}", lease_s=3.0) for i in range(4)]
        assert [r.state for r in after] == ["done"] * 4
        assert {r.owner for r in after} <= {"w1", "w2"}
    finally:
        await mesh.close()
    for p in agent_procs.procs.values():
        assert p.process.poll() is None, "an agent died during the broker restart"
