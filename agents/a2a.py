"""The ``a2a`` kind: a remote A2A agent as a member of an org (docs/INTEROP.md).

A brief with ``kind = "a2a"`` and ``url = "http://host:port/"`` in its options (or
``[options] url``) forwards every task it takes to that agent with the A2A SDK's client
and streams the answer back: the task's text (and its data, as a data part) is one
message; a remote ``input-required`` becomes our clarification to the requester
(``task.ask``) and its answer the next message of the remote task; ``completed``
returns the remote's artifacts (text, or data); ``failed``, ``rejected`` and
``canceled`` fail our task with the remote's reason. Our deadline goes along in the
message's metadata (``deadline_s``); when our task is cancelled or runs out of time
the runtime stops the work, and the remote task is cancelled on the way out.

The SDK is the extra ``agent-mesh[a2a]``, imported only when a brief names the kind.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

import anyio
import structlog

from mesh.briefs import Brief
from mesh.kinds import KindError
from mesh.work import TaskContext, TaskFailed

__all__ = ["A2AAgent"]

log = structlog.get_logger("agents.a2a")

#: how long a cancel of the remote task may take once ours is stopped
CANCEL_PATIENCE_S = 5.0


class A2AAgent:
    """Forwards its tasks to a remote A2A agent (options: ``url``, ``skill``, ``timeout_s``)."""

    def __init__(self, brief: Brief) -> None:
        try:
            import a2a.client  # noqa: F401
        except ImportError:
            raise KindError(f"brief {brief.name!r}: kind 'a2a' needs the SDK: pip install 'agent-mesh[a2a]'") from None
        url = brief.options.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise KindError(f"brief {brief.name!r}: field `options.url`: the remote agent's http(s) URL, got {url!r}")
        self.url = url
        self.skill = str(brief.options.get("skill", ""))
        self.timeout_s = float(brief.options.get("timeout_s", 30.0))

    async def work(self, task: TaskContext) -> Any:
        import httpx
        from a2a.client import ClientConfig, create_client

        async with httpx.AsyncClient(timeout=httpx.Timeout(self.timeout_s, read=None)) as http:
            client = await create_client(self.url, ClientConfig(streaming=True, httpx_client=http))
            try:
                return await self._converse(client, task)
            finally:
                await client.close()

    async def _converse(self, client: Any, task: TaskContext) -> Any:
        message = self._message(task, text=task.instruction, data=task.data)
        remote = _Remote()
        ended = False  # the remote task ended (or asked): nothing to cancel there
        try:
            while True:
                ended = False
                state, status_text, artifacts = await self._send(client, message, remote, task.record.deadline)
                remote_id = remote.id
                ended = state in _STOPS
                if state == "input-required":
                    answer = await task.ask(status_text or "the remote agent needs more input")
                    message = self._message(task, text=answer, task_id=remote_id)
                    continue
                if state == "completed":
                    return _result(artifacts)
                reason: Literal["rejected", "error"] = "rejected" if state in ("rejected", "auth-required") else "error"
                raise TaskFailed(
                    f"remote A2A agent {self.url}: task {remote_id} {state}: {status_text}".strip(": "), reason=reason
                )
        finally:
            # Stopped another way (our task was cancelled or hit its deadline, which the
            # runtime delivers as a cancellation, or the stream broke): stop the remote
            # task too. (The SDK's stream may turn the cancellation into its own error.)
            if remote.id and not ended:
                with anyio.move_on_after(CANCEL_PATIENCE_S, shield=True):
                    await _cancel(client, remote.id)

    def _message(self, task: TaskContext, *, text: str, data: Any = None, task_id: str = "") -> Any:
        from a2a.helpers import new_data_part, new_text_part
        from a2a.types import Message, Role

        parts = [new_text_part(text)]
        if data is not None:
            parts.append(new_data_part(data))
        message = Message(message_id=uuid.uuid4().hex, role=Role.ROLE_USER, parts=parts, task_id=task_id)
        if self.skill:
            message.metadata.update({"skill": self.skill})
        return message

    async def _send(
        self, client: Any, message: Any, remote: _Remote, deadline: float | None
    ) -> tuple[str, str, list[Any]]:
        """Send one message and follow the remote task to an end or a question."""
        from a2a.types import SendMessageRequest

        request = SendMessageRequest(message=message)
        if deadline is not None:
            request.metadata.update({"deadline_s": max(deadline - time.time(), 0.001)})
        state, text, artifacts = "submitted", "", []
        async for response in client.send_message(request):
            kind = response.WhichOneof("payload")
            if kind == "message":  # a direct reply, no task: the answer itself
                return "completed", "", [response.message]
            if kind == "task":
                remote.id = response.task.id
                artifacts = list(response.task.artifacts)
                state, text = _state(response.task.status)
            elif kind == "status_update":
                remote.id = response.status_update.task_id or remote.id
                state, text = _state(response.status_update.status)
            elif kind == "artifact_update":
                artifacts.append(response.artifact_update.artifact)
            if state in _STOPS:
                return state, text, artifacts
        return state, text, artifacts


class _Remote:
    """The remote task of one of ours, as far as we know it (its id arrives mid-stream)."""

    id: str = ""


_STOPS = frozenset({"completed", "failed", "canceled", "rejected", "input-required", "auth-required"})


def _state(status: Any) -> tuple[str, str]:
    from a2a.helpers import get_message_text
    from a2a.types import TaskState

    name = TaskState.Name(status.state).removeprefix("TASK_STATE_").lower().replace("_", "-")
    return name, get_message_text(status.message) if status.HasField("message") else ""


def _result(artifacts: list[Any]) -> Any:
    """Artifacts' parts as our result: text joined, or the data, or a list of both."""
    from a2a.helpers import get_data_parts, get_text_parts

    texts: list[str] = []
    data: list[Any] = []
    for artifact in artifacts:
        texts += get_text_parts(list(artifact.parts))
        data += get_data_parts(list(artifact.parts))
    if not data:
        return "\n".join(texts)
    if not texts:
        return data[0] if len(data) == 1 else data
    return {"text": "\n".join(texts), "data": data}


async def _cancel(client: Any, remote_id: str) -> None:
    from a2a.types import CancelTaskRequest

    try:
        await client.cancel_task(CancelTaskRequest(id=remote_id))
    except Exception as exc:  # best effort: it may have ended meanwhile
        log.info("could not cancel the remote task", task=remote_id, error=repr(exc))
