"""Footprint: idle agent RSS, agent start-to-ready time, ``mesh --help`` time.

- start-to-ready: from spawning ``mesh agent run BRIEF`` to its ``agent ready`` log
  line (connected, buckets and its queue ensured, pulls open, services endpoint up,
  card published: it can take work);
- idle RSS: VmRSS of that process after it has idled a few seconds (heartbeats
  running), next to a bare interpreter and an interpreter that only imported the
  agent's modules, to show where the memory goes;
- ``mesh --help``: wall time of the console script, next to ``python -c pass``;
- the slowest imports of the agent's start-up (``-X importtime`` of a real
  ``mesh agent run``, up to ready), and who imports the heavy optional packages
  (aiohttp, rich, ...).

The project's sources are byte-compiled first: with ``PYTHONDONTWRITEBYTECODE`` set
(as in some shells and CI images) an edited module's stale ``.pyc`` is otherwise
recompiled at every start, up to ~70 ms of "start-up" that no installed package pays.
"""

from __future__ import annotations

import compileall
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, AgentRun, broker, child_env, progress, rss_mb, spread, tempdir, write_brief

NAME = "footprint"
#: what `mesh agent run` imports before it starts the agent (mesh/cli/__init__.py, cmd_agent)
AGENT_IMPORTS = "import mesh.cli, mesh.cli.commands, mesh.logs, mesh.process, mesh.client"
#: packages an idle agent has no use for; `heavy_imports` says who brought them in
HEAVY = ("aiohttp", "rich", "pygments", "attr", "litellm", "httpx", "openai", "agents", "urllib.request")


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


def _importtime(text: str) -> list[tuple[str, int, int, int]]:
    """``-X importtime`` lines as (module, depth, self us, cumulative us), in output order
    (a module comes after the modules it imported)."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cum_us, name = line.split(":", 1)[1].split("|")
        rows.append((name.strip(), (len(name) - len(name.lstrip()) - 1) // 2, int(self_us), int(cum_us)))
    return rows


def _import_profile(rows: list[tuple[str, int, int, int]], limit: int = 12) -> list[dict[str, Any]]:
    """Slowest imports (cumulative ms), two levels deep, and the total."""
    top: list[dict[str, Any]] = [
        {"module": name, "depth": depth, "cumulative_ms": cum_us / 1000}
        for name, depth, _, cum_us in rows
        if depth <= 2 and not name.startswith(("encodings", "_", "site", "io", "zipimport"))
    ]
    top.sort(key=lambda r: -r["cumulative_ms"])
    return [*top[:limit], {"module": "(all imports)", "cumulative_ms": sum(r[2] for r in rows) / 1000}]


def _importers(rows: list[tuple[str, int, int, int]], hidden: tuple[str, ...] = ()) -> dict[str, str]:
    """Which module first imported each of :data:`HEAVY` that was imported ("-": the
    program itself). ``hidden``: packages made to fail their import (listed, not loaded)."""
    above: dict[int, str] = {}  # depth -> the module being imported at that depth
    found: dict[str, str] = {}
    for name, depth, _, _ in reversed(rows):  # reversed, a module's importer comes before it
        above[depth] = name
        if name in HEAVY and name not in hidden:
            # `import a.b` imports the package `a` under `a.b`: look past the package's own modules
            up = next((above[d] for d in range(depth - 1, -1, -1) if not above[d].startswith(name + ".")), "-")
            found[name] = up
    return found


def _profiled_start(brief: Path, server: str, log_dir: Path, env: dict[str, str]) -> list[tuple[str, int, int, int]]:
    """The imports of one real ``mesh agent run``, from spawn to ready."""
    run = AgentRun(brief, server, "importtime", log_dir, env={**env, "PYTHONPROFILEIMPORTTIME": "1"}).start()
    try:
        run.wait_ready()
    finally:
        run.stop()
    return _importtime(run.log.read_text(errors="replace"))


def _variant(
    env: dict[str, str], starts: int, idle_s: float, label: str, hidden: tuple[str, ...] = ()
) -> dict[str, Any]:
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
        profiled = _profiled_start(brief, b.url, d, env)
        first.stop()
    imports = _wall([sys.executable, "-c", AGENT_IMPORTS], max(starts, 2), env)
    heavy = _importers(profiled, hidden)
    progress(NAME, f"{label}: heavy imports (module: imported by): {heavy or 'none'}")
    return {
        "ready_ms": spread([r * 1000 for r in ready]),
        "first_ready_ms": first_ready * 1000,
        "idle_rss_mib": spread(rss),
        "agent_imports_ms": spread([t * 1000 for t in imports]),
        "rss_after_imports_mib": _rss_of(AGENT_IMPORTS, env),
        "import_profile": _import_profile(profiled),
        "heavy_imports": heavy,
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
    for package in ("mesh", "protocol", "agents"):  # see the module's docstring
        compileall.compile_dir(REPO / package, quiet=1)

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
            out["variants"]["without aiohttp"] = _variant(env, starts, idle_s, "without aiohttp", hidden=("aiohttp",))
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
