"""The one place nats-py is spoken: connection, JetStream resources, and the task
board's reads and compare-and-set writes, with nats-py's exceptions translated into
ours (the way httpcore maps its transport's errors)."""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import msgspec
import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
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
    "Announcement",
    "Follow",
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


class _Replies:
    """Replies to this connection's acknowledged publishes, matched by token.

    nats-py's request sends a message and awaits its reply in one call, so sending two
    messages whose acks are awaited together needs a task each. Here sending and
    awaiting are apart: a transition sends its board change and event back to back
    (in order, one flush) and awaits the acks later, or lets its caller do so."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.prefix = ""
        self.waiting: dict[str, _Pending] = {}
        self._tokens = itertools.count()
        self._lock = anyio.Lock()

    async def send(self, pending: _Pending) -> None:
        if not self.prefix:
            async with self._lock:  # one reply subscription, however many first sends race
                if not self.prefix:
                    prefix = self.nc.new_inbox() + "."
                    await self.nc.subscribe(prefix + "*", cb=self._on_reply)
                    self.prefix = prefix
        token = str(next(self._tokens))
        pending.token, pending.reply, pending.arrived = token, None, None
        self.waiting[token] = pending
        try:
            await self.nc.publish(pending.subject, pending.data, reply=self.prefix + token, headers=pending.headers)
        except BaseException:
            self.waiting.pop(token, None)
            raise

    async def _on_reply(self, msg: Msg) -> None:
        pending = self.waiting.pop(msg.subject[len(self.prefix) :], None)
        if pending is not None:  # else a late reply to an attempt given up on
            pending.reply = msg
            if pending.arrived is not None:
                pending.arrived.set()


class _Pending:
    """One message sent to a stream whose ack is outstanding."""

    __slots__ = ("arrived", "data", "headers", "reply", "sent", "subject", "token")

    def __init__(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        self.subject, self.data, self.headers = subject, data, headers
        self.token = ""
        self.reply: Msg | None = None
        #: set when the reply arrives, if someone is waiting for it by then
        self.arrived: anyio.Event | None = None
        self.sent = False


class Announcement:
    """What a transition told the mesh (its board change, its event): sent, in order,
    before the write returned; :meth:`wait` awaits the broker's acks, re-sending
    (deduplicated by ``Nats-Msg-Id``) through a leader election or a reconnection."""

    __slots__ = ("_pending", "_replies")

    def __init__(self, replies: _Replies, pending: list[_Pending]) -> None:
        self._replies, self._pending = replies, pending

    async def wait(self, *, patience_s: float = 10.0) -> bool:
        """True once every message is acknowledged; False (after logging) for any the
        broker never acknowledged within ``patience_s``."""
        ok = True
        deadline = time.monotonic() + patience_s
        try:
            while self._pending:
                ok = await self._acked(self._pending[0], deadline) and ok
                self._pending.pop(0)
        finally:
            for pending in self._pending:  # cancelled: late replies have nobody to tell
                self._replies.waiting.pop(pending.token, None)
        return ok

    async def _acked(self, pending: _Pending, deadline: float) -> bool:
        delay = 0.05
        while True:
            try:
                with translate_errors(f"publishing {pending.subject}"):
                    if not pending.sent:
                        await self._replies.send(pending)
                        pending.sent = True
                    await self._ack(pending)
                return True
            except Unavailable as exc:
                pending.sent = False
                # A closed connection never comes back: retrying would only hold up the
                # caller (who may be shielded from cancellation while it waits).
                if self._replies.nc.is_closed or time.monotonic() + delay > deadline:
                    structlog.get_logger("mesh.bus").error(
                        "not recorded by the broker", subject=pending.subject, error=str(exc)
                    )
                    return False
                await anyio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _ack(self, pending: _Pending, timeout: float = 2.0) -> None:
        """Await one reply and raise what nats-py's ``js.publish`` would for it."""
        if pending.reply is None:  # else it came back while the caller did other things
            pending.arrived = anyio.Event()
            try:
                with anyio.move_on_after(timeout):
                    await pending.arrived.wait()
            finally:
                self._replies.waiting.pop(pending.token, None)
        msg = pending.reply
        if msg is None:
            raise nats.errors.TimeoutError
        if msg.headers and msg.headers.get("Status") == "503":  # no stream listens (yet)
            raise nats.js.errors.NoStreamResponseError
        try:
            ack = msgspec.json.decode(msg.data)
        except msgspec.DecodeError:
            raise nats.js.errors.APIError(description=f"unreadable ack: {msg.data[:100]!r}") from None
        if isinstance(ack, dict) and "error" in ack:
            nats.js.errors.APIError.from_error(ack["error"])  # raises the matching error


class Follow:
    """One task's events as they arrive, from a core NATS subscription. (nats-py's
    ``next_msg`` starts two asyncio tasks per message; a callback queues them here.)"""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._queue: collections.deque[bytes] = collections.deque()
        self._arrived = anyio.Event()

    async def _on_msg(self, msg: Msg) -> None:
        self._queue.append(msg.data)
        self._arrived.set()

    async def next(self, timeout: float) -> bytes | None:
        """The next event's bytes, or None after ``timeout`` seconds without one."""
        if not self._queue:
            if self._nc.is_closed:
                raise Unavailable("following a task: the connection to the broker is closed")
            with anyio.move_on_after(timeout):
                await self._arrived.wait()
            if not self._queue:
                return None
        data = self._queue.popleft()
        if not self._queue:
            self._arrived = anyio.Event()
        return data


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
        self._replies = _Replies(nc)

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
        """Create the task's record; return once its offer and "created" event are
        acknowledged too (a client may exit right after: the offer must not be lost)."""
        revision, announced = await self.create_and_announce(record)
        await announced.wait()
        return revision

    async def create_and_announce(self, record: TaskRecord) -> tuple[int, Announcement]:
        """Create the task's record and send its offer (with the nudge) and "created"
        event; their acks are left to the caller (:meth:`Announcement.wait`), who can
        await them while the task is already being worked."""
        revision = await self._create_record(record)
        pending = await self._send_board(record.id, board_change(None, record, revision), revision, record)
        pending.append(await self._send_event("created", record, revision, actor=record.requester))
        return revision, Announcement(self._replies, pending)

    async def _create_record(self, record: TaskRecord, *, patience_s: float = 15.0) -> int:
        """Create the record (its key must not exist yet), retried while the broker is
        briefly unavailable (a restart, a stream electing its leader). A create whose
        ack was lost is recognised by reading the record back: if it is exactly ours,
        it landed."""
        key, data = self.names.task_key(record.id), encode(record)
        deadline = time.monotonic() + patience_s
        delay, unsure = 0.05, False
        while True:
            try:
                with translate_errors(f"task {record.id} already exists"):
                    return await self.tasks.create(key, data)
            except Conflict:
                if not unsure:
                    raise
                existing, revision = await self.read(record.id)  # an earlier attempt landed?
                if existing != record:
                    raise
                return revision
            except Unavailable as exc:
                unsure = True
                try:
                    existing, revision = await self.read(record.id)  # did it land?
                    if existing == record:
                        return revision
                    raise Conflict(f"task {record.id} already exists") from None
                except (NotFound, Unavailable):
                    pass  # not there (yet), or the broker is still away: try again
                if time.monotonic() + delay > deadline:
                    raise exc
                await anyio.sleep(delay)
                delay = min(delay * 2, 1.0)

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

        The board change and the event are sent after the write, before this returns,
        and their acks awaited. With ``announce_in`` the acks are awaited in that task
        group instead, so the caller can go on (a claimer starts working) meanwhile."""
        new, new_revision, announced = await self.write_and_announce(old, revision, event, now)
        if announce_in is not None:
            announce_in.start_soon(announced.wait)
        else:
            await announced.wait()
        return new, new_revision

    async def write_and_announce(
        self, old: TaskRecord, revision: int, event: Event, now: float | None = None
    ) -> tuple[TaskRecord, int, Announcement]:
        """:meth:`write`, leaving the acks of its board change and event to the caller."""
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
        return new, new_revision, await self.announce(old, new, new_revision, event)

    async def announce(self, old: TaskRecord, new: TaskRecord, revision: int, event: Event) -> Announcement:
        """Send the board change and event of a committed transition (``old`` became
        ``new`` at ``revision`` by ``event``); their acks are left to the caller."""
        pending = await self._send_board(new.id, board_change(old, new, revision), revision, new)
        kind = event_kind(event)
        # Heartbeats (lease renewals, "still reviewing") are not worth an event each.
        if kind not in ("renew", "reviewing") or new.state != old.state:
            note = _note(event, new)
            pending.append(await self._send_event(kind, new, revision, actor=event.actor, note=note))
        # nats-py only queues what we publish; its flusher task writes it once we yield.
        # Yield now, so the board change and event are on the wire before the caller's
        # next steps (logging, starting work) delay the parties who wait for them.
        # Shielded: the write is committed, and its caller must get the announcement.
        await anyio.lowlevel.cancel_shielded_checkpoint()
        return Announcement(self._replies, pending)

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
        observers re-read the record before acting and clean it up.
        ``again`` marks a re-announcement, which must not be dropped as a duplicate."""
        await Announcement(self._replies, await self._send_board(task_id, change, revision, record, again=again)).wait()

    async def _send_board(
        self, task_id: str, change: BoardChange, revision: int, record: TaskRecord | None = None, *, again: bool = False
    ) -> list[_Pending]:
        """Send a board change; return the puts, whose acks are outstanding. Removals go
        first: sent after a put, a slow removal of the old offer could land after the
        task was already re-offered under the same key (a veto) and delete the live
        offer. Offers to claim or review carry the record when it is small, saving a read."""
        prefix = f"$KV.{self.names.tasks_bucket}."
        for capability in change.delete:
            # A purge marker that itself expires: finished tasks leave nothing on the board.
            await self._send_unacked(
                prefix + self.names.offer_key(capability, task_id),
                b"",
                {"KV-Operation": "PURGE", "Nats-Rollup": "sub", "Nats-TTL": f"{int(self.settings.marker_ttl_s)}s"},
            )
        pending = []
        for capability, offer in change.put.items():
            key = self.names.offer_key(capability, task_id)
            data = b""
            if record is not None and offer.state in ("open", "review"):
                data = encode(msgspec.structs.replace(offer, record=record))
                if len(data) > OFFER_RECORD_LIMIT:
                    data = b""
            data = data or encode(offer)
            if offer.state == "open" or (offer.state == "review" and not offer.full):
                # One agent of each queue group serving this capability gets a nudge and
                # may claim at once; every other agent is a backup that waits longer. (A
                # full review has nothing to take: its slots' holders are watched.)
                # Nudge first: the nudge carries the offer, and the nudged agent should
                # not have scheduled itself as a backup from the board already.
                await self._send_unacked(self.names.work_subject(capability), data, {VERSION_HEADER: "1"})
            msg_id = f"{key}:{revision}" + (f":again:{time.monotonic_ns()}" if again else "")
            pending.append(await self._send_acked(prefix + key, data, msg_id=msg_id))
        return pending

    async def _send_unacked(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        """Send a message nobody acknowledges (an offer's removal, a nudge). Losing one
        is harmless by design (a stale offer is cleaned by whoever reads it; a lost
        nudge costs the backup delay), so a broker that is away is logged, not raised:
        the transition before it is committed and must not look failed."""
        try:
            with translate_errors(f"publishing {subject}"):
                await self.nc.publish(subject, data, headers=headers)
        except Unavailable as exc:
            structlog.get_logger("mesh.bus").warning("not sent; harmless if lost", subject=subject, error=str(exc))

    async def publish_acked(
        self, subject: str, data: bytes, *, msg_id: str, trace: str | None = None, patience_s: float = 10.0
    ) -> bool:
        """Publish to a stream and wait for its ack, retrying through a leader election
        or a reconnection; ``msg_id`` makes the retries idempotent (JetStream dedupe).
        Returns False (after logging) if the broker never acknowledged."""
        pending = await self._send_acked(subject, data, msg_id=msg_id, trace=trace)
        return await Announcement(self._replies, [pending]).wait(patience_s=patience_s)

    async def _send_acked(self, subject: str, data: bytes, *, msg_id: str, trace: str | None = None) -> _Pending:
        """Send to a stream now; the ack is awaited by :meth:`Announcement.wait`, which
        also re-sends if this send found the broker away."""
        headers = {VERSION_HEADER: "1", "Nats-Msg-Id": msg_id}
        if trace is not None:
            headers["traceparent"] = trace
        pending = _Pending(subject, data, headers)
        # Broker away: not lost, only not sent yet; Announcement.wait sends it again and
        # logs it if the broker never takes it.
        with contextlib.suppress(Unavailable), translate_errors(f"publishing {subject}"):
            await self._replies.send(pending)
            pending.sent = True
        return pending

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
        pending = await self._send_event(kind, record, revision, actor=actor, note=note)
        await Announcement(self._replies, [pending]).wait()

    async def _send_event(
        self, kind: str, record: TaskRecord, revision: int, *, actor: str, note: str = ""
    ) -> _Pending:
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
        return await self._send_acked(
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
    async def follow(self, record: TaskRecord) -> AsyncIterator[Follow]:
        """Subscribe to one task's events (core NATS: no consumer is created). Events
        published after this is entered are all seen."""
        follow = Follow(self.nc)
        with translate_errors(f"following task {record.id}"):
            sub = await self.nc.subscribe(
                f"{self.names.events_filter(record.root)[:-1]}{record.id}.*", cb=follow._on_msg
            )
        try:
            yield follow
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
