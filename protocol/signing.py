"""Signed record writes (PROTOCOL.md 6.23): who wrote each revision of a task, and
whether that write was theirs to make.

Every write of a task record carries three headers: ``Mesh-Signer`` (the writer's nkey
public key, ``U...``), ``Mesh-Prev`` (the digest of the value it replaces; empty for the
key's first write) and ``Mesh-Sig`` (an ed25519 signature). What is signed is the exact
stored bytes, never a re-encoding, so a peer in another language verifies without
canonical JSON::

    b"mesh.v2.rec\\n" + key + b"\\n" + Mesh-Prev + b"\\n" + value

The key binds a signature to one task; ``Mesh-Prev`` chains each task's revisions, so a
replayed revision does not follow the one it would replace.

A valid signature says who wrote; :func:`check_write` says whether they could: the keys
a record carries (``requester_key``, ``owner_key`` set by a claim, ``author_key`` set by a
finish, each vote's and review slot's ``key``) name who may make each transition, and the
transition itself must be one :data:`protocol.machine.TRANSITIONS` allows. A write that
fails either check is :class:`Forged`: never acted on (PROTOCOL.md 6.23 says what a party
does instead).

Pure functions: keys are passed in, the crypto is PyNaCl's (ed25519), nkeys only
decodes the key format. Nothing here reads a clock or a file.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import msgspec

from .errors import RemoteProtocolError
from .machine import TRANSITIONS, takeover_at
from .names import capability_tokens
from .types import TERMINAL_STATES, AgentCard, TaskRecord, Vote

if TYPE_CHECKING:
    import nacl.signing

# PyNaCl and nkeys are imported where they are used: `import protocol` stays light for
# the parties that never sign (a mesh without identities).

__all__ = [
    "SIGNER_HEADER",
    "PREV_HEADER",
    "SIG_HEADER",
    "SIGNED_DOMAIN",
    "Forged",
    "Signature",
    "SigningKey",
    "signing_key",
    "digest",
    "signed_payload",
    "sign",
    "signature_of",
    "verify",
    "stamp",
    "stamp_unreadable_end",
    "check_write",
    "check_alone",
    "parties",
    "may_take",
    "MAX_CLOCK_SKEW_S",
    "Bindings",
    "ANY_CAPABILITY",
    "held_card",
    "IMMUTABLE_FIELDS",
]

#: in a key's bound capabilities: every capability
ANY_CAPABILITY = "*"
#: the capabilities each key is bound to serve (PROTOCOL.md 6.22), as a reader knows
#: them: a key it does not list is bound to none it knows of, and is not held to any
Bindings = Mapping[str, tuple[str, ...]]

#: how far ahead of the broker's clock (the time it stored the write) a write's
#: ``updated`` may be where time decides a write's legality (a takeover, a deadline):
#: parties' clocks are kept within it (NTP)
MAX_CLOCK_SKEW_S = 2.0

SIGNER_HEADER = "Mesh-Signer"
PREV_HEADER = "Mesh-Prev"
SIG_HEADER = "Mesh-Sig"
#: prefixed to every signed payload, so a record signature is never valid as anything else
SIGNED_DOMAIN = b"mesh.v2.rec\n"

#: fields no transition changes: a write that changes one is forged, whoever signed it
IMMUTABLE_FIELDS: tuple[str, ...] = (
    "v",
    "id",
    "instruction",
    "data",
    "criteria",
    "tags",
    "requester",
    "requester_key",
    "max_lapses",
    "hops_left",
    "deadline",
    "budget",
    "parent",
    "root",
    "lineage",
    "trace",
    "created",
)
#: fields only an escalating veto changes (the task moves to its escalation capability)
_ESCALATION_FIELDS = ("capability", "review", "claim_timeout_s")


class Forged(RemoteProtocolError):
    """A write whose signature is missing, malformed or wrong, or whose signer could
    not make that transition. ``signer`` is the key the write claims (None: unsigned)."""

    def __init__(self, why: str, *, signer: str | None = None) -> None:
        self.why = why
        self.signer = signer
        super().__init__(f"forged write ({why}; signed by {signer or 'nobody'})")


class Signature(msgspec.Struct, frozen=True, kw_only=True):
    """A write's three signing headers, as sent."""

    signer: str
    prev: str
    sig: str


class SigningKey:
    """An ed25519 key made once from an nkey seed (decoding the seed costs more than
    a signature: keep the key, not the seed)."""

    __slots__ = ("_key", "public_key")

    def __init__(self, key: nacl.signing.SigningKey, public_key: str) -> None:
        self._key = key
        #: the nkey public key (``U...``), as ``Mesh-Signer`` carries it
        self.public_key = public_key

    def sign(self, payload: bytes) -> bytes:
        return bytes(self._key.sign(payload).signature)

    def __repr__(self) -> str:
        return f"SigningKey({self.public_key})"


def signing_key(seed: str | bytes) -> SigningKey:
    """The signing key of an nkey user seed (``SU...``)."""
    import nacl.signing
    import nkeys

    raw = seed.encode() if isinstance(seed, str) else bytes(seed)
    _, secret = nkeys.decode_seed(bytearray(raw.strip()))
    key = nacl.signing.SigningKey(bytes(secret))
    public = nkeys.from_seed(bytearray(raw.strip())).public_key.decode()
    return SigningKey(key, public)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text or len(text) % 4 == 1 or any(c not in _B64_CHARS for c in text):
        raise ValueError("not base64url without padding")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_Refuse = Callable[[str], Forged]
_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def digest(value: bytes) -> str:
    """``Mesh-Prev`` of the write that replaces ``value``: SHA-256, base64url unpadded."""
    return _b64(hashlib.sha256(value).digest())


def signed_payload(key: str, prev: str, value: bytes) -> bytes:
    """The exact bytes a write's signature covers (``key``: the task's key in the
    bucket, ``task.<id>``; ``prev``: :func:`digest` of the replaced value, or "")."""
    return SIGNED_DOMAIN + key.encode() + b"\n" + prev.encode() + b"\n" + value


def sign(signer: SigningKey, key: str, prev: str, value: bytes) -> dict[str, str]:
    """The headers of a signed write of ``value`` over the value whose digest is ``prev``."""
    sig = signer.sign(signed_payload(key, prev, value))
    return {SIGNER_HEADER: signer.public_key, PREV_HEADER: prev, SIG_HEADER: _b64(sig)}


def signature_of(headers: Mapping[str, str] | None) -> Signature | None:
    """A write's signature from its headers; None if it carries none (an unsigned
    write). Some but not all of the three headers is :class:`Forged`."""
    headers = headers or {}
    found = {h: headers.get(h) for h in (SIGNER_HEADER, PREV_HEADER, SIG_HEADER)}
    if all(v is None for v in found.values()):
        return None
    missing = [h for h, v in found.items() if v is None]
    if missing:
        raise Forged(f"missing {', '.join(missing)}", signer=found[SIGNER_HEADER])
    return Signature(signer=found[SIGNER_HEADER] or "", prev=found[PREV_HEADER] or "", sig=found[SIG_HEADER] or "")


@functools.lru_cache(maxsize=4096)
def _verify_key(public_key: str) -> nacl.signing.VerifyKey:
    """An nkey user public key: base32 (unpadded) of the prefix byte ``U``, the 32-byte
    ed25519 key and a CRC-16 (XMODEM, little-endian) of the two."""
    import nacl.signing
    import nkeys

    try:
        raw = base64.b32decode(public_key + "=" * (-len(public_key) % 8))
    except (binascii.Error, ValueError):
        raise Forged("Mesh-Signer is not base32", signer=public_key) from None
    if len(raw) != 35 or raw[0] != nkeys.PREFIX_BYTE_USER:
        raise Forged("Mesh-Signer is not a user public key (U...)", signer=public_key)
    if int.from_bytes(raw[33:], "little") != nkeys.crc16(bytearray(raw[:33])):
        raise Forged("Mesh-Signer's checksum is wrong", signer=public_key)
    return nacl.signing.VerifyKey(raw[1:33])


def verify(signature: Signature, key: str, value: bytes) -> None:
    """Check that ``signature`` signs ``value`` written at ``key`` over the value whose
    digest is ``signature.prev``; :class:`Forged` if not."""
    import nacl.exceptions

    verify_key = _verify_key(signature.signer)
    try:
        sig = _unb64(signature.sig)
    except (ValueError, binascii.Error):
        raise Forged("Mesh-Sig is not base64url", signer=signature.signer) from None
    if len(sig) != 64:
        raise Forged(f"Mesh-Sig is {len(sig)} bytes, not 64", signer=signature.signer)
    try:
        verify_key.verify(signed_payload(key, signature.prev, value), sig)
    except nacl.exceptions.BadSignatureError:
        raise Forged("the signature does not match the record", signer=signature.signer) from None


# --- who may write what -------------------------------------------------------------------


def stamp(prev: TaskRecord | None, new: TaskRecord, signer: str) -> TaskRecord:
    """``new`` with ``signer``'s key recorded where the write makes it a party: the
    requester's key on a new task, the owner's on a claim, the author's on a finish,
    the voter's on its vote and the reviewer's on the slot it takes. The signing
    runtime stamps every record it writes; :func:`check_write` then holds it to them."""
    changes: dict[str, object] = {}
    if prev is None and new.requester_key is None and new.epoch == 0:
        changes["requester_key"] = signer
    if new.epoch > (prev.epoch if prev is not None else 0) and new.owner_key != signer:
        changes["owner_key"] = signer
    finished = new.state in ("review", "done") and (prev is None or prev.state in ("open", "working"))
    if finished and new.author is not None and new.author_key != signer:
        changes["author_key"] = signer
    if any(v.key is None for v in new.votes) or any(v.key is None for v in new.feedback):
        old = set(prev.votes) | set(prev.feedback) if prev is not None else set()
        mine = {v for v in (*new.votes, *new.feedback) if v.key is None and v not in old}
        changes["votes"] = tuple(_own(v, mine, signer) for v in new.votes)
        changes["feedback"] = tuple(_own(v, mine, signer) for v in new.feedback)
    old_slots = set(prev.slots) if prev is not None else set()
    if any(s.key is None and s not in old_slots for s in new.slots):
        changes["slots"] = tuple(
            msgspec.structs.replace(s, key=signer) if s.key is None and s not in old_slots else s for s in new.slots
        )
    return msgspec.structs.replace(new, **changes) if changes else new


def stamp_unreadable_end(copy: TaskRecord, ended: TaskRecord, actor: str, signer: str) -> TaskRecord:
    """``ended`` (:func:`protocol.end_unreadable` of a live ``copy``) with its writer
    named as the owner when the copy does not name its key: the holder of a work item
    that met an unreadable record ends the task, and a reader checking that end alone
    (:func:`check_alone`) then finds its signer among the record's keys. It gives a
    writer nothing an unreadable record had not: any signed write that does not decode
    ends the task anyway (PROTOCOL.md 6.15)."""
    if copy.state in TERMINAL_STATES or signer in parties(ended):
        return ended  # a copy that had ended is written back as it is
    return msgspec.structs.replace(ended, owner=actor, owner_key=signer)


def _own(vote: Vote, mine: set[Vote], signer: str) -> Vote:
    return msgspec.structs.replace(vote, key=signer) if vote in mine else vote


def _reachable(before: str, after: str) -> bool:
    """``after`` follows ``before`` by at most two transitions of the table (a write
    may apply two at once: a claim and a result; a claim and a failure)."""
    if before == after:
        return any(b == before and after in nexts for (b, _), nexts in TRANSITIONS.items())
    one = {n for (b, _), nexts in TRANSITIONS.items() if b == before for n in nexts}
    two = {n for (b, _), nexts in TRANSITIONS.items() if b in one for n in nexts}
    return after in one or after in two


def check_write(
    prev: TaskRecord | None,
    new: TaskRecord,
    signer: str,
    *,
    operators: frozenset[str] = frozenset(),
    bound: Bindings | None = None,
    stored_at: float | None = None,
) -> None:
    """Refuse (:class:`Forged`) a write of ``new`` over ``prev`` (None: the key's first
    write, whose previous revision was the work item's record) that ``signer``'s key
    could not make. ``operators``: the operators' keys, who may cancel any task;
    ``bound``: the capabilities the keys the reader knows are bound to (a claim, a vote
    or a review slot counts only from a key bound to its capability); ``stored_at``:
    when the broker stored the write (its ``Nats-Time-Stamp``, Unix seconds), by which a
    takeover and an end at the deadline are dated."""

    def refuse(why: str) -> Forged:
        return Forged(why, signer=signer)

    _check_intrinsic(new, refuse)
    if prev is None:
        _check_first(new, signer, operators, bound, stored_at, refuse)
        return
    if prev.state in TERMINAL_STATES:
        raise refuse(f"the task had already ended ({prev.state})")
    if new == prev:
        # A restore: a party writes the last valid revision back over a forged one
        # (PROTOCOL.md 6.23). It changes nothing, so any party may.
        if signer in parties(prev) or signer in operators:
            return
        raise refuse("a restore by a key that is no party of the task")
    escalated = (
        prev.state == "review"
        and prev.review is not None
        and new.review is None
        and new.capability == prev.review.escalate_to
    )
    for name in IMMUTABLE_FIELDS + (() if escalated else _ESCALATION_FIELDS):
        if getattr(new, name) != getattr(prev, name):
            raise refuse(f"{name} changed")
    if new.state == "failed" and new.reason == "error" and (signer in parties(prev) or signer in operators):
        # A party's end of a task whose record it cannot trust (PROTOCOL.md 6.15, 6.23):
        # written from its own copy, which may be older than the record it replaces.
        return
    if new.epoch < prev.epoch:
        raise refuse(f"the epoch went back from {prev.epoch} to {new.epoch} (an old revision replayed?)")
    if new.epoch > prev.epoch + 1:
        raise refuse(f"the epoch jumped from {prev.epoch} to {new.epoch}")
    if not _reachable(prev.state, new.state):
        raise refuse(f"no transition leads from {prev.state} to {new.state}")
    if new.epoch == prev.epoch + 1:
        _check_claim(prev, new, signer, bound, stored_at, refuse)
        return
    if new.owner_key != prev.owner_key:
        raise refuse("the owner's key changed without a claim")
    if (new.ticket, new.item_lease_s) != (prev.ticket, prev.item_lease_s) and not (
        new.state == "open" and new.ticket is None and new.item_lease_s is None
    ):
        # Only a claim sets them (a task back in its queue has none): an owner that
        # named another item, or a longer lease, would keep its task from a takeover.
        raise refuse("the work item or its lease changed without a claim")
    if new.state == "cancelled":
        if signer != prev.requester_key and signer not in operators:
            raise refuse(f"only the requester ({prev.requester}) or an operator cancels")
        return
    if _votes_changed(prev, new):
        _check_vote(prev, new, signer, bound, refuse)
        return
    if new.slots != prev.slots:
        _check_slots(prev, new, signer, bound, refuse)
        return
    if new.state == "failed" and _anyone_may_end(prev, new, stored_at):
        return
    if signer != prev.owner_key:
        raise refuse(f"only the owner ({prev.owner}) at epoch {prev.epoch} writes this")
    if new.author != prev.author or new.result != prev.result:
        if new.author != prev.owner or new.author_key != signer:
            raise refuse("a result must name its owner and its owner's key as author")


def _check_first(
    new: TaskRecord,
    signer: str,
    operators: frozenset[str],
    bound: Bindings | None,
    stored_at: float | None,
    refuse: _Refuse,
) -> None:
    if new.epoch > 1:
        raise refuse(f"a task's first write has epoch {new.epoch}")
    if new.epoch == 1:
        if new.owner_key != signer:
            raise refuse("a claim must record its signer as the owner's key")
        _check_bound_to_take(new, signer, bound, refuse)
        return
    if new.state == "cancelled":
        if signer != new.requester_key and signer not in operators:
            raise refuse(f"only the requester ({new.requester}) or an operator cancels")
        return
    if new.state == "failed":
        if new.reason == "no_agent" or signer == new.requester_key:
            return
        if new.reason == "deadline" and _dated(new, stored_at):
            return
    raise refuse(f"a task's first write cannot leave it {new.state}")


def _check_claim(
    prev: TaskRecord, new: TaskRecord, signer: str, bound: Bindings | None, stored_at: float | None, refuse: _Refuse
) -> None:
    if prev.state not in ("open", "working"):
        raise refuse(f"a claim of a task in {prev.state}")
    if new.owner_key != signer:
        raise refuse("a claim must record its signer as the owner's key")
    _check_bound_to_take(new, signer, bound, refuse)
    if prev.state == "working" and (prev.ticket is None or new.ticket != prev.ticket):
        raise refuse(f"a takeover must hold the owner's work item ({prev.ticket}), not {new.ticket}")
    _check_lease_ran_out(prev, new, stored_at, refuse)
    if new.attempts != prev.attempts + 1:
        raise refuse("a claim counts one more attempt")
    if (new.author != prev.author or new.result != prev.result) and new.author_key != signer:
        raise refuse("a result must name its owner's key as author")


def _votes_changed(prev: TaskRecord, new: TaskRecord) -> bool:
    return new.votes != prev.votes or new.feedback != prev.feedback


def _check_vote(prev: TaskRecord, new: TaskRecord, signer: str, bound: Bindings | None, refuse: _Refuse) -> None:
    if prev.state != "review":
        raise refuse(f"a vote on a task in {prev.state}")
    _check_bound_to_review(prev, signer, bound, refuse)
    cast = [v for v in new.votes if v not in prev.votes] + [v for v in new.feedback if v not in prev.feedback]
    if not cast or any(v != cast[0] for v in cast):
        raise refuse("a write casts exactly one vote")
    vote = cast[0]
    if vote.key != signer:
        raise refuse(f"the vote of {vote.reviewer!r} is not signed by its key")
    if signer == prev.author_key:
        raise refuse("the author cannot review its own result")
    if vote.round != prev.reworks:
        raise refuse(f"a vote for round {vote.round} in round {prev.reworks}")
    if any(v.key == signer and v.round == prev.reworks for v in prev.votes):
        raise refuse("this key already voted in this round (under any name)")
    if new.votes and new.votes[: len(prev.votes)] != prev.votes:
        raise refuse("earlier votes were changed")
    if new.feedback[: len(prev.feedback)] != prev.feedback:
        raise refuse("earlier feedback was changed")
    if any(s.key != signer for s in set(prev.slots) - set(new.slots)) and new.state == "review":
        raise refuse("a vote gave up another reviewer's slot")


def _check_slots(prev: TaskRecord, new: TaskRecord, signer: str, bound: Bindings | None, refuse: _Refuse) -> None:
    if prev.state != "review":
        raise refuse(f"a review slot taken on a task in {prev.state}")
    if any(s.key == signer for s in set(new.slots) - set(prev.slots)):
        _check_bound_to_review(prev, signer, bound, refuse)
    if signer == prev.author_key:
        raise refuse("the author cannot review its own result")
    for slot in set(new.slots) - set(prev.slots):
        if slot.key != signer:
            raise refuse(f"the slot of {slot.reviewer!r} is not signed by its key")
    taken = {s.ticket for s in new.slots if s.key == signer}
    for slot in set(prev.slots) - set(new.slots):
        if slot.key != signer and slot.ticket not in taken:
            raise refuse(f"the slot of {slot.reviewer!r} was given up by another key")


def may_take(bound: Bindings | None, signer: str, capability: str) -> bool:
    """Whether ``signer`` may take (claim, review) work of ``capability`` as far as the
    bindings ``bound`` know: a key they do not list is not held to any."""
    serves = None if bound is None else bound.get(signer)
    return serves is None or ANY_CAPABILITY in serves or capability in serves


def held_card(card: AgentCard, key: str | None, bound: Bindings | None) -> AgentCard:
    """A directory card as a reader takes it (PROTOCOL.md 6.22 "Bindings"): the broker
    lets only the key named ``card.id`` write that card, but cannot read what the card
    claims; its capabilities count only as far as that key (``key``, as the reader
    knows it) is bound to them, and its public key is that one. ``key`` None: a reader
    that knows no key of that name takes the card as written."""
    if key is None:
        return card
    serves = tuple(capability for capability in card.serves if may_take(bound, key, capability))
    if serves == card.serves and card.public_key == key:
        return card
    return msgspec.structs.replace(card, serves=serves, public_key=key)


def _check_bound_to_take(new: TaskRecord, signer: str, bound: Bindings | None, refuse: _Refuse) -> None:
    # A question (`agent.<id>`) is answered by the party it is addressed to, which
    # serves no queue for it (PROTOCOL.md 6.9).
    if capability_tokens(new.capability)[0] != "agent" and not may_take(bound, signer, new.capability):
        raise refuse(f"a claim of {new.capability} by a key not bound to it")


def _check_bound_to_review(prev: TaskRecord, signer: str, bound: Bindings | None, refuse: _Refuse) -> None:
    if prev.review is not None and not may_take(bound, signer, prev.review.capability):
        raise refuse(f"a review ({prev.review.capability}) by a key not bound to it")


def _anyone_may_end(prev: TaskRecord, new: TaskRecord, stored_at: float | None) -> bool:
    """An end any party may write (an observer's judgement, PROTOCOL.md 6.11-6.13): past
    the deadline, nobody to act, or the owner lost too often (a takeover's end: once
    the owner's lease ran out)."""
    if new.reason == "deadline":
        return new.deadline is not None and new.updated >= new.deadline and _dated(new, stored_at)
    if new.reason == "no_agent":
        return not (prev.state == "working" and prev.ticket is not None)
    if new.reason != "error" or new.lapses != prev.lapses + 1:
        return False
    earliest = takeover_at(prev)
    return earliest is None or (new.updated >= earliest and _dated(new, stored_at))


def _dated(new: TaskRecord, stored_at: float | None) -> bool:
    """Whether ``new`` is dated no later than the broker stored it (give or take the
    clocks' skew): time decides some writes' legality, and a writer picks its own."""
    return stored_at is not None and new.updated <= stored_at + MAX_CLOCK_SKEW_S


def _check_lease_ran_out(prev: TaskRecord, new: TaskRecord, stored_at: float | None, refuse: _Refuse) -> None:
    """A takeover counts once the owner left its record unwritten for a whole lease
    (:func:`takeover_at`): its ticket is in the record for anyone to copy, and only the
    broker knows the item was lent anew (PROTOCOL.md 6.5, 6.23)."""
    earliest = takeover_at(prev)
    if earliest is None:
        return
    if new.updated < earliest:
        raise refuse(
            f"a takeover {new.updated - prev.updated:.3f} s after the owner's last write: "
            f"before its lease ({prev.item_lease_s:g} s) ran out"
        )
    if not _dated(new, stored_at):
        raise refuse("a takeover dated after the broker stored it (or stored at an unknown time)")


def parties(record: TaskRecord) -> frozenset[str]:
    """The keys a record names: its requester, owner and author, its voters and its
    review slots' holders."""
    keys = {record.requester_key, record.owner_key, record.author_key}
    keys.update(v.key for v in (*record.votes, *record.feedback))
    keys.update(s.key for s in record.slots)
    return frozenset(k for k in keys if k is not None)


def check_alone(
    new: TaskRecord,
    signer: str,
    *,
    operators: frozenset[str] = frozenset(),
    bound: Bindings | None = None,
    stored_at: float | None = None,
) -> None:
    """A write over stored writes none of which was valid (every earlier write of the
    task is forged or unreadable, so the last valid revision is the open task's):
    legal as a first write is (:func:`check_write` with no previous revision), or as an
    end ``failed``/``error`` by a key the record names (a party's end of an unreadable
    record, :func:`stamp_unreadable_end`). :class:`Forged` if not.

    A reader that merely did not see the earlier writes does not use this: it reads
    them (the archive) and checks each against the one before (PROTOCOL.md 6.23)."""
    if new.state == "failed" and new.reason == "error" and (signer in parties(new) or signer in operators):
        _check_intrinsic(new, lambda why: Forged(why, signer=signer))
        return
    check_write(None, new, signer, operators=operators, bound=bound, stored_at=stored_at)


def _check_intrinsic(record: TaskRecord, refuse: _Refuse) -> None:
    """What a record must show whoever wrote it: no vote by its author's key, one vote
    a key a round, a result by its owner's key, and a review passed only by enough
    distinct non-author keys."""
    current = [v for v in record.votes if v.round == record.reworks]
    keys = [v.key for v in current if v.key is not None]
    if record.author_key is not None and record.author_key in keys:
        raise refuse("the author's key voted on its own result")
    if len(keys) != len(set(keys)):
        raise refuse("one key voted twice in a round (under several names)")
    if record.state in ("review", "done") and record.author_key is not None and record.author_key != record.owner_key:
        raise refuse("the result's author key is not the owner's")
    if record.state == "done" and record.review is not None and record.author_key is not None:
        approving = {v.key for v in current if v.verdict == "approve" and v.key is not None}
        if len(approving) < record.review.quorum:
            raise refuse(f"done with {len(approving)} signed approvals of {record.review.quorum}")
