"""Workers the benchmarks run, in the mesh (as `Worker`s of agents) and in the central
baseline (called by its worker processes): the same classes on both sides.

Each is built from a brief-like object with an ``options`` dict (a mesh brief, or
:class:`Opts`), so ``kind = "bench.workers:Noop"`` works in a brief too.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import anyio

from mesh.work import Verdict


@dataclass
class Opts:
    """Stands in for a brief outside the mesh (only ``options`` is read)."""

    options: dict[str, Any] = field(default_factory=dict)


class Noop:
    """The no-op task: returns the instruction."""

    def __init__(self, brief: Any) -> None:
        self.done = 0

    async def work(self, task: Any) -> Any:
        self.done += 1
        return task.instruction

    def stats(self) -> dict[str, int]:
        return {"done": self.done}


class Nap:
    """Sleeps ``options.seconds`` (or ``data.seconds``) without writing anything, then
    returns the instruction: a long-running task for the kill experiments."""

    def __init__(self, brief: Any) -> None:
        self.seconds = float(brief.options.get("seconds", 1.0))
        self.done = 0

    async def work(self, task: Any) -> Any:
        data = task.data if isinstance(task.data, dict) else {}
        await anyio.sleep(float(data.get("seconds", self.seconds)))
        self.done += 1
        return task.instruction

    def stats(self) -> dict[str, int]:
        return {"done": self.done}


def check_answer(data: Any) -> int:
    """The checkable answer of a reliability task: the sum of ``data.a`` and ``data.b``."""
    return int(data["a"]) + int(data["b"])


def _draw(data: Any, rng: random.Random) -> float:
    """The uniform draw an answer turns on: the task's shared ``data.u`` if it has one
    (a task whose difficulty every party shares: they err together), else the agent's
    own seeded draw."""
    u = data.get("u") if isinstance(data, dict) else None
    return float(u) if u is not None else rng.random()


def _rate(data: Any, name: str, default: float) -> float:
    """``data.<name>`` if the task sets it (one host serves a whole sweep), else the
    agent's option."""
    value = data.get(name) if isinstance(data, dict) else None
    return float(value) if value is not None else default


class NoisyAdder:
    """Adds ``data.a + data.b``, right with probability ``options.p`` (or ``data.p``;
    seeded); a wrong answer is off by a random non-zero amount. Each attempt draws
    afresh, unless the task carries a shared draw ``data.u``: then it is wrong exactly
    when ``u >= p``, on every attempt (a hard task stays hard)."""

    def __init__(self, brief: Any) -> None:
        self.p = float(brief.options.get("p", 1.0))
        self.rng = random.Random(int(brief.options.get("seed", 0)))
        self.attempts = 0
        self.wrong = 0
        self.delay_s = float(brief.options.get("delay_s", 0.0))

    async def work(self, task: Any) -> Any:
        self.attempts += 1
        if self.delay_s:
            await anyio.sleep(self.delay_s)
        answer = check_answer(task.data)
        if _draw(task.data, self.rng) >= _rate(task.data, "p", self.p):
            self.wrong += 1
            answer += self.rng.choice((-1, 1)) * self.rng.randint(1, 9)
        return answer

    def stats(self) -> dict[str, int]:
        return {"attempts": self.attempts, "wrong": self.wrong}


class NoisyChecker:
    """Reviews an adder's answer against the true sum: catches a wrong answer with
    probability ``options.q``, wrongly vetoes a right one with probability ``options.f``
    (``data.q``, ``data.f`` where the task sets them; seeded, independent draws). On a
    task with a shared draw ``data.u`` it misses a wrong answer exactly when
    ``u >= q``: the hardest tasks are the ones it cannot see through.
    False alarms stay independent."""

    def __init__(self, brief: Any) -> None:
        self.q = float(brief.options.get("q", 1.0))
        self.f = float(brief.options.get("f", 0.0))
        self.rng = random.Random(int(brief.options.get("seed", 0)))
        self.reviews = 0
        self.vetoes = 0
        self.false_vetoes = 0
        self.missed = 0

    async def work(self, task: Any) -> Any:
        return (await self.review(task)).approve

    async def review(self, task: Any) -> Verdict:
        self.reviews += 1
        data = task.data
        right = task.record.result == check_answer(data)
        draw = self.rng.random()
        if right:
            if draw < _rate(data, "f", self.f):
                self.vetoes += 1
                self.false_vetoes += 1
                return Verdict(approve=False, reasons=("looks wrong to me (a false alarm)",))
            return Verdict(approve=True)
        shared = data.get("u") if isinstance(data, dict) else None
        if (draw if shared is None else float(shared)) < _rate(data, "q", self.q):
            self.vetoes += 1
            return Verdict(approve=False, reasons=(f"{task.record.result} is not {data['a']} + {data['b']}",))
        self.missed += 1
        return Verdict(approve=True)

    def stats(self) -> dict[str, int]:
        return {
            "reviews": self.reviews,
            "vetoes": self.vetoes,
            "false_vetoes": self.false_vetoes,
            "missed": self.missed,
        }


def load(spec: str) -> Any:
    """``bench.workers:Noop`` -> the class."""
    import importlib

    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)
