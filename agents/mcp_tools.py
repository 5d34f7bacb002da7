"""MCP tools for model-calling agents: the servers a brief lists in ``mcp_servers``.

Each server is connected once per agent (a stdio server is started as the agent's
child process; an HTTP one is dialled), in a task of the agent's own task group
(:meth:`McpTools.serve`), and closed when the agent stops. Their tools are offered
to the model as ``<server>__<tool>``, next to the protocol's actions.

A call never holds the agent: it has the server's ``timeout_s`` (and no more than
the task's deadline leaves), and a failure, an error result or a timeout comes back
to the model as text it can act on. A result may report what it cost in its
``_meta`` under ``agent-mesh/usage`` (``{"tokens": N, "cost": USD}``): that is
charged to the task's budget like a model call.

The SDK (``mcp``, the ``mcp`` extra) is imported only when a brief lists servers.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import structlog

from mesh.briefs import Brief, McpServer
from mesh.kinds import KindError

from .tools import tool_schema

__all__ = ["McpTool", "McpTools", "Outcome", "USAGE_META", "digest"]

log = structlog.get_logger("agents.mcp")

#: the ``_meta`` key under which a tool result may report its cost
USAGE_META = "agent-mesh/usage"

#: the most of a tool's output the model is shown, in characters
OUTPUT_CHARS = 16_000


def digest(args: dict[str, Any]) -> str:
    """A short fingerprint of a call's arguments, for progress and logs (the
    arguments themselves may be large or private)."""
    canonical = json.dumps(args, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class McpTool:
    """One tool of one server, as the model sees it."""

    server: str
    name: str
    schema: dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    """What came of one call: the text for the model, and what the progress line says."""

    text: str
    status: str
    seconds: float
    tokens: int = 0
    cost: float = 0.0


def _model_name(server: str, tool: str) -> str:
    """``server__tool`` in the characters every provider accepts for a function name."""
    return f"{server}__{re.sub(r'[^A-Za-z0-9_-]', '_', tool)}"[:64]


def _text(result: Any) -> str:
    parts = []
    for block in result.content:
        text = getattr(block, "text", None)
        parts.append(text if isinstance(text, str) else f"[{getattr(block, 'type', 'content')} omitted]")
    if result.structured_content is not None and not parts:
        parts.append(json.dumps(result.structured_content, default=str))
    out = "\n".join(parts)
    if len(out) > OUTPUT_CHARS:
        out = out[:OUTPUT_CHARS] + f"\n[... {len(out) - OUTPUT_CHARS} more characters cut]"
    return out


def _usage(result: Any) -> tuple[int, float]:
    usage = (result.meta or {}).get(USAGE_META)
    if not isinstance(usage, dict):
        return 0, 0.0
    tokens, cost = usage.get("tokens", 0), usage.get("cost", 0.0)
    ok = (
        isinstance(tokens, int)
        and not isinstance(tokens, bool)
        and tokens >= 0
        and isinstance(cost, (int, float))
        and 0 <= cost < float("inf")
    )
    return (tokens, float(cost)) if ok else (0, 0.0)


def _leaf(exc: BaseException) -> BaseException:
    """The one error inside nested exception groups (the transports' task groups wrap them)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class McpTools:
    """The MCP servers of one brief, their sessions and their tools."""

    def __init__(self, brief: Brief) -> None:
        self.brief = brief
        self.servers = brief.mcp_servers
        #: by the name the model calls them
        self.tools: dict[str, McpTool] = {}
        self._sessions: dict[str, Any] = {}
        self._timeouts = {s.name: s.timeout_s for s in self.servers}
        if self.servers:
            from mesh.mcp import McpUnavailable, import_mcp

            try:
                import_mcp()
            except McpUnavailable as exc:
                raise KindError(f"brief {brief.name!r}: field `mcp_servers`: {exc}") from None

    def schemas(self) -> list[dict[str, Any]]:
        return [t.schema for t in self.tools.values()]

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect to every server, then hold the connections until cancelled (the
        agent's shutdown); a server that cannot be reached stops the agent's start
        with a :class:`KindError` naming it."""
        if not self.servers:
            task_status.started()
            return
        try:
            async with anyio.create_task_group() as tg:
                for server in self.servers:
                    await tg.start(self._hold, server)
                log.info("mcp tools ready", agent=self.brief.name, tools=sorted(self.tools))
                task_status.started()
                await anyio.sleep_forever()
        except BaseExceptionGroup as group:  # the one error of a server that could not start, as itself
            leaf = _leaf(group)
            if isinstance(leaf, KindError):
                raise leaf from None
            raise

    async def _hold(self, server: McpServer, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        from mcp import ClientSession

        what = " ".join(server.command) if server.command else server.url
        ready = False
        try:
            async with self._transport(server) as (read, write), ClientSession(read, write) as session:
                with anyio.fail_after(server.connect_timeout_s):
                    await session.initialize()
                    listing = await session.list_tools()
                self._add(server, listing.tools)
                self._sessions[server.name] = session
                ready = True
                task_status.started()
                await anyio.sleep_forever()
        except Exception as exc:  # the SDK's and the transport's many errors: one line naming the server
            leaf = _leaf(exc)
            if ready:
                # Gone while the agent runs: its tools answer "not connected"; the agent goes on.
                log.warning("mcp server lost", agent=self.brief.name, server=server.name, error=repr(leaf))
                return
            if isinstance(leaf, KindError):
                raise leaf from None
            if isinstance(leaf, TimeoutError):
                why = f"did not answer within {server.connect_timeout_s:g} s (its connect_timeout_s)"
            elif isinstance(leaf, (OSError, ValueError)):
                why = f"cannot start: {leaf}"
            else:
                why = f"failed: {type(leaf).__name__}: {' '.join(str(leaf).split()) or 'no message'}"
            raise KindError(f"brief {self.brief.name!r}: MCP server {server.name!r} ({what}) {why}") from None
        finally:
            self._sessions.pop(server.name, None)

    def _transport(self, server: McpServer) -> Any:
        if server.url is not None:
            from mcp.client.streamable_http import streamable_http_client

            return streamable_http_client(server.url)
        from mcp import StdioServerParameters, stdio_client

        params = StdioServerParameters(
            command=server.command[0], args=list(server.command[1:]), env=dict(server.env) or None, cwd=server.cwd
        )
        return stdio_client(params)

    def _add(self, server: McpServer, tools: list[Any]) -> None:
        listed = {t.name for t in tools}
        missing = [t for t in server.tools if t not in listed]
        if missing:
            raise KindError(
                f"brief {self.brief.name!r}: MCP server {server.name!r} has no tool(s) {', '.join(missing)}; "
                f"it lists {', '.join(sorted(listed)) or 'none'}"
            )
        for tool in tools:
            if server.tools and tool.name not in server.tools:
                continue
            name = _model_name(server.name, tool.name)
            schema = tool_schema(name, (tool.description or tool.name)[:1024], {})
            schema["function"]["parameters"] = tool.input_schema or {"type": "object", "properties": {}}
            self.tools[name] = McpTool(server=server.name, name=tool.name, schema=schema)

    async def call(self, name: str, args: dict[str, Any], *, within: float | None = None) -> Outcome:
        """Call the tool the model knows as ``name``: its text, or the error, timeout or
        failure as text, in at most the server's timeout (or ``within`` seconds, if less)."""
        tool = self.tools[name]
        timeout = self._timeouts[tool.server]
        if within is not None:
            timeout = max(0.0, min(timeout, within))
        started = time.monotonic()

        def outcome(text: str, status: str, tokens: int = 0, cost: float = 0.0) -> Outcome:
            return Outcome(text, status, time.monotonic() - started, tokens, cost)

        session = self._sessions.get(tool.server)
        if session is None:
            return outcome(f"error: MCP server {tool.server!r} is not connected", "not connected")
        try:
            with anyio.move_on_after(timeout) as scope:
                result = await session.call_tool(tool.name, args)
        except Exception as exc:  # the server went away, or refused the call: the model's information
            first = " ".join(str(exc).split())[:500] or type(exc).__name__
            return outcome(f"error: {name} failed: {type(exc).__name__}: {first}", "failed")
        if scope.cancelled_caught:
            return outcome(
                f"error: {name} did not answer within {timeout:g} s and was abandoned (timed out); "
                "try other arguments, another tool, or go on without it",
                "timed out",
            )
        tokens, cost = _usage(result)
        text = _text(result)
        if result.is_error:
            return outcome(f"error: {name} failed: {text}", "error", tokens, cost)
        return outcome(text, "ok", tokens, cost)
