"""What the A2A gateway adds to a no-op task: p50 and p99 through `mesh a2a serve`
(the SDK's client, blocking ``SendMessage``, loopback HTTP) against ``Mesh.run``, in
one run.

One broker, one `mesh agent run` echo agent, one gateway process; both clients live in
this process and alternate blocks of sequential tasks, so both sides of the ratio are
measured in the same seconds (this 2-core machine's baseline moves by up to 2x from
one batch to the next: see bench/latency.py).

    .venv/bin/python -m bench.a2a            # 3 x 200 tasks each side
    .venv/bin/python -m bench.a2a --quick    # a smoke run

Not part of ``bench.run``'s report: printed and written to bench/results/a2a.json.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from bench.common import (
    AgentRun,
    agent_runs,
    child_env,
    dist_ms,
    progress,
    ratio,
    run_standalone,
    spread,
    write_brief,
)
from bench.drive import mesh_sequential

NAME = "a2a"


async def a2a_sequential(client: Any, n: int) -> list[float]:
    from a2a.helpers import new_text_part
    from a2a.types import Message, Role, SendMessageRequest, TaskState

    out = []
    for _ in range(n):
        msg = Message(message_id=uuid.uuid4().hex, role=Role.ROLE_USER, parts=[new_text_part("ping")])
        msg.metadata.update({"skill": "echo"})
        t = time.perf_counter()
        async for response in client.send_message(SendMessageRequest(message=msg)):
            if response.task.status.state != TaskState.TASK_STATE_COMPLETED:
                raise RuntimeError(f"a task through the gateway did not complete: {response}")
        out.append(time.perf_counter() - t)
    return out


async def _measure(server: str, gateway: str, n: int, repeats: int, warmup: int, block: int) -> Any:
    from a2a.client import ClientConfig, create_client

    from mesh.client import Mesh

    mesh = await Mesh.connect(server, client_id="bench-direct")
    client = await create_client(gateway, ClientConfig(streaming=False))
    sides: dict[str, Callable[[int], Awaitable[list[float]]]] = {
        "direct": lambda k: mesh_sequential(mesh, k),
        "a2a": lambda k: a2a_sequential(client, k),
    }
    runs = []
    pooled: dict[str, list[float]] = {"direct": [], "a2a": []}
    try:
        for side in sides.values():
            await side(warmup)
        for rep in range(repeats):
            got: dict[str, list[float]] = {"direct": [], "a2a": []}
            for i in range(max(n // block, 1)):
                order = ("direct", "a2a") if i % 2 == 0 else ("a2a", "direct")
                for key in order:
                    got[key] += await sides[key](block)
            run = {k: dist_ms(v) for k, v in got.items()}
            runs.append(run)
            for k, v in got.items():
                pooled[k] += v
            progress(
                NAME,
                f"repeat {rep + 1}/{repeats}: p50 direct {run['direct']['p50']:.2f} ms, A2A {run['a2a']['p50']:.2f} ms "
                f"(x{ratio(run['a2a']['p50'], run['direct']['p50']):.2f})",
            )
    finally:
        await client.close()
        await mesh.close()
    both = {k: dist_ms(v) for k, v in pooled.items()}
    return {
        "n": n,
        "block": block,
        "repeats": repeats,
        "runs": runs,
        "summary": {
            "ratio_a2a_direct_p50": spread([ratio(r["a2a"]["p50"], r["direct"]["p50"]) for r in runs]),
            "pooled": {f"{k}_{q}": both[k][q] for k in both for q in ("p50", "p99")}
            | {
                "ratio_a2a_direct_p50": ratio(both["a2a"]["p50"], both["direct"]["p50"]),
                "ratio_a2a_direct_p99": ratio(both["a2a"]["p99"], both["direct"]["p99"]),
            },
        },
    }


def main(quick: bool = False) -> dict[str, Any]:
    from mesh.broker import Broker, free_ports

    n, repeats, warmup, block = (20, 1, 5, 10) if quick else (200, 3, 20, 25)
    with (
        tempfile.TemporaryDirectory(prefix="bench-a2a-") as tmp,
        tempfile.TemporaryDirectory(prefix="bench-js-") as store,
        Broker(store=store) as broker,
    ):
        d = Path(tmp)
        echo = write_brief(d, "echo", ["echo"], kind="echo", capacity=64)
        port = free_ports(1)[0]
        cmd = [sys.executable, "-m", "mesh", "a2a", "serve", "--port", str(port), "--server", broker.url]
        with agent_runs([AgentRun(echo, broker.url, "echo", d)]):
            gateway = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=child_env())
            try:
                assert gateway.stdout is not None
                if "A2A gateway at" not in gateway.stdout.readline().decode():
                    raise RuntimeError("the gateway did not start")
                progress(NAME, f"one echo agent, one gateway; {repeats} x {n} tasks per side")
                result: dict[str, Any] = anyio.run(
                    _measure, broker.url, f"http://127.0.0.1:{port}/", n, repeats, warmup, block
                )
            finally:
                gateway.terminate()
                gateway.wait(10)
                gateway.stdout.close()  # type: ignore[union-attr]
    result["setup"] = "1 broker, 1 echo agent process, 1 gateway process; both clients in the bench process"
    return result


if __name__ == "__main__":
    run_standalone(NAME, __doc__, main)
