"""`mesh top --once --json` flags stuck, looping and overloaded work."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from mesh.broker import Broker
from mesh.cli import render
from mesh.client import Mesh
from mesh.testing import AgentProcs, wait_for
from mesh.top import take_snapshot


def top(server: str, *extra: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "mesh", "top", "--once", "--json", "--server", server, *extra],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def top_text(server: str, *extra: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "mesh", "top", "--once", "--server", server, *extra],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout


async def test_top_flags_stuck_looping_and_overloaded(
    agent_procs: AgentProcs, mesh_client: Mesh, broker: Broker
) -> None:
    agent_procs.start("staller", ["stall"], kind="mesh.faults:Staller", capacity=1)
    agent_procs.start(
        "rephraser", ["spin"], kind="mesh.faults:Rephraser", delegates=["spin"], capacity=8, options={"delay": 0.3}
    )
    await agent_procs.ready(mesh_client)
    stuck = await mesh_client.submit("stall", "hold on")
    waiting = await mesh_client.submit("stall", "queue behind it", claim_timeout_s=60)
    spin = await mesh_client.submit("spin", "go round")

    async def flagged() -> dict[str, Any] | None:
        snap = top(broker.url, "--stuck-after", "1s", "--loop-after", "3")
        flags = snap["flags"]
        if stuck.id in flags["stuck"] and flags["looping"] and "stall" in flags["overloaded"]:
            return snap
        return None

    snap = await wait_for(flagged, timeout=20, what="top to flag stuck, looping and overloaded")
    assert waiting.id not in snap["flags"]["stuck"]
    looping = {t["id"]: t for t in snap["tasks"] if t["id"] in snap["flags"]["looping"]}
    assert all(t["capability"] == "spin" and t["root"] == spin.id for t in looping.values())
    agents = {a["id"]: a for a in snap["agents"]}
    assert agents["staller"]["tasks"] == [stuck.id] and agents["staller"]["load"] == 1
    # The human-readable view renders the same snapshot.
    text = top_text(broker.url, "--stuck-after", "1s")
    assert "stuck" in text and "staller" in text
    await mesh_client.cancel(stuck.id)
    await mesh_client.cancel(waiting.id)
    await mesh_client.cancel(spin.id)


async def test_top_says_what_it_could_not_read_and_drops_nothing_silently(mesh_client: Mesh) -> None:
    waiting = await mesh_client.submit("nobody.serves.this", "wait in the queue", claim_timeout_s=60)
    # Garbage on the queue, acknowledged by the stream (so stored) before we look.
    await mesh_client.bus.js.publish("mesh.v2.work.nobody.serves.this", b"\x00 not a work item")
    snap = await take_snapshot(mesh_client)
    assert [t.id for t in snap.tasks] == [waiting.id] and snap.not_read == []
    assert len(snap.unreadable) == 1 and snap.unreadable[0].startswith("work item ")

    # The queues' stream goes away: their tasks cannot be read, and the view says so
    # rather than showing a mesh with nothing waiting.
    await mesh_client.bus.js.delete_stream(mesh_client.names.work_stream)
    snap = await take_snapshot(mesh_client)
    assert snap.tasks == [] and len(snap.not_read) == 1
    assert snap.not_read[0].startswith("the queues' waiting items: ")
    assert snap.to_json()["flags"]["not_read"] == snap.not_read
    assert "NOT READ (this view lacks it): the queues' waiting items" in render.top_view(snap)
