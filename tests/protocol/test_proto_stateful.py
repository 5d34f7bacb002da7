"""A stateful property test of the task state machine.

Several actors (owners, stale owners, reviewers including the author, the requester,
observers) throw random events at one task while a random clock runs forward. Each
event goes through :func:`protocol.apply`; the record is kept only when the event is
accepted, exactly as a compare-and-set would keep it. After every step the invariants
the protocol promises are checked.
"""

from __future__ import annotations

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
    Event,
    Expire,
    Fail,
    Finish,
    Release,
    Renew,
    Reopen,
    Reviewing,
    ReviewPolicy,
    TaskRecord,
    TransitionError,
    Usage,
    Veto,
    apply,
    approvals,
    board_change,
    check_record,
    decode_record,
    encode,
    event_kind,
    free_slots,
    is_terminal,
    new_task,
    review_full,
    slot_of,
    take_slot,
)

T0 = 1_700_000_000.0
AGENTS = ("a", "b", "c")
REVIEWERS = ("r1", "r2", "r3")
#: "$owner" and "$author" resolve to whoever holds those roles at the time of the event
ACTORS = st.sampled_from(["$owner", "$owner", "$author", *AGENTS, *REVIEWERS, "client", "observer"])
#: mostly the owner: an owner that does its job drives the task deep into its life
OWNERS = st.sampled_from(["$owner"] * 6 + ["$author", *AGENTS, "r1", "observer"])
EPOCH_SHIFT = st.sampled_from([0, 0, 0, -1, 1, -5])


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
        self.revision = 1
        self.accepted: list[str] = []
        #: reviewers whose slot was taken over in the current review
        self.taken_over: set[str] = set()

    # --- plumbing ------------------------------------------------------------------------

    def actor(self, who: str) -> str:
        if who == "$owner":
            return self.record.owner or "a"
        if who == "$author":
            return self.record.author or "a"
        return who

    def epoch(self, shift: int) -> int:
        return max(0, self.record.epoch + shift)

    def feed(self, event: Event) -> None:
        old = self.record
        try:
            new = apply(old, event, self.now)
        except TransitionError as exc:
            assert exc.state == old.state
            assert exc.event == event_kind(event)
            assert exc.actor == event.actor
            # A refusal on a live task never comes from cancel: it always ends a task.
            assert is_terminal(old) or not isinstance(event, Cancel)
            return
        self.check_step(old, event, new)
        self.record = new
        self.revision += 1
        self.accepted.append(event_kind(event))

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
        # Epochs never decrease, and only a claim moves them (by one).
        assert new.epoch == old.epoch + (1 if kind == "claim" and not late else 0)
        assert new.attempts == new.epoch
        # At most one owner per epoch.
        if new.owner is not None:
            assert self.owner_of_epoch.setdefault(new.epoch, new.owner) == new.owner
        # A result is accepted only from the current epoch's owner.
        if (new.result, new.author) != (old.result, old.author):
            assert isinstance(event, Finish)
            assert old.state == "working"
            assert (event.actor, event.epoch) == (old.owner, old.epoch)
        if new.state == "working" and old.state == "working":
            assert isinstance(event, Renew | AddChild | Charge)
            assert (event.actor, event.epoch) == (old.owner, old.epoch)
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
        assert new.lapses >= old.lapses
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
        # The board only hears about changes of who must act (a review filling up or
        # freeing a slot is one: reviewers stop, or may start, taking slots).
        change = board_change(old, new, self.revision + 1)
        if (old.state, old.epoch, old.capability, review_full(old)) == (
            new.state,
            new.epoch,
            new.capability,
            review_full(new),
        ):
            assert change.put == {}
            assert change.delete == ()
        else:
            assert all(offer.full == review_full(new) for offer in change.put.values())

    def check_slots(self, old: TaskRecord, event: Event, new: TaskRecord) -> None:
        """Review slots: never more than the quorum, never the author or a voter, and a
        vote only from a holder or into a free slot."""
        if new.state == "review":
            assert new.review is not None
            holders = [s.reviewer for s in new.slots]
            assert len(holders) == len(set(holders))
            assert len(holders) + len(approvals(new)) <= new.review.quorum
            assert new.author not in holders
            assert not {v.reviewer for v in new.votes if v.round == new.reworks} & set(holders)
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
            elif mine is not None:
                assert slot_of(new, event.actor) == msgspec.structs.replace(mine, beat=mine.beat + 1)
            elif free_slots(old) == 0:
                # A takeover: only of the named holder, at the beat the taker observed.
                assert event.takes is not None
                lapsed = slot_of(old, event.takes)
                assert lapsed is not None and lapsed.beat == event.beat
                assert slot_of(new, event.takes) is None
                self.taken_over.add(event.takes)
            assert slot_of(new, event.actor) is not None or event.release
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

    @rule(actor=st.sampled_from(AGENTS))
    def claim(self, actor: str) -> None:
        self.feed(Claim(actor=actor))

    @rule(agent=st.sampled_from(AGENTS), reviewer=st.sampled_from(REVIEWERS), veto=st.booleans())
    def do_the_job(self, agent: str, reviewer: str, veto: bool) -> None:
        """The well-behaved move for the current state, so that runs get deep."""
        record = self.record
        match record.state:
            case "open":
                self.feed(Claim(actor=agent))
            case "working":
                self.feed(Finish(actor=record.owner or agent, epoch=record.epoch, result=f"by {record.owner}"))
            case "review" if slot_of(record, reviewer) is None and (take := take_slot(record, reviewer)) is not None:
                self.feed(take)  # reserve before reviewing
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

    @rule(who=ACTORS, shift=EPOCH_SHIFT, dice=st.integers(0, 2))
    def reopen(self, who: str, shift: int, dice: int) -> None:
        if dice == 0:
            self.feed(Reopen(actor=self.actor(who), epoch=self.epoch(shift)))

    @precondition(lambda self: self.record.state == "review" or is_terminal(self.record))
    @rule(
        who=st.sampled_from(["$author", *REVIEWERS, *REVIEWERS, "a"]),
        shift=EPOCH_SHIFT,
        verdict=st.sampled_from(["approve", "approve", "veto", "reviewing"]),
        reasons=st.sampled_from([(), ("",), ("wrong",), ("wrong", "late")]),
    )
    def vote(self, who: str, shift: int, verdict: str, reasons: tuple[str, ...]) -> None:
        actor, epoch = self.actor(who), self.epoch(shift)
        if verdict == "reviewing":
            self.feed(Reviewing(actor=actor, epoch=epoch))
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
        takes=st.sampled_from(["$holder", "$holder", "$author", *REVIEWERS]),
        beat_shift=st.sampled_from([0, 0, 0, -1, 1]),
        release=st.sampled_from([False, False, False, True]),
    )
    def slot(self, who: str, shift: int, takes: str, beat_shift: int, release: bool) -> None:
        """Take, take over (right or wrong beat, right or wrong holder), renew or give back
        a review slot."""
        record = self.record
        holder = record.slots[0] if record.slots else None
        named = holder.reviewer if takes == "$holder" and holder is not None else self.actor(takes)
        held = slot_of(record, named)
        beat = max(0, (held.beat if held else 0) + beat_shift)
        self.feed(Reviewing(actor=self.actor(who), epoch=self.epoch(shift), takes=named, beat=beat, release=release))

    @rule(who=ACTORS, reason=st.sampled_from(["deadline", "no_agent"]), dice=st.integers(0, 5))
    def expire(self, who: str, reason: Any, dice: int) -> None:
        if dice == 0:
            self.feed(Expire(actor=self.actor(who), reason=reason))

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
                Claim(actor="a"),
                Renew(actor=record.owner or "a", epoch=record.epoch),
                Finish(actor=record.owner or "a", epoch=record.epoch),
                Reopen(actor="observer", epoch=record.epoch),
                Approve(actor="r1", epoch=record.epoch),
                Cancel(actor="client"),
                Expire(actor="observer", reason="deadline"),
            ):
                try:
                    apply(record, event, self.now + 10**6)
                except TransitionError:
                    continue
                raise AssertionError(f"{event_kind(event)} changed a {record.state} record")
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
