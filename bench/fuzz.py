"""Soak fuzz: 100,000 random and mutated messages on every subject family and KV key
family of the protocol while real tasks run (issue 12, "Tests and figures").

One fresh broker, three `mesh agent run` processes (two of kind sleep serving ``nap``,
one of kind echo serving ``echo``; queue lease 3 s) and, in this process, a client
submitting a steady stream of real tasks (``RATE_TASKS`` a second, alternating the two
capabilities) and waiting for each. Two phases on the same broker:

- control: real tasks only, no fuzzing (the latency the fuzz phase is compared with);
- fuzz: the same stream of real tasks while a fuzzer process publishes
  ``--fuzz-messages`` messages at a fixed rate.

The fuzzer (``python -m bench.fuzz --fuzzer``, a child process so that its own CPU is
not the client's event loop) captures real messages from the running mesh (records as
the tasks bucket republishes them, work items, events, cards, error reports) and sends,
with a seeded RNG, a mix of random bytes, random JSON and mutations of the captured
messages (a field's type flipped, negative, huge, NaN or infinite numbers, unknown
states, a wrong ``v``, truncated JSON, deep nesting, oversized values, forged owners
and epochs, names with wildcards or newlines, valid-looking forged terminal records) to:

- the queues (work items, stored in the work stream), capabilities served and not;
- the events stream (transition events) and the error subjects;
- the agents' control endpoints and the services API (requests with a reply inbox);
- the republished record subjects (what waiting parties and owners follow);
- the tasks bucket (``task.<id>`` keys of live and unknown tasks, and keys of no
  family) and the directory bucket (``agent.<id>`` cards of real and fake agents);
- the advisories of new queues and the pull request subjects (bodies that are not a
  valid pull of the priority group: a valid pull is a thief, not bad input, and would
  take real items for a lease).

Real tasks come in two populations. *Untouched* tasks are never named by the fuzzer:
they must all end ``done``, and their latency is compared with the control phase's.
*Touched* tasks (one in three during the fuzz phase) are handed to the fuzzer as
soon as they exist, and it aims a share of its messages at the most recent of them
(forged records in the bucket, forged writes on their record subject, forged events
and work items): they must all END, in any terminal state, within ``STRAND_S``.

Agent processes that exit are counted (exit code and the tail of their log) and
restarted under the same id, so that a crash is never hidden by the restart and the
run goes on. Error reports on ``<prefix>.v2.err.>`` are counted per agent, with the
most seen in any 1 s and 10 s window (the reference runtime allows a burst of 20, then
10 a second).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from bench.common import (
    AgentRun,
    child_env,
    cpu_seconds,
    dist_ms,
    log_problems,
    mesh_settings,
    progress,
    python,
    ratio,
    rss_mb,
    tempdir,
    write_brief,
)
from bench.common import broker as fresh_broker

NAME = "fuzz"
LEASE_S = 3.0
#: real tasks submitted per second, in both phases
RATE_TASKS = 5.0
#: every task must reach a terminal state within this many seconds of its submission
STRAND_S = 90.0
#: fuzz messages per second (the fuzzer's own pace; it must not just saturate 2 cores)
RATE_FUZZ = 500.0
FUZZ_MESSAGES = 100_000
FUZZ_MESSAGES_QUICK = 1_500
CONTROL_S = 40.0
CONTROL_S_QUICK = 6.0
SEED = 20261201
#: marks the fuzzer's own messages on the error subjects, so they are not counted as reports
FUZZ_HEADER = "Bench-Fuzz"
#: the author the fuzzer's forged terminal records name
FORGER = "mallory"
AGENTS: list[dict[str, Any]] = [
    {"id": "fz-nap-0", "serves": ["nap"], "kind": "sleep", "options": {"seconds": 0.1, "steps": 2}},
    {"id": "fz-nap-1", "serves": ["nap"], "kind": "sleep", "options": {"seconds": 0.1, "steps": 2}},
    {"id": "fz-echo-0", "serves": ["echo"], "kind": "echo", "options": {}},
]
CAPACITY = 8
SETUP = (
    "3 `mesh agent run` processes (2 sleep of 0.1 s serving `nap`, 1 echo serving `echo`; capacity 8, queue lease "
    "{lease:.0f} s); a client submitting {rate:.0f} real tasks/s (alternating) and waiting for each; a control phase "
    "of {control:.0f} s without fuzzing, then {messages:,} fuzz messages at {fuzz_rate:.0f}/s from a separate process "
    "(seed {seed}); one fuzz-phase task in three is handed to the fuzzer (touched)"
)


def _fuzz_messages(quick: bool) -> int:
    env = os.environ.get("BENCH_FUZZ_MESSAGES")
    if env:
        return max(int(env), 100)
    return FUZZ_MESSAGES_QUICK if quick else FUZZ_MESSAGES


# --- the client side: real tasks, agents, measurements -------------------------------------


class _Agents:
    """The agent processes; an exit is a crash (we never stop them before the end):
    counted with its exit code and the log tail, then the agent is started again."""

    def __init__(self, runs: list[AgentRun]) -> None:
        self.runs = runs
        self.exits: list[dict[str, Any]] = []
        self.t0 = time.monotonic()

    def check(self) -> None:
        for r in self.runs:
            assert r.proc is not None
            code = r.proc.poll()
            if code is None:
                continue
            tail = r.log.read_text(errors="replace").splitlines()[-30:]
            self.exits.append({"agent": r.agent_id, "code": code, "at_s": time.monotonic() - self.t0, "log_tail": tail})
            progress(NAME, f"agent {r.agent_id} EXITED with {code}; restarting it")
            r.start()


class _Task:
    __slots__ = (
        "capability", "error", "forged", "id", "latency", "phase", "population", "reason", "state", "stored",
        "submitted",
    )  # fmt: skip

    def __init__(self, task_id: str, phase: str, population: str, capability: str) -> None:
        self.id = task_id
        self.phase = phase
        self.population = population
        self.capability = capability
        self.submitted = time.monotonic()
        self.latency = math.nan
        self.state: str | None = None
        self.reason: str | None = None
        self.error: str | None = None
        #: it ended with a result the fuzzer wrote (a forged terminal record)
        self.forged = False
        #: a stranded task's stored record at the end
        self.stored = ""


async def _stored_raw(mesh: Any, task_id: str) -> str:
    """The stored record of a stranded task, as text (it may not decode)."""
    import nats.js.errors

    try:
        entry = await mesh.bus.tasks.get(f"task.{task_id}")
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
        return "<no record>"
    return f"revision {entry.revision}: " + (entry.value or b"").decode(errors="replace")[:600]


async def _stored_state(mesh: Any, task_id: str) -> str | None:
    """The state of the stored record as raw JSON says it (even if it does not decode)."""
    import nats.js.errors

    try:
        entry = await mesh.bus.tasks.get(f"task.{task_id}")
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
        return None
    try:
        state = json.loads(entry.value or b"null").get("state")
    except (ValueError, AttributeError):
        return "<undecodable>"
    return state if isinstance(state, str) else f"<{type(state).__name__}>"


async def _follow_task(mesh: Any, task: _Task, record: Any | None, kwargs: dict[str, Any]) -> None:
    """Run or wait for one task; never longer than STRAND_S from its submission. A wait
    that raises is noted, and the stored record then read until it is terminal."""
    from protocol import TERMINAL_STATES

    with anyio.move_on_after(STRAND_S - (time.monotonic() - task.submitted)):
        try:
            final = await (mesh.wait(record) if record is not None else mesh.run(task.capability, **kwargs))
        except Exception as exc:  # a finding: Mesh.wait must return or raise a mesh error
            task.error = f"{type(exc).__name__}: {exc}"[:300]
            while True:
                state = await _stored_state(mesh, task.id)
                if state in TERMINAL_STATES:
                    task.state = state
                    task.latency = time.monotonic() - task.submitted
                    return
                await anyio.sleep(1.0)
        task.state = final.state
        task.reason = final.reason
        task.forged = final.author == FORGER
        task.latency = time.monotonic() - task.submitted
        if final.state not in TERMINAL_STATES:
            task.error = f"wait returned a {final.state} record"


class _Reports:
    """Error reports on <prefix>.v2.err.> by agent, with their arrival times."""

    def __init__(self) -> None:
        self.at: dict[str, list[float]] = collections.defaultdict(list)
        self.forged = 0
        self.undecodable = 0
        self.sample: list[str] = []
        self.held_back_said = 0

    async def on_msg(self, msg: Any) -> None:
        from protocol import RemoteProtocolError, decode_error

        if (msg.headers or {}).get(FUZZ_HEADER):
            self.forged += 1
            return
        try:
            report = decode_error(msg.data)
        except RemoteProtocolError:
            self.undecodable += 1
            return
        self.at[report.agent].append(time.monotonic())
        if "held back" in report.error:
            self.held_back_said += 1
        if len(self.sample) < 12 and not any(report.error[:40] in s for s in self.sample):
            self.sample.append(f"{report.subject or report.key}: {report.error[:160]}")

    def summary(self, since: float, until: float) -> dict[str, Any]:
        out: dict[str, Any] = {"per_agent": {}, "forged_seen": self.forged, "undecodable": self.undecodable}
        for agent, times in sorted(self.at.items()):
            ts = [t for t in times if since <= t <= until]
            out["per_agent"][agent] = {
                "reports": len(ts),
                "per_s": len(ts) / (until - since) if until > since else math.nan,
                "max_in_1s": _max_window(ts, 1.0),
                "max_in_10s": _max_window(ts, 10.0),
            }
        out["total"] = sum(a["reports"] for a in out["per_agent"].values())
        # the rule: a burst of 20, then 10 a second: at most 20 + 10 * T in any T seconds
        out["rate_limit_held"] = all(a["max_in_1s"] <= 30 and a["max_in_10s"] <= 120 for a in out["per_agent"].values())
        out["held_back_mentioned"] = self.held_back_said
        out["sample"] = self.sample
        return out


def _max_window(times: list[float], width: float) -> int:
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - width:
            j += 1
        best = max(best, i - j + 1)
    return best


class _Fuzzer:
    """The fuzzer child process: READY when connected, GO on stdin, DONE <json> on stdout."""

    def __init__(self, url: str, messages: int, rate: float, agents: list[str], log: Path) -> None:
        self.log = log
        cmd = python(
            "-m", "bench.fuzz", "--fuzzer", "--server", url, "--messages", str(messages),
            "--rate", str(rate), "--seed", str(SEED), "--agents", ",".join(agents),
        )  # fmt: skip
        import subprocess

        with open(log, "w") as err:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=child_env(), text=True, bufsize=1
            )
        self._lock = threading.Lock()

    def ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"fuzzer did not start: {line!r}")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        with self._lock, contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()

    def result(self) -> dict[str, Any]:
        """Blocks until the fuzzer prints DONE."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("DONE "):
                result: dict[str, Any] = json.loads(line[5:])
                return result
        tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"the fuzzer exited with {self.proc.wait()} before it was done:\n{tail}")

    def stop(self) -> None:
        self.send("QUIT")
        try:
            self.proc.wait(10)
        except Exception:
            self.proc.kill()
            self.proc.wait()


def _broker_point(pid: int) -> dict[str, float]:
    return {"t": time.monotonic(), "cpu_s": cpu_seconds(pid), "rss_mib": rss_mb(pid)}


async def _run(b: Any, agents: _Agents, fuzzer: _Fuzzer, control_s: float) -> dict[str, Any]:
    from mesh.client import Mesh
    from mesh.work import new_id

    mesh = await Mesh.connect(b.url, client_id="fuzz-client", settings=mesh_settings(lease_s=LEASE_S))
    reports = _Reports()
    err_sub = await mesh.bus.nc.subscribe(f"{mesh.names.prefix}.v2.err.>", cb=reports.on_msg)
    tasks: list[_Task] = []
    fuzz_result: dict[str, Any] = {}
    points: dict[str, dict[str, float]] = {}
    assert b.process is not None
    bpid = b.process.pid
    try:
        async with anyio.create_task_group() as tg:

            async def watch_agents() -> None:
                while True:
                    await anyio.to_thread.run_sync(agents.check)
                    await anyio.sleep(0.5)

            tg.start_soon(watch_agents)

            async def submit(phase: str, population: str, n: int) -> None:
                capability = "nap" if n % 2 == 0 else "echo"
                task = _Task(new_id(), phase, population, capability)
                tasks.append(task)
                kwargs = {"instruction": f"{phase} {n}", "task_id": task.id}
                if population == "touched":
                    try:
                        with anyio.fail_after(STRAND_S):
                            record = await mesh.submit(capability, kwargs["instruction"], task_id=task.id)
                    except Exception as exc:
                        task.error = f"submit: {type(exc).__name__}: {exc}"[:300]
                        return
                    fuzzer.send(f"B {task.id}")
                    await _follow_task(mesh, task, record, {})
                else:
                    await _follow_task(mesh, task, None, kwargs)

            async def stream(phase: str, until: Any, tg: anyio.abc.TaskGroup) -> None:
                """Submit at RATE_TASKS a second until ``until()`` says stop; each task
                is followed in ``tg`` (for STRAND_S at most)."""
                n = 0
                t_next = time.monotonic()
                while not until():
                    population = "touched" if phase == "fuzz" and n % 3 == 2 else "untouched"
                    tg.start_soon(submit, phase, population, n)
                    n += 1
                    t_next += 1.0 / RATE_TASKS
                    await anyio.sleep(max(t_next - time.monotonic(), 0.0))

            async with anyio.create_task_group() as waits:
                # warm-up, not measured: connections, queues, the agents' pulls
                for i in range(6):
                    waits.start_soon(mesh.run, "nap" if i % 2 == 0 else "echo", "warm-up")
            points["start"] = _broker_point(bpid)
            progress(NAME, f"control phase: {control_s:.0f} s of real tasks without fuzzing")
            t_control = time.monotonic()
            async with anyio.create_task_group() as followed:
                await stream("control", lambda: time.monotonic() - t_control >= control_s, followed)
                points["fuzz_start"] = _broker_point(bpid)
                progress(NAME, "fuzz phase: go")
                fuzzer.send("GO")
                done = anyio.Event()

                async def fuzz_done() -> None:
                    fuzz_result.update(await anyio.to_thread.run_sync(fuzzer.result))
                    done.set()

                tg.start_soon(fuzz_done)
                await stream("fuzz", done.is_set, followed)
                points["fuzz_end"] = _broker_point(bpid)
                progress(
                    NAME,
                    f"fuzzer done: {fuzz_result.get('sent', 0):,} messages in {fuzz_result.get('elapsed_s', 0):.1f} s; "
                    f"waiting for the last tasks (at most {STRAND_S:.0f} s each)",
                )
            await anyio.sleep(1.0)  # the last error reports
            points["end"] = _broker_point(bpid)
            for task in tasks:
                if task.state is None:
                    task.stored = await _stored_raw(mesh, task.id)
            await anyio.to_thread.run_sync(agents.check)
            tg.cancel_scope.cancel()
    finally:
        with contextlib.suppress(Exception):
            await err_sub.unsubscribe()
        await mesh.close()
    return _summarize(tasks, reports, fuzz_result, points, agents)


def _summarize(
    tasks: list[_Task],
    reports: _Reports,
    fuzz: dict[str, Any],
    points: dict[str, dict[str, float]],
    agents: _Agents,
) -> dict[str, Any]:
    from protocol import TERMINAL_STATES

    stolen = set(fuzz.get("pull_items_taken_tasks", []))

    def group(phase: str, population: str) -> dict[str, Any]:
        ts = [t for t in tasks if t.phase == phase and t.population == population]
        ended = [t for t in ts if t.state in TERMINAL_STATES]
        stranded = [t for t in ts if t.state not in TERMINAL_STATES]
        return {
            "tasks": len(ts),
            "states": dict(collections.Counter(t.state or "not ended" for t in ts)),
            "reasons": dict(collections.Counter(t.reason for t in ended if t.reason)),
            "not_done": sum(1 for t in ts if t.state != "done"),
            "forged_end": sum(1 for t in ts if t.forged),
            "stranded": len(stranded),
            "stranded_ids": [t.id for t in stranded][:20],
            "stranded_records": {t.id: t.stored for t in stranded[:10]},
            "stolen_items": sum(1 for t in ts if t.id in stolen),
            "wait_errors": dict(collections.Counter((t.error or "").split(":")[0] for t in ts if t.error)),
            "wait_error_samples": sorted({t.error for t in ts if t.error})[:6],
            "latency_ms": dist_ms([t.latency for t in ended if not math.isnan(t.latency)]),
        }

    populations = {
        "control": group("control", "untouched"),
        "fuzz_untouched": group("fuzz", "untouched"),
        "fuzz_touched": group("fuzz", "touched"),
    }
    c, f = populations["control"]["latency_ms"], populations["fuzz_untouched"]["latency_ms"]

    def phase_broker(a: str, z: str) -> dict[str, float]:
        pa, pz = points.get(a), points.get(z)
        if not pa or not pz:
            return {}
        dt = pz["t"] - pa["t"]
        return {
            "seconds": dt,
            "cpu_pct": 100 * (pz["cpu_s"] - pa["cpu_s"]) / dt if dt > 0 else math.nan,
            "rss_mib_start": pa["rss_mib"],
            "rss_mib_end": pz["rss_mib"],
        }

    fuzz_t0, fuzz_t1 = points.get("fuzz_start", {}).get("t", 0.0), points.get("end", {}).get("t", 0.0)
    stranded = sum(p["stranded"] for p in populations.values())
    result = {
        "crashes": len(agents.exits),
        "exits": agents.exits,
        "stranded": stranded,
        "untouched_not_done": populations["control"]["not_done"] + populations["fuzz_untouched"]["not_done"],
        "populations": populations,
        "latency_ratio": {"p50": ratio(f["p50"], c["p50"]), "p95": ratio(f["p95"], c["p95"])},
        "reports": reports.summary(fuzz_t0, fuzz_t1),
        "reports_control": sum(
            1 for ts in reports.at.values() for t in ts if points.get("start", {}).get("t", 0.0) <= t < fuzz_t0
        ),
        "broker": {
            "control": phase_broker("start", "fuzz_start"),
            "fuzz": phase_broker("fuzz_start", "fuzz_end"),
            "settle": phase_broker("fuzz_end", "end"),
            "rss_mib_start": points.get("start", {}).get("rss_mib", math.nan),
            "rss_mib_end": points.get("end", {}).get("rss_mib", math.nan),
            "cpu_s_start": points.get("start", {}).get("cpu_s", math.nan),
            "cpu_s_end": points.get("end", {}).get("cpu_s", math.nan),
        },
        "fuzzer": fuzz,
    }
    return result


def main(*, quick: bool = False) -> dict[str, Any]:
    messages = _fuzz_messages(quick)
    control_s = CONTROL_S_QUICK if quick else CONTROL_S
    with tempdir() as d, fresh_broker() as b:
        runs = []
        for spec in AGENTS:
            brief = write_brief(
                d, spec["id"], spec["serves"], kind=spec["kind"], capacity=CAPACITY, options=spec["options"],
                lease_s=LEASE_S,
            )  # fmt: skip
            runs.append(AgentRun(brief, b.url, spec["id"], d))
        for r in runs:
            r.start()
        for r in runs:
            r.wait_ready(30)
        agents = _Agents(runs)
        fuzzer = _Fuzzer(b.url, messages, RATE_FUZZ, [s["id"] for s in AGENTS], d / "fuzzer.log")
        try:
            fuzzer.ready()
            result = anyio.run(_run, b, agents, fuzzer, control_s)
        finally:
            fuzzer.stop()
            for r in runs:
                r.stop()
        result["fuzzer_log_tail"] = (d / "fuzzer.log").read_text(errors="replace").splitlines()[-10:]
        result["log_problems"] = log_problems([r.log for r in runs])
        result["tracebacks_in_logs"] = _tracebacks([r.log for r in runs])
    result["setup"] = SETUP.format(
        lease=LEASE_S, rate=RATE_TASKS, control=control_s, messages=messages, fuzz_rate=RATE_FUZZ, seed=SEED
    )
    result["messages"] = messages
    result["strand_s"] = STRAND_S
    pops = result["populations"]
    progress(
        NAME,
        f"crashes {result['crashes']}, stranded {result['stranded']}, untouched not done "
        f"{result['untouched_not_done']}; untouched p50 {pops['control']['latency_ms']['p50']:.0f} -> "
        f"{pops['fuzz_untouched']['latency_ms']['p50']:.0f} ms, p95 {pops['control']['latency_ms']['p95']:.0f} -> "
        f"{pops['fuzz_untouched']['latency_ms']['p95']:.0f} ms; touched states {pops['fuzz_touched']['states']}; "
        f"error reports {result['reports']['total']} (rate limit held: {result['reports']['rate_limit_held']})",
    )
    return result


def _tracebacks(paths: list[Path], limit: int = 6) -> dict[str, Any]:
    """Tracebacks in the agents' logs: how many of each exception type (and the log line
    before each, which says what the agent was doing), and one full example per type."""
    kinds: collections.Counter[str] = collections.Counter()
    examples: dict[str, list[str]] = {}
    for path in paths:
        lines = path.read_text(errors="replace").splitlines()
        what = ""  # the log line before a traceback (kept across the parts of a chained one)
        for i, line in enumerate(lines):
            if not line.startswith("Traceback"):
                continue
            j = i + 1
            while j < len(lines) and (lines[j].startswith((" ", "\t")) or not lines[j].strip()):
                j += 1
            last = lines[j] if j < len(lines) else ""
            before = lines[i - 1] if i else ""
            chained = "During handling" in " ".join(lines[max(i - 2, 0) : i]) or "direct cause" in " ".join(
                lines[max(i - 2, 0) : i]
            )
            if not chained:
                what = before.split("]", 1)[1].split("  ")[0].strip() if "]" in before else ""
            follows = " ".join(lines[j + 1 : j + 3])
            if "During handling" in follows or "direct cause" in follows:
                continue  # a chained traceback: counted once, by its last part

            kind = f"{last.split(':', 1)[0]} ({what})" if what else last.split(":", 1)[0]
            kinds[kind] += 1
            if kind not in examples and len(examples) < limit:
                examples[kind] = [path.name, *lines[max(i - 1, 0) : j + 1][-40:]]
    return {"count": sum(kinds.values()), "kinds": dict(kinds), "examples": list(examples.values())}


# --- the fuzzer -------------------------------------------------------------------------------

#: family -> weight (share of the messages)
FAMILIES: dict[str, float] = {
    "kv.task": 20,  # task.<id> in the tasks bucket
    "kv.other": 3,  # keys of no family in the tasks bucket
    "kv.agent": 8,  # agent.<id> cards (and keys of no family) in the directory
    "work": 20,  # work items on the queues (work stream)
    "evt": 14,  # transition events (events stream)
    "err": 4,  # error reports (events stream)
    "ctl": 7,  # control requests to the agents (reply inbox)
    "srv": 2,  # the services API ($SRV.PING/INFO/STATS)
    "rec": 14,  # republished record writes (core)
    "adv": 4,  # advisories of new queues
    "pull": 4,  # pull request subjects (never a valid pull of the group)
}
#: captured messages larger than this are not kept as templates
TEMPLATE_MAX_BYTES = 16_384
BODIES = (("random bytes", 0.2), ("random json", 0.2), ("mutation", 0.6))

#: strings that break names: wildcards, separators, control characters, lengths
BAD_NAMES = ["a.*", ">", "x\n", "", " ", "a b", "a" * 300, "tâche", "..", "$JS", "A.B", "*", "\x00", "agent.>"]
#: numbers that break fields
BAD_NUMBERS: list[Any] = [-1, -(2**63), 2**64, 10**30, 1e308, -1e308, 0.5, -0.0, "NaN", "Infinity", "-Infinity"]
BAD_STATES = ["zombie", "", "DONE", "open", "working", "review", "done", "failed", "cancelled", None, 7, ["done"]]
BAD_V = [0, 1, 3, 99, -2, "2", 2.5, None, [2]]


class Fuzz:
    """Builds fuzz messages from a seeded RNG and a pool of captured real messages."""

    def __init__(self, rng: random.Random, agents: list[str], prefix: str = "mesh") -> None:
        self.rng = rng
        self.agents = agents
        self.p = prefix
        self.templates: dict[str, collections.deque[Any]] = collections.defaultdict(
            lambda: collections.deque(maxlen=200)
        )
        self.latest: dict[str, Any] = {}  # touched task id -> its latest valid record (as JSON)
        self.touched: collections.deque[str] = collections.deque(maxlen=6)
        self.touched_all = 0
        self.names = list(FAMILIES)
        self.weights = list(FAMILIES.values())

    # ids and names ------------------------------------------------------------------------

    def token(self) -> str:
        """A subject-safe token: a valid id, or one that breaks a grammar but not NATS."""
        r = self.rng.random()
        if r < 0.6:
            return "fz" + "".join(self.rng.choice("0123456789abcdef") for _ in range(10))
        return self.rng.choice(
            ["UPPER", "-lead", "_x", "a" * 100, "x~y", "a_b-c", "0", "Z" * 64, "q" * 65, "$x", "%41", "a\u00e9"]
        )

    def task_id(self) -> tuple[str, bool]:
        """A target task: one of the most recent touched tasks (live, mostly), or unknown."""
        if self.touched and self.rng.random() < 0.5:
            return self.rng.choice(self.touched), True
        return self.token(), False

    def capability(self) -> str:
        return self.rng.choice(["nap", "echo", "nap", "echo", "other", "nap.deep", "agent.fuzz-client", "x~y", "UP"])

    # bodies -------------------------------------------------------------------------------

    def random_bytes(self) -> bytes:
        n = self.rng.choice([0, 1, 2, 8, 64, 512, 4096])
        return self.rng.randbytes(n)

    def random_json(self, depth: int = 0) -> Any:
        r = self.rng.random()
        if depth > 3 or r < 0.4:
            return self.rng.choice(
                [None, True, False, self.rng.randint(-(10**6), 10**6), self.rng.random() * 1e6, self.token(), ""]
            )
        if r < 0.7:
            return [self.random_json(depth + 1) for _ in range(self.rng.randint(0, 4))]
        keys = ["v", "id", "state", "task", "kind", "owner", "epoch", "record", "agent", "action", "error", "x"]
        return {self.rng.choice(keys): self.random_json(depth + 1) for _ in range(self.rng.randint(0, 6))}

    def mutate(self, obj: Any) -> bytes:
        """1-3 mutations of a captured message (decoded JSON), then maybe a truncation."""
        placeholders: dict[str, str] = {}
        for _ in range(self.rng.randint(1, 3)):
            obj = self._mutation(obj, placeholders)
        text = json.dumps(obj, allow_nan=True)
        for key, raw in placeholders.items():
            text = text.replace(json.dumps(key), raw, 1)
        data = text.encode()
        if self.rng.random() < 0.08 and data:
            data = data[: self.rng.randrange(len(data))]
        return data

    def _paths(self, obj: Any, prefix: tuple[Any, ...] = (), depth: int = 0) -> list[tuple[Any, ...]]:
        out = [prefix]
        if depth < 3:
            if isinstance(obj, dict):
                for k, v in obj.items():
                    out += self._paths(v, (*prefix, k), depth + 1)
            elif isinstance(obj, list):
                for i, v in enumerate(obj[:5]):
                    out += self._paths(v, (*prefix, i), depth + 1)
        return out

    @staticmethod
    def _set(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
        if not path:
            return value
        node = obj
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        return obj

    @staticmethod
    def _get(obj: Any, path: tuple[Any, ...]) -> Any:
        for k in path:
            obj = obj[k]
        return obj

    def _mutation(self, obj: Any, placeholders: dict[str, str]) -> Any:
        rng = self.rng
        paths = self._paths(obj)
        path = rng.choice(paths[1:] if len(paths) > 1 else paths)
        op = rng.choice(
            ["type", "number", "number", "state", "v", "forge", "forge", "drop", "add", "name", "deep", "big",
             "terminal", "list"]
        )  # fmt: skip
        top = obj if isinstance(obj, dict) else None
        if op == "type":
            value = self._get(obj, path)
            choices: list[Any] = [None, 0, "x", [], {}, True, 1.5, [value], {"v": value}]
            return self._set(obj, path, rng.choice(choices))
        if op == "number":
            value = rng.choice(BAD_NUMBERS)
            if isinstance(value, str):  # NaN and the infinities are not JSON: write them raw
                key = f"__num{len(placeholders)}__"
                placeholders[key] = value
                value = key
            return self._set(obj, path, value)
        if op == "state" and top is not None:
            target = top["record"] if isinstance(top.get("record"), dict) and rng.random() < 0.5 else top
            target["state"] = rng.choice(BAD_STATES)
            return obj
        if op == "v" and top is not None:
            top["v"] = rng.choice(BAD_V)
            return obj
        if op == "forge" and top is not None:
            target = top["record"] if isinstance(top.get("record"), dict) and rng.random() < 0.5 else top
            epoch = target.get("epoch")
            if not isinstance(epoch, int):
                epoch = 0
            target["owner"] = rng.choice(["mallory", *self.agents, "", "a.*", None])
            target["epoch"] = rng.choice([epoch + 1, epoch - 1, 0, 10**9, -1, epoch])
            if rng.random() < 0.5:
                target["state"] = rng.choice(["working", "review", "open"])
            if rng.random() < 0.3:
                target["ticket"] = rng.choice([None, 1, -1, 10**12])
            if rng.random() < 0.3:
                target["lease_s"] = rng.choice([-1, 0, 1e308])
            return obj
        if op == "drop" and isinstance(obj, dict) and obj:
            obj.pop(rng.choice(list(obj)))
            return obj
        if op == "add" and isinstance(obj, dict):
            obj[rng.choice(["zz_unknown", "extra", "v3_field"])] = self.random_json(2)
            return obj
        if op == "name":
            return self._set(obj, path, rng.choice(BAD_NAMES))
        if op == "deep":
            key = f"__deep{len(placeholders)}__"
            n = rng.choice([50, 500, 5000])
            placeholders[key] = "[" * n + "]" * n
            return self._set(obj, path, key)
        if op == "big":
            # oversized values are rare (bandwidth): mostly tens of KB, a few near 1 MB
            n = rng.choice([20_000, 60_000, 60_000, 200_000]) if rng.random() < 0.05 else 2_000
            if rng.random() < 0.02:
                n = 900_000
            return self._set(obj, path, "x" * n)
        if op == "terminal" and top is not None:
            target = top["record"] if isinstance(top.get("record"), dict) else top
            target["state"] = rng.choice(["done", "failed", "cancelled"])
            target["result"] = {"forged": True}
            target["author"] = FORGER
            target["reason"] = rng.choice([None, "error", "no_agent", "made-up"])
            return obj
        if op == "list":
            return self._set(obj, path, list(range(rng.choice([10, 1000, 10_000]))))
        return self._set(obj, path, self.random_json(1))

    def body(self, family: str, template: Any | None) -> tuple[str, bytes]:
        r = self.rng.random()
        if r < BODIES[0][1]:
            return "random bytes", self.random_bytes()
        if r < BODIES[0][1] + BODIES[1][1] or template is None:
            return "random json", json.dumps(self.random_json()).encode()
        return "mutation", self.mutate(json.loads(json.dumps(template)))

    # one message --------------------------------------------------------------------------

    def template(self, family: str) -> Any | None:
        pool = self.templates.get(family)
        return self.rng.choice(pool) if pool else None

    def retarget_record(self, record: Any, task_id: str) -> Any:
        record = json.loads(json.dumps(record))
        record.update(id=task_id, root=task_id, parent=None, children=[])
        return record

    def message(self) -> tuple[str, str, str, bytes, bool]:
        """(family, subject, body kind, body, whether it names a touched task)."""
        rng = self.rng
        family = rng.choices(self.names, self.weights)[0]
        p = self.p
        touched = False
        template: Any | None = None
        if family in ("kv.task", "rec"):
            task_id, touched = self.task_id()
            base = self.latest.get(task_id) if touched else None
            base = base or self.template("record")
            template = self.retarget_record(base, task_id) if base is not None else None
            subject = f"$KV.{p}-v2-tasks.task.{task_id}" if family == "kv.task" else f"{p}.v2.rec.task.{task_id}"
        elif family == "kv.other":
            key = rng.choice(["watch.nap.0", "watch.echo.1", "agent.x", "tasks", "task", "offer.nap", self.token()])
            subject = f"$KV.{p}-v2-tasks.{key}"
            template = self.template("record")
        elif family == "kv.agent":
            agent = rng.choice([*self.agents, self.token(), self.token()])
            key = f"agent.{agent}" if rng.random() < 0.85 else rng.choice(["agents", self.token(), "card.x"])
            subject = f"$KV.{p}-v2-agents.{key}"
            template = self.template("card")
            if isinstance(template, dict):
                template = {**template, "id": agent}
        elif family == "work":
            task_id, touched = self.task_id()
            subject = f"{p}.v2.work.{self.capability()}"
            template = self.template("work")
            if isinstance(template, dict):
                template = json.loads(json.dumps(template))
                base = self.latest.get(task_id) if touched else None
                template["task"] = task_id
                if isinstance(template.get("record"), dict) or base is not None:
                    template["record"] = self.retarget_record(base or template["record"], task_id)
        elif family == "evt":
            task_id, touched = self.task_id()
            kind = rng.choice(["claim", "finish", "fail", "ended", "created", "renew", "cancel", "bogus"])
            subject = f"{p}.v2.evt.{task_id}.{task_id}.{kind}"
            template = self.template("event")
            if isinstance(template, dict):
                template = json.loads(json.dumps(template))
                template.update(task=task_id, root=task_id)
                if isinstance(template.get("record"), dict):
                    template["record"] = self.retarget_record(template["record"], task_id)
        elif family == "err":
            subject = f"{p}.v2.err.{rng.choice([*self.agents, self.token()])}"
            template = self.template("error")
        elif family == "ctl":
            subject = f"{p}.v2.ctl.{rng.choice([*self.agents, *self.agents, self.token()])}"
            template = {"v": 2, "action": "status"}
        elif family == "srv":
            subject = rng.choice(["$SRV.PING", f"$SRV.INFO.{p}-agent", f"$SRV.STATS.{p}-agent", f"$SRV.PING.{p}-agent"])
            template = {"type": "io.nats.micro.v1.ping_response"}
        elif family == "adv":
            consumer = rng.choice(["nap", "echo", "other", "nap~deep", self.token(), "x" * 200])
            subject = f"$JS.EVENT.ADVISORY.CONSUMER.CREATED.{p}-v2-work.{consumer}"
            template = {
                "type": "io.nats.jetstream.advisory.v1.consumer_action",
                "stream": f"{p}-v2-work",
                "consumer": consumer,
                "action": "CREATED",
            }
        else:  # pull
            subject = f"$JS.API.CONSUMER.MSG.NEXT.{p}-v2-work.{rng.choice(['nap', 'echo', 'other', self.token()])}"
            template = {"batch": 1, "expires": 1_000_000_000, "group": "mesh", "priority": 0}
        kind, body = self.body(family, template)
        if family == "pull":
            body = _not_a_valid_pull(body)
        if family == "ctl":
            body = _not_a_drain(body)
        return family, subject, kind, body, touched

    def add_touched(self, task_id: str) -> None:
        self.touched.append(task_id)
        self.touched_all += 1

    def capture(self, family: str, subject: str, data: bytes, headers: dict[str, str] | None) -> None:
        """Keep valid real messages as templates (and each touched task's latest record)."""
        from protocol import (
            RemoteProtocolError,
            decode_card,
            decode_error,
            decode_event,
            decode_record,
            decode_work_item,
        )

        decoders = {
            "record": decode_record,
            "work": decode_work_item,
            "event": decode_event,
            "card": decode_card,
            "error": decode_error,
        }
        if family == "error" and (headers or {}).get(FUZZ_HEADER):
            return
        if len(data) > TEMPLATE_MAX_BYTES:
            # a valid forgery with an oversized value, captured back: as a template it
            # would make every later mutation of it oversized too
            return
        try:
            decoders[family](data)
            value = json.loads(data)
        except (RemoteProtocolError, ValueError):
            return
        self.templates[family].append(value)
        if family == "record" and value["id"] in self.touched:
            self.latest[value["id"]] = value


def _not_a_valid_pull(body: bytes) -> bytes:
    """A pull of the priority group would take real items for a lease: never send one.
    The broker reads a body that is not a JSON object (empty, a number, garbage) as a
    plain pull of one item, priority group or not: such bodies get a ``{`` in front. And
    no body names the group: the broker parses nesting deeper than Python's json does."""
    if not body.lstrip().startswith(b"{"):
        body = b"{" + body
    return body.replace(b'"group"', b'"gruop"')


def _not_a_drain(body: bytes) -> bytes:
    """A valid drain request is an order, not bad input: it would stop a real agent."""
    from protocol import RemoteProtocolError, decode_control

    try:
        if decode_control(body).action == "drain":
            return b'{"v":2,"action":"drain!"}'
    except RemoteProtocolError:
        pass
    return body


async def _fuzzer_main(args: argparse.Namespace) -> None:
    import nats

    rng = random.Random(args.seed)
    agents = [a for a in args.agents.split(",") if a]
    fuzz = Fuzz(rng, agents)
    nc = await nats.connect(args.server, name="bench-fuzzer", max_reconnect_attempts=-1)
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    acks: collections.Counter[str] = collections.Counter()
    replies: collections.Counter[str] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    stolen = [0]
    stolen_tasks: list[str] = []
    stolen_pulls: list[dict[str, Any]] = []
    recent_pulls: collections.deque[bytes] = collections.deque(maxlen=8)
    go = asyncio.Event()
    quit_ = asyncio.Event()
    loop = asyncio.get_running_loop()

    def read_stdin() -> None:
        for line in sys.stdin:
            word, _, rest = line.strip().partition(" ")
            if word == "B":
                loop.call_soon_threadsafe(fuzz.add_touched, rest)
            elif word == "GO":
                loop.call_soon_threadsafe(go.set)
            elif word == "QUIT":
                break
        loop.call_soon_threadsafe(quit_.set)

    threading.Thread(target=read_stdin, daemon=True).start()

    def capturing(family: str) -> Any:
        async def cb(msg: Any) -> None:
            fuzz.capture(family, msg.subject, msg.data, msg.headers)

        return cb

    p = "mesh"
    for family, subject in (
        ("record", f"{p}.v2.rec.>"),
        ("work", f"{p}.v2.work.>"),
        ("event", f"{p}.v2.evt.>"),
        ("card", f"$KV.{p}-v2-agents.>"),
        ("error", f"{p}.v2.err.>"),
    ):
        await nc.subscribe(subject, cb=capturing(family))

    ack_inbox = nc.new_inbox()
    reply_inbox = nc.new_inbox()

    async def on_ack(msg: Any) -> None:
        try:
            answer = json.loads(msg.data)
        except ValueError:
            acks["unreadable"] += 1
            return
        acks["refused" if "error" in answer else "stored"] += 1

    async def on_reply(msg: Any) -> None:
        if msg.reply and msg.reply.startswith("$JS.ACK."):
            stolen[0] += 1  # never expected: hand it back at once
            await nc.publish(msg.reply, b"-NAK")
            with contextlib.suppress(Exception):
                stolen_tasks.append(json.loads(msg.data).get("task"))
            if len(stolen_pulls) < 5:
                stolen_pulls.append({"delivery": msg.reply, "recent_pulls": [repr(b)[:200] for b in recent_pulls]})
            return
        status = (msg.headers or {}).get("Status")
        if status:
            replies[f"status {status}"] += 1
        elif b"not_understood" in msg.data:
            replies["not_understood"] += 1
        else:
            replies["other"] += 1

    await nc.subscribe(ack_inbox, cb=on_ack)
    await nc.subscribe(reply_inbox, cb=on_reply)
    print("READY", flush=True)
    await go.wait()
    cpu0, t0 = time.process_time(), time.monotonic()
    sent = 0
    touched_msgs = 0
    sizes = 0
    batch = 20
    stored_families = ("kv.task", "kv.other", "kv.agent", "work", "evt", "err")
    while sent < args.messages and not quit_.is_set():
        for _ in range(min(batch, args.messages - sent)):
            family, subject, kind, body, touched = fuzz.message()
            if family == "pull":
                recent_pulls.append(subject.encode() + b" " + body)
            headers = {FUZZ_HEADER: "1"} if family == "err" else None
            if family == "rec" and rng.random() < 0.8:
                # what the bucket puts on a republished write: followers skip a write without it
                headers = {"Nats-Sequence": str(rng.choice([1, 2, 50, 10**6, 10**12, 0, -1])), "Nats-Subject": subject}
            reply = ack_inbox if family in stored_families else reply_inbox if family in ("ctl", "srv", "pull") else ""
            try:
                await nc.publish(subject, body, reply=reply, headers=headers)
            except Exception as exc:  # e.g. over the broker's max payload
                errors[type(exc).__name__] += 1
            counts[family][kind] += 1
            touched_msgs += touched
            sizes += len(body)
            sent += 1
        with contextlib.suppress(Exception):
            await nc.flush(timeout=10)
        # pace: where we should be at this rate
        ahead = t0 + sent / args.rate - time.monotonic()
        if ahead > 0:
            await asyncio.sleep(ahead)
    elapsed = time.monotonic() - t0
    await asyncio.sleep(2.0)  # late acks and replies
    result = {
        "sent": sent,
        "elapsed_s": elapsed,
        "rate": sent / elapsed if elapsed else math.nan,
        "target_rate": args.rate,
        "seed": args.seed,
        "bytes": sizes,
        "touched_messages": touched_msgs,
        "touched_tasks": fuzz.touched_all,
        "families": {f: dict(c) for f, c in sorted(counts.items())},
        "broker_acks": dict(acks),
        "replies": dict(replies),
        "publish_errors": dict(errors),
        "pull_items_taken": stolen[0],
        "pull_items_taken_tasks": stolen_tasks,
        "pull_items_taken_by": stolen_pulls,
        "templates": {f: len(q) for f, q in fuzz.templates.items()},
        "cpu_s": time.process_time() - cpu0,
    }
    print("DONE " + json.dumps(result), flush=True)
    await quit_.wait()
    with contextlib.suppress(Exception):
        await nc.close()


def fuzzer_cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fuzz --fuzzer")
    p.add_argument("--fuzzer", action="store_true")
    p.add_argument("--server", required=True)
    p.add_argument("--messages", type=int, default=FUZZ_MESSAGES)
    p.add_argument("--rate", type=float, default=RATE_FUZZ)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--agents", default="")
    args = p.parse_args(argv)
    asyncio.run(_fuzzer_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(fuzzer_cli())
