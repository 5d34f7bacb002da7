"""Footprint: idle agent RSS, agent start-to-ready time, ``mesh --help`` time.

- start-to-ready: from spawning ``mesh agent run BRIEF`` to its ``agent ready`` log
  line (connected, buckets ensured, card published, services endpoint and board
  watch up: it can claim);
- idle RSS: VmRSS of that process after it has idled a few seconds (heartbeats
  running), next to a bare interpreter and an interpreter that only imported the
  agent's modules, to show where the memory goes;
- ``mesh --help``: wall time of the console script, next to ``python -c pass``;
- the slowest imports of the agent's start-up (``python -X importtime``).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import AgentRun, broker, child_env, progress, rss_mb, spread, tempdir, write_brief

NAME = "footprint"
AGENT_IMPORTS = "import mesh.cli.commands, mesh.process, mesh.kinds"


def _wall(cmd: list[str], repeats: int, env: dict[str, str] | None = None) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env or child_env())
        out.append(time.perf_counter() - t)
    return out


def _rss_of(code: str, env: dict[str, str] | None = None) -> float:
    """RSS of a Python process that ran ``code`` and then waits."""
    proc = subprocess.Popen(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('READY', flush=True)\nsys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env or child_env(),
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(0.2)
        return rss_mb(proc.pid)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)


def _import_profile(env: dict[str, str], limit: int = 12) -> list[dict[str, Any]]:
    """Slowest imports (cumulative ms) of the agent's modules, two levels deep."""
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", AGENT_IMPORTS], capture_output=True, text=True, env=env, check=True
    )
    rows = []
    total_us = 0
    for line in res.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cum_us, name = line.split(":", 1)[1].split("|")
        total_us += int(self_us)
        depth = (len(name) - len(name.lstrip()) - 1) // 2
        if depth <= 2 and not name.strip().startswith(("encodings", "_", "site", "io", "zipimport")):
            rows.append({"module": name.strip(), "depth": depth, "cumulative_ms": int(cum_us) / 1000})
    rows.sort(key=lambda r: -r["cumulative_ms"])
    return [*rows[:limit], {"module": "(all imports)", "cumulative_ms": total_us / 1000}]


def _variant(env: dict[str, str], starts: int, idle_s: float, label: str) -> dict[str, Any]:
    ready: list[float] = []
    rss: list[float] = []
    with broker() as b, tempdir() as d:
        brief = write_brief(d, "idle", ["idle"], kind="echo", capacity=4)
        # The first start also creates the buckets and stream; report it apart.
        first = AgentRun(brief, b.url, "first", d, env=env).start()
        first_ready = first.wait_ready()
        for i in range(starts):
            run = AgentRun(brief, b.url, f"idle{i}", d, env=env).start()
            ready.append(run.wait_ready())
            time.sleep(idle_s)
            rss.append(rss_mb(run.pid))
            run.stop()
            progress(
                NAME, f"{label}: agent {i + 1}/{starts} ready in {ready[-1] * 1000:.0f} ms, idle RSS {rss[-1]:.1f} MiB"
            )
        first.stop()
    imports = _wall([sys.executable, "-c", AGENT_IMPORTS], max(starts, 2), env)
    return {
        "ready_ms": spread([r * 1000 for r in ready]),
        "first_ready_ms": first_ready * 1000,
        "idle_rss_mib": spread(rss),
        "agent_imports_ms": spread([t * 1000 for t in imports]),
        "rss_after_imports_mib": _rss_of(AGENT_IMPORTS, env),
        "import_profile": _import_profile(env),
    }


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main(quick: bool = False) -> dict[str, Any]:
    starts = 1 if quick else 5
    help_runs = 2 if quick else 15
    idle_s = 0.5 if quick else 2.5
    mesh_bin = str(Path(sys.executable).parent / "mesh")
    out: dict[str, Any] = {"variants": {}}

    out["variants"]["as installed"] = _variant(child_env(), starts, idle_s, "as installed")
    out["aiohttp_installed"] = _has("aiohttp")
    if out["aiohttp_installed"]:
        # nats-py imports aiohttp (for its optional websocket transport) whenever it is
        # installed, e.g. pulled in by litellm (the llm extra). Measure without it too.
        with tempdir() as block:
            (block / "aiohttp").mkdir()
            (block / "aiohttp" / "__init__.py").write_text("raise ImportError('hidden by bench/footprint.py')\n")
            env = child_env()
            env["PYTHONPATH"] = f"{block}:{env['PYTHONPATH']}"
            out["variants"]["without aiohttp"] = _variant(env, starts, idle_s, "without aiohttp")
    lean = out["variants"].get("without aiohttp", out["variants"]["as installed"])
    out["idle_rss_mib"] = lean["idle_rss_mib"]
    out["ready_ms"] = lean["ready_ms"]

    help_times = _wall([mesh_bin, "--help"], help_runs)
    bare = _wall([sys.executable, "-c", "pass"], help_runs)
    out["help_ms"] = spread([t * 1000 for t in help_times])
    out["python_bare_ms"] = spread([t * 1000 for t in bare])
    out["rss_bare_python_mib"] = _rss_of("pass")
    progress(
        NAME,
        f"mesh --help {statistics.median(help_times) * 1000:.0f} ms (bare python {statistics.median(bare) * 1000:.0f} ms); "
        f"bare python RSS {out['rss_bare_python_mib']:.1f} MiB",
    )
    out["setup"] = (
        f"`mesh agent run` (kind echo) against a local nats-server; {starts} starts per variant; idle {idle_s:.0f} s before "
        "reading VmRSS; start-to-ready = spawn to the agent's `agent ready` log line"
    )
    return out
