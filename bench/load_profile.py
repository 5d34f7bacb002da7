"""Where the CPU goes under LLM-shaped load: every process of the mesh profiled while
it runs the soak's first phase (4 `mesh agent run` processes of capacity 16 napping
200 ms per task, 64 tasks in flight from the client in this process).

- agents and the client: py-spy (``py-spy record --format raw``, sampling on-CPU
  stacks without stopping the process) on one agent process and on this process; if
  py-spy is not installed (it is not a project dependency: ``pip install py-spy``),
  only the CPU split is reported;
- nats-server: its own pprof endpoint (``--profile PORT``), a CPU profile over the
  same seconds, read from the protobuf with the small decoder below (no ``go tool``).

Reported: CPU ms per task of each process over the window; per Python process, the
functions with the most on-CPU samples (self, by the frame that was running) and the
project functions whose calls the CPU was inside (inclusive: each sample counts once
for every distinct function on its stack); for the broker, flat and cumulative top
functions and a roll-up by Go package and type.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import anyio

from bench.common import AgentRun, broker, cpu_seconds, progress, tempdir, write_brief
from mesh.broker import free_port

NAME = "profile"
NAP_S = 0.2
INFLIGHT = 64
AGENTS = 4
CAPACITY = 16


def _py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    if beside.is_file():
        return str(beside)
    return shutil.which("py-spy")


# --- the pprof protobuf, decoded by hand -----------------------------------------------------


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message; length-delimited values as bytes."""
    out = []
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = int.from_bytes(buf[i : i + 8], "little"), i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i : i + n], i + n
        elif wire == 5:
            value, i = int.from_bytes(buf[i : i + 4], "little"), i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((field, wire, value))
    return out


def _ints(wire: int, value: Any) -> list[int]:
    """A repeated integer field: packed (bytes) or one value."""
    if wire != 2:
        return [value]
    out, i = [], 0
    while i < len(value):
        v, i = _varint(value, i)
        out.append(v)
    return out


def parse_pprof(data: bytes) -> dict[str, Any]:
    """Samples of a pprof CPU profile as stacks of function names (leaf first) with
    their CPU nanoseconds."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    strings: list[str] = []
    functions: dict[int, int] = {}  # function id -> name string index
    locations: dict[int, list[int]] = {}  # location id -> function ids, innermost first
    raw_samples: list[tuple[list[int], list[int]]] = []
    sample_types: list[tuple[int, int]] = []
    for field, _wire, value in _fields(data):
        if field == 1:
            f = dict((k, v) for k, _, v in _fields(value))
            sample_types.append((f.get(1, 0), f.get(2, 0)))
        elif field == 2:
            locs: list[int] = []
            values: list[int] = []
            for k, w, v in _fields(value):
                if k == 1:
                    locs += _ints(w, v)
                elif k == 2:
                    values += _ints(w, v)
            raw_samples.append((locs, values))
        elif field == 4:
            lid, funcs = 0, []
            for k, _w, v in _fields(value):
                if k == 1:
                    lid = v
                elif k == 4:
                    line = dict((kk, vv) for kk, _, vv in _fields(v))
                    funcs.append(line.get(1, 0))
            locations[lid] = funcs
        elif field == 5:
            f = dict((k, v) for k, _, v in _fields(value))
            functions[f.get(1, 0)] = f.get(2, 0)
        elif field == 6:
            strings.append(value.decode(errors="replace"))
    types = [strings[t] if t < len(strings) else "?" for t, _ in sample_types]
    which = types.index("cpu") if "cpu" in types else len(types) - 1
    stacks = []
    for locs, values in raw_samples:
        names = []
        for lid in locs:
            for fid in locations.get(lid, []):
                idx = functions.get(fid, 0)
                names.append(strings[idx] if idx < len(strings) else "?")
        stacks.append((names, values[which] if which < len(values) else 0))
    return {"sample_types": types, "stacks": stacks}


def _go_group(name: str) -> str:
    """github.com/nats-io/nats-server/v2/server.(*fileStore).writeMsgRecord -> server.(*fileStore)."""
    tail = name.rsplit("/", 1)[-1]
    parts = tail.split(".")
    if len(parts) >= 3:
        return ".".join(parts[:2])
    return parts[0]


#: what a nats-server goroutine is doing, by a function on its stack (first match wins,
#: leaf side first: a GC assist inside a store counts as GC)
_ACTIVITIES: list[tuple[str, tuple[str, ...]]] = [
    (
        "Go runtime: garbage collection",
        ("runtime.gcBgMarkWorker", "runtime.gcDrain", "runtime.gcAssist", "runtime.bgsweep", "runtime.bgscavenge"),
    ),
    (
        "JetStream: store messages (stream loop: file store, KV compare-and-set, republish)",
        ("(*stream).internalLoop", "(*stream).processJetStreamMsg", "(*fileStore)", "(*msgBlock)"),
    ),
    ("JetStream: consumers (pull requests, deliveries, acks, redeliveries)", ("server.(*consumer)",)),
    (
        "JetStream API requests (stream/consumer info, direct gets)",
        (
            "(*Server).jsStreamInfoRequest",
            "(*Server).jsConsumerInfoRequest",
            "(*stream).processDirectGet",
            "(*Server).jsConsumer",
            "(*Server).jsStream",
        ),
    ),
    (
        "clients: read, parse and route messages to subscribers",
        ("(*client).readLoop", "(*client).processInbound", "(*client).parse", "(*client).deliverMsg"),
    ),
    (
        "clients: flush to sockets (write loop)",
        ("(*client).writeLoop", "(*client).flushOutbound", "(*client).flushClients"),
    ),
    ("monitoring HTTP (the benchmark's reads of /varz, /jsz)", ("net/http.", "(*Server).HandleVarz", "(*Server).Jsz")),
    (
        "Go runtime: scheduler, timers, idle",
        (
            "runtime.schedule",
            "runtime.findRunnable",
            "runtime.mcall",
            "runtime.park_m",
            "runtime.goexit0",
            "runtime.sysmon",
        ),
    ),
]


def _activity(names: list[str]) -> str:
    for label, needles in _ACTIVITIES:
        if any(needle in name for name in names for needle in needles):
            return label
    return "other"


def summarize_pprof(profile: dict[str, Any], limit: int = 15) -> dict[str, Any]:
    total = sum(v for _, v in profile["stacks"]) or 1
    flat: Counter[str] = Counter()
    cum: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    activities: Counter[str] = Counter()
    for names, v in profile["stacks"]:
        if not names:
            continue
        flat[names[0]] += v
        groups[_go_group(names[0])] += v
        activities[_activity(names)] += v
        for n in set(names):
            cum[n] += v

    def top(c: Counter[str]) -> list[dict[str, Any]]:
        return [{"function": k, "pct": 100 * v / total, "ms": v / 1e6} for k, v in c.most_common(limit)]

    return {
        "total_ms": total / 1e6,
        "samples": len(profile["stacks"]),
        "flat": top(flat),
        "cum": top(cum),
        "by_group": top(groups),
        "by_activity": top(activities),
    }


def summarize_heap(profile: dict[str, Any], limit: int = 10) -> dict[str, Any]:
    """The live heap (the profile's last sample type, inuse_space) by allocating function,
    and how much of it is nats-server's subject index (stree: one entry per distinct
    subject of a stream)."""
    total = sum(v for _, v in profile["stacks"]) or 1
    flat: Counter[str] = Counter()
    index = 0
    for names, v in profile["stacks"]:
        if not names:
            continue
        flat[names[0]] += v
        if any("/server/stree." in n or "SubjectTree" in n for n in names):
            index += v
    return {
        "inuse_mib": total / 2**20,
        "subject_index_mib": index / 2**20,
        "flat": [{"function": k, "mib": v / 2**20, "pct": 100 * v / total} for k, v in flat.most_common(limit)],
    }


# --- py-spy's raw (collapsed) stacks ----------------------------------------------------------


def _frame_parts(frame: str) -> tuple[str, str]:
    """'work (bench/workers.py:42)' -> ('work', 'bench/workers.py')."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "/lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return name.strip(), path


#: frames that are on every stack (the process's entry point running the event loop):
#: a sample whose innermost project frame is one of these was in the event loop itself
_ENTRY = ("mesh/__main__.py", "mesh/cli/", "bench/run.py", "bench/__main__.py")


def _ours(path: str, name: str = "") -> bool:
    if path.startswith(_ENTRY) or (path == "bench/load_profile.py" and name == "main"):
        return False
    return path.startswith(("mesh/", "protocol/", "bench/", "agents/"))


#: what a Python process of the mesh is doing, by the innermost frame that says so
#: (exact qualified names of py-spy's frames, checked from the leaf outwards)
_PY_ACTIVITIES: list[tuple[str, tuple[str, ...]]] = [
    ("record compare-and-set (KV write, its ack)", ("Bus._compare_and_set",)),
    (
        "work items and events: send, await their acks",
        (
            "Bus.announce",
            "Bus._send_event",
            "Bus._send_item",
            "Bus._send_acked",
            "_Replies.send",
            "_Replies._on_reply",
            "Announcement.wait",
            "Announcement._acked",
            "Announcement._ack",
            "TaskContext.settle",
        ),
    ),
    ("work item acks and renewals", ("Delivery._settle", "Delivery.ack", "Delivery.renew", "Agent._settle")),
    ("pull requests (asking for items)", ("Pulls.top_up", "Agent._freed")),
    (
        "a work item arrives: decide, spawn",
        ("Pulls._on_msg", "Agent._deliver", "Agent._handle", "Delivery.__init__", "on_delivery", "Agent._hold_task"),
    ),
    ("lease keeper per held task (Agent._keep)", ("Agent._keep", "Agent._watch_record")),
    ("the worker itself (a nap)", ("Nap.work",)),
    (
        "holding a task: context, task group, result",
        ("Agent._hold", "Agent._run_worker", "Agent._finish", "TaskContext.", "apply"),
    ),
    ("heartbeat (directory card)", ("Presence.heartbeat", "Presence.publish_card")),
    ("following the task (subscription per task, record writes)", ("Bus.follow", "Follow.", "_follow", "_judge")),
    ("creating the task (record, checks, ids)", ("Mesh._new_task", "new_task", "new_id", "create_and_announce")),
    ("the benchmark's client loop", ("_load.<locals>.worker", "Mesh.run", "create_and_wait")),
    (
        "nats-py: read, parse, dispatch messages",
        ("Client._read_loop", "Parser.parse", "Client._process_msg", "Subscription._wait_for_msgs", "_read_ready"),
    ),
    ("nats-py: flush to the socket", ("Client._flusher", "Client._flush_pending", "_SelectorSocketTransport.write")),
    ("event loop: select, scheduling, callbacks", ("EpollSelector.select", "BaseEventLoop._run_once", "Handle._run")),
]


def _py_activity(frames: list[tuple[str, str]]) -> str:
    """Project activities first (the innermost project frame that names one), then what
    the library underneath was doing."""

    def match(name: str, needles: tuple[str, ...]) -> bool:
        return any(name == n or (n.endswith(".") and name.startswith(n)) for n in needles)

    library = _PY_ACTIVITIES[-3:]
    for group in (_PY_ACTIVITIES[:-3], library):
        for name, _path in reversed(frames):
            for label, needles in group:
                if match(name, needles):
                    return label
    return "other"


def summarize_pyspy(text: str, limit: int = 18) -> dict[str, Any]:
    total = 0
    self_fn: Counter[str] = Counter()
    self_module: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    innermost_ours: Counter[str] = Counter()
    activities: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame_parts(f) for f in stack.split(";") if f]
        # py-spy's first frame is the thread ("process 123:..." or the thread name)
        frames = [f for f in frames if f[1]]
        if not frames:
            continue
        activities[_py_activity(frames)] += n
        leaf_name, leaf_path = frames[-1]
        self_fn[f"{leaf_name} ({leaf_path})"] += n
        self_module[_module(leaf_path)] += n
        seen = set()
        for name, path in frames:
            if _ours(path, name):
                key = f"{name} ({path})"
                if key not in seen:
                    inclusive[key] += n
                    seen.add(key)
        ours = [f for f in frames if _ours(f[1], f[0])]
        innermost_ours[
            f"{ours[-1][0]} ({ours[-1][1]})" if ours else "(the event loop itself, nats-py callbacks: no project frame)"
        ] += n

    def top(c: Counter[str]) -> list[dict[str, Any]]:
        return [{"function": k, "pct": 100 * v / max(total, 1), "samples": v} for k, v in c.most_common(limit)]

    return {
        "samples": total,
        "self": top(self_fn),
        "self_by_module": top(self_module),
        "inclusive_ours": top(inclusive),
        "innermost_ours": top(innermost_ours),
        "by_activity": top(activities),
    }


def _module(path: str) -> str:
    """Group a file into what a reader would call it: nats-py, asyncio, anyio, ..."""
    first = path.split("/", 1)[0]
    if first in ("nats", "anyio", "msgspec", "structlog", "mesh", "protocol", "bench"):
        return {"nats": "nats-py"}.get(first, first)
    if first == "asyncio" or path.startswith(("selectors", "socket")):
        return "asyncio (event loop, selectors, sockets)"
    return first.removesuffix(".py")


# --- the run ------------------------------------------------------------------------------------


async def _load(url: str, seconds: float, warmup_s: float, marks: dict[str, Any], ready: threading.Event) -> None:
    """64 tasks in flight for warmup + seconds; ``marks`` gets the measured window."""
    from mesh.client import Mesh

    mesh = await Mesh.connect(url, client_id="bench-profile")
    done = [0]
    stop_at = [time.monotonic() + warmup_s + seconds + 60]

    async def worker() -> None:
        while time.monotonic() < stop_at[0]:
            record = await mesh.run("nap", "profile")
            if record.state == "done":
                done[0] += 1

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(INFLIGHT):
                tg.start_soon(worker)
            await anyio.sleep(warmup_s)
            marks["start"] = (time.monotonic(), done[0], time.process_time())
            ready.set()
            await anyio.sleep(seconds)
            marks["end"] = (time.monotonic(), done[0], time.process_time())
            stop_at[0] = 0
            msg = await mesh.bus.nc.request(f"$JS.API.STREAM.INFO.{mesh.names.events_stream}", b"", timeout=5)
            state = json.loads(msg.data).get("state", {})
            marks["events"] = {
                "messages": int(state.get("messages", 0)),
                "subjects": int(state.get("num_subjects", 0)),
                "tasks": done[0],
            }
    finally:
        await mesh.close()


def main(quick: bool = False) -> dict[str, Any]:
    seconds, warmup_s = (3.0, 1.0) if quick else (20.0, 4.0)
    spy = _py_spy()
    out: dict[str, Any] = {"seconds": seconds, "inflight": INFLIGHT, "py_spy": spy is not None}
    port = free_port()
    with broker("--profile", str(port)) as b, tempdir() as d:
        assert b.process is not None
        brief = write_brief(d, "nap", ["nap"], kind="bench.workers:Nap", capacity=CAPACITY, options={"seconds": NAP_S})
        runs = [AgentRun(brief, b.url, f"nap{i}", d) for i in range(AGENTS)]
        try:
            for r in runs:
                r.start()
            for r in runs:
                r.wait_ready(30)
            progress(
                NAME, f"{AGENTS} agents up; {INFLIGHT} in flight; profiling {seconds:.0f} s after {warmup_s:.0f} s"
            )
            marks: dict[str, Any] = {}
            ready = threading.Event()
            pprof: dict[str, bytes] = {}
            spies: dict[str, subprocess.Popen[bytes]] = {}
            cpu0: dict[str, float] = {}

            def profilers() -> None:
                ready.wait(120)
                cpu0.update({"broker": cpu_seconds(b.process.pid), "agents": sum(cpu_seconds(r.pid) for r in runs)})
                if spy:
                    for label, pid in (("agent", runs[0].pid), ("client", os.getpid())):
                        spies[label] = subprocess.Popen(
                            [
                                spy,
                                "record",
                                "--pid",
                                str(pid),
                                "--duration",
                                str(int(seconds)),
                                "--rate",
                                "250",
                                "--nonblocking",
                                "--format",
                                "raw",
                                "--output",
                                str(d / f"{label}.txt"),
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE,
                        )
                url = f"http://127.0.0.1:{port}/debug/pprof/profile?seconds={int(seconds)}"
                with urllib.request.urlopen(url, timeout=seconds + 30) as resp:
                    pprof["cpu"] = resp.read()
                # what the broker's memory holds after the load (live heap, after a GC)
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/debug/pprof/heap?gc=1", timeout=30) as resp:
                    pprof["heap"] = resp.read()
                cpu0.update(
                    {
                        "broker_end": cpu_seconds(b.process.pid),
                        "agents_end": sum(cpu_seconds(r.pid) for r in runs),
                    }
                )

            thread = threading.Thread(target=profilers, daemon=True)
            thread.start()
            anyio.run(_load, b.url, seconds, warmup_s, marks, ready)
            thread.join(60)
            for label, proc in spies.items():
                try:
                    _, err = proc.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    err = b"timed out"
                path = d / f"{label}.txt"
                if path.exists():
                    out[f"{label}_profile"] = summarize_pyspy(path.read_text(errors="replace"))
                else:
                    out[f"{label}_profile_error"] = err.decode(errors="replace")[-500:]
        finally:
            for r in runs:
                r.stop()
    (t0, n0, c0), (t1, n1, c1) = marks["start"], marks["end"]
    tasks = max(n1 - n0, 1)
    out["tasks"] = tasks
    out["rate"] = tasks / (t1 - t0)
    out["ideal"] = INFLIGHT / NAP_S
    out["cpu_ms_per_task"] = {
        "client": (c1 - c0) * 1000 / tasks,
        "agents": (cpu0.get("agents_end", 0) - cpu0.get("agents", 0)) * 1000 / tasks,
        "broker": (cpu0.get("broker_end", 0) - cpu0.get("broker", 0)) * 1000 / tasks,
    }
    if "cpu" in pprof:
        out["broker_profile"] = summarize_pprof(parse_pprof(pprof["cpu"]))
    if "heap" in pprof:
        out["broker_heap"] = summarize_heap(parse_pprof(pprof["heap"]))
        out["broker_heap"]["events"] = marks.get("events")
    progress(
        NAME,
        f"{out['rate']:.0f} tasks/s ({out['rate'] / out['ideal']:.2f} of ideal); CPU ms per task: "
        + ", ".join(f"{k} {v:.2f}" for k, v in out["cpu_ms_per_task"].items()),
    )
    for label in ("agent", "client"):
        prof = out.get(f"{label}_profile")
        if prof:
            progress(
                NAME,
                f"{label} ({prof['samples']} samples), self by module: "
                + ", ".join(f"{r['function']} {r['pct']:.0f}%" for r in prof["self_by_module"][:6]),
            )
    if "broker_profile" in out:
        progress(
            NAME,
            "broker, by activity: "
            + ", ".join(f"{r['function']} {r['pct']:.0f}%" for r in out["broker_profile"]["by_activity"][:8]),
        )
    out["setup"] = (
        f"one nats-server with --profile; {AGENTS} `mesh agent run` processes of kind bench.workers:Nap ({NAP_S * 1000:.0f} ms, "
        f"capacity {CAPACITY}); client in the bench process with {INFLIGHT} in flight; py-spy on one agent and on the client, "
        f"the broker's pprof CPU profile, over the same {seconds:.0f} s"
    )
    return out
