"""What MCP costs: an MCP tool call in an agent, and a task through ``mesh mcp serve``
against the same task through ``mesh.Mesh`` directly, in one run.

1. *Tool call*: p50 of calls to a no-op tool of a stdio MCP server (tests/
   mcp_tool_server.py, the SDK's MCPServer) through :class:`agents.mcp_tools.McpTools`,
   the code an LLM agent calls its MCP tools with (one session, connected once).
2. *Gateway*: one broker, one echo agent process; a client in this process alternates
   blocks of sequential no-op tasks between ``Mesh.run`` and the ``submit`` tool of a
   ``mesh mcp serve`` child process driven over stdio by the SDK's ClientSession (its
   ``wait``: submit and wait), so both sides of the ratio are measured in the same
   seconds.

    .venv/bin/python -m bench.mcp            # 3 x 200 tasks each side, 1000 tool calls
    .venv/bin/python -m bench.mcp --quick    # a smoke run

Not part of ``bench.run``'s report: printed and written to bench/results/mcp.json.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec

from bench.common import (
    REPO,
    AgentRun,
    agent_runs,
    dist_ms,
    progress,
    ratio,
    run_standalone,
    spread,
    write_brief,
)
from bench.drive import mesh_sequential

NAME = "mcp"
TOOL_SERVER = REPO / "tests" / "mcp_tool_server.py"


async def _tool_calls(n: int) -> dict[str, float]:
    from agents.mcp_tools import McpTools
    from mesh.briefs import Brief

    brief = msgspec.convert(
        {
            "name": "bench",
            "serves": ["x"],
            "mcp_servers": [{"name": "tools", "command": [sys.executable, str(TOOL_SERVER)], "tools": ["noop"]}],
        },
        Brief,
    )
    tools = McpTools(brief)
    out = []
    async with anyio.create_task_group() as tg:
        await tg.start(tools.serve)
        for _ in range(max(n // 10, 1)):  # warm-up
            await tools.call("tools__noop", {})
        for _ in range(n):
            t = time.perf_counter()
            outcome = await tools.call("tools__noop", {})
            out.append(time.perf_counter() - t)
            assert outcome.status == "ok", outcome
        tg.cancel_scope.cancel()
    return dist_ms(out)


async def _gateway_sequential(session: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        result = await session.call_tool("submit", {"capability": "echo", "text": "ping"})
        out.append(time.perf_counter() - t)
        if result.is_error or (result.structured_content or {}).get("state") != "done":
            raise RuntimeError(f"a task through the gateway did not end done: {result}")
    return out


async def _submit_wait_sequential(mesh: Any, n: int) -> list[float]:
    """What the gateway does per task, without MCP: submit, then wait answering questions."""
    from mesh.mcp import NO_QUESTIONS

    async def no_answers(_question: Any) -> str:
        return NO_QUESTIONS

    out = []
    for _ in range(n):
        t = time.perf_counter()
        record = await mesh.wait(await mesh.submit("echo", "ping"), on_question=no_answers)
        out.append(time.perf_counter() - t)
        if record.state != "done":
            raise RuntimeError(f"a task did not end done: {record}")
    return out


async def _measure(url: str, n: int, repeats: int, warmup: int, block: int) -> Any:
    from mcp import ClientSession, StdioServerParameters, stdio_client

    from mesh.client import Mesh

    params = StdioServerParameters(
        command=sys.executable, args=["-m", "mesh", "mcp", "serve", "--server", url], env={"MESH_LOG_LEVEL": "warning"}
    )
    runs = []
    pooled: dict[str, list[float]] = {"direct": [], "submit_wait": [], "gateway": []}
    async with (
        await Mesh.connect(url, client_id="bench-direct") as mesh,
        stdio_client(params) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        await mesh_sequential(mesh, warmup)
        await _gateway_sequential(session, warmup)
        for rep in range(repeats):
            got: dict[str, list[float]] = {"direct": [], "submit_wait": [], "gateway": []}
            sides = {
                "direct": lambda: mesh_sequential(mesh, block),
                "submit_wait": lambda: _submit_wait_sequential(mesh, block),
                "gateway": lambda: _gateway_sequential(session, block),
            }
            for i in range(max(n // block, 1)):
                order = list(sides) if i % 2 == 0 else list(reversed(sides))  # neither always follows the other
                for key in order:
                    got[key] += await sides[key]()
            run = {k: dist_ms(v) for k, v in got.items()}
            runs.append(run)
            for k, v in got.items():
                pooled[k] += v
            progress(
                NAME,
                f"repeat {rep + 1}/{repeats}: p50 Mesh.run {run['direct']['p50']:.2f} ms, via mesh mcp serve "
                f"{run['gateway']['p50']:.2f} ms (x{ratio(run['gateway']['p50'], run['direct']['p50']):.2f}); "
                f"Mesh.submit + Mesh.wait {run['submit_wait']['p50']:.2f} ms",
            )
    both = {k: dist_ms(v) for k, v in pooled.items()}
    return {
        "n": n,
        "block": block,
        "repeats": repeats,
        "runs": runs,
        "summary": {
            "direct_p50": spread([r["direct"]["p50"] for r in runs]),
            "gateway_p50": spread([r["gateway"]["p50"] for r in runs]),
            "ratio_gateway_direct_p50": spread([ratio(r["gateway"]["p50"], r["direct"]["p50"]) for r in runs]),
            "pooled": {
                "direct_p50": both["direct"]["p50"],
                "direct_p99": both["direct"]["p99"],
                "submit_wait_p50": both["submit_wait"]["p50"],
                "gateway_p50": both["gateway"]["p50"],
                "gateway_p99": both["gateway"]["p99"],
                "ratio_p50": ratio(both["gateway"]["p50"], both["direct"]["p50"]),
                "ratio_p99": ratio(both["gateway"]["p99"], both["direct"]["p99"]),
                "ratio_gateway_submit_wait_p50": ratio(both["gateway"]["p50"], both["submit_wait"]["p50"]),
            },
        },
    }


def main(quick: bool = False) -> dict[str, Any]:
    from mesh.broker import Broker

    n, repeats, warmup, block, calls = (20, 1, 5, 10, 50) if quick else (200, 3, 20, 20, 1000)
    progress(NAME, f"{calls} calls of a no-op stdio MCP tool")
    tool = anyio.run(_tool_calls, calls)
    progress(NAME, f"tool call p50 {tool['p50']:.3f} ms, p99 {tool['p99']:.3f} ms")
    with tempfile.TemporaryDirectory(prefix="bench-mcp-") as tmp, Broker(store=tmp + "/js") as broker:
        d = Path(tmp)
        echo = write_brief(d, "echo", ["echo"], kind="echo", capacity=64)
        with agent_runs([AgentRun(echo, broker.url, "echo", d)]):
            progress(NAME, f"one echo agent; {repeats} x {n} tasks per side")
            result: dict[str, Any] = anyio.run(_measure, broker.url, n, repeats, warmup, block)
    result["summary"]["tool_call_ms"] = tool
    result["setup"] = (
        "1 broker, 1 echo agent process; Mesh.run in the bench process against the submit tool of a "
        "`mesh mcp serve` child over stdio (the SDK's ClientSession); tool calls: McpTools on a no-op stdio tool"
    )
    return result


if __name__ == "__main__":
    run_standalone(NAME, __doc__, main)
