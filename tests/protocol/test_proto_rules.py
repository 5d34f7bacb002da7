"""The rules besides the state machine: routing and fit, claim delay, leases,
delegation (hops, deadline, budget, loops), clarification and the board."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from proto_strategies import capabilities, records, short_capabilities, tokens

from protocol import (
    DEFAULT_CLAIM_WINDOW_S,
    DEFAULT_HOPS,
    AgentCard,
    Budget,
    Cancel,
    Charge,
    Claim,
    Finish,
    InvalidName,
    LeaseView,
    LocalProtocolError,
    Renew,
    ReviewPolicy,
    TaskRecord,
    Usage,
    a2a_card,
    apply,
    ask,
    best_match,
    board_change,
    claim_delay,
    clarification_capability,
    delegate,
    fingerprint,
    fit,
    new_task,
    offers_for,
    serves,
    specificity,
    split_budget,
)

T0 = 1_700_000_000.0


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
    return apply(record, Claim(actor="owner"), T0 + 1)


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
    assert fit(served=("summarize",), capability="summarizex") == 0.0


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


# --- fit -------------------------------------------------------------------------------


def test_idle_exact_never_failing_agent_fits_perfectly() -> None:
    assert fit(served=("summarize",), capability="summarize") == 1.0
    assert fit(served=("summarize.medical",), capability="summarize.medical", completed=100) == 1.0
    assert claim_delay(1.0) == 0.0


def test_fit_zero_when_full_or_not_served() -> None:
    assert fit(served=("a",), capability="a", load=1, capacity=1) == 0.0
    assert fit(served=("a",), capability="a", load=5, capacity=4) == 0.0
    assert fit(served=("a",), capability="a", load=0, capacity=0) == 0.0
    assert fit(served=("b",), capability="a") == 0.0
    assert fit(served=(), capability="a") == 0.0
    assert fit(served=("a.b",), capability="a") == 0.0


def test_generalist_on_two_tokens_gets_half() -> None:
    assert fit(served=("summarize",), capability="summarize.medical") == 0.5


def test_exact_beats_prefix_even_when_busier() -> None:
    specialist = fit(served=("a.b.c.d",), capability="a.b.c.d", load=9, capacity=10, tags=("x",), failed=50)
    generalist = fit(served=("a.b.c",), capability="a.b.c.d", load=0, capacity=10, tags=("x",), expertise=("x",))
    assert 0 < generalist < specialist


@given(
    depth=st.integers(2, 8),
    longer=st.integers(1, 8),
    shorter=st.integers(1, 7),
    load=st.integers(0, 99),
    capacity=st.integers(1, 100),
    tags=st.lists(tokens, min_size=1, max_size=3).map(tuple),
    failed=st.integers(0, 10_000),
)
def test_more_specific_always_fits_better(
    depth: int, longer: int, shorter: int, load: int, capacity: int, tags: tuple[str, ...], failed: int
) -> None:
    """Longest-prefix routing: an agent matching more tokens beats every agent matching
    fewer, however busy (but not full), inexpert and unreliable it is, and however
    idle, expert and reliable the other one is."""
    assume(load < capacity)
    cap = ".".join("abcdefgh"[:depth])
    longer = min(longer, depth)
    shorter = min(shorter, longer - 1)
    assume(shorter >= 1)
    worst_specific = fit(
        served=(cap[: 2 * longer - 1],), capability=cap, load=load, capacity=capacity, tags=tags, failed=failed
    )
    best_general = fit(
        served=(cap[: 2 * shorter - 1],),
        capability=cap,
        load=0,
        capacity=capacity,
        tags=tags,
        expertise=tags,
        completed=10**6,
    )
    assert 0 < best_general < worst_specific <= 1
    assert claim_delay(worst_specific) < claim_delay(best_general)


@given(
    served=st.lists(short_capabilities, min_size=1, max_size=3).map(tuple),
    capability=short_capabilities,
    load=st.integers(0, 10),
    capacity=st.integers(1, 10),
    tags=st.lists(st.sampled_from(["x", "y", "z"]), max_size=3).map(tuple),
    expertise=st.lists(st.sampled_from(["x", "y", "z"]), max_size=3).map(tuple),
    completed=st.integers(0, 1000),
    failed=st.integers(0, 1000),
)
def test_fit_range_and_monotonicity(
    served: tuple[str, ...],
    capability: str,
    load: int,
    capacity: int,
    tags: tuple[str, ...],
    expertise: tuple[str, ...],
    completed: int,
    failed: int,
) -> None:
    def f_(**changes: Any) -> float:
        args: dict[str, Any] = {
            "served": served,
            "capability": capability,
            "tags": tags,
            "expertise": expertise,
            "load": load,
            "capacity": capacity,
            "completed": completed,
            "failed": failed,
        }
        return fit(**{**args, **changes})

    f = f_()
    if load >= capacity or not serves(served, capability):
        assert f == 0.0
        return
    assert 0.0 < f <= 1.0
    # More load never helps; more failures never help; more expertise never hurts.
    if load + 1 < capacity:
        assert f_(load=load + 1) <= f
    assert f_(failed=failed + 1) <= f
    assert f_(expertise=(*expertise, *tags)) >= f
    # The fit band is set by the best specificity.
    spec = max(specificity(s, capability) for s in served)
    n = len(capability.split("."))
    assert spec - 1 / n < f <= spec


# --- claim delay -------------------------------------------------------------------------


@given(
    st.floats(min_value=1e-9, max_value=1.0),
    st.floats(min_value=1e-9, max_value=1.0),
    st.floats(min_value=0.0, max_value=0.999),
)
def test_delay_is_monotone_decreasing_in_fit(a: float, b: float, jitter: float) -> None:
    lo, hi = sorted((a, b))
    assert claim_delay(hi) <= claim_delay(lo)
    assert claim_delay(hi, jitter=jitter) <= claim_delay(lo, jitter=jitter)
    if hi - lo > 1e-12:  # closer fits may round to the same delay (1 - fit loses digits)
        assert claim_delay(hi) < claim_delay(lo)


@given(st.floats(min_value=1e-9, max_value=1.0), st.floats(min_value=0.0, max_value=0.999))
def test_delay_formula(f: float, jitter: float) -> None:
    window = DEFAULT_CLAIM_WINDOW_S
    assert claim_delay(f, jitter=jitter) == pytest.approx((1 - f) * window + jitter * window * 0.01)
    assert 0.0 <= claim_delay(f, jitter=jitter) < window * 1.01
    assert claim_delay(f, window=2.0) == pytest.approx((1 - f) * 2.0)


def test_jitter_never_reorders_distinct_fit_bands() -> None:
    """Jitter is at most 1% of the window: it breaks ties, it does not reorder."""
    assert claim_delay(0.9, jitter=0.999) < claim_delay(0.88, jitter=0.0)


@pytest.mark.parametrize("bad_fit", [0.0, -0.1, 1.01, float("nan")])
def test_an_unfit_agent_may_not_claim(bad_fit: float) -> None:
    with pytest.raises(LocalProtocolError):
        claim_delay(bad_fit)


@pytest.mark.parametrize("jitter", [-0.1, 1.0, 2.0])
def test_jitter_range(jitter: float) -> None:
    with pytest.raises(LocalProtocolError):
        claim_delay(0.5, jitter=jitter)


# --- leases -------------------------------------------------------------------------------


def test_lease_expires_after_lease_s_of_silence_on_the_observer_clock() -> None:
    view = LeaseView(revision=7, seen_at=100.0, lease_s=10.0)
    assert not view.expired(109.999)
    assert view.expired(110.0)
    assert view.due() == 110.0


def test_only_a_newer_revision_restarts_the_lease() -> None:
    view = LeaseView(revision=7, seen_at=100.0, lease_s=10.0)
    assert view.observe(7, 105.0) is view  # the same revision seen again: no renewal
    assert view.observe(6, 105.0) is view  # an older one (late delivery): ignored
    renewed = view.observe(8, 105.0)
    assert renewed == LeaseView(revision=8, seen_at=105.0, lease_s=10.0)
    assert not renewed.expired(114.0)
    assert renewed.expired(115.0)


@given(
    revisions=st.lists(st.integers(0, 50), max_size=20),
    gaps=st.lists(st.floats(min_value=0, max_value=5), min_size=20, max_size=20),
    lease=st.floats(min_value=0.1, max_value=20),
    wall_offset=st.floats(min_value=-1e9, max_value=1e9),
)
def test_lease_judged_only_from_revisions_and_local_durations(
    revisions: list[int], gaps: list[float], lease: float, wall_offset: float
) -> None:
    """The verdict depends on when (on the local monotonic clock) the highest
    revision was first seen, nothing else; shifting the clock shifts nothing."""
    view = LeaseView(revision=0, seen_at=0.0, lease_s=lease)
    shifted = LeaseView(revision=0, seen_at=wall_offset, lease_s=lease)
    now = 0.0
    first_seen = {0: 0.0}
    for revision, gap in zip(revisions, gaps, strict=False):
        now += gap
        view = view.observe(revision, now)
        shifted = shifted.observe(revision, now + wall_offset)
        first_seen.setdefault(revision, now)
    top = max(first_seen)
    assert view.revision == top
    # seen_at is when the highest revision was first seen; repeats change nothing.
    assert view.seen_at == first_seen[top]
    # (Away from the exact boundary, where float addition rounds.)
    for probe in (0.0, lease / 2, lease * 0.999, lease * 1.001, lease * 2):
        assert view.expired(view.seen_at + probe) == (probe >= lease)
        assert shifted.expired(shifted.seen_at + probe) == (probe >= lease)


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


# --- the board --------------------------------------------------------------------------------


def reviewed(**kwargs: object) -> TaskRecord:
    record = working(review=ReviewPolicy(quorum=2, capability="review.medical"), **kwargs)
    return apply(record, Finish(actor="owner", epoch=record.epoch, result="r"), T0 + 2)


def test_open_and_working_are_offered_under_the_capability() -> None:
    opened = new_task(task_id="T", capability="summarize.medical", instruction="i", requester="c", now=T0, tags=("x",))
    offers = offers_for(opened, 5)
    assert list(offers) == ["summarize.medical"]
    offer = offers["summarize.medical"]
    assert (offer.task, offer.state, offer.revision, offer.epoch, offer.owner, offer.tags) == (
        "T",
        "open",
        5,
        0,
        None,
        ("x",),
    )
    claimed = apply(opened, Claim(actor="a"), T0 + 1)
    change = board_change(opened, claimed, 6)
    assert list(change.put) == ["summarize.medical"]
    assert change.put["summarize.medical"].state == "working"
    assert change.put["summarize.medical"].owner == "a"
    assert change.put["summarize.medical"].epoch == 1
    assert change.delete == ()


def test_created_task_is_put_on_the_board() -> None:
    opened = new_task(task_id="T", capability="x", instruction="i", requester="c", now=T0)
    change = board_change(None, opened, 1)
    assert change.put == offers_for(opened, 1)
    assert change.delete == ()


def test_renewals_never_touch_the_board() -> None:
    record = working()
    renewed = apply(record, Renew(actor="owner", epoch=record.epoch, progress="half", checkpoint={"page": 3}), T0 + 2)
    change = board_change(record, renewed, 9)
    assert change.put == {}
    assert change.delete == ()
    charged = apply(record, Charge(actor="owner", epoch=record.epoch, usage=Usage(tokens=1)), T0 + 2)
    assert board_change(record, charged, 10).put == {}


def test_review_is_offered_under_the_reviewer_capability() -> None:
    record = working(review=ReviewPolicy(quorum=1, capability="review.medical"))
    in_review = apply(record, Finish(actor="owner", epoch=record.epoch, result="r"), T0 + 2)
    change = board_change(record, in_review, 3)
    assert list(change.put) == ["review.medical"]
    assert change.put["review.medical"].state == "review"
    assert change.put["review.medical"].capability == "summarize.medical"
    assert change.put["review.medical"].author == "owner"
    assert change.delete == ("summarize.medical",)


def test_terminal_deletes_every_offer() -> None:
    in_review = reviewed()
    cancelled = apply(in_review, Cancel(actor="c"), T0 + 3)
    change = board_change(in_review, cancelled, 4)
    assert change.put == {}
    assert change.delete == ("review.medical",)
    record = working()
    done = apply(record, Finish(actor="owner", epoch=record.epoch), T0 + 3)
    assert board_change(record, done, 4) == type(change)(put={}, delete=("summarize.medical",))
    assert offers_for(done, 4) == {}


@given(records(), records(), st.integers(0, 1000))
def test_board_change_is_consistent(old: TaskRecord, new: TaskRecord, revision: int) -> None:
    assume(old.state != "review" or old.review is not None)
    assume(new.state != "review" or new.review is not None)
    change = board_change(old, new, revision)
    after = offers_for(new, revision)
    # Whatever is put is exactly what should be on the board now; nothing put is deleted.
    assert set(change.put) <= set(after)
    assert not set(change.put) & set(change.delete)
    assert set(change.delete) == set(offers_for(old, 0)) - set(after)
    if (old.state, old.epoch, old.capability) == (new.state, new.epoch, new.capability):
        assert change.put == {}
    else:
        assert change.put == after


# --- A2A card -------------------------------------------------------------------------------


def test_a2a_card_has_one_skill_per_capability() -> None:
    card = AgentCard(id="a1", role="summarizer", serves=("summarize", "summarize.medical"), expertise=("cardio",))
    view = a2a_card(card, "nats://localhost:4222")
    assert view.name == "a1"
    assert [s.id for s in view.skills] == ["summarize", "summarize.medical"]
    assert view.supported_interfaces[0].url == "nats://localhost:4222"
    encoded = msgspec.json.decode(msgspec.json.encode(view))
    assert "supportedInterfaces" in encoded
    assert encoded["supportedInterfaces"][0]["protocolBinding"].endswith("/v1")
