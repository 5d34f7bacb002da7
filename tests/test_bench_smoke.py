"""Smoke run of every benchmark in bench/ at tiny sizes (``--quick``), so the
benchmarks do not rot. No figure is asserted: these are not performance tests.

Each benchmark runs as ``python -m bench.run --quick --only NAME`` in a child process
(as a person would run it), writing its JSON into a temporary directory; the last
test rebuilds the report from those results into another temporary directory, so
the committed docs/BENCHMARKS.md and bench/results/ are never touched.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = [
    "footprint",
    "latency",
    "otel",
    "baseline",
    "throughput",
    "central",
    "autogen",
    "scale",
    "failover",
    "reliability",
    "org",
    "chaos",
    "durability",
    "hotpath",
    "soak",
    "profile",
    "fuzz",
]

pytestmark = pytest.mark.timeout(180)


def _run(*args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "bench.run", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench-results")


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_runs_at_tiny_sizes(name: str, results: Path) -> None:
    if name == "autogen" and (
        importlib.util.find_spec("autogen_core") is None or importlib.util.find_spec("autogen_ext") is None
    ):
        reason = "autogen-core / autogen-ext[grpc] not installed (the bench extra): AutoGen peer benchmark not run"
        print(reason)
        pytest.skip(reason)
    proc = _run("--quick", "--only", name, "--results", str(results), "--no-report")
    assert proc.returncode == 0, f"bench {name} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    record = json.loads((results / f"{name}.json").read_text())
    assert "error" not in record, record.get("error")
    assert record["quick"] is True
    assert record["result"] and not record["result"].get("skipped")


def test_report_is_rebuilt_from_the_results(results: Path, tmp_path: Path) -> None:
    proc = _run("--report-only", "--results", str(results), "--docs", str(tmp_path), timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (tmp_path / "BENCHMARKS.md").read_text()
    for heading in (
        "## Targets",
        "## Soak",
        "## Latency",
        "## The raw baseline",
        "## Throughput",
        "## Central baseline",
        "## Scale",
        "## Failover",
        "## Footprint",
        "## Organizational reliability",
        "## Where the time goes",
        "## Where the CPU goes under LLM-shaped load",
        "## Soak fuzz",
        "## Suggestions",
    ):
        assert heading in text, heading
    assert "Smoke sizes" in text
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "bench" / "latency.png").stat().st_size > 0
    else:
        assert "Plots skipped" in text
