"""MCP in: an LLM agent (a real process; the model replaced by litellm's mocks with
tool calls) whose brief lists a real stdio MCP server (tests/mcp_tool_server.py,
written with the SDK's MCPServer) calls its tools: the output reaches the model,
the call shows in the task's progress, a reported cost is charged, and a failing or
hanging tool is reported to the model without holding the task."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import msgspec
import pytest

from agents.mcp_tools import McpTools
from mesh.briefs import Brief, BriefError, load_brief
from mesh.broker import free_ports
from mesh.client import Mesh
from mesh.kinds import KindError
from mesh.process import AgentProcess
from mesh.testing import AgentProcs, wait_for
from protocol import Budget, TaskRecord

SERVER = Path(__file__).parent.parent / "mcp_tool_server.py"
MODEL = "openai/gpt-4o-mini"


def finish(result: str) -> dict[str, object]:
    return {"tool": "finish", "args": {"result": result}}


@pytest.fixture(scope="module")
def calls_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mcp") / "calls.jsonl"


@pytest.fixture(scope="module")
def toolsmith(shared_start: Callable[..., AgentProcess], shared_procs: AgentProcs, calls_log: Path) -> AgentProcs:
    shared_start(
        "toolsmith",
        kind="llm",
        model=MODEL,
        serves=["shout", "hang", "broken", "priced"],
        capacity=4,
        mcp_servers=[
            {
                "name": "tools",
                "command": [sys.executable, str(SERVER)],
                "env": {"MCP_TEST_LOG": str(calls_log)},
                "timeout_s": 1.0,
            }
        ],
        options={
            "mock_responses": {
                "shout": [{"tool": "tools__shout", "args": {"text": "hello"}}, finish("HELLO")],
                "hang": [{"tool": "tools__hang", "args": {}}, finish("went on without it")],
                "broken": [{"tool": "tools__broken", "args": {"why": "no disk"}}, finish("reported it")],
                "priced": [{"tool": "tools__priced", "args": {"text": "x"}}, finish("paid")],
            }
        },
    )
    return shared_procs


async def _run(mesh: Mesh, procs: AgentProcs, capability: str, **kwargs: object) -> TaskRecord:
    await procs.ready(mesh, "toolsmith", timeout=90)  # litellm and the MCP server start first: seconds
    record = await mesh.run(capability, f"Use the {capability} tool.", **kwargs)  # type: ignore[arg-type]
    return record


def _calls(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


async def test_calls_a_stdio_tool_and_finishes_with_its_output(
    shared_client: Mesh, toolsmith: AgentProcs, calls_log: Path
) -> None:
    record = await _run(shared_client, toolsmith, "shout")
    assert record.state == "done", record
    assert record.result == "HELLO"
    assert {"tool": "shout", "args": {"text": "hello"}} in _calls(calls_log)  # the server ran it
    # The turn's progress line names the call: tool, arguments' digest, outcome, duration.
    assert re.fullmatch(r"turn 1: tools__shout \([0-9a-f]{12}\) ok in \d+ ms \(.+\)", record.progress), record.progress


async def test_a_hanging_tool_times_out_and_the_task_still_ends(shared_client: Mesh, toolsmith: AgentProcs) -> None:
    started = time.monotonic()
    record = await _run(shared_client, toolsmith, "hang", deadline_s=30)
    assert record.state == "done", record
    assert record.result == "went on without it"
    assert time.monotonic() - started < 15
    assert "tools__hang" in record.progress and "timed out in 1" in record.progress, record.progress


async def test_a_failing_tool_is_reported_to_the_model(shared_client: Mesh, toolsmith: AgentProcs) -> None:
    record = await _run(shared_client, toolsmith, "broken")
    assert record.state == "done", record  # the model was told, and went on
    assert "tools__broken" in record.progress and " error in " in record.progress, record.progress


async def test_a_reported_cost_is_charged_to_the_budget(shared_client: Mesh, toolsmith: AgentProcs) -> None:
    record = await _run(shared_client, toolsmith, "priced", budget=Budget(tokens=100_000, cost=10.0))
    assert record.state == "done", record
    assert record.spent.cost >= 0.25
    assert record.spent.tokens >= 100
    # The task's events say where the budget went: the tool call's charge names it.
    charges = [e.note for e in await shared_client.history(record.root) if e.kind == "charge" and e.task == record.id]
    assert any(re.fullmatch(r"mcp tools__priced \([0-9a-f]{12}\) ok in \d+ ms", note) for note in charges), charges


# --- the tools' outcomes, in process (the same server, no broker) ---------------------------


def _brief(**server: object) -> Brief:
    fields = {"name": "tools", "command": [sys.executable, str(SERVER)], **server}
    return msgspec.convert({"name": "t", "serves": ["x"], "kind": "llm", "mcp_servers": [fields]}, Brief)


async def test_what_the_model_reads_of_each_outcome() -> None:
    tools = McpTools(_brief(timeout_s=0.5))
    async with anyio.create_task_group() as tg:
        await tg.start(tools.serve)
        assert set(tools.tools) == {"tools__shout", "tools__noop", "tools__hang", "tools__broken", "tools__priced"}
        schema = tools.tools["tools__shout"].schema["function"]
        assert schema["parameters"]["required"] == ["text"]
        ok = await tools.call("tools__shout", {"text": "hi"})
        assert (ok.text, ok.status) == ("HI", "ok")
        failed = await tools.call("tools__broken", {"why": "no disk"})
        assert failed.status == "error" and "cannot do that: no disk" in failed.text
        hung = await tools.call("tools__hang", {})
        assert hung.status == "timed out" and "did not answer within 0.5 s" in hung.text
        assert 0.5 <= hung.seconds < 2
        sooner = await tools.call("tools__hang", {}, within=0.1)  # the task's deadline is nearer
        assert sooner.seconds < 0.5
        bad = await tools.call("tools__shout", {"wrong": 1})
        assert bad.status == "error" and "text" in bad.text
        priced = await tools.call("tools__priced", {"text": "x"})
        assert (priced.tokens, priced.cost) == (100, 0.25)
        tg.cancel_scope.cancel()


async def test_a_streamable_http_server(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    with (tmp_path / "server.log").open("wb") as errors:
        proc = await anyio.open_process(
            [sys.executable, str(SERVER), "--http", str(port)], stdin=subprocess.DEVNULL, stdout=errors, stderr=errors
        )
    async with proc:
        try:

            def listening() -> bool:
                assert proc.returncode is None, (tmp_path / "server.log").read_text()
                with socket.socket() as s:
                    return s.connect_ex(("127.0.0.1", port)) == 0

            await wait_for(listening, what="the MCP server to listen")
            brief = msgspec.convert(
                {
                    "name": "t",
                    "serves": ["x"],
                    "mcp_servers": [{"name": "web", "url": f"http://127.0.0.1:{port}/mcp", "timeout_s": 0.5}],
                },
                Brief,
            )
            tools = McpTools(brief)
            async with anyio.create_task_group() as tg:
                await tg.start(tools.serve)
                ok = await tools.call("web__shout", {"text": "over http"})
                assert (ok.text, ok.status) == ("OVER HTTP", "ok")
                hung = await tools.call("web__hang", {})
                assert hung.status == "timed out"
                tg.cancel_scope.cancel()
        finally:
            proc.terminate()
            with anyio.fail_after(10):
                await proc.wait()


async def test_only_the_listed_tools() -> None:
    tools = McpTools(_brief(tools=["shout"]))
    async with anyio.create_task_group() as tg:
        await tg.start(tools.serve)
        assert set(tools.tools) == {"tools__shout"}
        tg.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("server", "says"),
    [
        ({"command": ["/nonexistent/tool-server"]}, "MCP server 'tools' (/nonexistent/tool-server) cannot start"),
        ({"command": [sys.executable, "-c", "pass"]}, "MCP server 'tools' ("),
        ({"tools": ["shout", "fly"]}, "has no tool(s) fly; it lists broken, hang, noop, priced, shout"),
        ({"command": [sys.executable, "-c", "import time; time.sleep(30)"], "connect_timeout_s": 0.5}, "within 0.5 s"),
    ],
)
async def test_a_server_that_cannot_serve_stops_the_start_with_one_line(server: dict[str, object], says: str) -> None:
    tools = McpTools(_brief(**server))
    with pytest.raises(KindError) as caught:
        await tools.serve()
    assert says in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("server", "says"),
    [
        ({"url": "http://127.0.0.1:1/mcp"}, "give either `command`"),
        ({"command": [], "url": "ftp://x"}, "is not an http:// or https:// URL"),
        ({"command": [], "url": "http://h/mcp", "cwd": "/tmp"}, "`env` and `cwd` are for a `command`"),
        ({"name": "a__b"}, "field `mcp_servers[0].name`"),
        ({"timeout_s": float("nan")}, "field `mcp_servers[0].timeout_s`"),
        ({"command": ["python", " "]}, "remove the empty entry"),
        ({"tools": ["no way"]}, "invalid tool name"),
    ],
)
def test_brief_mcp_servers_are_checked(tmp_path: Path, server: dict[str, object], says: str) -> None:
    fields = {"name": "tools", "command": ["python", "srv.py"], **server}
    table = ", ".join(f"{k} = {'nan' if v != v else json.dumps(v)}" for k, v in fields.items())  # (JSON is TOML here)
    path = tmp_path / "b.toml"
    path.write_text(f'name = "t"\nserves = ["x"]\nmcp_servers = [{{ {table} }}]\n')
    with pytest.raises(BriefError, match=re.escape(says)):
        load_brief(path)
