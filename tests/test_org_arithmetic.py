"""The org benchmark's arithmetic (bench.reliability.predict, bench.org.predict_org)
against the protocol's own rules: tasks driven through ``protocol.apply`` by seeded
noisy authors and reviewers, voters one after the other, end as the arithmetic says.
(The benchmark measures the same through the real mesh; this checks the formulas
it prints beside its figures.)"""

from __future__ import annotations

import math
import random

import pytest

from bench.org import predict_org
from bench.reliability import predict
from protocol import Approve, Claim, Finish, ReviewPolicy, TaskRecord, Veto, apply, new_task

T0 = 1_700_000_000.0


def simulate(p: float, q: float, f: float, policy: ReviewPolicy, n: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    right = lost = attempts = 0
    for i in range(n):
        record = new_task(task_id=f"T{i}", capability="sum", instruction="x", requester="c", now=T0, review=policy)
        while record.state not in ("done", "failed"):
            record = apply(record, Claim(actor="author", ticket=1), T0)
            record = apply(record, Finish(actor="author", epoch=record.epoch, result=rng.random() < p), T0)
            voter = 0
            before = record.reworks
            while record.state == "review" and record.reworks == before:
                voter += 1
                catch = q if not record.result else f
                event: Approve | Veto = (
                    Veto(actor=f"r{voter}", epoch=record.epoch, reasons=("no",))
                    if rng.random() < catch
                    else Approve(actor=f"r{voter}", epoch=record.epoch)
                )
                record = apply(record, event, T0)
        assert isinstance(record, TaskRecord)
        right += record.state == "done" and record.result is True
        lost += record.state == "failed" and record.result is True
        attempts += record.attempts
    return {"accuracy": right / n, "right_lost": lost / n, "attempts": attempts / n}


@pytest.mark.parametrize(
    ("p", "q", "f", "k", "max_reworks", "r"),
    [(1.0, 0.8, 0.2, 1, 2, 1), (1.0, 0.8, 0.2, 1, 2, 3), (0.9, 0.9, 0.1, 2, 2, 1), (0.9, 0.9, 0.1, 2, 4, 2)],
)
def test_the_rules_end_tasks_as_the_arithmetic_says(
    p: float, q: float, f: float, k: int, max_reworks: int, r: int
) -> None:
    n = 4000
    policy = ReviewPolicy(quorum=k, max_reworks=max_reworks, reject_quorum=r)
    got = simulate(p, q, f, policy, n, seed=k * 100 + r)
    want = predict(p, q, f, k, max_reworks, r)
    for key in ("accuracy", "right_lost"):
        sigma = math.sqrt(max(want[key] * (1 - want[key]), 1e-4) / n)
        assert abs(got[key] - want[key]) < 4 * sigma, (key, got, want)
    assert abs(got["attempts"] - want["attempts"]) < 0.05, (got, want)


def test_the_founding_arithmetic() -> None:
    perfect = [predict(1.0, 0.8, 0.2, 1, 2, r)["accuracy"] for r in (1, 2, 3)]
    assert [round(a, 5) for a in perfect] == [0.992, 0.9984, 0.99968]


def test_correlation_mixes_the_shared_case_in_proportion() -> None:
    indep = predict_org(0.9, 0.9, 0.1, "k=1", 0.0)
    shared = predict_org(0.9, 0.9, 0.1, "k=1", 1.0)
    half = predict_org(0.9, 0.9, 0.1, "k=1", 0.5)
    # everyone misses the same 10%: review cannot catch a single one
    assert shared["wrong_accepted"] == pytest.approx(0.1)
    assert half["accuracy"] == pytest.approx((indep["accuracy"] + shared["accuracy"]) / 2)
    assert predict_org(0.9, 0.9, 0.1, "none", 1.0)["accuracy"] == pytest.approx(0.9)
