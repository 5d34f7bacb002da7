"""The task state machine, rule by rule: the table, fencing, takeovers by ticket, review,
deadline, budget and expiry."""

from __future__ import annotations

import itertools

import msgspec
import pytest

from protocol import (
    EVENT_KINDS,
    REASONS,
    TERMINAL_STATES,
    TRANSITIONS,
    AddChild,
    Approve,
    Budget,
    Cancel,
    Charge,
    Claim,
    Event,
    Expire,
    Fail,
    Fenced,
    Finish,
    Release,
    Renew,
    Reviewing,
    ReviewPolicy,
    TaskRecord,
    TransitionError,
    Usage,
    Veto,
    apply,
    approvals,
    event_kind,
    is_terminal,
    new_task,
)

T0 = 1_700_000_000.0
#: the work item the first owner holds (its sequence in the work stream)
TICKET = 41
STATES = ("open", "working", "review", "done", "failed", "cancelled")


def opened(**kwargs: object) -> TaskRecord:
    args: dict[str, object] = {
        "task_id": "T",
        "capability": "x",
        "instruction": "do it",
        "requester": "client",
        "now": T0,
    }
    args.update(kwargs)
    return new_task(**args)  # type: ignore[arg-type]


def working(**kwargs: object) -> TaskRecord:
    return apply(opened(**kwargs), Claim(actor="a", ticket=TICKET), T0 + 1)


def in_review(quorum: int = 2, max_reworks: int = 1, escalate_to: str | None = None, **kwargs: object) -> TaskRecord:
    record = working(
        review=ReviewPolicy(quorum=quorum, capability="check", max_reworks=max_reworks, escalate_to=escalate_to),
        **kwargs,
    )
    return apply(record, Finish(actor="a", epoch=record.epoch, result="v1"), T0 + 2)


def sample(kind: str, record: TaskRecord, actor: str | None = None) -> Event:
    """A well-formed event of ``kind`` by the party that would normally make it."""
    owner = actor or record.owner or "a"
    epoch = record.epoch
    events: dict[str, Event] = {
        "claim": Claim(actor=actor or "b", ticket=TICKET),
        "renew": Renew(actor=owner, epoch=epoch),
        "add_child": AddChild(actor=owner, epoch=epoch, child="C"),
        "finish": Finish(actor=owner, epoch=epoch, result="r"),
        "fail": Fail(actor=owner, epoch=epoch, reason="error", message="boom"),
        "release": Release(actor=owner, epoch=epoch),
        "reviewing": Reviewing(actor=actor or "r1", epoch=epoch, ticket=51),
        "approve": Approve(actor=actor or "r1", epoch=epoch),
        "veto": Veto(actor=actor or "r1", epoch=epoch, reasons=("wrong",)),
        "charge": Charge(actor=owner, epoch=epoch, usage=Usage(tokens=1)),
        "cancel": Cancel(actor=actor or "client"),
        "expire": Expire(actor=actor or "observer", reason="no_agent"),
    }
    return events[kind]


def record_in(state: str) -> TaskRecord:
    match state:
        case "open":
            return opened()
        case "working":
            return working()
        case "review":
            return in_review()
        case "done":
            r = working()
            return apply(r, Finish(actor="a", epoch=r.epoch), T0 + 2)
        case "failed":
            r = working()
            return apply(r, Fail(actor="a", epoch=r.epoch), T0 + 2)
        case _:
            return apply(opened(), Cancel(actor="client"), T0 + 2)


# --- the table ---------------------------------------------------------------------------


def test_table_is_over_known_states_and_events() -> None:
    for (state, kind), targets in TRANSITIONS.items():
        assert state in STATES and state not in TERMINAL_STATES
        assert kind in EVENT_KINDS
        assert targets and set(targets) <= set(STATES)
    assert set(EVENT_KINDS) == {event_kind(sample(k, working())) for k in EVENT_KINDS}


def test_cancel_is_legal_in_every_non_terminal_state() -> None:
    for state in STATES:
        assert ((state, "cancel") in TRANSITIONS) == (state not in TERMINAL_STATES)


@pytest.mark.parametrize(("state", "kind"), [p for p in itertools.product(STATES, EVENT_KINDS) if p not in TRANSITIONS])
def test_pairs_outside_the_table_are_refused(state: str, kind: str) -> None:
    record = record_in(state)
    event = sample(kind, record)
    with pytest.raises(TransitionError) as info:
        apply(record, event, T0 + 5)
    err = info.value
    assert (err.state, err.event, err.actor) == (state, kind, event.actor)
    assert state in str(err) and kind in str(err) and event.actor in str(err)
    if state in TERMINAL_STATES:
        assert "terminal" in err.why


@pytest.mark.parametrize("state", sorted(TERMINAL_STATES))
def test_terminal_records_refuse_everything_even_past_the_deadline(state: str) -> None:
    record = msgspec.structs.replace(record_in(state), deadline=T0 + 3)
    for kind in EVENT_KINDS:
        with pytest.raises(TransitionError, match="terminal"):
            apply(record, sample(kind, record), T0 + 100)
    assert is_terminal(record)


# --- claim, renew, release -------------------------------------------------------------------


def test_claim_sets_owner_next_epoch_and_ticket() -> None:
    record = opened()
    claimed = apply(record, Claim(actor="a", ticket=TICKET), T0 + 1)
    assert (claimed.state, claimed.owner, claimed.epoch, claimed.attempts, claimed.ticket, claimed.updated) == (
        "working",
        "a",
        1,
        1,
        TICKET,
        T0 + 1,
    )
    assert (claimed.progress, claimed.progress_at, claimed.lapses) == ("", T0 + 1, 0)
    released = apply(claimed, Release(actor="a", epoch=1, note="draining"), T0 + 2)
    assert (released.state, released.owner, released.epoch, released.ticket, released.progress) == (
        "open",
        None,
        1,
        None,
        "draining",
    )
    # The released item goes back to the queue: the next agent claims under the same ticket.
    again = apply(released, Claim(actor="b", ticket=TICKET), T0 + 3)
    assert (again.owner, again.epoch, again.attempts, again.ticket, again.lapses) == ("b", 2, 2, TICKET, 0)


def test_a_party_holding_no_item_claims_with_no_ticket() -> None:
    held = apply(opened(), Claim(actor="alice"), T0 + 1)
    assert (held.state, held.owner, held.ticket) == ("working", "alice", None)
    assert apply(held, Finish(actor="alice", epoch=1, result="answer"), T0 + 2).state == "done"


def test_renew_records_progress_and_checkpoint() -> None:
    record = working()
    renewed = apply(record, Renew(actor="a", epoch=1, progress="half", checkpoint={"page": 3}), T0 + 2)
    assert (renewed.state, renewed.progress, renewed.checkpoint, renewed.updated) == (
        "working",
        "half",
        {"page": 3},
        T0 + 2,
    )
    kept = apply(renewed, Renew(actor="a", epoch=1), T0 + 3)
    assert (kept.progress, kept.checkpoint) == ("half", {"page": 3})


def test_add_child_is_idempotent() -> None:
    record = working()
    once = apply(record, AddChild(actor="a", epoch=1, child="C1"), T0 + 2)
    twice = apply(once, AddChild(actor="a", epoch=1, child="C1"), T0 + 3)
    assert once.children == twice.children == ("C1",)
    assert apply(twice, AddChild(actor="a", epoch=1, child="C2"), T0 + 4).children == ("C1", "C2")


# --- fencing -----------------------------------------------------------------------------


OWNER_KINDS = ("renew", "add_child", "finish", "fail", "release", "charge")


@pytest.mark.parametrize("kind", OWNER_KINDS)
def test_owner_events_from_a_non_owner_are_fenced(kind: str) -> None:
    record = working()
    with pytest.raises(Fenced, match="not the owner"):
        apply(record, sample(kind, record, actor="intruder"), T0 + 2)


@pytest.mark.parametrize("kind", OWNER_KINDS)
def test_owner_events_with_a_stale_epoch_are_fenced(kind: str) -> None:
    # a claimed under item 41, its lease lapsed, the broker lent item 41 to b, b took the
    # task over: a's writes carry epoch 1, the record is at 2.
    taken = apply(working(), Claim(actor="b", ticket=TICKET), T0 + 21)
    stale = msgspec.structs.replace(sample(kind, taken, actor="b"), epoch=1)
    with pytest.raises(Fenced, match="stale epoch 1"):
        apply(taken, stale, T0 + 22)
    # and the old owner itself is no longer the owner
    with pytest.raises(Fenced):
        apply(taken, msgspec.structs.replace(sample(kind, taken, actor="a"), epoch=1), T0 + 22)


def test_fenced_is_a_transition_error() -> None:
    assert issubclass(Fenced, TransitionError)


# --- takeover by ticket ---------------------------------------------------------------------


def test_a_takeover_needs_the_owners_work_item() -> None:
    record = working()
    taken = apply(record, Claim(actor="b", ticket=TICKET), T0 + 20)
    assert (taken.state, taken.owner, taken.epoch, taken.attempts, taken.ticket, taken.lapses) == (
        "working",
        "b",
        2,
        2,
        TICKET,
        1,
    )
    assert "taken over from a" in taken.progress
    for ticket in (None, TICKET + 1, 0):
        with pytest.raises(Fenced, match="under work item 41") as info:
            apply(record, Claim(actor="b", ticket=ticket), T0 + 20)
        assert (info.value.state, info.value.event, info.value.actor) == ("working", "claim", "b")


def test_a_task_held_without_an_item_cannot_be_taken_over() -> None:
    """A person's hold has no work item, so no delivery can prove it lapsed."""
    held = apply(opened(), Claim(actor="alice"), T0 + 1)
    for ticket in (None, TICKET):
        with pytest.raises(Fenced):
            apply(held, Claim(actor="b", ticket=ticket), T0 + 2)


def test_the_owner_that_gets_its_own_item_back_takes_over_from_itself() -> None:
    """A restarted agent (same id) receives its old item again: a new epoch, fencing the
    writes of its previous life."""
    again = apply(working(), Claim(actor="a", ticket=TICKET), T0 + 20)
    assert (again.owner, again.epoch, again.lapses) == ("a", 2, 1)
    with pytest.raises(Fenced, match="stale epoch"):
        apply(again, Finish(actor="a", epoch=1), T0 + 21)


def test_takeovers_past_max_lapses_fail_with_error() -> None:
    record = working()
    assert record.max_lapses == 3
    for i in range(2):
        record = apply(record, Claim(actor=f"x{i}", ticket=TICKET), T0 + 10 * i + 5)
        assert (record.state, record.lapses, record.epoch) == ("working", i + 1, i + 2)
    final = apply(record, Claim(actor="x9", ticket=TICKET), T0 + 50)
    assert (final.state, final.reason, final.lapses) == ("failed", "error", 3)
    assert (final.owner, final.epoch) == (record.owner, record.epoch)  # the lost owner stays on record
    assert "3 times" in final.error


def test_max_lapses_one_fails_at_the_first_takeover() -> None:
    record = msgspec.structs.replace(working(), max_lapses=1)
    assert apply(record, Claim(actor="o", ticket=TICKET), T0 + 5).reason == "error"


def test_a_released_task_is_claimed_afresh_not_taken_over() -> None:
    released = apply(working(), Release(actor="a", epoch=1), T0 + 5)
    claimed = apply(released, Claim(actor="b", ticket=TICKET), T0 + 6)
    assert claimed.lapses == 0


# --- finishing and failing ----------------------------------------------------------------


def test_finish_without_review_is_done() -> None:
    record = working()
    done = apply(record, Finish(actor="a", epoch=1, result={"summary": "ok"}), T0 + 2)
    assert (done.state, done.result, done.author, done.reason) == ("done", {"summary": "ok"}, "a", None)


def test_fail_records_reason_and_message() -> None:
    record = working()
    failed = apply(record, Fail(actor="a", epoch=1, reason="rejected", message="cannot"), T0 + 2)
    assert (failed.state, failed.reason, failed.error) == ("failed", "rejected", "cannot")


def test_charge_within_and_over_budget() -> None:
    record = working(budget=Budget(tokens=100, cost=1.0))
    charged = apply(record, Charge(actor="a", epoch=1, usage=Usage(tokens=60, cost=0.5)), T0 + 2)
    assert (charged.state, charged.spent) == ("working", Usage(tokens=60, cost=0.5))
    exact = apply(charged, Charge(actor="a", epoch=1, usage=Usage(tokens=40, cost=0.5)), T0 + 3)
    assert exact.state == "working"  # spending exactly the budget is allowed
    over = apply(exact, Charge(actor="a", epoch=1, usage=Usage(tokens=1)), T0 + 4)
    assert (over.state, over.reason) == ("failed", "budget")
    assert over.spent.tokens == 101
    cost_over = apply(charged, Charge(actor="a", epoch=1, usage=Usage(cost=0.6)), T0 + 3)
    assert (cost_over.state, cost_over.reason) == ("failed", "budget")


def test_charge_without_budget_only_counts() -> None:
    record = working()
    charged = apply(record, Charge(actor="a", epoch=1, usage=Usage(tokens=10**9, cost=1e9)), T0 + 2)
    assert charged.state == "working"


# --- review -------------------------------------------------------------------------------


def test_finish_with_review_goes_to_review() -> None:
    record = in_review()
    assert (record.state, record.author, record.result, record.votes) == ("review", "a", "v1", ())


def test_quorum_of_distinct_non_author_reviewers() -> None:
    record = in_review(quorum=2)
    one = apply(record, Approve(actor="r1", epoch=1), T0 + 3)
    assert one.state == "review"
    assert approvals(one) == {"r1"}
    with pytest.raises(TransitionError, match="already voted"):
        apply(one, Approve(actor="r1", epoch=1), T0 + 4)
    with pytest.raises(TransitionError, match="already voted"):
        apply(one, Veto(actor="r1", epoch=1, reasons=("changed my mind",)), T0 + 4)
    two = apply(one, Approve(actor="r2", epoch=1), T0 + 4)
    assert two.state == "done"
    assert approvals(two) == {"r1", "r2"}
    assert [v.round for v in two.votes] == [0, 0]


def test_the_author_may_not_vote() -> None:
    record = in_review(quorum=1)
    with pytest.raises(TransitionError, match="author") as info:
        apply(record, Approve(actor="a", epoch=1), T0 + 3)
    assert not isinstance(info.value, Fenced)
    with pytest.raises(TransitionError, match="author"):
        apply(record, Veto(actor="a", epoch=1, reasons=("x",)), T0 + 3)


def test_vote_on_another_epoch_is_fenced() -> None:
    record = in_review()
    with pytest.raises(Fenced):
        apply(record, Approve(actor="r1", epoch=0), T0 + 3)
    with pytest.raises(Fenced):
        apply(record, Veto(actor="r1", epoch=2, reasons=("x",)), T0 + 3)


@pytest.mark.parametrize("reasons", [(), ("",), ("  ",), ("ok", "")])
def test_veto_requires_reasons(reasons: tuple[str, ...]) -> None:
    with pytest.raises(TransitionError, match="reason"):
        apply(in_review(), Veto(actor="r1", epoch=1, reasons=reasons), T0 + 3)


def test_veto_sends_back_for_rework_with_feedback() -> None:
    record = in_review(quorum=2, max_reworks=1)
    approved = apply(record, Approve(actor="r1", epoch=1), T0 + 3)
    vetoed = apply(approved, Veto(actor="r2", epoch=1, reasons=("cite sources",)), T0 + 4)
    assert (vetoed.state, vetoed.owner, vetoed.reworks, vetoed.votes) == ("open", None, 1, ())
    assert [(v.reviewer, v.reasons) for v in vetoed.feedback] == [("r2", ("cite sources",))]
    assert vetoed.result == "v1"  # kept for the reworking owner to improve
    # Round two: the old approval does not count.
    assert vetoed.ticket is None  # the rework has a new item
    reclaimed = apply(vetoed, Claim(actor="b", ticket=61), T0 + 5)
    resubmitted = apply(reclaimed, Finish(actor="b", epoch=2, result="v2"), T0 + 6)
    assert (resubmitted.state, resubmitted.author, approvals(resubmitted)) == ("review", "b", frozenset())
    # The first author may now review the second author's work.
    assert apply(resubmitted, Approve(actor="a", epoch=2), T0 + 7).state == "review"


def test_past_max_reworks_without_escalation_fails_rejected() -> None:
    record = in_review(quorum=1, max_reworks=0)
    failed = apply(record, Veto(actor="r1", epoch=1, reasons=("wrong", "incomplete")), T0 + 3)
    assert (failed.state, failed.reason) == ("failed", "rejected")
    assert failed.error == "wrong; incomplete"
    assert len(failed.feedback) == 1


def test_past_max_reworks_escalates() -> None:
    record = in_review(quorum=1, max_reworks=0, escalate_to="human.review")
    escalated = apply(record, Veto(actor="r1", epoch=1, reasons=("unsure",)), T0 + 3)
    assert (escalated.state, escalated.capability, escalated.review, escalated.owner, escalated.ticket) == (
        "open",
        "human.review",
        None,
        None,
        None,
    )
    assert escalated.claim_timeout_s == ReviewPolicy().escalation_timeout_s
    assert escalated.reworks == 0
    assert "escalated" in escalated.progress
    # The escalation's answer is final: no review.
    human = apply(escalated, Claim(actor="alice"), T0 + 4)
    done = apply(human, Finish(actor="alice", epoch=human.epoch, result="fine"), T0 + 5)
    assert (done.state, done.result) == ("done", "fine")


def test_rework_bound_counts_rounds() -> None:
    record = in_review(quorum=1, max_reworks=2)
    for round_ in range(2):
        record = apply(record, Veto(actor="r1", epoch=record.epoch, reasons=(f"round {round_}",)), T0 + 3)
        assert (record.state, record.reworks) == ("open", round_ + 1)
        record = apply(record, Claim(actor="a", ticket=60 + round_), T0 + 4)
        record = apply(record, Finish(actor="a", epoch=record.epoch), T0 + 5)
    final = apply(record, Veto(actor="r1", epoch=record.epoch, reasons=("still",)), T0 + 6)
    assert (final.state, final.reason) == ("failed", "rejected")
    assert len(final.feedback) == 3


# --- deadline and expiry ------------------------------------------------------------------


@pytest.mark.parametrize(("state", "kind"), sorted(p for p in TRANSITIONS if p[1] != "cancel"))
def test_any_event_at_or_after_the_deadline_fails_with_deadline(state: str, kind: str) -> None:
    record = msgspec.structs.replace(record_in(state), deadline=T0 + 10)
    for now in (T0 + 10, T0 + 1000):
        # Even a refused actor or a stale epoch: a late task ends, whoever notices.
        for actor in (None, "stranger"):
            ended = apply(record, sample(kind, record, actor=actor), now)
            assert (ended.state, ended.reason, ended.updated) == ("failed", "deadline", now)


@pytest.mark.parametrize("state", ["open", "working", "review"])
def test_cancel_wins_over_the_deadline(state: str) -> None:
    record = msgspec.structs.replace(record_in(state), deadline=T0 + 10)
    cancelled = apply(record, Cancel(actor="client", note="stop"), T0 + 100)
    assert (cancelled.state, cancelled.reason, cancelled.error) == ("cancelled", "cancelled", "stop")


def test_expire_deadline_before_the_deadline_is_refused() -> None:
    record = msgspec.structs.replace(opened(), deadline=T0 + 10)
    with pytest.raises(TransitionError, match="deadline has not passed"):
        apply(record, Expire(actor="obs", reason="deadline"), T0 + 9.999)
    with pytest.raises(TransitionError, match="deadline has not passed"):
        apply(opened(), Expire(actor="obs", reason="deadline"), T0 + 10**6)  # no deadline at all


def test_expire_no_agent_only_when_no_agent_holds_the_task() -> None:
    expired = apply(opened(), Expire(actor="obs", reason="no_agent"), T0 + 11)
    assert (expired.state, expired.reason) == ("failed", "no_agent")
    # An agent's hold is the broker's to watch (the lease on its work item).
    with pytest.raises(TransitionError, match="no agent holds") as info:
        apply(working(), Expire(actor="obs", reason="no_agent"), T0 + 11)
    assert not isinstance(info.value, Fenced)
    # A hold without an item (a person, a client answering a question) is judged by the
    # task's parties: it ends no_agent once its holder stops writing.
    held = apply(opened(), Claim(actor="alice"), T0 + 1)
    lost = apply(held, Expire(actor="obs", reason="no_agent"), T0 + 20)
    assert (lost.state, lost.reason) == ("failed", "no_agent")
    assert "alice" in lost.error
    # A task waiting for reviewers that never come is not held by anyone either.
    assert apply(in_review(), Expire(actor="obs", reason="no_agent"), T0 + 11).reason == "no_agent"


# --- outcomes -------------------------------------------------------------------------------


def test_every_failure_reason_is_in_the_closed_set() -> None:
    assert set(REASONS) == {"hop_limit", "deadline", "budget", "no_agent", "rejected", "loop", "error", "cancelled"}
    seen = set()
    for state, kind in TRANSITIONS:
        for deadline in (None, T0 + 3):
            record = msgspec.structs.replace(record_in(state), deadline=deadline)
            try:
                new = apply(record, sample(kind, record), T0 + 5)
            except TransitionError:
                continue
            if new.state == "failed":
                assert new.reason in REASONS
                seen.add(new.reason)
    assert {"deadline", "no_agent", "error"} <= seen


def test_apply_never_mutates_its_input() -> None:
    record = working()
    before = msgspec.json.encode(record)
    apply(record, Finish(actor="a", epoch=1, result=[1, 2]), T0 + 2)
    assert msgspec.json.encode(record) == before
