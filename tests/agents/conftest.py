"""Fixtures for the agents' tests: briefs written as TOML (with the nested tables
mock scripts need), agent processes started from them, and a broker shared by one
module's tests (LLM agent processes import litellm, which takes seconds: a module
starts its agents once)."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mesh.broker import Broker
from mesh.client import Mesh
from mesh.process import AgentProcess, spawn_agent
from mesh.testing import AgentProcs


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_brief(directory: Path, name: str, **fields: Any) -> Path:
    path = directory / f"{name}.toml"
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in {"name": name, **fields}.items()))
    return path


#: agents in these tests use a model only if their brief names one
OFFLINE_ENV = {"MESH_MODEL": "", "MESH_LOG_LEVEL": "info"}


def start(procs: AgentProcs, name: str, *, env: dict[str, str] | None = None, **fields: Any) -> AgentProcess:
    """Start one agent process from a brief with ``fields`` (and ``env`` on top of the
    offline one); stopped at teardown."""
    path = write_brief(procs.directory, name, **fields)
    proc = spawn_agent(
        path,
        server=procs.broker.url,
        agent_id=name,
        log_path=procs.directory / f"{name}.log",
        env={**OFFLINE_ENV, **(env or {})},
    )
    procs.procs[name] = proc
    return proc


@pytest.fixture
def start_agent(agent_procs: AgentProcs) -> Callable[..., AgentProcess]:
    return lambda name, **fields: start(agent_procs, name, **fields)


@pytest.fixture(scope="module")
def shared_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    store = tmp_path_factory.mktemp("js")
    b = Broker(store=str(store))
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="module")
def shared_procs(shared_broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcs]:
    procs = AgentProcs(shared_broker, tmp_path_factory.mktemp("agents"))
    try:
        yield procs
    finally:
        procs.stop_all()
        if any(p.process.returncode not in (0, None) for p in procs.procs.values()):
            for agent_id in procs.procs:
                sys.stderr.write(f"--- {agent_id} ---\n{procs.log(agent_id)[-4000:]}\n")


@pytest.fixture(scope="module")
def shared_start(shared_procs: AgentProcs) -> Callable[..., AgentProcess]:
    return lambda name, **fields: start(shared_procs, name, **fields)


@pytest.fixture
async def shared_client(shared_broker: Broker) -> AsyncIterator[Mesh]:
    mesh = await Mesh.connect(shared_broker.url, client_id="test-client")
    try:
        yield mesh
    finally:
        await mesh.close()
