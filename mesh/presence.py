"""An agent's presence in the mesh: its card in the directory, its control endpoint
(and the services API entry that lists it), and the rule of one live process per id.

The card is a heartbeat: it expires by itself if the process dies, so the directory
shows who is alive. The control endpoint answers ``status`` and ``drain``. An agent
that starts under an id a live agent answers to is refused; one that leaves removes
only its own card.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from protocol import AgentCard, ControlReply, ControlRequest, NotUnderstood, RemoteProtocolError, decode_control, encode

from .bus import MeshError, NotFound, Unavailable
from .identity import load_seed

if TYPE_CHECKING:
    from .agent import Agent

__all__ = ["IdInUse", "Presence"]


class IdInUse(MeshError):
    """Another live agent already runs under this agent id."""


class Presence:
    """``agent``'s card, heartbeat and control endpoint (see the module docstring)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.host, self.pid = socket.gethostname(), os.getpid()
        #: the public key of the key this agent connects with (the broker checked it):
        #: on the card, so a reader can tell which key stands behind an id
        nkey = agent.settings.nkey
        self.public_key = load_seed(nkey).public_key if nkey else None

    def card(self) -> AgentCard:
        agent, config = self.agent, self.agent.config
        return AgentCard(
            id=config.id,
            role=config.role,
            description=config.description,
            kind=config.kind,
            serves=config.serves,
            delegates=config.delegates,
            expertise=config.expertise,
            capacity=config.capacity,
            load=agent.load(),
            tasks=agent.held_tasks(),
            draining=agent.draining,
            version=config.version,
            host=self.host,
            pid=self.pid,
            started=agent.started,
            heartbeat_s=config.heartbeat_s,
            completed=agent.stats.completed,
            failed=agent.stats.failed,
            refused=agent.bus.refused,
            public_key=self.public_key,
        )

    async def publish_card(self) -> None:
        await self.agent.bus.publish_card(self.card(), ttl_s=max(3 * self.agent.config.heartbeat_s, 1.0))

    async def heartbeat(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Put the card up, then keep it fresh until cancelled."""
        await self.publish_card()
        task_status.started()
        while True:
            await anyio.sleep(self.agent.config.heartbeat_s)
            try:
                await self.publish_card()
            except MeshError as exc:
                # Broker away: the card expires and reappears when we reconnect.
                self.agent.log.warning("heartbeat failed", error=str(exc) or type(exc).__name__)

    async def refuse_a_live_namesake(self) -> None:
        """One id, one live process: if an agent answers on our id's control endpoint,
        this process must not join under the same id (it would take that agent's
        control requests and overwrite its card). A card left by a dead process of
        ours does not count: nobody answers for it."""
        agent_id, bus = self.agent.config.id, self.agent.bus
        try:
            await bus.request(bus.names.control_subject(agent_id), encode(ControlRequest(action="status")), timeout=2.0)
        except (NotFound, Unavailable):
            return  # nobody listens (the usual case), or nobody answered in time
        where = ""
        with contextlib.suppress(MeshError):  # only to say where that agent runs: the refusal stands
            card = await bus.card(agent_id)
            if card is not None:
                where = f" (on {card.host}, pid {card.pid})"
        raise IdInUse(
            f"agent id {agent_id!r} is in use by a live agent{where}; run this one with another "
            "--id, or stop that one first (`mesh agent drain ID`)"
        )

    async def leave(self) -> None:
        """Leave the directory: remove our card (it expires by itself if that fails)."""
        try:
            with anyio.move_on_after(2):
                await self.remove_our_card()
        except MeshError as exc:
            self.agent.log.warning(
                "could not remove our card; it expires by itself", error=str(exc) or type(exc).__name__
            )

    async def remove_our_card(self) -> None:
        """Remove our card, and only ours: a process that leaves must not delete the card
        of another process (which may have the same id by mistake)."""
        agent = self.agent
        card = await agent.bus.card(agent.config.id)
        if card is None:
            return
        if (card.host, card.pid, card.started) != (self.host, self.pid, agent.started):
            agent.log.warning("the card under our id is another process's; leaving it", host=card.host, pid=card.pid)
            return
        await agent.bus.remove_card(agent.config.id)

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Answer on the control endpoint (listed by the services API) until cancelled."""
        config = self.agent.config
        async with self.agent.bus.service(
            version=config.version if _semver(config.version) else "0.1.0",
            description=f"agent-mesh agent {config.id}: {config.role or config.kind}",
            metadata={
                "agent": config.id,
                "brief": config.brief or config.id,
                "serves": ",".join(config.serves),
                "role": config.role,
                "kind": config.kind,
                "capacity": str(config.capacity),
            },
            # Named after the agent, so that the rows of `nats micro stats mesh-agent`
            # (instance id, endpoint, requests...) say whose they are.
            endpoint=config.id,
            subject=self.agent.names.control_subject(config.id),
            handle=self._control,
            stats=self.stats,
        ):
            task_status.started()
            await anyio.sleep_forever()

    def stats(self) -> dict[str, Any]:
        """What ``$SRV.STATS`` shows of this agent (the endpoint's ``data``): a fleet
        view for `nats micro stats mesh-agent --json` and `nats micro info`."""
        agent, config = self.agent, self.agent.config
        return {
            "agent": config.id,
            "brief": config.brief or config.id,
            "role": config.role,
            "kind": config.kind,
            "serves": list(config.serves),
            "load": agent.load(),
            "capacity": config.capacity,
            "tasks": list(agent.held_tasks()),
            "reviews": agent.reviews_held(),
            "done": agent.stats.completed,
            "failed": agent.stats.failed,
            "reviewed": agent.stats.reviews,
            "refused": agent.bus.refused,
            "draining": agent.draining,
            "host": self.host,
            "pid": self.pid,
        }

    async def _control(self, data: bytes) -> bytes:
        """Answer a control request (``status``, ``drain``); garbage gets NotUnderstood."""
        agent = self.agent
        subject = agent.names.control_subject(agent.config.id)
        try:
            control = decode_control(data)
        except RemoteProtocolError as exc:
            await agent.bus.report(f"control request: {exc}", subject=subject)
            return encode(NotUnderstood(subject=subject, error=str(exc), at=time.time()))
        if control.action == "drain":
            agent.log.info("drain requested over the control endpoint")
            agent.drain()
        reply = ControlReply(
            agent=agent.config.id, action=control.action, draining=agent.drain_requested(), tasks=agent.held_tasks()
        )
        return encode(reply)


def _semver(version: str) -> bool:
    parts = version.split(".")
    return len(parts) == 3 and all(p.isdigit() for p in parts)
