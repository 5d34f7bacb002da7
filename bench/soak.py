"""Soak: LLM-shaped tasks (a 200 ms nap each, no writes while napping) by the
thousands on one fresh broker, measured per window of completed tasks, to show
whether anything grows with the number of tasks the mesh has run.

Two phases on the same broker, one after the other (the second starts with the
first's history in the events stream):

- 64 in flight: 4 `mesh agent run` processes of capacity 16 (64 slots: the agents
  can hold exactly what the client keeps in flight); ideal 64 / 0.2 s = 320 tasks/s;
- 200 in flight: 4 processes of capacity 64 (256 slots, more than in flight, so the
  client's 200 are the limit); ideal 200 / 0.2 s = 1,000 tasks/s. Here the mesh's
  own CPU per task, on 2 cores shared by the broker, 4 agents and the client, is
  what keeps it from the ideal.

Per window (1,000 tasks by default): tasks/s and its ratio to the ideal, task
latency, CPU per task of nats-server (read from /proc), the agents and the client,
the broker's memory, the number of consumers per stream, and the messages and bytes
of the tasks bucket's stream, the work stream and the events stream. Agents and
client run with a short ``MESH_FINISHED_TTL`` so that finished records leave the
live bucket soon: the bucket's size should level off at about rate x TTL, while the
events stream (the archive) grows by a few events per task.

Then, once the finished records have expired, a control phase: the first phase again
on the same broker (which now holds both phases' history), with a TTL longer than the
phase, so that no record expires while it runs: what expiring records costs the broker
shows as the difference, and any cost of a growing history as a drift.

Per window the machine's own counters (/proc/stat) tell how many cores other
processes used meanwhile: a window that shared the machine is not a regression.

The client is one Python process (this one) running a fixed pool of ``inflight``
workers, each submitting the next task as soon as its last one is done.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
import urllib.request
from typing import Any

import anyio

from bench.common import (
    AgentRun,
    broker,
    child_env,
    cpu_seconds,
    log_problems,
    mesh_settings,
    progress,
    ratio,
    rss_mb,
    tempdir,
    varz,
    write_brief,
)

NAME = "soak"
NAP_S = 0.2
#: how long finished records stay in the live bucket (agents and client); the smoke
#: run (--quick) uses a shorter one so that its wait for the expiry stays short
FINISHED_TTL = "15s"
FINISHED_TTL_QUICK = "2s"
#: the control phase's TTL: longer than the phase, so nothing expires while it runs
CONTROL_TTL = "30m"
PHASES: list[dict[str, Any]] = [
    {"name": "64 in flight", "inflight": 64, "agents": 4, "capacity": 16},
    {"name": "200 in flight", "inflight": 200, "agents": 4, "capacity": 64},
]


def _tasks_per_phase(quick: bool) -> int:
    env = os.environ.get("BENCH_SOAK_TASKS")
    if env:
        return max(int(env), 20)
    return 400 if quick else 20_000


def _window(tasks: int) -> int:
    return 1000 if tasks >= 10_000 else max(tasks // 10, 10)


def _jsz(b: Any) -> dict[str, Any]:
    with urllib.request.urlopen(f"{b.monitor_url}/jsz?consumers=true", timeout=5) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


async def _streams(mesh: Any) -> dict[str, dict[str, Any]]:
    """messages, bytes, deleted and consumers of the mesh's three streams (JetStream API)."""
    names = mesh.names
    out: dict[str, dict[str, Any]] = {}
    for label, stream in (
        ("tasks", f"KV_{names.tasks_bucket}"),
        ("work", names.work_stream),
        ("events", names.events_stream),
    ):
        msg = await mesh.bus.nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=5)
        state = json.loads(msg.data).get("state", {})
        out[label] = {
            "stream": stream,
            "messages": int(state.get("messages", 0)),
            "bytes": int(state.get("bytes", 0)),
            "deleted": int(state.get("num_deleted", 0) or 0),
            "consumers": int(state.get("consumer_count", 0)),
            # distinct subjects: nats-server indexes each one in memory
            "subjects": int(state.get("num_subjects", 0)),
            # every message ever stored (writes of records, items, events)
            "last_seq": int(state.get("last_seq", 0)),
        }
    # The queue: deliveries (a hand-back or a lapsed lease delivers an item again)
    msg = await mesh.bus.nc.request(
        f"$JS.API.CONSUMER.INFO.{names.work_stream}.{names.queue_consumer('nap')}", b"", timeout=5
    )
    info = json.loads(msg.data)
    out["queue"] = {
        "deliveries": int((info.get("delivered") or {}).get("consumer_seq", 0)),
        "redelivered": int(info.get("num_redelivered", 0)),
        "waiting_pulls": int(info.get("num_waiting", 0)),
        "held": int(info.get("num_ack_pending", 0)),
    }
    return out


class _Meter:
    """CPU seconds of the processes that make up the mesh, read at window boundaries."""

    def __init__(self, broker_pid: int, agent_pids: list[int]) -> None:
        self.broker_pid = broker_pid
        self.agent_pids = agent_pids

    def read(self) -> dict[str, float]:
        return {
            "t": time.monotonic(),
            "broker": cpu_seconds(self.broker_pid),
            "agents": sum(cpu_seconds(p) for p in self.agent_pids),
            "client": time.process_time(),
            **_machine_cpu(),
        }


def _machine_cpu() -> dict[str, float]:
    """The whole machine's busy and steal CPU seconds (/proc/stat), to tell a window that
    shared the machine with other work (or lost CPU to the hypervisor) from one that did not."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return {"machine_busy": math.nan, "steal": math.nan}
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return {"machine_busy": (user + nice + system + irq + softirq) / tick, "steal": steal / tick}


async def _phase(b: Any, phase: dict[str, Any], meter: _Meter, tasks: int, window: int) -> dict[str, Any]:
    from mesh.client import Mesh

    ttl_s = mesh_settings().finished_ttl_s
    mesh = await Mesh.connect(b.url, client_id=f"soak-{phase['inflight']}", settings=mesh_settings())
    inflight = phase["inflight"]
    ideal = inflight / NAP_S
    done_at: list[float] = []
    latency: list[float] = []
    states: dict[str, int] = {}
    lapsed = [0]
    marks: list[tuple[int, dict[str, float]]] = []  # (completed, meter reading) at each boundary
    boundary = anyio.Event()
    next_index = [0]
    try:
        # Warm up (not measured): connections, the queue, the agents' pulls.
        async with anyio.create_task_group() as tg:
            for _ in range(inflight):
                tg.start_soon(mesh.run, "nap", "warm-up")
        samples: list[dict[str, Any]] = []
        before = await _streams(mesh)

        async def worker() -> None:
            nonlocal boundary
            while next_index[0] < tasks:
                next_index[0] += 1
                t = time.monotonic()
                record = await mesh.run("nap", "soak")
                now = time.monotonic()
                latency.append(now - t)
                done_at.append(now)
                states[record.state] = states.get(record.state, 0) + 1
                if record.lapses:
                    lapsed[0] += 1
                if len(done_at) % window == 0:
                    marks.append((len(done_at), meter.read()))
                    boundary.set()
                    boundary = anyio.Event()

        async def sampler() -> None:
            """Stream and server state at each boundary (a few ms behind it)."""
            taken = 0
            while taken < tasks // window:
                if len(marks) <= taken:
                    await boundary.wait()
                    continue
                taken += 1
                n0 = len(done_at)
                streams = await _streams(mesh)
                v = await anyio.to_thread.run_sync(varz, b)
                n1 = len(done_at)
                jsz = await anyio.to_thread.run_sync(_jsz, b)
                samples.append(
                    {
                        # tasks completed when the counters below were read (a few ms after
                        # the window's end): their per-task figures divide by this
                        "completed": (n0 + n1) / 2,
                        "streams": streams,
                        "consumers_total": int(jsz.get("consumers", 0)),
                        "broker_rss_mib": rss_mb(meter.broker_pid),
                        "broker_msgs": float(v.get("in_msgs", 0)) + float(v.get("out_msgs", 0)),
                    }
                )

        v0 = await anyio.to_thread.run_sync(varz, b)
        start = meter.read()
        t0 = start["t"]
        async with anyio.create_task_group() as tg:
            tg.start_soon(sampler)
            async with anyio.create_task_group() as pool:
                for _ in range(inflight):
                    pool.start_soon(worker)
        end = meter.read()
        after = await _streams(mesh)
    finally:
        await mesh.close()

    windows = []
    prev_t, prev = done_at[0], start
    prev_count = 1  # window 1 runs from the first completion (past the ramp-up)
    prev_streams = before
    prev_msgs: float | None = float(v0.get("in_msgs", 0)) + float(v0.get("out_msgs", 0))
    prev_sampled = 0.0
    for i, (count, reading) in enumerate(marks):
        t = done_at[count - 1]
        n = count - prev_count
        cpu_n = count - (prev_count if i else 0)
        s = samples[i] if i < len(samples) else {}
        lat = latency[count - window : count]
        rate = n / (t - prev_t) if t > prev_t else math.nan
        windows.append(
            {
                "window": i + 1,
                "completed": count,
                "rate": rate,
                "ratio_ideal": rate / ideal,
                "p50_ms": statistics.median(lat) * 1000,
                "p99_ms": sorted(lat)[int(len(lat) * 0.99) - 1] * 1000 if lat else math.nan,
                "cpu_ms_per_task": {k: (reading[k] - prev[k]) * 1000 / cpu_n for k in ("broker", "agents", "client")},
                "broker_msgs_per_task": (s["broker_msgs"] - prev_msgs) / (s["completed"] - prev_sampled)
                if prev_msgs is not None and s.get("broker_msgs") and s["completed"] > prev_sampled
                else math.nan,
                # stored per task: record writes, work items, events; and deliveries per task
                "per_task": _per_task(prev_streams, s.get("streams"), s.get("completed", 0) - prev_sampled),
                # the machine: all CPU in use (cores), what other processes used, steal
                "machine": _machine(prev, reading),
                "streams": s.get("streams"),
                "consumers_total": s.get("consumers_total"),
                "broker_rss_mib": s.get("broker_rss_mib"),
            }
        )
        prev_t, prev, prev_count = t, reading, count
        prev_msgs = s.get("broker_msgs")
        prev_streams = s.get("streams") or prev_streams
        prev_sampled = s.get("completed", prev_sampled)
    elapsed = done_at[-1] - t0
    overall = tasks / elapsed
    first, last = windows[0], windows[-1]
    result = {
        **phase,
        "tasks": tasks,
        "window": window,
        "ideal": ideal,
        "finished_ttl_s": ttl_s,
        "elapsed_s": elapsed,
        "rate": overall,
        "ratio_ideal": overall / ideal,
        "window_rate_min": min(w["rate"] for w in windows),
        "window_rate_max": max(w["rate"] for w in windows),
        "last_vs_first_rate": ratio(last["rate"], first["rate"]),
        "last_vs_first_broker_cpu": ratio(last["cpu_ms_per_task"]["broker"], first["cpu_ms_per_task"]["broker"]),
        "cpu_ms_per_task": {k: (end[k] - start[k]) * 1000 / tasks for k in ("broker", "agents", "client")},
        "machine": _machine(start, end),
        "latency_p50_ms": statistics.median(latency) * 1000,
        "states": states,
        "lapsed": lapsed[0],
        "streams_before": before,
        "streams_after": after,
        "per_task": _per_task(before, after, tasks),
        "windows": windows,
    }
    progress(
        NAME,
        f"{phase['name']}: {tasks:,} tasks in {elapsed:.1f} s = {overall:.0f}/s ({overall / ideal:.2f} of ideal {ideal:.0f}/s); "
        f"windows {result['window_rate_min']:.0f}-{result['window_rate_max']:.0f}/s, last/first x{result['last_vs_first_rate']:.2f}; "
        f"broker CPU {first['cpu_ms_per_task']['broker']:.2f} -> {last['cpu_ms_per_task']['broker']:.2f} ms/task; "
        f"states {states}",
    )
    return result


def _machine(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Cores busy between two meter readings: all of them, the mesh's processes, the rest."""
    dt = b["t"] - a["t"]
    if dt <= 0:
        return {}
    busy = (b["machine_busy"] - a["machine_busy"]) / dt
    mesh = sum(b[k] - a[k] for k in ("broker", "agents", "client")) / dt
    return {
        "busy_cores": busy,
        "mesh_cores": mesh,
        "other_cores": busy - mesh,
        "steal_cores": (b["steal"] - a["steal"]) / dt,
    }


def _per_task(before: dict[str, Any] | None, after: dict[str, Any] | None, n: float) -> dict[str, float]:
    """Messages stored in each stream, and queue deliveries, per task between two readings."""
    if not before or not after or not n:
        return {}
    out = {
        f"{label}_stored": (after[label]["last_seq"] - before[label]["last_seq"]) / n
        for label in ("tasks", "work", "events")
    }
    out["deliveries"] = (after["queue"]["deliveries"] - before["queue"]["deliveries"]) / n
    # an item delivered more than once: handed back (it arrived beyond an agent's free
    # capacity) or lent again after a lapsed lease
    out["extra_deliveries"] = out["deliveries"] - out["work_stored"]
    return out


def _window_line(phase: dict[str, Any], w: dict[str, Any]) -> str:
    s = w.get("streams") or {}
    return (
        f"{phase['name']}, window {w['window']}: {w['rate']:.0f}/s ({w['ratio_ideal']:.2f}), p50 {w['p50_ms']:.0f} ms, "
        f"CPU ms/task broker {w['cpu_ms_per_task']['broker']:.2f} agents {w['cpu_ms_per_task']['agents']:.2f} "
        f"client {w['cpu_ms_per_task']['client']:.2f}; records {s.get('tasks', {}).get('messages')}, "
        f"work {s.get('work', {}).get('messages')}, events {s.get('events', {}).get('messages')}; consumers {w['consumers_total']}; "
        + ", ".join(f"{k} {v:.2f}" for k, v in (w.get("per_task") or {}).items())
        + "; cores: "
        + ", ".join(f"{k.removesuffix('_cores')} {v:.2f}" for k, v in (w.get("machine") or {}).items())
    )


def _run_phase(b: Any, d: Any, phase: dict[str, Any], tasks: int, window: int, ttl: str) -> dict[str, Any]:
    """One phase: its agents (with ``ttl`` as their MESH_FINISHED_TTL), its tasks, its windows."""
    assert b.process is not None
    os.environ["MESH_FINISHED_TTL"] = ttl  # the client's settings (Settings.from_env)
    brief = write_brief(
        d,
        f"nap{phase['capacity']}",
        ["nap"],
        kind="bench.workers:Nap",
        capacity=phase["capacity"],
        options={"seconds": NAP_S},
    )
    env = child_env(MESH_FINISHED_TTL=ttl)
    runs = [AgentRun(brief, b.url, f"nap{phase['capacity']}-{i}", d, env=env) for i in range(phase["agents"])]
    try:
        for r in runs:
            r.start()
        for r in runs:
            r.wait_ready(30)
        meter = _Meter(b.process.pid, [r.pid for r in runs])
        res = anyio.run(_phase, b, phase, meter, tasks, window)
    finally:
        for r in runs:
            r.stop()
    res["finished_ttl"] = ttl
    res["log_problems"] = log_problems([r.log for r in runs])
    for w in res["windows"]:
        progress(NAME, _window_line(phase, w))
    return res


def main(quick: bool = False) -> dict[str, Any]:
    tasks = _tasks_per_phase(quick)
    window = _window(tasks)
    ttl = os.environ.get("BENCH_SOAK_TTL") or (FINISHED_TTL_QUICK if quick else FINISHED_TTL)
    out: dict[str, Any] = {
        "tasks_per_phase": tasks,
        "window": window,
        "nap_s": NAP_S,
        "finished_ttl": ttl,
        "phases": [],
    }
    with broker() as b, tempdir() as d:
        progress(NAME, f"fresh broker; {len(PHASES)} phases of {tasks:,} tasks, windows of {window:,}")
        for phase in PHASES:
            out["phases"].append(_run_phase(b, d, phase, tasks, window, ttl))
        # After the TTL, the live bucket holds nothing finished; the work stream nothing.
        os.environ["MESH_FINISHED_TTL"] = ttl
        ttl_s = mesh_settings().finished_ttl_s
        if ttl_s <= 60:
            progress(NAME, f"waiting {ttl_s + 3:.0f} s for the last finished records to expire")
            time.sleep(ttl_s + 3)
        out["after_ttl"] = anyio.run(_after, b)
        out["after_ttl"]["waited_s"] = ttl_s + 3 if ttl_s <= 60 else 0.0
        progress(NAME, f"after the TTL: {out['after_ttl']}")
        if ttl_s <= 60:
            # The control: the first phase again on the same broker (now holding both
            # phases' history), with records that do not expire during the phase, to
            # tell the cost of expiring records from any cost of a growing history.
            control = {**PHASES[0], "name": f"{PHASES[0]['name']}, no expiry (control)"}
            out["control"] = _run_phase(b, d, control, tasks, window, CONTROL_TTL)
    out["setup"] = (
        f"one fresh nats-server (file storage); per phase 4 `mesh agent run` processes of kind bench.workers:Nap "
        f"({NAP_S * 1000:.0f} ms, no writes while napping); the client (this process) keeps N tasks in flight; "
        f"MESH_FINISHED_TTL={ttl} for agents and client (the control phase: {CONTROL_TTL}); {tasks:,} tasks per "
        "phase after a warm-up of N tasks"
    )
    return out


async def _after(b: Any) -> dict[str, Any]:
    from mesh.client import Mesh

    mesh = await Mesh.connect(b.url, client_id="soak-after", settings=mesh_settings())
    try:
        streams = await _streams(mesh)
    finally:
        await mesh.close()
    jsz = await anyio.to_thread.run_sync(_jsz, b)
    return {"streams": streams, "consumers_total": int(jsz.get("consumers", 0))}
