"""The `a2a` kind: a remote A2A agent (the SDK's own server, run by the test) is a
member of an org like any other agent, through a real `mesh agent run` process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

pytest.importorskip("a2a.server")

import uvicorn
from a2a.helpers import new_task_from_user_message, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill, Message, Role
from starlette.applications import Starlette

from mesh.broker import free_ports
from mesh.client import Mesh
from mesh.testing import AgentProcs, wait_for

pytestmark = pytest.mark.slow


class Remote(AgentExecutor):
    """An echo agent with moods: ``fail`` fails, ``ask`` asks first, ``hang`` works until cancelled."""

    def __init__(self) -> None:
        self.cancelled: list[str] = []

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.message is not None
        task = context.current_task or new_task_from_user_message(context.message)
        if context.current_task is None:
            await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        text = context.get_user_input()
        if context.current_task is not None:  # the answer to our question
            await updater.add_artifact([new_text_part(f"going to {text}")])
            await updater.complete()
        elif text.startswith("fail"):
            await updater.failed(self._say(task, "the remote cannot do that"))
        elif text.startswith("ask"):
            await updater.requires_input(self._say(task, "Which city?"))
        elif text.startswith("hang"):
            await updater.start_work()
            await anyio.sleep_forever()
        else:
            await updater.add_artifact([new_text_part(f"echo: {text}")])
            await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.task_id is not None
        self.cancelled.append(context.task_id)
        await TaskUpdater(event_queue, context.task_id, context.context_id or "").cancel()

    def _say(self, task: Any, text: str) -> Message:
        return Message(
            message_id=f"m-{text[:5]}",
            role=Role.ROLE_AGENT,
            task_id=task.id,
            context_id=task.context_id,
            parts=[new_text_part(text)],
        )


@pytest.fixture
def remote() -> Iterator[tuple[str, Remote]]:
    """The remote agent: the SDK's server with its default handler, in a thread of its
    own (its own event loop, as a separate server would have)."""
    port = free_ports(1)[0]
    url = f"http://127.0.0.1:{port}/"
    card = AgentCard(
        name="remote-echo",
        description="an A2A echo agent",
        version="1",
        supported_interfaces=[AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")],
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id="echo", name="echo", description="says it back", tags=["echo"])],
    )
    executor = Remote()
    handler = DefaultRequestHandler(executor, InMemoryTaskStore(), card)
    app = Starlette(routes=create_agent_card_routes(card) + create_jsonrpc_routes(handler, "/"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield url, executor
    finally:
        server.should_exit = True
        thread.join(10)


async def test_a_remote_a2a_agent_serves_a_capability(
    remote: tuple[str, Remote], agent_procs: AgentProcs, mesh_client: Mesh
) -> None:
    url, executor = remote
    await wait_for(lambda: _listening(url), what="the remote A2A agent to listen")
    agent_procs.start("far", ["far"], kind="a2a", options={"url": url})
    await agent_procs.ready(mesh_client)

    done = await mesh_client.run("far", "hello there")
    assert (done.state, done.result) == ("done", "echo: hello there")

    failed = await mesh_client.run("far", "fail please")
    assert (failed.state, failed.reason) == ("failed", "error")
    assert "the remote cannot do that" in (failed.error or "")

    asked: list[str] = []

    async def answer(question: Any) -> str:
        asked.append(question.instruction)
        return "Lisbon"

    task = await mesh_client.submit("far", "ask me")
    final = await mesh_client.wait(task, on_question=answer)
    assert asked == ["Which city?"]
    assert (final.state, final.result) == ("done", "going to Lisbon")

    hanging = await mesh_client.submit("far", "hang on")
    await wait_for(lambda: executor.cancelled == [] and _working(mesh_client, hanging.id), what="the remote to work")
    await mesh_client.cancel(hanging.id)
    await wait_for(lambda: len(executor.cancelled) == 1, what="the remote task to be cancelled")

    late = await mesh_client.run("far", "hang until the deadline", deadline_s=1.5)
    assert (late.state, late.reason) == ("failed", "deadline")
    await wait_for(lambda: len(executor.cancelled) == 2, what="the remote task to be cancelled at our deadline")


async def _working(mesh: Mesh, task_id: str) -> bool:
    return (await mesh.get(task_id)).state == "working"


async def _listening(url: str) -> bool:
    import httpx

    try:
        async with httpx.AsyncClient() as http:
            return (await http.get(url + ".well-known/agent-card.json")).status_code == 200
    except httpx.TransportError:
        return False
