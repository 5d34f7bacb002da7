"""Organizations that work offline, as a newcomer builds them: from `mesh brief new`
to `mesh up`, with real processes on a real broker and no model anywhere."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from mesh.broker import Broker
from mesh.client import Mesh
from mesh.process import AgentProcess
from mesh.testing import wait_for
from protocol import TaskRecord

TEXT = (
    "The mesh has no orchestrator. Every agent is an operating system process that connects to NATS. "
    "Agents claim tasks by compare-and-set on a key value bucket. A lease lets another agent take over "
    "when the owner dies. Reviews need a quorum of approvals before a result counts."
)


def mesh_cli(*args: str, cwd: Path) -> str:
    env = {**os.environ, "MESH_MODEL": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "mesh", *args], capture_output=True, text=True, timeout=60, env=env, cwd=cwd
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


async def test_a_two_agent_org_from_the_template_runs_offline_with_mesh_up(
    tmp_path: Path, broker: Broker, mesh_client: Mesh
) -> None:
    mesh_cli("brief", "new", "front.toml", cwd=tmp_path)
    mesh_cli("brief", "new", "summarizer.toml", cwd=tmp_path)
    front = (tmp_path / "front.toml").read_text()
    front = front.replace('name = "summarizer"', 'name = "front"').replace('role = "Summarizer"', 'role = "Front desk"')
    front = front.replace('serves = ["summarize"]', 'serves = ["brief"]').replace(
        "delegates = []", 'delegates = ["summarize"]'
    )
    (tmp_path / "front.toml").write_text(front)
    (tmp_path / "org.toml").write_text(
        'name = "pair"\n[[agents]]\nbrief = "front.toml"\n[[agents]]\nbrief = "summarizer.toml"\n'
    )
    assert "2 agents, 2 processes" in mesh_cli("brief", "check", "org.toml", cwd=tmp_path)

    up = _spawn_up(tmp_path, broker.url)
    try:

        async def joined() -> bool:
            return {c.id for c in await mesh_client.agents()} == {"front", "summarizer"}

        await wait_for(joined, timeout=30, what="the org's two agents")
        record = await mesh_client.run("brief", "Summarize this for a newcomer.", data={"text": TEXT}, deadline_s=30)
        assert record.state == "done", record.error
        assert (
            "operating system process" in record.result
            and "[offline: summarizer has no model configured" in record.result
        )
        tree = await mesh_client.tree(record.id)
        assert [(r.capability, r.owner) for _, r in tree] == [("brief", "front"), ("summarize", "summarizer")]
    finally:
        up.send_signal(signal.SIGINT)  # drains its agents (a SIGKILL would orphan them)
        try:
            code = up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
            raise AssertionError("`mesh up` did not drain within 60 s:\n" + (tmp_path / "up.log").read_text()) from None
    assert code == 0, (tmp_path / "up.log").read_text()


def _spawn_up(directory: Path, server: str) -> subprocess.Popen[bytes]:
    with open(directory / "up.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "mesh", "up", "org.toml", "--server", server],
            cwd=directory,
            stderr=log,
            env={**os.environ, "MESH_MODEL": ""},
        )


async def test_a_question_from_delegated_work_travels_up_to_the_requester(
    start_agent: Callable[..., AgentProcess], agent_procs: object, mesh_client: Mesh
) -> None:
    # front (an offline llm agent) hands the task to `ambiguous`, whose agent asks
    # its requester, front; front passes the question up to the client, and back.
    start_agent("front", serves=["front"], delegates=["ambiguous"], kind="llm")
    start_agent("asker", serves=["ambiguous"], kind="mesh.faults:Asker", options={"question": "Which Python version?"})
    await agent_procs.ready(mesh_client)  # type: ignore[attr-defined]
    asked: list[TaskRecord] = []

    async def answer(question: TaskRecord) -> str:
        asked.append(question)
        return "3.11"

    record = await mesh_client.wait(await mesh_client.submit("front", "install it", deadline_s=30), on_question=answer)
    assert record.state == "done" and record.result == "install it -> using your answer: 3.11"
    assert [q.instruction for q in asked] == ["Which Python version?"]
    tree = await mesh_client.tree(record.id)
    assert [(r.capability, r.owner, r.state) for _, r in tree] == [
        ("front", "front", "done"),
        ("ambiguous", "asker", "done"),
        ("agent.front", "front", "done"),  # the asker's question, answered by front ...
        ("agent.test-client", "test-client", "done"),  # ... with the answer it got from its requester
    ]


async def test_review_of_own_results_rejects_or_passes(
    start_agent: Callable[..., AgentProcess], agent_procs: object, mesh_client: Mesh
) -> None:
    start_agent(
        "summarizer",
        serves=["summarize"],
        kind="extract",
        delegates=["critique"],
        review_results={"capability": "critique", "max_reworks": 0},
        options={"sentences": 2},
    )
    start_agent("critic", serves=["critique"], kind="critic")
    await agent_procs.ready(mesh_client)  # type: ignore[attr-defined]
    passed = await mesh_client.run(
        "summarize", "Summarize.", data={"text": TEXT}, criteria="must mention: lease", deadline_s=30
    )
    assert passed.state == "done" and "lease" in passed.result, passed.error
    rejected = await mesh_client.run(
        "summarize", "Summarize.", data={"text": TEXT}, criteria="must mention: zebra", deadline_s=30
    )
    assert (rejected.state, rejected.reason) == ("failed", "rejected")
    assert "does not mention zebra" in rejected.error
    tree = await mesh_client.tree(rejected.id)
    assert [(r.capability, r.owner) for _, r in tree[1:]] == [("critique", "critic")]
