"""How a process creates the mesh's JetStream resources, when it is the first to need
them: replicas, storage, the lease of the queues it creates, and how long finished
work stays readable. Existing resources are always used as they are. And how it
reaches the broker: the CA that must have signed the broker's TLS certificate."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from protocol import DEFAULT_LEASE_S, MAX_LEASE_S

from .defaults import parse_bytes, parse_duration

if TYPE_CHECKING:
    import ssl

__all__ = ["Settings", "SettingsError", "TlsError", "client_tls"]

T = TypeVar("T")


class SettingsError(ValueError):
    """An environment variable or flag holds a value the mesh cannot use."""


class TlsError(SettingsError):
    """A certificate or key file that cannot be used: missing, unreadable or not PEM."""


@dataclass(frozen=True)
class Settings:
    """Defaults come from the environment (``Settings.from_env``); see docs/DEPLOY.md.

    ``MESH_REPLICAS`` (3 on a 3-node cluster), ``MESH_STORAGE`` (file or memory),
    ``MESH_LEASE_S`` (the lease of queues this process creates), ``MESH_FINISHED_TTL``
    (how long a finished record stays in the live bucket, e.g. ``10m``), ``MESH_RETENTION``
    (how long finished work stays readable, e.g. ``7d``) and ``MESH_RETENTION_BYTES``
    (a size cap on that history, e.g. ``10GiB``, 2 GiB by default; 0 means none).
    ``MESH_TLS_CA`` (or ``--tls-ca``) names the CA file that verifies the broker;
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
    #: PEM file of the CA(s) that signed the broker's certificate. Set, the connection
    #: must be TLS and the broker must prove its name with a certificate from them;
    #: unset, a broker that asks for TLS is checked against the system's CAs
    tls_ca: str | None = None
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
            tls_ca=env.get("MESH_TLS_CA") or None,
            nkey=env.get("MESH_NKEY") or None,
        )


def client_tls(ca: str | None, *, pinned: bool = False) -> ssl.SSLContext | None:
    """The TLS context a client verifies the broker with: ``ca``'s certificates only
    (None without ``ca``: nats-py then uses the system's CAs if the broker asks for TLS).

    ``pinned``: ``ca`` is the broker's own certificate, not its CA (``mesh broker``
    checking the child it started): trusted as it is, whatever name it carries."""
    if ca is None:
        return None
    import ssl

    try:
        context = ssl.create_default_context(cafile=ca)
    except FileNotFoundError:
        raise TlsError(f"TLS CA file {ca}: no such file; point --tls-ca / MESH_TLS_CA at the CA's PEM file") from None
    except OSError as exc:
        raise TlsError(f"TLS CA file {ca}: cannot read it ({exc.strerror}); check its path and permissions") from None
    except ssl.SSLError:
        raise TlsError(
            f"TLS CA file {ca}: no PEM certificate in it; give the CA certificate (-----BEGIN CERTIFICATE-----)"
        ) from None
    if pinned:
        # A leaf certificate is not a CA: without partial chains OpenSSL would look for
        # its issuer. The pin is the exact certificate, so the name adds nothing.
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        context.check_hostname = False
    return context


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
