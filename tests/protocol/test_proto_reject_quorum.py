"""The last round (``ReviewPolicy.reject_quorum``): in the last review round a policy
allows, a result is rejected only by ``reject_quorum`` distinct vetoes; short of them
each veto opens its voter's slot to another reviewer, until the quorum approves.
Rule by rule, then as properties over arbitrary orders of distinct reviewers' votes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from protocol import (
    MAX_QUORUM,
    Approve,
    Claim,
    Expire,
    Finish,
    HandBack,
    LocalProtocolError,
    ReviewPolicy,
    Take,
    TaskRecord,
    TransitionError,
    Veto,
    apply,
    approvals,
    free_slots,
    judge_waiting,
    last_round,
    new_task,
    on_delivery,
    vetoes,
    work_items,
)

T0 = 1_700_000_000.0


def in_review(
    quorum: int = 1, reject_quorum: int = 2, max_reworks: int = 0, escalate_to: str | None = None
) -> TaskRecord:
    policy = ReviewPolicy(
        quorum=quorum, capability="check", max_reworks=max_reworks, reject_quorum=reject_quorum, escalate_to=escalate_to
    )
    record = new_task(task_id="T", capability="write", instruction="x", requester="client", now=T0, review=policy)
    record = apply(record, Claim(actor="author", ticket=1), T0 + 1)
    return apply(record, Finish(actor="author", epoch=record.epoch, result="v"), T0 + 2)


def veto(record: TaskRecord, reviewer: str, at: float = T0 + 3) -> TaskRecord:
    return apply(record, Veto(actor=reviewer, epoch=record.epoch, reasons=(f"{reviewer} says no",)), at)


def approve(record: TaskRecord, reviewer: str, at: float = T0 + 3) -> TaskRecord:
    return apply(record, Approve(actor=reviewer, epoch=record.epoch), at)


def test_one_veto_of_the_last_round_asks_another_reviewer() -> None:
    record = veto(in_review(reject_quorum=2), "r1")
    assert record.state == "review"
    assert vetoes(record) == {"r1"}
    assert free_slots(record) == 1
    assert record.feedback[-1].reviewer == "r1"  # the author of a later escalation sees it


def test_the_quorum_approves_over_a_veto() -> None:
    record = approve(veto(in_review(reject_quorum=2), "r1"), "r2")
    assert record.state == "done"


def test_reject_quorum_distinct_vetoes_reject() -> None:
    record = veto(veto(veto(in_review(reject_quorum=3), "r1"), "r2"), "r3")
    assert (record.state, record.reason) == ("failed", "rejected")
    assert "r3 says no" in record.error


def test_reject_quorum_vetoes_escalate_when_the_policy_says_so() -> None:
    record = veto(veto(in_review(reject_quorum=2, escalate_to="human.review"), "r1"), "r2")
    assert (record.state, record.capability, record.review) == ("open", "human.review", None)
    assert [v.reviewer for v in record.votes] == ["r1", "r2"]


def test_the_same_reviewer_cannot_veto_twice() -> None:
    record = veto(in_review(reject_quorum=2), "r1")
    try:
        veto(record, "r1")
    except TransitionError as e:
        assert "already voted" in str(e)
    else:
        raise AssertionError("a second veto by the same reviewer was accepted")


def test_the_vetoing_reviewer_hands_the_reopened_item_back() -> None:
    old = in_review(reject_quorum=2)
    new = veto(old, "r1")
    (item,) = work_items(old, new, 5)
    assert (item.kind, item.round, item.capability) == ("review", 0, "check")
    assert isinstance(on_delivery(item, new, agent="r1", ticket=9), HandBack)
    assert isinstance(on_delivery(item, new, agent="r2", ticket=9), Take)


def test_default_is_todays_rule_a_single_veto_ends_the_last_round() -> None:
    policy = ReviewPolicy(capability="check", max_reworks=0)
    assert policy.reject_quorum == 1
    record = veto(in_review(reject_quorum=1), "r1")
    assert (record.state, record.reason) == ("failed", "rejected")


def test_earlier_rounds_are_unchanged_a_veto_sends_back() -> None:
    record = veto(in_review(reject_quorum=3, max_reworks=1), "r1")
    assert (record.state, record.reworks) == ("open", 1)


def test_a_vetoed_last_round_nobody_takes_up_ends_on_its_vetoes() -> None:
    record = veto(in_review(reject_quorum=2), "r1", at=T0 + 3)
    expire = judge_waiting(record, actor="client", waited_s=record.claim_timeout_s, queue_active=True, now=T0 + 100)
    assert isinstance(expire, Expire)
    ended = apply(record, expire, T0 + 100)
    assert (ended.state, ended.reason) == ("failed", "rejected")


def test_a_policy_whose_last_round_would_overflow_the_votes_is_refused() -> None:
    policy = ReviewPolicy(quorum=MAX_QUORUM, reject_quorum=MAX_QUORUM, capability="check")
    try:
        new_task(task_id="T", capability="w", instruction="x", requester="c", now=T0, review=policy)
    except LocalProtocolError as e:
        assert "reject_quorum" in str(e)
    else:
        raise AssertionError("an unreadable policy was accepted")


# --- properties -------------------------------------------------------------------------

votes = st.lists(st.booleans(), min_size=1, max_size=24)  # True: approve


@given(
    quorum=st.integers(1, 4),
    reject_quorum=st.integers(1, 5),
    escalate=st.booleans(),
    ballots=votes,
)
def test_the_last_round_ends_at_whichever_quorum_is_reached_first(
    quorum: int, reject_quorum: int, escalate: bool, ballots: list[bool]
) -> None:
    record = in_review(quorum, reject_quorum, escalate_to="human.review" if escalate else None)
    assert last_round(record)
    published = len(work_items(None, record, 1))
    yes = no = 0
    for i, ballot in enumerate(ballots):
        if record.state != "review":
            break
        before = record
        record = approve(record, f"r{i}") if ballot else veto(record, f"r{i}")
        yes, no = yes + ballot, no + (not ballot)
        published += len(work_items(before, record, 2 + i))
        if record.state == "review":
            assert (len(approvals(record)), len(vetoes(record))) == (yes, no)
            assert yes < quorum and no < reject_quorum
            # Every reviewer still wanted has an item to find: the quorum's, and one per veto.
            assert published == quorum + no
            assert free_slots(record) == quorum - yes
    if yes >= quorum:
        assert record.state == "done"
    elif no >= reject_quorum:
        assert record.state == ("open" if escalate else "failed")
        assert record.reason == (None if escalate else "rejected")
    else:
        assert record.state == "review"


@given(reject_quorum=st.integers(1, 5), max_reworks=st.integers(1, 3), round_=st.integers(0, 2))
def test_a_veto_before_the_last_round_always_sends_back(reject_quorum: int, max_reworks: int, round_: int) -> None:
    record = in_review(reject_quorum=reject_quorum, max_reworks=max_reworks)
    for _ in range(min(round_, max_reworks - 1)):
        record = veto(record, "r0")
        record = apply(record, Claim(actor="author", ticket=1), T0 + 4)
        record = apply(record, Finish(actor="author", epoch=record.epoch, result="v"), T0 + 5)
    assert not last_round(record)
    sent_back = veto(record, "r1")
    assert (sent_back.state, sent_back.reworks) == ("open", record.reworks + 1)


@given(reject_quorum=st.integers(2, 5), repeats=st.integers(2, 4))
def test_one_reviewer_never_counts_twice(reject_quorum: int, repeats: int) -> None:
    record = veto(in_review(reject_quorum=reject_quorum), "naysayer")
    for _ in range(repeats):
        try:
            record = veto(record, "naysayer")
        except TransitionError:
            pass
    assert record.state == "review"
    assert vetoes(record) == {"naysayer"}
