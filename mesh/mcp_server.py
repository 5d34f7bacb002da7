"""The MCP tools of ``mesh mcp serve`` (:mod:`mesh.mcp`), declared with the SDK's
``MCPServer``. Imported only when serving: it imports the SDK.

No ``from __future__ import annotations`` here: the SDK reads the tools' annotations
at registration to build their input schemas, and must be able to evaluate them."""

from collections.abc import Awaitable
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from .mcp import Gateway, Progress, message

__all__ = ["build"]


def build(gateway: Gateway, *, name: str = "agent-mesh") -> MCPServer:
    """An ``MCPServer`` whose tools call ``gateway``."""

    server = MCPServer(
        name=name,
        instructions="Delegate work to an agent-mesh organization: `agents` lists who serves which "
        "capabilities; `submit` hands a task to a capability and (by default) waits for the result; "
        "`trace` shows how a task went.",
        log_level="WARNING",
    )

    async def guarded(call: Awaitable[Any]) -> Any:
        try:
            return await call
        except Exception as exc:  # every failure is the caller's information, and the gateway stays up
            raise ToolError(message(exc)) from None

    def reporter(ctx: Context) -> Progress | None:
        """Progress notifications for this call, or None if the caller asked for none
        (then the task's events are not followed at all)."""
        meta = ctx.request_context.meta or {}
        if meta.get("progress_token", meta.get("progressToken")) is None:
            return None

        async def report(count: float, line: str) -> None:
            await ctx.report_progress(count, None, line)

        return report

    @server.tool()
    async def submit(
        capability: str,
        text: str,
        ctx: Context,
        data: Any = None,
        criteria: str = "",
        review: int = 0,
        reviewer: str = "review",
        deadline: float | str | None = None,
        wait: bool = True,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Hand a task to the agents serving `capability` (dotted, e.g. `summarize.medical`).

        `text` is the instruction, `data` optional JSON input, `criteria` what reviewers check,
        `review` how many approvals from `reviewer` agents the result needs (0: none), `deadline`
        seconds or a duration like "5m". With `wait` (the default) it returns the final task (its
        `result`, or why it failed), reporting progress as the agents work; after `timeout` seconds
        it returns the running task instead (then call `wait`)."""
        return await guarded(  # type: ignore[no-any-return]
            gateway.submit(
                capability,
                text,
                data=data,
                criteria=criteria,
                review=review,
                reviewer=reviewer,
                deadline=deadline,
                wait=wait,
                timeout=timeout,
                progress=reporter(ctx),
            )
        )

    @server.tool()
    async def wait(task: str, ctx: Context, timeout: float | None = None) -> dict[str, Any]:
        """Wait for a task to end and return it (its `result`, or `reason` and `error`); after
        `timeout` seconds, return it as it is."""
        return await guarded(gateway.wait(task, timeout=timeout, progress=reporter(ctx)))  # type: ignore[no-any-return]

    @server.tool()
    async def agents() -> list[dict[str, Any]]:
        """The live agents: id, role, the capabilities each serves, whom it delegates to, its load."""
        return await guarded(gateway.agents())  # type: ignore[no-any-return]

    @server.tool()
    async def trace(task: str) -> dict[str, Any]:
        """A task's tree (its subtasks, owners, states, results) and its events, in order; an
        event no verified write backs (events are unsigned) is marked `"unbacked": true`."""
        return await guarded(gateway.trace(task))  # type: ignore[no-any-return]

    @server.tool()
    async def cancel(task: str, note: str = "") -> dict[str, Any]:
        """Cancel a task and every subtask still running."""
        return await guarded(gateway.cancel(task, note))  # type: ignore[no-any-return]

    @server.tool()
    async def inbox(capability: str = "human") -> list[dict[str, Any]]:
        """Work waiting for a person: open tasks of `capability` (default `human`) and below."""
        return await guarded(gateway.inbox(capability))  # type: ignore[no-any-return]

    @server.tool()
    async def answer(task: str, text: str) -> dict[str, Any]:
        """Take an open task from the inbox and finish it with `text` as its result."""
        return await guarded(gateway.answer(task, text))  # type: ignore[no-any-return]

    return server
