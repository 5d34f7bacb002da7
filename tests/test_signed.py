"""Signed transitions, verified by every reader (issue 14 item 3, PROTOCOL.md 6.23): the
attacks the broker's permissions cannot stop, because they are writes a key may make to
a task record it may write, each attempted against a real nats-server run with
authorization and refused by verification; honest agents go on working through them.
Counted in docs/SECURITY.md.

The attacker is a raw nats-py connection with a key of its own (or, for a reviewer
voting on its own work, the author's key) writing exactly the record write the attack
needs: a record it built with the protocol's own functions, signed with its own key
(a forger cannot sign with another's), by compare-and-set on the current revision, as
any party's write is. The broker accepts it; what is tested is that nobody acts on it."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
import nats
import nkeys
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from mesh.bus import MeshError
from mesh.cli import render
from mesh.client import Mesh
from mesh.identity import inbox_prefix, load_seed, new_key
from mesh.testing import AgentProcs, Keys, gone_from_the_bucket, wait_for
from mesh.top import read_mesh, take_snapshot
from mesh.ui.board import Board
from mesh.ui.feed import follow_mesh
from protocol import (
    SIG_HEADER,
    Approve,
    Cancel,
    Claim,
    ErrorReport,
    Event,
    Finish,
    Forged,
    Names,
    SigningKey,
    TaskEvent,
    TaskRecord,
    apply,
    decode_record,
    digest,
    encode,
    event_id,
    sign,
    signing_key,
    stamp,
)

pytestmark = pytest.mark.auth

NAMES = Names()
STREAM = f"KV_{NAMES.tasks_bucket}"


class Forger:
    """A raw connection that writes signed task records with its own key."""

    def __init__(self, nc: Client, key: SigningKey) -> None:
        self.nc, self.key = nc, key
        self.js: JetStreamContext = nc.jetstream()

    async def current(self, task_id: str) -> tuple[TaskRecord, int, bytes, dict[str, str]]:
        subject = f"$KV.{NAMES.tasks_bucket}.{NAMES.task_key(task_id)}"
        msg = await self.js.get_last_msg(STREAM, subject, direct=True)
        return decode_record(msg.data), msg.seq or 0, msg.data, dict(msg.headers or {})

    async def put(
        self, task_id: str, data: bytes, revision: int, *, prev: str, headers: dict[str, str] | None = None
    ) -> int:
        """Write ``data`` over ``revision`` (signed by us over ``prev`` unless ``headers``)."""
        key = NAMES.task_key(task_id)
        signed = headers if headers is not None else sign(self.key, key, prev, data)
        ack = await self.js.publish(
            f"$KV.{NAMES.tasks_bucket}.{key}",
            data,
            headers={"Nats-Expected-Last-Subject-Sequence": str(revision), **signed},
        )
        return int(ack.seq)

    async def write(self, task_id: str, change: Callable[[TaskRecord], TaskRecord]) -> int:
        """Read the record, change it, sign it with our key and write it."""
        record, revision, data, _ = await self.current(task_id)
        forged = change(record)
        return await self.put(task_id, encode(forged), revision, prev=digest(data))

    async def apply(self, task_id: str, event: Event) -> int:
        """A transition the protocol's own rules compute, stamped and signed with our key."""

        def change(record: TaskRecord) -> TaskRecord:
            return stamp(record, apply(record, event, record.updated + 0.001), self.key.public_key)

        return await self.write(task_id, change)


@pytest.fixture
async def forger(keys: Keys) -> AsyncIterator[Callable[..., Awaitable[Forger]]]:
    connections: list[Client] = []

    async def connect(name: str = "mallory", role: str = "agent") -> Forger:
        seed = load_seed(keys.seed(name, role))
        nc = await nats.connect(
            keys.broker.url, nkeys_seed_str=seed.seed, inbox_prefix=inbox_prefix(name), allow_reconnect=False
        )
        connections.append(nc)
        return Forger(nc, signing_key(seed.seed))

    yield connect
    for nc in connections:
        await nc.close()


@pytest.fixture
async def reports(mesh_client: Mesh) -> AsyncIterator[list[ErrorReport]]:
    """Error reports published while the test runs (the operator reads every agent's)."""
    got: list[ErrorReport] = []

    async def on_msg(msg: Any) -> None:
        got.append(msgspec.json.decode(msg.data, type=ErrorReport))

    sub = await mesh_client.bus.nc.subscribe(f"{NAMES.prefix}.v2.err.>", cb=on_msg)
    yield got
    await sub.unsubscribe()


async def reported(reports: list[ErrorReport], signer: str, *what: str) -> None:
    """Some party reported a forged write by ``signer`` (naming each of ``what``)."""

    def found() -> bool:
        return any(signer in r.error and all(w in r.error for w in what) for r in reports)

    await wait_for(found, timeout=20, what=f"a report of {signer}'s forged write {what}: {reports}")


async def working_task(
    agent_procs: AgentProcs, mesh_client: Mesh, keys: Keys, *, seconds: float = 4.0, **kwargs: Any
) -> tuple[Mesh, TaskRecord]:
    """A client's task that the honest agent alice is working on (a sleep)."""
    agent_procs.start("alice", ["sleep"], kind="sleep", options={"steps": 8})
    await agent_procs.ready(mesh_client)
    carol = await keys.connect("carol", "client")
    task = await carol.submit("sleep", "sleep a while", data={"seconds": seconds}, **kwargs)
    await wait_for(lambda: _state_is(carol, task.id, "working"), timeout=20, what="alice to claim")
    return carol, task


async def _state_is(mesh: Mesh, task_id: str, state: str) -> bool:
    return (await mesh.get(task_id)).state == state


async def finishes_honestly(carol: Mesh, task: TaskRecord, owner: str = "alice") -> TaskRecord:
    with anyio.fail_after(60):
        final = await carol.wait(task.id)
    assert final.state == "done", final
    assert final.owner == owner and final.result != "forged", final
    return final


# --- the attacks ------------------------------------------------------------------------------


async def test_records_are_signed_and_chained(agent_procs: AgentProcs, mesh_client: Mesh, keys: Keys) -> None:
    """Every write carries its signer, the digest of what it replaced and a signature."""
    carol, task = await working_task(agent_procs, mesh_client, keys, seconds=0.5)
    forger = Forger(mesh_client.bus.nc, mesh_client.bus.trust.signer)  # type: ignore[arg-type]
    record, _, _, headers = await forger.current(task.id)
    alice = load_seed(keys.seed("alice")).public_key
    carol_key = load_seed(keys.seed("carol", "client")).public_key
    assert headers["Mesh-Signer"] == alice and record.owner_key == alice
    assert "Mesh-Prev" in headers and len(headers[SIG_HEADER]) == 86
    assert record.requester_key == carol_key
    final = await finishes_honestly(carol, task)
    assert final.author_key == alice
    await carol.close()


async def test_a_forged_done_on_a_task_not_owned_is_refused(
    agent_procs: AgentProcs, mesh_client: Mesh, keys: Keys, forger: Any, reports: list[ErrorReport]
) -> None:
    carol, task = await working_task(agent_procs, mesh_client, keys)
    mallory = await forger()
    record, *_ = await mallory.current(task.id)
    # As the owner (its name, its epoch), with mallory's own key: not the owner's key.
    await mallory.apply(task.id, Finish(actor="alice", epoch=record.epoch, result="forged"))
    await reported(reports, mallory.key.public_key, "owner")
    # And claiming the owner's key for itself without a claim.
    await mallory.write(
        task.id,
        lambda r: msgspec.structs.replace(
            r, state="done", result="forged", author="mallory", author_key=mallory.key.public_key
        ),
    )
    await reported(reports, mallory.key.public_key, "author")
    await finishes_honestly(carol, task)
    await carol.close()


async def test_a_write_naming_a_revision_nobody_wrote_is_checked_against_the_writes_between(
    agent_procs: AgentProcs, mesh_client: Mesh, keys: Keys, forger: Any, reports: list[ErrorReport]
) -> None:
    """A write's ``Mesh-Prev`` is its writer's word. One naming a revision nobody wrote
    looks to every reader like a write after some it missed; checked on what the record
    alone shows, a claim and a result recording the forger's own key passed, for any
    task (attack 35). Every reader now checks it against the writes before it, as the
    archive holds them: a party that followed the task, and one that never saw it."""
    carol, task = await working_task(agent_procs, mesh_client, keys)
    mallory = await forger()
    me = mallory.key.public_key
    record, revision, _, _ = await mallory.current(task.id)
    # (the state machine refuses a takeover without the owner's item: the forger writes what it likes)
    claimed = msgspec.structs.replace(
        record, owner="mallory", owner_key=me, epoch=record.epoch + 1, attempts=record.attempts + 1, ticket=999_999
    )
    done = stamp(
        claimed,
        apply(claimed, Finish(actor="mallory", epoch=claimed.epoch, result="forged"), record.updated + 0.002),
        me,
    )
    data = encode(done)
    headers = sign(mallory.key, NAMES.task_key(task.id), "a-revision-nobody-wrote", data)
    forged_at = await mallory.put(task.id, data, revision, prev="", headers=headers)
    await reported(reports, me, "written over no revision")
    olive = await keys.connect("olive", "operator")
    try:
        with pytest.raises(Forged, match="written over no revision"):  # a reader that never saw the task
            await olive.bus.verified(task.id, forged_at, data, headers)
    finally:
        await olive.close()
    await finishes_honestly(carol, task)
    await carol.close()


async def test_a_non_requester_cannot_cancel(
    agent_procs: AgentProcs, mesh_client: Mesh, keys: Keys, forger: Any, reports: list[ErrorReport]
) -> None:
    carol, task = await working_task(agent_procs, mesh_client, keys)
    mallory = await forger("mallory-client", "client")
    await mallory.apply(task.id, Cancel(actor="carol", note="cancelled by carol (not really)"))
    await reported(reports, mallory.key.public_key, "requester")
    await finishes_honestly(carol, task)
    await carol.close()


async def test_an_epoch_jump_and_an_illegal_takeover_are_refused(
    agent_procs: AgentProcs, mesh_client: Mesh, keys: Keys, forger: Any, reports: list[ErrorReport]
) -> None:
    carol, task = await working_task(agent_procs, mesh_client, keys)
    mallory = await forger()
    me = mallory.key.public_key

    def jump(r: TaskRecord) -> TaskRecord:
        return msgspec.structs.replace(r, owner="mallory", owner_key=me, epoch=r.epoch + 5, attempts=r.attempts + 1)

    await mallory.write(task.id, jump)
    await reported(reports, me, "epoch jumped")

    # Validly signed, one epoch on, recording its own key: a takeover without the
    # owner's work item, which the transition table refuses.
    def takeover(r: TaskRecord) -> TaskRecord:
        return msgspec.structs.replace(
            r, owner="mallory", owner_key=me, epoch=r.epoch + 1, attempts=r.attempts + 1, ticket=999_999
        )

    await mallory.write(task.id, takeover)
    await reported(reports, me, "takeover")
    await finishes_honestly(carol, task)
    await carol.close()


async def test_a_takeover_with_the_owners_ticket_counts_only_after_its_lease(
    agent_procs: AgentProcs, mesh_client: Mesh, keys: Keys, forger: Any, reports: list[ErrorReport]
) -> None:
    """The owner's ticket is in the record for anyone to copy: with it, any key bound to
    the task's capability could take over a task being worked and finish it with its own
    result (attack 37). A takeover counts only once the owner left the record unwritten
    for a whole lease (an owner at work writes every third of one), dated no later than
    the broker stored it: copying the ticket early is refused, and so is dating the
    takeover in the future."""
    carol, task = await working_task(agent_procs, mesh_client, keys, seconds=6.0)
    mallory = await forger()
    me = mallory.key.public_key
    record, *_ = await mallory.current(task.id)
    assert record.ticket is not None and record.item_lease_s is not None, record

    def takeover(at: float) -> Callable[[TaskRecord], TaskRecord]:
        def change(r: TaskRecord) -> TaskRecord:
            claimed = stamp(r, apply(r, Claim(actor="mallory", ticket=r.ticket, item_lease_s=r.item_lease_s), at), me)
            return stamp(claimed, apply(claimed, Finish(actor="mallory", epoch=claimed.epoch, result="forged"), at), me)

        return change

    await mallory.write(task.id, takeover(time.time()))
    await reported(reports, me, "before its lease")

    async def alices_again() -> bool:  # restored by a party, or written over by alice
        r, *_ = await mallory.current(task.id)
        return r.owner == "alice" and r.state == "working"

    await wait_for(alices_again, timeout=20, what="the forged takeover to be written over")
    current, *_ = await mallory.current(task.id)
    assert current.item_lease_s is not None
    await mallory.write(task.id, takeover(current.updated + current.item_lease_s + 0.5))
    await reported(reports, me, "dated after the broker stored it")
    await finishes_honestly(carol, task)
    await carol.close()


async def test_a_replayed_old_revision_is_refused(
    agent_procs: AgentProcs, mesh_client: Mesh, keys: Keys, forger: Any, reports: list[ErrorReport]
) -> None:
    carol, task = await working_task(agent_procs, mesh_client, keys, seconds=6.0)
    mallory = await forger()
    _, first, data, headers = await mallory.current(task.id)  # alice's claim, exactly as signed

    async def moved_on() -> bool:
        return (await mallory.current(task.id))[1] > first

    await wait_for(moved_on, timeout=20, what="alice to write progress")
    _, revision, _, _ = await mallory.current(task.id)
    signed = {k: v for k, v in headers.items() if k.startswith("Mesh-")}
    await mallory.put(task.id, data, revision, prev="", headers=signed)
    await reported(reports, headers["Mesh-Signer"], "replay")
    await finishes_honestly(carol, task)
    await carol.close()


async def test_truncated_or_garbled_signatures_are_refused(
    agent_procs: AgentProcs, mesh_client: Mesh, keys: Keys, forger: Any, reports: list[ErrorReport]
) -> None:
    """Fuzzed: the owner's own next write, its signature truncated, cut, flipped or
    replaced by noise; or its bytes changed under a good signature."""
    carol, task = await working_task(agent_procs, mesh_client, keys, seconds=6.0)
    mallory = await forger()
    rng = random.Random(14)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/ "
    for attempt in range(12):
        record, revision, data, _ = await mallory.current(task.id)
        forged = encode(msgspec.structs.replace(record, progress=f"forged {attempt}"))
        good = sign(mallory.key, NAMES.task_key(task.id), digest(data), forged)
        sig = good[SIG_HEADER]
        garbled = [
            sig[: rng.randrange(len(sig))],
            sig[::-1],
            "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 120))),
            sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:],
            "",
        ][attempt % 5]
        tampered = {**good, SIG_HEADER: garbled}
        if attempt % 6 == 5:  # a good signature over other bytes
            tampered = good
            forged = forged.replace(b"forged", b"FORGED")
        try:
            await mallory.put(task.id, forged, revision, prev="", headers=tampered)
        except nats.js.errors.BadRequestError:
            continue  # lost a race with alice's own write: try again on the new revision
    await reported(reports, mallory.key.public_key)
    # A write with no signature at all (a peer without keys, or one that strips them).
    for _ in range(20):  # alice's own writes (a renewal, a restore) may come between
        record, revision, _, _ = await mallory.current(task.id)
        try:
            await mallory.put(
                task.id, encode(msgspec.structs.replace(record, progress="unsigned")), revision, prev="", headers={}
            )
            break
        except nats.js.errors.BadRequestError:
            continue
    else:
        raise AssertionError("the unsigned write lost every race with the owner's writes")
    await reported(reports, "nobody", "unsigned write")
    await finishes_honestly(carol, task)
    await carol.close()


async def test_a_reviewer_cannot_vote_on_its_own_work_nor_one_key_twice(
    agent_procs: AgentProcs, mesh_client: Mesh, keys: Keys, forger: Any, reports: list[ErrorReport]
) -> None:
    agent_procs.start("alice", ["echo"], kind="echo")
    await agent_procs.ready(mesh_client)
    carol = await keys.connect("carol", "client")
    task = await carol.submit("echo", "hello", review=2, claim_timeout_s=60)
    await wait_for(lambda: _state_is(carol, task.id, "review"), timeout=20, what="alice's result in review")
    # The author, under another name, with its own key.
    author = await forger("alice")
    record, *_ = await author.current(task.id)
    await author.apply(task.id, Approve(actor="someone-else", epoch=record.epoch))
    # The requester reads it (as its wait would): refused, reported, and its own valid
    # copy written back over it.
    seen = await carol.get(task.id)
    assert seen.state == "review" and seen.votes == (), seen
    await reported(reports, author.key.public_key, "author")
    # One identity, two names: the first vote is a vote like any agent's; the second is not.
    mallory = await forger()
    record, *_ = await mallory.current(task.id)
    await mallory.apply(task.id, Approve(actor="rev-x", epoch=record.epoch))
    record = await carol.get(task.id)  # a vote like any agent's (carol's wait follows every write)
    assert [v.reviewer for v in record.votes] == ["rev-x"]
    await mallory.apply(task.id, Approve(actor="rev-y", epoch=record.epoch))
    seen = await carol.get(task.id)
    assert seen.state == "review" and [v.reviewer for v in seen.votes] == ["rev-x"], seen
    await reported(reports, mallory.key.public_key, "voted")
    agent_procs.start("rev1", ["review"], kind="check")
    with anyio.fail_after(60):
        final = await carol.wait(task.id)
    assert final.state == "done", final
    assert {v.reviewer for v in final.votes} == {"rev-x", "rev1"}, final.votes
    assert len({v.key for v in final.votes}) == 2
    await carol.close()


async def test_a_claim_or_a_vote_counts_only_from_a_key_bound_to_its_capability(
    agent_procs: AgentProcs, mesh_client: Mesh, keys: Keys, forger: Any, reports: list[ErrorReport]
) -> None:
    """The broker hands a bound key no other queue's items, but any key that writes
    tasks could claim a waiting task outright, or vote on a review, with its own key
    (attack 36). A reader holds each write to the bindings of the keys it knows (the
    `.pub` files beside its seed): a key bound to `translate` neither claims an `echo`
    task nor reviews one."""
    new_key(keys.directory, "mallory-bound", "agent", serves=["translate"])
    keys.broker.reload()
    mallory = await forger("mallory-bound")
    me = mallory.key.public_key
    carol = await keys.connect("carol", "client")
    try:
        # A waiting task (nobody serves echo yet), claimed and finished in its first write:
        # never taken as done. Its requester holds no valid write of it, so it ends the task
        # as an unreadable one (a forger can end a waiting task, never pass off a result).
        waiting = await carol.submit("echo", "never done by mallory", claim_timeout_s=60)
        claimed = stamp(waiting, apply(waiting, Claim(actor="mallory-bound", ticket=None), waiting.updated + 1), me)
        done = stamp(
            claimed, apply(claimed, Finish(actor="mallory-bound", epoch=1, result="forged"), waiting.updated + 2), me
        )
        await mallory.put(waiting.id, encode(done), 0, prev="")
        with anyio.fail_after(30):
            ended = await carol.wait(waiting.id)
        assert (ended.state, ended.reason) == ("failed", "error") and ended.result != "forged", ended
        await reported(reports, me, "a claim of echo by a key not bound to it")
        # A review: mallory's approval is not counted.
        agent_procs.start("alice", ["echo"], kind="echo")
        await agent_procs.ready(mesh_client)
        task = await carol.submit("echo", "the real result", review=1, claim_timeout_s=60)
        await wait_for(lambda: _state_is(carol, task.id, "review"), timeout=30, what="alice's result in review")
        record, *_ = await mallory.current(task.id)
        await mallory.apply(task.id, Approve(actor="mallory-bound", epoch=record.epoch))
        seen = await carol.get(task.id)  # as its wait would read it
        assert seen.state == "review" and seen.votes == (), seen
        await reported(reports, me, "a review (review) by a key not bound to it")
        agent_procs.start("rev1", ["review"], kind="check")
        with anyio.fail_after(60):
            final = await carol.wait(task.id)
        assert (final.state, final.result, final.owner) == ("done", "the real result", "alice"), final
        assert [v.reviewer for v in final.votes] == ["rev1"], final.votes
    finally:
        await carol.close()


async def test_readers_show_a_forged_write_as_forged(
    agent_procs: AgentProcs, mesh_client: Mesh, keys: Keys, forger: Any, reports: list[ErrorReport]
) -> None:
    """`mesh trace` lists the forged writes the task's parties refused; `mesh top` and
    `mesh ui` verify what they read, list a forgery as forged, and never show it as the
    task's state."""
    carol, task = await working_task(agent_procs, mesh_client, keys, seconds=1.0)
    mallory = await forger()
    record, *_ = await mallory.current(task.id)
    await mallory.apply(task.id, Finish(actor="alice", epoch=record.epoch, result="forged"))
    await reported(reports, mallory.key.public_key, "owner")
    await finishes_honestly(carol, task)

    # The trace names the refused write, its revision and its signer.
    tree = await mesh_client.tree(task.id)
    refused = await mesh_client.reports([task.id])
    assert any(mallory.key.public_key in r.error and r.key == NAMES.task_key(task.id) for r in refused), refused
    shown = render.trace(tree, await mesh_client.history(task.root), refused)
    assert "FORGED reported by alice" in shown and mallory.key.public_key in shown, shown

    # A forgery over the finished record: no party follows the task any more, so it
    # stays in the bucket; readers verify and list it, and show no task in its place.
    await mallory.write(
        task.id, lambda r: msgspec.structs.replace(r, state="cancelled", reason="cancelled", error="forged")
    )
    viewer = await keys.connect("olive", "operator")
    reading = await read_mesh(viewer)
    key = NAMES.task_key(task.id)
    assert [f for f in reading.forged if f.startswith(f"{key} revision ")], reading.forged
    assert mallory.key.public_key in reading.forged[0]
    assert task.id not in {t.id for t in reading.tasks}
    snap = await take_snapshot(viewer)
    assert snap.to_json()["flags"]["forged"] == reading.forged
    assert "FORGED (not shown; its parties report it" in render.top_view(snap)

    # The web view's board: the first read lists it, and so does a forged write as it happens.
    board = Board()
    async with anyio.create_task_group() as tg:
        await tg.start(follow_mesh, viewer, board)
        assert any(f.startswith(f"{key} revision ") for f in board.forged), board.forged
        before = len(board.forged)
        await mallory.write(task.id, lambda r: msgspec.structs.replace(r, error="forged again"))
        await wait_for(lambda: len(board.forged) > before, timeout=10, what="the view to list the new forgery")
        assert board.summary()["forged"][-1].startswith(f"{key} revision ")
        assert board.record(task.id) is None
        tg.cancel_scope.cancel()
    await viewer.close()
    await carol.close()


async def test_a_requesters_cancel_reaches_the_grandchildren_through_their_requesters(
    agent_procs: AgentProcs, mesh_client: Mesh, keys: Keys, forger: Any, reports: list[ErrorReport]
) -> None:
    """A client may cancel only its own tasks: the children belong to the agents that
    made them, which cancel them when they see their own task cancelled. Nobody's
    honest cancel is refused as a forgery; a stranger's cancel is refused before it is
    written, with a one-line reason."""
    agent_procs.start("boss", ["relay"], kind="relay", delegates=["sleep"])
    agent_procs.start("alice", ["sleep"], kind="sleep", options={"steps": 60})
    await agent_procs.ready(mesh_client)
    carol = await keys.connect("carol", "client")
    task = await carol.submit("relay", "hand it on", data={"seconds": 60})

    async def child_working() -> bool:
        record = await carol.get(task.id)
        return bool(record.children) and (await carol.get(record.children[0], root=task.root)).state == "working"

    await wait_for(child_working, timeout=20, what="alice to work on boss's child task")
    stranger = await keys.connect("dave", "client")
    with pytest.raises(MeshError, match="only its requester \\(carol\\) or an operator may cancel it"):
        await stranger.cancel(task.id)
    assert (await carol.get(task.id)).state == "working"

    root = await carol.cancel(task.id)
    assert root.state == "cancelled"
    child_id = root.children[0]

    async def child_cancelled() -> bool:
        return (await carol.get(child_id, root=task.root)).state == "cancelled"

    await wait_for(child_cancelled, timeout=20, what="boss to cancel the child it made")
    child = await carol.get(child_id, root=task.root)
    assert child.error == f"parent {task.id} cancelled", child
    # Nobody reported a forgery: every cancel was its writer's to make.
    assert not [r for r in reports if "forged" in r.error], reports
    await stranger.close()
    await carol.close()


async def test_a_squatted_message_id_does_not_drop_the_real_message(
    agent_procs: AgentProcs, mesh_client: Mesh, keys: Keys, forger: Any
) -> None:
    """A party publishes under the ids of writes still to come (the next revisions'
    `finish` events, whatever their record): the real event is still stored, since an
    id names the record it announces, which nobody knows before it is written."""
    carol, task = await working_task(agent_procs, mesh_client, keys, seconds=1.0)
    mallory = await forger()
    record, revision, *_ = await mallory.current(task.id)
    subject = NAMES.event_subject(record.root, record.id, "finish")
    for ahead in range(1, 25):
        for guess in (f"{task.id}:{revision + ahead}:finish", event_id("finish", record, revision + ahead)):
            await mallory.js.publish(subject, b"squatted", headers={"Nats-Msg-Id": guess})
    await finishes_honestly(carol, task)
    events = [e for e in await mesh_client.history(task.root) if e.task == task.id]
    assert [e.state for e in events if e.kind == "finish"] == ["done"], events
    await carol.close()


async def test_a_finished_task_is_read_from_the_archive_not_from_a_forged_event(
    agent_procs: AgentProcs, mesh_client: Mesh, keys: Keys, forger: Any, tmp_path: Path
) -> None:
    """Once a finished record has left the bucket, its reader takes the last write of
    the broker's archive that verifies, never a terminal event (events are unsigned,
    and anyone who writes tasks may publish one): attack 22's worst case."""
    agent_procs.start("alice", ["echo"], kind="echo", env={"MESH_FINISHED_TTL": "1s"})
    await agent_procs.ready(mesh_client)
    carol = await keys.connect("carol", "client")
    try:
        task = await carol.submit("echo", "the real result")
        with anyio.fail_after(30):
            final = await carol.wait(task.id)
        assert final.state == "done" and final.result == "the real result"

        await wait_for(
            lambda: gone_from_the_bucket(mesh_client, task.id),
            timeout=20,
            what="the finished record to leave the bucket",
        )
        mallory = await forger()
        forged = msgspec.structs.replace(final, result="forged", owner="mallory", author="mallory")
        event = TaskEvent(
            kind="finish",
            task=task.id,
            root=task.root,
            capability="echo",
            actor="mallory",
            epoch=final.epoch,
            state="done",
            at=final.updated + 1,
            record=forged,
        )
        await mallory.js.publish(
            NAMES.event_subject(task.root, task.id, "finish"), encode(event), headers={"Nats-Msg-Id": "forged-1"}
        )
        assert (await mesh_client.bus._archived_event(task.id, task.root)).result == "forged"  # type: ignore[union-attr]
        # The trace still lists the forged event (events are unsigned), marked as one no
        # verified write backs; the real ones are not.
        events = await mesh_client.history(task.root)
        unbacked = await mesh_client.unbacked(events)
        assert unbacked == {(task.id, event.at, "finish")}, (unbacked, events)
        shown = render.trace(await mesh_client.tree(task.id), events, (), unbacked)
        marked = [line for line in shown.splitlines() if "UNBACKED" in line]
        assert len(marked) == 1 and "by mallory" in marked[0], shown
        # Event followers check every event against the verified writes: `mesh watch`
        # marks the forged one, and the OTel exporter leaves it out (Mesh.backing: a
        # stored event's write is looked up in the archive).
        real_end = next(e for e in events if e.task == task.id and e.state == "done" and e.actor == "alice")
        async with mesh_client.backing() as backing:
            assert not await backing.backed(event) and await backing.backed(real_end)
            assert backing.looked_up == 1  # one archive walk for the task's two events
        out = tmp_path / "watch.out"
        watcher = _watch(task.root, keys.broker.url, keys.seed("carol", "client"), out)
        try:
            await wait_for(lambda: "by mallory" in out.read_text(), timeout=30, what="mesh watch to print the events")
        finally:
            watcher.terminate()
            watcher.wait(10)
        lines = out.read_text().splitlines()
        assert [line for line in lines if "UNBACKED" in line] == [line for line in lines if "by mallory" in line], lines
        assert any("-> done" in line and "by alice" in line for line in lines), lines
        olive = await keys.connect("olive", "client")
        for reader in (carol, olive):  # one that followed it, and a fresh one
            got = await reader.get(task.id)
            assert (got.state, got.result, got.owner) == ("done", "the real result", "alice"), got
        await olive.close()

        # The key made anew: a first write claiming and finishing the task as mallory's
        # own, which a reader without the earlier writes would check alone.
        claimed = stamp(task, apply(task, Claim(actor="mallory", ticket=1), task.updated + 1), mallory.key.public_key)
        remade = stamp(
            claimed,
            apply(claimed, Finish(actor="mallory", epoch=1, result="forged"), task.updated + 2),
            mallory.key.public_key,
        )
        await mallory.put(task.id, encode(remade), 0, prev="")
        peter = await keys.connect("peter", "client")
        for reader in (carol, peter, mesh_client):
            got = await reader.get(task.id)
            assert (got.state, got.result, got.owner) == ("done", "the real result", "alice"), got
        await peter.close()
        assert (await mesh_client.get(task.id)).result == "the real result"
    finally:
        await carol.close()


def _forged_event(of: TaskRecord, kind: str, state: str, epoch: int, **more: Any) -> TaskEvent:
    """An event of task ``of`` by mallory, which no write of hers backs."""
    return TaskEvent(
        kind=kind,
        task=of.id,
        root=of.root,
        capability=of.capability,
        actor="mallory",
        epoch=epoch,
        state=state,  # type: ignore[arg-type]
        at=time.time(),
        **more,
    )


async def test_event_followers_leave_out_every_event_no_verified_write_shows(
    agent_procs: AgentProcs, mesh_client: Mesh, keys: Keys, forger: Any, tmp_path: Path
) -> None:
    """Events are unsigned (attack 22): forged ones published while a task is worked (a
    takeover, an end carrying a forged record) would become the task's span, with the
    forger as its owner, and lines of `mesh watch` like any other. The exporter and
    `mesh watch` check every event against the verified writes, as the broker
    republishes them: the exporter leaves the forged ones out, `mesh watch` marks them,
    and the real ones make the task's one span."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from mesh.otel import export_task_spans, task_span_sink

    carol, task = await working_task(agent_procs, mesh_client, keys)
    mallory = await forger()
    record, *_ = await mallory.current(task.id)

    async def publish(event: TaskEvent, msg_id: str) -> None:
        subject = NAMES.event_subject(task.root, task.id, event.kind)
        await mallory.js.publish(subject, encode(event), headers={"Nats-Msg-Id": msg_id})

    # One before the followers start (they find it in the stream: the archive decides)...
    forged = msgspec.structs.replace(record, state="done", result="forged", owner="mallory", author="mallory")
    await publish(_forged_event(record, "finish", "done", record.epoch, record=forged), "forged-end")
    memory = InMemorySpanExporter()
    sink = task_span_sink(memory)
    out = tmp_path / "watch.out"
    watcher = _watch(task.root, keys.broker.url, keys.seed("carol", "client"), out)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: export_task_spans(mesh_client, sink, history=True))
            await wait_for(lambda: "by alice" in out.read_text(), timeout=30, what="mesh watch to print the claim")
            # ...and one while they follow (the republished writes decide).
            await publish(_forged_event(record, "claim", "working", record.epoch + 1), "forged-claim")
            await finishes_honestly(carol, task)
            await wait_for(lambda: memory.get_finished_spans(), timeout=30, what="the task's span")
            await wait_for(lambda: "-> done" in out.read_text(), timeout=30, what="mesh watch to print the end")
            tg.cancel_scope.cancel()
    finally:
        watcher.terminate()
        watcher.wait(10)
    sink.close()
    spans = [s for s in memory.get_finished_spans() if (s.attributes or {}).get("mesh.task.id") == task.id]
    assert [(s.attributes or {}).get("mesh.task.owner") for s in spans] == ["alice"], spans
    actors = {(e.attributes or {}).get("mesh.actor") for e in spans[0].events}
    assert "alice" in actors and "mallory" not in actors, spans[0].events
    lines = out.read_text().splitlines()
    forged_lines = [line for line in lines if "by mallory" in line]
    assert len(forged_lines) == 2, lines
    assert [line for line in lines if "UNBACKED" in line] == forged_lines, lines
    await carol.close()


async def test_live_top_follows_the_writes_and_stops_cleanly(
    agent_procs: AgentProcs, mesh_client: Mesh, keys: Keys, tmp_path: Path
) -> None:
    """`mesh top` refreshing (not --once) verifies the writes as they come between its
    refreshes (Mesh.backing) and shows the task as its verified writes have it; Ctrl-C
    stops the follower and the loop without a traceback."""
    carol, task = await working_task(agent_procs, mesh_client, keys, seconds=2.0)
    out, err = tmp_path / "top.out", tmp_path / "top.err"
    top = _top(keys.broker.url, keys.seed("carol", "client"), out, err)
    try:
        await wait_for(lambda: out.read_text().count("mesh top ") >= 2, timeout=30, what="two views of mesh top")
        assert task.id in out.read_text(), out.read_text()
        await finishes_honestly(carol, task)
        views = out.read_text().count("mesh top ")
        await wait_for(lambda: out.read_text().count("mesh top ") > views, timeout=30, what="a view after the end")
    finally:
        top.send_signal(signal.SIGINT)
        code = top.wait(20)
    assert code in (0, 130), (code, err.read_text())
    assert "Traceback" not in err.read_text(), err.read_text()
    assert "forged" not in out.read_text().lower(), out.read_text()
    await carol.close()


def _top(server: str, seed: Path, out: Path, err: Path) -> subprocess.Popen[bytes]:
    """`mesh top` refreshing every 0.2 s, as the key ``seed``."""
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "mesh", "top", "--interval", "0.2", "--server", server],
            stdout=stdout,
            stderr=stderr,
            env={**os.environ, "MESH_NKEY": str(seed)},
        )


def _watch(root: str, server: str, seed: Path, out: Path) -> subprocess.Popen[bytes]:
    """`mesh watch` of one task tree's stored and live events, as the key ``seed``."""
    with open(out, "wb") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "mesh", "watch", "--history", "--root", root, "--server", server],
            stdout=f,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "MESH_NKEY": str(seed)},
        )


async def test_an_archive_that_is_not_the_brokers_copy_is_not_read(broker: Any, keys: Keys, forger: Any) -> None:
    """Any party may create the mesh's streams: one that makes the archive first, fed
    from a subject of its own, is found out and not read."""
    mallory = await forger()
    stream = NAMES.archive_stream
    config = {"name": stream, "subjects": [NAMES.control_subject("mallory")], "retention": "limits"}
    reply = await mallory.nc.request(f"$JS.API.STREAM.CREATE.{stream}", msgspec.json.encode(config), timeout=5)
    assert b'"error"' not in reply.data, reply.data
    carol = await keys.connect("carol", "client")
    try:
        assert await carol.bus._archive_is_sound() is False
        with pytest.raises(MeshError, match=r"no such task|not live"):
            await carol.get("0123456789abcdef")
    finally:
        await carol.close()


def test_a_view_verifies_each_live_record_once_however_many() -> None:
    """`mesh top` and `mesh ui` reread every live record; past the chain's capacity a
    party forgets the oldest, but a view (``remember_all``) verifies each write once."""
    from mesh.trust import CHAIN_CAPACITY, Trust
    from protocol import new_task

    key = signing_key(nkeys.encode_seed(bytes([3]) * 32, nkeys.PREFIX_BYTE_USER))
    writes = []
    for n in range(CHAIN_CAPACITY + 100):
        task_id = f"{n:016x}"
        record = stamp(
            None, new_task(task_id=task_id, capability="echo", instruction="x", requester="c", now=1.0), key.public_key
        )
        claimed = stamp(record, apply(record, Claim(actor="a", ticket=1), 2.0), key.public_key)
        value = encode(claimed)
        writes.append((task_id, NAMES.task_key(task_id), value, sign(key, NAMES.task_key(task_id), "", value)))

    def read_all(trust: Trust) -> int:
        before = trust.verified
        for task_id, key_name, value, headers in writes:
            trust.admit(task_id, key_name, 1, value, headers)
        return trust.verified - before

    party, view = Trust(key), Trust(key)
    view.remember_all()
    assert read_all(party) == read_all(view) == len(writes)
    assert read_all(party) == len(writes)  # forgot the oldest, each time: verifies them all again
    assert read_all(view) == 0
