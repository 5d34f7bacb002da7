"""The reader's side of signed writes without a broker (mesh/trust.py): a write is
checked against the revision it replaced, never on what its record alone shows."""

from __future__ import annotations

from pathlib import Path

import msgspec
import nkeys
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.identity import load_seed, new_key
from mesh.trust import Gap, Trust, load_trust
from protocol import (
    Claim,
    Finish,
    Forged,
    RemoteProtocolError,
    Renew,
    SigningKey,
    TaskRecord,
    apply,
    digest,
    encode,
    end_unreadable,
    new_task,
    sign,
    signing_key,
    stamp,
    stamp_unreadable_end,
)

KEY = "task.T1"


def _key(n: int) -> SigningKey:
    return signing_key(nkeys.encode_seed(bytes([n]) * 32, nkeys.PREFIX_BYTE_USER))


REQUESTER, OWNER, FORGER = _key(11), _key(12), _key(13)


def _history(steps: int) -> list[tuple[bytes, dict[str, str]]]:
    """A task's writes as the broker stores them: a claim, then ``steps`` renewals and a
    result, each signed by its owner over the one before."""
    opened = stamp(
        None, new_task(task_id="T1", capability="echo", instruction="x", requester="c", now=1.0), REQUESTER.public_key
    )
    records = [stamp(opened, apply(opened, Claim(actor="a", ticket=7), 2.0), OWNER.public_key)]
    for n in range(steps + 1):
        event = (
            Renew(actor="a", epoch=1, progress=f"step {n}") if n < steps else Finish(actor="a", epoch=1, result="ok")
        )
        records.append(stamp(records[-1], apply(records[-1], event, 3.0 + n), OWNER.public_key))
    writes, prev = [], ""
    for record in records:
        value = encode(record)
        writes.append((value, sign(OWNER, KEY, prev, value)))
        prev = digest(value)
    return writes


def _forged_done(over: TaskRecord) -> bytes:
    """The forger's claim of a task being worked, with its own key, and its result."""
    claimed = msgspec.structs.replace(
        over, owner="m", owner_key=FORGER.public_key, epoch=over.epoch + 1, attempts=over.attempts + 1, ticket=99
    )
    done = apply(claimed, Finish(actor="m", epoch=claimed.epoch, result="forged"), over.updated + 1)
    return encode(stamp(claimed, done, FORGER.public_key))


def test_a_write_that_does_not_follow_the_last_revision_read_needs_the_writes_between() -> None:
    """Read live: a write over a revision this reader did not see (or naming one nobody
    wrote) is a Gap, not something to judge on the record it carries."""
    writes = _history(2)
    reader = Trust(REQUESTER)
    first = reader.admit("T1", KEY, 1, *writes[0])
    forged = _forged_done(first)
    with pytest.raises(Gap):
        reader.admit("T1", KEY, 5, forged, sign(FORGER, KEY, "nobody-wrote-this", forged))
    with pytest.raises(Gap):  # a reader that never saw the task
        Trust(REQUESTER).admit("T1", KEY, 5, forged, sign(FORGER, KEY, digest(writes[1][0]), forged))


@given(st.integers(min_value=0, max_value=4), st.data())
def test_a_replay_of_the_whole_history_takes_the_honest_writes_and_no_forged_one(
    steps: int, data: st.DataObject
) -> None:
    """Replayed in the broker's order, as the archive holds them: every honest write
    is taken; a forged write, over whatever it names, is refused; and the honest write
    after it (over the forged one, by compare-and-set) is checked against the last
    valid revision and taken."""
    writes = _history(steps)
    at = data.draw(st.integers(min_value=1, max_value=len(writes) - 1), label="forged before write")
    names = data.draw(st.sampled_from(["before", "nothing", "earlier"]), label="forged write names")
    valid = [msgspec.json.decode(v, type=TaskRecord) for v, _ in writes]
    forged = _forged_done(valid[at - 1])
    prev = {"before": digest(writes[at - 1][0]), "nothing": "x", "earlier": digest(writes[0][0])}[names]
    stored = [*writes[:at], (forged, sign(FORGER, KEY, prev, forged)), *writes[at:]]
    reader, replaced, taken = Trust(REQUESTER), "", []
    for revision, (value, headers) in enumerate(stored, start=1):
        try:
            taken.append(reader.admit("T1", KEY, revision, value, headers, replaced=replaced))
        except Forged as exc:
            assert value == forged, exc
        replaced = digest(value)
    assert taken == valid
    assert reader.last("T1").record.result == "ok"  # type: ignore[union-attr]


def test_a_partys_end_over_an_unreadable_first_write_is_taken_in_a_replay() -> None:
    """Every write before it unreadable: the end a party writes from its own copy (named
    as its owner, PROTOCOL.md 6.15) is the task's first valid write."""
    opened = new_task(task_id="T1", capability="echo", instruction="x", requester="c", now=1.0)
    garbage = b'{"v":2,"id":"T1","state":"working","epoch":-3}'
    ended = stamp_unreadable_end(opened, end_unreadable(opened, why="unreadable", now=2.0), "a", OWNER.public_key)
    value = encode(ended)
    reader = Trust(REQUESTER)
    with pytest.raises(RemoteProtocolError):
        reader.admit("T1", KEY, 1, garbage, sign(FORGER, KEY, "", garbage), replaced="")
    record = reader.admit("T1", KEY, 2, value, sign(OWNER, KEY, digest(garbage), value), replaced=digest(garbage))
    assert (record.state, record.reason, record.owner_key) == ("failed", "error", OWNER.public_key)


def test_a_key_added_since_start_is_held_to_its_binding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bindings are read from the `.pub` files beside the seed at start, and again when a
    key none of them names signs (at most every few seconds: here at once): a key added
    later, bound elsewhere, claims nothing."""
    monkeypatch.setattr("mesh.trust.KEYS_REREAD_S", 0.0)
    keys = tmp_path / "keys"
    new_key(keys, "carol", "client")
    reader = load_trust(keys / "carol.nk")
    opened = stamp(
        None, new_task(task_id="T1", capability="echo", instruction="x", requester="c", now=1.0), REQUESTER.public_key
    )
    new_key(keys, "late", "agent", serves=["translate"])
    late = signing_key(load_seed(keys / "late.nk").seed)
    claimed = encode(stamp(opened, apply(opened, Claim(actor="late", ticket=7), 2.0), late.public_key))
    with pytest.raises(Forged, match="a claim of echo by a key not bound to it"):
        reader.admit("T1", KEY, 1, claimed, sign(late, KEY, "", claimed))
