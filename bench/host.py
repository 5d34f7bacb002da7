"""An agent host: many mesh agents in one OS process (for the scale and reliability
benchmarks). Every agent is a full :class:`mesh.agent.Agent` with its own NATS
connection, directory card, services endpoint and pulls on its queues; they only
share the interpreter.

    python -m bench.host --server URL --count 100 --serves echo [--worker bench.workers:Noop]

Prints ``READY count=N start_s=S rss_mb=M`` once every agent is up; on SIGTERM or
SIGINT drains them all and prints ``STATS {json}`` (the workers' counters, summed).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections import Counter
from typing import Any

import anyio

from bench.common import rss_mb
from bench.workers import Opts, load


async def host(args: argparse.Namespace) -> None:
    from mesh.agent import Agent, AgentConfig

    cls = load(args.worker)
    options = json.loads(args.options)
    agents: list[Agent] = []
    workers: list[Any] = []
    for i in range(args.count):
        worker = cls(Opts({**options, "seed": args.seed * 100_003 + i}))
        workers.append(worker)
        extra: dict[str, Any] = {}
        if args.heartbeat_s:
            extra["heartbeat_s"] = args.heartbeat_s
        if args.lease_s:
            extra["lease_s"] = args.lease_s
        config = AgentConfig(
            id=f"{args.id_prefix}{i}", serves=tuple(args.serves), capacity=args.capacity, kind=args.worker, **extra
        )
        agents.append(Agent(config, worker, server=args.server))

    t0 = time.monotonic()
    async with anyio.create_task_group() as tg:
        limiter = anyio.Semaphore(max(args.start_concurrency, 1))

        async def start(agent: Agent) -> None:
            async with limiter:
                await tg.start(agent.run)

        async with anyio.create_task_group() as starters:
            for agent in agents:
                starters.start_soon(start, agent)
        print(f"READY count={len(agents)} start_s={time.monotonic() - t0:.3f} rss_mb={rss_mb(_pid()):.1f}", flush=True)

        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        for agent in agents:
            agent.drain()
        with anyio.move_on_after(30):
            for agent in agents:
                await agent.stopped()
        tg.cancel_scope.cancel()

    totals: Counter[str] = Counter()
    for w in workers:
        if hasattr(w, "stats"):
            totals.update(w.stats())
    completed = [a.stats.completed for a in agents]
    print("STATS " + json.dumps({"workers": dict(totals), "completed": completed}), flush=True)


def _pid() -> int:
    import os

    return os.getpid()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.host", description=__doc__.splitlines()[0])
    p.add_argument("--server", required=True)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--serves", action="append", required=True)
    p.add_argument("--worker", default="bench.workers:Noop")
    p.add_argument("--capacity", type=int, default=64)
    p.add_argument("--id-prefix", default="h")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--options", default="{}")
    p.add_argument("--heartbeat-s", type=float, default=None)
    p.add_argument("--lease-s", type=float, default=None, help="lease (AckWait) of the queues the agents create")
    p.add_argument("--start-concurrency", type=int, default=8)
    args = p.parse_args(argv)
    from mesh.logs import configure_logging

    configure_logging()
    try:
        anyio.run(host, args)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
