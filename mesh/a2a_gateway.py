"""``mesh a2a serve``: the mesh behind an A2A endpoint (docs/INTEROP.md).

An A2A client sees one agent whose skills are the capabilities the mesh serves. The
gateway is a mesh client like the CLI: an A2A task is a mesh task it submits, an A2A
status is read off the task's record and events, an answer to ``input-required`` is
the answer to the clarification the task's owner asked its requester. It keeps no
state of its own (the record is the truth): every gateway connects under one mesh
identity (``--id``, default ``a2a-gateway``), so the tasks and questions one gateway
created, any other can report, answer and cancel; a client whose gateway died
resubscribes to another.

The SDK serves the wire (JSON-RPC dispatch, A2A 1.0 method names and the 0.3 ones,
the agent card route, SSE); this module is the SDK's ``RequestHandler`` over
:class:`mesh.Mesh`. The SDK is an extra: it is imported only here and only by
``mesh a2a serve`` (the module is named apart from the SDK's package ``a2a``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import signal
import time
from collections.abc import AsyncGenerator, AsyncIterator
from types import FrameType
from typing import Any

import anyio
import anyio.abc
import structlog
import uvicorn
from a2a.helpers import get_data_parts, new_data_part, new_text_part
from a2a.server.context import ServerCallContext
from a2a.server.request_handlers.request_handler import RequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    Artifact,
    CancelTaskRequest,
    ContentTypeNotSupportedError,
    GetTaskRequest,
    HTTPAuthSecurityScheme,
    InvalidParamsError,
    ListTasksRequest,
    ListTasksResponse,
    Message,
    Part,
    Role,
    SecurityRequirement,
    SecurityScheme,
    SendMessageRequest,
    StringList,
    SubscribeToTaskRequest,
    Task,
    TaskArtifactUpdateEvent,
    TaskNotCancelableError,
    TaskNotFoundError,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
    UnsupportedOperationError,
)
from a2a.utils.constants import (
    AGENT_CARD_WELL_KNOWN_PATH,
    PROTOCOL_VERSION_0_3,
    PROTOCOL_VERSION_1_0,
    TransportProtocol,
)

from protocol import (
    Claim,
    Finish,
    InvalidName,
    RemoteProtocolError,
    Renew,
    TaskRecord,
    TransitionError,
    clarification_capability,
    is_terminal,
    serves,
    validate_capability,
)

from .bus import Conflict, MeshError, NotFound
from .client import Mesh, OverLimit
from .follow import wait_terminal
from .http_token import RequireToken
from .questions import NEW_CHILD
from .retry import retry

__all__ = ["DEFAULT_ID", "Gateway", "a2a_status", "record_to_task", "build_app"]

log = structlog.get_logger("mesh.a2a")

#: the mesh identity gateways share, so any of them can speak for the tasks of another
DEFAULT_ID = "a2a-gateway"

#: how old a directory read may be to check a message's skill against
DIRECTORY_FRESH_S = 2.0

#: metadata keys a message (or its request) may set
SKILL_KEYS = ("skill", "capability")

#: A2A error code of a message part the gateway cannot take (a file)
_FILE_PARTS = ("raw", "url")


def a2a_status(record: TaskRecord, question: TaskRecord | None = None) -> TaskStatus:
    """The A2A status of a mesh task: open -> submitted; working or review -> working
    (``input-required`` while a question to the requester is pending); done ->
    completed; failed -> failed with the reason; cancelled -> canceled."""
    if record.state == "open":
        return TaskStatus(state=TaskState.TASK_STATE_SUBMITTED)
    if record.state in ("working", "review"):
        if question is not None:
            return TaskStatus(
                state=TaskState.TASK_STATE_INPUT_REQUIRED, message=_agent_message(record, question.instruction)
            )
        return TaskStatus(
            state=TaskState.TASK_STATE_WORKING,
            message=_agent_message(record, record.progress) if record.progress else None,
        )
    if record.state == "done":
        return TaskStatus(state=TaskState.TASK_STATE_COMPLETED)
    note = f"{record.reason}: {record.error}".strip(": ") if record.error else str(record.reason or record.state)
    if record.state == "cancelled":
        return TaskStatus(state=TaskState.TASK_STATE_CANCELED, message=_agent_message(record, note))
    return TaskStatus(state=TaskState.TASK_STATE_FAILED, message=_agent_message(record, note))


def _agent_message(record: TaskRecord, text: str) -> Message:
    return Message(
        # the same status gets the same id from every gateway
        message_id=f"{record.id}-{record.epoch}-{hashlib.sha256(text.encode()).hexdigest()[:8]}",
        task_id=record.id,
        context_id=record.root,
        role=Role.ROLE_AGENT,
        parts=[new_text_part(text)],
    )


def result_parts(result: Any) -> list[Part]:
    """A result as parts: text as a text part, anything else as a data part."""
    if isinstance(result, str):
        return [new_text_part(result)]
    if result is None:
        return []
    return [new_data_part(json.loads(json.dumps(result, default=str)))]


def _artifact(record: TaskRecord) -> Artifact:
    return Artifact(artifact_id=f"{record.id}-result", name="result", parts=result_parts(record.result))


def record_to_task(record: TaskRecord, question: TaskRecord | None = None) -> Task:
    """The A2A task of a mesh task (id and context id: the mesh task's id and root)."""
    task = Task(id=record.id, context_id=record.root, status=a2a_status(record, question))
    if record.state == "done":
        task.artifacts.append(_artifact(record))
    task.metadata.update({"capability": record.capability})
    return task


def _is_question(record: TaskRecord, me: str) -> bool:
    return record.capability == clarification_capability(me) and not is_terminal(record)


class Gateway(RequestHandler):
    """The SDK's request handler over the mesh: see the module docstring."""

    def __init__(
        self,
        mesh: Mesh,
        *,
        capabilities: tuple[str, ...] = (),
        url: str = "",
        max_text: int = 64 * 1024,
        claim_timeout_s: float = 10.0,
        bearer: bool = False,
    ) -> None:
        self.mesh = mesh
        #: requests must carry a bearer token (the card says so: mesh/http_token.py)
        self.bearer = bearer
        self.claim_timeout_s = claim_timeout_s
        self.me = mesh.id
        self.capabilities = capabilities
        self.url = url
        self.max_text = max_text
        self._holding: set[str] = set()
        #: the directory as last read, and when: a message names its skill each time, and
        #: the directory changes at the pace of agents joining and leaving
        self._served: tuple[float, dict[str, str]] = (-math.inf, {})
        self._tg: anyio.abc.TaskGroup | None = None

    # --- the card, live from the directory ---------------------------------------------------

    async def served(self, *, fresh_s: float = 0.0) -> dict[str, str]:
        """Capability -> description, of live agents, filtered by ``--capability``
        (a filter covers its sub-capabilities, as ``summarize`` covers ``summarize.x``);
        read at most ``fresh_s`` ago."""
        at, served = self._served
        if time.monotonic() - at <= fresh_s:
            return served
        out: dict[str, str] = {}
        for card in sorted(await self.mesh.agents(), key=lambda c: c.id):
            for cap in card.serves:
                if self.capabilities and not serves(self.capabilities, cap):
                    continue
                if cap.startswith("agent.") or out.get(cap):
                    continue
                out[cap] = card.description or card.role or ""
        self._served = (time.monotonic(), out)
        return out

    def base_card(self) -> AgentCard:
        """The card without its skills (those are read from the directory per request)."""
        card = AgentCard(
            name="agent-mesh",
            description="An organization of agents on agent-mesh; each skill is a capability its agents serve. "
            "Name the skill in the message's metadata ('skill'); without one the first skill is asked.",
            version="1.0",
            supported_interfaces=[
                AgentInterface(
                    url=self.url, protocol_binding=TransportProtocol.JSONRPC, protocol_version=PROTOCOL_VERSION_1_0
                ),
                AgentInterface(
                    url=self.url, protocol_binding=TransportProtocol.JSONRPC, protocol_version=PROTOCOL_VERSION_0_3
                ),
            ],
            capabilities=AgentCapabilities(streaming=True, push_notifications=False),
            default_input_modes=["text/plain", "application/json"],
            default_output_modes=["text/plain", "application/json"],
            skills=[AgentSkill(id="any", name="any", description="(read from the directory)", tags=["mesh"])],
        )
        if self.bearer:
            card.security_schemes["bearer"].CopyFrom(
                SecurityScheme(
                    http_auth_security_scheme=HTTPAuthSecurityScheme(
                        scheme="Bearer", description="the token the gateway was started with (--token-file)"
                    )
                )
            )
            card.security_requirements.append(SecurityRequirement(schemes={"bearer": StringList()}))
        return card

    async def card(self) -> AgentCard:
        card = self.base_card()
        del card.skills[:]
        card.skills.extend(
            AgentSkill(id=cap, name=cap, description=desc or f"serves {cap}", tags=[cap.split(".")[0]])
            for cap, desc in sorted((await self.served()).items())
        )
        return card

    # --- messages ----------------------------------------------------------------------------

    async def _capability(self, params: SendMessageRequest) -> str:
        """The message's skill (metadata ``skill``), which a live agent must serve (or
        cover: an agent serving ``summarize`` takes ``summarize.medical``) and
        ``--capability`` must allow; without one, the first ``--capability``, else the
        first skill served."""
        metas = (params.message.metadata, params.metadata)
        wanted = next((m[k] for m in metas for k in SKILL_KEYS if k in m and isinstance(m[k], str)), "")
        if not wanted:
            if self.capabilities:
                return self.capabilities[0]
            first = min(await self.served(fresh_s=DIRECTORY_FRESH_S), default=None)
            if first is None:
                raise InvalidParamsError(message="no skill is served now: no agent of the mesh is live")
            return first
        served = tuple(await self.served(fresh_s=DIRECTORY_FRESH_S))
        if not serves(served, wanted):
            served = tuple(await self.served())  # it may have just joined
        allowed = not self.capabilities or serves(self.capabilities, wanted)
        try:
            valid = validate_capability(wanted) == wanted
        except InvalidName:
            valid = False
        if not (valid and allowed and serves(served, wanted)):
            raise InvalidParamsError(
                message=f"unknown skill {wanted[:100]!r}; skills served: {', '.join(sorted(served)) or 'none'}"
            )
        return wanted

    def _instruction(self, message: Message) -> tuple[str, Any]:
        texts: list[str] = []
        for part in message.parts:
            kind = part.WhichOneof("content")
            if kind in _FILE_PARTS:
                raise ContentTypeNotSupportedError(
                    message=f"a {kind} part ({part.media_type or 'file'}) cannot be taken: send text or data parts"
                )
            if kind == "text":
                texts.append(part.text)
        text = "\n".join(texts)
        if len(text.encode()) > self.max_text:
            raise InvalidParamsError(
                message=f"text parts of {len(text.encode())} bytes, over the gateway's limit of {self.max_text}"
            )
        data = get_data_parts(list(message.parts))
        return text, (None if not data else data[0] if len(data) == 1 else data)

    async def _submit(self, params: SendMessageRequest) -> TaskRecord:
        if params.message.task_id:
            return await self._answer(params.message)
        capability = await self._capability(params)
        text, data = self._instruction(params.message)
        if not text.strip() and data is None:
            raise InvalidParamsError(message="the message has no text or data part: nothing to do")
        deadline = params.metadata["deadline_s"] if "deadline_s" in params.metadata else None
        if deadline is not None and (not isinstance(deadline, float | int) or not 0 < deadline < math.inf):
            raise InvalidParamsError(
                message=f"metadata deadline_s must be a positive number of seconds, got {deadline!r}"
            )
        try:
            return await self.mesh.submit(
                capability,
                text or "(see data)",
                data=data,
                deadline_s=None if deadline is None else float(deadline),
                claim_timeout_s=self.claim_timeout_s,
            )
        except OverLimit as exc:
            raise InvalidParamsError(
                message=str(exc), data={"field": exc.field, "size": exc.size, "limit": exc.limit}
            ) from None

    async def _read(self, task_id: str) -> TaskRecord:
        try:
            record = await self.mesh.get(task_id)
        except (NotFound, RemoteProtocolError, InvalidName):
            raise TaskNotFoundError(message=f"no task {task_id!r}") from None
        if record.requester != self.me:  # only tasks A2A clients gave the mesh are A2A tasks
            raise TaskNotFoundError(message=f"no task {task_id!r}")
        return record

    async def _question(self, record: TaskRecord) -> TaskRecord | None:
        """The question to the requester the task's owner waits for, if any."""
        if record.state not in ("working", "review"):
            return None
        for child_id in reversed(record.children):
            with contextlib.suppress(NotFound, RemoteProtocolError):
                child = await self.mesh.get(child_id, root=record.root)
                if _is_question(child, self.me):
                    return child
        return None

    async def _answer(self, message: Message) -> TaskRecord:
        """The client's next message on a task in ``input-required``: the answer."""
        record = await self._read(message.task_id)
        question = await self._question(record)
        if question is None:
            raise InvalidParamsError(
                message=f"task {record.id} is {a2a_state_name(record)}, not waiting for input; send a new message "
                "without taskId for new work"
            )
        text, data = self._instruction(message)
        answer: Any = text if data is None else {"text": text, "data": data} if text else data
        for _ in range(20):  # a gateway renewing the question meanwhile is a conflict, not a refusal
            try:
                question, revision = await self.mesh.bus.read_any(question.id, root=question.root)
                if question.state == "open":
                    events: Any = (Claim(actor=self.me), Finish(actor=self.me, epoch=question.epoch + 1, result=answer))
                else:
                    events = Finish(actor=self.me, epoch=question.epoch, result=answer)
                await self.mesh.bus.write(question, revision, events)
                break
            except Conflict:
                continue
            except TransitionError:
                raise InvalidParamsError(message=f"the question {question.id} was answered or ended already") from None
        return await self._read(record.id)

    async def on_message_send(self, params: SendMessageRequest, context: ServerCallContext) -> Task:
        record = await self._submit(params)
        if params.configuration.return_immediately:
            return record_to_task(record)
        # Until it ends or needs input (where the stream ends), as one task.
        last = Task()
        async for item in self._follow(record):
            if isinstance(item, Task):
                last = item
            elif isinstance(item, TaskStatusUpdateEvent):
                last.status.CopyFrom(item.status)
            else:
                last.artifacts.append(item.artifact)
        return last

    async def on_message_send_stream(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> AsyncGenerator[Task | TaskStatusUpdateEvent | TaskArtifactUpdateEvent]:
        record = await self._submit(params)
        async for item in self._follow(record):
            yield item

    async def on_subscribe_to_task(
        self, params: SubscribeToTaskRequest, context: ServerCallContext
    ) -> AsyncGenerator[Task | TaskStatusUpdateEvent | TaskArtifactUpdateEvent]:
        record = await self._read(params.id)
        async for item in self._follow(record):
            yield item

    async def on_get_task(self, params: GetTaskRequest, context: ServerCallContext) -> Task | None:
        record = await self._read(params.id)
        return record_to_task(record, await self._question(record))

    async def on_cancel_task(self, params: CancelTaskRequest, context: ServerCallContext) -> Task | None:
        record = await self._read(params.id)
        if is_terminal(record):
            raise TaskNotCancelableError(message=f"task {record.id} has ended ({a2a_state_name(record)})")
        return record_to_task(await self.mesh.cancel(record.id, "cancelled by its A2A client"))

    async def on_list_tasks(self, params: ListTasksRequest, context: ServerCallContext) -> ListTasksResponse:
        raise UnsupportedOperationError(message="listing tasks is not served: the mesh has no per-client index")

    async def on_create_task_push_notification_config(self, params: Any, context: ServerCallContext) -> Any:
        raise UnsupportedOperationError(message="push notifications are not served; stream or poll")

    async def on_get_task_push_notification_config(self, params: Any, context: ServerCallContext) -> Any:
        raise UnsupportedOperationError(message="push notifications are not served; stream or poll")

    async def on_list_task_push_notification_configs(self, params: Any, context: ServerCallContext) -> Any:
        raise UnsupportedOperationError(message="push notifications are not served; stream or poll")

    async def on_delete_task_push_notification_config(self, params: Any, context: ServerCallContext) -> None:
        raise UnsupportedOperationError(message="push notifications are not served; stream or poll")

    async def on_get_extended_agent_card(self, params: Any, context: ServerCallContext) -> AgentCard:
        return await self.card()

    # --- following a task --------------------------------------------------------------------

    async def _follow(
        self, record: TaskRecord
    ) -> AsyncIterator[Task | TaskStatusUpdateEvent | TaskArtifactUpdateEvent]:
        """The task now, then a status update per change, ending with its final status
        (its result as an artifact first) or with ``input-required``. Followed as any
        requester follows its task (``mesh.follow.wait_terminal``: the record's writes,
        its deadline and absence of agents judged meanwhile); a new child is read to see
        whether it is a question to us."""
        question = await self._question(record)
        if question is not None:
            self.hold(question.id, record.root)
        yield record_to_task(record, question)
        if is_terminal(record) or question is not None:
            return
        seen = set(record.children)
        last = (record.state, "")
        send, receive = anyio.create_memory_object_stream[TaskRecord](64)

        async def follow() -> None:
            async with send:
                await send.send(await wait_terminal(self.mesh.bus, record, observer=self.me, on_record=send.send))

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            async with receive:
                async for current in receive:
                    if is_terminal(current):
                        tg.cancel_scope.cancel()
                        if current.state == "done":
                            yield TaskArtifactUpdateEvent(
                                task_id=current.id,
                                context_id=current.root,
                                artifact=_artifact(current),
                                last_chunk=True,
                            )
                        yield self._status_event(current, None)
                        return
                    question = None
                    for child_id in current.children:
                        if child_id not in seen:
                            seen.add(child_id)
                            child = await self._child(child_id, current.root)
                            if child is not None and _is_question(child, self.me):
                                question = child
                                self.hold(child.id, child.root)
                    key = (current.state, question.id if question else "")
                    if key != last:
                        last = key
                        yield self._status_event(current, question.instruction if question else None)
                    if question is not None:  # an interrupted state ends the stream (A2A); the answer resumes
                        tg.cancel_scope.cancel()
                        return

    async def _child(self, child_id: str, root: str) -> TaskRecord | None:
        # The asker records a child before it creates it: one not found yet may be a moment from existing.
        try:
            child, _ = await retry(
                lambda: self.mesh.bus.read_any(child_id, root=root), retry_on=NotFound, attempts=12, backoff=NEW_CHILD
            )
        except (MeshError, RemoteProtocolError):
            return None
        return child

    def _status_event(self, record: TaskRecord, question: str | None) -> TaskStatusUpdateEvent:
        status = a2a_status(record)
        if question is not None and record.state in ("working", "review"):
            status = TaskStatus(state=TaskState.TASK_STATE_INPUT_REQUIRED, message=_agent_message(record, question))
        return TaskStatusUpdateEvent(task_id=record.id, context_id=record.root, status=status)

    # --- holding questions for the A2A client ----------------------------------------------

    def hold(self, question_id: str, root: str) -> None:
        """Keep a question to the A2A client claimed (and renewed) until someone answers
        it: no broker lease watches a question, the asker ends one nobody holds. Every
        gateway that sees it holds it (they share one identity, and their writes are
        compare-and-set), so a gateway that dies leaves it held by the others."""
        if self._tg is None or question_id in self._holding:
            return
        self._holding.add(question_id)
        self._tg.start_soon(self._hold, question_id, root)

    async def _hold(self, question_id: str, root: str) -> None:
        try:
            while True:
                try:
                    question, revision = await self.mesh.bus.read_any(question_id, root=root)
                    if is_terminal(question):
                        return
                    if question.state == "open":
                        await self.mesh.bus.write(question, revision, Claim(actor=self.me))
                    elif question.owner == self.me:  # a write is what shows the asker we are here
                        await self.mesh.bus.write(question, revision, Renew(actor=self.me, epoch=question.epoch))
                    wait = question.claim_timeout_s / 4
                except (Conflict, TransitionError):
                    wait = 0.05  # another gateway wrote: look again
                except (MeshError, RemoteProtocolError) as exc:
                    log.info("could not hold a question", question=question_id, error=str(exc))
                    wait = 1.0
                await anyio.sleep(wait)
        finally:
            self._holding.discard(question_id)

    async def keep_questions(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Hold every question to this gateway's identity that appears while it runs."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            capability = clarification_capability(self.me)
            events = self.mesh.events()
            task_status.started()
            async for event in events:
                if event.kind == "created" and event.capability == capability and event.state == "open":
                    self.hold(event.task, event.root)


def a2a_state_name(record: TaskRecord) -> str:
    return str(TaskState.Name(a2a_status(record).state)).removeprefix("TASK_STATE_").lower().replace("_", "-")


def build_app(gateway: Gateway, token: str | None = None) -> Any:
    """The Starlette app: the agent card at the well-known path (built per request from
    the directory) and one JSON-RPC endpoint at ``/`` serving A2A 1.0 and 0.3 names;
    with ``token``, every request but the card's must carry it."""
    from starlette.applications import Starlette

    async def live_card(_: AgentCard) -> AgentCard:
        return await gateway.card()

    routes = create_agent_card_routes(gateway.base_card(), card_modifier=live_card)
    routes += create_jsonrpc_routes(gateway, "/", enable_v0_3_compat=True)
    app = _BodyLimit(Starlette(routes=routes), MAX_BODY_BYTES)
    return app if token is None else RequireToken(app, token, public=(AGENT_CARD_WELL_KNOWN_PATH,))


#: the largest request body read: a task record is at most 768 KiB (docs/PROTOCOL.md 6.18)
MAX_BODY_BYTES = 1024 * 1024


class _BodyLimit:
    """An ASGI wrapper that stops reading a request body past ``limit`` bytes with
    HTTP 413, which the SDK's dispatcher answers with A2A's invalid request error
    ("Payload too large"): a client cannot make the gateway hold an unbounded body."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.exceptions import HTTPException

        seen = 0

        async def bounded() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413)
            return message

        await self.app(scope, bounded, send)


class _Server(uvicorn.Server):
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn re-raises a signal it caught once it has shut down (SIGTERM: exit 143);
        # a gateway that stopped when asked did its job, like `mesh agent run`: exit 0.
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True


async def serve(
    mesh: Mesh,
    *,
    host: str,
    port: int,
    capabilities: tuple[str, ...] = (),
    claim_timeout_s: float = 10.0,
    public_url: str | None = None,
    announce: Any = None,
    token: str | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn's own handlers), then stop the streams. With
    ``token``, requests must carry it (mesh/http_token.py)."""
    # The SDK warns on every client error (the client's business, answered with its
    # code) and about a card without skills (no agent live yet): not the operator's news.
    logging.getLogger("a2a").setLevel(logging.ERROR)
    gateway = Gateway(
        mesh,
        capabilities=capabilities,
        url=f"http://{host}:{port}/",
        claim_timeout_s=claim_timeout_s,
        bearer=token is not None,
    )
    config = uvicorn.Config(
        build_app(gateway, token),
        host=host,
        port=port,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    server = _Server(config)
    async with anyio.create_task_group() as tg:
        await tg.start(gateway.keep_questions)

        async def announce_when_up() -> None:
            while not server.started:  # noqa: ASYNC110  (uvicorn offers no event for it)
                await anyio.sleep(0.01)
            bound = server.servers[0].sockets[0].getsockname()[1] if server.servers else port
            gateway.url = public_url or f"http://{host}:{bound}/"
            if announce is not None:
                announce(gateway.url)

        tg.start_soon(announce_when_up)
        await server.serve()
        tg.cancel_scope.cancel()
