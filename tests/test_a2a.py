"""A2A in and out (docs/INTEROP.md): the SDK's client against real `mesh a2a serve`
processes with real agents behind them, and a remote A2A agent (the SDK's server, in
this process) as a member of an org through the `a2a` kind. Loopback HTTP, a real
nats-server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

pytest.importorskip("a2a.client")

from a2a.client import ClientConfig, create_client
from a2a.helpers import get_artifact_text, get_message_text, new_text_part
from a2a.types import (
    CancelTaskRequest,
    GetTaskRequest,
    Message,
    Role,
    SendMessageRequest,
    SubscribeToTaskRequest,
    TaskState,
)

from mesh.broker import Broker, free_ports
from mesh.client import Mesh
from mesh.testing import AgentProcs

pytestmark = pytest.mark.slow


class Gateway:
    """One `mesh a2a serve` process."""

    def __init__(self, broker: Broker, tmp: Path, *args: str) -> None:
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = tmp / f"gateway-{self.port}.log"
        cmd = [sys.executable, "-m", "mesh", "a2a", "serve", "--port", str(self.port), "--server", broker.url, *args]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=out)

    def ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        assert "A2A gateway at" in line, f"gateway did not start: {line!r}\n{self.log.read_text()}"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Gateways:
    def __init__(self, broker: Broker, tmp: Path) -> None:
        self.broker, self.tmp = broker, tmp
        self.started: list[Gateway] = []

    def start(self, *args: str) -> Gateway:
        gw = Gateway(self.broker, self.tmp, *args)
        self.started.append(gw)
        gw.ready()
        return gw


@pytest.fixture
def gateways(broker: Broker, tmp_path: Path) -> Iterator[Gateways]:
    out = Gateways(broker, tmp_path)
    try:
        yield out
    finally:
        for gw in out.started:
            gw.stop(signal.SIGKILL)


@pytest.fixture
async def echo_org(agent_procs: AgentProcs, mesh_client: Mesh) -> AgentProcs:
    agent_procs.start("echoer", ["echo"], kind="echo", brief="Says the instruction back.")
    agent_procs.start("asker", ["ambiguous"], kind="mesh.faults:Asker", options={"question": "Which file?"})
    agent_procs.start("sleeper", ["sleep"], kind="sleep", options={"seconds": 4.0, "steps": 8})
    await agent_procs.ready(mesh_client)
    return agent_procs


def message(text: str, *, skill: str = "", task_id: str = "") -> SendMessageRequest:
    msg = Message(message_id=uuid.uuid4().hex, role=Role.ROLE_USER, parts=[new_text_part(text)], task_id=task_id)
    if skill:
        msg.metadata.update({"skill": skill})
    return SendMessageRequest(message=msg)


async def client(url: str, *, streaming: bool = True) -> Any:
    return await create_client(url, ClientConfig(streaming=streaming))


def state(status: Any) -> str:
    return TaskState.Name(status.state).removeprefix("TASK_STATE_").lower()


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [r async for r in stream]


def last_state(responses: list[Any]) -> str:
    """The state a stream ended in: its last status update, or its task (a task already
    over when the stream began is reported as one task)."""
    last = responses[-1]
    return state(last.status_update.status if last.HasField("status_update") else last.task.status)


def artifacts(responses: list[Any]) -> list[Any]:
    out = [r.artifact_update.artifact for r in responses if r.HasField("artifact_update")]
    return out + [a for r in responses if r.HasField("task") for a in r.task.artifacts]


async def test_card_send_and_stream(echo_org: AgentProcs, gateways: Gateways) -> None:
    gw = gateways.start()
    async with httpx.AsyncClient() as http:
        card = (await http.get(gw.url + ".well-known/agent-card.json")).json()
    skills = {s["id"]: s["description"] for s in card["skills"]}
    assert skills["echo"] == "Says the instruction back."
    assert {"echo", "ambiguous", "sleep"} <= set(skills)

    blocking = await client(gw.url, streaming=False)
    [response] = await collect(blocking.send_message(message("hello", skill="echo")))
    assert state(response.task.status) == "completed"
    assert get_artifact_text(response.task.artifacts[0]) == "hello"
    await blocking.close()

    streaming = await client(gw.url)
    responses = await collect(streaming.send_message(message("one", skill="sleep")))
    states = [state(r.status_update.status) for r in responses if r.HasField("status_update")]
    assert responses[0].HasField("task")
    assert states[-1] == "completed" and "working" in states
    task_id = responses[0].task.id
    got = await streaming.get_task(GetTaskRequest(id=task_id))
    assert state(got.status) == "completed"
    await streaming.close()


async def test_input_required_round_trip(echo_org: AgentProcs, gateways: Gateways) -> None:
    gw = gateways.start("--claim-timeout", "1s")
    c = await client(gw.url)
    responses = await collect(c.send_message(message("open it", skill="ambiguous")))
    last = responses[-1].status_update.status
    assert state(last) == "input_required" and get_message_text(last.message) == "Which file?"
    task_id = responses[0].task.id
    # The answer may come much later than the question's claim timeout (1 s here): the
    # gateway holds the question meanwhile. (Waiting out that time is what is tested.)
    await anyio.sleep(2.5)
    got = await c.get_task(GetTaskRequest(id=task_id))
    assert state(got.status) == "input_required"
    responses = await collect(c.send_message(message("notes.txt", task_id=task_id)))
    assert last_state(responses) == "completed"
    [artifact] = artifacts(responses)
    assert get_artifact_text(artifact) == "open it -> using your answer: notes.txt"
    await c.close()


async def test_cancel(echo_org: AgentProcs, gateways: Gateways) -> None:
    gw = gateways.start()
    c = await client(gw.url, streaming=False)
    request = message("long", skill="sleep")
    request.configuration.return_immediately = True
    [response] = await collect(c.send_message(request))
    cancelled = await c.cancel_task(CancelTaskRequest(id=response.task.id))
    assert state(cancelled.status) == "canceled"
    await c.close()


async def test_a_killed_gateway_loses_no_task(echo_org: AgentProcs, gateways: Gateways) -> None:
    first, second = gateways.start(), gateways.start()
    c1 = await client(first.url)
    stream = c1.send_message(message("survive", skill="sleep"))
    task_id = (await anext(stream)).task.id
    first.stop(signal.SIGKILL)
    with pytest.raises(Exception):  # noqa: B017  (the SDK's transport error, whichever it is)
        async for _ in stream:
            pass
    c2 = await client(second.url)
    responses = await collect(c2.subscribe(SubscribeToTaskRequest(id=task_id)))
    assert last_state(responses) == "completed"
    await c2.close()


async def test_errors_have_a2a_codes_and_the_gateway_stays_up(echo_org: AgentProcs, gateways: Gateways) -> None:
    gw = gateways.start()
    headers = {"A2A-Version": "1.0"}

    async def rpc(body: Any) -> Any:
        async with httpx.AsyncClient() as http:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            response = await http.post(gw.url, content=raw, headers={**headers, "content-type": "application/json"})
            return response.json()

    def send(parts: list[Any], **meta: Any) -> dict[str, Any]:
        msg = {"messageId": "m1", "role": "ROLE_USER", "parts": parts, "metadata": meta}
        return {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": msg}}

    assert (await rpc(b"{not json"))["error"]["code"] == -32700
    assert (await rpc({"id": 1, "method": "SendMessage"}))["error"]["code"] == -32600
    assert (await rpc({"jsonrpc": "2.0", "id": 1, "method": "tasks/teleport"}))["error"]["code"] == -32601
    assert (await rpc(send([{"text": "x"}], skill="juggle")))["error"]["code"] == -32602
    assert (await rpc(send([{"text": "x" * 70_000}], skill="echo")))["error"]["code"] == -32602
    assert (await rpc(send([{"url": "http://x/y.png"}], skill="echo")))["error"]["code"] == -32005
    huge = await rpc(send([{"text": "x" * 2_000_000}], skill="echo"))
    assert (huge["error"]["code"], huge["error"]["message"]) == (-32600, "Payload too large")
    get = {"jsonrpc": "2.0", "id": 2, "method": "GetTask", "params": {"id": "nope"}}
    assert (await rpc(get))["error"]["code"] == -32001
    # 0.3 method names on the same endpoint
    v03 = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "message/send",
        "params": {
            "message": {
                "messageId": "m2",
                "role": "user",
                "parts": [{"kind": "text", "text": "old"}],
                "metadata": {"skill": "echo"},
            }
        },
    }
    headers.clear()
    result = (await rpc(v03))["result"]
    assert result["status"]["state"] == "completed"
    assert gw.proc.poll() is None


def test_missing_extra_is_one_line(tmp_path: Path) -> None:
    # A Python where the SDK cannot be imported: a path entry shadowing it.
    shadow = tmp_path / "shadow" / "a2a"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no a2a here')\n")
    env = {"PYTHONPATH": str(tmp_path / "shadow")}
    out = subprocess.run(
        [sys.executable, "-m", "mesh", "a2a", "serve"], capture_output=True, text=True, env={**os.environ, **env}
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "mesh a2a: error: A2A needs the SDK: pip install 'agent-mesh[a2a]'"


async def test_a_gateway_is_a_remote_member_of_another_mesh(
    echo_org: AgentProcs, gateways: Gateways, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mesh B's agent `far` (kind a2a) forwards to mesh A's gateway: a question asked in
    mesh A reaches the requester in mesh B and its answer comes back."""
    gw = gateways.start()
    monkeypatch.delenv("MESH_NKEY", raising=False)  # mesh B's broker is an open one, whatever mesh A's is
    store = tmp_path / "b"
    store.mkdir()
    other = Broker(store=str(store))
    other.start()
    try:
        procs = AgentProcs(other, tmp_path / "b")
        try:
            procs.start("far", ["far"], kind="a2a", options={"url": gw.url, "skill": "ambiguous"})
            async with await Mesh.connect(other.url) as b:
                await procs.ready(b)

                async def answer(question: Any) -> str:
                    assert question.instruction == "Which file?"
                    return "a.txt"

                final = await b.wait(await b.submit("far", "open"), on_question=answer)
                assert (final.state, final.result) == ("done", "open -> using your answer: a.txt")
        finally:
            procs.stop_all()
    finally:
        other.stop()


def token_file(tmp: Path, token: str = "s3cret-token-0123456789", mode: int = 0o600) -> Path:
    path = tmp / f"token-{mode:o}"
    path.write_text(token + "\n")
    path.chmod(mode)
    return path


async def test_a_gateway_with_a_token_refuses_requests_without_it(
    echo_org: AgentProcs, gateways: Gateways, tmp_path: Path
) -> None:
    # Listening beyond loopback is what needs a token; loopback still reaches it.
    gw = gateways.start("--host", "0.0.0.0", "--token-file", str(token_file(tmp_path)))
    async with httpx.AsyncClient() as http:
        reply = await http.get(gw.url + ".well-known/agent-card.json")  # discovery stays public
        assert reply.status_code == 200
        card = reply.json()
        assert card["securitySchemes"]["bearer"]["httpAuthSecurityScheme"]["scheme"] == "Bearer", card
        for headers in ({}, {"authorization": "Bearer wrong-token-0123456789"}, {"authorization": "s3cret"}):
            refused = await http.post(gw.url, json={"jsonrpc": "2.0", "id": 1, "method": "GetTask"}, headers=headers)
            assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    authorized = httpx.AsyncClient(headers={"authorization": "Bearer s3cret-token-0123456789"}, timeout=30)
    a2a = await create_client(gw.url, ClientConfig(streaming=False, httpx_client=authorized))
    try:
        [response] = await collect(a2a.send_message(message("with a token", skill="echo")))
        assert state(response.task.status) == "completed"
        assert get_artifact_text(response.task.artifacts[0]) == "with a token"
    finally:
        await a2a.close()
        await authorized.aclose()


@pytest.mark.parametrize(
    "args, says",
    [
        (["--host", "0.0.0.0"], "would let anyone who reaches the port act as its key: pass --token-file FILE"),
        (["--token-file", "{open}"], "is readable by others (mode 0644)"),
        (["--token-file", "{short}"], "use at least 16"),
        (["--token-file", "{missing}"], "does not exist; make one with"),
    ],
)
def test_gateway_token_mistakes_are_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    files = {
        "{open}": str(token_file(tmp_path, mode=0o644)),
        "{short}": str(token_file(tmp_path, "short", mode=0o600)),
        "{missing}": str(tmp_path / "nope"),
    }
    argv = [files.get(a, a) for a in args]
    for command in (["a2a", "serve"], ["mcp", "serve", "--http"], ["ui"]):
        proc = subprocess.run(
            [sys.executable, "-m", "mesh", *command, *argv, "--server", "nats://127.0.0.1:1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, (command, proc.stderr)
        assert says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, (command, proc.stderr)
