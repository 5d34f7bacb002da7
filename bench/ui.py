"""What an open `mesh ui` page costs the mesh: CPU and latency per no-op task with the
page open against closed, on a directory of 1,000 agents, in one run.

One broker; one `mesh agent run` echo agent doing the tasks; 1,000 more agents' cards
heartbeating every 2 s (as 1,000 idle agents would: 500 directory writes a second),
written by one helper process; one `mesh ui` process following the mesh all along. The
page is opened in headless Chromium (Debian's, driven by Playwright) for the "open"
blocks and navigated away for the "closed" ones, alternating, so both sides of each
ratio are measured in the same seconds (this 2-core machine's baseline moves from one
batch to the next). Without Chromium the page is an event-stream reader (said in the
result).

CPU per task is the broker's, the echo agent's and the `mesh ui` process's over a
block, divided by its tasks; the browser's own CPU is reported apart (it runs on the
operator's machine, not the mesh's).

    .venv/bin/python -m bench.ui            # 3 x 200 tasks each side
    .venv/bin/python -m bench.ui --quick    # a smoke run

Not part of ``bench.run``'s report: printed and written to bench/results/ui.json.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from bench.common import (
    AgentRun,
    agent_runs,
    child_env,
    cpu_seconds,
    dist_ms,
    progress,
    ratio,
    run_standalone,
    spread,
    write_brief,
)
from bench.drive import mesh_sequential

NAME = "ui"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HEARTBEAT_S = 2.0


async def _directory(server: str, count: int) -> None:
    """Heartbeat ``count`` agents' cards until killed (the helper process)."""
    from mesh.client import Mesh
    from protocol import AgentCard

    mesh = await Mesh.connect(server, client_id="bench-directory")
    started = time.time()
    beat = 0
    while True:
        t = time.monotonic()
        for i in range(count):
            card = AgentCard(
                id=f"idle-{i:04d}",
                role="idle",
                serves=(f"idle.{i % 20}",),
                capacity=4,
                load=(i + beat) % 5 if i % 7 == 0 else 0,
                started=started,
                heartbeat_s=HEARTBEAT_S,
                host="bench",
            )
            await mesh.bus.publish_card(card, ttl_s=3 * HEARTBEAT_S)
        beat += 1
        await anyio.sleep(max(0.0, HEARTBEAT_S - (time.monotonic() - t)))


def _descendants_cpu(root: int, exclude: set[int]) -> float:
    """CPU seconds of every live descendant of ``root`` outside the subtrees of
    ``exclude`` (what is left is the browser and its driver)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    total, frontier = 0.0, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in exclude:
                frontier.append(child)
                cpu = cpu_seconds(child)
                total += 0.0 if cpu != cpu else cpu  # a process gone meanwhile
    return total


class _Page:
    """The page in Chromium (or, without it, an event-stream reader)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.browser: Any = None
        self.page: Any = None
        self.reader: anyio.abc.Process | None = None
        self.kind = "chromium" if shutil.which(CHROMIUM) else "event-stream reader (no Chromium)"

    async def start(self) -> None:
        if self.kind == "chromium":
            from playwright.async_api import async_playwright

            self._pw = await async_playwright().start()
            self.browser = await self._pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            self.page = await self.browser.new_page()

    async def open(self) -> None:
        if self.page is not None:
            await self.page.goto(self.url)
            await self.page.wait_for_selector("#agents tbody tr")
        else:
            self.reader = await anyio.open_process(
                ["curl", "-sN", f"{self.url}api/stream"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )

    async def close(self) -> None:
        if self.page is not None:
            await self.page.goto("about:blank")
        elif self.reader is not None:
            self.reader.terminate()
            await self.reader.wait()
            self.reader = None

    async def stop(self) -> None:
        if self.browser is not None:
            await self.browser.close()
            await self._pw.stop()


async def _measure(
    server: str, url: str, pids: dict[str, int], others: set[int], n: int, repeats: int, block: int
) -> Any:
    from mesh.client import Mesh

    mesh = await Mesh.connect(server, client_id="bench-ui")
    page = _Page(url)
    await page.start()
    runs = []
    me = os.getpid()
    try:
        await mesh_sequential(mesh, 20)
        for rep in range(repeats):
            got: dict[str, dict[str, Any]] = {
                s: {"lat": [], "cpu": 0.0, "ui": 0.0, "browser": 0.0} for s in ("closed", "open")
            }
            for i in range(max(n // block, 1)):
                for side in ("closed", "open") if i % 2 == 0 else ("open", "closed"):
                    await (page.open() if side == "open" else page.close())
                    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
                    browser0 = _descendants_cpu(me, others)
                    got[side]["lat"] += await mesh_sequential(mesh, block)
                    got[side]["cpu"] += sum(cpu_seconds(p) - cpu0[k] for k, p in pids.items())
                    got[side]["ui"] += cpu_seconds(pids["ui"]) - cpu0["ui"]
                    got[side]["browser"] += _descendants_cpu(me, others) - browser0
            run = {
                side: {
                    "latency": dist_ms(v["lat"]),
                    "mesh_cpu_ms_per_task": 1000 * v["cpu"] / len(v["lat"]),
                    "ui_cpu_ms_per_task": 1000 * v["ui"] / len(v["lat"]),
                    "browser_cpu_ms_per_task": 1000 * max(v["browser"], 0.0) / len(v["lat"]),
                }
                for side, v in got.items()
            }
            runs.append(run)
            progress(
                NAME,
                f"repeat {rep + 1}/{repeats}: p50 closed {run['closed']['latency']['p50']:.2f} ms, open "
                f"{run['open']['latency']['p50']:.2f} ms; mesh CPU/task closed {run['closed']['mesh_cpu_ms_per_task']:.2f}"
                f" ms, open {run['open']['mesh_cpu_ms_per_task']:.2f} ms",
            )
    finally:
        await page.stop()
        await mesh.close()

    def over(key: str, pick: Any) -> dict[str, Any]:
        return spread([ratio(pick(r["open"]), pick(r["closed"])) for r in runs])

    return {
        "page": page.kind,
        "runs": runs,
        "summary": {
            "page": page.kind,
            "ratio_open_closed_p50": over("p50", lambda s: s["latency"]["p50"]),
            "ratio_open_closed_p99": over("p99", lambda s: s["latency"]["p99"]),
            "ratio_open_closed_mesh_cpu": over("cpu", lambda s: s["mesh_cpu_ms_per_task"]),
            "mesh_cpu_ms_per_task": {
                side: spread([r[side]["mesh_cpu_ms_per_task"] for r in runs]) for side in ("closed", "open")
            },
            "ui_cpu_ms_per_task": {
                side: spread([r[side]["ui_cpu_ms_per_task"] for r in runs]) for side in ("closed", "open")
            },
            "browser_cpu_ms_per_task_open": spread([r["open"]["browser_cpu_ms_per_task"] for r in runs]),
            "p50_ms": {side: spread([r[side]["latency"]["p50"] for r in runs]) for side in ("closed", "open")},
        },
    }


def board_costs(tasks: int, agents: int, changes: int = 50) -> dict[str, Any]:
    """The view's own work on a board of ``tasks`` (half held) and ``agents``: taking the
    records in, one page's update after a change (the filter and sort of every task), and
    `mesh top`'s analysis, which the view runs once a second."""
    import statistics

    from mesh.ui import Board, Query, Viewer
    from protocol import AgentCard, Claim, apply, new_task

    t0 = 1_700_000_000.0
    board = Board()
    records = [
        new_task(task_id=f"t{n:06d}", capability=f"cap.{n % 50}", instruction=f"task {n}", requester="me", now=t0 + n)
        for n in range(tasks)
    ]
    t = time.perf_counter()
    for i, record in enumerate(records):
        board.put_record(apply(record, Claim(actor=f"a{i % agents:04d}"), t0 + i) if i % 2 else record, i + 1)
    put_s = time.perf_counter() - t
    for i in range(agents):
        board.put_card(AgentCard(id=f"a{i:04d}", serves=(f"cap.{i % 50}",), capacity=4, load=i % 5), 0.0)
    viewer = Viewer({"tasks": Query("tasks"), "agents": Query("agents")})
    viewer.update(board)
    updates = []
    for k in range(changes):
        record = records[(k * 2) % tasks]  # an open one: claimed now
        board.put_record(apply(record, Claim(actor="x"), t0 + 2 * tasks + k), 10 * tasks + k)
        t = time.perf_counter()
        viewer.update(board)
        updates.append(time.perf_counter() - t)
    flags = []
    for k in range(10):
        t = time.perf_counter()
        board.reflag(t0 + 2 * tasks + 40 * k)
        flags.append(time.perf_counter() - t)
    return {
        "tasks": tasks,
        "agents": agents,
        "put_us_per_record": 1e6 * put_s / tasks,
        "page_update_ms": {"p50": 1000 * statistics.median(updates), "max": 1000 * max(updates)},
        "analysis_ms": {"p50": 1000 * statistics.median(flags), "max": 1000 * max(flags)},
    }


def main(quick: bool = False) -> dict[str, Any]:
    from mesh.broker import Broker, free_ports

    n, repeats, block, agents = (40, 1, 20, 100) if quick else (200, 3, 25, 1000)
    with (
        tempfile.TemporaryDirectory(prefix="bench-ui-") as tmp,
        tempfile.TemporaryDirectory(prefix="bench-js-") as store,
        Broker(store=store) as broker,
    ):
        d = Path(tmp)
        echo = write_brief(d, "echo", ["echo"], kind="echo", capacity=64)
        port = free_ports(1)[0]
        env = child_env()
        directory = subprocess.Popen(
            [sys.executable, "-m", "bench.ui", "--directory", str(agents), broker.url], env=env
        )
        ui = subprocess.Popen(
            [sys.executable, "-m", "mesh", "ui", "--port", str(port), "--server", broker.url],
            stdout=subprocess.PIPE,
            env=env,
        )
        try:
            with agent_runs([AgentRun(echo, broker.url, "echo", d)]) as runs:
                assert ui.stdout is not None
                if "mesh ui at" not in ui.stdout.readline().decode():
                    raise RuntimeError("mesh ui did not start")
                time.sleep(2 * HEARTBEAT_S)  # the directory is full: every card written once
                progress(NAME, f"{agents} agents' cards, one echo agent, mesh ui; {repeats} x {n} tasks per side")
                assert broker.process is not None and runs[0].proc is not None
                pids = {"broker": broker.process.pid, "echo": runs[0].proc.pid, "ui": ui.pid}
                others = {*pids.values(), directory.pid}
                result: dict[str, Any] = anyio.run(
                    _measure, broker.url, f"http://127.0.0.1:{port}/", pids, others, n, repeats, block
                )
        finally:
            for proc in (ui, directory):
                proc.terminate()
                proc.wait(10)
            if ui.stdout is not None:
                ui.stdout.close()
    result["board"] = board_costs(1000 if quick else 10_000, agents)
    result["summary"]["board"] = result["board"]
    progress(NAME, f"the view's own work at {result['board']['tasks']} tasks: {result['board']}")
    result["setup"] = (
        f"1 broker, 1 echo agent process, {agents} agents' cards heartbeating every {HEARTBEAT_S:g} s from one "
        "helper process, 1 mesh ui process; the client and the browser driver in the bench process"
    )
    return result


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--directory":
        anyio.run(_directory, sys.argv[3], int(sys.argv[2]))
    else:
        run_standalone(NAME, __doc__, main)
