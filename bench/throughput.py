"""Throughput: no-op tasks per second with 1, 2 and 4 agent processes and 64 tasks in
flight, against the central baseline (one coordinator process dispatching to 1, 2
and 4 worker processes over NATS request/reply) in the same run.

Per worker count both systems are up at once; each repeat measures the mesh, then
the central baseline, so drift hits both alike. CPU time per task is read for
every process (client, agents or coordinator and workers, nats-server).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from bench.central import SUBMIT, coordinator_child, worker_child
from bench.common import (
    AgentRun,
    agent_runs,
    broker,
    cpu_seconds,
    dist_ms,
    progress,
    ratio,
    server_counters,
    spread,
    tempdir,
    write_brief,
)
from bench.drive import mesh_concurrent, raw_concurrent

NAME = "throughput"
INFLIGHT = 64


def _cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


async def _measure(
    b: Any, agent_pids: list[int], central_pids: list[int], n: int, repeats: int, count: int
) -> dict[str, Any]:
    import nats

    from mesh.client import Mesh

    mesh = await Mesh.connect(b.url, client_id="bench-throughput")
    nc = await nats.connect(b.url, name="bench-central-client")
    runs = []
    try:
        await mesh_concurrent(mesh, INFLIGHT, INFLIGHT)  # warm up
        await raw_concurrent(nc, INFLIGHT, INFLIGHT, SUBMIT)
        for rep in range(repeats):
            run: dict[str, Any] = {}
            systems: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]], list[int]]] = [
                ("mesh", lambda: mesh_concurrent(mesh, n, INFLIGHT), agent_pids),
                ("central", lambda: raw_concurrent(nc, n, INFLIGHT, SUBMIT), central_pids),
            ]
            for system, go, pids in systems:
                before = (time.process_time(), _cpu(pids), server_counters(b))
                r = await go()
                after = (time.process_time(), _cpu(pids), server_counters(b))
                run[system] = {
                    "rate": r["rate"],
                    "elapsed_s": r["elapsed_s"],
                    "latency": dist_ms(r["latencies"]),
                    "cpu_ms_per_task": {
                        "client": (after[0] - before[0]) * 1000 / n,
                        "workers": (after[1] - before[1]) * 1000 / n,
                        "server": (after[2]["cpu_s"] - before[2]["cpu_s"]) * 1000 / n,
                    },
                    "server_msgs_per_task": (
                        after[2]["in_msgs"] - before[2]["in_msgs"] + after[2]["out_msgs"] - before[2]["out_msgs"]
                    )
                    / n,
                }
            run["ratio_mesh_central"] = ratio(run["mesh"]["rate"], run["central"]["rate"])
            runs.append(run)
            progress(
                NAME,
                f"{count} worker process(es), repeat {rep + 1}/{repeats}: mesh {run['mesh']['rate']:.0f} tasks/s, "
                f"central {run['central']['rate']:.0f} tasks/s (mesh/central x{run['ratio_mesh_central']:.2f})",
            )
    finally:
        await nc.close()
        await mesh.close()
    return {
        "runs": runs,
        "mesh_rate": spread([r["mesh"]["rate"] for r in runs]),
        "central_rate": spread([r["central"]["rate"] for r in runs]),
        "ratio_mesh_central": spread([r["ratio_mesh_central"] for r in runs]),
        "mesh_p50_ms": spread([r["mesh"]["latency"]["p50"] for r in runs]),
        "central_p50_ms": spread([r["central"]["latency"]["p50"] for r in runs]),
    }


def main(quick: bool = False) -> dict[str, Any]:
    counts = (1, 2) if quick else (1, 2, 4)
    n, repeats = (INFLIGHT, 1) if quick else (1000, 3)
    out: dict[str, Any] = {"inflight": INFLIGHT, "n": n, "repeats": repeats, "by_processes": {}}
    for count in counts:
        with broker() as b, tempdir() as d:
            echo = write_brief(d, "echo", ["echo"], kind="echo", capacity=INFLIGHT)
            central = [coordinator_child(b.url), *(worker_child(b.url, f"cw{i}") for i in range(count))]
            try:
                for c in central:
                    c.start()
                for c in central:
                    c.wait_ready()
                with agent_runs([AgentRun(echo, b.url, f"echo{i}", d) for i in range(count)]) as agents:
                    progress(
                        NAME, f"{count} agent process(es) and central with {count} worker(s) up; {repeats} x {n} tasks"
                    )
                    out["by_processes"][str(count)] = anyio.run(
                        _measure, b, [a.pid for a in agents], [c.pid for c in central], n, repeats, count
                    )
            finally:
                for c in central:
                    c.stop()
    by = out["by_processes"]
    if "1" in by and "2" in by:
        out["scaling_2_over_1"] = by["2"]["mesh_rate"]["median"] / by["1"]["mesh_rate"]["median"]
    out["setup"] = (
        f"client in the bench process keeps {INFLIGHT} tasks in flight; mesh: N `mesh agent run` echo processes "
        "(capacity 64); central: 1 coordinator + N worker processes; same broker, same run"
    )
    return out
