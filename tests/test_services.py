"""The services API ($SRV) as a fleet view: what `nats micro ls/info/stats mesh-agent`
read, requested over a real broker from real agent processes, and checked against
what the nats CLI's schemas require (it refuses replies that do not validate)."""

from __future__ import annotations

import json
import re
from typing import Any

import anyio

from mesh.client import Mesh
from mesh.testing import AgentProcs, wait_for

SEMVER = re.compile(r"^\d+\.\d+\.\d+")
NAME = re.compile(r"^[a-zA-Z0-9_-]+$")


async def _ask_all(mesh: Mesh, subject: str, count: int) -> list[dict[str, Any]]:
    """Publish one request to every instance, as `nats micro` does, and collect ``count`` replies."""
    nc = mesh.bus.nc
    inbox = nc.new_inbox()
    replies: list[dict[str, Any]] = []

    async def collect(msg: Any) -> None:
        replies.append(json.loads(msg.data))

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(subject, b"", reply=inbox)
        await wait_for(lambda: len(replies) >= count, what=f"{count} replies on {subject}")
    finally:
        await sub.unsubscribe()
    return sorted(replies, key=lambda r: r["endpoints"][0]["name"] if "endpoints" in r else r["id"])


async def test_stats_tell_the_agents_apart(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    agent_procs.start("sleeper", ["nap"], kind="sleep", capacity=3, options={"seconds": 30.0, "steps": 300})
    agent_procs.start("failer", ["flop"], kind="fail")
    await agent_procs.ready(mesh_client)
    napping = await mesh_client.submit("nap", "sleep a while")
    for _ in range(2):
        assert (await mesh_client.run("flop", "fail please")).state == "failed"

    async def held() -> bool:
        return (await mesh_client.get(napping.id)).state == "working"

    await wait_for(held, what="the sleeper to hold its task")

    stats = await _ask_all(mesh_client, "$SRV.STATS.mesh-agent", 2)
    assert [s["type"] for s in stats] == ["io.nats.micro.v1.stats_response"] * 2
    failer, sleeper = ({**s, **s["endpoints"][0]} for s in stats)
    assert (failer["name"], sleeper["name"]) == ("failer", "sleeper")  # the endpoints: the agents' ids
    assert {k: sleeper["data"][k] for k in ("agent", "brief", "load", "capacity", "tasks", "done", "failed")} == {
        "agent": "sleeper",
        "brief": "sleeper",
        "load": 1,
        "capacity": 3,
        "tasks": [napping.id],
        "done": 0,
        "failed": 0,
    }
    assert sleeper["data"]["serves"] == ["nap"] and sleeper["data"]["draining"] is False
    assert (failer["data"]["failed"], failer["data"]["done"], failer["data"]["load"]) == (2, 0, 0)
    for s in stats:  # what the CLI's stats schema requires
        assert SEMVER.match(s["version"]) and NAME.match(s["name"]) and s["id"]
        endpoint = s["endpoints"][0]
        assert NAME.match(endpoint["name"]) and isinstance(endpoint["data"], dict)
        assert isinstance(endpoint["last_error"], str) and isinstance(endpoint["processing_time"], int)

    infos = await _ask_all(mesh_client, "$SRV.INFO.mesh-agent", 2)
    for info, agent in zip(infos, ("failer", "sleeper"), strict=True):
        assert isinstance(info["description"], str) and agent in info["description"]
        assert info["metadata"]["agent"] == agent and info["metadata"]["brief"] == agent
        assert all(isinstance(v, str) for v in info["metadata"].values())
        assert [e["name"] for e in info["endpoints"]] == [agent]

    # One instance, by its id: `nats micro info mesh-agent ID`.
    one = stats[1]["id"]
    reply = await mesh_client.bus.request(f"$SRV.STATS.mesh-agent.{one}", b"", timeout=5)
    assert json.loads(reply)["endpoints"][0]["data"]["agent"] == "sleeper"
    with anyio.fail_after(10):
        await mesh_client.cancel(napping.id)
