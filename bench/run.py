"""Run the benchmark suite and regenerate docs/BENCHMARKS.md.

    .venv/bin/python -m bench.run                 # everything (~15 minutes on 2 cores)
    .venv/bin/python -m bench.run --only soak --soak-tasks 5000   # a shorter soak
    .venv/bin/python -m bench.run --only fuzz --fuzz-messages 20000   # a shorter soak fuzz
    .venv/bin/python -m bench.run --quick         # tiny sizes: a smoke run (~1 minute)
    .venv/bin/python -m bench.run --only latency,failover
    .venv/bin/python -m bench.run --only chaos --chaos-lease 10 --chaos-tasks 300   # failover with the default lease
    .venv/bin/python -m bench.run --report-only   # rewrite the docs from bench/results/

Each benchmark runs in its own child process (its brokers, agents and event loops
die with it), prints progress, and writes bench/results/NAME.json. The report is
then rebuilt from every results file present, so ``--only`` refreshes one section.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench.common import DOCS, RESULTS, child_env, machine_facts, source_hash

#: name -> module, in the order they run
BENCHMARKS: dict[str, str] = {
    "footprint": "bench.footprint",
    "latency": "bench.latency",
    "auth": "bench.auth",
    "otel": "bench.otel",
    "baseline": "bench.baseline",
    "throughput": "bench.throughput",
    "central": "bench.central",
    "autogen": "bench.autogen_peer",
    "scale": "bench.scale",
    "failover": "bench.failover",
    "reliability": "bench.reliability",
    "org": "bench.org",
    "chaos": "bench.chaos",
    "durability": "bench.durability",
    "hotpath": "bench.hotpath",
    "soak": "bench.soak",
    "profile": "bench.load_profile",
    "fuzz": "bench.fuzz",
}


def _child(name: str, quick: bool, results: Path) -> int:
    from mesh.logs import configure_logging

    configure_logging("warning")  # the client's own log lines would drown the progress lines
    module = importlib.import_module(BENCHMARKS[name])
    t0 = time.monotonic()
    record: dict[str, Any] = {
        "name": name,
        "quick": quick,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_before": os.getloadavg(),
        "source": source_hash(),  # the runtime's sources this benchmark measured
    }
    code = 0
    from bench import drive

    try:
        record["result"] = module.main(quick=quick)
    except Exception:
        record["error"] = traceback.format_exc()
        print(record["error"], file=sys.stderr, flush=True)
        code = 1
    if drive.FAILURES:
        record["task_failures"] = dict(drive.FAILURES)
    record["duration_s"] = time.monotonic() - t0
    record["load_after"] = os.getloadavg()
    results.mkdir(parents=True, exist_ok=True)
    # A benchmark run with other parameters may keep its own results file (chaos with
    # another lease), so it does not replace the default run's section.
    stem = module.results_name() if hasattr(module, "results_name") else name
    tmp = results / f"{stem}.json.tmp"
    tmp.write_text(json.dumps(record, indent=1, default=str, allow_nan=True) + "\n")
    tmp.replace(results / f"{stem}.json")
    return code


def _wait_quiet(limit_s: float) -> None:
    if limit_s <= 0 or os.getloadavg()[0] < 1.0:
        return
    print(
        f"== waiting up to {limit_s:.0f} s for the machine to quieten (load average {os.getloadavg()[0]:.2f})",
        flush=True,
    )
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and os.getloadavg()[0] >= 1.0:
        time.sleep(5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run; figures are not meaningful)")
    p.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    p.add_argument(
        "--results", type=Path, default=RESULTS, help="directory for the JSON results (default bench/results)"
    )
    p.add_argument("--docs", type=Path, default=DOCS, help="where BENCHMARKS.md and bench/*.png go (default docs/)")
    p.add_argument("--no-report", action="store_true", help="do not rewrite BENCHMARKS.md")
    p.add_argument("--report-only", action="store_true", help="only rewrite BENCHMARKS.md from the results")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        metavar="S",
        help="before each benchmark wait up to S seconds for the 1-minute load average to drop below 1 "
        "(other work on the machine skews the figures)",
    )
    p.add_argument(
        "--soak-tasks",
        type=int,
        default=None,
        metavar="N",
        help="tasks per phase of the soak benchmark (default 20,000; 400 with --quick)",
    )
    p.add_argument(
        "--soak-ttl",
        default=None,
        metavar="DURATION",
        help="MESH_FINISHED_TTL of the soak's agents and client (default 15s; 2s with --quick)",
    )
    p.add_argument(
        "--chaos-lease",
        type=float,
        default=None,
        metavar="S",
        help="queue lease of the chaos benchmark, which scales its tasks and kills (default 1; "
        "another lease writes bench/results/chaos-leaseS.json)",
    )
    p.add_argument(
        "--chaos-tasks",
        type=int,
        default=None,
        metavar="N",
        help="tasks of the chaos benchmark (default 1,000; 60 with --quick)",
    )
    p.add_argument(
        "--fuzz-messages",
        type=int,
        default=None,
        metavar="N",
        help="messages the fuzz benchmark sends (default 100,000; 1,500 with --quick)",
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        return _child(args.child, args.quick, args.results)

    if args.soak_tasks is not None:
        os.environ["BENCH_SOAK_TASKS"] = str(args.soak_tasks)  # the children inherit it
    if args.fuzz_messages is not None:
        os.environ["BENCH_FUZZ_MESSAGES"] = str(args.fuzz_messages)
    if args.soak_ttl is not None:
        os.environ["BENCH_SOAK_TTL"] = args.soak_ttl
    if args.chaos_lease is not None:
        if not (args.chaos_lease > 0 and math.isfinite(args.chaos_lease)):
            p.error(f"--chaos-lease must be a positive number of seconds, not {args.chaos_lease}")
        os.environ["BENCH_CHAOS_LEASE"] = repr(args.chaos_lease)
    if args.chaos_tasks is not None:
        if args.chaos_tasks < 1:
            p.error(f"--chaos-tasks must be at least 1, not {args.chaos_tasks}")
        os.environ["BENCH_CHAOS_TASKS"] = str(args.chaos_tasks)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")

    failed: list[str] = []
    t0 = time.monotonic()
    if not args.report_only:
        args.results.mkdir(parents=True, exist_ok=True)
        facts = machine_facts()
        (args.results / "machine.json").write_text(json.dumps(facts, indent=1) + "\n")
        print(
            f"== machine: {facts['cpu']}, {facts['cores']} cores, {facts['memory_gib']} GiB; Python {facts['python']}; "
            f"{facts['nats_server']}; nats-py {facts['versions']['nats-py']}",
            flush=True,
        )
        for name in names:
            budget = 240 if args.quick else 1800 if name == "soak" else 900
            _wait_quiet(args.quiet_wait)
            print(f"== {name}{' (quick)' if args.quick else ''} (load average {os.getloadavg()[0]:.2f})", flush=True)
            t = time.monotonic()
            cmd = [sys.executable, "-m", "bench.run", "--child", name, "--results", str(args.results)] + (
                ["--quick"] if args.quick else []
            )
            try:
                code = subprocess.run(cmd, env=child_env(), timeout=budget).returncode
            except subprocess.TimeoutExpired:
                code = -1
                print(f"!! {name} did not finish within {budget} s", flush=True)
            if code != 0:
                failed.append(name)
            print(f"== {name} {'FAILED' if code else 'done'} in {time.monotonic() - t:.0f} s", flush=True)
    if not args.no_report:
        from bench.report import generate

        path = generate(args.results, args.docs)
        print(f"== wrote {path}", flush=True)
    print(f"== total {time.monotonic() - t0:.0f} s{'; failed: ' + ', '.join(failed) if failed else ''}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
