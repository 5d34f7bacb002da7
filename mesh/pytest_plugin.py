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
from .identity import ensure_keys
from .testing import AgentProcs, Keys

__all__ = ["broker", "keys", "mesh_client", "agent_procs", "with_auth"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "auth: run the test's broker with authorization (as MESH_TEST_AUTH=1 does for every test)"
    )


def with_auth(request: pytest.FixtureRequest) -> bool:
    """Whether this test's broker runs with authorization: the test is marked ``auth``,
    or ``MESH_TEST_AUTH=1`` runs every test that way."""
    return os.environ.get("MESH_TEST_AUTH", "") not in ("", "0") or request.node.get_closest_marker("auth") is not None


@pytest.fixture
def broker(tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Broker]:
    """A fresh nats-server with JetStream (store under the test's tmp dir). With auth
    (:func:`with_auth`), only keys in ``tmp_path/keys`` connect: the test itself is the
    operator ``test-client`` (``MESH_NKEY`` is set for it, so any client or command the
    test starts connects as the operator; ``MESH_TEST_AUTH_ROLE=client`` makes it a
    client), and each agent of ``agent_procs`` gets a key
    of its own id."""
    store = tmp_path / "js"
    store.mkdir()
    b = Broker(store=str(store))
    if with_auth(request):
        b.auth = str(tmp_path / "keys")
        # MESH_TEST_AUTH_ROLE=client runs the test as a mere client (what a requester may
        # do; tests that drain agents or change retention then fail, as they should)
        role = os.environ.get("MESH_TEST_AUTH_ROLE") or "operator"
        # As a client it is also the person at the inbox (bound to every capability:
        # it may clear the items of what it answers)
        seeds = ensure_keys(b.auth, {"test-client": role}, serves={"test-client": ("*",)} if role == "client" else None)
        monkeypatch.setenv("MESH_NKEY", str(seeds["test-client"]))
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def keys(broker: Broker) -> Keys:
    """Make keys on a broker with auth (mark the test ``auth``), e.g. an attacker's."""
    if broker.auth is None:
        pytest.skip("needs a broker with auth: mark the test with @pytest.mark.auth")
    return Keys(broker)


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
