"""Benchmarks of agent-mesh (not timed tests): ``python -m bench.run``; results in
bench/results/, the report in docs/BENCHMARKS.md."""
