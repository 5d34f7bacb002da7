"""How a process creates the mesh's JetStream resources, when it is the first to need
them: replicas, storage, the lease of the queues it creates, and how long finished
work stays readable. Existing resources are always used as they are."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from protocol import DEFAULT_LEASE_S, MAX_LEASE_S

from .defaults import parse_bytes, parse_duration

__all__ = ["Settings", "SettingsError"]

T = TypeVar("T")


class SettingsError(ValueError):
    """An environment variable or flag holds a value the mesh cannot use."""


@dataclass(frozen=True)
class Settings:
    """Defaults come from the environment (``Settings.from_env``); see docs/DEPLOY.md.

    ``MESH_REPLICAS`` (3 on a 3-node cluster), ``MESH_STORAGE`` (file or memory),
    ``MESH_LEASE_S`` (the lease of queues this process creates), ``MESH_FINISHED_TTL``
    (how long a finished record stays in the live bucket, e.g. ``10m``), ``MESH_RETENTION``
    (how long finished work stays readable, e.g. ``7d``) and ``MESH_RETENTION_BYTES``
    (a size cap on that history, e.g. ``10GiB``, 2 GiB by default; 0 means none).
    ``MESH_NKEY`` is the seed file to connect with."""

    replicas: int = 1
    #: file storage survives broker restarts; memory is for benchmarks only
    storage: str = "file"
    #: the AckWait of queues this process creates: how long a holder may stay silent
    #: before the broker lends its work item to another agent (failover time)
    lease_s: float = DEFAULT_LEASE_S
    #: how long a finished record stays in the live tasks bucket (its events, which
    #: carry it, stay for ``retention_s``)
    finished_ttl_s: float = 600.0
    #: how long the events stream keeps events (the trace, and the archive of records)
    retention_s: float = 7 * 24 * 3600.0
    #: a size cap on the events stream, bytes (0: none; the oldest events go first). The
    #: broker indexes every event subject in memory until the event goes, so a cap
    #: bounds its memory as well as its disk
    retention_bytes: int = 2 * 1024**3
    #: a queue nobody pulled from or published to for this long is removed by the
    #: broker (its items stay in the stream for the next queue of that capability)
    queue_idle_s: float = 3600.0
    #: the seed file this process connects with (``MESH_NKEY``, or ``--nkey``): its
    #: key's name is the process's id in the mesh (see mesh/identity.py). None: no key
    #: (a broker without auth). A credential, not a tuning: settings made in code for
    #: something else still connect with the process's key
    nkey: str | None = field(default_factory=lambda: os.environ.get("MESH_NKEY") or None)

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        replicas = env.get("MESH_REPLICAS", "1")
        storage = env.get("MESH_STORAGE", "file")
        if not replicas.isdigit() or not 1 <= int(replicas) <= 5:
            raise SettingsError(f"MESH_REPLICAS={replicas!r}: expected 1 to 5 (3 on a 3-node cluster)")
        if storage not in ("file", "memory"):
            raise SettingsError(f"MESH_STORAGE={storage!r}: expected file or memory")
        lease_s = _parsed(env, "MESH_LEASE_S", _duration, DEFAULT_LEASE_S)
        if lease_s > MAX_LEASE_S:  # a protocol limit: a longer lease only slows failover
            raise SettingsError(f"MESH_LEASE_S: {lease_s:g} s is over the limit of {MAX_LEASE_S:g} s")
        return cls(
            replicas=int(replicas),
            storage=storage,
            lease_s=lease_s,
            finished_ttl_s=_parsed(env, "MESH_FINISHED_TTL", _duration, cls.finished_ttl_s),
            retention_s=_parsed(env, "MESH_RETENTION", _duration, cls.retention_s),
            retention_bytes=_parsed(env, "MESH_RETENTION_BYTES", parse_bytes, cls.retention_bytes),
            nkey=env.get("MESH_NKEY") or None,
        )


#: JetStream keeps durations in 64-bit nanoseconds (292 years); longer ones overflow
MAX_DURATION_S = 36500 * 86400.0


def _duration(text: str) -> float:
    value = parse_duration(text)
    if value > MAX_DURATION_S:
        raise ValueError(f"duration {text!r} is too long: at most 36500d (100 years)")
    return value


def _parsed(env: os._Environ[str], name: str, parse: Callable[[str], T], default: T) -> T:
    """``parse(env[name])``, or ``default`` if it is unset; a bad value names the variable."""
    text = env.get(name)
    if not text:
        return default
    try:
        return parse(text)
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from None
