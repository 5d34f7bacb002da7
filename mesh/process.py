"""Running agents as OS processes: one agent per ``mesh agent run``, and a group of
them for ``mesh up`` / ``mesh demo``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from protocol import Names

from .agent import Agent, AgentConfig
from .briefs import Brief
from .kinds import make_worker

__all__ = ["agent_config", "run_agent", "AgentProcess", "spawn_agent"]


def agent_config(brief: Brief, agent_id: str | None = None) -> AgentConfig:
    return AgentConfig(
        id=agent_id or brief.name,
        role=brief.role,
        description=brief.brief.strip().splitlines()[0] if brief.brief.strip() else "",
        kind=brief.kind,
        brief=brief.name,
        serves=brief.serves,
        delegates=brief.delegates,
        expertise=brief.expertise,
        capacity=brief.capacity,
        lease_s=brief.lease_s,
        drain_timeout_s=brief.drain_timeout_s,
    )


async def run_agent(brief: Brief, *, server: str, agent_id: str | None = None, prefix: str = "mesh") -> None:
    """Run one agent until SIGTERM or SIGINT, then drain and return."""
    agent = Agent(agent_config(brief, agent_id), make_worker(brief), server=server, names=Names(prefix))

    joined = False

    async def on_signals(
        scope: anyio.CancelScope, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        # Listening before the agent starts, so that no signal meets Python's default
        # handler: one while the agent joins (the broker may be down, and joining retries)
        # stops it at once, as it holds nothing yet; one after it joined drains it. Keep
        # receiving until we leave: a second signal (Ctrl-C reaches a whole process group,
        # then `mesh up` sends SIGTERM) must not kill a draining agent.
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if not joined:
                    agent.log.info("signal received while joining; leaving", signal=name)
                    scope.cancel()
                elif agent.draining:
                    agent.log.info("signal received while draining; still draining", signal=name)
                else:
                    agent.log.info("signal received, draining", signal=name)
                    agent.drain()

    async with anyio.create_task_group() as tg:
        await tg.start(on_signals, tg.cancel_scope)
        await tg.start(agent.run)
        joined = True
        await agent.stopped()
        tg.cancel_scope.cancel()


@dataclass
class AgentProcess:
    """A ``mesh agent run`` child process."""

    agent_id: str
    process: subprocess.Popen[bytes]
    log_path: Path | None = None
    expected_exit: bool = field(default=False)

    def drain(self) -> None:
        if self.process.poll() is None:
            self.expected_exit = True
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.expected_exit = True
            self.process.kill()

    def wait(self, timeout: float | None = None) -> int:
        return self.process.wait(timeout)


def spawn_agent(
    brief_file: str | Path,
    *,
    server: str,
    agent_id: str | None = None,
    agent_name: str | None = None,
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
) -> AgentProcess:
    """Start ``mesh agent run`` for a brief (or one agent of an org file) as a child,
    logging to ``log_path`` or, without one, to this process's own stdout and stderr."""
    cmd = [sys.executable, "-m", "mesh", "agent", "run", str(brief_file), "--server", server]
    if agent_id:
        cmd += ["--id", agent_id]
    if agent_name:
        cmd += ["--agent", agent_name]
    out = open(log_path, "ab") if log_path else None  # None: the child's logs go where ours go
    try:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, env={**os.environ, **(env or {})})
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]
    return AgentProcess(agent_id=agent_id or agent_name or str(brief_file), process=proc, log_path=log_path)
