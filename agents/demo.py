"""``mesh demo`` (published as the demo ``research-desk`` in the entry-point group
``agent_mesh.demo``): an embedded broker and the research desk (agents/orgs/
research-desk.toml), each agent its own process, doing real work offline on the
documentation that ships with Python: a question answered with citations and
fact-checked, a question the documentation cannot answer (vetoed, reworked, then
escalated to the human inbox, where the demo answers as a person), and a task
nobody serves. Prints answers, citations and traces, stops everything, exits 0.

With ``MESH_MODEL`` set, the same org's writer and fact-checker use the model."""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from mesh.briefs import load_org
from mesh.broker import Broker
from mesh.cli import render
from mesh.client import Mesh
from mesh.identity import default_keys_dir, ensure_keys
from mesh.process import AgentProcess, spawn_agent
from mesh.settings import Settings
from protocol import TaskRecord

from .research import render_answer

__all__ = ["run_demo", "DEMO_ORG", "QUESTION", "OUT_OF_SCOPE"]

DEMO_ORG = Path(str(importlib.resources.files("agents").joinpath("orgs", "research-desk.toml")))

QUESTION = "What does a with statement do when __exit__ returns a true value?"
OUT_OF_SCOPE = "Who painted the Mona Lisa?"


def say(text: str = "") -> None:
    print(text, flush=True)


def run_demo(*, keep_logs: bool = False) -> int:
    logs = Path(tempfile.mkdtemp(prefix="mesh-demo-logs-"))
    org, briefs = load_org(DEMO_ORG)
    # Secure by default: every process has its own key (made once in the keys
    # directory, reused after) and the broker lets in only these keys.
    keys_dir = default_keys_dir()
    # Each agent's key is bound to the queues of what its brief serves, and the person
    # who answers the human inbox to those tasks: the broker enforces both.
    seeds = ensure_keys(
        keys_dir,
        {b.name: "agent" for b, _ in briefs} | {"demo": "client", "human-demo": "client"},
        serves={b.name: b.serves for b, _ in briefs} | {"demo": (), "human-demo": ("human",)},
    )
    with Broker(auth=str(keys_dir)) as broker:
        say(
            f"broker: nats-server with JetStream on {broker.url} (monitoring {broker.monitor_url}), "
            f"authorization on: one key per process, in {keys_dir}"
        )
        procs: list[AgentProcess] = []
        try:
            for brief, _ in briefs:
                procs.append(
                    spawn_agent(
                        DEMO_ORG,
                        server=broker.url,
                        agent_id=brief.name,
                        agent_name=brief.name,
                        log_path=logs / f"{brief.name}.log",
                        env={"MESH_NKEY": str(seeds[brief.name])},
                    )
                )
            say(
                f"org {org.name!r} ({DEMO_ORG.name}): started {len(procs)} agent processes: "
                + ", ".join(f"{p.agent_id} (pid {p.process.pid})" for p in procs)
            )
            code = anyio.run(_tasks, broker.url, [b.name for b, _ in briefs], procs, seeds)
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


async def _joined(mesh: Mesh, names: list[str], procs: list[AgentProcess]) -> bool:
    deadline = time.monotonic() + 60
    while {c.id for c in await mesh.agents()} < set(names):
        for p in procs:
            if p.process.poll() is not None:
                print(
                    f"agent {p.agent_id} exited with code {p.process.returncode} (log: {p.log_path})", file=sys.stderr
                )
                return False
        if time.monotonic() > deadline:
            print("agents did not all join within 60 s", file=sys.stderr)
            return False
        await anyio.sleep(0.1)
    return True


def _as(seed: Path) -> Settings:
    return dataclasses.replace(Settings.from_env(), nkey=str(seed))


async def _tasks(server: str, names: list[str], procs: list[AgentProcess], seeds: dict[str, Path]) -> int:
    async with await Mesh.connect(server, client_id="demo", settings=_as(seeds["demo"])) as mesh:
        if not await _joined(mesh, names, procs):
            return 1
        say("directory: " + ", ".join(f"{c.id} serves {'/'.join(c.serves)}" for c in await mesh.agents()))
        model = os.environ.get("MESH_MODEL")
        say(
            f"model: {model} (writer and fact-checker use it)"
            if model
            else "model: none configured, so the writer composes extractively and the fact-checker checks support "
            "by rule (set MESH_MODEL to use a model)"
        )

        say("\n1. a question the documentation answers: researcher -> writer -> fact-checker")
        say(f"   question: {QUESTION}")
        r = await mesh.run("research", QUESTION, deadline_s=60, claim_timeout_s=30)
        if r.state != "done":
            say(f"   {render.outcome(r)}")
            return 1
        say(_indent(render_answer(r.result)))
        tree = await mesh.tree(r.id)
        say(f"   fact-check: {_checked(tree)}")
        say("   trace:")
        say(_indent(render.trace(tree, await mesh.history(r.root)), 5))

        say("\n2. a question it cannot answer: the fact-checker vetoes, the writer reworks, then a person decides")
        say(f"   question: {OUT_OF_SCOPE}")
        task = await mesh.submit("research", OUT_OF_SCOPE, deadline_s=60, claim_timeout_s=30)
        waiting = await _inbox(mesh)
        say("   the human inbox (`mesh inbox`) holds:")
        say(_indent(render.inbox(waiting), 5))
        answer = {
            "answer": "This desk answers from Python's documentation only, and it does not cover this question.",
            "citations": [],
            "method": "answered by a person (human-demo) from the human inbox",
        }
        async with await Mesh.connect(server, client_id="human-demo", settings=_as(seeds["human-demo"])) as person:
            await person.take_and_finish(waiting[0].id, answer)
        say(f"   human-demo answered task {waiting[0].id} (as `mesh inbox answer {waiting[0].id} TEXT` would)")
        r = await mesh.wait(task)
        say(f"   {r.state}:")
        say(_indent(render_answer(r.result) if r.state == "done" else render.outcome(r)))
        say("   trace:")
        say(_indent(render.trace(await mesh.tree(r.id), []), 5))

        say("\n3. a task nobody serves ends with a reason, it never hangs")
        r = await mesh.run("translate.klingon", "Qapla'", claim_timeout_s=1.0)
        say(f"   {r.state} ({r.reason}): {r.error}")
        return 0


async def _inbox(mesh: Mesh, timeout: float = 30.0) -> list[TaskRecord]:
    deadline = time.monotonic() + timeout
    while not (waiting := await mesh.offered("human")):
        if time.monotonic() > deadline:
            raise RuntimeError("nothing reached the human inbox")
        await anyio.sleep(0.1)
    return waiting


def _checked(tree: list[tuple[int, TaskRecord]]) -> str:
    for _, record in tree:
        if record.review is not None and record.state == "done":
            approvals = [v.reviewer for v in record.votes if v.verdict == "approve" and v.round == record.reworks]
            vetoes = f" after {len(record.feedback)} veto(es)" if record.feedback else ""
            return f"approved by {', '.join(approvals)}{vetoes}: every sentence is supported by a passage it cites"
    return "no review on record"


def _indent(text: Any, n: int = 3) -> str:
    return "\n".join(" " * n + line if line.strip() else "" for line in str(text).splitlines())
