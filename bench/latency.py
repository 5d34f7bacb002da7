"""Latency of one no-op task, one at a time, against raw NATS request/reply.

In one run, on one broker: a raw nats-py request/reply responder process, one
`mesh agent run` echo agent and one `mesh agent run` check reviewer. The client (this
process) alternates, in blocks of 50: raw request/reply round trips, mesh tasks
(submit -> claim and result in one write -> done, file storage: durable), and mesh
tasks with a review quorum of 1 (submit -> claim -> result -> review -> approve ->
done). Blocks, not whole runs of 300, because the raw round trip on this machine
moves by up to 2x from one batch to the next (see the report's note on the raw
baseline): interleaving keeps every ratio a same-second comparison.
"""

from __future__ import annotations

from typing import Any

import anyio

from bench.central import worker_child
from bench.common import AgentRun, agent_runs, broker, dist_ms, progress, ratio, samples, spread, tempdir, write_brief
from bench.drive import mesh_sequential, raw_sequential

NAME = "latency"
RAW_SUBJECT = "bench.raw.noop"


async def _measure(url: str, n: int, repeats: int, warmup: int, block: int) -> dict[str, Any]:
    import nats

    from mesh.client import Mesh

    mesh = await Mesh.connect(url, client_id="bench-latency")
    nc = await nats.connect(url, name="bench-raw")
    runs = []
    pooled: dict[str, list[float]] = {"raw": [], "mesh": [], "mesh_review1": []}
    try:
        await raw_sequential(nc, warmup, RAW_SUBJECT)
        await mesh_sequential(mesh, warmup)
        await mesh_sequential(mesh, max(warmup // 2, 1), review=1)
        for rep in range(repeats):
            # Interleaved in blocks: whatever else the machine does slows all three alike
            # (raw request/reply on this 2-core VM swings by 2x between batches).
            raw: list[float] = []
            plain: list[float] = []
            reviewed: list[float] = []
            blocks: list[dict[str, float]] = []
            for _ in range(max(n // block, 1)):
                r = await raw_sequential(nc, block, RAW_SUBJECT)
                m = await mesh_sequential(mesh, block)
                reviewed += await mesh_sequential(mesh, block, review=1)
                raw += r
                plain += m
                blocks.append({"raw_p50": dist_ms(r)["p50"], "mesh_p50": dist_ms(m)["p50"]})
            run: dict[str, Any] = {
                "raw": dist_ms(raw),
                "mesh": dist_ms(plain),
                "mesh_review1": dist_ms(reviewed),
                "blocks": blocks,
            }
            runs.append(run)
            for key, values in (("raw", raw), ("mesh", plain), ("mesh_review1", reviewed)):
                pooled[key] += values
            progress(
                NAME,
                f"repeat {rep + 1}/{repeats}: p50 raw {run['raw']['p50']:.2f} ms, mesh {run['mesh']['p50']:.2f} ms "
                f"(x{ratio(run['mesh']['p50'], run['raw']['p50']):.1f}), with review {run['mesh_review1']['p50']:.2f} ms; "
                f"raw p50 per block of {block}: {min(b['raw_p50'] for b in blocks):.2f}-{max(b['raw_p50'] for b in blocks):.2f} ms",
            )
    finally:
        await nc.close()
        await mesh.close()
    summary = {
        f"{key}_{q}": spread([r[key][q] for r in runs])
        for key in ("raw", "mesh", "mesh_review1")
        for q in ("p50", "p99")
    }
    summary["ratio_mesh_raw_p50"] = spread([ratio(r["mesh"]["p50"], r["raw"]["p50"]) for r in runs])
    summary["ratio_review_raw_p50"] = spread([ratio(r["mesh_review1"]["p50"], r["raw"]["p50"]) for r in runs])
    summary["ratio_mesh_raw_p99"] = spread([ratio(r["mesh"]["p99"], r["raw"]["p99"]) for r in runs])
    # How much the baseline itself moves: p50 of each block, over all repeats.
    summary["raw_block_p50"] = spread([b["raw_p50"] for r in runs for b in r["blocks"]])
    summary["ratio_block_p50"] = spread([ratio(b["mesh_p50"], b["raw_p50"]) for r in runs for b in r["blocks"]])
    pooled_ratio = ratio(dist_ms(pooled["mesh"])["p50"], dist_ms(pooled["raw"])["p50"])
    summary["pooled"] = {k: dist_ms(v)["p50"] for k, v in pooled.items()} | {"ratio_mesh_raw_p50": pooled_ratio}
    return {
        "n": n,
        "block": block,
        "repeats": repeats,
        "runs": runs,
        "summary": summary,
        "samples": {k: samples(v) for k, v in pooled.items()},
    }


def main(quick: bool = False) -> dict[str, Any]:
    n, repeats, warmup, block = (10, 1, 3, 5) if quick else (300, 5, 30, 50)
    with broker() as b, tempdir() as d:
        raw = worker_child(b.url, "raw-responder", subject=RAW_SUBJECT).start().wait_ready()
        try:
            echo = write_brief(d, "echo", ["echo"], kind="echo", capacity=64)
            check = write_brief(d, "checker", ["review"], kind="check", capacity=64)
            with agent_runs([AgentRun(echo, b.url, "echo1", d), AgentRun(check, b.url, "check1", d)]):
                progress(NAME, f"broker, raw responder, echo agent and reviewer up; {repeats} x {n} tasks of each kind")
                result = anyio.run(_measure, b.url, n, repeats, warmup, block)
        finally:
            raw.stop()
    result["setup"] = (
        "1 raw responder process, 1 echo agent process, 1 check reviewer process; client in the bench process; file storage"
    )
    return result
