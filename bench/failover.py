"""Failover time: ``kill -9`` of the agent process that holds a task until another
agent holds it (a ``claim`` event with a higher epoch by another agent).

Three `mesh agent run` processes serve a long task (built-in ``sleep`` kind); the
client submits one task with a 1 s lease and waits for it like any requester (it is
one of the observers that may re-open the task). After a random pause (so the kill
falls anywhere in the owner's renewal cycle) the owner is killed; the time until
the new claim is the failover time. The task is then cancelled, the killed agent
restarted, and the next trial begins.
"""

from __future__ import annotations

import random
import time
from typing import Any

import anyio

from bench.common import AgentRun, dist_ms, progress, samples, spread, tempdir, write_brief
from bench.common import broker as fresh_broker

NAME = "failover"


async def _trial(mesh: Any, runs: dict[str, AgentRun], lease_s: float, rng: random.Random) -> dict[str, Any]:
    from mesh.work import new_id
    from protocol import decode_event

    task_id = new_id()  # a root task: its root is itself
    # Subscribe before submitting, or a fast claim's event is missed.
    sub = await mesh.nc.subscribe(mesh.names.event_subject(task_id, task_id, "claim").rsplit(".", 1)[0] + ".*")
    await mesh.nc.flush()
    record = await mesh.submit("slow", "a long task", data={"seconds": 120}, lease_s=lease_s, task_id=task_id)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(mesh.wait, record)  # the requester waits, as it would
            owner, epoch = None, 0
            with anyio.fail_after(15):
                while owner is None:
                    msg = await sub.next_msg(timeout=15)
                    event = decode_event(msg.data)
                    if event.kind == "claim":
                        owner, epoch = event.actor, event.epoch
            await anyio.sleep(rng.uniform(0.0, lease_s))
            victim = runs[owner]
            t_kill = time.monotonic()
            victim.kill()
            reopened_at = None
            new_owner = None
            with anyio.fail_after(30):
                while new_owner is None:
                    msg = await sub.next_msg(timeout=30)
                    event = decode_event(msg.data)
                    if event.kind == "reopen" and reopened_at is None:
                        reopened_at = time.monotonic() - t_kill
                        reopened_by = event.actor
                    if event.kind == "claim" and event.epoch > epoch and event.actor != owner:
                        new_owner = event.actor
            failover = time.monotonic() - t_kill
            await mesh.cancel(record.id)
            tg.cancel_scope.cancel()
    finally:
        await sub.unsubscribe()
    return {
        "victim": owner,
        "new_owner": new_owner,
        "failover_s": failover,
        "detect_s": reopened_at,
        "reopened_by": "requester" if reopened_by == mesh.id else "agent",
    }


async def _run(url: str, d: Any, trials: int, lease_s: float, brief: Any) -> list[dict[str, Any]]:
    from mesh.client import Mesh

    rng = random.Random(42)
    runs = {f"slow{i}": AgentRun(brief, url, f"slow{i}", d) for i in range(3)}
    for r in runs.values():
        r.start()
    for r in runs.values():
        await anyio.to_thread.run_sync(r.wait_ready)
    mesh = await Mesh.connect(url, client_id="bench-failover")
    results = []
    try:
        for i in range(trials):
            res = await _trial(mesh, runs, lease_s, rng)
            results.append(res)
            progress(
                NAME,
                f"trial {i + 1}/{trials} (lease {lease_s} s): {res['victim']} killed, {res['new_owner']} holds the task "
                f"after {res['failover_s'] * 1000:.0f} ms (re-opened by the {res['reopened_by']} after {res['detect_s'] * 1000:.0f} ms)",
            )
            victim = runs[res["victim"]]
            victim.start()
            await anyio.to_thread.run_sync(victim.wait_ready)
    finally:
        await mesh.close()
        for r in runs.values():
            r.stop(timeout=5)
    return results


def main(quick: bool = False) -> dict[str, Any]:
    plan = {1.0: 2} if quick else {1.0: 16, 0.5: 10}
    out: dict[str, Any] = {"trials": plan[1.0], "by_lease": {}}
    for lease_s, trials in plan.items():
        with fresh_broker() as b, tempdir() as d:
            brief = write_brief(d, "slow", ["slow"], kind="sleep", capacity=4, options={"seconds": 120, "steps": 1})
            results = anyio.run(_run, b.url, d, trials, lease_s, brief)
        failovers = [r["failover_s"] for r in results]
        out["by_lease"][str(lease_s)] = {
            "trials": results,
            "failover_ms": dist_ms(failovers),
            "detect_ms": dist_ms([r["detect_s"] for r in results]),
            "reopened_by_requester": sum(1 for r in results if r["reopened_by"] == "requester"),
            "samples": samples(failovers),
        }
    first = out["by_lease"]["1.0"]["failover_ms"]
    out["summary"] = {"p50_ms": first["p50"], "p95_ms": first["p95"], "lease_s": 1.0}
    out["spread_note"] = "p50/p95 over all trials (each trial is one kill); spread: min-max of trials"
    out["failover_range_ms"] = spread([r["failover_s"] * 1000 for r in out["by_lease"]["1.0"]["trials"]])
    out["setup"] = (
        "3 `mesh agent run` processes (kind sleep, one 120 s step so no progress writes), 1 waiting requester; kill -9 the owner"
    )
    return out
