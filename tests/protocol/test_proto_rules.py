"""The rules besides the state machine: longest-prefix routing and pull priorities, the
work items a write publishes, what an agent does with a delivered item, what a waiting
party decides, delegation (hops, deadline, budget, loops) and clarification."""

from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from proto_strategies import capabilities, records, short_capabilities

from protocol import (
    DEFAULT_HOPS,
    MAX_PRIORITY,
    TERMINAL_STATES,
    AgentCard,
    Approve,
    Budget,
    Charge,
    Claim,
    Drop,
    Expire,
    Finish,
    HandBack,
    InvalidName,
    LocalProtocolError,
    Release,
    Renew,
    Reviewing,
    ReviewPolicy,
    Take,
    TaskRecord,
    TransitionError,
    Usage,
    Veto,
    WorkItem,
    a2a_card,
    apply,
    ask,
    best_match,
    clarification_capability,
    decode_record,
    decode_work_item,
    delegate,
    encode,
    end_unreadable,
    event_id,
    fingerprint,
    is_terminal,
    judge_waiting,
    new_task,
    on_delivery,
    pull_priority,
    record_tag,
    serves,
    specificity,
    split_budget,
    trail_gap,
    vetoes,
    work_item_id,
    work_items,
)
from protocol.types import TaskEvent

T0 = 1_700_000_000.0
#: the work item the owner of ``working()`` holds
TICKET = 41


def working(**kwargs: object) -> TaskRecord:
    defaults: dict[str, object] = {
        "task_id": "P",
        "capability": "summarize.medical",
        "instruction": "summarize the report",
        "requester": "client-1",
        "now": T0,
    }
    defaults.update(kwargs)
    record = new_task(**defaults)  # type: ignore[arg-type]
    return apply(record, Claim(actor="owner", ticket=TICKET), T0 + 1)


# --- specificity, routing ------------------------------------------------------------------


def test_specificity() -> None:
    assert specificity("summarize", "summarize") == 1.0
    assert specificity("summarize", "summarize.medical") == 0.5
    assert specificity("summarize.medical", "summarize") == 0.0
    assert specificity("summarize", "summarizex") == 0.0
    assert specificity("summarize", "summarizex.medical") == 0.0
    assert specificity("a.b", "a.b.c.d") == 0.5
    assert specificity("a.c", "a.b.c") == 0.0


def test_prefix_is_by_token_not_by_character() -> None:
    assert serves(("summarize",), "summarize.medical")
    assert not serves(("summarize",), "summarizex")
    assert not serves(("summarize",), "summarizex.medical")
    assert not serves(("summarize.medical",), "summarize")
    assert pull_priority(("summarize",), "summarizex") is None


def test_best_match_is_the_longest_prefix() -> None:
    served = ("summarize", "summarize.medical", "translate")
    assert best_match(served, "summarize.medical.cardiology") == "summarize.medical"
    assert best_match(served, "summarize.legal") == "summarize"
    assert best_match(served, "translate") == "translate"
    assert best_match(served, "review") is None
    assert best_match((), "review") is None


@given(capabilities, capabilities)
def test_specificity_is_a_token_prefix_ratio(served: str, capability: str) -> None:
    s, c = served.split("."), capability.split(".")
    spec = specificity(served, capability)
    if c[: len(s)] == s:
        assert spec == len(s) / len(c)
    else:
        assert spec == 0.0
    assert serves((served,), capability) == (spec > 0)


@given(st.lists(short_capabilities, max_size=5), short_capabilities)
def test_best_match_maximizes_specificity(served: list[str], capability: str) -> None:
    best = best_match(tuple(served), capability)
    if best is None:
        assert all(specificity(s, capability) == 0 for s in served)
    else:
        assert best in served
        assert specificity(best, capability) == max(specificity(s, capability) for s in served)


def test_invalid_capability_in_routing() -> None:
    with pytest.raises(InvalidName):
        specificity("a.>", "a.b")
    with pytest.raises(InvalidName):
        best_match(("a",), "A")


# --- pull priorities ---------------------------------------------------------------------


def test_pull_priority_examples() -> None:
    assert pull_priority(("summarize",), "summarize") == 0
    assert pull_priority(("summarize",), "summarize.medical") == 1
    assert pull_priority(("summarize", "summarize.medical"), "summarize.medical.cardiology") == 1
    assert pull_priority(("a",), "a.b.c.d.e.f.g.h") == 7
    assert pull_priority(("summarize.medical",), "summarize") is None
    assert pull_priority((), "summarize") is None
    assert MAX_PRIORITY == 9


@given(st.lists(capabilities, max_size=4), capabilities)
def test_pull_priority_is_none_exactly_when_not_served(served: list[str], capability: str) -> None:
    priority = pull_priority(tuple(served), capability)
    assert (priority is None) == (not serves(tuple(served), capability))
    if priority is not None:
        assert 0 <= priority <= MAX_PRIORITY
        assert (priority == 0) == (capability in served)


@given(st.lists(short_capabilities, min_size=1, max_size=4), short_capabilities)
def test_pull_priority_counts_the_tokens_the_longest_prefix_leaves(served: list[str], capability: str) -> None:
    priority = pull_priority(tuple(served), capability)
    best = best_match(tuple(served), capability)
    if best is None:
        assert priority is None
    else:
        assert priority == len(capability.split(".")) - len(best.split("."))


@given(st.integers(1, 8), st.data())
def test_fewer_matched_tokens_pull_strictly_later(depth: int, data: st.DataObject) -> None:
    """Longest-prefix routing: along the prefixes of a capability, each token fewer
    matched is a strictly higher priority number (served later), from 0 for the exact
    match; a prefix by characters that is not one by tokens does not serve at all."""
    tokens = data.draw(st.lists(st.sampled_from(["a", "b", "sum", "x1", "med"]), min_size=depth, max_size=depth))
    capability = ".".join(tokens)
    priorities = [pull_priority((".".join(tokens[:k]),), capability) for k in range(depth, 0, -1)]
    assert priorities[0] == 0
    assert all(p is not None for p in priorities)
    assert priorities == sorted(priorities)
    assert len(set(priorities)) == len(priorities)
    assert pull_priority((tokens[0] + "x",), capability) is None


# --- work items --------------------------------------------------------------------------------


def reviewed(**kwargs: object) -> TaskRecord:
    record = working(review=ReviewPolicy(quorum=2, capability="review.medical"), **kwargs)
    return apply(record, Finish(actor="owner", epoch=record.epoch, result="r"), T0 + 2)


def test_a_new_task_has_one_work_item_at_revision_zero() -> None:
    opened = new_task(task_id="T", capability="summarize.medical", instruction="i", requester="c", now=T0)
    (item,) = work_items(None, opened, 0)
    assert (item.task, item.kind, item.capability, item.revision, item.round, item.slot) == (
        "T",
        "work",
        "summarize.medical",
        0,
        0,
        0,
    )
    assert item.record == opened
    assert work_item_id(item) == f"T:0:work:0:{record_tag(opened)}"
    assert decode_work_item(encode(item)) == item


def test_review_items_go_to_the_reviewer_capability() -> None:
    record = working(review=ReviewPolicy(quorum=2, capability="review.medical"))
    in_review = apply(record, Finish(actor="owner", epoch=record.epoch, result="r"), T0 + 2)
    items = work_items(record, in_review, 7)
    assert [(i.kind, i.capability, i.revision, i.round, i.slot) for i in items] == [
        ("review", "review.medical", 7, 0, 0),
        ("review", "review.medical", 7, 0, 1),
    ]
    tag = record_tag(in_review)
    assert [work_item_id(i) for i in items] == [f"P:7:review:0:{tag}", f"P:7:review:1:{tag}"]


def test_rework_and_escalation_publish_a_new_work_item() -> None:
    record = reviewed()
    vetoed = apply(record, Veto(actor="r1", epoch=record.epoch, reasons=("no",)), T0 + 3)
    (item,) = work_items(record, vetoed, 9)
    assert (item.kind, item.capability, item.revision) == ("work", "summarize.medical", 9)
    escalating = reviewed()
    escalating = msgspec.structs.replace(
        escalating, review=ReviewPolicy(quorum=1, capability="review.medical", max_reworks=0, escalate_to="human.x")
    )
    escalated = apply(escalating, Veto(actor="r1", epoch=escalating.epoch, reasons=("no",)), T0 + 3)
    (item,) = work_items(escalating, escalated, 10)
    assert (item.kind, item.capability) == ("work", "human.x")


def _lives() -> list[tuple[TaskRecord | None, TaskRecord]]:
    """Every consecutive pair of records along a few task lives (None: created)."""
    opened = new_task(
        task_id="T",
        capability="x",
        instruction="i",
        requester="c",
        now=T0,
        review=ReviewPolicy(quorum=2, capability="check", max_reworks=1, escalate_to="human.x"),
    )
    steps: list[object] = [
        Claim(actor="a", ticket=1),
        Renew(actor="a", epoch=1, progress="p"),
        Release(actor="a", epoch=1),
        Claim(actor="b", ticket=1),
        Claim(actor="c", ticket=1),
        Charge(actor="c", epoch=3, usage=Usage(tokens=1)),
        Finish(actor="c", epoch=3, result="r"),
        Reviewing(actor="r1", epoch=3, ticket=10),
        Approve(actor="r1", epoch=3),
        Veto(actor="r2", epoch=3, reasons=("no",)),
        Claim(actor="a", ticket=2),
        Finish(actor="a", epoch=4, result="r2"),
        Reviewing(actor="r1", epoch=4, ticket=20),
        Reviewing(actor="r3", epoch=4, ticket=20),
        Veto(actor="r2", epoch=4, reasons=("no",)),
        Claim(actor="alice"),
        Finish(actor="alice", epoch=5, result="fine"),
    ]
    pairs: list[tuple[TaskRecord | None, TaskRecord]] = [(None, opened)]
    record = opened
    for i, event in enumerate(steps):
        new = apply(record, event, T0 + i + 1)  # type: ignore[arg-type]
        pairs.append((record, new))
        record = new
    return pairs


def test_items_along_a_task_life() -> None:
    counts = [(new.state, len(work_items(old, new, 5))) for old, new in _lives()]
    assert counts == [
        ("open", 1),  # created
        ("working", 0),
        ("working", 0),
        ("open", 0),  # released: the owner hands its own item back
        ("working", 0),
        ("working", 0),  # a takeover: the item was lent to the claimer
        ("working", 0),
        ("review", 2),  # the quorum's review items
        ("review", 0),
        ("review", 0),
        ("open", 1),  # vetoed: the rework's item
        ("working", 0),
        ("review", 2),
        ("review", 0),
        ("review", 0),  # a slot taken over
        ("open", 1),  # escalated
        ("working", 0),
        ("done", 0),
    ]


@given(records(), records(), st.integers(0, 10**6))
def test_items_only_when_someone_new_must_act(old: TaskRecord, new: TaskRecord, revision: int) -> None:
    """Exactly one work item when a task becomes open to claim (made, or back from
    review), exactly ``quorum`` review items when it enters review, none otherwise; each
    item carries the new record at ``revision`` and has its own id."""
    new = msgspec.structs.replace(new, id=old.id)
    for before in (None, old):
        items = work_items(before, new, revision)
        opens = new.state == "open" and (before is None or before.state == "review")
        reviews = new.state == "review" and (before is None or before.state != "review")
        # a veto of the last round short of its reject quorum frees its voter's slot
        freed = (
            new.state == "review"
            and before is not None
            and before.state == "review"
            and before.reworks == new.reworks
            and len(vetoes(new)) > len(vetoes(before))
        )
        if opens:
            assert [(i.kind, i.capability) for i in items] == [("work", new.capability)]
        elif reviews:
            assert new.review is not None
            assert len(items) == new.review.quorum
            assert {(i.kind, i.capability, i.round) for i in items} == {("review", new.review.capability, new.reworks)}
            assert [i.slot for i in items] == list(range(new.review.quorum))
        elif freed:
            assert new.review is not None
            assert [(i.kind, i.round, i.slot) for i in items] == [
                ("review", new.reworks, (len(vetoes(new)) - 1) % new.review.quorum)
            ]
        else:
            assert items == ()
        assert all(i.record == new and i.revision == revision and i.task == new.id for i in items)
        ids = [work_item_id(i) for i in items]
        assert len(set(ids)) == len(ids)
        assert all(i.startswith(f"{new.id}:{revision}:") for i in ids)


@given(st.lists(st.tuples(st.integers(0, 50), st.sampled_from(["work", "review"]), st.integers(0, 15)), max_size=30))
def test_item_ids_tell_items_apart(keys: list[tuple[int, str, int]]) -> None:
    """Two items of one task have the same Nats-Msg-Id only if they are the same item
    (revision, kind, slot): the stream stores a re-sent item once, and never drops a
    different one."""
    opened = new_task(task_id="T", capability="x", instruction="i", requester="c", now=T0)
    ids = {}
    for revision, kind, slot in keys:
        item = WorkItem(task="T", kind=kind, capability="x", revision=revision, slot=slot, record=opened)  # type: ignore[arg-type]
        ids.setdefault(work_item_id(item), set()).add((revision, kind, slot))
    assert all(len(v) == 1 for v in ids.values())


@given(records(), st.integers(0, 50), st.sampled_from(["claim", "finish", "created"]), st.integers(1, 10**6))
def test_message_ids_name_the_write(record: TaskRecord, revision: int, kind: str, later_us: int) -> None:
    """An item's or event's Nats-Msg-Id names the write it carries or announces: the
    same for a decoded copy (any party re-sending it makes the same id), different for
    a write made at another microsecond, which a squatter would have to guess."""
    copy = decode_record(encode(record))
    assert event_id(kind, copy, revision) == event_id(kind, record, revision)
    assert event_id(kind, record, revision).startswith(f"{record.id}:{revision}:{kind}:")
    later = msgspec.structs.replace(record, updated=record.updated + later_us / 1_000_000)
    if math.floor(later.updated * 1_000_000) != math.floor(record.updated * 1_000_000):
        assert event_id(kind, later, revision) != event_id(kind, record, revision)


# --- deliveries -------------------------------------------------------------------------------


def item_of(record: TaskRecord, kind: str = "work", round_: int = 0) -> WorkItem:
    capability = record.review.capability if kind == "review" and record.review else record.capability
    return WorkItem(task=record.id, kind=kind, capability=capability, revision=1, round=round_, record=record)  # type: ignore[arg-type]


def test_a_work_item_claims_an_open_task_under_its_ticket() -> None:
    opened = new_task(task_id="T", capability="x", instruction="i", requester="c", now=T0)
    assert on_delivery(item_of(opened), opened, agent="a", ticket=5) == Take(Claim(actor="a", ticket=5))


def test_a_work_item_takes_over_only_under_the_owners_ticket() -> None:
    held = working()
    assert on_delivery(item_of(held), held, agent="b", ticket=TICKET) == Take(Claim(actor="b", ticket=TICKET))
    assert isinstance(on_delivery(item_of(held), held, agent="b", ticket=TICKET + 1), Drop)
    person = apply(new_task(task_id="T", capability="x", instruction="i", requester="c", now=T0), Claim(actor="p"), T0)
    assert isinstance(on_delivery(item_of(person), person, agent="b", ticket=TICKET), Drop)


@given(records(), st.sampled_from(["work", "review"]), st.sampled_from(["a", "b", "owner"]), st.integers(1, 100))
def test_never_take_a_terminal_task(record: TaskRecord, kind: str, agent: str, ticket: int) -> None:
    decision = on_delivery(item_of(record, kind), record, agent=agent, ticket=ticket)
    if is_terminal(record):
        assert isinstance(decision, Drop)


@given(records(), st.sampled_from(["a", "b"]), st.integers(1, 100), st.booleans())
def test_a_work_item_takes_only_open_tasks_or_its_own_hold(
    record: TaskRecord, agent: str, ticket: int, same_ticket: bool
) -> None:
    """A work item Takes exactly an open task, or a working one held under this very
    item; it never hands back (another agent would find the same), and what it takes the
    state machine accepts (before the deadline)."""
    if same_ticket:
        record = msgspec.structs.replace(record, ticket=ticket)
    decision = on_delivery(item_of(record, "work"), record, agent=agent, ticket=ticket)
    takes = record.state == "open" or (record.state == "working" and record.ticket == ticket)
    assert isinstance(decision, Take) == takes
    assert not isinstance(decision, HandBack)
    if isinstance(decision, Take):
        assert decision.event == Claim(actor=agent, ticket=ticket)
        now = T0 if record.deadline is None else min(T0, record.deadline - 1)
        new = apply(record, decision.event, now)
        assert new.epoch == record.epoch + 1 or (new.state, new.reason) == ("failed", "error")


@given(records(), st.integers(1, 100))
def test_a_review_item_is_handed_back_by_the_author(record: TaskRecord, ticket: int) -> None:
    if record.state != "review" or record.review is None or record.author is None:
        return
    item = item_of(record, "review", round_=record.reworks)
    assert isinstance(on_delivery(item, record, agent=record.author, ticket=ticket), HandBack)


@given(records(), st.sampled_from(["a", "r1", "r2"]), st.integers(1, 100))
def test_a_review_take_is_accepted_by_the_machine(record: TaskRecord, agent: str, ticket: int) -> None:
    decision = on_delivery(item_of(record, "review", round_=record.reworks), record, agent=agent, ticket=ticket)
    if isinstance(decision, Take):
        assert decision.event == Reviewing(actor=agent, epoch=record.epoch, ticket=ticket)
        now = T0 if record.deadline is None else min(T0, record.deadline - 1)
        try:
            new = apply(record, decision.event, now)
        except TransitionError as exc:  # pragma: no cover - a failure shows what went wrong
            raise AssertionError(f"on_delivery took {decision.event} but the machine refused: {exc}") from None
        mine = next(s for s in new.slots if s.reviewer == agent)
        assert mine.ticket == ticket


# --- judging a wait ---------------------------------------------------------------------------


@given(
    records(),
    st.floats(min_value=0, max_value=1e6, allow_nan=False),
    st.booleans(),
    st.floats(min_value=0, max_value=4e9, allow_nan=False),
)
def test_judge_waiting(record: TaskRecord, waited_s: float, queue_active: bool, now: float) -> None:
    """The deadline always wins; nothing is ever expired before claim_timeout_s; a task
    an agent holds under a work item (or a review with a slot held) is never ended
    no_agent: the broker watches those; and whatever is decided, the machine accepts."""
    event = judge_waiting(record, actor="party", waited_s=waited_s, queue_active=queue_active, now=now)
    late = record.deadline is not None and now >= record.deadline
    if is_terminal(record):
        assert event is None
        return
    if late:
        assert event == Expire(actor="party", reason="deadline")
    elif waited_s < record.claim_timeout_s:
        assert event is None
    elif record.state == "working" and record.ticket is not None:
        assert event is None
    elif record.state == "review" and record.slots:
        assert event is None
    elif record.state == "open":
        assert (event is None) == queue_active
    else:
        assert event == Expire(actor="party", reason="no_agent")
    if event is not None:
        ended = apply(record, event, now)
        if event.reason == "no_agent" and record.state == "review" and vetoes(record):
            # A last round short of its reject quorum that nobody took up: its vetoes
            # are the judgment (PROTOCOL.md 5, expire): escalated, or failed rejected.
            assert record.review is not None
            if record.review.escalate_to is not None:
                assert (ended.state, ended.capability) == ("open", record.review.escalate_to)
            else:
                assert (ended.state, ended.reason) == ("failed", "rejected")
        else:
            assert (ended.state, ended.reason) == ("failed", event.reason)


# --- unreadable records and holes in the trail -----------------------------------------------


@given(records(), st.text(max_size=2000), st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_end_unreadable_always_ends_with_a_record_every_decoder_accepts(copy: TaskRecord, why: str, now: float) -> None:
    """Whatever the copy, the written end is terminal, says why, holds no slot, and is
    itself readable (a repair must never write another unreadable record)."""
    ended = end_unreadable(copy, why=why, now=now)
    assert is_terminal(ended)
    assert decode_record(encode(ended)) == ended
    if is_terminal(copy):
        assert ended == copy
    else:
        assert (ended.state, ended.reason, ended.slots) == ("failed", "error", ())
        assert ended.error.startswith("the stored record was unreadable") and len(ended.error) < 400
        assert ended.updated >= copy.updated and ended.id == copy.id


def _event_of(record: TaskRecord, kind: str = "x") -> TaskEvent:
    return TaskEvent(
        kind=kind,
        task=record.id,
        root=record.root,
        capability=record.capability,
        actor="someone",
        epoch=record.epoch,
        state=record.state,
        reason=record.reason,
        at=record.updated,
    )


@given(records(), records(), st.integers(min_value=1, max_value=10**6))
def test_trail_gap_fills_exactly_what_the_last_event_does_not_show(
    record: TaskRecord, earlier: TaskRecord, revision: int
) -> None:
    """An event showing the record's state at its epoch means nothing is missing; a
    missing end is `ended` with no items; anything else missing is `recovered`, with
    the items of an open or review record (never of a held one)."""
    assert trail_gap(record, revision, _event_of(record)) is None
    assert trail_gap(record, 0, None) is None  # not in the bucket: nothing was written
    last = _event_of(msgspec.structs.replace(earlier, id=record.id, root=record.root))
    gap = trail_gap(record, revision, last)
    shows = last.state == record.state and last.epoch == record.epoch
    ended_already = is_terminal(record) and last.state in TERMINAL_STATES
    assert (gap is None) == (shows or ended_already)
    if gap is not None:
        assert gap.kind == ("ended" if is_terminal(record) else "recovered")
        assert gap.actor in (record.owner, record.author, record.requester)
        assert all(i.task == record.id and i.revision == revision for i in gap.items)
        if record.state not in ("open", "review"):
            assert gap.items == ()


def test_judge_waiting_examples() -> None:
    opened = new_task(task_id="T", capability="x", instruction="i", requester="c", now=T0, deadline=T0 + 100)
    judge = judge_waiting
    assert judge(opened, actor="c", waited_s=9.9, queue_active=False, now=T0 + 10) is None
    assert judge(opened, actor="c", waited_s=10.0, queue_active=False, now=T0 + 10) == Expire(
        actor="c", reason="no_agent"
    )
    assert judge(opened, actor="c", waited_s=1e6, queue_active=True, now=T0 + 10) is None
    assert judge(opened, actor="c", waited_s=0.0, queue_active=True, now=T0 + 100) == Expire(
        actor="c", reason="deadline"
    )
    held = apply(opened, Claim(actor="a", ticket=3), T0 + 1)
    assert judge(held, actor="c", waited_s=1e6, queue_active=False, now=T0 + 50) is None
    person = apply(opened, Claim(actor="alice"), T0 + 1)
    assert judge(person, actor="c", waited_s=10.0, queue_active=True, now=T0 + 50) == Expire(
        actor="c", reason="no_agent"
    )
    for state in TERMINAL_STATES:
        ended = msgspec.structs.replace(opened, state=state, reason="error" if state == "failed" else None)
        assert judge(ended, actor="c", waited_s=1e6, queue_active=False, now=T0 + 1000) is None


def test_a_review_nobody_started_ends_no_agent_whatever_its_queue_shows() -> None:
    record = reviewed()
    assert judge_waiting(record, actor="c", waited_s=10.0, queue_active=True, now=T0 + 50) == Expire(
        actor="c", reason="no_agent"
    )
    held = apply(record, Reviewing(actor="r1", epoch=record.epoch, ticket=9), T0 + 3)
    assert judge_waiting(held, actor="c", waited_s=1e6, queue_active=False, now=T0 + 50) is None


# --- delegation -----------------------------------------------------------------------------


def test_delegate_decrements_hops_and_inherits_lineage() -> None:
    parent = working(hops=3)
    child = delegate(parent, child_id="C", capability="translate", instruction="to french", actor="owner", now=T0 + 2)
    assert child.state == "open"
    assert child.hops_left == 2
    assert child.parent == "P"
    assert child.root == "P"
    assert child.requester == "owner"
    assert child.lineage == (fingerprint("summarize.medical", "summarize the report"),)
    assert child.created == child.updated == T0 + 2
    grandchild = delegate(
        apply(child, Claim(actor="b"), T0 + 3), child_id="G", capability="x", instruction="y", actor="b", now=T0 + 4
    )
    assert grandchild.root == "P"
    assert grandchild.parent == "C"
    assert grandchild.hops_left == 1
    assert grandchild.lineage == (*child.lineage, fingerprint("translate", "to french"))


def test_default_hops() -> None:
    assert working().hops_left == DEFAULT_HOPS


def test_at_zero_hops_the_child_fails_with_hop_limit() -> None:
    parent = working(hops=0)
    child = delegate(parent, child_id="C", capability="translate", instruction="x", actor="owner", now=T0 + 2)
    assert child.state == "failed"
    assert child.reason == "hop_limit"
    assert child.hops_left == 0
    assert "P" in child.error


@given(st.integers(1, 16), st.integers(0, 16))
def test_hops_decrease_along_any_chain(hops: int, depth: int) -> None:
    record = working(hops=hops)
    for i in range(depth):
        child = delegate(
            record, child_id=f"C{i}", capability="x", instruction=f"step {i}", actor=record.owner or "", now=T0 + 2
        )
        if record.hops_left == 0:
            assert child.state == "failed"
            assert child.reason == "hop_limit"
            return
        assert child.hops_left == record.hops_left - 1
        record = apply(child, Claim(actor=f"a{i}"), T0 + 3)
    assert record.hops_left == max(hops - depth, 0)


@given(
    parent_deadline=st.none() | st.floats(min_value=T0 + 10, max_value=T0 + 1e6),
    wanted=st.none() | st.floats(min_value=T0 + 3, max_value=T0 + 2e6),
)
def test_child_deadline_never_later_than_the_parent(parent_deadline: float | None, wanted: float | None) -> None:
    parent = working(deadline=parent_deadline)
    child = delegate(parent, child_id="C", capability="x", instruction="y", actor="owner", now=T0 + 2, deadline=wanted)
    if parent_deadline is None:
        assert child.deadline == wanted
    else:
        assert child.deadline is not None
        assert child.deadline <= parent_deadline
        assert child.deadline == (parent_deadline if wanted is None else min(wanted, parent_deadline))


def test_child_with_a_passed_deadline_fails_with_deadline() -> None:
    parent = working(deadline=T0 + 100)
    child = delegate(parent, child_id="C", capability="x", instruction="y", actor="owner", now=T0 + 100)
    assert (child.state, child.reason) == ("failed", "deadline")


@given(
    tokens_=st.none() | st.integers(0, 10_000),
    cost=st.none() | st.floats(min_value=0, max_value=100),
    spent_tokens=st.integers(0, 20_000),
    spent_cost=st.floats(min_value=0, max_value=200),
    share=st.floats(min_value=0.01, max_value=1.0),
)
def test_budget_share(
    tokens_: int | None, cost: float | None, spent_tokens: int, spent_cost: float, share: float
) -> None:
    parent = msgspec.structs.replace(
        working(budget=Budget(tokens=tokens_, cost=cost)), spent=Usage(tokens=spent_tokens, cost=spent_cost)
    )
    budget = split_budget(parent, share)
    assert budget is not None
    if tokens_ is None:
        assert budget.tokens is None
    else:
        assert budget.tokens is not None
        assert 0 <= budget.tokens <= max(tokens_ - spent_tokens, 0)
    if cost is None:
        assert budget.cost is None
    else:
        assert budget.cost is not None
        assert 0 <= budget.cost <= max(cost - spent_cost, 0) + 1e-9
    child = delegate(
        parent, child_id="C", capability="x", instruction="y", actor="owner", now=T0 + 2, budget_share=share
    )
    assert child.budget == budget
    exhausted = budget.tokens == 0 or budget.cost == 0.0
    assert (child.state == "failed" and child.reason == "budget") == exhausted


def test_no_budget_means_unlimited_children() -> None:
    parent = working()
    assert split_budget(parent, 0.5) is None
    child = delegate(parent, child_id="C", capability="x", instruction="y", actor="owner", now=T0 + 2)
    assert child.budget is None


def test_budget_exhausted_child_fails_with_budget() -> None:
    parent = msgspec.structs.replace(working(budget=Budget(tokens=100)), spent=Usage(tokens=100))
    child = delegate(parent, child_id="C", capability="x", instruction="y", actor="owner", now=T0 + 2)
    assert (child.state, child.reason) == ("failed", "budget")
    assert child.budget == Budget(tokens=0, cost=None)


@pytest.mark.parametrize("share", [0.0, -0.5, 1.5])
def test_budget_share_range(share: float) -> None:
    with pytest.raises(LocalProtocolError):
        split_budget(working(budget=Budget(tokens=10)), share)


def test_loop_is_refused_by_fingerprint_over_lineage() -> None:
    parent = working()
    child = delegate(parent, child_id="C", capability="translate", instruction="to french", actor="owner", now=T0 + 2)
    claimed = apply(child, Claim(actor="b"), T0 + 3)
    # The grandchild asks for the root's work again (whitespace and case do not matter).
    loop = delegate(
        claimed,
        child_id="G",
        capability="summarize.medical",
        instruction="  Summarize THE\nreport ",
        actor="b",
        now=T0 + 4,
    )
    assert (loop.state, loop.reason) == ("failed", "loop")
    # Asking for the parent's own work is a loop too.
    again = delegate(claimed, child_id="H", capability="translate", instruction="to french", actor="b", now=T0 + 4)
    assert (again.state, again.reason) == ("failed", "loop")
    # Same instruction, another capability: not a loop.
    other = delegate(
        claimed, child_id="I", capability="summarize", instruction="summarize the report", actor="b", now=T0 + 4
    )
    assert other.state == "open"


@given(st.text(max_size=30), st.text(max_size=30))
def test_fingerprint_folds_case_and_whitespace(a: str, b: str) -> None:
    assert fingerprint("x", a) == fingerprint("x", " ".join(a.split()).casefold())
    assert len(fingerprint("x", a)) == 16
    if " ".join(a.split()).casefold() != " ".join(b.split()).casefold():
        assert fingerprint("x", a) != fingerprint("x", b)
    assert fingerprint("x", a) != fingerprint("y", a)


def test_only_the_owner_of_a_working_task_may_delegate() -> None:
    parent = working()
    with pytest.raises(LocalProtocolError, match="only the owner"):
        delegate(parent, child_id="C", capability="x", instruction="y", actor="intruder", now=T0 + 2)
    opened = new_task(task_id="P", capability="x", instruction="y", requester="c", now=T0)
    with pytest.raises(LocalProtocolError, match="only the owner"):
        delegate(opened, child_id="C", capability="x", instruction="z", actor="c", now=T0 + 2)
    finished = apply(parent, Finish(actor="owner", epoch=parent.epoch), T0 + 2)
    with pytest.raises(LocalProtocolError):
        delegate(finished, child_id="C", capability="x", instruction="z", actor="owner", now=T0 + 3)


def test_delegate_validates_names() -> None:
    parent = working()
    with pytest.raises(InvalidName):
        delegate(parent, child_id="a.b", capability="x", instruction="y", actor="owner", now=T0 + 2)
    with pytest.raises(InvalidName):
        delegate(parent, child_id="C", capability="X", instruction="y", actor="owner", now=T0 + 2)
    with pytest.raises(InvalidName):
        delegate(
            parent,
            child_id="C",
            capability="x",
            instruction="y",
            actor="owner",
            now=T0 + 2,
            review=ReviewPolicy(capability="bad cap"),
        )


def test_ask_addresses_the_requester() -> None:
    parent = working(requester="Client-1", budget=Budget(tokens=100))
    question = ask(parent, child_id="Q", question="which patient?", actor="owner", now=T0 + 2)
    assert question.capability == "agent.client-1" == clarification_capability("Client-1")
    assert question.instruction == "which patient?"
    assert question.parent == "P"
    assert question.requester == "owner"
    assert question.hops_left == parent.hops_left - 1
    assert question.budget == Budget(tokens=100)  # the whole remaining budget
    with pytest.raises(LocalProtocolError):
        ask(parent, child_id="Q", question="?", actor="someone-else", now=T0 + 2)


# --- new tasks ------------------------------------------------------------------------------


def test_new_task_defaults() -> None:
    record = new_task(task_id="T", capability="x.y", instruction="do", requester="c", now=T0)
    assert record.state == "open"
    assert record.root == "T"
    assert record.parent is None
    assert record.epoch == record.attempts == 0
    assert record.owner is None
    assert record.created == record.updated == T0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"task_id": "a.b"},
        {"capability": "X"},
        {"requester": "a b"},
        {"review": ReviewPolicy(capability="a.>")},
        {"review": ReviewPolicy(escalate_to="Human")},
    ],
)
def test_new_task_validates_names(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"task_id": "T", "capability": "x", "instruction": "i", "requester": "c", "now": T0}
    with pytest.raises(InvalidName):
        new_task(**{**args, **kwargs})  # type: ignore[arg-type]


def test_new_task_refuses_negative_hops_and_past_deadline() -> None:
    with pytest.raises(LocalProtocolError, match="hops"):
        new_task(task_id="T", capability="x", instruction="i", requester="c", now=T0, hops=-1)
    with pytest.raises(LocalProtocolError, match="deadline"):
        new_task(task_id="T", capability="x", instruction="i", requester="c", now=T0, deadline=T0)


# --- A2A card -------------------------------------------------------------------------------


def test_a2a_card_has_one_skill_per_capability() -> None:
    card = AgentCard(id="a1", role="summarizer", serves=("summarize", "summarize.medical"), expertise=("cardio",))
    view = a2a_card(card, "nats://localhost:4222")
    assert view.name == "a1"
    assert [s.id for s in view.skills] == ["summarize", "summarize.medical"]
    assert view.supported_interfaces[0].url == "nats://localhost:4222"
    encoded = msgspec.json.decode(msgspec.json.encode(view))
    assert "supportedInterfaces" in encoded
    assert encoded["supportedInterfaces"][0]["protocolBinding"].endswith("/v2")
    assert encoded["supportedInterfaces"][0]["protocolVersion"] == "2"
