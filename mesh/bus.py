"""The one place nats-py is spoken: connection, JetStream resources, and the task
board's reads and compare-and-set writes, with nats-py's exceptions translated into
ours (the way httpcore maps its transport's errors)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import msgspec
import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

from protocol import (
    VERSION_HEADER,
    BoardChange,
    ErrorReport,
    Event,
    Names,
    TaskEvent,
    TaskRecord,
    apply,
    board_change,
    decode_record,
    encode,
    event_kind,
    is_terminal,
)

__all__ = [
    "MeshError",
    "Conflict",
    "NotFound",
    "Unreachable",
    "Unavailable",
    "Reconnects",
    "Settings",
    "Bus",
    "connect",
]


#: offers carrying their record stay under this size (bytes); larger records are read
OFFER_RECORD_LIMIT = 8 * 1024


class MeshError(Exception):
    """Base of the runtime's errors."""


class Conflict(MeshError):
    """A compare-and-set lost: someone else wrote the record first."""


class NotFound(MeshError):
    pass


class Unreachable(MeshError):
    """No broker at the URL."""


class Unavailable(MeshError):
    """The broker did not answer in time (restarting, partitioned). Retry later."""


class Reconnects:
    """Counts reconnections of one connection, so loops that depend on server-side
    state (KV watchers, lease timers) can start afresh after one."""

    def __init__(self) -> None:
        self.count = 0
        #: monotonic time of the last reconnection (or of the first connection)
        self.at = time.monotonic()
        self._event = anyio.Event()

    def happened(self) -> None:
        self.count += 1
        self.at = time.monotonic()
        self._event.set()
        self._event = anyio.Event()

    async def wait(self) -> None:
        await self._event.wait()


@dataclass(frozen=True)
class Settings:
    """How the mesh's JetStream resources are created (by whoever comes first).

    ``MESH_REPLICAS`` (e.g. 3 on a 3-node cluster) and ``MESH_STORAGE`` (file or
    memory) set the defaults from the environment; see docs/DEPLOY.md."""

    replicas: int = 1
    #: file storage survives broker restarts; memory is for benchmarks only
    storage: str = "file"
    #: kept revisions per task key (for debugging; the events stream is the trace)
    history: int = 5
    #: how long the events stream keeps events, and a task record outlives its last write
    events_max_age_s: float = 7 * 24 * 3600.0
    records_max_age_s: float = 7 * 24 * 3600.0
    #: how long the marker of a removed offer stays on the board
    marker_ttl_s: float = 60.0

    @classmethod
    def from_env(cls) -> Settings:
        replicas = os.environ.get("MESH_REPLICAS", "1")
        storage = os.environ.get("MESH_STORAGE", "file")
        if not replicas.isdigit() or not 1 <= int(replicas) <= 5:
            raise MeshError(f"MESH_REPLICAS={replicas!r}: expected 1 to 5 (3 on a 3-node cluster)")
        if storage not in ("file", "memory"):
            raise MeshError(f"MESH_STORAGE={storage!r}: expected file or memory")
        return cls(replicas=int(replicas), storage=storage)


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """nats-py's exceptions, translated in one place."""
    try:
        yield
    except nats.js.errors.KeyWrongLastSequenceError as exc:
        raise Conflict(f"{what}: {exc.description}") from None
    except nats.js.errors.KeyNotFoundError:
        raise NotFound(what) from None
    except nats.js.errors.NotFoundError:
        raise NotFound(what) from None
    except (
        nats.errors.TimeoutError,
        nats.js.errors.ServiceUnavailableError,
        nats.js.errors.NoStreamResponseError,
        nats.errors.NoRespondersError,
    ) as exc:
        raise Unavailable(f"{what}: broker did not answer ({type(exc).__name__})") from None
    except (
        nats.errors.ConnectionClosedError,
        nats.errors.ConnectionReconnectingError,
        nats.errors.StaleConnectionError,
    ) as exc:
        raise Unavailable(f"{what}: not connected to the broker ({type(exc).__name__})") from None


async def connect(url: str, *, name: str, reconnect: bool = True, reconnects: Reconnects | None = None) -> Client:
    """Connect to the broker; a missing broker is a clear :class:`Unreachable`.

    The first connection gets a few attempts (nats-py would otherwise retry a wrong
    URL forever); once connected, the client reconnects forever, so agents ride out
    broker restarts."""
    log = structlog.get_logger("mesh.nats").bind(connection=name)

    async def on_error(exc: Exception) -> None:
        log.warning("nats connection error", error=str(exc) or type(exc).__name__)

    clients: list[Client] = []

    async def on_disconnect() -> None:
        if clients and not (clients[0].is_closed or clients[0].is_draining):
            log.warning("disconnected from broker; reconnecting")

    async def on_reconnect() -> None:
        log.info("reconnected to broker")
        if reconnects is not None:
            reconnects.happened()

    try:
        nc = await nats.connect(
            # A comma-separated list names several servers of one cluster.
            [u.strip() for u in url.split(",") if u.strip()],
            name=name,
            connect_timeout=2,
            allow_reconnect=reconnect,
            max_reconnect_attempts=2,
            reconnect_time_wait=0.25,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
        )
    except (OSError, nats.errors.NoServersError, nats.errors.TimeoutError) as exc:
        raise Unreachable(
            f"cannot reach a NATS server at {url} ({exc or type(exc).__name__}). Start one with "
            "`mesh broker`, or point --server / MESH_SERVER at a running one."
        ) from None
    clients.append(nc)
    if reconnect:
        nc.options["max_reconnect_attempts"] = -1
    return nc


class Bus:
    """A connection plus the mesh's buckets and stream."""

    def __init__(self, nc: Client, names: Names, *, agent: str, reconnects: Reconnects | None = None) -> None:
        self.nc = nc
        self.names = names
        self.reconnects = reconnects or Reconnects()
        self.agent = agent
        self.js: JetStreamContext = nc.jetstream()
        self.tasks: KeyValue
        self.agents: KeyValue
        self.settings = Settings()

    @classmethod
    async def connect(cls, url: str, names: Names, *, agent: str, settings: Settings | None = None) -> Bus:
        """Connect (with reconnection tracking) and ensure the mesh's resources."""
        reconnects = Reconnects()
        nc = await connect(url, name=agent, reconnects=reconnects)
        bus = cls(nc, names, agent=agent, reconnects=reconnects)
        try:
            with translate_errors("setting up the mesh's buckets and stream"):
                await bus.ensure(settings or Settings.from_env())
        except BaseException:
            await nc.close()
            raise
        return bus

    async def ensure(self, settings: Settings) -> None:
        """Create the buckets and stream if absent. Idempotent: any agent may do it,
        and an existing resource is used as it is (never silently reconfigured)."""
        self.settings = settings
        storage = StorageType.FILE if settings.storage == "file" else StorageType.MEMORY
        self.tasks = await self._bucket(
            KeyValueConfig(
                bucket=self.names.tasks_bucket,
                description="agent-mesh task records (task.<id>) and offers (offer.<capability>.<id>)",
                history=settings.history,
                direct=True,
                ttl=settings.records_max_age_s,
                storage=storage,
                replicas=settings.replicas,
                limit_marker_ttl=settings.marker_ttl_s,
            )
        )
        self.agents = await self._bucket(
            KeyValueConfig(
                bucket=self.names.agents_bucket,
                description="agent-mesh directory: agent.<id> -> card, expires without heartbeats",
                history=1,
                storage=storage,
                replicas=settings.replicas,
                limit_marker_ttl=settings.marker_ttl_s,
            )
        )
        try:
            await self.js.stream_info(self.names.events_stream)
        except nats.js.errors.NotFoundError:
            with contextlib.suppress(nats.js.errors.BadRequestError):
                await self.js.add_stream(
                    StreamConfig(
                        name=self.names.events_stream,
                        description="agent-mesh events: one per task transition, and error reports",
                        subjects=list(self.names.events_subjects),
                        retention=RetentionPolicy.LIMITS,
                        max_age=settings.events_max_age_s,
                        storage=storage,
                        num_replicas=settings.replicas,
                    )
                )

    async def _bucket(self, config: KeyValueConfig) -> KeyValue:
        try:
            return await self.js.key_value(config.bucket)
        except nats.js.errors.BucketNotFoundError:
            try:
                return await self.js.create_key_value(config)
            except nats.js.errors.BadRequestError:
                # Lost a creation race with another agent: use theirs.
                return await self.js.key_value(config.bucket)

    # --- task records -----------------------------------------------------------------

    async def read(self, task_id: str) -> tuple[TaskRecord, int]:
        """The record and its revision. A record that does not decode raises
        :class:`RemoteProtocolError` (reported by the caller, never acted on)."""
        key = self.names.task_key(task_id)
        with translate_errors(f"task {task_id}"):
            entry = await self.tasks.get(key)
        if entry.value is None or entry.operation is not None:
            raise NotFound(f"task {task_id}")
        return decode_record(entry.value), entry.revision or 0

    async def read_patiently(self, task_id: str, *, patience_s: float = 15.0) -> tuple[TaskRecord, int]:
        """:meth:`read`, retried while the broker is briefly unavailable (a restart, a
        cluster node failing over)."""
        deadline = time.monotonic() + patience_s
        delay = 0.05
        while True:
            try:
                return await self.read(task_id)
            except Unavailable:
                if time.monotonic() + delay > deadline:
                    raise
                await anyio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def create(self, record: TaskRecord) -> int:
        try:
            with translate_errors(f"task {record.id} already exists"):
                revision = await self.tasks.create(self.names.task_key(record.id), encode(record))
        except Unavailable:
            existing, revision = await self.read(record.id)  # did it land?
            if existing != record:
                raise
        async with anyio.create_task_group() as tg:  # two independent acks, one round trip
            tg.start_soon(self.publish_board, record.id, board_change(None, record, revision), revision, record)
            tg.start_soon(lambda: self.publish_event("created", record, revision, actor=record.requester))
        return revision

    async def write(
        self,
        old: TaskRecord,
        revision: int,
        event: Event,
        now: float | None = None,
        *,
        announce_in: anyio.abc.TaskGroup | None = None,
    ) -> tuple[TaskRecord, int]:
        """Apply ``event`` to ``old`` (read at ``revision``) and compare-and-set the
        result. Raises the protocol's TransitionError if the rules refuse, or
        :class:`Conflict` if the record changed since ``revision``.

        The board change and the event are published after the write. With
        ``announce_in`` they are started in that task group instead of awaited, so the
        caller can go on (a claimer starts working) while the acks come back; they
        are still sent in order, before anything the caller does next."""
        new = apply(old, event, time.time() if now is None else now)
        try:
            with translate_errors(f"task {old.id} changed since revision {revision}"):
                new_revision = await self.tasks.update(self.names.task_key(old.id), encode(new), last=revision)
        except Unavailable:
            # The ack is lost, not necessarily the write: if the record now is exactly
            # what we wrote, it landed.
            fresh, fresh_revision = await self.read(old.id)
            if fresh != new:
                raise
            new_revision = fresh_revision
        if announce_in is not None:
            self._announce(announce_in, old, new, new_revision, event)
        else:
            async with anyio.create_task_group() as tg:  # two independent acks, one round trip
                self._announce(tg, old, new, new_revision, event)
        return new, new_revision

    def _announce(self, tg: anyio.abc.TaskGroup, old: TaskRecord, new: TaskRecord, revision: int, event: Event) -> None:
        tg.start_soon(self.publish_board, new.id, board_change(old, new, revision), revision, new)
        # Heartbeats (lease renewals, "still reviewing") are not worth an event each.
        if event_kind(event) not in ("renew", "reviewing") or new.state != old.state:
            kind, note = event_kind(event), _note(event, new)
            tg.start_soon(lambda: self.publish_event(kind, new, revision, actor=event.actor, note=note))

    async def transition(self, task_id: str, make: Any, *, attempts: int = 20) -> tuple[TaskRecord, int]:
        """Read-apply-CAS, re-reading on conflict: for events that stay valid whoever
        wrote in between (votes, cancel, expire). ``make(record)`` builds the event."""
        for _ in range(attempts):
            record, revision = await self.read(task_id)
            try:
                return await self.write(record, revision, make(record))
            except Conflict:
                continue
        raise Conflict(f"task {task_id}: gave up after {attempts} conflicting writes")

    async def publish_board(
        self, task_id: str, change: BoardChange, revision: int, record: TaskRecord | None = None, *, again: bool = False
    ) -> None:
        """Put offers with JetStream's ack (a lost "open" offer would leave a task
        unannounced); removals go unacknowledged: a stale offer is harmless, since
        observers re-read the record before acting and clean it up. Removals go first:
        sent after a put, a slow removal of the old offer could land after the task was
        already re-offered under the same key (a veto) and delete the live offer.
        Offers to claim or review carry the record when it is small, saving a read.
        ``again`` marks a re-announcement, which must not be dropped as a duplicate."""
        prefix = f"$KV.{self.names.tasks_bucket}."
        for capability in change.delete:
            # A purge marker that itself expires: finished tasks leave nothing on the board.
            await self.nc.publish(
                prefix + self.names.offer_key(capability, task_id),
                b"",
                headers={
                    "KV-Operation": "PURGE",
                    "Nats-Rollup": "sub",
                    "Nats-TTL": f"{int(self.settings.marker_ttl_s)}s",
                },
            )
        for capability, offer in change.put.items():
            key = self.names.offer_key(capability, task_id)
            data = encode(offer)
            if record is not None and offer.state in ("open", "review"):
                with_record = encode(msgspec.structs.replace(offer, record=record))
                if len(with_record) <= OFFER_RECORD_LIMIT:
                    data = with_record
            if offer.state in ("open", "review"):
                # One agent of each queue group serving this capability gets a nudge and
                # may claim at once; every other agent is a backup that waits longer.
                # Nudge first: the nudge carries the offer, and the nudged agent should
                # not have scheduled itself as a backup from the board already.
                await self.nc.publish(self.names.work_subject(capability), data, headers={VERSION_HEADER: "1"})
            msg_id = f"{key}:{revision}" + (f":again:{time.monotonic_ns()}" if again else "")
            await self.publish_acked(prefix + key, data, msg_id=msg_id)

    async def publish_acked(
        self, subject: str, data: bytes, *, msg_id: str, trace: str | None = None, patience_s: float = 10.0
    ) -> bool:
        """Publish to a stream and wait for its ack, retrying through a leader election
        or a reconnection; ``msg_id`` makes the retries idempotent (JetStream dedupe).
        Returns False (after logging) if the broker never acknowledged."""
        headers = {VERSION_HEADER: "1", "Nats-Msg-Id": msg_id}
        if trace is not None:
            headers["traceparent"] = trace
        deadline = time.monotonic() + patience_s
        delay = 0.05
        while True:
            try:
                with translate_errors(f"publishing {subject}"):
                    await self.js.publish(subject, data, headers=headers, timeout=2.0)
                return True
            except Unavailable as exc:
                if time.monotonic() + delay > deadline:
                    structlog.get_logger("mesh.bus").error(
                        "not recorded by the broker", subject=subject, error=str(exc)
                    )
                    return False
                await anyio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def snapshot(self, pattern: str, *, bucket: KeyValue | None = None) -> list[Any]:
        """The current entries of a bucket (default: tasks) whose keys match ``pattern``:
        one watch, however many keys (a get per key is one round trip each)."""
        watcher = await (bucket or self.tasks).watch(pattern, ignore_deletes=True)
        entries = []
        try:
            async for entry in watcher:
                if entry is None:
                    break
                entries.append(entry)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        return entries

    async def stored(self, stream: str, subject: str, *, patience_s: float = 15.0) -> list[bytes]:
        """Every message ``stream`` holds on ``subject`` as of now, oldest first.

        A pull consumer is read until a message says nothing is left after it: counting
        on a push consumer's totals undercounts while a cluster moves the stream's leader.
        """
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject=subject,
            inactive_threshold=30.0,
            mem_storage=True,
            num_replicas=1,
        )
        deadline = time.monotonic() + patience_s
        sub = None
        while sub is None:
            try:
                with translate_errors(f"reading {stream}"):
                    sub = await self.js.pull_subscribe(subject, stream=stream, config=config)
            except Unavailable:  # the stream may be electing a leader
                if time.monotonic() > deadline:
                    raise
                await anyio.sleep(0.25)
        out: list[bytes] = []
        try:
            with translate_errors(f"reading {stream}"):
                if not (await sub.consumer_info()).num_pending:
                    return out
            while True:
                try:
                    batch = await sub.fetch(batch=512, timeout=1.0)
                except nats.errors.TimeoutError:
                    if time.monotonic() > deadline:
                        raise Unavailable(f"reading {stream}: stopped after {len(out)} messages") from None
                    continue
                out.extend(msg.data for msg in batch)
                if batch and batch[-1].metadata.num_pending == 0:
                    return out
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    # --- events -------------------------------------------------------------------------

    async def publish_event(self, kind: str, record: TaskRecord, revision: int, *, actor: str, note: str = "") -> None:
        """Record one event per transition, acknowledged (an event published while a
        stream elects a leader would otherwise vanish), deduplicated by revision."""
        event = TaskEvent(
            record=record if is_terminal(record) else None,
            kind=kind,
            task=record.id,
            root=record.root,
            parent=record.parent,
            capability=record.capability,
            actor=actor,
            epoch=record.epoch,
            state=record.state,
            reason=record.reason,
            note=note,
            at=time.time(),
        )
        await self.publish_acked(
            self.names.event_subject(record.root, record.id, kind),
            encode(event),
            msg_id=f"{record.id}:{revision}:{kind}",
            trace=record.trace,
        )

    async def report(self, error: str, *, subject: str = "", key: str = "") -> None:
        """Publish an :class:`ErrorReport` for bad input met by this process."""
        report = ErrorReport(agent=self.agent, subject=subject, key=key, error=error, at=time.time())
        await self.nc.publish(self.names.error_subject(self.agent), encode(report), headers={VERSION_HEADER: "1"})

    @contextlib.asynccontextmanager
    async def follow(self, record: TaskRecord) -> AsyncIterator[Any]:
        """Subscribe to one task's events (core NATS: no consumer is created)."""
        sub = await self.nc.subscribe(f"{self.names.events_filter(record.root)[:-1]}{record.id}.*")
        try:
            yield sub
        finally:
            with contextlib.suppress(nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError):
                await sub.unsubscribe()


def _note(event: Event, record: TaskRecord) -> str:
    match event.__struct_config__.tag:
        case "veto":
            return "; ".join(getattr(event, "reasons", ()))
        case "fail" | "expire" | "cancel":
            return record.error
        case "release" | "reopen" | "renew":
            return record.progress
        case "add_child":
            return str(getattr(event, "child", ""))
        case _:
            return ""
