"""Load generators used by several benchmarks: sequential round trips (latency) and a
fixed number of tasks in flight (throughput), for the mesh and for raw NATS."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import anyio

#: tasks that did not end ``done`` in this process, by "state (reason)"; a benchmark
#: reports them with its figures (bench/run.py) and gives up past FAILURE_LIMIT
FAILURES: Counter[str] = Counter()
FAILURE_LIMIT = 20


class TooManyFailures(RuntimeError):
    pass


def _note_failure(record: Any) -> None:
    FAILURES[f"{record.state} ({record.reason})"] += 1


def check_failures() -> None:
    if sum(FAILURES.values()) > FAILURE_LIMIT:
        raise TooManyFailures(f"more than {FAILURE_LIMIT} tasks did not end done: {dict(FAILURES)}")


async def mesh_sequential(
    mesh: Any, n: int, capability: str = "echo", *, review: int | None = None, text: str = "ping"
) -> list[float]:
    """``n`` tasks one after the other: submit -> claim -> result (-> review) -> done."""
    out = []
    for _ in range(n):
        t = time.perf_counter()
        record = await mesh.run(capability, text, review=review)
        out.append(time.perf_counter() - t)
        if record.state != "done":
            _note_failure(record)
            check_failures()
    return out


async def mesh_concurrent(
    mesh: Any, n: int, inflight: int, capability: str = "echo", *, text: str = "ping", **submit: Any
) -> dict[str, Any]:
    """``n`` tasks with ``inflight`` of them submitted and not yet done at any time."""
    latencies: list[float] = []
    states: Counter[str] = Counter()
    relapsed = [0]
    limiter = anyio.Semaphore(inflight)

    async def one() -> None:
        async with limiter:
            t = time.perf_counter()
            record = await mesh.run(capability, text, **submit)
            latencies.append(time.perf_counter() - t)
            states[record.state] += 1
            if record.state != "done":
                _note_failure(record)
            if record.lapses:
                relapsed[0] += 1

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    elapsed = time.perf_counter() - t0
    check_failures()
    return {
        "n": n,
        "elapsed_s": elapsed,
        "rate": n / elapsed,
        "latencies": latencies,
        "states": dict(states),
        "lapsed": relapsed[0],
    }


async def raw_sequential(nc: Any, n: int, subject: str, text: str = "ping") -> list[float]:
    payload = json.dumps({"instruction": text}).encode()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await nc.request(subject, payload, timeout=10)
        out.append(time.perf_counter() - t)
    return out


async def raw_concurrent(nc: Any, n: int, inflight: int, subject: str, text: str = "ping") -> dict[str, Any]:
    payload = json.dumps({"instruction": text}).encode()
    latencies: list[float] = []
    limiter = anyio.Semaphore(inflight)

    async def one() -> None:
        async with limiter:
            t = time.perf_counter()
            await nc.request(subject, payload, timeout=30)
            latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    elapsed = time.perf_counter() - t0
    return {"n": n, "elapsed_s": elapsed, "rate": n / elapsed, "latencies": latencies}


async def wait_directory(mesh: Any, ids: Iterable[str], timeout: float = 30.0) -> float:
    """Seconds until every agent id has a card in the directory."""
    want = set(ids)
    t0 = time.monotonic()
    while True:
        have = {c.id for c in await mesh.agents()}
        if want <= have:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"agents {sorted(want - have)[:5]}... not in the directory after {timeout}s")
        await anyio.sleep(0.05)
