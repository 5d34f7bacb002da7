"""The agent core (protocol/core.py): every decision an agent makes about its work
items, exercised without a broker."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from proto_strategies import records

from protocol import (
    REVIEW_HAND_BACK_S,
    Ack,
    AgentCore,
    Claim,
    DropItem,
    Finish,
    GiveBack,
    Leave,
    ReadRecord,
    Refuse,
    RenewLease,
    RenewOwn,
    Review,
    Reviewing,
    ReviewPolicy,
    TaskRecord,
    Work,
    WorkItem,
    WriteClaim,
    apply,
    is_terminal,
    new_task,
    renew_every,
    settle_review,
    settle_work,
    work_items,
)

T0 = 1_700_000_000.0
LEASE = 10.0


def core(**kwargs: object) -> AgentCore:
    options: dict[str, object] = {"agent": "me", "serves": ("summarize",), "capacity": 4, "reviews": True}
    options.update(kwargs)
    c = AgentCore(**options)  # type: ignore[arg-type]
    c.on_reconnect(-1000.0)  # connected long ago
    return c


def open_task(capability: str = "summarize.medical", **kwargs: object) -> TaskRecord:
    return new_task(task_id="T1", capability=capability, instruction="x", requester="client", now=T0, **kwargs)  # type: ignore[arg-type]


def item_for(record: TaskRecord, revision: int = 0) -> WorkItem:
    return work_items(None, record, revision)[0]


# --- receiving an item --------------------------------------------------------------------


def test_a_first_delivery_of_an_open_task_is_worked_with_a_lazy_claim() -> None:
    c, record = core(), open_task()
    action = c.receive(item_for(record), ticket=7, delivered=1, lease_s=LEASE, now=0.0)
    assert action == Work(Claim(actor="me", ticket=7, item_lease_s=LEASE), claim_first=False, fill_trail=False)


def test_an_item_outside_the_brief_is_refused() -> None:
    action = core().receive(item_for(open_task("translate")), ticket=7, delivered=1, lease_s=LEASE, now=0.0)
    assert isinstance(action, Refuse) and "translate" in action.why


def test_review_items_go_back_from_agents_that_do_not_review() -> None:
    record = open_task(review=ReviewPolicy(capability="summarize.review"))
    claimed = apply(record, Claim(actor="author", ticket=3), T0 + 1)
    in_review = apply(claimed, Finish(actor="author", epoch=1, result="r"), T0 + 2)
    item = work_items(claimed, in_review, 5)[0]
    assert core(reviews=False).receive(item, ticket=9, delivered=1, lease_s=LEASE, now=0.0) == GiveBack(
        "we do not review", REVIEW_HAND_BACK_S
    )
    reviewer = core()
    assert reviewer.receive(item, ticket=9, delivered=1, lease_s=LEASE, now=0.0) == Review(
        Reviewing(actor="me", epoch=1, ticket=9)
    )
    reviewer.hold(9, task="T1", kind="review", lease_s=LEASE, claim_timeout_s=10.0, now=0.0)
    # The round's second slot reaches the same reviewer: for another one to take.
    second = work_items(claimed, in_review, 5)[0]
    got = reviewer.receive(second, ticket=10, delivered=1, lease_s=LEASE, now=0.0)
    assert isinstance(got, GiveBack) and got.wait_s == REVIEW_HAND_BACK_S


def test_our_own_item_lent_back_to_us_is_renewed_not_worked_twice() -> None:
    c, record = core(), open_task()
    c.hold(7, task=record.id, kind="work", lease_s=LEASE, claim_timeout_s=10.0, now=0.0)
    assert c.receive(item_for(record), ticket=7, delivered=2, lease_s=LEASE, now=5.0) == RenewOwn(7)


def test_a_redelivered_item_is_decided_on_the_record_read_afresh() -> None:
    assert core().receive(item_for(open_task()), ticket=7, delivered=2, lease_s=LEASE, now=0.0) == ReadRecord()


# --- deciding on the record ----------------------------------------------------------------


def test_a_takeover_waits_a_lease_after_our_connection_then_claims_first_and_fills_the_trail() -> None:
    record = apply(open_task(), Claim(actor="dead", ticket=7), T0 + 1)
    c = core()
    c.on_reconnect(100.0)
    item = item_for(open_task())
    early = c.decide(item, record, 3, ticket=7, delivered=2, lease_s=LEASE, now=104.0)
    assert isinstance(early, GiveBack) and math.isclose(early.wait_s, 6.0)
    later = c.decide(item, record, 3, ticket=7, delivered=2, lease_s=LEASE, now=110.5)
    assert later == Work(Claim(actor="me", ticket=7, item_lease_s=LEASE), claim_first=True, fill_trail=True)


def test_an_item_of_an_ended_task_is_dropped_and_a_redelivered_one_checks_the_trail() -> None:
    done = apply(apply(open_task(), Claim(actor="a", ticket=7), T0 + 1), Finish(actor="a", epoch=1), T0 + 2)
    item = item_for(open_task())
    first = core().decide(item, done, 4, ticket=7, delivered=1, lease_s=LEASE, now=0.0)
    again = core().decide(item, done, 4, ticket=7, delivered=2, lease_s=LEASE, now=0.0)
    assert isinstance(first, DropItem) and not first.fill_trail
    assert isinstance(again, DropItem) and again.fill_trail


@given(records(), st.integers(min_value=1, max_value=5), st.floats(min_value=0, max_value=100))
def test_never_takes_over_within_a_lease_of_its_connection(record: TaskRecord, delivered: int, since: float) -> None:
    """An outage is not a lapse: whatever the record, no takeover of another owner's
    task is decided less than a lease after the agent (re)connected."""
    c = core()
    c.on_reconnect(1000.0)
    ticket = record.ticket if record.ticket is not None else 1
    item = WorkItem(task=record.id, capability=record.capability, revision=1, record=record)
    action = c.decide(item, record, 1, ticket=ticket, delivered=delivered, lease_s=LEASE, now=1000.0 + since)
    takes_over = isinstance(action, Work) and record.state == "working" and record.owner != "me"
    if takes_over:
        assert since >= LEASE
    if isinstance(action, Work):
        assert action.claim_first == (delivered > 1 or record.state == "working")


# --- leases and lazy claims ----------------------------------------------------------------


@given(
    st.lists(st.tuples(st.floats(min_value=0.06, max_value=60), st.floats(min_value=0.1, max_value=600)), max_size=8),
    st.floats(min_value=0.0, max_value=2.0),
)
def test_every_hold_is_renewed_three_times_a_lease_and_claimed_once_on_time(
    holds: list[tuple[float, float]], claim_after: float
) -> None:
    """Woken at next_wakeup(), the keeper renews every held item at least every third
    of its lease, and writes each pending claim exactly once, at the claim delay (at
    most a quarter of the task's claim timeout)."""
    c = core(capacity=len(holds) + 1, claim_after_s=claim_after)
    last_renewal = {}
    claims: dict[int, list[float]] = {}
    for ticket, (lease, timeout) in enumerate(holds):
        c.hold(ticket, task=f"T{ticket}", kind="work", lease_s=lease, claim_timeout_s=timeout, now=0.0)
        last_renewal[ticket] = 0.0
    now = 0.0
    horizon = 3 * max((lease for lease, _ in holds), default=1.0)
    while (now := c.next_wakeup()) <= horizon:
        for due in c.on_tick(now):
            lease = holds[due.ticket][0]
            if isinstance(due, RenewLease):
                assert now - last_renewal[due.ticket] <= renew_every(lease) + 1e-9
                last_renewal[due.ticket] = now
            else:
                assert isinstance(due, WriteClaim)
                claims.setdefault(due.ticket, []).append(now)
    for ticket, (_, timeout) in enumerate(holds):
        when = min(claim_after, timeout / 4)
        if when <= horizon:
            assert claims[ticket] == [when]


def test_a_claim_that_met_an_unavailable_broker_is_tried_again_a_renewal_later() -> None:
    c = core()
    c.hold(1, task="T", kind="work", lease_s=3.0, claim_timeout_s=10.0, now=0.0)
    assert WriteClaim(1) in c.on_tick(0.25)
    c.claim_failed(1, 0.3)
    assert c.next_wakeup() <= 1.3
    assert WriteClaim(1) in c.on_tick(1.3)


def test_a_reconnection_renews_every_hold_at_once() -> None:
    c = core()
    for t in range(3):
        c.hold(t, task=f"T{t}", kind="work", lease_s=30.0, claim_timeout_s=10.0, now=0.0)
    c.on_tick(5.0)  # the claims
    assert c.next_wakeup() == 10.0
    c.on_reconnect(6.0)
    assert c.next_wakeup() == 6.0
    assert sorted(a.ticket for a in c.on_tick(6.0) if isinstance(a, RenewLease)) == [0, 1, 2]


# --- capacity ------------------------------------------------------------------------------


class CapacityMachine(RuleBasedStateMachine):
    """A pump that asks for items only while the core says it has room never holds
    more than its capacity, however deliveries are decided, held and ended."""

    def __init__(self) -> None:
        super().__init__()
        self.core = core(capacity=3)
        self.deciding: int = 0
        self.held: list[int] = []
        self.next_ticket = 1

    @precondition(lambda self: self.core.free() > 0)
    @rule()
    def arrive(self) -> None:
        self.core.arrived()
        self.deciding += 1

    @precondition(lambda self: self.deciding > 0)
    @rule(hold=st.booleans())
    def decide(self, hold: bool) -> None:
        self.deciding -= 1
        if hold:
            t = self.next_ticket
            self.next_ticket += 1
            self.core.hold(t, task=f"T{t}", kind="work", lease_s=LEASE, claim_timeout_s=10.0, now=0.0)
            self.held.append(t)
        else:
            self.core.settled()

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def end(self, data: st.DataObject) -> None:
        t = data.draw(st.sampled_from(self.held))
        self.held.remove(t)
        self.core.release(t)

    @rule()
    def drain(self) -> None:
        self.core.draining = True

    @invariant()
    def within_capacity(self) -> None:
        assert len(self.core.holds) + self.core.deciding <= self.core.capacity
        assert self.core.free() >= 0
        assert self.core.deciding == self.deciding
        if self.core.draining:
            assert self.core.free() == 0


TestCapacity = CapacityMachine.TestCase


# --- settling ------------------------------------------------------------------------------


@given(st.sampled_from(["done", "failed", "abandoned", "handed back", "lost"]), st.none() | records())
def test_an_item_is_acknowledged_only_when_nobody_needs_it(outcome: str, record: TaskRecord | None) -> None:
    """A result we wrote: acknowledge. A lost task: only if it ended or is in review
    (else the broker may have lent the same item to whoever took it over)."""
    action = settle_work(outcome, record)
    if outcome in ("done", "failed"):
        assert action == Ack()
    elif outcome == "abandoned":
        gone = record is None or is_terminal(record) or record.state == "review"
        assert action == (Ack() if gone else Leave())
    else:
        assert action == Leave()


@given(st.none() | records(), st.integers(min_value=0, max_value=3), st.integers(min_value=1, max_value=50))
def test_a_lost_review_slot_is_acknowledged_left_or_given_back(
    record: TaskRecord | None, round: int, ticket: int
) -> None:
    action = settle_review(record, round=round, ticket=ticket)
    if record is None or record.state != "review" or record.reworks != round:
        assert action == Ack()
    elif any(s.ticket == ticket for s in record.slots):
        assert action == Leave()
    else:
        assert isinstance(action, GiveBack)
