"""The chaos benchmark's reading of the trail (bench/chaos.py): which events are
takeovers, whose kill each one follows, and what the trail misses. Pure functions
over made-up events; the benchmark itself runs in tests/test_bench_smoke.py."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

# bench/ is not installed (it is run from the checkout, like tests/test_bench_smoke.py does).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.chaos import failovers, trail


def ev(task: str, kind: str, actor: str, epoch: int, at: float, state: str = "working", note: str = "") -> Any:
    return SimpleNamespace(task=task, kind=kind, actor=actor, epoch=epoch, at=at, state=state, note=note, reason=None)


def rec(attempts: int, lapses: int, state: str = "done") -> Any:
    return SimpleNamespace(attempts=attempts, lapses=lapses, state=state)


LEASE = 1.0


def test_a_takeover_is_timed_from_its_owners_kill() -> None:
    events = [
        ev("t1", "created", "client", 0, 0.0, "open"),
        ev("t1", "claim", "a", 1, 1.0),
        ev("t1", "claim", "b", 2, 2.9, note="taken over from a (lease lapsed)"),
        ev("t1", "finish", "b", 2, 3.3, "done"),
    ]
    fo = failovers(events, {"a": [0.5, 2.0]}, LEASE)  # killed before its claim (another process), then at 2.0
    assert fo["count"] == 1 and abs(fo["s"]["p50"] - 0.9) < 1e-9
    assert fo["over_bound"] == 0 and fo["bound_s"] == 1.5


def test_a_takeover_over_the_bound_and_a_live_owner() -> None:
    events = [
        ev("t1", "claim", "a", 1, 1.0),
        ev("t1", "claim", "b", 2, 4.0, note="taken over from a (lease lapsed)"),
        ev("t2", "claim", "c", 1, 1.0),
        ev("t2", "claim", "b", 2, 3.0, note="taken over from c (lease lapsed)"),
    ]
    ready = {"a": [0.0], "b": [0.0], "d": [0.0]}
    fo = failovers(events, {"a": [1.5], "d": [2.7]}, LEASE, graced=frozenset({"t1"}), ready=ready)
    assert fo["count"] == 1 and fo["over_bound"] == 1 and fo["over_bound_graced"] == 1
    assert fo["over_examples"][0]["second_death"]  # d died while it could have held the item
    assert fo["over_examples"][0]["ready_at_lease_end"] == 2  # b and d (killed at 2.7, after the lease ran out)
    assert fo["unattributed"] == {"owner not killed": 1}
    assert fo["live_owner_claim_to_takeover_s"] == [2.0]


def test_a_takeover_that_fails_the_task_names_the_owner_of_its_epoch() -> None:
    # At max_lapses the record keeps its epoch and its progress: the note is stale.
    events = [
        ev("t1", "claim", "a", 1, 1.0, note="claim + finish in one write"),
        ev("t1", "claim", "b", 2, 2.0, note="taken over from a (lease lapsed)"),
        ev("t1", "claim", "c", 2, 3.0, "failed", note="taken over from a (lease lapsed)"),
    ]
    fo = failovers(events, {"a": [1.2], "b": [2.1]}, LEASE)
    assert fo["count"] == 2 and fo["unattributed"] == {}  # c's owner is b, killed at 2.1
    t = trail(events, {"t1": rec(attempts=2, lapses=2, state="failed")})
    assert t["claims_committed"] == t["claim_events"] == 2
    assert t["takeovers_committed"] == t["takeover_events"] == 2
    assert t["holes"] == {} and t["multi_terminal"] == 0


def test_holes_and_several_terminal_events() -> None:
    events = [
        ev("t1", "claim", "a", 1, 1.0),
        # b's takeover claim (epoch 2) was committed but b died before its event
        ev("t1", "claim", "c", 3, 3.0, note="taken over from b (lease lapsed)"),
        ev("t1", "finish", "c", 3, 3.2, "done"),
        ev("t1", "ended", "d", 3, 3.2, "done", note="end found on the record"),
    ]
    t = trail(events, {"t1": rec(attempts=3, lapses=2)})
    assert t["holes"] == {"claim": 1, "takeover": 1}
    assert t["multi_terminal"] == 1
    assert failovers(events, {"b": [2.5]}, LEASE)["unattributed"] == {"no claim event of the owner": 1}


def test_a_takeover_late_because_no_agent_was_up() -> None:
    events = [ev("t1", "claim", "a", 1, 1.0), ev("t1", "claim", "b", 2, 4.0, note="taken over from a (lease lapsed)")]
    # b was killed at 1.2 and came back (ready) at 3.9: nobody could take the item before.
    fo = failovers(events, {"a": [1.5], "b": [1.2]}, LEASE, ready={"a": [0.0], "b": [0.0, 3.9]})
    row = fo["over_examples"][0]
    assert row["ready_at_lease_end"] == 0 and abs(row["taker_up_s"] - 0.1) < 1e-9
    assert fo["over_bound_no_agent_ready"] == 1 and fo["over_bound_second_death"] == 0
