"""Review slots: a reviewer holds one of the quorum's slots under the review work item the
broker lent it (the slot's ticket), and only then votes; a reviewer the broker lends a
lapsed holder's item takes that slot over by naming the same ticket. Rule by rule, then
as properties over arbitrary sequences of takes, takeovers, renewals, releases and votes,
and against the delivery rule (:func:`protocol.on_delivery`) that makes them."""

from __future__ import annotations

import hypothesis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import (
    Approve,
    Cancel,
    Claim,
    Drop,
    Event,
    Fenced,
    Finish,
    HandBack,
    Reviewing,
    ReviewPolicy,
    ReviewSlot,
    Take,
    TaskRecord,
    TransitionError,
    Veto,
    WorkItem,
    apply,
    approvals,
    decode_record,
    encode,
    free_slots,
    new_task,
    on_delivery,
    review_full,
    slot_of,
    work_items,
)

T0 = 1_700_000_000.0
REVIEWERS = ("r1", "r2", "r3", "r4", "r5")
#: the review items of the first round: slot i's item has sequence 100 + i
FIRST_ITEM = 100


def in_review(quorum: int = 1, max_reworks: int = 1, escalate_to: str | None = None, **kwargs: object) -> TaskRecord:
    record = new_task(
        task_id="T",
        capability="write",
        instruction="write it",
        requester="client",
        now=T0,
        review=ReviewPolicy(quorum=quorum, capability="check", max_reworks=max_reworks, escalate_to=escalate_to),
        **kwargs,  # type: ignore[arg-type]
    )
    working = apply(record, Claim(actor="author", ticket=1), T0 + 1)
    return apply(working, Finish(actor="author", epoch=1, result="v1"), T0 + 2)


def take(record: TaskRecord, *reviewers: str, at: float = T0 + 3) -> TaskRecord:
    """Each reviewer takes a slot under the next review item (100, 101, ...)."""
    for reviewer in reviewers:
        ticket = FIRST_ITEM + len(record.slots) + len(approvals(record))
        record = apply(record, Reviewing(actor=reviewer, epoch=record.epoch, ticket=ticket), at)
    return record


def holders(record: TaskRecord) -> list[str]:
    return [s.reviewer for s in record.slots]


def item_for(record: TaskRecord, slot: int = 0) -> WorkItem:
    """The review item of ``slot`` as the finish write published it."""
    assert record.review is not None
    return WorkItem(
        task=record.id,
        kind="review",
        capability=record.review.capability,
        revision=3,
        round=record.reworks,
        slot=slot,
        record=record,
    )


# --- taking, renewing, giving back ------------------------------------------------------


def test_a_reviewer_takes_a_free_slot_under_its_item() -> None:
    record = in_review(quorum=2)
    assert (free_slots(record), review_full(record)) == (2, False)
    one = take(record, "r1")
    assert one.slots == (ReviewSlot(reviewer="r1", ticket=100, since=T0 + 3),)
    assert (one.state, free_slots(one), review_full(one)) == ("review", 1, False)
    assert "r1 is reviewing" in one.progress
    two = take(one, "r2")
    assert (holders(two), [s.ticket for s in two.slots], free_slots(two), review_full(two)) == (
        ["r1", "r2"],
        [100, 101],
        0,
        True,
    )


def test_k_slots_and_no_more() -> None:
    full = take(in_review(quorum=2), "r1", "r2")
    for ticket in (None, 999):
        with pytest.raises(Fenced, match="every review slot is taken"):
            apply(full, Reviewing(actor="r3", epoch=1, ticket=ticket), T0 + 4)


def test_a_holder_renews_its_slot() -> None:
    record = take(in_review(quorum=2), "r1", "r2")
    for ticket in (None, 100):
        renewed = apply(record, Reviewing(actor="r1", epoch=1, ticket=ticket), T0 + 9)
        assert slot_of(renewed, "r1") == slot_of(record, "r1")
        assert slot_of(renewed, "r2") == slot_of(record, "r2")
        assert renewed.updated == T0 + 9


def test_a_holder_naming_another_holders_item_keeps_one_slot() -> None:
    """The machine's rule for a renewal under another holder's ticket (no conforming
    agent makes it: on_delivery hands such an item back): the named holder's slot goes,
    and the actor still holds exactly one."""
    record = take(in_review(quorum=2), "r1", "r2")
    renewed = apply(record, Reviewing(actor="r1", epoch=1, ticket=101), T0 + 9)
    assert renewed.slots == (ReviewSlot(reviewer="r1", ticket=101, since=T0 + 3),)
    assert free_slots(renewed) == 1


def test_the_author_never_takes_a_slot() -> None:
    with pytest.raises(TransitionError, match="author"):
        take(in_review(), "author")


def test_a_reviewer_that_voted_takes_no_slot() -> None:
    record = apply(take(in_review(quorum=2), "r1"), Approve(actor="r1", epoch=1), T0 + 4)
    with pytest.raises(TransitionError, match="already voted"):
        take(record, "r1")


def test_a_holder_gives_its_slot_back() -> None:
    record = take(in_review(quorum=1), "r1")
    released = apply(record, Reviewing(actor="r1", epoch=1, release=True), T0 + 5)
    assert (released.slots, free_slots(released)) == ((), 1)
    assert "gave its review slot back" in released.progress
    with pytest.raises(Fenced, match="no review slot"):
        apply(released, Reviewing(actor="r1", epoch=1, release=True), T0 + 6)
    # The item goes back to the queue: whoever gets it next takes the free slot.
    assert holders(apply(released, Reviewing(actor="r2", epoch=1, ticket=100), T0 + 7)) == ["r2"]


def test_slots_are_fenced_by_the_epoch_of_the_result() -> None:
    with pytest.raises(Fenced):
        apply(in_review(), Reviewing(actor="r1", epoch=0, ticket=100), T0 + 3)


# --- takeover of a lapsed slot, by ticket ---------------------------------------------------


def test_the_slot_held_under_an_item_passes_with_the_item() -> None:
    """r1's lease on item 100 lapsed: the broker lent it to r3, who takes r1's slot."""
    record = take(in_review(quorum=2), "r1", "r2")
    taken = apply(record, Reviewing(actor="r3", epoch=1, ticket=100), T0 + 20)
    assert holders(taken) == ["r3", "r2"]
    assert slot_of(taken, "r3") == ReviewSlot(reviewer="r3", ticket=100, since=T0 + 20)
    assert "took over the review slot of r1" in taken.progress


def test_an_item_nobody_holds_a_slot_under_takes_a_free_slot() -> None:
    record = take(in_review(quorum=2), "r1")
    taken = apply(record, Reviewing(actor="r2", epoch=1, ticket=101), T0 + 20)
    assert holders(taken) == ["r1", "r2"]


def test_no_takeover_without_the_holders_item() -> None:
    full = take(in_review(quorum=1), "r1")
    with pytest.raises(Fenced, match="every review slot is taken"):
        apply(full, Reviewing(actor="r2", epoch=1, ticket=555), T0 + 20)


# --- votes ----------------------------------------------------------------------------------


def test_a_holders_vote_spends_its_slot() -> None:
    record = take(in_review(quorum=2), "r1", "r2")
    one = apply(record, Approve(actor="r1", epoch=1), T0 + 5)
    assert (one.state, holders(one), sorted(approvals(one)), review_full(one)) == ("review", ["r2"], ["r1"], True)
    done = apply(one, Approve(actor="r2", epoch=1), T0 + 6)
    assert (done.state, done.slots) == ("done", ())


def test_a_vote_without_a_slot_takes_a_free_one_at_once() -> None:
    """People answering in an inbox hold no item and vote directly; the vote counts if a
    slot is free, so the quorum bound holds all the same."""
    record = take(in_review(quorum=2), "r1")
    voted = apply(record, Approve(actor="r2", epoch=1), T0 + 5)
    assert (holders(voted), sorted(approvals(voted)), review_full(voted)) == (["r1"], ["r2"], True)
    with pytest.raises(Fenced, match="not a review slot holder"):
        apply(voted, Approve(actor="r3", epoch=1), T0 + 6)
    with pytest.raises(Fenced, match="not a review slot holder"):
        apply(voted, Veto(actor="r3", epoch=1, reasons=("late",)), T0 + 6)


def test_a_stale_holders_vote_and_renewal_are_refused() -> None:
    record = take(in_review(quorum=1), "r1")
    taken = apply(record, Reviewing(actor="r2", epoch=1, ticket=100), T0 + 20)
    for vote in (Approve(actor="r1", epoch=1), Veto(actor="r1", epoch=1, reasons=("late",))):
        with pytest.raises(Fenced, match="held by r2"):
            apply(taken, vote, T0 + 21)
    # Its renewal is refused too: that is how a stale reviewer learns to stop.
    with pytest.raises(Fenced):
        apply(taken, Reviewing(actor="r1", epoch=1), T0 + 21)
    assert apply(taken, Approve(actor="r2", epoch=1), T0 + 22).state == "done"


def test_the_ticket_is_the_only_proof_of_holding_an_item() -> None:
    """The record cannot tell which of two agents the broker lent an item to last: one
    naming the slot's ticket takes the slot, so a holder that wrote its slot late (after
    its lease lapsed unknown to it) takes it back, and the other holder is then fenced.
    Slots never exceed the quorum either way; this is why an agent must not acknowledge an
    item after losing a write (PROTOCOL.md 6.6)."""
    taken = apply(take(in_review(quorum=1), "r1"), Reviewing(actor="r2", epoch=1, ticket=100), T0 + 20)
    back = apply(taken, Reviewing(actor="r1", epoch=1, ticket=100), T0 + 21)
    assert holders(back) == ["r1"]
    with pytest.raises(Fenced):
        apply(back, Approve(actor="r2", epoch=1), T0 + 22)


def test_a_veto_releases_every_slot_and_rework_starts_afresh() -> None:
    record = take(in_review(quorum=2, max_reworks=1), "r1", "r2")
    vetoed = apply(record, Veto(actor="r1", epoch=1, reasons=("wrong",)), T0 + 5)
    assert (vetoed.state, vetoed.slots, vetoed.reworks, vetoed.ticket) == ("open", (), 1, None)
    again = apply(apply(vetoed, Claim(actor="b", ticket=7), T0 + 6), Finish(actor="b", epoch=2, result="v2"), T0 + 7)
    assert (again.state, again.slots, free_slots(again)) == ("review", (), 2)
    # The first reviewers may review the new result (a new round), the old author too.
    assert holders(take(again, "r1", "author")) == ["r1", "author"]


def test_escalation_and_rejection_release_every_slot() -> None:
    escalating = take(in_review(quorum=2, max_reworks=0, escalate_to="human.check"), "r1", "r2")
    escalated = apply(escalating, Veto(actor="r2", epoch=1, reasons=("unsure",)), T0 + 5)
    assert (escalated.state, escalated.capability, escalated.slots) == ("open", "human.check", ())
    rejecting = take(in_review(quorum=2, max_reworks=0), "r1", "r2")
    rejected = apply(rejecting, Veto(actor="r2", epoch=1, reasons=("no",)), T0 + 5)
    assert (rejected.state, rejected.reason, rejected.slots) == ("failed", "rejected", ())


# --- review items and deliveries -----------------------------------------------------------


def test_entering_review_publishes_one_item_per_slot() -> None:
    working = apply(
        new_task(
            task_id="T",
            capability="write",
            instruction="w",
            requester="c",
            now=T0,
            review=ReviewPolicy(quorum=3, capability="check"),
        ),
        Claim(actor="author", ticket=1),
        T0 + 1,
    )
    review = apply(working, Finish(actor="author", epoch=1, result="v1"), T0 + 2)
    items = work_items(working, review, 9)
    assert [(i.kind, i.capability, i.revision, i.round, i.slot) for i in items] == [
        ("review", "check", 9, 0, 0),
        ("review", "check", 9, 0, 1),
        ("review", "check", 9, 0, 2),
    ]
    assert all(i.record == review for i in items)
    assert work_items(review, take(review, "r1"), 10) == ()


def test_on_delivery_for_review_items() -> None:
    record = in_review(quorum=2)
    item = item_for(record)
    assert on_delivery(item, record, agent="r1", ticket=100) == Take(Reviewing(actor="r1", epoch=1, ticket=100))
    assert isinstance(on_delivery(item, record, agent="author", ticket=100), HandBack)
    full = take(record, "r1", "r2")
    # r1's item lent to r3 (r1's lease lapsed): take it over.
    assert on_delivery(item, full, agent="r3", ticket=100) == Take(Reviewing(actor="r3", epoch=1, ticket=100))
    # r1's own item back to r1: a renewal.
    assert on_delivery(item, full, agent="r1", ticket=100) == Take(Reviewing(actor="r1", epoch=1, ticket=100))
    # r2's item lent to r1, who already reviews under item 100: let someone else have it.
    assert isinstance(on_delivery(item_for(full, 1), full, agent="r1", ticket=101), HandBack)
    # An item under which no slot is held, with every slot taken: stale.
    assert isinstance(on_delivery(item, full, agent="r3", ticket=777), Drop)
    voted = apply(full, Approve(actor="r1", epoch=1), T0 + 5)
    assert isinstance(on_delivery(item, voted, agent="r1", ticket=100), HandBack)
    assert isinstance(on_delivery(item, apply(voted, Cancel(actor="client"), T0 + 6), agent="r3", ticket=100), Drop)


def test_items_of_an_earlier_round_are_dropped() -> None:
    record = in_review(quorum=1, max_reworks=2)
    old_item = item_for(record)
    vetoed = apply(record, Veto(actor="r1", epoch=1, reasons=("no",)), T0 + 5)
    assert isinstance(on_delivery(old_item, vetoed, agent="r2", ticket=100), Drop)
    again = apply(apply(vetoed, Claim(actor="b", ticket=7), T0 + 6), Finish(actor="b", epoch=2, result="v2"), T0 + 7)
    assert isinstance(on_delivery(old_item, again, agent="r2", ticket=100), Drop)
    assert isinstance(on_delivery(item_for(again), again, agent="r2", ticket=200), Take)


# --- properties --------------------------------------------------------------------------------

TICKETS = st.sampled_from([None, 100, 101, 102, 103, 555])


@st.composite
def slot_histories(draw: st.DrawFn) -> tuple[TaskRecord, list[Event]]:
    """A record in review and a sequence of slot and vote events by any reviewer, the
    author included, with right and wrong epochs and tickets."""
    record = in_review(quorum=draw(st.integers(1, 4)), max_reworks=draw(st.integers(0, 2)))
    actors = st.sampled_from([*REVIEWERS, "author"])
    events = draw(
        st.lists(
            st.one_of(
                st.builds(Reviewing, actor=actors, epoch=st.sampled_from([1, 1, 1, 0]), ticket=TICKETS),
                st.builds(Reviewing, actor=actors, epoch=st.just(1), ticket=TICKETS, release=st.just(True)),
                st.builds(Approve, actor=actors, epoch=st.sampled_from([1, 1, 1, 2])),
                st.builds(Veto, actor=actors, epoch=st.just(1), reasons=st.just(("no",))),
            ),
            max_size=40,
        )
    )
    return record, events


def run(record: TaskRecord, events: list[Event]) -> list[tuple[TaskRecord, Event, TaskRecord | None]]:
    """Feed the events; the record is kept only when an event is accepted (as a CAS)."""
    steps: list[tuple[TaskRecord, Event, TaskRecord | None]] = []
    now = T0 + 3
    for event in events:
        now += 1
        try:
            new: TaskRecord | None = apply(record, event, now)
        except TransitionError:
            new = None
        steps.append((record, event, new))
        if new is not None:
            record = new
    return steps


@given(slot_histories())
def test_never_more_than_the_quorum_of_slots_and_approvals(history: tuple[TaskRecord, list[Event]]) -> None:
    for _, _, new in run(*history):
        if new is None or new.state != "review":
            continue
        assert new.review is not None
        names = holders(new)
        assert len(names) == len(set(names))
        assert len(names) + len(approvals(new)) <= new.review.quorum
        assert free_slots(new) == new.review.quorum - len(names) - len(approvals(new))
        assert decode_record(encode(new)) == new


@given(slot_histories())
def test_one_slot_per_ticket(history: tuple[TaskRecord, list[Event]]) -> None:
    """An item stands for one slot: no two slots are ever held under the same ticket."""
    for _, _, new in run(*history):
        if new is not None:
            tickets = [s.ticket for s in new.slots if s.ticket is not None]
            assert len(tickets) == len(set(tickets))


@given(slot_histories())
def test_the_author_never_holds_a_slot_nor_a_voter(history: tuple[TaskRecord, list[Event]]) -> None:
    for _, _, new in run(*history):
        if new is not None and new.state == "review":
            assert "author" not in holders(new)
            assert not set(holders(new)) & {v.reviewer for v in new.votes if v.round == new.reworks}


@given(slot_histories())
def test_votes_come_from_holders_or_take_a_free_slot(history: tuple[TaskRecord, list[Event]]) -> None:
    for old, event, new in run(*history):
        if isinstance(event, Approve | Veto) and old.state == "review" and event.epoch == old.epoch:
            if slot_of(old, event.actor) is None and free_slots(old) == 0:
                assert new is None, "a vote from a non-holder was accepted with every slot taken"
            if new is not None:
                hypothesis.event("holder voted" if slot_of(old, event.actor) else "voted into a free slot")


@given(slot_histories())
def test_a_slot_changes_hands_only_with_its_ticket(history: tuple[TaskRecord, list[Event]]) -> None:
    """A reviewer who held a slot and lost it without giving it back or voting lost it to
    a reviewing event naming that slot's ticket: no one is displaced any other way."""
    for old, event, new in run(*history):
        if new is None or new.state != "review":
            continue
        for slot in old.slots:
            if slot_of(new, slot.reviewer) is None and event.actor != slot.reviewer:
                assert isinstance(event, Reviewing) and not event.release
                assert slot.ticket is not None and event.ticket == slot.ticket
                hypothesis.event("a slot taken over")


@given(
    quorum=st.integers(1, 4),
    order=st.permutations(REVIEWERS),
    stale=st.integers(0, 3),
    verdict=st.sampled_from(["approve", "veto", "reviewing"]),
)
def test_a_stale_slot_holders_vote_is_refused(quorum: int, order: list[str], stale: int, verdict: str) -> None:
    """Every slot held; one holder's item was lent to another reviewer, who took the slot
    over: that holder's vote (or renewal) is refused as Fenced, and the quorum's slots
    stay as they are."""
    holders_ = order[:quorum]
    full = take(in_review(quorum=quorum), *holders_)
    victim, taker = holders_[stale % quorum], order[quorum]
    victim_slot = slot_of(full, victim)
    assert victim_slot is not None
    taken = apply(full, Reviewing(actor=taker, epoch=1, ticket=victim_slot.ticket), T0 + 30)
    event = {
        "approve": Approve(actor=victim, epoch=1),
        "veto": Veto(actor=victim, epoch=1, reasons=("late",)),
        "reviewing": Reviewing(actor=victim, epoch=1),
    }[verdict]
    with pytest.raises(Fenced):
        apply(taken, event, T0 + 31)
    assert taker in holders(taken) and victim not in holders(taken) and len(taken.slots) == quorum


@given(
    slot_histories(),
    st.sampled_from([*REVIEWERS, "author"]),
    TICKETS.filter(lambda t: t is not None),
    st.integers(0, 3),
)
def test_on_delivery_agrees_with_the_machine(
    history: tuple[TaskRecord, list[Event]], reviewer: str, ticket: int, slot: int
) -> None:
    """The delivery rule only asks for what the machine accepts: a Take is accepted and
    leaves the reviewer holding a slot under the item's ticket; a HandBack goes to the
    author, a reviewer that voted, or one already holding another slot; and a review in
    which the reviewer could take a slot under the item is never dropped."""
    steps = run(*history)
    record = (steps[-1][2] or steps[-1][0]) if steps else history[0]
    item = item_for(history[0], slot)
    decision = on_delivery(item, record, agent=reviewer, ticket=ticket)
    event = Reviewing(actor=reviewer, epoch=record.epoch, ticket=ticket)
    try:
        after: TaskRecord | None = apply(record, event, T0 + 1000)
    except TransitionError:
        after = None
    match decision:
        case Take(event=taken):
            assert taken == event
            assert after is not None and after.state == "review"
            mine = slot_of(after, reviewer)
            assert mine is not None and mine.ticket == ticket
            hypothesis.event("take")
        case HandBack():
            voted = any(v.reviewer == reviewer and v.round == record.reworks for v in record.votes)
            mine = slot_of(record, reviewer)
            assert reviewer == record.author or voted or (mine is not None and mine.ticket != ticket)
            hypothesis.event("hand back")
        case Drop():
            if record.state == "review" and slot_of(record, reviewer) is None:
                assert after is None
            hypothesis.event("drop")
