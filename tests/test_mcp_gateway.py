"""MCP out: ``mesh mcp serve`` as a real process, driven by the SDK's own client
(ClientSession over stdio, and over streamable HTTP), with real agent processes on a
real broker behind it: submit and wait with progress notifications, agents, trace,
cancel, inbox and answer, and errors as MCP tool errors that leave it serving."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from mesh.broker import Broker, free_ports
from mesh.client import Mesh
from mesh.testing import AgentProcs, wait_for

mcp = pytest.importorskip("mcp")

from mcp import ClientSession, StdioServerParameters, stdio_client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402


def _gateway_args(broker: Broker, *extra: str) -> list[str]:
    return ["-m", "mesh", "mcp", "serve", "--server", broker.url, *extra]


def _gateway_env() -> dict[str, str]:
    """What the gateway needs of the test's environment: its key when the broker runs
    with auth (the SDK starts a stdio server with a minimal environment of its own)."""
    return {k: v for k, v in os.environ.items() if k in ("MESH_NKEY", "MESH_TLS_CA")} | {"MESH_LOG_LEVEL": "warning"}


@contextlib.asynccontextmanager
async def stdio_gateway(broker: Broker) -> AsyncIterator[tuple[ClientSession, str | None]]:
    params = StdioServerParameters(command=sys.executable, args=_gateway_args(broker), env=_gateway_env())
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session, None


@contextlib.asynccontextmanager
async def http_gateway(
    broker: Broker, *extra: str, token: str | None = None
) -> AsyncIterator[tuple[ClientSession, str | None]]:
    (port,) = free_ports(1)
    log = Path(broker.store or ".") / f"gateway-{port}.log"
    with log.open("wb") as errors:
        proc = await anyio.open_process(
            [sys.executable, *_gateway_args(broker, "--http", "--port", str(port), *extra)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            env={**os.environ, "MESH_LOG_LEVEL": "warning"},
        )
    async with proc:

        def listening() -> bool:
            if proc.returncode is not None:
                raise AssertionError(f"mesh mcp serve --http exited: {log.read_text()}")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        try:
            await wait_for(listening, what="the MCP gateway to listen")
            url = f"http://127.0.0.1:{port}/mcp"
            headers = {"authorization": f"Bearer {token}"} if token else {}
            async with (
                httpx.AsyncClient(headers=headers, timeout=30) as http,
                streamable_http_client(url, http_client=http) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                yield session, url
        finally:
            proc.terminate()
            with anyio.fail_after(10):
                await proc.wait()


def _data(result: Any) -> Any:
    assert not result.is_error, result.content
    return json.loads(result.content[0].text) if result.structured_content is None else _unwrap(result)


def _unwrap(result: Any) -> Any:
    value = result.structured_content
    return value["result"] if isinstance(value, dict) and set(value) == {"result"} else value


def _error(result: Any) -> str:
    assert result.is_error, result
    return str(result.content[0].text)


@pytest.fixture
async def org(agent_procs: AgentProcs, mesh_client: Mesh) -> AgentProcs:
    agent_procs.start("echoer", ["echo"], kind="echo")
    agent_procs.start("sleeper", ["slow"], kind="sleep", options={"seconds": 0.6, "steps": 3})
    await agent_procs.ready(mesh_client)
    return agent_procs


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_submit_and_wait_with_progress(broker: Broker, org: AgentProcs, transport: str) -> None:
    gateway = stdio_gateway if transport == "stdio" else http_gateway
    progress: list[tuple[float, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, message))

    async with gateway(broker) as (session, url):
        done = _data(
            await session.call_tool(
                "submit", {"capability": "slow", "text": "take your time"}, progress_callback=on_progress
            )
        )
        assert done["state"] == "done", done
        assert done["result"]["slept"] == 0.6
        assert progress, "no progress notifications"
        assert [v for v, _ in progress] == sorted(v for v, _ in progress)
        assert progress[-1] == (len(progress), "ended done"), progress
        assert any(m and "step 1/3" in m for _, m in progress), progress  # the claim event's note

        if url is not None:  # garbage at the HTTP endpoint: a clean refusal, and it goes on serving
            async with httpx.AsyncClient() as http:
                for body, headers in [
                    (b"\xff\x00 not json", {"content-type": "application/json"}),
                    (b'{"jsonrpc": "2.0", "method": 7}', {"content-type": "application/json"}),
                    (b"x" * 100_000, {"content-type": "text/plain"}),
                ]:
                    reply = await http.post(
                        url, content=body, headers={"accept": "application/json, text/event-stream", **headers}
                    )
                    assert 400 <= reply.status_code < 500, (reply.status_code, reply.text)
        echoed = _data(await session.call_tool("submit", {"capability": "echo", "text": "hi", "data": {"n": 1}}))
        assert echoed["state"] == "done"


async def test_wait_trace_agents_cancel_inbox_answer_and_errors(broker: Broker, org: AgentProcs) -> None:
    async with stdio_gateway(broker) as (session, _):
        names = {t.name for t in (await session.list_tools()).tools}
        assert names == {"submit", "wait", "agents", "trace", "cancel", "inbox", "answer"}

        cards = _data(await session.call_tool("agents", {}))
        assert {c["id"] for c in cards} >= {"echoer", "sleeper"}

        # submit without waiting, then wait (a short timeout first: the running task comes back)
        task = _data(await session.call_tool("submit", {"capability": "slow", "text": "x", "wait": False}))
        assert task["state"] == "open"
        early = _data(await session.call_tool("wait", {"task": task["id"], "timeout": 0.05}))
        assert early["state"] in ("open", "working") and "call `wait`" in early["note"]
        final = _data(await session.call_tool("wait", {"task": task["id"]}))
        assert final["state"] == "done"

        trace = _data(await session.call_tool("trace", {"task": task["id"]}))
        assert trace["tasks"][0]["id"] == task["id"]
        assert trace["events"][0]["kind"] == "created" and trace["events"][-1]["state"] == "done"

        # a task nobody serves, cancelled
        stuck = _data(await session.call_tool("submit", {"capability": "nobody", "text": "x", "wait": False}))
        cancelled = _data(await session.call_tool("cancel", {"task": stuck["id"], "note": "changed my mind"}))
        assert cancelled["state"] == "cancelled"

        # work for a person: the inbox lists it, answer finishes it
        ask = _data(
            await session.call_tool("submit", {"capability": "human.approve", "text": "Ship it?", "wait": False})
        )
        inbox = _data(await session.call_tool("inbox", {}))
        assert [i["id"] for i in inbox] == [ask["id"]] and inbox[0]["instruction"] == "Ship it?"
        answered = _data(await session.call_tool("answer", {"task": ask["id"], "text": "yes"}))
        assert answered["state"] == "done" and answered["result"] == "yes"
        assert _data(await session.call_tool("inbox", {})) == []

        # errors are MCP tool errors with our messages, and the gateway goes on serving
        assert "invalid task id" in _error(await session.call_tool("wait", {"task": "no such id!"}))
        assert "no such task" in _error(await session.call_tool("trace", {"task": "0123456789abcdef"}))
        assert "invalid capability" in _error(await session.call_tool("submit", {"capability": "Bad Cap", "text": "x"}))
        assert "deadline" in _error(
            await session.call_tool("submit", {"capability": "echo", "text": "x", "deadline": "soon"})
        )
        assert "review" in _error(await session.call_tool("submit", {"capability": "echo", "text": "x", "review": 99}))
        assert "data" in _error(
            await session.call_tool("submit", {"capability": "echo", "text": "x", "data": "y" * 2_000_000})
        )
        assert _data(await session.call_tool("submit", {"capability": "echo", "text": "still here"}))["state"] == "done"


def test_without_the_extra_it_says_how_to_install_it(tmp_path: Any) -> None:
    # A package named `mcp` that fails to import stands for the missing SDK.
    (tmp_path / "mcp").mkdir()
    (tmp_path / "mcp" / "__init__.py").write_text("raise ImportError('not installed')\n")
    out = subprocess.run(
        [sys.executable, "-m", "mesh", "mcp", "serve", "--server", "nats://127.0.0.1:1"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        timeout=30,
    )
    assert out.returncode == 2
    assert out.stderr == "mesh mcp: error: MCP needs the mcp extra: pip install 'agent-mesh[mcp]'\n"


async def test_the_gateway_uses_only_the_client_api() -> None:
    source = anyio.Path(__file__).parent.parent / "mesh" / "mcp.py"
    text = await source.read_text()
    assert "from .bus import" not in text.replace("from .bus import MeshError, NotFound", "")


async def test_garbage_on_stdio_leaves_the_gateway_serving(broker: Broker) -> None:
    from mcp_types.version import LATEST_HANDSHAKE_VERSION

    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": LATEST_HANDSHAKE_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "fuzz", "version": "0"},
        },
    }
    # (the SDK drops lines it cannot read; the next good one is answered)
    lines = [b"\xff\xfe not json\n", b'{"jsonrpc": "2.0", "id": 9, "method": 42}\n', b"[]\n"]
    lines.append(json.dumps(initialize).encode() + b"\n")
    async with await anyio.open_process(
        [sys.executable, *_gateway_args(broker)], env={**os.environ, "MESH_LOG_LEVEL": "warning"}
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        for line in lines:
            await proc.stdin.send(line)
        buffer = b""
        with anyio.fail_after(30):
            while b'"id":1,' not in buffer.replace(b" ", b""):
                buffer += await proc.stdout.receive()
        replies = [json.loads(line) for line in buffer.splitlines() if line.strip()]
        assert any(r.get("id") == 1 and "result" in r for r in replies), replies
        assert proc.returncode is None
        await proc.stdin.aclose()
        with anyio.fail_after(10):
            await proc.wait()


async def test_with_a_token_the_http_gateway_serves_only_requests_that_carry_it(
    broker: Broker, org: AgentProcs, tmp_path: Path
) -> None:
    token = "mcp-token-0123456789abcdef"
    path = tmp_path / "token"
    path.write_text(token)
    path.chmod(0o600)
    async with http_gateway(broker, "--host", "0.0.0.0", "--token-file", str(path), token=token) as (session, url):
        assert url is not None
        echoed = _data(await session.call_tool("submit", {"capability": "echo", "text": "hi"}))
        assert echoed["state"] == "done"
        async with httpx.AsyncClient() as http:
            for headers in ({}, {"authorization": "Bearer not-the-token-0123"}):
                reply = await http.post(
                    url,
                    json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                    headers={"accept": "application/json, text/event-stream", **headers},
                )
                assert reply.status_code == 401, (reply.status_code, reply.text)
