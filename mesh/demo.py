"""``mesh demo``: an embedded broker and a small organization of separate agent
processes doing real (if model-free) work: a direct task, a handoff with a review,
and a task nobody serves. Prints results and a trace, stops everything, exits 0."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import anyio

from .briefs import load_org
from .broker import Broker
from .cli import render
from .client import Mesh
from .process import AgentProcess, spawn_agent

__all__ = ["run_demo", "DEMO_ORG"]

DEMO_ORG = Path(__file__).parent / "orgs" / "demo.toml"


def say(text: str) -> None:
    print(text, flush=True)


def run_demo(*, keep_logs: bool = False) -> int:
    logs = Path(tempfile.mkdtemp(prefix="mesh-demo-logs-"))
    org, briefs = load_org(DEMO_ORG)
    with Broker() as broker:
        say(f"broker: nats-server with JetStream on {broker.url} (monitoring {broker.monitor_url})")
        procs: list[AgentProcess] = []
        try:
            for brief, _ in briefs:
                procs.append(spawn_agent(DEMO_ORG, server=broker.url, agent_name=brief.name, log_path=logs / f"{brief.name}.log"))
            say(f"org {org.name!r}: started {len(procs)} agent processes: "
                + ", ".join(f"{p.agent_id} (pid {p.process.pid})" for p in procs))
            code = anyio.run(_tasks, broker.url, [b.name for b, _ in briefs], procs)
        finally:
            for p in procs:
                p.drain()
            for p in procs:
                try:
                    p.wait(30)
                except Exception:
                    p.kill()
        say("stopped every agent (drained) and the broker.")
    if keep_logs:
        say(f"agent logs: {logs}")
    else:
        for f in logs.iterdir():
            f.unlink()
        logs.rmdir()
    return code


async def _tasks(server: str, names: list[str], procs: list[AgentProcess]) -> int:
    async with await Mesh.connect(server, client_id="demo") as mesh:
        deadline = time.monotonic() + 30
        while {c.id for c in await mesh.agents()} < set(names):
            for p in procs:
                if p.process.poll() is not None:
                    print(f"agent {p.agent_id} exited with code {p.process.returncode} (log: {p.log_path})", file=sys.stderr)
                    return 1
            if time.monotonic() > deadline:
                print("agents did not all join within 30 s", file=sys.stderr)
                return 1
            await anyio.sleep(0.1)
        say("directory: " + ", ".join(f"{c.id} serves {'/'.join(c.serves)}" for c in await mesh.agents()))

        say("\n1. a direct task: echo")
        r = await mesh.run("echo", "hello from the mesh")
        say(f"   {r.state}: {r.result!r} (by {r.owner}, epoch {r.epoch})")

        say("\n2. a handoff with review: `brief` -> desk delegates to `summarize`, checker reviews")
        from pydoc_data.topics import topics  # real documentation that ships with Python

        text = topics["with"]
        r = await mesh.run(
            "brief", "Summarize the documentation of the `with` statement.",
            data={"text": text}, criteria="must mention: with", deadline_s=30,
        )
        say(f"   {r.state}: {render.outcome(r)}")
        say("   trace:")
        tree = await mesh.tree(r.id)
        events = await mesh.history(r.root)
        for line in render.trace(tree, events).splitlines():
            say(f"   {line}")

        say("\n3. a task nobody serves ends with a reason, it never hangs")
        r = await mesh.run("translate.klingon", "Qapla'", claim_timeout_s=1.0)
        say(f"   {r.state} ({r.reason}): {r.error}")
        return 0
