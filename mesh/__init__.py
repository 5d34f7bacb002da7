"""agent-mesh runtime: binds the protocol to NATS. Public API: the client, the agent
runtime and the worker interface; the CLI is ``mesh``.

Names are imported on first use (PEP 562), so ``mesh --help`` does not pay for
nats-py and anyio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Agent": "agent",
    "AgentConfig": "agent",
    "Brief": "briefs",
    "BriefError": "briefs",
    "Org": "briefs",
    "load_brief": "briefs",
    "load_org": "briefs",
    "Broker": "broker",
    "BrokerNotFound": "broker",
    "find_nats_server": "broker",
    "BrokerError": "bus",
    "Conflict": "bus",
    "CorruptRecord": "bus",
    "IdInUse": "presence",
    "IdentityError": "identity",
    "Unavailable": "bus",
    "MeshError": "bus",
    "NotFound": "bus",
    "Settings": "bus",
    "Unreachable": "bus",
    "Mesh": "client",
    "OverLimit": "client",
    "Lost": "work",
    "Reviewer": "work",
    "RoleViolation": "work",
    "Serving": "work",
    "TaskContext": "work",
    "TaskFailed": "work",
    "Verdict": "work",
    "Worker": "work",
}

__all__ = [
    "Agent",
    "AgentConfig",
    "Brief",
    "BriefError",
    "Broker",
    "BrokerError",
    "BrokerNotFound",
    "Conflict",
    "CorruptRecord",
    "IdInUse",
    "IdentityError",
    "Lost",
    "Mesh",
    "MeshError",
    "NotFound",
    "Org",
    "OverLimit",
    "Reviewer",
    "RoleViolation",
    "Serving",
    "Settings",
    "TaskContext",
    "TaskFailed",
    "Unavailable",
    "Unreachable",
    "Verdict",
    "Worker",
    "find_nats_server",
    "load_brief",
    "load_org",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mesh' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from .agent import Agent, AgentConfig
    from .briefs import Brief, BriefError, Org, load_brief, load_org
    from .broker import Broker, BrokerNotFound, find_nats_server
    from .bus import BrokerError, Conflict, CorruptRecord, MeshError, NotFound, Settings, Unavailable, Unreachable
    from .client import Mesh, OverLimit
    from .identity import IdentityError
    from .presence import IdInUse
    from .work import Lost, Reviewer, RoleViolation, Serving, TaskContext, TaskFailed, Verdict, Worker
