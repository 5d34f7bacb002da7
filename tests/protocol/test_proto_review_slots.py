"""Review slots: a reviewer reserves one of the quorum's slots before it reviews, holds it
under a lease renewed by its ``reviewing`` heartbeats, and only then votes. Rule by rule,
then as properties over arbitrary sequences of takes, takeovers, renewals and votes."""

from __future__ import annotations

import hypothesis
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import (
    Approve,
    Cancel,
    Claim,
    Event,
    Fenced,
    Finish,
    Reviewing,
    ReviewPolicy,
    ReviewSlot,
    SlotsView,
    TaskRecord,
    TransitionError,
    Veto,
    apply,
    approvals,
    board_change,
    decode_record,
    encode,
    free_slots,
    new_task,
    offers_for,
    review_full,
    review_lease_s,
    slot_of,
    take_slot,
)

T0 = 1_700_000_000.0
REVIEWERS = ("r1", "r2", "r3", "r4", "r5")


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
    working = apply(record, Claim(actor="author"), T0 + 1)
    return apply(working, Finish(actor="author", epoch=1, result="v1"), T0 + 2)


def take(record: TaskRecord, *reviewers: str, at: float = T0 + 3) -> TaskRecord:
    for reviewer in reviewers:
        record = apply(record, Reviewing(actor=reviewer, epoch=record.epoch), at)
    return record


def holders(record: TaskRecord) -> list[str]:
    return [s.reviewer for s in record.slots]


# --- taking, renewing, giving back ------------------------------------------------------


def test_a_reviewer_takes_a_free_slot_before_reviewing() -> None:
    record = in_review(quorum=2)
    assert (free_slots(record), review_full(record)) == (2, False)
    one = take(record, "r1")
    assert one.slots == (ReviewSlot(reviewer="r1", beat=0, since=T0 + 3),)
    assert (one.state, free_slots(one), review_full(one)) == ("review", 1, False)
    two = take(one, "r2")
    assert (holders(two), free_slots(two), review_full(two)) == (["r1", "r2"], 0, True)


def test_k_slots_and_no_more() -> None:
    full = take(in_review(quorum=2), "r1", "r2")
    with pytest.raises(Fenced, match="every review slot is taken"):
        take(full, "r3")


def test_a_heartbeat_renews_the_holders_slot() -> None:
    record = take(in_review(quorum=2), "r1", "r2")
    renewed = apply(record, Reviewing(actor="r1", epoch=1), T0 + 9)
    assert slot_of(renewed, "r1") == ReviewSlot(reviewer="r1", beat=1, since=T0 + 3)
    assert slot_of(renewed, "r2") == slot_of(record, "r2")
    assert renewed.updated == T0 + 9


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
    with pytest.raises(Fenced, match="no review slot"):
        apply(released, Reviewing(actor="r1", epoch=1, release=True), T0 + 6)


def test_slots_are_fenced_by_the_epoch_of_the_result() -> None:
    with pytest.raises(Fenced):
        apply(in_review(), Reviewing(actor="r1", epoch=0), T0 + 3)


# --- takeover of a lapsed slot ------------------------------------------------------------


def test_a_lapsed_slot_is_taken_over_at_the_beat_observed() -> None:
    record = take(in_review(quorum=2), "r1", "r2")
    taken = apply(record, Reviewing(actor="r3", epoch=1, takes="r1", beat=0), T0 + 20)
    assert holders(taken) == ["r3", "r2"]
    assert slot_of(taken, "r3") == ReviewSlot(reviewer="r3", beat=0, since=T0 + 20)
    assert "took over the review slot of r1" in taken.progress


def test_a_holder_that_renewed_keeps_its_slot() -> None:
    record = apply(take(in_review(quorum=1), "r1"), Reviewing(actor="r1", epoch=1), T0 + 5)
    with pytest.raises(Fenced, match="stale"):
        apply(record, Reviewing(actor="r2", epoch=1, takes="r1", beat=0), T0 + 20)
    with pytest.raises(Fenced, match="holds no slot"):
        apply(record, Reviewing(actor="r2", epoch=1, takes="r9", beat=0), T0 + 20)


def test_a_free_slot_is_taken_before_anyone_is_displaced() -> None:
    record = take(in_review(quorum=2), "r1")
    taken = apply(record, Reviewing(actor="r2", epoch=1, takes="r1", beat=0), T0 + 20)
    assert holders(taken) == ["r1", "r2"]


# --- votes ----------------------------------------------------------------------------------


def test_a_holders_vote_spends_its_slot() -> None:
    record = take(in_review(quorum=2), "r1", "r2")
    one = apply(record, Approve(actor="r1", epoch=1), T0 + 5)
    assert (one.state, holders(one), sorted(approvals(one)), review_full(one)) == ("review", ["r2"], ["r1"], True)
    done = apply(one, Approve(actor="r2", epoch=1), T0 + 6)
    assert (done.state, done.slots) == ("done", ())


def test_a_vote_without_a_slot_takes_a_free_one_at_once() -> None:
    """People answering in an inbox and agents that do not reserve vote directly; the
    vote counts if a slot is free, so the quorum bound holds all the same."""
    record = take(in_review(quorum=2), "r1")
    voted = apply(record, Approve(actor="r2", epoch=1), T0 + 5)
    assert (holders(voted), sorted(approvals(voted)), review_full(voted)) == (["r1"], ["r2"], True)
    with pytest.raises(Fenced, match="not a review slot holder"):
        apply(voted, Approve(actor="r3", epoch=1), T0 + 6)
    with pytest.raises(Fenced, match="not a review slot holder"):
        apply(voted, Veto(actor="r3", epoch=1, reasons=("late",)), T0 + 6)


def test_a_stale_holders_vote_is_refused() -> None:
    record = take(in_review(quorum=1), "r1")
    taken = apply(record, Reviewing(actor="r2", epoch=1, takes="r1", beat=0), T0 + 20)
    for vote in (Approve(actor="r1", epoch=1), Veto(actor="r1", epoch=1, reasons=("late",))):
        with pytest.raises(Fenced, match="held by r2"):
            apply(taken, vote, T0 + 21)
    # Its heartbeat is refused too: that is how a stale reviewer learns to stop.
    with pytest.raises(Fenced):
        apply(taken, Reviewing(actor="r1", epoch=1), T0 + 21)
    assert apply(taken, Approve(actor="r2", epoch=1), T0 + 22).state == "done"


def test_a_veto_releases_every_slot_and_rework_starts_afresh() -> None:
    record = take(in_review(quorum=2, max_reworks=1), "r1", "r2")
    vetoed = apply(record, Veto(actor="r1", epoch=1, reasons=("wrong",)), T0 + 5)
    assert (vetoed.state, vetoed.slots, vetoed.reworks) == ("open", (), 1)
    again = apply(apply(vetoed, Claim(actor="b"), T0 + 6), Finish(actor="b", epoch=2, result="v2"), T0 + 7)
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


# --- the lease of a slot, judged by an observer ---------------------------------------------


def test_slot_lease_is_the_owner_lease_within_a_quarter_of_the_claim_timeout() -> None:
    assert review_lease_s(in_review(lease_s=10.0, claim_timeout_s=10.0)) == 2.5
    assert review_lease_s(in_review(lease_s=1.0, claim_timeout_s=10.0)) == 1.0
    assert review_lease_s(in_review(lease_s=30.0, claim_timeout_s=600.0)) == 30.0


def test_a_slot_lapses_after_its_lease_unchanged_on_the_observer_clock() -> None:
    record = take(in_review(quorum=2), "r1", "r2")
    view = SlotsView(lease_s=2.0).observe(record.slots, 100.0)
    assert (view.lapsed(101.9), view.due(101.9)) == ((), 102.0)
    # r2 renews, r1 does not: only r1 lapses.
    renewed = apply(record, Reviewing(actor="r2", epoch=1), T0 + 4)
    view = view.observe(renewed.slots, 101.0)
    assert view.lapsed(102.0) == (slot_of(renewed, "r1"),)
    assert view.due(102.0) == 103.0


def test_a_reviewer_that_retakes_a_slot_does_not_look_unchanged() -> None:
    record = take(in_review(quorum=1), "r1", at=T0 + 3)
    view = SlotsView(lease_s=2.0).observe(record.slots, 100.0)
    released = apply(record, Reviewing(actor="r1", epoch=1, release=True), T0 + 4)
    retaken = take(released, "r1", at=T0 + 5)  # same reviewer, same beat, new since
    assert view.observe(retaken.slots, 101.5).lapsed(102.5) == ()


def test_take_slot_chooses_renew_free_takeover_or_nothing() -> None:
    record = take(in_review(quorum=1), "r1")
    assert take_slot(record, "r1") == Reviewing(actor="r1", epoch=1)
    assert take_slot(record, "r2") is None
    lapsed = slot_of(record, "r1")
    assert lapsed is not None
    assert take_slot(record, "r2", (lapsed,)) == Reviewing(actor="r2", epoch=1, takes="r1", beat=0)
    # A lapse judged on an older view of the slot is no lapse.
    renewed = apply(record, Reviewing(actor="r1", epoch=1), T0 + 5)
    assert take_slot(renewed, "r2", (lapsed,)) is None
    assert take_slot(record, "author", (lapsed,)) is None
    assert take_slot(in_review(quorum=1), "r2") == Reviewing(actor="r2", epoch=1)
    assert take_slot(apply(record, Cancel(actor="client"), T0 + 5), "r2", (lapsed,)) is None


# --- the board -------------------------------------------------------------------------------


def test_a_full_review_is_offered_as_full_and_freed_again() -> None:
    record = in_review(quorum=1, lease_s=10.0, claim_timeout_s=10.0)
    offer = offers_for(record, 3)["check"]
    assert (offer.state, offer.full, offer.lease_s) == ("review", False, 2.5)
    full = take(record, "r1")
    change = board_change(record, full, 4)
    assert change.put["check"].full and change.delete == ()
    renewed = apply(full, Reviewing(actor="r1", epoch=1), T0 + 5)
    assert board_change(full, renewed, 5).put == {}  # heartbeats are not broadcast
    taken = apply(renewed, Reviewing(actor="r2", epoch=1, takes="r1", beat=1), T0 + 20)
    assert board_change(renewed, taken, 6).put == {}  # still full: nobody else needs to act
    released = apply(taken, Reviewing(actor="r2", epoch=1, release=True), T0 + 21)
    assert board_change(taken, released, 7).put["check"].full is False


# --- properties --------------------------------------------------------------------------------


@st.composite
def slot_histories(draw: st.DrawFn) -> tuple[TaskRecord, list[Event]]:
    """A record in review and a sequence of slot and vote events by any reviewer, the
    author included, with right and wrong epochs, beats and holders."""
    record = in_review(quorum=draw(st.integers(1, 4)), max_reworks=draw(st.integers(0, 2)))
    actors = st.sampled_from([*REVIEWERS, "author"])
    events = draw(
        st.lists(
            st.one_of(
                st.builds(Reviewing, actor=actors, epoch=st.sampled_from([1, 1, 1, 0])),
                st.builds(
                    Reviewing,
                    actor=actors,
                    epoch=st.just(1),
                    takes=actors,
                    beat=st.integers(0, 3),
                ),
                st.builds(Reviewing, actor=actors, epoch=st.just(1), release=st.just(True)),
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


@given(
    quorum=st.integers(1, 4),
    order=st.permutations(REVIEWERS),
    stale=st.integers(0, 3),
    verdict=st.sampled_from(["approve", "veto", "reviewing"]),
)
def test_a_stale_slot_holders_vote_is_refused(quorum: int, order: list[str], stale: int, verdict: str) -> None:
    """Every slot held; one holder's slot lapsed and was taken over: that holder's vote
    (or heartbeat) is refused as Fenced, and the quorum's slots stay as they are."""
    holders_ = order[:quorum]
    full = take(in_review(quorum=quorum), *holders_)
    victim, taker = holders_[stale % quorum], order[quorum]
    taken = apply(full, Reviewing(actor=taker, epoch=1, takes=victim, beat=0), T0 + 30)
    event = {
        "approve": Approve(actor=victim, epoch=1),
        "veto": Veto(actor=victim, epoch=1, reasons=("late",)),
        "reviewing": Reviewing(actor=victim, epoch=1),
    }[verdict]
    with pytest.raises(Fenced):
        apply(taken, event, T0 + 31)
    assert taker in holders(taken) and victim not in holders(taken) and len(taken.slots) == quorum


@given(slot_histories(), st.sampled_from([*REVIEWERS, "author"]), st.data())
def test_take_slot_agrees_with_the_machine(
    history: tuple[TaskRecord, list[Event]], reviewer: str, data: st.DataObject
) -> None:
    """The runtime's decision (take_slot) is exactly what the state machine accepts: an
    event it returns is accepted and leaves the reviewer holding a slot; without lapsed
    slots it returns None exactly when a plain take is refused."""
    steps = run(*history)
    record = steps[-1][2] or steps[-1][0] if steps else history[0]
    lapsed = tuple(data.draw(st.lists(st.sampled_from(record.slots), unique=True))) if record.slots else ()
    event = take_slot(record, reviewer, lapsed)
    if event is not None:
        after = apply(record, event, T0 + 1000)
        assert slot_of(after, reviewer) is not None
        assert len(after.slots) + len(approvals(after)) <= (record.review.quorum if record.review else 0)
    plain = take_slot(record, reviewer)
    try:
        apply(record, Reviewing(actor=reviewer, epoch=record.epoch), T0 + 1000)
        accepted = True
    except TransitionError:
        accepted = False
    assert (plain is not None) == accepted


@given(
    lease=st.floats(0.1, 100.0),
    beats=st.lists(st.tuples(st.floats(0.0, 50.0), st.booleans()), min_size=1, max_size=20),
)
def test_a_slot_lapses_only_after_lease_s_without_a_renewal_seen(lease: float, beats: list[tuple[float, bool]]) -> None:
    """Observations at increasing local times, the holder renewing (or not) in between:
    the slot has lapsed exactly when the observer saw it unchanged for ``lease``."""
    slot = ReviewSlot(reviewer="r1", since=T0)
    view = SlotsView(lease_s=lease).observe((slot,), 0.0)
    changed_at, now = 0.0, 0.0
    for dt, renewed in beats:
        now += dt
        if renewed:
            slot = msgspec.structs.replace(slot, beat=slot.beat + 1)
            changed_at = now
        view = view.observe((slot,), now)
        assert bool(view.lapsed(now)) == (now - changed_at >= lease)
        assert view.due(now) == (None if now - changed_at >= lease else changed_at + lease)
