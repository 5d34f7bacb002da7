"""Organizational reliability: noisy workers and noisy reviewers through the real mesh.

Tasks have checkable answers (``a + b``). Workers (bench.workers.NoisyAdder) answer
right with probability p; reviewers (bench.workers.NoisyChecker) catch a wrong
answer with probability q and wrongly veto a right one with probability f; every
draw is seeded and independent. Each configuration runs 3 worker agents and 3
reviewer agents (two agent host processes) and pushes tasks through the mesh with
its review policy (quorum k, the protocol's default bound of 2 reworks, no
escalation: past the bound a task fails ``rejected``).

Reported per configuration: accuracy (tasks done with the right answer / all tasks),
wrong answers accepted, tasks failed, cost (work attempts and reviews per task),
latency; next to the independent-error arithmetic for the same p, q, f, k.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from typing import Any

import anyio

from bench.common import Child, broker, dist_ms, host_cmd, progress, spread

NAME = "reliability"
MAX_REWORKS = 2  # the protocol's default ReviewPolicy.max_reworks
WORKERS = 3
REVIEWERS = 3
INFLIGHT = 32
#: bounds a batch's time if a task gets stuck (the report counts such tasks)
DEADLINE_S = 20.0

CONFIGS: list[dict[str, Any]] = [
    {"name": "no review", "p": 0.8, "q": 0.8, "f": 0.1, "k": 0},
    {"name": "review k=1", "p": 0.8, "q": 0.8, "f": 0.1, "k": 1},
    {"name": "review k=2", "p": 0.8, "q": 0.8, "f": 0.1, "k": 2},
    {"name": "100% author, 80% checker (k=1)", "p": 1.0, "q": 0.8, "f": 0.2, "k": 1},
]


def settles(k: int, r: int, x: float) -> float:
    """The chance that votes, each an approval with probability ``x``, reach ``k``
    approvals before ``r`` vetoes (the last round under ``reject_quorum`` r; r = 1 is
    every round's rule: all k must approve)."""
    return sum(math.comb(k - 1 + j, j) * x**k * (1 - x) ** j for j in range(r))


def votes_until_settled(k: int, r: int, x: float) -> float:
    """Expected votes cast until ``k`` approvals or ``r`` vetoes, voters one after the other."""
    return sum(
        math.comb(i + j, i) * x**i * (1 - x) ** j  # reach (i approvals, j vetoes): one more vote is cast
        for i in range(k)
        for j in range(r)
    )


def predict(
    p: float, q: float, f: float, k: int, max_reworks: int = MAX_REWORKS, reject_quorum: int = 1
) -> dict[str, float]:
    """The independent-error arithmetic. A round is accepted when all k reviewers
    approve: a right answer with probability (1-f)^k, a wrong one with (1-q)^k;
    otherwise it is reworked, at most ``max_reworks`` times. In the last round a result
    is rejected only by ``reject_quorum`` distinct vetoes (one, by default: the first
    veto rejects), and then the task fails."""
    if k == 0:
        return {
            "accuracy": p,
            "wrong_accepted": 1 - p,
            "failed": 0.0,
            "right_lost": 0.0,
            "attempts": 1.0,
            "reviews": 0.0,
        }
    a = p * (1 - f) ** k  # round accepts a right answer
    b = (1 - p) * (1 - q) ** k  # round accepts a wrong answer
    s = 1 - a - b  # round sends the task back
    geo = sum(s**i for i in range(max_reworks))  # expected rounds before the last
    last = s**max_reworks  # the last round is reached
    # Reviews in a round if voters go one after the other and the first veto ends it.
    before = p * votes_until_settled(k, 1, 1 - f) + (1 - p) * votes_until_settled(k, 1, 1 - q)
    at_last = p * votes_until_settled(k, reject_quorum, 1 - f) + (1 - p) * votes_until_settled(k, reject_quorum, 1 - q)
    right_last = p * settles(k, reject_quorum, 1 - f)
    wrong_last = (1 - p) * settles(k, reject_quorum, 1 - q)
    return {
        "accuracy": a * geo + last * right_last,
        "wrong_accepted": b * geo + last * wrong_last,
        "failed": last * (1 - right_last - wrong_last),
        "right_lost": last * p * (1 - settles(k, reject_quorum, 1 - f)),
        "attempts": geo + last,
        "reviews": before * geo + at_last * last,
    }


async def _batch(url: str, n: int, k: int, rng: random.Random, deadline_s: float) -> dict[str, Any]:
    import time

    from mesh.client import Mesh
    from protocol import ReviewPolicy

    mesh = await Mesh.connect(url, client_id="bench-reliability")
    limiter = anyio.Semaphore(INFLIGHT)
    rows: list[dict[str, Any]] = []
    problems = [(rng.randint(10, 99), rng.randint(10, 99)) for _ in range(n)]

    async def one(a: int, b: int) -> None:
        async with limiter:
            t = time.perf_counter()
            review = ReviewPolicy(quorum=k, max_reworks=MAX_REWORKS) if k else None
            record = await mesh.run(
                "sum", f"add {a} and {b}", data={"a": a, "b": b}, review=review, deadline_s=deadline_s
            )
            rows.append(
                {
                    "state": record.state,
                    "reason": record.reason,
                    "right": record.state == "done" and record.result == a + b,
                    "attempts": record.attempts,
                    "reworks": record.reworks,
                    "latency": time.perf_counter() - t,
                }
            )

    try:
        async with anyio.create_task_group() as tg:
            for a, b in problems:
                tg.start_soon(one, a, b)
    finally:
        await mesh.close()
    done = [r for r in rows if r["state"] == "done"]
    return {
        "n": n,
        "accuracy": sum(r["right"] for r in rows) / n,
        "wrong_accepted": sum(1 for r in done if not r["right"]) / n,
        "failed": sum(1 for r in rows if r["state"] != "done") / n,
        "failed_by_reason": dict(Counter(str(r["reason"]) for r in rows if r["state"] != "done")),
        "attempts": sum(r["attempts"] for r in rows) / n,
        "stalled": sum(1 for r in rows if r["latency"] > 10.0),
        "latency": dist_ms([r["latency"] for r in rows]),
    }


def main(quick: bool = False) -> dict[str, Any]:
    n, repeats = (8, 1) if quick else (250, 3)
    out: dict[str, Any] = {
        "n": n,
        "repeats": repeats,
        "max_reworks": MAX_REWORKS,
        "workers": WORKERS,
        "reviewers": REVIEWERS,
        "configs": [],
    }
    for ci, cfg in enumerate(CONFIGS):
        with broker() as b:
            workers = Child(
                "workers",
                host_cmd(
                    b.url,
                    count=WORKERS,
                    serves=["sum"],
                    worker="bench.workers:NoisyAdder",
                    capacity=8,
                    id_prefix="w",
                    options={"p": cfg["p"]},
                    seed=100 + ci,
                ),
            )
            reviewers = Child(
                "reviewers",
                host_cmd(
                    b.url,
                    count=REVIEWERS,
                    serves=["review"],
                    worker="bench.workers:NoisyChecker",
                    capacity=8,
                    id_prefix="r",
                    options={"q": cfg["q"], "f": cfg["f"]},
                    seed=200 + ci,
                ),
            )
            runs = []
            try:
                workers.start()
                reviewers.start()
                workers.wait_ready()
                reviewers.wait_ready()
                rng = random.Random(300 + ci)
                for rep in range(repeats):
                    res = anyio.run(_batch, b.url, n, cfg["k"], rng, DEADLINE_S / 2 if quick else DEADLINE_S)
                    runs.append(res)
                    progress(
                        NAME,
                        f"{cfg['name']} (p={cfg['p']}, q={cfg['q']}, f={cfg['f']}), run {rep + 1}/{repeats}: "
                        f"accuracy {res['accuracy']:.3f}, wrong accepted {res['wrong_accepted']:.3f}, failed {res['failed']:.3f}, "
                        f"attempts {res['attempts']:.2f}, p50 {res['latency']['p50']:.1f} ms",
                    )
            finally:
                worker_stats = workers.stop_collect()
                reviewer_stats = reviewers.stop_collect()
        ws = json.loads(worker_stats)["workers"] if worker_stats else {}
        rs = json.loads(reviewer_stats)["workers"] if reviewer_stats else {}
        total = n * repeats
        out["configs"].append(
            {
                **cfg,
                "runs": runs,
                "accuracy": spread([r["accuracy"] for r in runs]),
                "wrong_accepted": spread([r["wrong_accepted"] for r in runs]),
                "failed": spread([r["failed"] for r in runs]),
                "attempts": spread([r["attempts"] for r in runs]),
                "reviews_per_task": rs.get("reviews", 0) / total,
                "failed_by_reason": dict(sum((Counter(r["failed_by_reason"]) for r in runs), Counter())),
                "stalled": sum(r["stalled"] for r in runs),
                "max_latency_s": max(r["latency"]["max"] for r in runs) / 1000,
                "worker_wrong_rate": ws.get("wrong", 0) / max(ws.get("attempts", 1), 1),
                "reviewer_stats": rs,
                "p50_ms": spread([r["latency"]["p50"] for r in runs]),
                "p95_ms": spread([r["latency"]["p95"] for r in runs]),
                "predicted": predict(cfg["p"], cfg["q"], cfg["f"], cfg["k"]),
            }
        )
    out["setup"] = (
        f"{WORKERS} noisy worker agents and {REVIEWERS} noisy reviewer agents (two agent host processes), {INFLIGHT} tasks in flight, "
        f"review quorum k with at most {MAX_REWORKS} reworks, no escalation; every task has a {DEADLINE_S:.0f} s deadline"
    )
    return out
