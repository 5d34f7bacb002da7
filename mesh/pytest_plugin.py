"""pytest fixtures for testing against a real mesh: a fresh nats-server with
JetStream per test (``broker``), a connected client (``mesh_client``) and real agent
processes (``agent_procs``, see :class:`mesh.testing.AgentProcs`).

It lives apart from :mod:`mesh.testing` so that the runtime package never imports
pytest. Load it in a conftest.py at the root of your tests::

    pytest_plugins = ["mesh.pytest_plugin"]
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from .broker import Broker
from .client import Mesh
from .testing import AgentProcs

__all__ = ["broker", "mesh_client", "agent_procs"]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A fresh nats-server with JetStream (store under the test's tmp dir)."""
    store = tmp_path / "js"
    store.mkdir()
    b = Broker(store=str(store))
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
async def mesh_client(broker: Broker) -> AsyncIterator[Mesh]:
    mesh = await Mesh.connect(broker.url, client_id="test-client")
    try:
        yield mesh
    finally:
        await mesh.close()


@pytest.fixture
def agent_procs(broker: Broker, tmp_path: Path) -> Iterator[AgentProcs]:
    procs = AgentProcs(broker, tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()
        if os.environ.get("MESH_TEST_SHOW_LOGS"):
            for agent_id in procs.procs:
                sys.stderr.write(f"--- {agent_id} ---\n{procs.log(agent_id)}\n")
