"""The founding question with data: when does an organization of noisy agents beat its
members, and where does independence break?

Tasks have checkable answers (``a + b``). Worker agents (bench.workers.NoisyAdder) answer
right with probability p; reviewer agents (bench.workers.NoisyChecker) catch a wrong
answer with probability q and veto a right one with probability f. Every task carries
its own p, q and f, so one set of agents serves the whole sweep; with probability rho a
task also carries one shared draw ``u`` that everyone's errors turn on (a task that is
hard for everyone: its workers err on it every time, and its checkers miss exactly
those errors); the others draw independently. False alarms stay independent.

Policies: no review, quorum k=1 and k=2 (today's rule), and the last-round rule
(``ReviewPolicy.reject_quorum`` r: in the last round a result is rejected only by r
distinct vetoes). Each (cell, policy) runs its tasks through the real mesh: one broker,
3 worker agents and 4 reviewer agents in two agent host processes; a repeat restarts
the agents with other seeds.

Reported per cell: accuracy (right answers done / tasks), wrong answers accepted, right
answers lost (a right result rejected at the bound), attempts and reviews per task, p50
latency; beside each, the arithmetic: independent errors, mixed with the shared-draw case
in proportion rho.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from typing import Any

import anyio

from bench.common import Child, broker, dist_ms, host_cmd, progress, spread
from bench.reliability import predict

NAME = "org"
WORKERS = 3
#: four, so a last round can gather k - 1 approvals and r vetoes from distinct reviewers
REVIEWERS = 4
INFLIGHT = 32
DEADLINE_S = 30.0

#: name -> (quorum k, max_reworks, reject_quorum r); k = 0 is no review
POLICIES: dict[str, tuple[int, int, int]] = {
    "none": (0, 0, 1),
    "k=1": (1, 2, 1),
    "k=2": (2, 2, 1),
    "k=1, r=2": (1, 2, 2),
    "k=1, r=3": (1, 2, 3),
    "k=2, r=2, 4 reworks": (2, 4, 2),
}


def predict_org(p: float, q: float, f: float, policy: str, rho: float = 0.0) -> dict[str, float]:
    """The arithmetic for a cell: independent errors (``bench.reliability.predict``),
    mixed in proportion ``rho`` with the shared-draw case. On a shared-draw task a
    wrong worker is wrong on every attempt, and every checker misses it exactly when
    ``u >= q``: such a task is accepted wrong (probability min(1-p, 1-q)), or vetoed in
    every round until it fails (max(0, q-p)); a right one meets only the independent
    false alarms (the arithmetic of a perfect author)."""
    k, max_reworks, r = POLICIES[policy]
    indep = predict(p, q, f, k, max_reworks, r)
    if rho == 0.0:
        return indep
    perfect = predict(1.0, q, f, k, max_reworks, r)
    fooled = min(1 - p, 1 - q)  # wrong, and every checker misses it
    caught = (1 - p) - fooled  # wrong, and every checker catches it, every round
    rounds = max_reworks + 1 if k else 1
    shared = {
        "accuracy": p * perfect["accuracy"],
        "wrong_accepted": fooled + (caught if k == 0 else 0.0),
        "failed": p * perfect["failed"] + (caught if k else 0.0),
        "right_lost": p * perfect["right_lost"],
        "attempts": p * perfect["attempts"] + fooled + (caught * rounds if k else caught),
        # voters one after the other: a caught task draws one veto a round, r in the last
        "reviews": p * perfect["reviews"] + (fooled * k + caught * (max_reworks + r) if k else 0.0),
    }
    return {key: (1 - rho) * indep[key] + rho * shared[key] for key in indep}


def _cells(quick: bool) -> list[dict[str, Any]]:
    """The sweep: p x q per policy (f = 0.1), the two targets, and rho at 90/90."""
    cells: list[dict[str, Any]] = []
    if quick:
        for policy in ("none", "k=1", "k=1, r=2"):
            cells.append({"group": "targets", "p": 0.9, "q": 0.9, "f": 0.1, "rho": 0.0, "policy": policy, "n": 8})
        cells.append({"group": "rho", "p": 0.9, "q": 0.9, "f": 0.1, "rho": 0.5, "policy": "k=1, r=2", "n": 8})
        return cells
    grid = 150
    for policy in ("none", "k=1", "k=2", "k=2, r=2, 4 reworks"):
        for p in (0.7, 0.8, 0.9, 1.0):
            for q in (0.6, 0.8, 0.9):
                cells.append({"group": "grid", "p": p, "q": q, "f": 0.1, "rho": 0.0, "policy": policy, "n": grid})
    target = 800  # per repeat: 2,400 tasks over three seeds
    for policy in ("k=1", "k=2", "k=2, r=2, 4 reworks"):
        cells.append({"group": "targets", "p": 0.9, "q": 0.9, "f": 0.1, "rho": 0.0, "policy": policy, "n": target})
    for policy in ("k=1", "k=1, r=2", "k=1, r=3"):
        cells.append({"group": "targets", "p": 1.0, "q": 0.8, "f": 0.2, "rho": 0.0, "policy": policy, "n": target})
    for policy in ("none", "k=1", "k=2", "k=2, r=2, 4 reworks"):
        for rho in (0.0, 0.25, 0.5, 0.75, 1.0):
            cells.append({"group": "rho", "p": 0.9, "q": 0.9, "f": 0.1, "rho": rho, "policy": policy, "n": 200})
    return cells


async def _cell(url: str, cell: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    from mesh.client import Mesh
    from protocol import ReviewPolicy

    k, max_reworks, r = POLICIES[cell["policy"]]
    review = ReviewPolicy(quorum=k, max_reworks=max_reworks, reject_quorum=r) if k else None
    mesh = await Mesh.connect(url, client_id="bench-org")
    limiter = anyio.Semaphore(INFLIGHT)
    rows: list[dict[str, Any]] = []

    async def one(data: dict[str, Any]) -> None:
        async with limiter:
            t = time.perf_counter()
            record = await mesh.run(
                "sum", f"add {data['a']} and {data['b']}", data=data, review=review, deadline_s=DEADLINE_S
            )
            right = record.result == data["a"] + data["b"]
            # votes cast: every veto is kept in feedback; the approvals are the last round's
            votes = len(record.feedback) + sum(1 for v in record.votes if v.verdict == "approve")
            rows.append(
                {
                    "state": record.state,
                    "reason": record.reason,
                    "right": record.state == "done" and right,
                    "right_lost": record.state == "failed" and record.reason == "rejected" and right,
                    "attempts": record.attempts,
                    "reviews": votes,
                    "latency": time.perf_counter() - t,
                }
            )

    tasks = []
    for _ in range(cell["n"]):
        data: dict[str, Any] = {"a": rng.randint(10, 99), "b": rng.randint(10, 99)}
        data.update(p=cell["p"], q=cell["q"], f=cell["f"])
        data["u"] = rng.random() if rng.random() < cell["rho"] else None
        tasks.append(data)
    t0 = time.perf_counter()
    try:
        async with anyio.create_task_group() as tg:
            for data in tasks:
                tg.start_soon(one, data)
    finally:
        await mesh.close()
    n = len(rows)
    done = [x for x in rows if x["state"] == "done"]
    return {
        "n": n,
        "accuracy": sum(x["right"] for x in rows) / n,
        "wrong_accepted": sum(1 for x in done if not x["right"]) / n,
        "right_lost": sum(x["right_lost"] for x in rows) / n,
        "failed": sum(1 for x in rows if x["state"] != "done") / n,
        "failed_by_reason": dict(Counter(str(x["reason"]) for x in rows if x["state"] != "done")),
        "attempts": sum(x["attempts"] for x in rows) / n,
        "reviews": sum(x["reviews"] for x in rows) / n,
        "latency": dist_ms([x["latency"] for x in rows]),
        "wall_s": time.perf_counter() - t0,
    }


def _hosts(url: str, seed: int) -> tuple[Child, Child]:
    workers = Child(
        "workers",
        host_cmd(
            url, count=WORKERS, serves=["sum"], worker="bench.workers:NoisyAdder", capacity=8, id_prefix="w", seed=seed
        ),
    )
    reviewers = Child(
        "reviewers",
        host_cmd(
            url,
            count=REVIEWERS,
            serves=["review"],
            worker="bench.workers:NoisyChecker",
            capacity=8,
            id_prefix="r",
            seed=seed + 1,
        ),
    )
    return workers, reviewers


def _key(cell: dict[str, Any]) -> tuple[Any, ...]:
    return (cell["group"], cell["p"], cell["q"], cell["f"], cell["rho"], cell["policy"])


def main(quick: bool = False) -> dict[str, Any]:
    repeats = 1 if quick else 3
    cells = _cells(quick)
    runs: dict[tuple[Any, ...], list[dict[str, Any]]] = {_key(c): [] for c in cells}
    host_stats: list[dict[str, Any]] = []
    for rep in range(repeats):
        with broker() as b:
            workers, reviewers = _hosts(b.url, seed=1000 * (rep + 1))
            try:
                workers.start()
                reviewers.start()
                workers.wait_ready()
                reviewers.wait_ready()
                rng = random.Random(7 + rep)
                for cell in cells:
                    res = anyio.run(_cell, b.url, cell, rng)
                    runs[_key(cell)].append(res)
                    progress(
                        NAME,
                        f"run {rep + 1}/{repeats} {cell['group']} p={cell['p']} q={cell['q']} f={cell['f']} "
                        f"rho={cell['rho']} {cell['policy']}: accuracy {res['accuracy']:.4f}, "
                        f"lost {res['right_lost']:.4f}, attempts {res['attempts']:.2f}, p50 {res['latency']['p50']:.1f} ms",
                    )
            finally:
                host_stats.append({"workers": workers.stop_collect(), "reviewers": reviewers.stop_collect()})
    out_cells = []
    for cell in cells:
        rr = runs[_key(cell)]
        total = sum(x["n"] for x in rr)
        pooled = {
            key: sum(x[key] * x["n"] for x in rr) / total
            for key in ("accuracy", "wrong_accepted", "right_lost", "failed", "attempts", "reviews")
        }
        out_cells.append(
            {
                **cell,
                "n": total,
                "runs": rr,
                "pooled": pooled,
                "accuracy": spread([x["accuracy"] for x in rr]),
                "attempts": spread([x["attempts"] for x in rr]),
                "reviews": spread([x["reviews"] for x in rr]),
                "right_lost": spread([x["right_lost"] for x in rr]),
                "wrong_accepted": spread([x["wrong_accepted"] for x in rr]),
                "p50_ms": spread([x["latency"]["p50"] for x in rr]),
                "failed_by_reason": dict(sum((Counter(x["failed_by_reason"]) for x in rr), Counter())),
                "predicted": predict_org(cell["p"], cell["q"], cell["f"], cell["policy"], cell["rho"]),
            }
        )
    return {
        "repeats": repeats,
        "policies": {name: {"k": k, "max_reworks": m, "reject_quorum": r} for name, (k, m, r) in POLICIES.items()},
        "cells": out_cells,
        "hosts": [{name: json.loads(text)["workers"] if text else {} for name, text in h.items()} for h in host_stats],
        "setup": (
            f"1 broker; {WORKERS} noisy worker agents and {REVIEWERS} noisy reviewer agents in two agent host processes; "
            f"{INFLIGHT} tasks in flight; each task carries its p, q, f and (with probability rho) a shared draw; "
            f"{repeats} runs with other agent seeds; {DEADLINE_S:.0f} s deadline per task"
        ),
    }
