"""What durability costs: the same no-op tasks against a broker with JetStream's
default fsync (every 2 minutes: acknowledged writes can be lost on power failure) and
with ``sync_interval: always`` (fsync before every acknowledgement), in one run.
Reports p50 latency of sequential tasks and throughput with 32 in flight, and the
ratios always/default.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import anyio

from bench.common import AgentRun, dist_ms, progress, tempdir, write_brief

NAME = "durability"
SETUP = "1 `mesh agent run` echo process per broker, client in the bench process, {rounds} alternating rounds per setting, {sequential} sequential and {concurrent} concurrent tasks per round"


async def _measure(url: str, sequential: int, concurrent: int) -> dict[str, Any]:
    from mesh.client import Mesh

    mesh = await Mesh.connect(url, client_id="durability-client")
    try:
        for _ in range(20):  # warm up
            await mesh.run("noop", "x")
        lat = []
        for _ in range(sequential):
            t = time.perf_counter()
            await mesh.run("noop", "x")
            lat.append(time.perf_counter() - t)
        limit = anyio.Semaphore(32)

        async def one() -> None:
            async with limit:
                await mesh.run("noop", "x")

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(concurrent):
                tg.start_soon(one)
        elapsed = time.perf_counter() - t0
    finally:
        await mesh.close()
    return {"latency": dist_ms(lat), "tasks_per_s": concurrent / elapsed}


def _one_mode(mode: str, directory: Path, sequential: int, concurrent: int) -> dict[str, Any]:
    from mesh.broker import Broker

    conf = directory / f"{mode}.conf"
    conf.write_text("jetstream { sync_interval: always }\n" if mode == "always" else "jetstream {}\n")
    store = directory / f"js-{mode}"
    store.mkdir()
    with Broker(store=str(store), config=str(conf)) as b:
        brief = write_brief(directory, f"noop-{mode}", ["noop"], kind="echo", capacity=64)
        run = AgentRun(brief, b.url, f"noop-{mode}", directory)
        run.start()
        try:
            run.wait_ready(30)
            return anyio.run(_measure, b.url, sequential, concurrent)
        finally:
            run.stop()


def main(*, quick: bool = False) -> dict[str, Any]:
    sequential, concurrent, rounds = (30, 60, 1) if quick else (200, 600, 3)
    runs: dict[str, list[dict[str, Any]]] = {"default": [], "always": []}
    with tempdir() as d:
        for r in range(rounds):
            for mode in ("default", "always"):
                sub = d / f"{mode}-{r}"
                sub.mkdir()
                result = _one_mode(mode, sub, sequential, concurrent)
                runs[mode].append(result)
                progress(
                    NAME,
                    f"round {r + 1}/{rounds} {mode}: p50 {result['latency']['p50']:.2f} ms, {result['tasks_per_s']:.0f} tasks/s",
                )
    p50 = {m: statistics.median(x["latency"]["p50"] for x in v) for m, v in runs.items()}
    tps = {m: statistics.median(x["tasks_per_s"] for x in v) for m, v in runs.items()}
    return {
        "runs": runs,
        "p50_ms": p50,
        "tasks_per_s": tps,
        "latency_ratio_always_vs_default": p50["always"] / p50["default"],
        "throughput_ratio_always_vs_default": tps["always"] / tps["default"],
        "setup": SETUP.format(rounds=rounds, sequential=sequential, concurrent=concurrent),
    }
