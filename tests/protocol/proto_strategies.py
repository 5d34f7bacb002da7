"""Hypothesis strategies shared by the protocol tests (valid names, records, work items,
events).

Named ``proto_strategies`` (not ``strategies``) because tests/protocol has no
``__init__.py``: pytest puts this directory on ``sys.path``, so the name must not
collide with helpers of other test directories.
"""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import strategies as st

import protocol as p

LOWER = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"
UPPER = LOWER.upper()


def _word(first: str, rest: str, max_rest: int) -> st.SearchStrategy[str]:
    """``[first][rest]{0,max_rest}``, short most of the time, sometimes at the limit.
    (Cheaper to generate than ``from_regex``.)"""
    tail = st.one_of(
        st.text(alphabet=rest, max_size=min(6, max_rest)),
        st.text(alphabet=rest, min_size=max_rest, max_size=max_rest),
        st.text(alphabet=rest, max_size=max_rest),
    )
    return st.tuples(st.sampled_from(first), tail).map("".join)


tokens = _word(LOWER + DIGITS, LOWER + DIGITS + "_-", 63)
capabilities = st.lists(tokens, min_size=1, max_size=8).map(".".join)
short_capabilities = st.lists(st.sampled_from(["a", "b", "c", "sum", "x1"]), min_size=1, max_size=4).map(".".join)
agent_ids = _word(LOWER + UPPER + DIGITS, LOWER + UPPER + DIGITS + "_-", 63)
task_ids = agent_ids
prefixes = _word(LOWER, LOWER + DIGITS + "_-", 31)
kinds = st.one_of(st.sampled_from([*p.EVENT_KINDS, "created"]), _word(LOWER, LOWER + DIGITS + "_", 31))

finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)
times = st.floats(min_value=0.0, max_value=4e9, allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False, allow_infinity=False)
#: durations the limits allow
claim_timeouts = st.floats(min_value=1e-3, max_value=p.MAX_CLAIM_TIMEOUT_S, allow_nan=False, allow_infinity=False)
heartbeats = st.floats(min_value=1e-3, max_value=p.MAX_HEARTBEAT_S, allow_nan=False, allow_infinity=False)
#: a deadline's distance from ``created`` (negative: set before it was created)
deadline_offsets = st.floats(min_value=-1e6, max_value=p.MAX_DEADLINE_S - 1, allow_nan=False, allow_infinity=False)
non_neg_int = st.integers(min_value=0, max_value=2**53)
non_neg_float = st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False)

#: JSON values that survive an encode/decode round trip unchanged (no NaN/inf, lists
#: not tuples, string keys).
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | finite | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)

review_policies = st.builds(
    p.ReviewPolicy,
    quorum=st.integers(1, 16),
    capability=capabilities,
    max_reworks=st.integers(0, 5),
    escalate_to=st.none() | capabilities,
)
budgets = st.builds(p.Budget, tokens=st.none() | non_neg_int, cost=st.none() | non_neg_float)
usages = st.builds(p.Usage, tokens=non_neg_int, cost=non_neg_float)
votes = st.builds(
    p.Vote,
    reviewer=agent_ids,
    verdict=st.sampled_from(["approve", "veto"]),
    reasons=st.lists(st.text(max_size=10), max_size=3).map(tuple),
    round=st.integers(0, 5),
    at=times,
)
tickets = st.none() | st.integers(min_value=1, max_value=2**53)
review_slots = st.builds(p.ReviewSlot, reviewer=agent_ids, ticket=tickets, since=times)


@st.composite
def records(draw: st.DrawFn) -> p.TaskRecord:
    """Any record that satisfies :func:`protocol.check_record` (not necessarily one
    reachable by transitions: that is what the stateful test explores)."""
    state = draw(st.sampled_from(["open", "working", "review", "done", "failed", "cancelled"]))
    review = draw(review_policies) if state == "review" else draw(st.none() | review_policies)
    epoch = draw(st.integers(1 if state in ("working", "review") else 0, 1000))
    owner = draw(agent_ids) if state == "working" else draw(st.none() | agent_ids)
    if state == "failed":
        reason: str | None = draw(st.sampled_from(p.REASONS))
    elif state == "cancelled":
        reason = "cancelled"
    else:
        reason = None
    task_id = draw(task_ids)
    root = draw(st.just(task_id) | task_ids)
    created = draw(times)
    return p.TaskRecord(
        id=task_id,
        capability=draw(capabilities),
        instruction=draw(st.text(max_size=40)),
        data=draw(json_values),
        criteria=draw(st.text(max_size=10)),
        tags=tuple(draw(st.lists(tokens, max_size=3))),
        requester=draw(agent_ids),
        state=state,  # type: ignore[arg-type]
        owner=owner,
        epoch=epoch,
        attempts=epoch,
        ticket=draw(tickets),
        lapses=draw(st.integers(0, 3)),
        max_lapses=draw(st.integers(1, 5)),
        reworks=draw(st.integers(0, 5)),
        review=review,
        votes=tuple(draw(st.lists(votes, max_size=3))),
        slots=tuple(draw(st.lists(review_slots, max_size=3))),
        feedback=tuple(draw(st.lists(votes, max_size=2))),
        hops_left=draw(st.integers(0, 16)),
        deadline=draw(st.none() | deadline_offsets.map(lambda d: created + d)),
        budget=draw(st.none() | budgets),
        spent=draw(usages),
        parent=draw(st.none() | task_ids),
        root=root,
        lineage=tuple(draw(st.lists(st.text(alphabet="0123456789abcdef", min_size=16, max_size=16), max_size=3))),
        children=tuple(draw(st.lists(task_ids, max_size=3))),
        checkpoint=draw(json_values),
        progress=draw(st.text(max_size=20)),
        result=draw(json_values),
        author=draw(st.none() | agent_ids),
        reason=reason,  # type: ignore[arg-type]
        error=draw(st.text(max_size=20)),
        claim_timeout_s=draw(claim_timeouts),
        created=created,
        updated=draw(times),
    )


@st.composite
def work_items(draw: st.DrawFn) -> p.WorkItem:
    """Any work item :func:`protocol.decode_work_item` accepts: its record is its task's,
    and an item at revision 0 (a task not in the bucket yet) is a work item carrying an
    open record that nobody has claimed."""
    record = draw(records())
    revision = draw(st.integers(0, 3) | non_neg_int)
    kind = draw(st.sampled_from(["work", "review"]))
    if revision == 0:
        kind = "work"
        record = msgspec.structs.replace(record, state="open", epoch=0, attempts=0, reason=None)
    return p.WorkItem(
        task=record.id,
        kind=kind,  # type: ignore[arg-type]
        capability=draw(capabilities),
        revision=revision,
        round=draw(st.integers(0, 5)),
        slot=draw(st.integers(0, 15)),
        record=record,
    )


cards = st.builds(
    p.AgentCard,
    id=agent_ids,
    role=st.text(max_size=10),
    serves=st.lists(capabilities, max_size=3).map(tuple),
    delegates=st.lists(capabilities, max_size=3).map(tuple),
    expertise=st.lists(tokens, max_size=3).map(tuple),
    capacity=st.integers(1, 64),
    load=st.integers(0, 64),
    tasks=st.lists(task_ids, max_size=3).map(tuple),
    draining=st.booleans(),
    started=times,
    heartbeat_s=heartbeats,
    completed=non_neg_int,
    failed=non_neg_int,
)
_bare_events = st.builds(
    p.TaskEvent,
    kind=kinds,
    task=task_ids,
    root=task_ids,
    parent=st.none() | task_ids,
    capability=capabilities,
    actor=agent_ids,
    epoch=non_neg_int,
    state=st.sampled_from(["open", "working", "review", "done", "failed", "cancelled"]),
    reason=st.none() | st.sampled_from(p.REASONS),
    note=st.text(max_size=10),
    at=times,
)
#: task events, some carrying their task's record (``created`` and ending events do)
task_events: st.SearchStrategy[p.TaskEvent] = st.one_of(
    _bare_events,
    st.builds(
        lambda event, record: msgspec.structs.replace(event, task=record.id, root=record.root, record=record),
        _bare_events,
        records(),
    ),
)
_epochs = st.integers(0, 100)
transitions: st.SearchStrategy[p.Event] = st.one_of(
    st.builds(p.Claim, actor=agent_ids, ticket=tickets),
    st.builds(
        p.Renew, actor=agent_ids, epoch=_epochs, progress=st.none() | st.text(max_size=10), checkpoint=json_values
    ),
    st.builds(p.AddChild, actor=agent_ids, epoch=_epochs, child=task_ids),
    st.builds(p.Finish, actor=agent_ids, epoch=_epochs, result=json_values),
    st.builds(
        p.Fail,
        actor=agent_ids,
        epoch=_epochs,
        reason=st.sampled_from(["error", "rejected", "budget", "hop_limit", "loop", "deadline"]),
        message=st.text(max_size=10),
    ),
    st.builds(p.Release, actor=agent_ids, epoch=_epochs, note=st.text(max_size=10)),
    st.builds(p.Reviewing, actor=agent_ids, epoch=_epochs, ticket=tickets, release=st.booleans()),
    st.builds(p.Approve, actor=agent_ids, epoch=_epochs),
    st.builds(p.Veto, actor=agent_ids, epoch=_epochs, reasons=st.lists(st.text(max_size=10), max_size=3).map(tuple)),
    st.builds(p.Charge, actor=agent_ids, epoch=_epochs, usage=usages),
    st.builds(p.Cancel, actor=agent_ids, note=st.text(max_size=10)),
    st.builds(p.Expire, actor=agent_ids, reason=st.sampled_from(["deadline", "no_agent"])),
)
control_requests = st.builds(p.ControlRequest, action=st.sampled_from(["status", "drain"]))
control_replies = st.builds(
    p.ControlReply,
    agent=agent_ids,
    action=st.text(max_size=10),
    ok=st.booleans(),
    draining=st.booleans(),
    tasks=st.lists(task_ids, max_size=3).map(tuple),
    error=st.text(max_size=10),
)
error_reports = st.builds(
    p.ErrorReport,
    agent=agent_ids,
    subject=st.text(max_size=10),
    key=st.text(max_size=10),
    error=st.text(max_size=20),
    at=times,
)


def to_builtins(obj: msgspec.Struct) -> Any:
    return msgspec.json.decode(p.encode(obj))
