"""The one place nats-py is spoken: connection, JetStream resources, the task records'
reads and compare-and-set writes, the queues' items and the events, the directory and
the services endpoint, and the primitives an agent pulls work with (a pull inbox, the
items it lends, the advisory of a new queue; the pulling itself is :mod:`mesh.queues`).
Every nats-py exception is translated into ours here (the way httpcore maps its
transport's errors): no other module of the runtime imports nats-py."""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import math
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import anyio
import anyio.abc
import anyio.lowlevel
import msgspec
import nats
import nats.errors
import nats.js.errors
import nats.micro
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RePublish,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
)
from nats.js.kv import KeyValue
from nats.micro.request import Request

from protocol import (
    HEADER_ROOM_BYTES,
    MAJOR_VERSION,
    MAX_CARD_AGE_S,
    MAX_CARD_BYTES,
    MAX_RECORD_BYTES,
    PRIORITY_GROUP,
    VERSION_HEADER,
    AgentCard,
    ErrorReport,
    Event,
    Forged,
    Names,
    ProtocolError,
    RemoteProtocolError,
    TaskEvent,
    TaskRecord,
    WorkItem,
    apply,
    decode_card,
    decode_event,
    decode_record,
    decode_work_item,
    digest,
    encode,
    end_unreadable,
    event_id,
    event_kind,
    is_terminal,
    parties,
    signature_of,
    task_event,
    trace_id,
    trail_gap,
    work_item_id,
    work_items,
)

from . import identity
from .defaults import STREAM_MAX_CONSUMERS
from .retry import Backoff, retry
from .settings import Settings, client_tls
from .trust import Gap, Trust, load_trust

__all__ = [
    "MeshError",
    "Conflict",
    "NotFound",
    "SquattedQueue",
    "Unreachable",
    "Unavailable",
    "CorruptRecord",
    "ForgedRecord",
    "Refused",
    "BrokerError",
    "NotADelivery",
    "Reconnects",
    "Settings",
    "Announcement",
    "Follow",
    "Stored",
    "QueueInfo",
    "Lent",
    "PullStatus",
    "PullInbox",
    "Listening",
    "Bus",
    "connect",
]

log = structlog.get_logger("mesh.bus")

PROTOCOL_MAJOR = str(MAJOR_VERSION)
#: JetStream's "wrong last sequence" API error codes: a compare-and-set lost
WRONG_LAST_SEQUENCE = (10071, 10164)
#: "consumer already exists" (with other settings): use it as it is
CONSUMER_EXISTS = 10148


class MeshError(Exception):
    """Base of the runtime's errors."""


class Conflict(MeshError):
    """A compare-and-set lost: someone else wrote the record first."""


class NotFound(MeshError):
    pass


class Unreachable(MeshError):
    """No broker at the URL."""


class SquattedQueue(MeshError):
    """A queue's name is taken by a consumer that takes another capability's items."""


class Unavailable(MeshError):
    """The broker did not answer in time (restarting, partitioned). Retry later."""


class Refused(MeshError):
    """The broker refused a request (a JetStream API error other than a lost
    compare-and-set): e.g. more replicas than the cluster has nodes, a value over the
    bucket's size limit. ``code`` is JetStream's error code."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class BrokerError(MeshError):
    """nats-py reported an error that none of the others names (a subject it refuses,
    a full outgoing buffer, a broken subscription...): the runtime's name for it, so
    that no module but this one need know nats-py's errors."""


class NotADelivery(MeshError, RemoteProtocolError):
    """A message on a pull inbox that the broker did not lend (someone else published
    on it): there is nothing to settle."""


class CorruptRecord(MeshError, RemoteProtocolError):
    """A task's stored record does not decode (a buggy or hostile writer). The parties
    of the task end it (:meth:`Bus.end_unreadable`); ``revision`` is the unreadable
    one, which that write replaces."""

    def __init__(self, message: str, *, task_id: str, revision: int, prev: str = "") -> None:
        super().__init__(message)
        self.task_id = task_id
        self.revision = revision
        #: ``Mesh-Prev`` of a write replacing it (the digest of the last valid revision)
        self.prev = prev


#: tasks created by this process that it remembers as new until it sees their first write
NEW_TASKS_KEPT = 65536
#: how long a reader waits for the archive (the broker's copy, moments behind the
#: bucket) to hold a write it must verify by the writes before it
ARCHIVE_PATIENCE_S = 10.0


class ForgedRecord(CorruptRecord):
    """A task's stored record fails verification (PROTOCOL.md 6.23): its signature, or
    its signer's right to make that transition. It is never acted on; a party holding
    no valid copy of the task ends it like an unreadable one."""

    def __init__(self, message: str, *, task_id: str, revision: int, signer: str | None, prev: str = "") -> None:
        super().__init__(message, task_id=task_id, revision=revision, prev=prev)
        self.signer = signer


class Reconnects:
    """Counts reconnections of one connection, so loops that depend on server-side
    state (KV watchers, lease timers) can start afresh after one."""

    def __init__(self) -> None:
        self.count = 0
        #: monotonic time of the last reconnection; minus infinity until one happens. A
        #: first connection is not a return from an outage: counting it made every
        #: freshly started agent hold a dead owner's item back for a lease (the
        #: takeover grace), so failover under churn took up to two leases.
        self.at = -math.inf
        self._event = anyio.Event()

    def happened(self) -> None:
        self.count += 1
        self.at = time.monotonic()
        self._event.set()
        self._event = anyio.Event()

    async def wait(self) -> None:
        await self._event.wait()


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
    except nats.js.errors.APIError as exc:
        if exc.err_code in WRONG_LAST_SEQUENCE:
            raise Conflict(f"{what}: {exc.description}") from None
        raise Refused(f"{what}: the broker refused: {exc.description}", code=exc.err_code) from None
    except nats.errors.Error as exc:
        raise BrokerError(f"{what}: {exc or type(exc).__name__}") from None


async def connect(
    url: str,
    *,
    name: str,
    reconnect: bool = True,
    reconnects: Reconnects | None = None,
    tls: ssl.SSLContext | None = None,
    nkey: str | None = None,
) -> Client:
    """Connect to the broker; a missing broker is a clear :class:`Unreachable`. With
    ``nkey`` (a seed file) the connection authenticates as that key, acting as ``name``.

    The first connection gets a few attempts (nats-py would otherwise retry a wrong
    URL forever); once connected, the client reconnects forever, so agents ride out
    broker restarts. ``tls`` verifies the broker (settings.client_tls); given it, or a
    ``tls://`` URL, a broker that does not speak TLS is refused."""
    log = structlog.get_logger("mesh.nats").bind(connection=name)

    async def on_error(exc: Exception) -> None:
        if not clients and "authorization violation" in str(exc).lower():
            refused.append(exc)  # said as such below, not as an unreachable server
        # Before the first connection, a failed attempt is part of the Unreachable
        # error raised below, which says it in one line: only a debugging note here.
        (log.warning if clients else log.debug)("nats connection error", error=str(exc) or type(exc).__name__)
        if not clients and isinstance(exc, ssl.SSLError):
            # A certificate that fails will fail again; and nats-py 2.16 hangs closing
            # the socket of a failed TLS handshake before it retries. Raised here, the
            # error leaves its connect() at once.
            raise exc

    clients: list[Client] = []
    refused: list[Exception] = []
    auth = identity.connect_options(nkey, name)  # a bad seed file is said before dialling

    async def on_disconnect() -> None:
        if clients and not (clients[0].is_closed or clients[0].is_draining):
            log.warning("disconnected from broker; reconnecting")

    async def on_reconnect() -> None:
        log.info("reconnected to broker")
        if reconnects is not None:
            reconnects.happened()

    logging.getLogger("asyncio").addFilter(_quiet_tls_eof)  # (once: filters are a set)
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
            tls=tls,
            **auth,
        )
    except ssl.SSLError as exc:
        raise Unreachable(_tls_failure(url, exc, tls)) from None
    except nats.errors.AuthorizationError:
        raise Unreachable(identity.refused_message(url, nkey)) from None
    except (OSError, nats.errors.NoServersError, nats.errors.TimeoutError) as exc:
        if refused:
            raise Unreachable(identity.refused_message(url, nkey)) from None
        raise Unreachable(
            f"cannot reach a NATS server at {url} ({exc or type(exc).__name__}). Start one with "
            "`mesh broker`, or point --server / MESH_SERVER at a running one."
        ) from None
    except nats.errors.Error as exc:  # nats-py refuses the URL itself before connecting
        raise Unreachable(f"not a NATS server URL: {url!r} ({exc}); e.g. nats://127.0.0.1:4222") from None
    clients.append(nc)
    if (tls is not None or "tls://" in url.lower()) and not _on_tls(nc):
        # nats-py upgrades only when the server's first (plaintext) message asks for
        # TLS; a broker, or someone in the way, that does not ask would get plaintext.
        await nc.close()
        raise Unreachable(
            f"the broker at {url} does not use TLS, but TLS was asked for (--tls-ca / MESH_TLS_CA or a tls:// "
            "URL): start it with TLS (`mesh broker --tls-cert FILE --tls-key FILE`, or a `tls` block in its config)"
        )
    if reconnect:
        nc.options["max_reconnect_attempts"] = -1
    return nc


class _QuietTlsEof(logging.Filter):
    """asyncio logs "returning true from eof_received() has no effect when using ssl"
    each time a TLS connection to the broker closes (nats-py's stream protocol asks to
    keep half-open sockets, which TLS cannot): noise on every command's exit."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received()" not in record.getMessage()


_quiet_tls_eof = _QuietTlsEof()


def _on_tls(nc: Client) -> bool:
    """Whether the connection runs over TLS. nats-py 2.16 has no public way to ask: the
    transport's stream writer knows (``ssl_object`` is None on plain TCP)."""
    writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
    return writer is not None and writer.get_extra_info("ssl_object") is not None


def _tls_failure(url: str, exc: ssl.SSLError, tls: ssl.SSLContext | None) -> str:
    """One line on a failed TLS handshake: what is wrong, and what to do."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or exc.reason or str(exc)
        if tls is None:
            return (
                f"the broker at {url} requires TLS and its certificate is not trusted by this machine ({why}): "
                "pass --tls-ca FILE or set MESH_TLS_CA to the CA that signed it"
            )
        return (
            f"the broker at {url} is not trusted: its certificate fails against --tls-ca / MESH_TLS_CA ({why}); "
            "check that the CA file is the one that signed the broker's certificate, and that the URL's host "
            "is a name in that certificate"
        )
    return f"TLS with the broker at {url} failed ({exc.reason or exc}); is it a TLS port of a NATS server?"


class _Replies:
    """Replies to this connection's acknowledged publishes, matched by token.

    nats-py's request sends a message and awaits its reply in one call, so sending two
    messages whose acks are awaited together needs a task each. Here sending and
    awaiting are apart: a write sends its work items and events back to back (in
    order, one flush) and awaits the acks later, or lets its caller do so."""

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
    """What a write told the mesh (its work items, its events): sent, in order,
    before the write returned; :meth:`wait` awaits the broker's acks, re-sending
    (deduplicated by ``Nats-Msg-Id``) through a leader election or a reconnection."""

    __slots__ = ("_pending", "_replies")

    def __init__(self, replies: _Replies, pending: list[_Pending]) -> None:
        self._replies, self._pending = replies, pending

    @classmethod
    def done(cls) -> Announcement:
        """An announcement of nothing (a write that had nothing to say): its ``wait``
        returns at once, never touching the connection."""
        return cls(None, [])  # type: ignore[arg-type]

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
        async def send_and_ack() -> None:
            try:
                with translate_errors(f"publishing {pending.subject}"):
                    if not pending.sent:
                        await self._replies.send(pending)
                        pending.sent = True
                    await self._ack(pending)
            except Unavailable:
                pending.sent = False  # send again: the broker may never have had it
                raise

        try:
            # A closed connection never comes back: retrying would only hold up the
            # caller (who may be shielded from cancellation while it waits).
            await retry(
                send_and_ack,
                retry_on=Unavailable,
                patience_s=deadline - time.monotonic(),
                stop=lambda: self._replies.nc.is_closed,
            )
        except Unavailable as exc:
            log.error("not recorded by the broker", subject=pending.subject, error=str(exc))
            return False
        return True

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
    """One task's record writes as the broker republishes them (a core subscription:
    no consumer is created), each with its revision. nats-py's ``next_msg`` starts
    two asyncio tasks per message; a callback queues them here."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._queue: collections.deque[tuple[int, bytes, dict[str, str]]] = collections.deque()
        self._arrived = anyio.Event()

    async def _on_msg(self, msg: Msg) -> None:
        headers = msg.headers or {}
        revision = headers.get("Nats-Sequence", "")
        if msg.data and revision.isdigit():  # else not a republished write (or a deletion)
            self._queue.append((int(revision), msg.data, headers))
            self._arrived.set()

    async def next(self, timeout: float) -> tuple[int, bytes, dict[str, str]] | None:
        """The next write (revision, record bytes, headers: :meth:`Bus.admit` verifies
        it), or None after ``timeout`` seconds without one."""
        if not self._queue:
            if self._nc.is_closed:
                raise Unavailable("following a task: the connection to the broker is closed")
            with anyio.move_on_after(timeout):
                await self._arrived.wait()
            if not self._queue:
                return None
        write = self._queue.popleft()
        if not self._queue:
            self._arrived = anyio.Event()
        return write


class Listening:
    """A subscription of this connection, as the rest of the runtime holds it: only a
    way to stop listening."""

    def __init__(self, sub: Subscription) -> None:
        self._sub = sub

    async def close(self) -> None:
        """Stop listening. Best effort: the subscription of a connection that closed
        or dropped is gone with it, so a failure here is only logged."""
        try:
            await self._sub.unsubscribe()
        except nats.errors.Error as exc:
            log.debug("unsubscribing failed; the subscription goes with its connection", error=repr(exc))


@dataclass(frozen=True)
class PullStatus:
    """The broker's word on a pull request, instead of an item: ``code`` "100" (an idle
    heartbeat), "408" (the request expired), "409" (it ended otherwise;
    ``description`` says why, e.g. "Consumer Deleted"), or another refusal."""

    code: str
    description: str


class Lent:
    """One message a pull request brought: a work item the broker lends us until we
    settle it (JetStream's acknowledgements, on the message's reply subject)."""

    __slots__ = ("_msg", "data", "subject")

    def __init__(self, msg: Msg) -> None:
        self._msg = msg
        self.data: bytes = msg.data
        self.subject: str = msg.subject

    @property
    def settleable(self) -> bool:
        """Whether there is anywhere to send a settlement to."""
        return bool(self._msg.reply)

    def position(self) -> tuple[int, int]:
        """The item's sequence in its stream (the ticket a claim or slot names) and how
        many times the broker delivered it; :class:`NotADelivery` if it is not a
        message the broker lent."""
        try:
            meta = self._msg.metadata
            return meta.sequence.stream, meta.num_delivered
        except (nats.errors.Error, ValueError, IndexError, AttributeError) as exc:
            raise NotADelivery(f"not a work item delivery ({exc or type(exc).__name__})") from None

    async def ack(self) -> None:
        """Done with it: the item leaves the work-queue stream."""
        await self._settle(b"+ACK")

    async def nak(self, delay_s: float = 0.0) -> None:
        """Lend it to the next puller (after ``delay_s``); it counts as a delivery."""
        body = b"-NAK" if delay_s <= 0 else b"-NAK " + msgspec.json.encode({"delay": _ns(delay_s)})
        await self._settle(body)

    async def term(self) -> None:
        """Never deliver it again."""
        await self._settle(b"+TERM")

    async def in_progress(self) -> None:
        """Renew its lease: the broker keeps it ours for another AckWait."""
        await self._settle(b"+WPI")

    async def _settle(self, body: bytes) -> None:
        with translate_errors(f"settling {self.subject}"):
            await self._msg._client.publish(self._msg.reply, body)


class PullInbox:
    """Our inbox for one queue's pull requests: what the broker sends back to it goes
    to ``on_item`` (a :class:`Lent` message) or ``on_status`` (a :class:`PullStatus`).

    Raw requests on the consumer's ``MSG.NEXT`` API, because nats-py has no pulls with
    a priority group; callbacks rather than an iterator, because this is the hot path
    (an iterator costs a task switch per item)."""

    def __init__(
        self,
        bus: Bus,
        on_item: Callable[[Lent], Awaitable[None]],
        on_status: Callable[[PullStatus], Awaitable[None]],
    ) -> None:
        self._bus, self._on_item, self._on_status = bus, on_item, on_status
        self.subject = bus.nc.new_inbox()
        self._listening: Listening | None = None

    async def _open(self) -> PullInbox:
        with translate_errors("subscribing to a pull inbox"):
            self._listening = Listening(await self._bus.nc.subscribe(self.subject, cb=self._on_msg))
        return self

    async def close(self) -> None:
        if self._listening is not None:
            await self._listening.close()

    async def pull(self, capability: str, *, batch: int, priority: int, expires_s: float) -> None:
        """Ask ``capability``'s queue for up to ``batch`` items, at ``priority`` in the
        mesh's priority group; the request ends after ``expires_s``."""
        names = self._bus.names
        body = {"batch": batch, "expires": _ns(expires_s), "group": PRIORITY_GROUP, "priority": priority}
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{names.work_stream}.{names.queue_consumer(capability)}"
        with translate_errors(f"pulling from the queue of {capability}"):
            await self._bus.nc.publish(subject, msgspec.json.encode(body), reply=self.subject)

    async def _on_msg(self, msg: Msg) -> None:
        headers = msg.headers
        status = headers.get("Status") if headers else None
        if status is None:
            await self._on_item(Lent(msg))
        else:
            assert headers is not None
            await self._on_status(PullStatus(status, headers.get("Description", "")))


@dataclass(frozen=True)
class QueueInfo:
    """What the broker says about one capability's queue."""

    capability: str
    #: the queue's lease (its consumer's AckWait), seconds
    lease_s: float
    #: items waiting to be delivered
    pending: int
    #: items lent to agents now (being worked on or reviewed)
    held: int
    #: pulls waiting for items (free capacity of the agents serving it)
    waiting: int

    @property
    def active(self) -> bool:
        """Some agent works on, or waits for, this queue's items."""
        return self.held > 0 or self.waiting > 0


class Bus:
    """A connection plus the mesh's buckets, streams and queues."""

    def __init__(
        self,
        nc: Client,
        names: Names,
        *,
        agent: str,
        reconnects: Reconnects | None = None,
        trust: Trust | None = None,
    ) -> None:
        #: the raw connection: no module of the runtime but this one uses it (tests and
        #: benchmarks that speak NATS themselves, e.g. to send bad input, do)
        self.nc = nc
        self.names = names
        self.reconnects = reconnects or Reconnects()
        self.agent = agent
        self.js: JetStreamContext = nc.jetstream()
        self.tasks: KeyValue
        self.agents: KeyValue
        self.settings = Settings()
        self._replies = _Replies(nc)
        #: capabilities whose queue this process made sure exists
        self._queues: set[str] = set()
        #: whether the archive stream is the broker's copy of the bucket and nothing
        #: else (None: not looked at yet)
        self._archive_sound: bool | None = None
        #: tasks this process created whose key it has not seen written yet: their
        #: first write needs no look at the archive (they are new; oldest forgotten)
        self._new_tasks: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._reports = _ReportBudget()
        #: bad input this process met and refused, reported or held back (an agent's card shows it)
        self.refused = 0
        #: signs this process's record writes and verifies what it reads (PROTOCOL.md 6.23)
        self.trust = trust or Trust()

    @classmethod
    async def connect(
        cls, url: str, names: Names, *, agent: str, settings: Settings | None = None, tls: ssl.SSLContext | None = None
    ) -> Bus:
        """Connect (with reconnection tracking) and ensure the mesh's resources. ``tls``
        verifies the broker (default: ``settings.tls_ca``'s CAs, if set)."""
        settings = settings or Settings.from_env()  # a bad setting is said before connecting
        tls = tls or client_tls(settings.tls_ca)
        reconnects = Reconnects()
        trust = load_trust(settings.nkey)
        nc = await connect(url, name=agent, reconnects=reconnects, tls=tls, nkey=settings.nkey)
        bus = cls(nc, names, agent=agent, reconnects=reconnects, trust=trust)
        try:
            try:
                with translate_errors("setting up the mesh's buckets and streams"):
                    await bus.ensure(settings)
            except NotFound as exc:  # not a task's absence: the broker has not placed them yet
                raise Unavailable(f"{exc}: the broker (cluster) has not placed them yet; try again") from None
        except BaseException:
            await nc.close()
            raise
        return bus

    async def ensure(self, settings: Settings) -> None:
        """Create the buckets and streams if absent. Idempotent: any agent may do it,
        and an existing resource is used as it is (never silently reconfigured)."""
        self.settings = settings
        storage = StorageType.FILE if settings.storage == "file" else StorageType.MEMORY
        names = self.names
        # Both buckets' streams are made here rather than by nats-py's KV helper, which
        # always allows rollup headers: one write carrying `Nats-Rollup: all` on a task
        # key (or on an agent's own card key) would wipe every live record (every card),
        # and permissions cannot refuse a header. The mesh never rolls a key up
        # (PROTOCOL.md 6.20). The broker cannot keep subject-delete markers for expired
        # cards then (they need rollups), so an expired card goes silently, and a watcher
        # learns of a dead agent from its missing heartbeats.
        await self._stream(
            _bucket_stream(
                names.tasks_bucket,
                "agent-mesh live task records (task.<id>); finished ones expire into the events stream",
                # The protocol's limit (a party refuses to write more, and to read it):
                # the broker refuses a larger value from a peer that does not.
                max_value=MAX_RECORD_BYTES,
                storage=storage,
                replicas=settings.replicas,
                allow_direct=True,
                # Parties follow a task on a plain subscription: the broker republishes
                # every accepted write (never a refused compare-and-set).
                republish=RePublish(src=f"$KV.{names.tasks_bucket}.>", dest=names.records_subjects),
            )
        )
        self.tasks = await self.js.key_value(names.tasks_bucket)
        await self._stream(
            _bucket_stream(
                names.agents_bucket,
                "agent-mesh directory: agent.<id> -> card, expires without heartbeats",
                max_value=MAX_CARD_BYTES,
                storage=storage,
                replicas=settings.replicas,
                # No card outlives three of the longest heartbeats, whatever TTL its
                # writer gave it (a card put with none would otherwise stay forever).
                max_age=MAX_CARD_AGE_S,
            )
        )
        self.agents = await self.js.key_value(names.agents_bucket)
        # The events and the archive are the history: kept as long, read by direct gets.
        history: dict[str, Any] = {
            "retention": RetentionPolicy.LIMITS,
            "max_age": settings.retention_s,
            "max_bytes": settings.retention_bytes or None,
            "storage": storage,
            "num_replicas": settings.replicas,
            "allow_direct": True,
            "max_consumers": STREAM_MAX_CONSUMERS,
        }
        await self._stream(
            StreamConfig(
                name=names.events_stream,
                description="agent-mesh events: one per task transition (the trace and the archive), and error reports",
                subjects=list(names.events_subjects),
                **history,
            )
        )
        await self._stream(
            StreamConfig(
                name=names.archive_stream,
                description="agent-mesh archive: every accepted write of the tasks bucket, with its signature, "
                "copied by the broker; a finished task's verifiable history",
                # No subjects: nobody publishes here, the broker alone copies the
                # bucket's accepted writes (an event, which anyone may publish, is no
                # proof of a record; PROTOCOL.md 6.17).
                sources=[StreamSource(name=f"KV_{names.tasks_bucket}")],
                **history,
            )
        )
        await self._stream(
            StreamConfig(
                name=names.work_stream,
                description="agent-mesh queues: work items, one durable pull consumer per capability",
                subjects=[names.work_subjects],
                retention=RetentionPolicy.WORK_QUEUE,
                # A backstop: items leave when acknowledged; one whose task ended
                # while nobody pulled its queue goes when the history would.
                max_age=settings.retention_s,
                max_consumers=STREAM_MAX_CONSUMERS,
                storage=storage,
                num_replicas=settings.replicas,
                allow_direct=True,
            )
        )

    async def apply_retention(self, *, retention_s: float | None, retention_bytes: int | None) -> Settings:
        """Set how long (and how much of) finished work's history the mesh keeps, on
        the existing streams: an explicit operator's choice, so unlike :meth:`ensure`
        this changes a running mesh. Returns the retention in force."""
        names = self.names
        with translate_errors("changing the retention of the mesh's history"):
            events = (await self.js.stream_info(names.events_stream)).config
            work = (await self.js.stream_info(names.work_stream)).config
            archive = (await self.js.stream_info(names.archive_stream)).config
            if retention_s is not None or retention_bytes is not None:
                if retention_s is not None:
                    events.max_age = work.max_age = archive.max_age = retention_s
                if retention_bytes is not None:
                    events.max_bytes = archive.max_bytes = retention_bytes or -1
                await self.js.update_stream(events)
                await self.js.update_stream(work)
                await self.js.update_stream(archive)
        bytes_cap = events.max_bytes if events.max_bytes and events.max_bytes > 0 else 0
        return Settings(retention_s=float(events.max_age or 0.0), retention_bytes=bytes_cap)

    async def _stream(self, config: StreamConfig) -> None:
        assert config.name is not None
        try:
            await self.js.stream_info(config.name)
        except nats.js.errors.NotFoundError:
            try:
                await self.js.add_stream(config)
            except nats.js.errors.BadRequestError:  # lost a creation race: wait until theirs shows
                name = config.name
                await retry(lambda: self.js.stream_info(name), retry_on=nats.js.errors.NotFoundError, patience_s=10.0)

    # --- task records -----------------------------------------------------------------

    async def read(self, task_id: str) -> tuple[TaskRecord, int]:
        """The record in the live bucket and its revision; :class:`NotFound` if the task
        is not there (open and never claimed, finished long ago, or unknown). A record
        that does not decode raises :class:`CorruptRecord` (the caller reports it, and a
        party of the task ends it with :meth:`end_unreadable`)."""
        key = self.names.task_key(task_id)
        subject = f"$KV.{self.names.tasks_bucket}.{key}"
        with translate_errors(f"task {task_id}"):
            try:
                msg = await self.js.get_last_msg(f"KV_{self.names.tasks_bucket}", subject, direct=True)
            except nats.js.errors.NotFoundError:
                raise NotFound(f"task {task_id}") from None
        headers = msg.headers or {}
        if not msg.data or headers.get("KV-Operation") in ("DEL", "PURGE") or msg.subject != subject:
            raise NotFound(f"task {task_id}")
        return await self.admit(task_id, msg.seq or 0, msg.data, headers)

    async def admit(
        self, task_id: str, revision: int, value: bytes, headers: dict[str, str] | None
    ) -> tuple[TaskRecord, int]:
        """A stored write of a task's record, once decoded and verified (PROTOCOL.md
        6.23). A forged write is reported with its signer and never returned: a party
        that holds the task's last valid revision carries on from it (its next write
        replaces the forged one, by compare-and-set on ``revision``); one that holds
        none gets :class:`ForgedRecord`, and ends the task as an unreadable one."""
        key = self.names.task_key(task_id)
        try:
            return await self.verified(task_id, revision, value, headers), revision
        except Forged as exc:
            link = self.trust.last(task_id)
            self.refused += 1
            await self.report(f"task {task_id}: revision {revision}: {exc}", key=key)
            log.warning("forged record write", task=task_id, revision=revision, signer=exc.signer, why=exc.why)
            if link is not None and not is_terminal(link.record):
                return link.record, await self._restore(link.record, revision, link.digest)
            raise ForgedRecord(
                f"task {task_id}: {exc}",
                task_id=task_id,
                revision=revision,
                signer=exc.signer,
                prev=digest(value),
            ) from None
        except RemoteProtocolError as exc:
            raise CorruptRecord(
                f"task {task_id}: unreadable record ({exc})", task_id=task_id, revision=revision, prev=digest(value)
            ) from None

    async def verified(
        self, task_id: str, revision: int, value: bytes, headers: Mapping[str, str] | None
    ) -> TaskRecord:
        """A stored write's record once verified (:meth:`Trust.admit`, and for a first
        write read without the task's earlier ones, the archive's say); raises
        :class:`Forged` or the decoder's error. Readers that only look (the views) call
        it directly; parties go through :meth:`admit`."""
        if self.trust.signed and self.trust.last(task_id) is None:
            await self._refuse_a_remade_key(task_id, revision, headers)
        try:
            return self.trust.admit(task_id, self.names.task_key(task_id), revision, value, headers)
        except Gap:
            return await self._verified_after_the_writes_between(task_id, revision, value, headers)

    async def _verified_after_the_writes_between(
        self, task_id: str, revision: int, value: bytes, headers: Mapping[str, str] | None
    ) -> TaskRecord:
        """Verify a write that does not follow the last revision this party holds (it
        missed writes, or joined the task late) as a party that saw every write would
        (PROTOCOL.md 6.23): each write the archive holds from the one after ours, up to
        this one, checked against the last valid one before it. The archive is the
        broker's copy and lags the bucket by moments: wait for it to hold this write."""
        key = self.names.task_key(task_id)
        signer = getattr(signature_of(headers), "signer", None)
        if not await self._archive_is_sound():
            raise Forged(
                "it does not follow the last revision read, and no sound archive holds the writes between",
                signer=signer,
            )
        subject = f"$KV.{self.names.tasks_bucket}.{key}"
        pauses = Backoff(first_s=0.002, max_s=0.25).pauses()
        deadline = time.monotonic() + ARCHIVE_PATIENCE_S
        while True:
            replaced = ""  # the stored write each one replaced: none before the first
            writes = self._messages(self.names.archive_stream, subject, f"the archive of task {task_id}")
            async with contextlib.aclosing(writes):
                async for _, data, archived in writes:
                    at = _source_revision(archived)
                    if at == revision:
                        return self.trust.admit(task_id, key, revision, value, headers, replaced=replaced)
                    if at > revision:  # it holds later writes, so it never took this one
                        raise Forged(f"the archive holds no write at revision {revision}", signer=signer)
                    link = self.trust.last(task_id)
                    if data and (link is None or at > link.revision):
                        with contextlib.suppress(Forged, RemoteProtocolError):
                            # Forged or unreadable: no party acted on it, the last valid one stands
                            self.trust.admit(task_id, key, at, data, archived, replaced=replaced)
                    replaced = digest(data)
            if time.monotonic() >= deadline:
                raise Unavailable(
                    f"task {task_id}: revision {revision} cannot be verified yet: the archive does not hold it "
                    f"after {ARCHIVE_PATIENCE_S:g} s (is the broker copying the tasks bucket into "
                    f"{self.names.archive_stream}?)"
                )
            await anyio.sleep(next(pauses))

    async def _refuse_a_remade_key(self, task_id: str, revision: int, headers: Mapping[str, str] | None) -> None:
        """Refuse (:class:`Forged`) a first write of a task whose history the archive
        already holds (PROTOCOL.md 6.23): once a finished record has left the bucket, a
        forger could make its key anew with a claim of its own, which a reader without
        the earlier writes would check alone and accept. A task this process created
        is new: no look."""
        signature = signature_of(headers)
        if signature is None or signature.prev:
            return
        if task_id in self._new_tasks:
            del self._new_tasks[task_id]
            return
        if not await self._archive_is_sound():
            return
        subject = f"$KV.{self.names.tasks_bucket}.{self.names.task_key(task_id)}"
        first = 0
        writes = self._messages(self.names.archive_stream, subject, f"the archive of task {task_id}")
        async with contextlib.aclosing(writes):
            async for _, _, headers in writes:
                first = _source_revision(headers)  # the task's oldest archived write
                break
        if 0 < first < revision:
            raise Forged(
                f"a first write at revision {revision} of a task whose writes the archive holds from revision "
                f"{first}: its key was made anew",
                signer=signature.signer,
            )

    async def _restore(self, record: TaskRecord, forged: int, prev: str) -> int:
        """Write the last valid revision of a task back over a forged one, if this party
        is one of the task's (PROTOCOL.md 6.23): nobody then meets the forgery again.
        Returns the revision to carry on from (the forged one if another party wrote
        first: its write is verified in turn when read)."""
        signer = self.trust.signer
        if signer is None or signer.public_key not in parties(record):
            return forged
        try:
            return await self._compare_and_set(
                self.names.task_key(record.id), encode(record), forged, finished=False, prev=prev, record=record
            )
        except (Conflict, Unavailable):
            return forged

    def stamp_new(self, record: TaskRecord) -> TaskRecord:
        """A new task's record as this party submits it: with its key as the
        requester's (the key that may cancel it), when it has one."""
        return self.trust.stamp(None, record)

    async def read_any(self, task_id: str, *, root: str | None = None) -> tuple[TaskRecord, int]:
        """The record wherever it is: in the live bucket (with its revision), else as
        the task's latest recorded event carries it (revision 0: an open task that was
        never claimed, whose first write creates the key; or a finished one that left
        the bucket). ``root`` (the task's tree) makes the second lookup cheap."""
        try:
            return await self.read(task_id)
        except NotFound:
            pass
        except ForgedRecord:
            # A forged live record over a task that ended: its end is in the archive.
            record = await self._archived_write(task_id)
            if record is None or not is_terminal(record):
                raise
            return record, 0
        record = await self.archived(task_id, root=root)
        if record is None:
            raise NotFound(
                f"task {task_id} (not live, and not in the events history: it never existed, or ended "
                f"longer ago than the history keeps, {self.settings.retention_s / 86400:g} days by default)"
            )
        # A write may have created the key between the two lookups: prefer the bucket.
        try:
            return await self.read(task_id)
        except NotFound:
            return record, 0

    async def archived(self, task_id: str, *, root: str | None = None) -> TaskRecord | None:
        """The task's record after it left the bucket: its last valid write in the
        archive (every write verified in order, as a party that saw them all would), or
        else as its latest event carries it (``created`` and terminal events do); or
        None. With identities an event's record is taken only while the task is open
        (never written to the bucket): events are unsigned, and every end is a write."""
        record = await self._archived_write(task_id)
        if record is not None:
            return record
        record = await self._archived_event(task_id, root)
        if record is not None and self.trust.signed and is_terminal(record):
            # The end is a write: in the bucket if it was just made (the task ended
            # between our reads), else in the archive, whose copy lags by moments.
            try:
                live, _ = await self.read(task_id)
            except NotFound:
                return await self._archived_write(task_id)
            return live
        return record

    async def _archive_is_sound(self) -> bool:
        """Whether the archive holds only what the broker copied from the bucket: any
        party may create the mesh's streams, and one made with subjects of its own, or
        other sources, or a transform, could be fed writes that never were the
        bucket's. Looked at once; a stream that is not sound is reported, not read."""
        if self._archive_sound is None:
            stream = self.names.archive_stream
            try:
                info = await self._api(f"$JS.API.STREAM.INFO.{stream}", None, what="reading the archive's settings")
            except NotFound:
                return False  # a mesh that predates the archive: not yet made
            config = info.get("config") or {}
            sources = [
                {k: v for k, v in source.items() if k not in ("opt_start_seq", "opt_start_time")}
                for source in config.get("sources") or []
            ]
            sound = (
                not config.get("subjects")
                and not config.get("subject_transform")
                and not config.get("mirror")
                and sources == [{"name": f"KV_{self.names.tasks_bucket}"}]
            )
            if not sound:
                why = f"the stream {stream} is not only the broker's copy of the tasks bucket: not read"
                log.error("the archive is not sound", stream=stream, config=config)
                await self.report(f"{why}; an operator must delete it (the next party makes it again)")
            self._archive_sound = sound
        return self._archive_sound

    async def _archived_write(self, task_id: str) -> TaskRecord | None:
        if not await self._archive_is_sound():
            return None
        key = self.names.task_key(task_id)
        subject = f"$KV.{self.names.tasks_bucket}.{key}"
        stream = self.names.archive_stream
        if not self.trust.signed:  # nothing to verify: the last write is the record
            data = await self._last(stream, subject)
            with contextlib.suppress(RemoteProtocolError):
                return decode_record(data) if data else None
            return None
        chain = await self.archived_chain(task_id)
        return chain[-1] if chain else None

    async def archived_chain(self, task_id: str) -> list[TaskRecord]:
        """The task's valid writes as the archive holds them, oldest first: each
        verified against the one before, as a party that saw them all would (forged and
        unreadable ones left out); empty if the archive is not sound or holds none."""
        if not await self._archive_is_sound():
            return []
        key = self.names.task_key(task_id)
        subject = f"$KV.{self.names.tasks_bucket}.{key}"
        chain = self.trust.fresh()
        valid: list[TaskRecord] = []
        replaced = ""  # the stored write each one replaced: none before the first
        async for _, data, headers in self._messages(
            self.names.archive_stream, subject, f"the archive of task {task_id}"
        ):
            if data:
                with contextlib.suppress(Forged, RemoteProtocolError):
                    # (not acted on by any party: the last valid write stands)
                    valid.append(chain.admit(task_id, key, _source_revision(headers), data, headers, replaced=replaced))
            replaced = digest(data)
        return valid

    async def _archived_event(self, task_id: str, root: str | None) -> TaskRecord | None:
        roots = [root] if root is not None else [task_id, None]
        for candidate in roots:
            for kind in ("*", "created"):
                subject = self.names.task_events_filter(task_id, candidate)
                if kind != "*":
                    subject = subject[:-1] + kind
                data = await self._last(self.names.events_stream, subject)
                if data is None:
                    break  # no event of this task under this root
                try:
                    event = decode_event(data)
                except RemoteProtocolError:
                    continue
                if event.record is not None and event.record.id == task_id:
                    return event.record
        return None

    async def end_unreadable(
        self, error: CorruptRecord, copy: TaskRecord | None, *, actor: str
    ) -> tuple[TaskRecord, int]:
        """End a task whose stored record does not decode (PROTOCOL 6.15): write ``copy``
        (this party's own valid copy of the task; None: the one its ``created`` event
        archived) ended ``failed``/``error`` over the unreadable revision, and record
        it. Returns the task's record as it now is (another party may have ended or
        repaired it first: then theirs). The unreadable record is reported first (a
        :class:`CorruptRecord` is raised if no copy exists)."""
        task_id = error.task_id
        await self.report(str(error), key=self.names.task_key(task_id))
        if copy is None:
            copy = await self.archived(task_id)
            if copy is None or copy.id != task_id:
                raise CorruptRecord(
                    f"{error}; nothing says what the task was (no 'created' event in the history), so it "
                    f"cannot be ended: delete the key {self.names.task_key(task_id)!r} from the tasks bucket",
                    task_id=task_id,
                    revision=error.revision,
                )
        ended = self.trust.stamp_end(copy, end_unreadable(copy, why=str(error), now=time.time()), actor)
        key = self.names.task_key(task_id)
        link = self.trust.last(task_id)
        prev = link.digest if link is not None and link.record == copy else error.prev
        try:
            revision = await self._compare_and_set(
                key, encode(ended), error.revision, finished=True, prev=prev, record=ended
            )
        except Conflict:
            return await self.read(task_id)  # someone else wrote first: theirs stands
        await self.publish_event(
            "ended", ended, revision, actor=actor, note=f"replaced an unreadable record (revision {error.revision})"
        )
        return ended, revision

    async def last_event(self, task_id: str, root: str) -> TaskEvent | None:
        """The latest event the trail holds for a task, or None (none, or unreadable)."""
        data = await self._last(self.names.events_stream, self.names.task_events_filter(task_id, root))
        if data is None:
            return None
        try:
            return decode_event(data)
        except RemoteProtocolError:
            return None

    async def fill_trail(self, record: TaskRecord, revision: int, *, actor: str) -> bool:
        """Record the latest write of ``record`` if its writer did not (it went silent
        between its compare-and-set and its event: PROTOCOL 6.14), with the work items
        that write owed. Returns whether anything was missing."""
        gap = trail_gap(record, revision, await self.last_event(record.id, record.root))
        if gap is None:
            return False
        pending = []
        for item in gap.items:
            await self.ensure_queue(item.capability)
            pending.append(await self._send_item(item))
        note = f"written by {gap.actor}, whose own event never reached the trail; recorded by {actor}"
        pending.append(await self._send_event(gap.kind, record, revision, actor=gap.actor, note=note))
        await Announcement(self._replies, pending).wait()
        return True

    async def _last(self, stream: str, subject: str) -> bytes | None:
        """The last message of ``stream`` on ``subject`` (wildcards allowed), or None."""
        with translate_errors(f"reading {stream}"):
            msg = await self.nc.request(
                f"$JS.API.DIRECT.GET.{stream}", msgspec.json.encode({"last_by_subj": subject}), timeout=5.0
            )
        status = (msg.headers or {}).get("Status")
        if status == "404":
            return None
        if status:
            raise Unavailable(f"reading {stream}: {status} {(msg.headers or {}).get('Description', '')}")
        return msg.data

    async def read_patiently(
        self, task_id: str, *, root: str | None = None, patience_s: float = 15.0
    ) -> tuple[TaskRecord, int]:
        """:meth:`read_any`, retried while the broker is briefly unavailable (a restart,
        a cluster node failing over)."""
        return await retry(lambda: self.read_any(task_id, root=root), retry_on=Unavailable, patience_s=patience_s)

    async def create(self, record: TaskRecord) -> None:
        """Put a new task on its queue; return once its work item and "created" event
        are acknowledged (a client may exit right after: nothing must be lost)."""
        announced = await self.create_and_announce(record)
        if not await announced.wait():
            raise Unavailable(f"task {record.id}: the broker did not acknowledge it; it may not exist")

    async def create_and_announce(self, record: TaskRecord) -> Announcement:
        """Send a new task's work item and "created" event; their acks are left to the
        caller (:meth:`Announcement.wait`), who can await them while the task is
        already being worked. The record is not in the tasks bucket until someone
        claims, cancels or expires it: its work item carries it (revision 0)."""
        if record.epoch != 0 or record.state not in ("open", "failed"):
            raise MeshError(f"task {record.id}: a new task is open (or refused at birth, failed)")
        record = self.stamp_new(record)
        self._new_tasks[record.id] = None
        while len(self._new_tasks) > NEW_TASKS_KEPT:
            self._new_tasks.popitem(last=False)
        if record.state == "failed":
            # Refused at birth (a child past the hop limit, a loop): on record at once,
            # so its parent and `mesh trace` read the refusal like any outcome.
            revision = await self._compare_and_set(
                self.names.task_key(record.id), encode(record), 0, finished=True, record=record
            )
            return await self.announce(None, record, revision, ())
        return await self.announce(None, record, 0, ())

    async def write(
        self, old: TaskRecord, revision: int, event: Event | Sequence[Event], now: float | None = None
    ) -> tuple[TaskRecord, int]:
        """Apply ``event`` (or several, in order) to ``old`` (read at ``revision``; 0 for
        a task not in the bucket yet) and compare-and-set the result. Raises the
        protocol's TransitionError if the rules refuse, or :class:`Conflict` if the
        record changed since ``revision``. Returns once the write's work items and event
        are acknowledged too."""
        new, new_revision, announced = await self.write_and_announce(old, revision, event, now)
        await announced.wait()
        return new, new_revision

    async def write_and_announce(
        self, old: TaskRecord, revision: int, event: Event | Sequence[Event], now: float | None = None
    ) -> tuple[TaskRecord, int, Announcement]:
        """:meth:`write`, leaving the acks of its work items and events to the caller."""
        events = (event,) if not isinstance(event, Sequence) else tuple(event)
        at = time.time() if now is None else now
        new = old
        for e in events:
            new = apply(new, e, at)
        new = self.trust.stamp(old, new)
        key = self.names.task_key(old.id)
        prev = self.trust.prev_digest(old, revision, encode(old) if self.trust.signed and revision else None)
        try:
            new_revision = await self._compare_and_set(
                key, encode(new), revision, finished=is_terminal(new), prev=prev, record=new
            )
        except Unavailable:
            # The ack is lost, not necessarily the write: if the record now is exactly
            # what we wrote, it landed.
            try:
                fresh, fresh_revision = await self.read(old.id)
            except NotFound:
                raise Unavailable(f"task {old.id}: the broker did not answer; the write did not land") from None
            if fresh != new:
                raise
            new_revision = fresh_revision
        return new, new_revision, await self.announce(old, new, new_revision, events, revision_before=revision)

    async def _compare_and_set(
        self,
        key: str,
        data: bytes,
        revision: int,
        *,
        finished: bool,
        prev: str = "",
        record: TaskRecord | None = None,
    ) -> int:
        """Write ``key`` if its revision is ``revision`` (0: if it does not exist). A
        write that ends a task carries the bucket's finished-record TTL: the record
        leaves the live bucket by itself (its terminal event keeps it). With an
        identity the write is signed over ``prev``, the digest of the value it replaces."""
        headers = {"Nats-Expected-Last-Subject-Sequence": str(revision), **self.trust.headers(key, prev, data)}
        with translate_errors(f"{key} changed since revision {revision}"):
            ack = await self.js.publish(
                f"$KV.{self.names.tasks_bucket}.{key}",
                data,
                headers=headers,
                msg_ttl=self.settings.finished_ttl_s if finished else None,
            )
        if record is not None:
            self.trust.wrote(record.id, int(ack.seq), data, record)
        return int(ack.seq)

    async def announce(
        self,
        old: TaskRecord | None,
        new: TaskRecord,
        revision: int,
        events: Sequence[Event],
        *,
        revision_before: int = 0,
    ) -> Announcement:
        """Send the work items and events of a committed write (``old`` became ``new``
        at ``revision`` by ``events``; no events and no ``old``: a task was created).
        Their acks are left to the caller."""
        pending = []
        for item in work_items(old, new, revision):
            await self.ensure_queue(item.capability)
            pending.append(await self._send_item(item))
        if old is None:
            pending.append(await self._send_event("created", new, revision, actor=new.requester, with_record=True))
        # One event per write: the write's last transition, naming the others (a claim
        # and a result written together are one step in the trace, one message stored).
        # Heartbeats (progress, "still reviewing") are not worth an event of their own.
        record, told = old, []
        for e in events:
            assert record is not None
            before, record = record, apply(record, e, new.updated)
            if event_kind(e) not in ("renew", "reviewing") or record.state != before.state:
                told.append(e)
        if told:
            last = told[-1]
            note = _note(last, new)
            if len(told) > 1:
                steps = " + ".join(event_kind(e) for e in told)
                note = f"{steps} in one write" + (f"; {note}" if note else "")
            pending.append(await self._send_event(event_kind(last), new, revision, actor=last.actor, note=note))
        # nats-py's flusher writes these out the next time the loop turns: every caller
        # awaits something soon (the acks, the task's end), so no turn is spent here.
        return Announcement(self._replies, pending)

    async def transition(
        self, task_id: str, make: Any, *, root: str | None = None, attempts: int = 20
    ) -> tuple[TaskRecord, int]:
        """Read-apply-CAS, re-reading on conflict: for events that stay valid whoever
        wrote in between (votes, cancel, expire). ``make(record)`` builds the event."""
        for _ in range(attempts):
            record, revision = await self.read_any(task_id, root=root)
            try:
                return await self.write(record, revision, make(record))
            except Conflict:
                continue
        raise Conflict(f"task {task_id}: gave up after {attempts} conflicting writes")

    # --- queues ----------------------------------------------------------------------

    async def pull_inbox(
        self, on_item: Callable[[Lent], Awaitable[None]], on_status: Callable[[PullStatus], Awaitable[None]]
    ) -> PullInbox:
        """A new inbox for pull requests on a queue (see :class:`PullInbox`)."""
        return await PullInbox(self, on_item, on_status)._open()

    async def on_new_queue(self, handle: Callable[[str], Awaitable[None]]) -> Listening:
        """Call ``handle`` with the consumer name of every queue created from now on
        (the broker's own advisory: a requester's first task of a new capability makes
        its queue)."""

        async def on_msg(msg: Msg) -> None:
            await handle(msg.subject.rsplit(".", 1)[-1])

        with translate_errors("following the creation of queues"):
            sub = await self.nc.subscribe(f"$JS.EVENT.ADVISORY.CONSUMER.CREATED.{self.names.work_stream}.*", cb=on_msg)
        return Listening(sub)

    async def ensure_queue(self, capability: str) -> None:
        """Make sure ``capability``'s queue (a durable pull consumer on the work stream
        that only its items reach) exists. Whoever comes first creates it with its
        settings' lease; an existing queue is used as it is."""
        if capability in self._queues:
            return
        names = self.names
        name = names.queue_consumer(capability)
        subject = names.work_subject(capability)
        config: dict[str, Any] = {
            "durable_name": name,
            "description": f"agent-mesh queue of {capability}",
            "filter_subject": subject,
            "ack_policy": "explicit",
            "ack_wait": _ns(self.settings.lease_s),
            "max_deliver": -1,
            "max_waiting": 4096,
            "priority_groups": [PRIORITY_GROUP],
            "priority_policy": "prioritized",
            "inactive_threshold": _ns(self.settings.queue_idle_s),
        }
        reply = await self._api(
            f"$JS.API.CONSUMER.CREATE.{names.work_stream}.{name}.{subject}",
            {"stream_name": names.work_stream, "action": "create", "config": config},
            what=f"creating the queue of {capability}",
            ok_codes=(CONSUMER_EXISTS,),
        )
        del reply
        self._queues.add(capability)

    def forget_queue(self, capability: str) -> None:
        """The broker removed ``capability``'s queue: make it again when next needed."""
        self._queues.discard(capability)

    async def queue_info(self, capability: str) -> QueueInfo | None:
        """The state of ``capability``'s queue, or None if it has none."""
        names = self.names
        try:
            info = await self._api(
                f"$JS.API.CONSUMER.INFO.{names.work_stream}.{names.queue_consumer(capability)}",
                None,
                what=f"reading the queue of {capability}",
            )
        except NotFound:
            self._queues.discard(capability)
            return None
        taken = (info.get("config") or {}).get("filter_subject")
        if taken != names.work_subject(capability):
            # Anyone who may make a queue picks its name and filter separately (the
            # broker cannot tie one to the other): a consumer under this capability's
            # name that takes another's items would hand them to the wrong agents.
            raise SquattedQueue(
                f"the queue of {capability} ({names.queue_consumer(capability)}) takes {taken!r}, not its own items: "
                "someone made it so; an operator must delete that consumer of the work stream"
            )
        return QueueInfo(
            capability=capability,
            lease_s=info.get("config", {}).get("ack_wait", 0) / 1e9,
            pending=int(info.get("num_pending", 0)),
            held=int(info.get("num_ack_pending", 0)),
            waiting=int(info.get("num_waiting", 0)),
        )

    async def queue_capability(self, consumer: str) -> str | None:
        """The capability of the queue (consumer) named ``consumer``, from its filter
        subject; None if there is none, or it is not one of this mesh's queues."""
        try:
            info = await self._api(
                f"$JS.API.CONSUMER.INFO.{self.names.work_stream}.{consumer}", None, what=f"reading queue {consumer}"
            )
        except NotFound:
            return None
        try:
            return self.names.parse_work_subject((info.get("config") or {}).get("filter_subject") or "")
        except ProtocolError:
            return None

    async def queues(self) -> list[str]:
        """The capabilities that have a queue now (one listing of the work stream's
        consumers: its length is the number of capabilities, not of tasks)."""
        out: list[str] = []
        offset = 0
        while True:
            page = await self._api(
                f"$JS.API.CONSUMER.LIST.{self.names.work_stream}", {"offset": offset}, what="listing the queues"
            )
            consumers = page.get("consumers") or []
            for consumer in consumers:
                subject = (consumer.get("config") or {}).get("filter_subject") or ""
                with contextlib.suppress(ProtocolError):  # a consumer on the stream that is not a queue
                    out.append(self.names.parse_work_subject(subject))
            offset += len(consumers)
            if not consumers or offset >= int(page.get("total", 0)):
                return sorted(set(out))

    async def delete_item(self, sequence: int) -> None:
        """Remove one work item from the work stream (a task that ended while its item
        waited in a queue); best effort: the next delivery would drop it anyway."""
        try:
            await self._api(
                f"$JS.API.STREAM.MSG.DELETE.{self.names.work_stream}",
                {"seq": sequence, "no_erase": True},
                what=f"deleting work item {sequence}",
            )
        except MeshError as exc:
            log.info("a finished task's work item stays until delivered", sequence=sequence, error=str(exc))

    async def _api(
        self, subject: str, body: dict[str, Any] | None, *, what: str, ok_codes: tuple[int, ...] = ()
    ) -> dict[str, Any]:
        """One JetStream API request; an error reply is raised as ours."""
        with translate_errors(what):
            msg = await self.nc.request(subject, b"" if body is None else msgspec.json.encode(body), timeout=5.0)
        try:
            reply = msgspec.json.decode(msg.data)
        except msgspec.DecodeError:
            raise MeshError(f"{what}: unreadable reply {msg.data[:100]!r}") from None
        error = reply.get("error") if isinstance(reply, dict) else None
        if error:
            code = error.get("err_code", 0)
            if code in ok_codes:
                return reply  # type: ignore[no-any-return]
            if error.get("code") == 404:
                raise NotFound(f"{what}: {error.get('description', '')}")
            if error.get("code") == 503:
                raise Unavailable(f"{what}: {error.get('description', '')}")
            raise MeshError(f"{what}: {error.get('description', error)} (code {code})")
        return reply  # type: ignore[no-any-return]

    async def _send_item(self, item: WorkItem) -> _Pending:
        return await self._send_acked(
            self.names.work_subject(item.capability), encode(item), msg_id=work_item_id(item), trace=item.record.trace
        )

    # --- acknowledged publishing --------------------------------------------------------

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
        headers = {VERSION_HEADER: PROTOCOL_MAJOR, "Nats-Msg-Id": msg_id}
        if trace is not None and trace_id(trace) is not None:  # a peer's record may carry any string
            headers["traceparent"] = trace
        pending = _Pending(subject, data, headers)
        # Broker away: not lost, only not sent yet; Announcement.wait sends it again and
        # logs it if the broker never takes it.
        with contextlib.suppress(Unavailable), translate_errors(f"publishing {subject}"):
            await self._replies.send(pending)
            pending.sent = True
        return pending

    async def snapshot(self, pattern: str, *, bucket: KeyValue | None = None) -> list[bytes]:
        """The current values of a bucket (default: tasks) whose keys match ``pattern``,
        deleted keys left out. For listings people ask for (`mesh top`, `mesh agents`),
        never the hot path. (A pull consumer read to its end: nats-py's KV watch can
        report the end of the current values before it has delivered them all.)"""
        return [value for _, value in await self.snapshot_keyed(pattern, bucket=bucket)]

    async def snapshot_keyed(self, pattern: str, *, bucket: KeyValue | None = None) -> list[tuple[str, bytes]]:
        """:meth:`snapshot`, with each value's key."""
        kv = bucket or self.tasks
        name = self.names.agents_bucket if kv is getattr(self, "agents", None) else self.names.tasks_bucket
        prefix = f"$KV.{name}."
        found = await self.stored_with_subjects(f"KV_{name}", f"{prefix}{pattern}", last_per_subject=True)
        return [(subject.removeprefix(prefix), value) for subject, value in found if value]

    async def task_writes(self) -> list[Stored]:
        """The last write of every task record in the live bucket (``subject``: its key),
        with the headers a reader verifies it by (:meth:`Trust.admit`)."""
        prefix = f"$KV.{self.names.tasks_bucket}."
        found = await self.stored_messages(f"KV_{self.names.tasks_bucket}", f"{prefix}task.>", last_per_subject=True)
        return [m._replace(subject=m.subject.removeprefix(prefix)) for m in found if m.data]

    async def waiting_items(
        self, capability_filter: str = ">", *, unreadable: list[int] | None = None
    ) -> list[tuple[int, WorkItem]]:
        """The work items waiting in the work stream under ``capability_filter`` (a
        subject tail: ``>`` for all, ``human.>``), with their sequences, read without
        taking them (direct gets: a work-queue stream admits no second consumer). The
        sequences of items that do not decode go to ``unreadable`` if given (no agent
        can act on them: the first to pull one refuses and reports it)."""
        subject = f"{self.names.work_subjects[:-1]}{capability_filter}"
        out: list[tuple[int, WorkItem]] = []
        async for seq, data, _ in self._messages(self.names.work_stream, subject, "the work stream"):
            try:
                out.append((seq, decode_work_item(data)))
            except RemoteProtocolError:
                if unreadable is not None:
                    unreadable.append(seq)
        return out

    async def _messages(
        self, stream: str, subject: str, what: str
    ) -> AsyncGenerator[tuple[int, bytes, dict[str, str]], None]:
        """Every message ``stream`` holds on ``subject`` (wildcards allowed), oldest first,
        with its sequence and headers: one direct get each, no consumer (a work-queue
        stream admits none beside its queues)."""
        seq = 1
        while True:
            with translate_errors(f"reading {what}"):
                msg = await self.nc.request(
                    f"$JS.API.DIRECT.GET.{stream}",
                    msgspec.json.encode({"seq": seq, "next_by_subj": subject}),
                    timeout=5.0,
                )
            headers = msg.headers or {}
            if headers.get("Status"):  # 404: no more
                return
            seq = int(headers.get("Nats-Sequence", "0"))
            yield seq, msg.data, headers
            seq += 1

    async def stored(
        self, stream: str, subject: str, *, last_per_subject: bool = False, patience_s: float = 15.0
    ) -> list[bytes]:
        """Every message ``stream`` holds on ``subject`` as of now, oldest first (or only
        the last one of each subject)."""
        found = await self.stored_with_subjects(
            stream, subject, last_per_subject=last_per_subject, patience_s=patience_s
        )
        return [data for _, data in found]

    async def stored_with_subjects(
        self, stream: str, subject: str, *, last_per_subject: bool = False, patience_s: float = 15.0
    ) -> list[tuple[str, bytes]]:
        """:meth:`stored`, with each message's subject."""
        found = await self.stored_messages(stream, subject, last_per_subject=last_per_subject, patience_s=patience_s)
        return [(m.subject, m.data) for m in found]

    async def stored_messages(
        self, stream: str, subject: str, *, last_per_subject: bool = False, patience_s: float = 15.0
    ) -> list[Stored]:
        """:meth:`stored`, each message with its subject, headers and sequence.

        A pull consumer is read until a message says nothing is left after it (counting
        on a push consumer's totals undercounts while a cluster moves the stream's
        leader), or until it reaches the stream's last message as of the start: a busy
        stream grows while it is read, and a reader slower than its writers would chase
        the tail for ever. With ``last_per_subject`` (a bucket, one message a key) a key
        rewritten while it was read moved past that point: one more lap, to the last
        message as of the end of the first, finds it (a key rewritten again in that lap
        before it was reached is left to the next read; a view that follows the
        republished writes has it anyway). Each key once, its newest message.
        """
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT if last_per_subject else DeliverPolicy.ALL,
            filter_subject=subject,
            inactive_threshold=30.0,
            mem_storage=True,
            num_replicas=1,
        )
        deadline = time.monotonic() + patience_s

        async def reader() -> Any:
            with translate_errors(f"reading {stream}"):
                return await self.js.pull_subscribe(subject, stream=stream, config=config)

        # The stream may be electing a leader: ask again a few times a second.
        sub = await retry(reader, retry_on=Unavailable, patience_s=patience_s, backoff=Backoff(0.25, 0.25))
        out: list[Stored] = []
        newest: dict[str, Stored] = {}
        try:
            with translate_errors(f"reading {stream}"):
                if not (await sub.consumer_info()).num_pending:
                    return out
                end = (await self.js.stream_info(stream)).state.last_seq
                laps = 2 if last_per_subject else 1
                while True:
                    try:
                        batch = await sub.fetch(batch=512, timeout=1.0)
                    except nats.errors.TimeoutError:
                        if time.monotonic() > deadline:
                            raise Unavailable(f"reading {stream}: stopped after {len(out)} messages") from None
                        continue
                    for msg in batch:
                        stored = Stored(msg.subject, msg.data, dict(msg.headers or {}), msg.metadata.sequence.stream)
                        if last_per_subject:
                            newest[msg.subject] = stored
                        else:
                            out.append(stored)
                    if not batch:
                        continue
                    last = batch[-1].metadata
                    if last.num_pending == 0 or (last.sequence.stream >= end and laps == 1):
                        return list(newest.values()) if last_per_subject else out
                    if last.sequence.stream >= end:
                        laps -= 1
                        end = (await self.js.stream_info(stream)).state.last_seq
        finally:
            # Delete the reader's consumer now rather than leave it to its inactivity
            # threshold: every `mesh trace` would otherwise leave one behind for a while.
            with anyio.CancelScope(shield=True):
                await self._remove_reader(stream, sub)

    async def _remove_reader(self, stream: str, sub: Any) -> None:
        """Delete a reader's consumer (best effort: a consumer left behind goes by its
        inactivity threshold, so a failure is only logged)."""
        try:
            name = sub._consumer
            await sub.unsubscribe()
            if name:
                await self.js.delete_consumer(stream, name)
        except nats.errors.Error as exc:
            log.debug("a reader's consumer stays until its inactivity threshold", stream=stream, error=repr(exc))

    # --- the directory, control requests and services -----------------------------------

    async def publish_card(self, card: AgentCard, *, ttl_s: float) -> None:
        """Put an agent's card in the directory, expiring ``ttl_s`` after its last put."""
        with translate_errors(f"publishing the card of {card.id}"):
            await self.js.publish(
                f"$KV.{self.names.agents_bucket}.{self.names.agent_key(card.id)}", encode(card), msg_ttl=ttl_s
            )

    async def card(self, agent_id: str) -> AgentCard | None:
        """The directory's card for ``agent_id``: None if there is none, or it does not
        decode (the directory is informative; nobody acts on a card)."""
        with translate_errors("reading the directory"):
            try:
                entry = await self.agents.get(self.names.agent_key(agent_id))
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                return None
        return self._held_card(agent_id, entry.value)

    def _held_card(self, agent_id: str, value: bytes | None) -> AgentCard | None:
        """The card stored under ``agent_id``'s key as a reader takes it: None if it does
        not decode or names another id (the broker lets each key write only its own
        name's card, not choose what the card says); with identities, what it serves
        counts only as far as that key is bound to (:meth:`Trust.held_card`)."""
        if not value:
            return None
        try:
            card = decode_card(value)
        except RemoteProtocolError:
            return None
        if card.id != agent_id:
            return None
        return self.trust.held_card(card)

    async def remove_card(self, agent_id: str) -> None:
        """Remove an agent's card now: a delete marker (the bucket keeps one revision a
        key, so it replaces the card) that expires in a minute, leaving nothing behind."""
        with translate_errors(f"removing the card of {agent_id}"):
            await self.js.publish(
                f"$KV.{self.names.agents_bucket}.{self.names.agent_key(agent_id)}",
                b"",
                headers={"KV-Operation": "DEL"},
                msg_ttl=60.0,
            )

    async def cards(self) -> list[AgentCard]:
        """Every card in the directory that decodes, by agent id (expired ones are gone)."""
        cards = []
        for key, value in await self.snapshot_keyed("agent.>", bucket=self.agents):
            card = self._held_card(key.removeprefix("agent."), value)
            if card is not None:  # the directory is informative: a card that is not one is left out
                cards.append(card)
        return sorted(cards, key=lambda c: c.id)

    async def request(self, subject: str, data: bytes, *, timeout: float) -> bytes:
        """A core request/reply: :class:`NotFound` if nobody listens on ``subject``,
        :class:`Unavailable` if nobody answers within ``timeout``."""
        with translate_errors(f"request on {subject}"):
            try:
                reply = await self.nc.request(subject, data, timeout=timeout)
            except nats.errors.NoRespondersError:
                raise NotFound(f"nobody listens on {subject}") from None
        return reply.data

    async def events(self, subject: str, *, history: bool) -> AsyncIterator[bytes]:
        """The events stream's messages on ``subject``: new ones, or (``history``) every
        stored one first. An ordered consumer, removed when the iteration ends."""
        with translate_errors("following the events"):
            sub = await self.js.subscribe(
                subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL if history else DeliverPolicy.NEW
            )
        try:
            with translate_errors("following the events"):
                async for msg in sub.messages:
                    yield msg.data
        finally:
            with anyio.CancelScope(shield=True):
                await Listening(sub).close()

    @contextlib.asynccontextmanager
    async def service(
        self,
        *,
        version: str,
        description: str,
        metadata: dict[str, str],
        endpoint: str,
        subject: str,
        handle: Callable[[bytes], Awaitable[bytes]],
        stats: Callable[[], dict[str, Any]] | None = None,
    ) -> AsyncIterator[None]:
        """Serve one endpoint named ``endpoint`` under the mesh's services API name
        (``$SRV.PING`` and the like find it): ``handle`` gets each request's body and
        returns the reply's; ``stats`` makes the endpoint's ``data`` in ``$SRV.STATS``
        replies (an object, as the services API schema wants)."""

        async def respond(request: Request) -> None:
            await request.respond(await handle(request.data))

        with translate_errors(f"serving {subject}"):
            service = await nats.micro.add_service(
                self.nc,
                name=self.names.service_name,
                version=version,
                description=description,
                metadata=metadata,
                stats_handler=(lambda _: stats()) if stats is not None else (lambda _: {}),
            )
            await service.add_endpoint(name=endpoint, subject=subject, handler=respond)
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await service.stop()
                except nats.errors.Error as exc:  # leaving anyway: the endpoint goes with the connection
                    log.debug("stopping the service endpoint failed", error=repr(exc))

    async def close(self) -> None:
        """Close the connection (what was published is flushed first)."""
        with translate_errors("closing the connection"):
            await self.nc.close()

    async def drain(self) -> None:
        """Let subscriptions finish what they received, flush, and close."""
        try:
            await self.nc.drain()
        except nats.errors.Error as exc:  # closed anyway: nothing is left to drain into
            log.debug("draining the connection failed", error=repr(exc))

    # --- events -------------------------------------------------------------------------

    async def publish_event(
        self, kind: str, record: TaskRecord, revision: int, *, actor: str, note: str = "", with_record: bool = False
    ) -> None:
        """Record one event, acknowledged (an event published while a stream elects a
        leader would otherwise vanish), deduplicated by revision."""
        pending = await self._send_event(kind, record, revision, actor=actor, note=note, with_record=with_record)
        await Announcement(self._replies, [pending]).wait()

    async def _send_event(
        self,
        kind: str,
        record: TaskRecord,
        revision: int,
        *,
        actor: str,
        note: str = "",
        with_record: bool = False,
    ) -> _Pending:
        event = task_event(kind, record, actor=actor, note=note, with_record=with_record)
        return await self._send_acked(
            self.names.event_subject(record.root, record.id, kind),
            encode(event),
            msg_id=event_id(kind, record, revision),
            trace=record.trace,
        )

    async def report(self, error: str, *, subject: str = "", key: str = "") -> None:
        """Publish an :class:`ErrorReport` for bad input met by this process. Reports are
        rate-limited (:class:`_ReportBudget`): a flood of bad input must not become a
        flood of reports; what is held back is counted, and said in the next report."""
        self.refused += 1
        if not self._reports.take():
            return
        if self._reports.held:
            error = f"{error} ({self._reports.held} more reports held back since the last one)"
            self._reports.held = 0
        report = ErrorReport(agent=self.agent, subject=subject, key=key, error=error, at=time.time())
        try:
            await self.nc.publish(
                self.names.error_subject(self.agent), encode(report), headers={VERSION_HEADER: PROTOCOL_MAJOR}
            )
        except nats.errors.Error as exc:  # a report must never fail what reported it: the log keeps it
            log.warning("could not publish an error report", report=error, error=repr(exc))

    @contextlib.asynccontextmanager
    async def follow(self, task_id: str) -> AsyncIterator[Follow]:
        """Subscribe to one task's record writes as the broker republishes them (core
        NATS: no consumer is created). Writes accepted after this is entered are all
        seen, unless the connection drops: re-read after a reconnection."""
        follow = Follow(self.nc)
        with translate_errors(f"following task {task_id}"):
            sub = await self.nc.subscribe(self.names.record_subject(task_id), cb=follow._on_msg)
        try:
            yield follow
        finally:
            await Listening(sub).close()

    @contextlib.asynccontextmanager
    async def follow_all(self) -> AsyncIterator[Follow]:
        """Every accepted write of every live task record, as the broker republishes
        them (core NATS, no consumer): what a live view of the whole mesh follows."""
        follow = Follow(self.nc)
        with translate_errors("following the task records"):
            sub = await self.nc.subscribe(self.names.records_subjects, cb=follow._on_msg)
        try:
            yield follow
        finally:
            await Listening(sub).close()

    async def directory_changes(self) -> AsyncIterator[tuple[str, AgentCard | None]]:
        """The directory's cards as they are written, first the current ones: (agent id,
        card), or (agent id, None) when a card is removed or expires (the bucket's
        markers). A card that does not decode is left out (the directory is informative)."""
        prefix = "agent."
        with translate_errors("following the directory"):
            watcher = await self.agents.watch(f"{prefix}>")
        try:
            with translate_errors("following the directory"):
                async for entry in watcher:
                    if entry is None:  # the end of the current values
                        continue
                    agent_id = entry.key.removeprefix(prefix)
                    if entry.operation is not None or not entry.value:
                        yield agent_id, None
                        continue
                    card = self._held_card(agent_id, entry.value)
                    if card is not None:
                        yield agent_id, card
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(nats.errors.Error):
                await watcher.stop()  # type: ignore[no-untyped-call]


def _source_revision(headers: dict[str, str]) -> int:
    """The bucket revision of a write the archive copied: the second word of its
    ``Nats-Stream-Source`` header (``<stream> <sequence> ...``)."""
    words = headers.get("Nats-Stream-Source", "").split()
    return int(words[1]) if len(words) > 1 and words[1].isdigit() else 0


def _bucket_stream(
    bucket: str, description: str, *, max_value: int, storage: StorageType, replicas: int, **more: Any
) -> StreamConfig:
    """The stream of one of the mesh's key-value buckets: one revision a key (a write
    replaces the last in place; the events stream is the trace), per-message TTLs, no
    deletes and no rollups, and a value limit with room for a write's headers
    (compare-and-set, TTL, signature)."""
    return StreamConfig(
        name=f"KV_{bucket}",
        description=description,
        subjects=[f"$KV.{bucket}.>"],
        retention=RetentionPolicy.LIMITS,
        max_msgs_per_subject=1,
        discard=DiscardPolicy.NEW,
        allow_rollup_hdrs=False,
        deny_delete=True,
        allow_msg_ttl=True,
        duplicate_window=120.0,
        max_msg_size=max_value + HEADER_ROOM_BYTES,
        storage=storage,
        num_replicas=replicas,
        max_consumers=STREAM_MAX_CONSUMERS,
        **more,
    )


class Stored(NamedTuple):
    """A message a stream holds: its subject, bytes, headers and sequence (for a
    key-value bucket, the key's revision)."""

    subject: str
    data: bytes
    headers: dict[str, str]
    seq: int


class _ReportBudget:
    """A token bucket for error reports: ``rate`` a second, bursts of ``burst``."""

    def __init__(self, rate: float = 10.0, burst: float = 20.0) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.at = burst, time.monotonic()
        #: reports held back since the last one sent
        self.held = 0
        #: reports held back since the process started
        self.held_total = 0

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.held += 1
        self.held_total += 1
        return False


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _note(event: Event, record: TaskRecord) -> str:
    match event.__struct_config__.tag:
        case "veto":
            return "; ".join(getattr(event, "reasons", ()))
        case "fail" | "expire" | "cancel":
            return record.error
        case "release" | "renew" | "claim":
            return record.progress
        case "add_child":
            return str(getattr(event, "child", ""))
        case "charge":
            return str(getattr(event, "note", ""))
        case _:
            return ""
