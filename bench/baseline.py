"""The raw baseline itself: how much raw nats-py request/reply moves on this machine,
and why.

The suite compares the mesh against raw request/reply in two places (latency, and the
raw row of the AutoGen section); their raw p50s disagreed by a third in one committed
run (0.73 vs 0.54 ms). Here the raw round trip alone (client = this process, one
nats-server, one responder process: bench/central.py's worker, as in the latency
benchmark), in several setups, each freshly started:

- ``free``: the scheduler places the three processes (as in the suite);
- ``one core``: all three pinned to CPU 0 (no wake-up crosses CPUs);
- ``split``: client and responder on CPU 0, nats-server on CPU 1 (every hop crosses);
- ``busy core``: free placement, with a CPU-bound process spinning (another job on the
  machine, as when a test suite runs alongside).

Per setup, ``batches`` batches of ``n`` sequential round trips; reported: the p50 of
every batch (how much it moves within one setup and between fresh setups), and the CPU
that the three processes spend per round trip (the rest of the latency is waiting:
for wake-ups, for the other CPU).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import anyio

from bench.central import worker_child
from bench.common import broker, cpu_seconds, dist_ms, progress, spread
from bench.drive import raw_sequential

NAME = "baseline"
SUBJECT = "bench.raw.noop"
VARIANTS = ("free", "one core", "split", "busy core")


def _pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` (nats-server's Go threads too)."""
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(tid), cpus)


async def _batches(url: str, n: int, batches: int, pids: list[int]) -> tuple[list[float], list[float]]:
    """p50 of each batch, and the CPU per round trip of all three processes (ms)."""
    import nats

    nc = await nats.connect(url, name="bench-baseline")
    p50s, cpu = [], []
    try:
        await raw_sequential(nc, 50, SUBJECT)
        for _ in range(batches):
            c0 = time.process_time() + sum(cpu_seconds(p) for p in pids)
            p50s.append(dist_ms(await raw_sequential(nc, n, SUBJECT))["p50"])
            cpu.append((time.process_time() + sum(cpu_seconds(p) for p in pids) - c0) * 1000 / n)
        return p50s, cpu
    finally:
        await nc.close()


def _setup(variant: str, n: int, batches: int) -> tuple[list[float], list[float]]:
    cores = os.cpu_count() or 1
    everything = set(range(cores))
    spinner = None
    if variant == "busy core":
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        with broker() as b:
            assert b.process is not None
            responder = worker_child(b.url, "baseline-responder", subject=SUBJECT).start().wait_ready()
            try:
                if variant == "one core":
                    for pid in (b.process.pid, responder.pid, os.getpid()):
                        _pin(pid, {0})
                elif variant == "split" and cores > 1:
                    _pin(b.process.pid, {1})
                    for pid in (responder.pid, os.getpid()):
                        _pin(pid, {0})
                return anyio.run(_batches, b.url, n, batches, [b.process.pid, responder.pid])
            finally:
                responder.stop()
                _pin(os.getpid(), everything)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


def main(quick: bool = False) -> dict[str, Any]:
    n, batches, setups = (50, 2, 1) if quick else (300, 6, 6)
    out: dict[str, Any] = {"n": n, "batches": batches, "setups": setups, "variants": {}}
    runs: dict[str, list[list[float]]] = {v: [] for v in VARIANTS}
    cpus: dict[str, list[float]] = {v: [] for v in VARIANTS}
    t0 = time.monotonic()
    for i in range(setups):  # variants interleaved, so drift hits all alike
        for variant in VARIANTS:
            p50s, cpu = _setup(variant, n, batches)
            runs[variant].append(p50s)
            cpus[variant] += cpu
            progress(
                NAME,
                f"setup {i + 1}/{setups}, {variant}: batch p50s " + " ".join(f"{x:.3f}" for x in p50s) + " ms",
            )
    for variant, per_setup in runs.items():
        flat = [x for setup in per_setup for x in setup]
        out["variants"][variant] = {
            "setups": per_setup,
            "batch_p50_ms": spread(flat),
            "setup_median_ms": spread([statistics.median(s) for s in per_setup]),
            # how far batches of one setup spread, median over setups (max / min)
            "within_setup_ratio": statistics.median(max(s) / min(s) for s in per_setup),
            # CPU of client + nats-server + responder per round trip (/proc: 10 ms ticks)
            "cpu_ms_per_round_trip": spread(cpus[variant]),
        }
    out["elapsed_s"] = time.monotonic() - t0
    out["setup"] = (
        f"one nats-server and one responder process (bench/central.py worker), freshly started per setup; the client is "
        f"the bench process; {setups} setups per variant, {batches} batches of {n} sequential round trips each"
    )
    return out
