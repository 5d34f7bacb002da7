"""Failover time: ``kill -9`` of the agent process that holds a task until another
agent holds it, and until the task is done.

Three `mesh agent run` processes serve a capability whose queue has a short lease
(the queue's AckWait, set by the agents' brief ``lease_s``: 1 s, then 0.5 s). The
client submits one task (a nap of a few seconds, no writes while it naps) and waits
for it like any requester. Once the owner's claim is on record, after a random pause
(so the kill falls anywhere in the owner's renewal cycle: it renews with an
in-progress ack every lease/3) the owner is killed. Nobody notices the death: the
broker lends the dead owner's work item to another agent once the lease runs out
since the last renewal, and that agent takes the task over with a claim carrying the
same ticket (the item's stream sequence): epoch 2, ``lapses`` 1. Measured:

- kill -> takeover: the ``claim`` event with a higher epoch by another agent;
- kill -> done: the task's ``finish`` (the successor naps the whole nap again: the
  nap keeps no checkpoint), also shown minus the nap itself.

The killed agent is restarted before the next trial.
"""

from __future__ import annotations

import random
import time
from typing import Any

import anyio

from bench.common import AgentRun, dist_ms, log_problems, mesh_settings, progress, samples, spread, tempdir, write_brief
from bench.common import broker as fresh_broker

NAME = "failover"
#: how long the task naps: longer than the latest kill (claim + a lease), so the
#: owner always dies while working
NAP_S = 2.0


async def _trial(mesh: Any, runs: dict[str, AgentRun], lease_s: float, rng: random.Random) -> dict[str, Any]:
    from mesh.work import new_id
    from protocol import decode_event

    task_id = new_id()  # a root task: its root is itself
    # Subscribe before submitting, or a fast claim's event is missed.
    sub = await mesh.bus.nc.subscribe(mesh.names.event_subject(task_id, task_id, "claim").rsplit(".", 1)[0] + ".*")
    await mesh.bus.nc.flush()
    record = await mesh.submit("slow", "a long task", data={"seconds": NAP_S}, task_id=task_id, claim_timeout_s=30.0)
    final: list[Any] = []
    try:
        async with anyio.create_task_group() as tg:

            async def wait() -> None:  # the requester waits, as it would
                final.append(await mesh.wait(record))

            tg.start_soon(wait)
            owner, epoch = None, 0
            with anyio.fail_after(15):
                while owner is None:
                    msg = await sub.next_msg(timeout=15)
                    event = decode_event(msg.data)
                    if event.kind == "claim":
                        owner, epoch = event.actor, event.epoch
            pause = rng.uniform(0.0, lease_s)
            await anyio.sleep(pause)
            victim = runs[owner]
            t_kill = time.monotonic()
            victim.kill()
            new_owner, new_epoch, takeover_s, done_s = None, 0, None, None
            with anyio.fail_after(30):
                while done_s is None:
                    msg = await sub.next_msg(timeout=30)
                    event = decode_event(msg.data)
                    at = time.monotonic() - t_kill
                    if event.kind == "claim" and event.epoch > epoch and event.actor != owner and new_owner is None:
                        new_owner, new_epoch, takeover_s = event.actor, event.epoch, at
                    elif event.kind == "finish":
                        done_s = at
                    elif event.kind in ("fail", "expire", "cancel", "ended"):
                        raise RuntimeError(f"task {task_id} ended {event.kind} ({event.reason}) instead of done")
            tg.cancel_scope.deadline = time.monotonic() + 5  # the wait returns at once now
    finally:
        await sub.unsubscribe()
    if takeover_s is None:
        raise RuntimeError(f"task {task_id} was finished without a takeover claim after its owner's death")
    end = final[0] if final else None
    return {
        "victim": owner,
        "new_owner": new_owner,
        "epoch": new_epoch,
        "lapses": end.lapses if end else None,
        "state": end.state if end else None,
        "kill_after_claim_s": pause,
        "failover_s": takeover_s,
        "done_s": done_s,
    }


async def _run(url: str, d: Any, trials: int, lease_s: float, brief: Any) -> list[dict[str, Any]]:
    from mesh.client import Mesh

    rng = random.Random(42)
    runs = {f"slow{i}": AgentRun(brief, url, f"slow{i}", d) for i in range(3)}
    for r in runs.values():
        r.start()
    for r in runs.values():
        await anyio.to_thread.run_sync(r.wait_ready)
    mesh = await Mesh.connect(url, client_id="bench-failover", settings=mesh_settings(lease_s=lease_s))
    results = []
    try:
        info = await mesh.bus.queue_info("slow")
        if info is None or abs(info.lease_s - lease_s) > 1e-3:
            raise RuntimeError(f"the queue's lease is {info and info.lease_s} s, not {lease_s} s")
        for i in range(trials):
            res = await _trial(mesh, runs, lease_s, rng)
            results.append(res)
            progress(
                NAME,
                f"trial {i + 1}/{trials} (lease {lease_s} s): {res['victim']} killed {res['kill_after_claim_s'] * 1000:.0f} ms "
                f"after its claim; {res['new_owner']} took over (epoch {res['epoch']}) after {res['failover_s'] * 1000:.0f} ms, "
                f"done after {res['done_s'] * 1000:.0f} ms (state {res['state']}, lapses {res['lapses']})",
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
    plan = {1.0: 2} if quick else {1.0: 20, 0.5: 12}
    out: dict[str, Any] = {"trials": plan[1.0], "nap_s": NAP_S, "by_lease": {}}
    logs = []
    for lease_s, trials in plan.items():
        with fresh_broker() as b, tempdir() as d:
            brief = write_brief(d, "slow", ["slow"], kind="bench.workers:Nap", capacity=4, lease_s=lease_s)
            results = anyio.run(_run, b.url, d, trials, lease_s, brief)
            logs.append(log_problems(sorted(d.glob("*.log"))))
        failovers = [r["failover_s"] for r in results]
        out["by_lease"][str(lease_s)] = {
            "trials": results,
            "failover_ms": dist_ms(failovers),
            "done_ms": dist_ms([r["done_s"] for r in results]),
            "done_minus_nap_ms": dist_ms([r["done_s"] - NAP_S for r in results]),
            "not_done": sum(1 for r in results if r["state"] != "done"),
            "epochs": sorted({r["epoch"] for r in results}),
            "lapses": sorted({r["lapses"] for r in results if r["lapses"] is not None}),
            "samples": samples(failovers),
        }
    first = out["by_lease"]["1.0"]["failover_ms"]
    out["summary"] = {"p50_ms": first["p50"], "p95_ms": first["p95"], "lease_s": 1.0}
    out["spread_note"] = "p50/p95 over all trials (each trial is one kill); spread: min-max of trials"
    out["failover_range_ms"] = spread([r["failover_s"] * 1000 for r in out["by_lease"]["1.0"]["trials"]])
    out["log_problems"] = logs
    out["setup"] = (
        f"3 `mesh agent run` processes (kind bench.workers:Nap, capacity 4; the queue's lease from their brief), 1 waiting "
        f"requester; one task napping {NAP_S:.0f} s; kill -9 of its owner a random 0 to 1 lease after its claim"
    )
    return out
