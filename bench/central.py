"""The central baseline (the common design): one coordinator process takes every task
over NATS request/reply and dispatches it to a pool of worker processes, again by
request/reply on a queue group. Its state (the tasks in flight) lives in the
coordinator's memory.

Processes (started by the benchmarks):

    python -m bench.central worker --server URL [--subject S] [--worker bench.workers:Noop]
    python -m bench.central coordinator --server URL

The benchmark (``main``): tasks in flight when the coordinator is killed (``kill -9``)
vs. when one central worker is killed vs. when one mesh agent is killed.
The throughput comparison (mesh vs. central, 1/2/4 worker processes) is in
bench/throughput.py so that both are measured in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from bench.common import (
    AgentRun,
    Child,
    broker,
    child_env,
    progress,
    python,
    tempdir,
    write_brief,
)

NAME = "central"
SUBMIT = "central.submit"
WORK = "central.work.noop"


class _Task:
    """What a central worker hands to the worker object (the mesh's TaskContext subset)."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.instruction = body.get("instruction", "")
        self.data = body.get("data")


# --- processes ------------------------------------------------------------------------------


async def run_worker(server: str, subject: str, worker_spec: str, options: dict[str, Any], name: str) -> None:
    import nats

    from bench.workers import Opts, load

    worker = load(worker_spec)(Opts(options))
    nc = await nats.connect(server, name=name)
    tasks: set[asyncio.Task[None]] = set()

    async def handle(msg: Any) -> None:
        body = json.loads(msg.data)
        result = await worker.work(_Task(body))
        await msg.respond(json.dumps({"result": result}).encode())

    async def on_msg(msg: Any) -> None:
        t = asyncio.get_running_loop().create_task(handle(msg))
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    await nc.subscribe(subject, queue="workers", cb=on_msg)
    await nc.flush()
    print("READY", flush=True)
    await _until_signal()
    await nc.drain()


async def run_coordinator(server: str, work_subject: str) -> None:
    import nats
    import nats.errors

    nc = await nats.connect(server, name="coordinator")
    tasks: set[asyncio.Task[None]] = set()

    async def dispatch(msg: Any) -> None:
        try:
            reply = await nc.request(work_subject, msg.data, timeout=120)
            await msg.respond(reply.data)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            await msg.respond(json.dumps({"error": type(exc).__name__}).encode())

    async def on_submit(msg: Any) -> None:
        t = asyncio.get_running_loop().create_task(dispatch(msg))
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    await nc.subscribe(SUBMIT, cb=on_submit)
    await nc.flush()
    print("READY", flush=True)
    await _until_signal()
    await nc.drain()


async def _until_signal() -> None:
    import signal

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def worker_child(
    server: str,
    name: str,
    *,
    subject: str = WORK,
    worker: str = "bench.workers:Noop",
    options: dict[str, Any] | None = None,
) -> Child:
    return Child(
        name,
        python(
            "-m",
            "bench.central",
            "worker",
            "--server",
            server,
            "--subject",
            subject,
            "--worker",
            worker,
            "--options",
            json.dumps(options or {}),
            "--name",
            name,
        ),
        env=child_env(),
    )


def coordinator_child(server: str) -> Child:
    return Child("coordinator", python("-m", "bench.central", "coordinator", "--server", server), env=child_env())


# --- the kill experiment -------------------------------------------------------------------------


async def _central_kill(url: str, victim: Child, inflight: int, nap_s: float, wait_s: float) -> dict[str, Any]:
    """Submit ``inflight`` nap tasks through the coordinator, kill ``victim`` while they
    run, and count the tasks that never come back."""
    import nats
    import nats.errors

    nc = await nats.connect(url, name="central-client")
    outcomes: list[str] = []
    t0 = time.monotonic()
    finished_at: list[float] = []

    async def one(i: int) -> None:
        try:
            reply = await nc.request(
                SUBMIT, json.dumps({"instruction": f"t{i}", "data": {"seconds": nap_s}}).encode(), timeout=wait_s
            )
            body = json.loads(reply.data)
            outcomes.append("done" if "result" in body else "error")
            finished_at.append(time.monotonic() - t0)
        except nats.errors.TimeoutError:
            outcomes.append("lost")
        except nats.errors.NoRespondersError:
            outcomes.append("lost")

    jobs = [asyncio.create_task(one(i)) for i in range(inflight)]
    await asyncio.sleep(min(0.5, nap_s / 3))
    victim.kill()
    await asyncio.gather(*jobs)
    await nc.close()
    lost = outcomes.count("lost") + outcomes.count("error")
    return {
        "tasks": inflight,
        "done": outcomes.count("done"),
        "lost": lost,
        "all_done_s": max(finished_at) if finished_at and not lost else None,
    }


async def _mesh_kill(
    url: str, agents: list[AgentRun], inflight: int, nap_s: float, lease_s: float, wait_s: float
) -> dict[str, Any]:
    """The same experiment on the mesh: kill the agent holding the most tasks (the
    broker fills one agent's pull before the other's, so the split is not even)."""
    from bench.common import mesh_settings
    from mesh.client import Mesh

    # The agents made the queue with their brief's lease; the client's settings say the
    # same, in case it ever comes first.
    mesh = await Mesh.connect(url, client_id="bench-kill", settings=mesh_settings(lease_s=lease_s))
    t0 = time.monotonic()
    records = [await mesh.submit("nap", f"t{i}", data={"seconds": nap_s}, deadline_s=wait_s) for i in range(inflight)]
    # Wait until the tasks are held (so the victim really has some in flight).
    held: dict[str, str | None] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        held = {r.id: (await mesh.get(r.id)).owner for r in records}
        if all(held.values()):
            break
        await asyncio.sleep(0.02)
    by_agent = {a.agent_id: sum(1 for owner in held.values() if owner == a.agent_id) for a in agents}
    victim = max(agents, key=lambda a: by_agent[a.agent_id])
    victim_held = by_agent[victim.agent_id]
    victim.kill()
    finals = await asyncio.gather(*(mesh.wait(r) for r in records))
    elapsed = time.monotonic() - t0
    await mesh.close()
    states = [f.state for f in finals]
    return {
        "tasks": inflight,
        "held_by_victim": victim_held,
        "held_by_agent": by_agent,
        "done": states.count("done"),
        "lost": inflight - states.count("done"),
        "reclaimed": sum(1 for f in finals if f.epoch > 1),
        "all_done_s": elapsed if states.count("done") == inflight else None,
    }


def main(quick: bool = False) -> dict[str, Any]:
    inflight = 8 if quick else 32
    nap_s = 0.5 if quick else 2.0
    lease_s = 1.0
    wait_s = 3.0 if quick else 8.0
    repeats = 1 if quick else 3
    out: dict[str, Any] = {"inflight": inflight, "nap_s": nap_s, "lease_s": lease_s, "repeats": repeats, "runs": []}
    for rep in range(repeats):
        run: dict[str, Any] = {}
        with broker() as b, tempdir() as d:
            # Central: coordinator + 2 workers; kill the coordinator (kid 0), then one worker (kid 1).
            for key, victim, what in (
                ("central_kill_coordinator", 0, "coordinator"),
                ("central_kill_worker", 1, "one worker"),
            ):
                kids = [
                    coordinator_child(b.url),
                    *(worker_child(b.url, f"cw{i}", worker="bench.workers:Nap") for i in range(2)),
                ]
                try:
                    for k in kids:
                        k.start()
                    for k in kids:
                        k.wait_ready()
                    run[key] = asyncio.run(_central_kill(b.url, kids[victim], inflight, nap_s, wait_s))
                finally:
                    for k in kids:
                        k.stop()
                progress(NAME, f"run {rep + 1}/{repeats}: central, {what} killed: {run[key]}")
            # Mesh: two agents; kill one.
            brief = write_brief(d, "nap", ["nap"], kind="bench.workers:Nap", capacity=64, lease_s=lease_s)
            agents = [AgentRun(brief, b.url, f"nap{i}", d) for i in range(2)]
            try:
                for a in agents:
                    a.start()
                for a in agents:
                    a.wait_ready()
                run["mesh_kill_agent"] = asyncio.run(_mesh_kill(b.url, agents, inflight, nap_s, lease_s, wait_s * 2))
            finally:
                for a in agents:
                    a.stop()
            progress(NAME, f"run {rep + 1}/{repeats}: mesh, one agent killed: {run['mesh_kill_agent']}")
        out["runs"].append(run)
    out["setup"] = (
        f"central: 1 coordinator + 2 worker processes (request/reply, queue group); mesh: 2 `mesh agent run` processes; "
        f"{inflight} tasks of {nap_s} s in flight, one process killed with SIGKILL while they run; a central task not answered "
        f"within {wait_s:.0f} s counts as lost"
    )
    return out


def _cli() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.central")
    sub = p.add_subparsers(dest="role", required=True)
    w = sub.add_parser("worker")
    w.add_argument("--server", required=True)
    w.add_argument("--subject", default=WORK)
    w.add_argument("--worker", default="bench.workers:Noop")
    w.add_argument("--options", default="{}")
    w.add_argument("--name", default="central-worker")
    c = sub.add_parser("coordinator")
    c.add_argument("--server", required=True)
    c.add_argument("--work-subject", default=WORK)
    args = p.parse_args()
    if args.role == "worker":
        asyncio.run(run_worker(args.server, args.subject, args.worker, json.loads(args.options), args.name))
    else:
        asyncio.run(run_coordinator(args.server, args.work_subject))


if __name__ == "__main__":
    _cli()
