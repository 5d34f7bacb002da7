"""The short paths of a task's life (mesh/client.py, follow.py, bus.py, work.py): a run
that follows its task from before creating it, acks awaited after the work, waiting
on an id, a claim and a result in one write. Real broker; the acks are delayed or lost
by holding the client's replies."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import nats
import nats.errors
import pytest
from nats.aio.msg import Msg

from mesh.agent import Agent, AgentConfig
from mesh.broker import Broker
from mesh.bus import Unavailable
from mesh.client import Mesh
from mesh.testing import nats_options
from mesh.work import TaskContext
from protocol import Claim, Finish, TaskRecord, decode_event, new_task


class Echo:
    async def work(self, task: Any) -> Any:
        return task.instruction


@contextlib.asynccontextmanager
async def running(*agents: Agent) -> AsyncIterator[None]:
    """Agents in this process, drained on the way out. (Not a fixture: a task group must
    be left in the task that entered it.)"""
    async with anyio.create_task_group() as tg:
        for agent in agents:
            await tg.start(agent.run)
        yield
        for agent in agents:
            agent.drain()
            await agent.stopped()


def echo_agent(broker: Broker, agent_id: str = "echo-1") -> Agent:
    return Agent(AgentConfig(id=agent_id, serves=("echo",), capacity=4), Echo(), server=broker.url)


class HeldReplies:
    """Holds the acks a client's bus receives (JetStream's replies to its work items
    and events) until released; ``drop`` loses the first ``drop`` of them instead."""

    def __init__(self, mesh: Mesh, *, drop: int = 0) -> None:
        replies = mesh.bus._replies
        assert not replies.prefix, "install before the client's first acknowledged publish"
        self._deliver = replies._on_reply
        replies._on_reply = self._on_reply  # type: ignore[method-assign]
        self.drop = drop
        self.dropped = 0
        self.held: list[Msg] = []
        self.released = False

    async def _on_reply(self, msg: Msg) -> None:
        if self.dropped < self.drop:
            self.dropped += 1
        elif self.released:
            await self._deliver(msg)
        else:
            self.held.append(msg)

    async def release(self) -> int:
        held, self.held, self.released = self.held, [], True
        for msg in held:
            await self._deliver(msg)
        return len(held)


async def _on_end(url: str, task_id: str, then: Any) -> nats.aio.client.Client:
    """An independent observer: calls ``then()`` when the task's terminal event is out."""
    nc = await nats.connect(url, **nats_options())

    async def seen(msg: Msg) -> None:
        if decode_event(msg.data).state in ("done", "failed", "cancelled"):
            await then()

    await nc.subscribe(f"mesh.v2.evt.{task_id}.{task_id}.*", cb=seen)
    await nc.flush()
    return nc


async def test_run_returns_the_final_record_when_the_agent_finishes_before_the_create_acks(
    broker: Broker, mesh_client: Mesh
) -> None:
    replies = HeldReplies(mesh_client)
    released: list[int] = []

    async def release() -> None:
        released.append(await replies.release())

    observer = await _on_end(broker.url, "early1", release)
    try:
        async with running(echo_agent(broker)):
            record = await mesh_client.run("echo", "hello", task_id="early1")
    finally:
        await observer.close()
    assert record.state == "done" and record.result == "hello" and record.owner == "echo-1"
    # The work item's and the "created" event's acks were held until the task had
    # ended, and run() still returned only once they were in.
    assert released == [2]
    assert not mesh_client.bus._replies.waiting
    kinds = [e.kind for e in await mesh_client.history("early1")]
    assert kinds[0] == "created" and kinds.count("created") == 1 and kinds[-1] == "finish"


async def test_lost_acks_are_resent_and_deduplicated(broker: Broker, mesh_client: Mesh) -> None:
    """No agent: the client's work item and event acks are lost once; submit re-sends
    both (same Nats-Msg-Id) and returns only when they are acknowledged."""
    replies = HeldReplies(mesh_client, drop=2)
    await replies.release()
    record = await mesh_client.submit("nobody", "are you there?", task_id="lost1")
    assert replies.dropped == 2
    items = await mesh_client.bus.waiting_items("nobody")
    assert [item.task for _, item in items] == [record.id]  # stored once
    assert [e.kind for e in await mesh_client.history("lost1")] == ["created"]


async def test_submit_returns_with_offer_and_event_stored(broker: Broker) -> None:
    """A client that exits right after submit leaves an announced task."""
    mesh = await Mesh.connect(broker.url, client_id="quick")
    record = await mesh.submit("nobody", "still there after I leave", task_id="quick1")
    await mesh.bus.nc.close()  # no drain: only what submit awaited is guaranteed
    other = await Mesh.connect(broker.url, client_id="other")
    try:
        assert [item.task for _, item in await other.bus.waiting_items("nobody")] == [record.id]
        assert [e.kind for e in await other.history("quick1")] == ["created"]
        # Never claimed, so not in the tasks bucket: its item and its "created" event
        # carry it, and anyone can read it.
        assert await other.get("quick1") == record
    finally:
        await other.close()


async def test_wait_on_an_id_or_a_submitted_record(broker: Broker, mesh_client: Mesh) -> None:
    async with running(echo_agent(broker)):
        submitted = await mesh_client.submit("echo", "one")
        assert (await mesh_client.wait(submitted.id)).result == "one"
        assert (await mesh_client.wait(submitted.id)).state == "done"  # already over: at once
        second = await mesh_client.submit("echo", "two")
        assert (await mesh_client.wait(second)).result == "two"


async def test_delegated_work_waits_for_its_child(broker: Broker, mesh_client: Mesh) -> None:
    """A worker's delegation creates its child and follows it (TaskContext._hand_off)."""

    class Delegator:
        async def work(self, task: Any) -> Any:
            child = await task.delegate("echo", f"child of {task.instruction}")
            return f"{child.state}: {child.result}"

    boss = Agent(
        AgentConfig(id="boss", serves=("boss",), delegates=("echo",), capacity=2), Delegator(), server=broker.url
    )
    async with running(boss, echo_agent(broker)):
        record = await mesh_client.run("boss", "x")
    assert record.state == "done" and record.result == "done: child of x"
    tree = await mesh_client.tree(record.id)
    assert [(depth, r.state) for depth, r in tree] == [(0, "done"), (1, "done")]


async def test_an_owner_whose_finish_ack_was_lost_still_announces_it(
    mesh_client: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker commits the finish, but its ack is lost and so is the read that would
    have checked it: the owner's retry recognises its own write (not Lost) and the
    finish is announced once."""
    bus = mesh_client.bus
    record = new_task(task_id="unacked1", capability="x", instruction="i", requester="test-client", now=time.time())
    held, revision = await bus.write(record, 0, Claim(actor="w"))  # a first claim creates the key
    ctx = TaskContext(bus, held, revision, agent="w", delegates=())
    faults = _lose_one_ack_and_its_check(monkeypatch, mesh_client)
    done = await ctx.write(Finish(actor="w", epoch=1, result="r"))
    assert done.state == "done" and done.result == "r" and faults == {"ack": 0, "check": 0}
    assert [e.kind for e in await mesh_client.history("unacked1")] == ["claim", "finish"]


async def test_a_quick_task_is_claimed_and_finished_in_one_write(
    mesh_client: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that finishes before its claim is due writes both in one compare-and-set
    (here creating the key, as a task never claimed has none); its ack and the check
    are lost, and the retry still recognises the write as its own."""
    bus = mesh_client.bus
    record = new_task(task_id="quick2", capability="x", instruction="i", requester="test-client", now=time.time())
    ctx = TaskContext(bus, record, 0, agent="w", delegates=(), claim=Claim(actor="w", ticket=7))
    assert not ctx.claimed and ctx.epoch == 1
    faults = _lose_one_ack_and_its_check(monkeypatch, mesh_client)
    done = await ctx.end(Finish(actor="w", epoch=ctx.epoch, result="r"))
    await ctx.settle()
    assert done.state == "done" and done.owner == "w" and done.ticket == 7 and faults == {"ack": 0, "check": 0}
    assert ctx.claimed
    [event] = await mesh_client.history("quick2")  # one write, one event
    assert event.kind == "finish" and event.note == "claim + finish in one write" and event.record == done
    live, revision = await bus.read("quick2")
    assert live == done and revision == ctx.revision


def _lose_one_ack_and_its_check(monkeypatch: pytest.MonkeyPatch, mesh: Mesh) -> dict[str, int]:
    """The next record write lands on the real broker but its ack is lost, and the next
    record read (the writer's check) fails: counts of faults still to come."""
    bus = mesh.bus
    real_write, real_read = bus._compare_and_set, bus.read
    faults = {"ack": 1, "check": 1}

    async def lossy_write(*args: Any, **kwargs: Any) -> int:
        landed = await real_write(*args, **kwargs)
        if faults["ack"]:
            faults["ack"] -= 1
            raise Unavailable("injected: the ack was lost")
        return landed

    async def failing_read(task_id: str) -> tuple[TaskRecord, int]:
        if faults["check"]:
            faults["check"] -= 1
            raise Unavailable("injected: the broker is away")
        return await real_read(task_id)

    monkeypatch.setattr(bus, "_compare_and_set", lossy_write)
    monkeypatch.setattr(bus, "read", failing_read)
    return faults
