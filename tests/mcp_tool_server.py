"""A tiny MCP server (the SDK's MCPServer over stdio) for the MCP tests: an agent
whose brief lists it calls these tools (over stdio; with ``--http PORT``, streamable
HTTP at http://127.0.0.1:PORT/mcp). ``MCP_TEST_LOG`` names a file each call
appends its tool name and arguments to, so a test sees what the agent called."""

from __future__ import annotations

import json
import os
import sys

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent

server = MCPServer(name="test-tools", log_level="WARNING")


def _log(tool: str, **args: object) -> None:
    path = os.environ.get("MCP_TEST_LOG")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"tool": tool, "args": args}) + "\n")


@server.tool()
def shout(text: str) -> str:
    """Return the text in capitals."""
    _log("shout", text=text)
    return text.upper()


@server.tool()
def noop() -> str:
    """Do nothing (for measuring a call's overhead)."""
    return ""


@server.tool()
async def hang() -> str:
    """Never answer."""
    _log("hang")
    await anyio.sleep_forever()
    return ""


@server.tool()
def broken(why: str = "the disk is on fire") -> str:
    """Fail with a message."""
    _log("broken", why=why)
    raise ToolError(f"cannot do that: {why}")


@server.tool()
def priced(text: str) -> CallToolResult:
    """Answer, and report what the call cost."""
    _log("priced", text=text)
    return CallToolResult(
        content=[TextContent(type="text", text=f"priced: {text}")],
        _meta={"agent-mesh/usage": {"tokens": 100, "cost": 0.25}},
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--http":  # streamable HTTP on this port
        server.run("streamable-http", port=int(sys.argv[2]))
    else:
        server.run()
