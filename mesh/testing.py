"""Test helpers shipped with the package (as structlog ships ``structlog.testing``):
real agent processes, a 3-node cluster, briefs, polling. They import no test
framework; the pytest fixtures built on them (a real nats-server per test on free
loopback ports, a client, agent processes) are the plugin :mod:`mesh.pytest_plugin`.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from .broker import Broker, free_ports
from .bus import NotFound
from .client import Mesh
from .identity import connect_options, ensure_keys
from .process import AgentProcess, spawn_agent
from .settings import Settings

__all__ = ["AgentProcs", "Keys", "Cluster", "write_brief", "wait_for", "gone_from_the_bucket", "nats_options"]


def write_brief(directory: Path, name: str, serves: list[str], **fields: Any) -> Path:
    """Write a brief TOML file and return its path."""
    lines = [f'name = "{name}"', f"serves = {_toml(serves)}"]
    options = fields.pop("options", None)
    review = fields.pop("review", None)
    for key, value in fields.items():
        lines.append(f"{key} = {_toml(value)}")
    if options:
        lines.append("[options]")
        lines += [f"{k} = {_toml(v)}" for k, v in options.items()]
    if review:
        lines.append("[review]")
        lines += [f"{k} = {_toml(v)}" for k, v in review.items()]
    path = directory / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML here")


async def wait_for(predicate: Callable[[], Any], *, timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll an async or sync predicate until truthy; fail the test with ``what``.

    For state that lives in another process (the directory, a record) there is no
    event to await from here, so we poll the broker, bounded in time."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if hasattr(value, "__await__"):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await anyio.sleep(0.05)


async def gone_from_the_bucket(mesh: Mesh, task_id: str) -> bool:
    """Whether a task's record has left the live bucket (a finished one expires)."""
    try:
        await mesh.bus.read(task_id)
    except NotFound:
        return True
    return False


def nats_options(name: str = "test-client") -> dict[str, Any]:
    """nats-py ``connect`` options for a raw connection acting as ``name``: none on an
    open broker; with ``MESH_NKEY`` set (the ``broker`` fixture with auth sets it), its
    key and inbox prefix."""
    return connect_options(os.environ.get("MESH_NKEY") or None, name)


class Keys:
    """The keys of a broker run with authorization (``Broker(auth=DIR)``): a key is made
    when first asked for, and the broker reloaded so that it can connect at once."""

    def __init__(self, broker: Broker) -> None:
        assert broker.auth is not None, "a broker with auth"
        self.broker = broker
        self.directory = Path(broker.auth)

    def seed(self, name: str, role: str = "agent") -> Path:
        """The seed file of key ``name`` (made with ``role`` if missing)."""
        path = self.directory / f"{name}.nk"
        if not path.exists():
            ensure_keys(self.directory, {name: role})
            if self.broker.process is not None:
                self.broker.reload()
        return path

    def settings(self, name: str, role: str = "client") -> Settings:
        return dataclasses.replace(Settings.from_env(), nkey=str(self.seed(name, role)))

    async def connect(self, name: str, role: str = "client", **kwargs: Any) -> Mesh:
        """A client connected with key ``name``."""
        return await Mesh.connect(self.broker.url, client_id=name, settings=self.settings(name, role), **kwargs)


class AgentProcs:
    """Real ``mesh agent run`` processes, stopped (SIGKILL if need be) at teardown. On a
    broker with authorization each agent connects with a key of its own id."""

    def __init__(self, broker: Broker, directory: Path) -> None:
        self.broker = broker
        self.directory = directory
        self.procs: dict[str, AgentProcess] = {}
        self.keys = Keys(broker) if broker.auth else None

    def start(
        self,
        name: str,
        serves: list[str],
        *,
        agent_id: str | None = None,
        env: dict[str, str] | None = None,
        **fields: Any,
    ) -> AgentProcess:
        brief = write_brief(self.directory, name, serves, **fields)
        agent_id = agent_id or name
        if self.keys is not None and "MESH_NKEY" not in (env or {}):
            env = {**(env or {}), "MESH_NKEY": str(self.keys.seed(agent_id, "agent"))}
        log = self.directory / f"{agent_id}.log"
        proc = spawn_agent(
            brief,
            server=self.broker.url,
            agent_id=agent_id,
            log_path=log,
            env={"MESH_LOG_LEVEL": "info", **(env or {})},
        )
        self.procs[agent_id] = proc
        return proc

    async def ready(self, mesh: Mesh, *ids: str, timeout: float = 20.0) -> None:
        want = set(ids or self.procs)

        async def joined() -> bool:
            for agent_id in want:
                p = self.procs.get(agent_id)
                if p is not None and p.process.poll() is not None:
                    raise AssertionError(f"agent {agent_id} exited with {p.process.returncode}:\n{self.log(agent_id)}")
            return want <= {c.id for c in await mesh.agents()}

        await wait_for(joined, timeout=timeout, what=f"agents {sorted(want)} to join the directory")

    def log(self, agent_id: str) -> str:
        p = self.procs[agent_id]
        return p.log_path.read_text() if p.log_path and p.log_path.exists() else ""

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.process.poll() is None:
                p.process.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.process.wait(20)
            except subprocess.TimeoutExpired:  # not drained in time: the test's end must not wait longer
                p.process.kill()
                p.process.wait()


class Cluster:
    """A 3-node nats-server cluster with JetStream on loopback (free ports)."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        self.cluster_ports = free_ports(size)
        self.nodes: list[Broker] = []
        for i in range(size):
            store = directory / f"n{i + 1}"
            store.mkdir(parents=True, exist_ok=True)
            routes = ",".join(f"nats://127.0.0.1:{p}" for j, p in enumerate(self.cluster_ports) if j != i)
            self.nodes.append(
                Broker(
                    store=str(store),
                    extra_args=(
                        "--server_name",
                        f"n{i + 1}",
                        "--cluster_name",
                        "mesh-test",
                        "--cluster",
                        f"nats://127.0.0.1:{self.cluster_ports[i]}",
                        "--routes",
                        routes,
                    ),
                )
            )

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes if node.process is not None)

    def start(self) -> Cluster:
        for node in self.nodes:
            node.launch()
        for node in self.nodes:
            node.wait_healthy(timeout=30)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
