"""A stateful property test of the task state machine and the rules that drive it.

Several actors (owners, stale owners, agents the broker lends a lapsed owner's item to,
reviewers including the author, the requester, a person holding no item) throw random
events at one task while a random clock runs forward. A small model of the broker gives
each work item the write publishes (:func:`protocol.work_items`) a ticket, so that claims,
takeovers and review slots name real items as well as wrong ones. Each event goes through
:func:`protocol.apply`; the record is kept only when the event is accepted, exactly as a
compare-and-set would keep it. After every step the invariants the protocol promises are
checked.
"""

from __future__ import annotations

import itertools
from typing import Any

import hypothesis
import msgspec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from protocol import (
    EVENT_KINDS,
    REASONS,
    TRANSITIONS,
    AddChild,
    Approve,
    Budget,
    Cancel,
    Charge,
    Claim,
    Drop,
    Event,
    Expire,
    Fail,
    Finish,
    HandBack,
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
    apply,
    approvals,
    check_record,
    decode_record,
    decode_work_item,
    encode,
    event_kind,
    free_slots,
    is_terminal,
    judge_waiting,
    new_task,
    on_delivery,
    slot_of,
    work_item_id,
    work_items,
)

T0 = 1_700_000_000.0
AGENTS = ("a", "b", "c")
REVIEWERS = ("r1", "r2", "r3")
#: "$owner" and "$author" resolve to whoever holds those roles at the time of the event
ACTORS = st.sampled_from(["$owner", "$owner", "$author", *AGENTS, *REVIEWERS, "client", "observer"])
#: mostly the owner: an owner that does its job drives the task deep into its life
OWNERS = st.sampled_from(["$owner"] * 6 + ["$author", *AGENTS, "r1", "observer"])
EPOCH_SHIFT = st.sampled_from([0, 0, 0, -1, 1, -5])
#: "$item" is the ticket of an item the broker really lent (the current work item, or a
#: review item); "$held" the ticket the record shows; the rest are wrong or absent
TICKETS = st.sampled_from(["$item", "$item", "$held", None, 999])


class TaskLife(RuleBasedStateMachine):
    record: TaskRecord

    @initialize(
        review=st.none()
        | st.builds(
            ReviewPolicy,
            quorum=st.integers(1, 3),
            capability=st.just("check"),
            max_reworks=st.integers(0, 2),
            escalate_to=st.none() | st.just("human.check"),
        ),
        deadline_in=st.none() | st.floats(min_value=1.0, max_value=2000.0),
        budget=st.none() | st.builds(Budget, tokens=st.none() | st.integers(0, 300), cost=st.none() | st.floats(0, 3)),
        max_lapses=st.integers(1, 4),
        hops=st.integers(0, 3),
    )
    def start(
        self, review: ReviewPolicy | None, deadline_in: float | None, budget: Budget | None, max_lapses: int, hops: int
    ) -> None:
        self.now = T0
        self.record = msgspec.structs.replace(
            new_task(
                task_id="T",
                capability="work.deep",
                instruction="do the work",
                requester="client",
                now=T0,
                review=review,
                deadline=None if deadline_in is None else T0 + deadline_in,
                budget=budget,
                hops=hops,
            ),
            max_lapses=max_lapses,
        )
        self.policy = review
        self.owner_of_epoch: dict[int, str] = {}
        self.revision = 0  # not in the bucket yet
        self.accepted: list[str] = []
        #: the broker: work stream sequences, and the items of the task still in play
        self.sequences = itertools.count(1)
        self.items: dict[int, WorkItem] = {}
        self.publish(None, self.record)
        #: reviewers whose slot was taken over in the current review
        self.taken_over: set[str] = set()

    # --- plumbing ------------------------------------------------------------------------

    def publish(self, old: TaskRecord | None, new: TaskRecord) -> None:
        items = work_items(old, new, self.revision)
        ids = [work_item_id(i) for i in items]
        assert len(set(ids)) == len(ids)
        for item in items:
            assert decode_work_item(encode(item)) == item
            self.items[next(self.sequences)] = item

    def actor(self, who: str) -> str:
        if who == "$owner":
            return self.record.owner or "a"
        if who == "$author":
            return self.record.author or "a"
        return who

    def epoch(self, shift: int) -> int:
        return max(0, self.record.epoch + shift)

    def ticket(self, which: str | int | None, data: st.DataObject) -> int | None:
        if which == "$item":
            return data.draw(st.sampled_from(sorted(self.items))) if self.items else None
        if which == "$held":
            held = [s.ticket for s in self.record.slots] + [self.record.ticket]
            return data.draw(st.sampled_from(held)) if held else None
        assert which is None or isinstance(which, int)
        return which

    def feed(self, event: Event) -> TaskRecord | None:
        old = self.record
        try:
            new = apply(old, event, self.now)
        except TransitionError as exc:
            assert exc.state == old.state
            assert exc.event == event_kind(event)
            assert exc.actor == event.actor
            # A refusal on a live task never comes from cancel: it always ends a task.
            assert is_terminal(old) or not isinstance(event, Cancel)
            return None
        self.check_step(old, event, new)
        self.record = new
        self.revision += 1
        self.accepted.append(event_kind(event))
        self.publish(old, new)
        return new

    def check_step(self, old: TaskRecord, event: Event, new: TaskRecord) -> None:
        kind = event_kind(event)
        assert not is_terminal(old), "a terminal record changed"
        hypothesis.event(f"{old.state} -{kind}-> {new.state}" + (f" ({new.reason})" if new.reason else ""))
        late = old.deadline is not None and self.now >= old.deadline and kind != "cancel"
        if late:
            assert (new.state, new.reason) == ("failed", "deadline")
        else:
            assert new.state in TRANSITIONS[(old.state, kind)]
        assert new.updated == self.now
        # Epochs never decrease, and only a claim that leaves the task working moves them (by one).
        claimed = kind == "claim" and new.state == "working"
        assert new.epoch == old.epoch + (1 if claimed else 0)
        assert new.attempts == new.epoch
        if claimed:
            assert isinstance(event, Claim)
            assert (new.owner, new.ticket) == (event.actor, event.ticket)
        # A takeover names the owner's own item, and counts a lapse.
        takeover = kind == "claim" and old.state == "working" and not late
        if takeover:
            assert isinstance(event, Claim)
            assert old.ticket is not None and event.ticket == old.ticket
            assert new.lapses == old.lapses + 1
            hypothesis.event("takeover" if new.state == "working" else "takeover past max_lapses")
        else:
            assert new.lapses == old.lapses
        # At most one owner per epoch.
        if new.owner is not None:
            assert self.owner_of_epoch.setdefault(new.epoch, new.owner) == new.owner
        # A result is accepted only from the current epoch's owner.
        if (new.result, new.author) != (old.result, old.author):
            assert isinstance(event, Finish)
            assert old.state == "working"
            assert (event.actor, event.epoch) == (old.owner, old.epoch)
        if new.state == "working" and old.state == "working" and not takeover:
            assert isinstance(event, Renew | AddChild | Charge)
            assert (event.actor, event.epoch) == (old.owner, old.epoch)
        # An agent's hold (under a work item) is never ended no_agent: the broker watches it.
        if new.reason == "no_agent":
            assert not (old.state == "working" and old.ticket is not None)
        # A task back to open holds no item.
        if new.state == "open" and old.state != "open":
            assert new.owner is None and new.ticket is None
        # Closed set of reasons.
        if new.state == "failed":
            assert new.reason in REASONS
        elif new.state == "cancelled":
            assert new.reason == "cancelled"
        else:
            assert new.reason is None
        # Verified before done.
        if new.state == "done" and new.review is not None:
            round_votes = [v for v in new.votes if v.round == new.reworks and v.verdict == "approve"]
            reviewers = {v.reviewer for v in round_votes}
            assert new.author is not None
            assert new.author not in reviewers
            assert len(reviewers) == len(round_votes)  # distinct
            assert len(reviewers) >= new.review.quorum
            assert approvals(new) == reviewers
        # Bounded retries and reworks; monotone counters.
        assert new.lapses <= new.max_lapses
        assert new.reworks >= old.reworks
        if self.policy is not None:
            assert new.reworks <= self.policy.max_reworks
        assert new.spent.tokens >= old.spent.tokens and new.spent.cost >= old.spent.cost
        if new.review is None and old.review is not None:
            assert self.policy is not None and new.capability == self.policy.escalate_to
        # The record stays valid on the wire.
        assert check_record(new) is new
        assert decode_record(encode(new)) == new
        self.check_slots(old, event, new)
        # Items are published only when someone new must act.
        items = work_items(old, new, self.revision + 1)
        if new.state == "open" and old.state == "review":
            assert len(items) == 1 and items[0].kind == "work"
        elif new.state == "review" and old.state != "review":
            assert self.policy is not None and len(items) == self.policy.quorum
        else:
            assert items == ()

    def check_slots(self, old: TaskRecord, event: Event, new: TaskRecord) -> None:
        """Review slots: never more than the quorum, never the author or a voter, one
        slot per item, a vote only from a holder or into a free slot, and a slot changes
        hands only with its item's ticket."""
        if new.state == "review":
            assert new.review is not None
            holders = [s.reviewer for s in new.slots]
            assert len(holders) == len(set(holders))
            assert len(holders) + len(approvals(new)) <= new.review.quorum
            assert new.author not in holders
            assert not {v.reviewer for v in new.votes if v.round == new.reworks} & set(holders)
            tickets = [s.ticket for s in new.slots if s.ticket is not None]
            assert len(tickets) == len(set(tickets))
        if new.slots != old.slots:
            assert isinstance(event, Reviewing | Approve | Veto | Finish)
        if (new.state, old.state) == ("review", "review") and isinstance(event, Approve | Veto):
            # Accepted votes come from holders, or take a free slot at once.
            assert slot_of(old, event.actor) is not None or free_slots(old) > 0
            assert slot_of(new, event.actor) is None
        if old.state == "review" and new.state == "review" and isinstance(event, Reviewing):
            mine = slot_of(old, event.actor)
            if event.release:
                assert mine is not None and slot_of(new, event.actor) is None
            elif mine is None and free_slots(old) == 0:
                # A takeover: only of the slot held under the item the taker names.
                assert event.ticket is not None
                lapsed = next(s for s in old.slots if s.ticket == event.ticket)
                assert slot_of(new, lapsed.reviewer) is None
                self.taken_over.add(lapsed.reviewer)
            if not event.release:
                now_mine = slot_of(new, event.actor)
                assert now_mine is not None
                kept = None if mine is None else mine.ticket
                assert now_mine.ticket == (kept if event.ticket is None else event.ticket)
                self.taken_over.discard(event.actor)  # it holds a slot again
            for slot in old.slots:
                if slot.reviewer != event.actor and slot_of(new, slot.reviewer) is None:
                    assert slot.ticket is not None and slot.ticket == event.ticket
        if isinstance(event, Approve | Veto) and event.actor in self.taken_over and new.state != "failed":
            hypothesis.event("a taken-over holder voted into a free slot")
            assert free_slots(old) > 0
        if new.state != "review":
            self.taken_over.clear()

    # --- rules ----------------------------------------------------------------------------

    @rule(
        dt=st.one_of(
            st.floats(min_value=0, max_value=3),
            st.floats(min_value=0, max_value=3),
            st.floats(min_value=0, max_value=150),
        )
    )
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule(actor=st.sampled_from([*AGENTS, "alice"]), which=TICKETS, data=st.data())
    def claim(self, actor: str, which: Any, data: st.DataObject) -> None:
        self.feed(Claim(actor=actor, ticket=self.ticket(which, data)))

    @rule(agent=st.sampled_from([*AGENTS, *REVIEWERS, "$author"]), data=st.data())
    def deliver(self, agent: str, data: st.DataObject) -> None:
        """The broker lends one of the task's items to an agent, which acts on it as
        :func:`protocol.on_delivery` says. What it takes, the state machine accepts
        (unless the deadline has passed, which ends the task instead)."""
        if not self.items:
            return
        ticket = data.draw(st.sampled_from(sorted(self.items)))
        item = self.items[ticket]
        record, agent = self.record, self.actor(agent)
        held = record.state == "working" and record.ticket == ticket
        if held and data.draw(st.integers(0, 3)) != 0:
            return  # the broker lends a held item again only when its holder went silent
        decision = on_delivery(item, record, agent=agent, ticket=ticket)
        match decision:
            case Take(event=event):
                assert not is_terminal(record)
                new = self.feed(event)
                assert new is not None, f"on_delivery took {event} but the machine refused it"
                late = record.deadline is not None and self.now >= record.deadline
                if not late and isinstance(event, Reviewing):
                    mine = slot_of(new, agent)
                    assert mine is not None and mine.ticket == ticket
                hypothesis.event(f"delivery: take {event_kind(event)}")
            case Drop():
                # Nothing to do for anyone: the item leaves the queue.
                del self.items[ticket]
                hypothesis.event("delivery: drop")
            case HandBack():
                assert item.kind == "review"
                hypothesis.event("delivery: hand back")

    @rule(agent=st.sampled_from(AGENTS), reviewer=st.sampled_from(REVIEWERS), veto=st.booleans(), data=st.data())
    def do_the_job(self, agent: str, reviewer: str, veto: bool, data: st.DataObject) -> None:
        """The well-behaved move for the current state, so that runs get deep."""
        record = self.record
        match record.state:
            case "open":
                self.feed(Claim(actor=agent, ticket=self.ticket("$item", data)))
            case "working":
                self.feed(Finish(actor=record.owner or agent, epoch=record.epoch, result=f"by {record.owner}"))
            case "review" if veto:
                self.feed(Veto(actor=reviewer, epoch=record.epoch, reasons=("not good enough",)))
            case "review":
                self.feed(Approve(actor=reviewer, epoch=record.epoch))

    @rule(
        who=OWNERS,
        shift=EPOCH_SHIFT,
        kind=st.sampled_from(["renew", "add_child", "finish", "finish", "release", "charge"]),
        tokens=st.integers(0, 120),
        result=st.sampled_from([None, "draft", {"n": 1}]),
    )
    def owner_event(self, who: str, shift: int, kind: str, tokens: int, result: Any) -> None:
        actor, epoch = self.actor(who), self.epoch(shift)
        events: dict[str, Event] = {
            "renew": Renew(actor=actor, epoch=epoch, progress=f"at {self.now}", checkpoint={"step": self.revision}),
            "add_child": AddChild(actor=actor, epoch=epoch, child=f"C{self.revision}"),
            "finish": Finish(actor=actor, epoch=epoch, result=result),
            "release": Release(actor=actor, epoch=epoch, note="drain"),
            "charge": Charge(actor=actor, epoch=epoch, usage=Usage(tokens=tokens, cost=tokens / 100)),
        }
        self.feed(events[kind])

    @rule(
        who=ACTORS,
        shift=EPOCH_SHIFT,
        reason=st.sampled_from(["error", "rejected", "budget", "hop_limit", "loop", "deadline"]),
        dice=st.integers(0, 3),
    )
    def fail(self, who: str, shift: int, reason: Any, dice: int) -> None:
        if dice == 0:  # ending events are rare, so that runs get deep
            self.feed(Fail(actor=self.actor(who), epoch=self.epoch(shift), reason=reason, message="gave up"))

    @precondition(lambda self: self.record.state == "working")
    @rule(actor=st.sampled_from(AGENTS), dice=st.integers(0, 2))
    def lease_lapses(self, actor: str, dice: int) -> None:
        """The owner went silent: the broker lends its item to another agent, which
        takes the task over by naming the item (a person's hold has none to lend)."""
        if dice == 0 and self.record.ticket is not None:
            before = self.record
            new = self.feed(Claim(actor=actor, ticket=before.ticket))
            assert new is not None
            if new.state == "working":
                assert (new.owner, new.epoch, new.lapses) == (actor, before.epoch + 1, before.lapses + 1)

    @precondition(lambda self: self.record.state == "review" or is_terminal(self.record))
    @rule(
        who=st.sampled_from(["$author", *REVIEWERS, *REVIEWERS, "a"]),
        shift=EPOCH_SHIFT,
        verdict=st.sampled_from(["approve", "approve", "veto", "reviewing"]),
        reasons=st.sampled_from([(), ("",), ("wrong",), ("wrong", "late")]),
        which=TICKETS,
        data=st.data(),
    )
    def vote(
        self, who: str, shift: int, verdict: str, reasons: tuple[str, ...], which: Any, data: st.DataObject
    ) -> None:
        actor, epoch = self.actor(who), self.epoch(shift)
        if verdict == "reviewing":
            self.feed(Reviewing(actor=actor, epoch=epoch, ticket=self.ticket(which, data)))
        else:
            self.feed(
                Approve(actor=actor, epoch=epoch)
                if verdict == "approve"
                else Veto(actor=actor, epoch=epoch, reasons=reasons)
            )

    @precondition(lambda self: self.record.state == "review" or is_terminal(self.record))
    @rule(
        who=st.sampled_from(["$author", *REVIEWERS, *REVIEWERS, "a"]),
        shift=EPOCH_SHIFT,
        which=TICKETS,
        release=st.sampled_from([False, False, False, True]),
        data=st.data(),
    )
    def slot(self, who: str, shift: int, which: Any, release: bool, data: st.DataObject) -> None:
        """Take, take over (under a held item, a lent one or a wrong one), renew or give
        back a review slot."""
        ticket = self.ticket(which, data)
        self.feed(Reviewing(actor=self.actor(who), epoch=self.epoch(shift), ticket=ticket, release=release))

    @rule(who=ACTORS, reason=st.sampled_from(["deadline", "no_agent"]), dice=st.integers(0, 5))
    def expire(self, who: str, reason: Any, dice: int) -> None:
        if dice == 0:
            self.feed(Expire(actor=self.actor(who), reason=reason))

    @rule(waited=st.floats(min_value=0, max_value=100), active=st.booleans(), dice=st.integers(0, 3))
    def party_judges(self, waited: float, active: bool, dice: int) -> None:
        """The requester judges its wait; whatever it decides, the machine accepts, and
        it never ends a task an agent holds under a work item."""
        record = self.record
        if dice != 0:
            waited = min(waited, record.claim_timeout_s / 2)  # mostly, it keeps waiting
        event = judge_waiting(record, actor="client", waited_s=waited, queue_active=active, now=self.now)
        if event is not None:
            new = self.feed(event)
            assert new is not None and new.state == "failed"
            if event.reason == "no_agent":
                assert not (record.state == "working" and record.ticket is not None)
                assert not (record.state == "review" and record.slots)

    @rule(who=ACTORS, dice=st.integers(0, 7))
    def cancel(self, who: str, dice: int) -> None:
        if dice == 0:
            self.feed(Cancel(actor=self.actor(who), note="no longer needed"))

    @precondition(lambda self: not is_terminal(self.record))
    @rule(dice=st.integers(0, 7))
    def clock_runs_out(self, dice: int) -> None:
        if dice == 0 and self.record.deadline is not None:
            self.now = max(self.now, self.record.deadline)
            self.feed(Expire(actor="observer", reason="deadline"))
            assert (self.record.state, self.record.reason) == ("failed", "deadline")

    # --- invariants ---------------------------------------------------------------------

    @invariant()
    def terminal_is_final_and_live_can_end(self) -> None:
        record = self.record
        if is_terminal(record):
            for event in (
                Claim(actor="a", ticket=record.ticket),
                Renew(actor=record.owner or "a", epoch=record.epoch),
                Finish(actor=record.owner or "a", epoch=record.epoch),
                Approve(actor="r1", epoch=record.epoch),
                Reviewing(actor="r1", epoch=record.epoch, ticket=1),
                Cancel(actor="client"),
                Expire(actor="observer", reason="deadline"),
            ):
                try:
                    apply(record, event, self.now + 10**6)
                except TransitionError:
                    continue
                raise AssertionError(f"{event_kind(event)} changed a {record.state} record")
            # Whatever item of it is still lent out is dropped by whoever gets it.
            for ticket, item in self.items.items():
                assert isinstance(on_delivery(item, record, agent="r1", ticket=ticket), Drop)
        else:
            # Every task can still reach a terminal state: cancel is always accepted.
            ended = apply(record, Cancel(actor="client"), self.now)
            assert (ended.state, ended.reason) == ("cancelled", "cancelled")

    @invariant()
    def record_is_consistent(self) -> None:
        record = self.record
        assert record.epoch == record.attempts
        assert (record.state == "working") <= (record.owner is not None)
        if record.state == "review":
            assert record.review is not None and record.author is not None
            assert len(record.slots) + len(approvals(record)) <= record.review.quorum
            assert record.author not in {s.reviewer for s in record.slots}
        assert all(kind in EVENT_KINDS for kind in self.accepted)


TaskLife.TestCase.settings = settings(
    max_examples=400,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_task_life = TaskLife.TestCase
