"""What authorization costs: the same no-op tasks with the broker's permissions on and
off, in one run.

Two brokers side by side: one open, one run with ``--auth`` (an nkey user per process,
with its role's publish/subscribe permissions: docs/SECURITY.md). Each has one
`mesh agent run` echo agent (the one on the auth broker connects with its agent key)
and a client in this process (with a client key on the auth broker). The client
alternates between the two in blocks: sequential tasks (p50 latency), then a burst of
concurrent ones (throughput), so whatever else the machine does slows both alike.
Broker CPU per task comes from each nats-server's own CPU time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio

from bench.common import (
    AgentRun,
    agent_runs,
    broker,
    child_env,
    cpu_seconds,
    dist_ms,
    progress,
    ratio,
    spread,
    tempdir,
    write_brief,
)
from bench.drive import mesh_concurrent, mesh_sequential

NAME = "auth"


@contextlib.contextmanager
def auth_broker(keys: Path) -> Iterator[Any]:
    from mesh.broker import Broker

    with tempfile.TemporaryDirectory(prefix="bench-js-") as store:
        b = Broker(store=store, auth=str(keys))
        b.start()
        try:
            yield b
        finally:
            b.stop()


async def _measure(open_url: str, auth_url: str, client_seed: Path, pids: dict[str, int], sizes: dict[str, int]) -> Any:
    from mesh.client import Mesh
    from mesh.settings import Settings

    meshes = {
        "off": await Mesh.connect(open_url, client_id="bench-client"),
        "on": await Mesh.connect(
            auth_url, client_id="bench-client", settings=dataclasses.replace(Settings.from_env(), nkey=str(client_seed))
        ),
    }
    lat: dict[str, list[float]] = {"off": [], "on": []}
    rates: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, float] = {"off": 0.0, "on": 0.0}
    tasks: dict[str, int] = {"off": 0, "on": 0}
    #: per block: the ratios on/off of p50 and of rate (a same-second comparison)
    paired: dict[str, list[float]] = {"p50": [], "rate": []}
    try:
        for mesh in meshes.values():  # warm-up: queues made, connections warm
            await mesh_sequential(mesh, sizes["warmup"])
            await mesh_concurrent(mesh, sizes["warmup"] * 4, 16)
        for block in range(sizes["blocks"]):
            block_p50: dict[str, float] = {}
            for mode in ("off", "on") if block % 2 == 0 else ("on", "off"):
                mesh = meshes[mode]
                before = cpu_seconds(pids[mode])
                seq = await mesh_sequential(mesh, sizes["sequential"])
                lat[mode] += seq
                block_p50[mode] = dist_ms(seq)["p50"]
                burst = await mesh_concurrent(mesh, sizes["concurrent"], sizes["inflight"])
                rates[mode].append(burst["rate"])
                cpu[mode] += cpu_seconds(pids[mode]) - before
                tasks[mode] += sizes["sequential"] + sizes["concurrent"]
            paired["p50"].append(ratio(block_p50["on"], block_p50["off"]))
            paired["rate"].append(ratio(rates["on"][-1], rates["off"][-1]))
            progress(
                NAME,
                f"block {block + 1}/{sizes['blocks']}: p50 off {dist_ms(lat['off'])['p50']:.2f} ms, "
                f"on {dist_ms(lat['on'])['p50']:.2f} ms; rate off {rates['off'][-1]:.0f}/s, on {rates['on'][-1]:.0f}/s",
            )
        late = await _late_reader(meshes["on"], sizes["late"])
        following = await _event_follower(auth_url, client_seed, meshes["on"], sizes)
        views = await _view_refresh(auth_url, client_seed, meshes["on"], sizes)
    finally:
        for mesh in meshes.values():
            await mesh.close()
    p50 = {mode: dist_ms(v)["p50"] for mode, v in lat.items()}
    return {
        "latency_ms": {mode: dist_ms(v) for mode, v in lat.items()},
        "rate_per_s": {mode: spread(v) for mode, v in rates.items()},
        "broker_cpu_ms_per_task": {mode: 1000 * cpu[mode] / max(tasks[mode], 1) for mode in cpu},
        "ratio_p50_on_off": ratio(p50["on"], p50["off"]),
        "ratio_rate_on_off": ratio(spread(rates["on"])["median"], spread(rates["off"])["median"]),
        "paired_ratio_p50_on_off": spread(paired["p50"]),
        "paired_ratio_rate_on_off": spread(paired["rate"]),
        "late_reader_ms": late,
        "event_follower": following,
        "view_refresh_ms": views,
        "sizes": sizes,
    }


async def _late_reader(mesh: Any, n: int) -> dict[str, Any]:
    """What a reader pays for a write that does not follow the last revision it read (a
    reviewer or a view joining a task late, a party that missed writes): it checks the
    writes before it, from the archive, first (PROTOCOL.md 6.23). Measured on ``n`` of
    the finished echo tasks (one write each: a walk of one archived write and the
    answer that none follows): the walk with its verification, against verifying the
    same write as a party that holds the revision before it."""
    walk: list[float] = []
    plain: list[float] = []
    for key, value, headers, revision in (await mesh.bus.task_writes())[:n]:
        task_id = mesh.names.parse_task_key(key)
        mesh.bus.trust = mesh.bus.trust.fresh()  # nothing of the task read yet
        start = time.perf_counter()
        await mesh.bus._verified_after_the_writes_between(task_id, revision, value, headers)
        walk.append(time.perf_counter() - start)
        reader = mesh.bus.trust.fresh()
        start = time.perf_counter()
        reader.admit(task_id, key, revision, value, headers)
        plain.append(time.perf_counter() - start)
    return {"writes_per_task": 1, "archive_walk": dist_ms(walk), "verify_only": dist_ms(plain)}


async def _event_follower(auth_url: str, client_seed: Path, mesh: Any, sizes: dict[str, int]) -> dict[str, Any]:
    """What checking every event costs a follower that shows or exports them (`mesh
    watch`, the OTel exporter: :class:`mesh.backing.Backing`), while a burst of tasks
    runs: the time from an event's arrival to its verdict, and how many events had to
    be looked up in the archive (their write not yet verified from the republished
    ones). A second connection, as a separate `mesh watch` would have."""
    from mesh.client import Mesh
    from mesh.settings import Settings

    settings = dataclasses.replace(Settings.from_env(), nkey=str(client_seed))
    follower = await Mesh.connect(auth_url, client_id="bench-client", settings=settings)
    checks: list[float] = []
    unbacked = 0
    try:
        async with follower.backing() as backing, anyio.create_task_group() as tg:
            events = follower.events()

            async def check() -> None:
                nonlocal unbacked
                async for event in events:
                    start = time.perf_counter()
                    unbacked += not await backing.backed(event)
                    checks.append(time.perf_counter() - start)

            tg.start_soon(check)
            burst = await mesh_concurrent(mesh, sizes["late"], sizes["inflight"])
            with anyio.move_on_after(10):
                seen = -1
                while len(checks) != seen:  # until the events stop coming
                    seen = len(checks)
                    await anyio.sleep(0.5)
            tg.cancel_scope.cancel()
        looked_up = backing.looked_up
    finally:
        await follower.close()
    return {
        "tasks": sizes["late"],
        "events": len(checks),
        "unbacked": unbacked,
        "looked_up_in_archive": looked_up,
        "check": dist_ms(checks),
        "burst_rate_per_s": burst["rate"],
    }


async def _view_refresh(auth_url: str, client_seed: Path, mesh: Any, sizes: dict[str, int]) -> dict[str, Any]:
    """What a refresh of `mesh top` costs with identities while tasks run, read two ways
    on the same broker, each on a fresh connection: ``polling`` reads and verifies the
    whole tasks bucket every refresh (`mesh top --once`, and the live mode before it
    followed: the bucket holds every task finished in the last MESH_FINISHED_TTL, here
    the tens of thousands of the blocks above), ``following`` reads it once and then
    follows the republished writes, verifying each as it comes (the live mode now, and
    `mesh ui`). Refreshes every 0.25 s during bursts of tasks."""
    from mesh.client import Mesh
    from mesh.settings import Settings
    from mesh.top import take_snapshot
    from mesh.ui.board import Board
    from mesh.ui.feed import follow_mesh

    settings = dataclasses.replace(Settings.from_env(), nkey=str(client_seed))
    out: dict[str, Any] = {}
    for mode in ("polling", "following"):
        records = len(await mesh.bus.task_writes())
        viewer = await Mesh.connect(auth_url, client_id="bench-client", settings=settings)
        times: list[float] = []
        rates: list[float] = []
        try:
            async with anyio.create_task_group() as tg:
                start = time.perf_counter()
                board = Board()
                if mode == "following":
                    await tg.start(follow_mesh, viewer, board)
                else:
                    await take_snapshot(viewer)
                first = time.perf_counter() - start
                tg.start_soon(_refresh_every, viewer, board if mode == "following" else None, times)
                with anyio.move_on_after(30):
                    while len(times) < sizes["refreshes"]:  # bursts until enough refreshes ran
                        rates.append((await mesh_concurrent(mesh, sizes["late"], sizes["inflight"]))["rate"])
                tg.cancel_scope.cancel()
        finally:
            await viewer.close()
        out[mode] = {
            "records_in_bucket": records,
            "first_picture_s": first,
            "refresh": dist_ms(times),
            "burst_rate_per_s": spread(rates),
        }
    return out


async def _refresh_every(viewer: Any, board: Any, times: list[float]) -> None:
    from mesh.top import take_snapshot

    while True:
        start = time.perf_counter()
        if board is None:
            await take_snapshot(viewer)
        else:
            board.snapshot(time.time())
        times.append(time.perf_counter() - start)
        await anyio.sleep(0.25)


def main(quick: bool = False, sizes: dict[str, int] | None = None) -> dict[str, Any]:
    from mesh.identity import ensure_keys

    sizes = sizes or (
        {"warmup": 3, "blocks": 2, "sequential": 10, "concurrent": 40, "inflight": 16, "late": 10, "refreshes": 3}
        if quick
        else {
            "warmup": 20,
            "blocks": 20,
            "sequential": 100,
            "concurrent": 500,
            "inflight": 64,
            "late": 500,
            "refreshes": 10,
        }
    )
    with tempdir() as d:
        seeds = ensure_keys(d / "keys", {"echo1": "agent", "bench-client": "client"})
        echo = write_brief(d, "echo", ["echo"], kind="echo", capacity=64)
        with broker() as open_b, auth_broker(d / "keys") as auth_b:
            (d / "off").mkdir()
            (d / "on").mkdir()
            runs = [
                AgentRun(echo, open_b.url, "echo1", d / "off"),
                AgentRun(echo, auth_b.url, "echo1", d / "on", env=child_env(MESH_NKEY=str(seeds["echo1"]))),
            ]
            with agent_runs(runs):
                progress(NAME, "two brokers (auth off, on), an echo agent on each; alternating blocks")
                assert open_b.process is not None and auth_b.process is not None
                pids = {"off": open_b.process.pid, "on": auth_b.process.pid}
                result: dict[str, Any] = anyio.run(_measure, open_b.url, auth_b.url, seeds["bench-client"], pids, sizes)
    result["setup"] = (
        "2 brokers (open; --auth with nkey users and per-role permissions), 1 echo agent process (capacity 64) on "
        "each, the client in the bench process; file storage; sequential p50 and concurrent bursts, interleaved"
    )
    return result
