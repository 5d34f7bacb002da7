"""``mesh ui``: the live view's HTTP side. A Starlette app (served by uvicorn) with the
page and its static files, one server-sent-events stream per open page carrying only
what changed on it (:class:`~mesh.ui.board.Viewer`), a task's tree and timeline (what
`mesh trace` reads) and the human inbox with its actions (:mod:`mesh.ui.inbox`).

The server is a mesh client like `mesh top`: it holds no state the mesh does not, and
several may serve one mesh. Starlette and uvicorn are the ``ui`` extra, imported only
by this command.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
import msgspec
import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from protocol import InvalidName, RemoteProtocolError, TaskRecord, validate_task_id

from ..bus import MeshError, NotFound
from ..client import Mesh
from ..http_token import RequireToken
from .board import PAGE_SIZE, TASK_FILTERS, Board, Query, Viewer
from .feed import follow_mesh
from .inbox import ACTIONS, Refused, act, inbox_item

__all__ = ["UiConfig", "build_app", "serve", "bind"]

log = structlog.get_logger("mesh.ui")

STATIC = Path(__file__).with_name("static")
#: how often an open page is sent what changed
TICK_S = 0.25
#: how often the inbox is read again while a page is open
INBOX_S = 1.0
#: a comment line this often keeps proxies from closing a quiet stream
KEEPALIVE_S = 15.0
#: the header every action must carry: a cross-site form cannot set it (and a script
#: of another origin would need a CORS preflight, which this server never answers)
ACTION_HEADER = "x-mesh-ui"


class UiConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What the page is told about this view."""

    #: who actions are made as; None: the view may not act (auth on, no operator key)
    actor: str | None
    #: why actions are off, for the page to say
    read_only_reason: str = ""
    inbox_capability: str = "human"
    server: str = ""


class _Inbox:
    """The inbox as last read, re-read while pages are open."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.version = 0
        self.error = ""
        self.viewers = 0
        self.wanted = anyio.Event()


def build_app(mesh: Mesh, board: Board, config: UiConfig) -> tuple[Any, Callable[..., Any]]:
    """The app, and the task that keeps the inbox read (start it in a task group)."""
    inbox = _Inbox()

    async def keep_inbox() -> None:
        while True:
            if inbox.viewers == 0:
                await inbox.wanted.wait()
                inbox.wanted = anyio.Event()
            await _read_inbox(mesh, config, inbox)
            await anyio.sleep(INBOX_S)

    async def index(_: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})

    async def config_json(_: Request) -> Response:
        return JSONResponse(
            msgspec.to_builtins(config)
            | {
                "page_size": PAGE_SIZE,
                "filters": TASK_FILTERS,
                "actions": ACTIONS,
                "now": time.time(),
            }
        )

    async def stream(request: Request) -> Response:
        queries = {
            "agents": Query(
                "agents", text=request.query_params.get("agents_text", ""), page=_int(request, "agents_page")
            ),
            "tasks": Query(
                "tasks",
                filter=_choice(request.query_params.get("tasks_filter", "active"), TASK_FILTERS),
                text=request.query_params.get("tasks_text", ""),
                page=_int(request, "tasks_page"),
            ),
        }
        return StreamingResponse(
            _updates(board, Viewer(queries), inbox),
            media_type="text/event-stream",
            headers={"cache-control": "no-store"},
        )

    async def task(request: Request) -> Response:
        try:
            task_id = validate_task_id(request.path_params["id"])
        except InvalidName as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        try:
            return JSONResponse(await _trace(mesh, task_id))
        except NotFound:
            return JSONResponse({"error": f"no task {task_id}"}, status_code=404)
        except (MeshError, RemoteProtocolError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=502)

    async def action(request: Request) -> Response:
        if config.actor is None:
            return JSONResponse({"error": config.read_only_reason}, status_code=403)
        if request.headers.get(ACTION_HEADER) != "1":
            return JSONResponse({"error": f"actions come from the page (header {ACTION_HEADER})"}, status_code=403)
        name = request.path_params["action"]
        if name not in ACTIONS:
            return JSONResponse({"error": f"unknown action {name!r}"}, status_code=404)
        try:
            task_id = validate_task_id(request.path_params["id"])
            body = await request.json()
        except (InvalidName, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        text = str(body.get("text", "")) if isinstance(body, dict) else ""
        reasons = tuple(r for r in (text.strip(),) if r)
        if name == "veto" and not reasons:
            return JSONResponse({"error": "a veto needs a reason"}, status_code=400)
        try:
            record = await act(mesh, task_id, name, text=text, reasons=reasons)
        except Refused as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        except NotFound:
            return JSONResponse({"error": f"no task {task_id}"}, status_code=404)
        except (MeshError, RemoteProtocolError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        inbox.wanted.set()
        await _read_inbox(mesh, config, inbox)
        return JSONResponse({"id": record.id, "state": record.state, "reason": record.reason})

    routes = [
        Route("/", index),
        Route("/favicon.ico", lambda _: Response(status_code=204)),
        Route("/api/config", config_json),
        Route("/api/stream", stream),
        Route("/api/task/{id}", task),
        Route("/api/inbox/{id}/{action}", action, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes), keep_inbox


def _int(request: Request, name: str) -> int:
    try:
        return max(0, min(int(request.query_params.get(name, "0")), 1_000_000))
    except ValueError:
        return 0


def _choice(value: str, allowed: tuple[str, ...]) -> str:
    return value if value in allowed else allowed[0]


async def _updates(board: Board, viewer: Viewer, inbox: _Inbox) -> AsyncIterator[str]:
    """The page's stream: everything it shows first, then what changed, every tick."""
    inbox.viewers += 1
    inbox.wanted.set()
    inbox_version = -1
    quiet_since = time.monotonic()
    try:
        while True:
            update = viewer.update(board) or {}
            if inbox.version != inbox_version:
                inbox_version = inbox.version
                update["inbox"] = {"items": inbox.items, "error": inbox.error}
            if viewer.at_version >= 0:
                roots, board.touched_roots = board.touched_roots, set()
                if roots:
                    update["roots"] = sorted(roots)
            if update:
                quiet_since = time.monotonic()
                yield f"data: {json.dumps(update, separators=(',', ':'))}\n\n"
            elif time.monotonic() - quiet_since > KEEPALIVE_S:
                quiet_since = time.monotonic()
                yield ": keepalive\n\n"
            await anyio.sleep(TICK_S)
    finally:
        inbox.viewers -= 1


async def _read_inbox(mesh: Mesh, config: UiConfig, inbox: _Inbox) -> None:
    try:
        records = await mesh.offered(config.inbox_capability)
    except (MeshError, RemoteProtocolError) as exc:
        error = f"the inbox could not be read: {exc}"
        if error != inbox.error:
            inbox.error, inbox.version = error, inbox.version + 1
        return
    items = [inbox_item(r, config.actor) for r in sorted(records, key=lambda r: r.created)]
    if items != inbox.items or inbox.error:
        inbox.items, inbox.error, inbox.version = items, "", inbox.version + 1


async def _trace(mesh: Mesh, task_id: str) -> dict[str, Any]:
    """What `mesh trace` shows of the tree ``task_id`` belongs to: its records, depth
    first, and the tree's events in the order they were made."""
    record = await mesh.get(task_id)
    tree = await mesh.tree(record.root)
    ids = {r.id for _, r in tree}
    events = sorted((e for e in await mesh.history(record.root) if e.task in ids), key=lambda e: e.at)
    return {
        "task": task_id,
        "root": record.root,
        "tree": [{"depth": depth, **_trace_record(r)} for depth, r in tree],
        "events": [
            {
                "at": e.at,
                "task": e.task,
                "kind": e.kind,
                "state": e.state,
                "reason": e.reason,
                "actor": e.actor,
                "epoch": e.epoch,
                "note": e.note[:300],
            }
            for e in events
        ],
    }


def _trace_record(r: TaskRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "capability": r.capability,
        "state": r.state,
        "reason": r.reason,
        "error": r.error[:300],
        "owner": r.author or r.owner,
        "epoch": r.epoch,
        "attempts": r.attempts,
        "lapses": r.lapses,
        "reworks": r.reworks,
        "instruction": r.instruction[:300],
        "result": None if r.result is None else json.dumps(r.result, default=str)[:500],
        "votes": [{"reviewer": v.reviewer, "verdict": v.verdict, "reasons": list(v.reasons)} for v in r.votes],
        "feedback": [{"reviewer": v.reviewer, "reasons": list(v.reasons)} for v in r.feedback],
        "review": None if r.review is None else {"quorum": r.review.quorum, "capability": r.review.capability},
        "took_ms": round((r.updated - r.created) * 1000),
    }


class PortInUse(OSError):
    """The address to listen on is taken (or not ours to take)."""


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything starts: a busy port is one line."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortInUse(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}): choose another --port (0 for any free one)"
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Stopped when asked: exit 0 (uvicorn would re-raise the signal); a second
        # Ctrl-C does not wait for open pages' streams.
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True
            self.force_exit = True  # open event streams never end by themselves


async def serve(
    mesh: Mesh,
    sock: socket.socket,
    config: UiConfig,
    *,
    stuck_after: float = 30.0,
    loop_after: int = 3,
    announce: Callable[[str], None] | None = None,
    token: str | None = None,
) -> None:
    """Serve the view on ``sock`` until SIGINT/SIGTERM; with ``token``, only to
    browsers that were given it (mesh/http_token.py)."""
    board = Board(stuck_after=stuck_after, loop_after=loop_after)
    app, keep_inbox = build_app(mesh, board, config)
    if token is not None:
        app = RequireToken(app, token, cookie="mesh_ui_token")
    uv = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
    server = _Server(uv)
    async with anyio.create_task_group() as tg:
        await tg.start(follow_mesh, mesh, board)
        tg.start_soon(keep_inbox)
        host, port = sock.getsockname()[:2]
        if announce is not None:
            announce(f"http://{host}:{port}/")
        await server.serve(sockets=[sock])
        tg.cancel_scope.cancel()
