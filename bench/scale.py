"""Scale: tasks/s and p50 with 1, 2, 10 and 100 agents serving one capability, and a
directory of 1,000 agents.

Agents run in agent host processes (bench/host.py: many full agents per process,
each with its own connection). For each agent count: p50 of sequential no-op tasks,
tasks/s with 64 in flight, broker messages per task (all messages in and out of the
broker, divided by the tasks: with one queue per capability a task's item goes to one
agent, whatever the number of agents pulling), CPU per task, the pull requests waiting
on the queue, and a CPU profile of nats-server under load (its pprof endpoint).

Directory: 1,000 idle agents (4 host processes); the time to list the directory with
the client API (``Mesh.agents``) and, for comparison, with one KV watch; presence
traffic (card writes per second and bytes) and all broker traffic while idle.
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import anyio

from bench.common import (
    Child,
    broker,
    cpu_seconds,
    dist_ms,
    host_cmd,
    progress,
    ratio,
    rss_mb,
    server_counters,
    spread,
    tempdir,
)
from bench.drive import mesh_concurrent, mesh_sequential
from mesh.broker import free_port

NAME = "scale"
INFLIGHT = 64


async def _waiting(mesh: Any) -> int:
    """Pull requests waiting on the queue of ``echo`` (the consumer scans them)."""
    names = mesh.names
    msg = await mesh.bus.nc.request(
        f"$JS.API.CONSUMER.INFO.{names.work_stream}.{names.queue_consumer('echo')}", b"", timeout=5
    )
    return int(json.loads(msg.data).get("num_waiting", 0))


async def _profiled(b: Any, mesh: Any, port: int, seconds: float) -> dict[str, Any]:
    """nats-server's CPU profile while the client keeps 64 no-op tasks in flight."""
    from bench.load_profile import parse_pprof, summarize_pprof

    got: dict[str, bytes] = {}

    def fetch() -> None:
        url = f"http://127.0.0.1:{port}/debug/pprof/profile?seconds={int(seconds)}"
        with urllib.request.urlopen(url, timeout=seconds + 30) as resp:
            got["cpu"] = resp.read()

    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, fetch)
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds + 0.5:
            await mesh_concurrent(mesh, INFLIGHT * 4, INFLIGHT)
    summary = summarize_pprof(parse_pprof(got["cpu"]))
    return {"by_activity": summary["by_activity"], "cum": summary["cum"][:12]}


async def _serve(
    b: Any, host: Child, count: int, n_seq: int, n_conc: int, repeats: int, port: int, profile_s: float
) -> dict[str, Any]:
    from mesh.client import Mesh

    mesh = await Mesh.connect(b.url, client_id="bench-scale")
    runs = []
    waiting: dict[str, int] = {}
    profile: dict[str, Any] = {}
    try:
        waiting["idle"] = await _waiting(mesh)
        await mesh_sequential(mesh, 5)
        for rep in range(repeats):
            seq = await mesh_sequential(mesh, n_seq)
            before = (time.process_time(), cpu_seconds(host.pid), server_counters(b))
            conc = await mesh_concurrent(mesh, n_conc, INFLIGHT)
            after = (time.process_time(), cpu_seconds(host.pid), server_counters(b))
            run = {
                "seq": dist_ms(seq),
                "rate": conc["rate"],
                "conc": dist_ms(conc["latencies"]),
                "lapsed": conc["lapsed"],
                "server_msgs_per_task": (
                    after[2]["in_msgs"] - before[2]["in_msgs"] + after[2]["out_msgs"] - before[2]["out_msgs"]
                )
                / n_conc,
                "cpu_ms_per_task": {
                    "client": (after[0] - before[0]) * 1000 / n_conc,
                    "agents": (after[1] - before[1]) * 1000 / n_conc,
                    "server": (after[2]["cpu_s"] - before[2]["cpu_s"]) * 1000 / n_conc,
                },
            }
            runs.append(run)
            progress(
                NAME,
                f"{count} agents, repeat {rep + 1}/{repeats}: p50 {run['seq']['p50']:.1f} ms, {run['rate']:.0f} tasks/s, "
                f"{run['server_msgs_per_task']:.0f} broker messages per task",
            )
        waiting["after_load"] = await _waiting(mesh)
        if profile_s:
            profile = await _profiled(b, mesh, port, profile_s)
    finally:
        await mesh.close()
    return {
        "waiting_pulls": waiting,
        "broker_profile": profile,
        "runs": runs,
        "p50_ms": spread([r["seq"]["p50"] for r in runs]),
        "rate": spread([r["rate"] for r in runs]),
        "msgs_per_task": spread([r["server_msgs_per_task"] for r in runs]),
        "lapsed": sum(r["lapsed"] for r in runs),
        "agents_cpu_ms_per_task": spread([r["cpu_ms_per_task"]["agents"] for r in runs]),
        "server_cpu_ms_per_task": spread([r["cpu_ms_per_task"]["server"] for r in runs]),
    }


async def _directory(b: Any, hosts: list[Child], agents: int, window_s: float, list_repeats: int) -> dict[str, Any]:
    from mesh.client import Mesh
    from protocol import Names

    mesh = await Mesh.connect(b.url, client_id="bench-directory")
    try:
        t0 = time.monotonic()
        while len(await mesh.agents()) < agents:
            if time.monotonic() - t0 > 60:
                raise RuntimeError("directory never reached the expected size")
            await anyio.sleep(0.2)
        listed = []
        for _ in range(list_repeats):
            t = time.perf_counter()
            cards = await mesh.agents()
            listed.append(time.perf_counter() - t)
        watched = []
        for _ in range(list_repeats):
            t = time.perf_counter()
            watcher = await mesh.bus.agents.watch("agent.>", ignore_deletes=True)
            n = 0
            async for entry in watcher:
                if entry is None:
                    break
                n += 1
            await watcher.stop()  # type: ignore[no-untyped-call]
            watched.append(time.perf_counter() - t)
        # Presence traffic: every card write, as the broker delivers it to a subscriber.
        names = Names()
        counts = {"msgs": 0, "bytes": 0}

        async def count(msg: Any) -> None:
            counts["msgs"] += 1
            counts["bytes"] += (
                len(msg.data) + len(msg.subject) + sum(len(k) + len(v) for k, v in (msg.headers or {}).items())
            )

        sub = await mesh.bus.nc.subscribe(f"$KV.{names.agents_bucket}.>", cb=count)
        before = server_counters(b)
        host_cpu0 = sum(cpu_seconds(h.pid) for h in hosts)
        t = time.monotonic()
        await anyio.sleep(window_s)
        elapsed = time.monotonic() - t
        after = server_counters(b)
        host_cpu = sum(cpu_seconds(h.pid) for h in hosts) - host_cpu0
        await sub.unsubscribe()
    finally:
        await mesh.close()
    return {
        "agents": agents,
        "listed": len(cards),
        "watch_listed": n,
        "list_ms": dist_ms(listed),
        "watch_list_ms": dist_ms(watched),
        "presence_msgs_per_s": counts["msgs"] / elapsed,
        "presence_kib_per_s": counts["bytes"] / elapsed / 1024,
        "server_in_msgs_per_s": (after["in_msgs"] - before["in_msgs"]) / elapsed,
        "server_out_msgs_per_s": (after["out_msgs"] - before["out_msgs"]) / elapsed,
        "server_in_kib_per_s": (after["in_bytes"] - before["in_bytes"]) / elapsed / 1024,
        "server_cpu_pct": (after["cpu_s"] - before["cpu_s"]) / elapsed * 100,
        "hosts_cpu_pct": host_cpu / elapsed * 100,
        "hosts_rss_mib": sum(rss_mb(h.pid) for h in hosts),
        "window_s": elapsed,
    }


def main(quick: bool = False) -> dict[str, Any]:
    counts = (1, 2, 5) if quick else (1, 2, 10, 100)
    n_seq, n_conc, repeats = (5, INFLIGHT, 1) if quick else (100, 640, 3)
    dir_agents, dir_hosts = (20, 2) if quick else (1000, 4)
    out: dict[str, Any] = {"inflight": INFLIGHT, "n_seq": n_seq, "n_conc": n_conc, "repeats": repeats, "by_agents": {}}
    for count in counts:
        port = free_port()
        with broker("--profile", str(port)) as b:
            host = Child(
                f"host-{count}", host_cmd(b.url, count=count, serves=["echo"], capacity=INFLIGHT, id_prefix="s")
            ).start()
            try:
                host.wait_ready(timeout=120)
                progress(NAME, f"{count} agents up in one host process ({host.ready_line})")
                rss = rss_mb(host.pid)
                # Past 10 agents a task takes ~100x longer: fewer tasks keep the suite's time bounded.
                big = count > 10 and not quick
                res = anyio.run(
                    _serve,
                    b,
                    host,
                    count,
                    n_seq // 3 if big else n_seq,
                    n_conc * 3 // 10 if big else n_conc,
                    repeats,
                    port,
                    1.0 if quick else 5.0,
                )
                res["n_seq"], res["n_conc"] = (n_seq // 3, n_conc * 3 // 10) if big else (n_seq, n_conc)
                res["host_rss_mib"] = rss
                out["by_agents"][str(count)] = res
            finally:
                host.stop()
    by = out["by_agents"]
    top = str(counts[-1])
    out["ratio_rate_top_vs_2"] = spread(
        [ratio(a["rate"], b["rate"]) for a, b in zip(by[top]["runs"], by["2"]["runs"], strict=False)]
    )
    out["top_agents"] = counts[-1]

    with broker() as b, tempdir() as d:
        per = dir_agents // dir_hosts
        hosts = [
            Child(
                f"dir-host-{i}",
                host_cmd(b.url, count=per, serves=["idle"], capacity=1, id_prefix=f"d{i}-", start_concurrency=16),
                log=d / f"h{i}.log",
            )
            for i in range(dir_hosts)
        ]
        try:
            t0 = time.monotonic()
            for h in hosts:
                h.start()
            for h in hosts:
                h.wait_ready(timeout=300)
            started = time.monotonic() - t0
            progress(NAME, f"directory: {dir_agents} agents up in {started:.1f} s ({dir_hosts} host processes)")
            res = anyio.run(_directory, b, hosts, dir_agents, 2.0 if quick else 10.0, 2 if quick else 5)
            res["start_s"] = started
            out["directory"] = res
            progress(
                NAME,
                f"directory: list {res['list_ms']['p50']:.0f} ms (one KV watch: {res['watch_list_ms']['p50']:.0f} ms); "
                f"presence {res['presence_msgs_per_s']:.0f} msgs/s, {res['presence_kib_per_s']:.0f} KiB/s; "
                f"broker idle load {res['server_cpu_pct']:.0f}% CPU",
            )
        finally:
            for h in hosts:
                h.stop(timeout=60)
    out["setup"] = (
        f"agents in one bench/host.py process (each a full Agent with its own connection, capacity {INFLIGHT}); client in the bench "
        f"process; {INFLIGHT} tasks in flight for tasks/s; p50 from sequential tasks"
    )
    return out
