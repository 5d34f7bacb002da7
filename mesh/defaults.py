"""Defaults shared by the client and the CLI, importable without the runtime (and so
without nats-py: the CLI decides how nats-py is imported, see ``mesh agent run``)."""

from __future__ import annotations

import os

__all__ = ["DEFAULT_SERVER", "default_server"]

DEFAULT_SERVER = "nats://127.0.0.1:4222"


def default_server() -> str:
    """The server URL commands use without ``--server``: ``MESH_SERVER``, else local."""
    return os.environ.get("MESH_SERVER", DEFAULT_SERVER)
