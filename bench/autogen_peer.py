"""The AutoGen peer: AutoGen core's distributed gRPC runtime (autogen-ext[grpc]) with a
host process and a worker process serving an echo agent, against one mesh echo agent
process, in the same run, from the same client process.

    python -m bench.autogen_peer host 127.0.0.1:PORT
    python -m bench.autogen_peer worker 127.0.0.1:PORT

Measured per repeat: sequential round trips (p50/p99) of AutoGen, the mesh and raw
NATS request/reply, interleaved in blocks of 50; then throughput with 64 requests
(tasks) in flight, AutoGen then mesh.

AutoGen is an optional benchmark dependency (the `bench` extra); without it this
benchmark reports itself skipped.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from bench.common import (
    AgentRun,
    Child,
    broker,
    child_env,
    cpu_seconds,
    dist_ms,
    progress,
    python,
    ratio,
    samples,
    spread,
    tempdir,
    write_brief,
)

NAME = "autogen"
INFLIGHT = 64


def available() -> str | None:
    """None if AutoGen's gRPC runtime can be imported, else why not."""
    try:
        import autogen_core  # noqa: F401
        import autogen_ext.runtimes.grpc  # noqa: F401
    except ImportError as exc:
        return f"autogen-core / autogen-ext[grpc] not installed ({exc}); install the bench extra"
    return None


async def _until_signal() -> None:
    import signal

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def run_host(address: str) -> None:
    from autogen_ext.runtimes.grpc import GrpcWorkerAgentRuntimeHost

    host = GrpcWorkerAgentRuntimeHost(address=address)
    host.start()
    await asyncio.sleep(0.2)
    print("READY", flush=True)
    await _until_signal()
    await host.stop(grace=1)


async def run_worker(address: str) -> None:
    from autogen_core import try_get_known_serializers_for_type
    from autogen_ext.runtimes.grpc import GrpcWorkerAgentRuntime

    from bench.autogen_agent import EchoAgent, EchoMessage

    runtime = GrpcWorkerAgentRuntime(host_address=address)
    runtime.add_message_serializer(try_get_known_serializers_for_type(EchoMessage))
    await runtime.start()
    await EchoAgent.register(runtime, "echo", EchoAgent)
    print("READY", flush=True)
    await _until_signal()
    await runtime.stop()


# --- the benchmark -----------------------------------------------------------------------------


async def _autogen_sequential(runtime: Any, n: int) -> list[float]:
    from autogen_core import AgentId

    from bench.autogen_agent import EchoMessage

    target = AgentId("echo", "default")
    out = []
    for _ in range(n):
        t = time.perf_counter()
        reply = await runtime.send_message(EchoMessage("ping"), target)
        out.append(time.perf_counter() - t)
        assert reply.text == "ping"
    return out


async def _autogen_concurrent(runtime: Any, n: int, inflight: int) -> dict[str, Any]:
    from autogen_core import AgentId

    from bench.autogen_agent import EchoMessage

    target = AgentId("echo", "default")
    limiter = asyncio.Semaphore(inflight)
    latencies: list[float] = []

    async def one() -> None:
        async with limiter:
            t = time.perf_counter()
            await runtime.send_message(EchoMessage("ping"), target)
            latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    elapsed = time.perf_counter() - t0
    return {"rate": n / elapsed, "elapsed_s": elapsed, "latencies": latencies}


async def _measure(
    url: str, address: str, n_seq: int, n_conc: int, repeats: int, pids: dict[str, list[int]], block: int
) -> dict[str, Any]:
    import nats
    from autogen_core import try_get_known_serializers_for_type
    from autogen_ext.runtimes.grpc import GrpcWorkerAgentRuntime

    from bench.autogen_agent import EchoMessage
    from bench.drive import mesh_concurrent, mesh_sequential, raw_sequential
    from bench.latency import RAW_SUBJECT
    from mesh.client import Mesh

    runtime = GrpcWorkerAgentRuntime(host_address=address)
    runtime.add_message_serializer(try_get_known_serializers_for_type(EchoMessage))
    await runtime.start()
    mesh = await Mesh.connect(url, client_id="bench-autogen")
    nc = await nats.connect(url, name="bench-raw")
    runs = []
    pooled: dict[str, list[float]] = {"autogen": [], "mesh": [], "raw": []}

    def cpu(side: str) -> float:
        return sum(cpu_seconds(p) for p in pids[side])

    try:
        await _autogen_sequential(runtime, 20)
        await _autogen_concurrent(runtime, INFLIGHT, INFLIGHT)
        await mesh_sequential(mesh, 20)
        await mesh_concurrent(mesh, INFLIGHT, INFLIGHT)
        await raw_sequential(nc, 20, RAW_SUBJECT)
        for rep in range(repeats):
            # Sequential round trips interleaved in blocks (as in bench/latency.py), so the
            # three see the same machine; then each system's concurrent run.
            ag_seq: list[float] = []
            me_seq: list[float] = []
            raw: list[float] = []
            for _ in range(max(n_seq // block, 1)):
                ag_seq += await _autogen_sequential(runtime, block)
                me_seq += await mesh_sequential(mesh, block)
                raw += await raw_sequential(nc, block, RAW_SUBJECT)
            c0, p0 = time.process_time(), cpu("autogen")
            ag_conc = await _autogen_concurrent(runtime, n_conc, INFLIGHT)
            ag_cpu = ((time.process_time() - c0) + (cpu("autogen") - p0)) * 1000 / n_conc
            c0, p0 = time.process_time(), cpu("mesh")
            me_conc = await mesh_concurrent(mesh, n_conc, INFLIGHT)
            me_cpu = ((time.process_time() - c0) + (cpu("mesh") - p0)) * 1000 / n_conc
            run: dict[str, Any] = {
                "autogen": {
                    "seq": dist_ms(ag_seq),
                    "rate": ag_conc["rate"],
                    "conc": dist_ms(ag_conc["latencies"]),
                    "cpu_ms_per_task": ag_cpu,
                },
                "mesh": {
                    "seq": dist_ms(me_seq),
                    "rate": me_conc["rate"],
                    "conc": dist_ms(me_conc["latencies"]),
                    "cpu_ms_per_task": me_cpu,
                },
                "raw": {"seq": dist_ms(raw)},
            }
            run["ratio_mesh_autogen_p50"] = ratio(run["mesh"]["seq"]["p50"], run["autogen"]["seq"]["p50"])
            run["ratio_mesh_autogen_rate"] = ratio(run["mesh"]["rate"], run["autogen"]["rate"])
            run["ratio_mesh_raw_p50"] = ratio(run["mesh"]["seq"]["p50"], run["raw"]["seq"]["p50"])
            runs.append(run)
            pooled["autogen"] += ag_seq
            pooled["mesh"] += me_seq
            pooled["raw"] += raw
            progress(
                NAME,
                f"repeat {rep + 1}/{repeats}: p50 AutoGen {run['autogen']['seq']['p50']:.2f} ms, mesh {run['mesh']['seq']['p50']:.2f} ms, "
                f"raw {run['raw']['seq']['p50']:.2f} ms; {INFLIGHT} in flight: AutoGen {run['autogen']['rate']:.0f}/s, "
                f"mesh {run['mesh']['rate']:.0f}/s",
            )
    finally:
        await nc.close()
        await mesh.close()
        await runtime.stop()
    summary = {
        "autogen_p50": spread([r["autogen"]["seq"]["p50"] for r in runs]),
        "autogen_p99": spread([r["autogen"]["seq"]["p99"] for r in runs]),
        "mesh_p50": spread([r["mesh"]["seq"]["p50"] for r in runs]),
        "mesh_p99": spread([r["mesh"]["seq"]["p99"] for r in runs]),
        "raw_p50": spread([r["raw"]["seq"]["p50"] for r in runs]),
        "autogen_rate": spread([r["autogen"]["rate"] for r in runs]),
        "mesh_rate": spread([r["mesh"]["rate"] for r in runs]),
        "ratio_mesh_autogen_p50": spread([r["ratio_mesh_autogen_p50"] for r in runs]),
        "ratio_mesh_autogen_rate": spread([r["ratio_mesh_autogen_rate"] for r in runs]),
        "ratio_mesh_raw_p50": spread([r["ratio_mesh_raw_p50"] for r in runs]),
        "autogen_cpu_ms_per_task": spread([r["autogen"]["cpu_ms_per_task"] for r in runs]),
        "mesh_cpu_ms_per_task": spread([r["mesh"]["cpu_ms_per_task"] for r in runs]),
    }
    return {"runs": runs, "summary": summary, "samples": {k: samples(v) for k, v in pooled.items()}}


def main(quick: bool = False) -> dict[str, Any]:
    why = available()
    if why:
        progress(NAME, f"skipped: {why}")
        return {"skipped": why}
    from bench.central import worker_child
    from bench.latency import RAW_SUBJECT
    from mesh.broker import free_port

    n_seq, n_conc, repeats, block = (10, INFLIGHT, 1, 5) if quick else (300, 1000, 5, 50)
    address = f"127.0.0.1:{free_port()}"
    with broker() as b, tempdir() as d:
        host = Child(
            "autogen-host", python("-m", "bench.autogen_peer", "host", address), env=child_env(), log=d / "ag-host.log"
        )
        worker = Child(
            "autogen-worker",
            python("-m", "bench.autogen_peer", "worker", address),
            env=child_env(),
            log=d / "ag-worker.log",
        )
        raw = worker_child(b.url, "raw-responder", subject=RAW_SUBJECT)
        echo = AgentRun(write_brief(d, "echo", ["echo"], kind="echo", capacity=INFLIGHT), b.url, "echo1", d)
        try:
            host.start().wait_ready()
            worker.start().wait_ready()
            raw.start().wait_ready()
            echo.start().wait_ready()
            progress(
                NAME,
                f"AutoGen host + worker, mesh echo agent, raw responder up; {repeats} x ({n_seq} sequential + {n_conc} at {INFLIGHT} in flight)",
            )
            pids = {"autogen": [host.pid, worker.pid], "mesh": [echo.pid, b.process.pid]}
            result = asyncio.run(_measure(b.url, address, n_seq, n_conc, repeats, pids, block))
        finally:
            echo.stop()
            for kid in (raw, worker, host):
                kid.stop()
    result["setup"] = (
        "AutoGen: GrpcWorkerAgentRuntimeHost process + GrpcWorkerAgentRuntime worker process with one echo agent; "
        "client: a GrpcWorkerAgentRuntime in the bench process (send_message RPC). Mesh: nats-server + one `mesh agent run` "
        "echo process; client: Mesh in the bench process (submit and wait until done). CPU per task counts the client and every "
        "process of the system (AutoGen host + worker; nats-server + agent)."
    )
    result["n_seq"], result["n_conc"], result["repeats"], result["inflight"] = n_seq, n_conc, repeats, INFLIGHT
    return result


def _cli() -> None:
    role, address = sys.argv[1], sys.argv[2]
    import logging

    logging.basicConfig(level=logging.WARNING)
    asyncio.run({"host": run_host, "worker": run_worker}[role](address))


if __name__ == "__main__":
    _cli()
