"""``mesh mcp serve``: the mesh as tools for any MCP host (a desktop assistant, an IDE).

The gateway is a mesh *client* like ``mesh submit``: it uses only :class:`mesh.Mesh`
and holds no state of its own (the task records are the truth), so several gateways
may serve one mesh and a restarted one loses nothing. It speaks MCP through the
official SDK (``mcp``, the ``mcp`` extra), over stdio (the default: the host starts
it as a child process) or streamable HTTP (``--http``).

Tools: ``submit`` (with ``wait``, the task's events arrive as MCP progress
notifications until it ends), ``wait``, ``agents``, ``trace``, ``cancel``, ``inbox``
and ``answer`` (work addressed to people, as ``mesh inbox``). An error is an MCP tool
error (``isError``) carrying the message the CLI would print.

The SDK is imported only by :func:`serve`: ``mesh`` without the extra still starts.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from protocol import (
    TERMINAL_STATES,
    InvalidName,
    LocalProtocolError,
    RemoteProtocolError,
    ReviewPolicy,
    TaskEvent,
    TaskRecord,
    is_terminal,
    validate_task_id,
)

from .bus import MeshError, NotFound

if TYPE_CHECKING:
    from .client import Mesh

__all__ = ["MISSING_EXTRA", "Gateway", "McpUnavailable", "build_server", "import_mcp", "message", "serve"]

MISSING_EXTRA = "MCP needs the mcp extra: pip install 'agent-mesh[mcp]'"

#: what the gateway tells an agent that asks it a question: an MCP host cannot be
#: asked in the middle of a tool call, and a question left unanswered would hold the
#: agent until its claim timeout
NO_QUESTIONS = (
    "Your requester is an MCP host and cannot answer questions while it waits; "
    "proceed with your best judgement and say in your result what you assumed."
)

#: result text longer than this is cut in the summaries tools return (the full
#: record stays readable with `trace`)
RESULT_CHARS = 20_000

Progress = Callable[[float, str], Awaitable[None]]


class McpUnavailable(ImportError):
    """The ``mcp`` SDK is not installed; the message says how to install it."""


def import_mcp() -> Any:
    """The ``mcp`` package, or :class:`McpUnavailable` with the one-line fix."""
    try:
        import mcp
        import mcp.server.mcpserver
    except ImportError:
        raise McpUnavailable(MISSING_EXTRA) from None
    return mcp


def summary(record: TaskRecord) -> dict[str, Any]:
    """What a model needs to know about a task (its input ``data`` left out)."""
    out: dict[str, Any] = {
        "id": record.id,
        "capability": record.capability,
        "state": record.state,
        "owner": record.owner,
    }
    if record.reason is not None:
        out["reason"] = record.reason
    if record.error:
        out["error"] = record.error
    if record.progress:
        out["progress"] = record.progress
    if record.state == "done":
        result = record.result
        if isinstance(result, str) and len(result) > RESULT_CHARS:
            result = result[:RESULT_CHARS] + f"... [{len(result) - RESULT_CHARS} more characters: see `trace`]"
        out["result"] = result
    if record.children:
        out["children"] = list(record.children)
    return out


def describe(event: TaskEvent) -> str:
    """One line for a progress notification."""
    where = "" if event.task == event.root else f" (subtask {event.task}, {event.capability})"
    note = f": {event.note}" if event.note else ""
    reason = f" ({event.reason})" if event.reason else ""
    return f"{event.kind} by {event.actor}, {event.state}{reason}{where}{note}"


def _deadline(value: float | str | None) -> float | None:
    if value is None:
        return None
    from .defaults import parse_duration

    try:
        seconds = float(value) if isinstance(value, (int, float)) else parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"deadline: {exc}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"deadline {value!r}: give a positive number of seconds or a duration like 30s or 5m")
    return seconds


class Gateway:
    """The tools' behaviour, on one connected :class:`~mesh.Mesh` (no MCP types here,
    so it can be tested and measured without a transport)."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh

    async def submit(
        self,
        capability: str,
        text: str,
        *,
        data: Any = None,
        criteria: str = "",
        review: int = 0,
        reviewer: str = "review",
        deadline: float | str | None = None,
        wait: bool = True,
        timeout: float | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        if not 0 <= review <= 16:
            raise ValueError(f"review {review}: a review needs 1 to 16 approvals (0 for none)")
        record = await self.mesh.submit(
            capability,
            text,
            data=data,
            criteria=criteria,
            review=ReviewPolicy(quorum=review, capability=reviewer) if review else None,
            deadline_s=_deadline(deadline),
        )
        if not wait:
            return summary(record)
        return await self._follow(record, timeout, progress)

    async def wait(
        self, task_id: str, *, timeout: float | None = None, progress: Progress | None = None
    ) -> dict[str, Any]:
        record = await self.mesh.get(validate_task_id(task_id))
        if is_terminal(record):
            return summary(record)
        return await self._follow(record, timeout, progress)

    async def _follow(self, record: TaskRecord, timeout: float | None, progress: Progress | None) -> dict[str, Any]:
        """Wait for the task to end (or ``timeout`` seconds: then its current state),
        reporting its tree's events through ``progress`` meanwhile, and its end last
        (the record may show it before its event arrives)."""
        if timeout is not None and (not math.isfinite(timeout) or timeout <= 0):
            raise ValueError(f"timeout {timeout!r}: give a positive number of seconds")
        final: list[TaskRecord] = []
        told = [0]

        async def no_answers(_question: TaskRecord) -> str:
            return NO_QUESTIONS

        async def report() -> None:
            assert progress is not None
            async with self.mesh.backing() as backing:
                async for event in self.mesh.events(root=record.root):
                    if event.task == record.id and event.state in TERMINAL_STATES:
                        continue  # said below, once
                    if not await backing.backed(event):
                        continue  # events are unsigned: one no verified write shows is nobody's word
                    told[0] += 1
                    await progress(told[0], describe(event))

        async with anyio.create_task_group() as tg:
            if progress is not None:
                tg.start_soon(report)
            with anyio.move_on_after(math.inf if timeout is None else timeout):
                final.append(await self.mesh.wait(record, on_question=no_answers))
            tg.cancel_scope.cancel()
        if final:
            if progress is not None:
                end = final[0]
                await progress(told[0] + 1, f"ended {end.state}" + (f" ({end.reason})" if end.reason else ""))
            return summary(final[0])
        out = summary(await self.mesh.get(record.id, root=record.root))
        out["note"] = f"still {out['state']} after {timeout:g} s; call `wait` with its id to wait longer"
        return out

    async def agents(self) -> list[dict[str, Any]]:
        return [msgspec.to_builtins(card) for card in await self.mesh.agents()]

    async def trace(self, task_id: str) -> dict[str, Any]:
        root = await self.mesh.get(validate_task_id(task_id))
        tree = await self.mesh.tree(task_id)
        ids = {r.id for _, r in tree}
        events = [e for e in await self.mesh.history(root.root) if e.task in ids]
        unbacked = await self.mesh.unbacked(events)
        return {
            "tasks": [{"depth": depth, **summary(r)} for depth, r in tree],
            "events": [
                {"at": e.at, "task": e.task, "kind": e.kind, "actor": e.actor, "state": e.state, "note": e.note}
                | ({"reason": e.reason} if e.reason else {})
                | ({"unbacked": True} if (e.task, e.at, e.kind) in unbacked else {})
                for e in events
            ],
        }

    async def cancel(self, task_id: str, note: str = "") -> dict[str, Any]:
        return summary(await self.mesh.cancel(validate_task_id(task_id), note))

    async def inbox(self, capability: str = "human") -> list[dict[str, Any]]:
        out = []
        for record in await self.mesh.offered(capability):
            entry = summary(record)
            entry["instruction"] = record.instruction
            if record.criteria:
                entry["criteria"] = record.criteria
            if record.data is not None:
                entry["data"] = record.data
            out.append(entry)
        return out

    async def answer(self, task_id: str, text: str) -> dict[str, Any]:
        return summary(await self.mesh.take_and_finish(validate_task_id(task_id), text))


def message(exc: Exception) -> str:
    """The one line a model (and its user) reads for a failed tool call."""
    if isinstance(exc, NotFound):
        return f"no such task: {exc}"
    if isinstance(exc, RemoteProtocolError):
        return f"the mesh holds something that is not valid protocol: {exc}"
    if isinstance(exc, (MeshError, InvalidName, LocalProtocolError, ValueError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def build_server(gateway: Gateway, *, name: str = "agent-mesh") -> Any:
    """An ``MCPServer`` whose tools call ``gateway`` (:mod:`mesh.mcp_server`)."""
    import_mcp()
    from .mcp_server import build

    return build(gateway, name=name)


async def serve(
    url: str,
    *,
    prefix: str = "mesh",
    http: bool = False,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
) -> None:
    """Connect to the mesh at ``url`` and serve MCP until the host hangs up (stdio) or
    the process is stopped (HTTP; with ``token``, every request must carry it:
    mesh/http_token.py)."""
    import_mcp()
    from protocol import Names

    from .client import Mesh

    async with await Mesh.connect(url, names=Names(prefix)) as mesh:
        server = build_server(Gateway(mesh))
        if not http:
            await server.run_stdio_async()
        elif token is None:
            await server.run_streamable_http_async(host=host, port=port)
        else:
            import uvicorn

            from .http_token import RequireToken

            app = RequireToken(server.streamable_http_app(host=host), token)
            config = uvicorn.Config(app, host=host, port=port, log_level=server.settings.log_level.lower())
            await uvicorn.Server(config).serve()
