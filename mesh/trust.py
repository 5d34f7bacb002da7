"""This process's side of signed record writes (PROTOCOL.md 6.23): it signs every task
record it writes, and verifies every record it reads before anyone acts on it.

Each reader verifies each revision once: the last verified revision of every task it
follows is kept (with its digest, which the next write's ``Mesh-Prev`` must name), so
re-reading it costs a dictionary lookup. A mesh without identities (no seed configured)
neither signs nor verifies; a signed reader refuses an unsigned write as forged.
"""

from __future__ import annotations

import collections
import datetime
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from protocol import (
    AgentCard,
    Bindings,
    Forged,
    SigningKey,
    TaskRecord,
    check_alone,
    check_write,
    decode_record,
    digest,
    held_card,
    sign,
    signature_of,
    signing_key,
    stamp,
    stamp_unreadable_end,
    verify,
)

__all__ = ["Trust", "Link", "Gap", "KeysDirectory", "load_trust", "stored_time"]

#: the least time between two readings of the keys directory for keys it did not name
KEYS_REREAD_S = 5.0
#: tasks whose last verified revision a reader keeps (a few hundred bytes each)
CHAIN_CAPACITY = 4096
#: digests of a task's earlier revisions kept to name a replay as one
SEEN_DIGESTS = 32


@dataclass
class Link:
    """The last revision of a task this process verified (or wrote)."""

    revision: int
    digest: str
    record: TaskRecord
    #: digests of the task's earlier revisions (a write over one of them is a replay)
    seen: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=SEEN_DIGESTS))


class Trust:
    """Signs this process's writes and verifies what it reads; ``signer`` None: a mesh
    without identities (nothing signed, nothing checked)."""

    def __init__(
        self,
        signer: SigningKey | None = None,
        operators: frozenset[str] = frozenset(),
        *,
        bound: Bindings | None = None,
        capacity: int | None = CHAIN_CAPACITY,
        keys: KeysDirectory | None = None,
    ) -> None:
        self.signer = signer
        #: keys that may cancel any task
        self.operators = operators
        #: the capabilities the keys this process knows of are bound to: a claim or a
        #: review counts only from a key bound to its capability (None: nobody held)
        self.bound = bound
        #: where operators and bindings are read from, again when an unknown key signs
        self.keys = keys
        #: tasks whose last verified revision is kept (None: every task read)
        self.capacity = capacity
        self._chain: collections.OrderedDict[str, Link] = collections.OrderedDict()
        #: signatures checked (not served from the chain): the bench's count
        self.verified = 0

    @property
    def signed(self) -> bool:
        return self.signer is not None

    def fresh(self) -> Trust:
        """The same keys with no revision verified yet: to verify a task's whole
        history (the archive) as a party that saw every write would."""
        return Trust(self.signer, self.operators, bound=self.bound, capacity=self.capacity, keys=self.keys)

    def last(self, task_id: str) -> Link | None:
        return self._chain.get(task_id)

    def _keep(self, task_id: str, link: Link) -> None:
        self._chain[task_id] = link
        self._chain.move_to_end(task_id)
        while self.capacity is not None and len(self._chain) > self.capacity:
            self._chain.popitem(last=False)

    def remember_all(self) -> None:
        """Keep the last verified revision of every task read, however many: for a view
        (``mesh top``, ``mesh ui``), which holds every live record anyway and rereads
        them all, and would otherwise verify them all again once they outnumber
        :data:`CHAIN_CAPACITY`."""
        self.capacity = None

    def held_card(self, card: AgentCard) -> AgentCard:
        """``card`` as this reader takes it (:func:`protocol.held_card`): what it serves
        counts only as far as the key of its id is bound to it. Unchanged in a mesh
        without identities, or for an id no ``.pub`` here names (read again for one, at
        most every :data:`KEYS_REREAD_S`)."""
        if self.signer is None or self.keys is None:
            return card
        if card.id not in self.keys.names and self.keys.may_reread():
            self.operators, self.bound = self.keys.read()
        return held_card(card, self.keys.names.get(card.id), self.bound)

    def stamp(self, prev: TaskRecord | None, new: TaskRecord) -> TaskRecord:
        """``new`` with this process's key recorded where its write makes it a party."""
        return new if self.signer is None else stamp(prev, new, self.signer.public_key)

    def stamp_end(self, copy: TaskRecord, ended: TaskRecord, actor: str) -> TaskRecord:
        """``ended``, an unreadable record's end from ``copy``, with this process named as
        its owner if the copy does not name its key (:func:`protocol.stamp_unreadable_end`)."""
        return ended if self.signer is None else stamp_unreadable_end(copy, ended, actor, self.signer.public_key)

    def prev_digest(self, old: TaskRecord | None, revision: int, encoded_old: bytes | None) -> str:
        """``Mesh-Prev`` of a write over ``old`` at ``revision`` (0: the key's first)."""
        if revision == 0 or old is None:
            return ""
        link = self._chain.get(old.id)
        if link is not None and link.record == old:
            return link.digest
        return digest(encoded_old) if encoded_old is not None else ""

    def headers(self, key: str, prev: str, value: bytes) -> dict[str, str]:
        return {} if self.signer is None else sign(self.signer, key, prev, value)

    def wrote(self, task_id: str, revision: int, value: bytes, record: TaskRecord) -> None:
        """Keep this process's own accepted write as the task's last valid revision."""
        if self.signer is None:
            return
        link = self._chain.get(task_id)
        fresh = Link(revision, digest(value), record)
        if link is not None:
            fresh.seen.extend(link.seen)
            fresh.seen.append(link.digest)
        self._keep(task_id, fresh)

    def admit(
        self,
        task_id: str,
        key: str,
        revision: int,
        value: bytes,
        headers: Mapping[str, str] | None,
        *,
        replaced: str | None = None,
    ) -> TaskRecord:
        """The record of a write read from the broker, once verified. Raises the
        decoder's RemoteProtocolError for bytes that do not decode, :class:`Forged`
        for a write this process must not act on, and :class:`Gap` for one that does
        not follow the last revision this process holds (it missed writes, or never
        saw one): only the writes between, from the archive, can say.

        ``replaced``: in a replay of a task's whole history (the archive), the digest
        of the stored write this one replaced. A write over a forged one names it (its
        writer compared-and-set on what was there) and is checked against the last
        valid revision all the same; a write over anything else is forged."""
        link = self._chain.get(task_id)
        if self.signer is None:
            return decode_record(value)
        value_digest = digest(value)
        if link is not None and link.revision == revision and link.digest == value_digest:
            return link.record  # verified before: once per revision
        signature = signature_of(headers)
        if signature is None:
            raise Forged("an unsigned write in a mesh with identities")
        verify(signature, key, value)
        self.verified += 1
        if self.keys is not None and self.keys.unknown(signature.signer):
            self.operators, self.bound = self.keys.read()
        record = decode_record(value)
        stored_at = stored_time(headers)
        if link is None:
            if signature.prev:
                if replaced is None:
                    raise Gap(task_id, revision)
                # Every write before it was forged or unreadable: the open task's is the last valid.
                check_alone(record, signature.signer, operators=self.operators, bound=self.bound, stored_at=stored_at)
            else:
                check_write(
                    None, record, signature.signer, operators=self.operators, bound=self.bound, stored_at=stored_at
                )
        elif signature.prev == link.digest or (replaced and signature.prev == replaced):
            check_write(
                link.record, record, signature.signer, operators=self.operators, bound=self.bound, stored_at=stored_at
            )
        elif signature.prev in link.seen or not signature.prev:
            raise Forged(
                f"written over an earlier revision than {link.revision} (a replay or a fork)",
                signer=signature.signer,
            )
        elif replaced is not None:
            raise Forged(f"written over no revision of the task (after {link.revision})", signer=signature.signer)
        else:
            raise Gap(task_id, revision)
        fresh = Link(revision, value_digest, record)
        if link is not None:
            fresh.seen.extend(link.seen)
            fresh.seen.append(link.digest)
        self._keep(task_id, fresh)
        return record


def stored_time(headers: Mapping[str, str] | None) -> float | None:
    """When the broker stored a message (its ``Nats-Time-Stamp``, RFC 3339 in UTC with
    up to nanoseconds), as Unix time; None if absent or malformed."""
    text = (headers or {}).get("Nats-Time-Stamp", "")
    if not text.endswith("Z"):
        return None
    whole, _, fraction = text[:-1].partition(".")
    try:
        at = datetime.datetime.fromisoformat(whole).replace(tzinfo=datetime.UTC).timestamp()
    except ValueError:
        return None
    if fraction and not fraction.isdigit():
        return None
    digits = fraction[:9]
    return at + (int(digits) / 10 ** len(digits) if digits else 0.0)


class Gap(Exception):
    """A write that does not follow the last revision of the task this process holds
    (it missed writes in between, or never saw one; or the writer names a revision
    nobody wrote). Its ``Mesh-Prev`` is the writer's word alone, and a record checked
    without the revision it replaced could be anyone's claim of the task: the reader
    verifies the writes in between, which the archive holds, before this one
    (PROTOCOL.md 6.23)."""

    def __init__(self, task_id: str, revision: int) -> None:
        super().__init__(f"task {task_id}: revision {revision} does not follow the last revision read")
        self.task_id = task_id
        self.revision = revision


class KeysDirectory:
    """The ``.pub`` files beside a process's seed: the operators' keys and every known
    key's binding. Read at start, and again (at most every :data:`KEYS_REREAD_S`) when
    a key signs that none of them names: a key added since is held to its binding
    without a restart, once its ``.pub`` is copied here."""

    def __init__(self, directory: Path, own: str, own_role: str | None) -> None:
        self.directory, self.own, self.own_role = directory, own, own_role
        self._known: frozenset[str] = frozenset()
        #: the key of each name (an agent's id, a client's): who may write its card
        self.names: dict[str, str] = {}
        self._read_at = -math.inf

    def unknown(self, key: str) -> bool:
        return key not in self._known and self.may_reread()

    def may_reread(self) -> bool:
        return time.monotonic() - self._read_at >= KEYS_REREAD_S

    def read(self) -> tuple[frozenset[str], dict[str, tuple[str, ...]]]:
        """The operators' keys, and the capabilities each bound key is bound to."""
        from .identity import list_keys

        known = list_keys(self.directory)
        self._known = frozenset(k.public_key for k in known) | {self.own}
        self.names = {k.name: k.public_key for k in known}
        self._read_at = time.monotonic()
        operators = {k.public_key for k in known if k.role == "operator"}
        if self.own_role == "operator":
            operators.add(self.own)
        # An operator's key, and one bound before bindings existed (no `serves`), take anything.
        bound = {k.public_key: k.serves for k in known if k.role != "operator" and k.serves is not None}
        return frozenset(operators), bound


def load_trust(nkey: str | Path | None) -> Trust:
    """The trust of a process connecting with the seed file ``nkey`` (None: a mesh
    without identities), from the ``.pub`` files beside the seed (the keys directory):
    the operators' keys (and the seed's own if it is an operator's), and the
    capabilities each known key is bound to (PROTOCOL.md 6.22, 6.23)."""
    if nkey is None:
        return Trust()
    from .identity import load_seed

    identity = load_seed(nkey)
    signer = signing_key(identity.seed)
    keys = KeysDirectory(Path(nkey).parent, signer.public_key, identity.role)
    operators, bound = keys.read()
    return Trust(signer, operators, bound=bound, keys=keys)
