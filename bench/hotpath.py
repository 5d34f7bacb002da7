"""Where a no-op task's time goes: the hottest path, profiled.

One process runs an echo agent and a client (so one profile covers both sides) and
pushes sequential no-op tasks through a local nats-server. Reported:

- every NATS operation per task, by side (client / agent) and kind (JetStream round
  trip with an ack, un-acked publish, subscription), with the time spent awaiting the
  round trips;
- a call-tree profile (pyinstrument if installed, else cProfile) and the functions
  with the most self time (cProfile);
- the same task latency with the broker's storage as file (the default), memory,
  and file with ``sync_interval: always`` (fsync every write), to size what
  durability costs.
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio

from bench.common import broker, child_env, dist_ms, progress, tempdir

NAME = "hotpath"


ROUND_TRIP = "round trip (request, reply awaited)"
ONE_WAY = "one-way publish"


def _category(subject: str, acked: bool, data: bytes = b"") -> str:
    parts = subject.split(".")
    how = ROUND_TRIP if acked else ONE_WAY
    if subject.startswith("$JS.API.DIRECT.GET"):
        stream = parts[4] if len(parts) > 4 else "?"
        what = "task record" if stream.startswith("KV_") else f"stream {stream}"
        return f"read of {what} (direct get): " + how
    if subject.startswith("$JS.API.CONSUMER.MSG.NEXT"):
        return "pull request for work items (items arrive later)"
    if subject.startswith("$JS.ACK."):
        verb = data.split(b" ", 1)[0].decode(errors="replace") or "?"
        return f"work item settlement {verb}: {how}"
    if subject.startswith("$KV.") and len(parts) > 2:
        what = {"task": "task record", "agent": "directory card"}.get(parts[2], parts[2])
        return f"KV write of {what}: {how}"
    if subject.startswith("$JS.API."):
        return "JetStream API " + ".".join(parts[2:4]) + ": " + how
    if ".work." in subject:
        return "work item to the work stream: " + how
    if ".evt." in subject:
        return "event to the events stream: " + how
    if ".err." in subject:
        return "error report: " + how
    if subject.startswith("$SRV"):
        return "services API: " + how
    return "other " + ".".join(parts[:2]) + ": " + how


class NatsCounter:
    """Counts (and times) every NATS operation per connection name, by patching
    nats-py's Client in this process."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.wait_s: defaultdict[tuple[str, str], float] = defaultdict(float)
        self.active = False
        #: (start, end, side, op) of every round trip, for timelines
        self.spans: list[tuple[float, float, str, str]] = []
        #: round-trip "waves": times the number of round trips in flight rose from 0
        self.waves = 0
        self.busy_s = 0.0
        self._inflight = 0
        self._busy_since = 0.0

    @contextmanager
    def installed(self) -> Iterator[NatsCounter]:
        from nats.aio.client import Client
        from nats.aio.subscription import Subscription

        orig_request, orig_publish = Client.request, Client.publish
        orig_subscribe, orig_unsub = Client.subscribe, Subscription.unsubscribe
        orig_process_msg = Client._process_msg
        counter = self
        #: reply subject -> (start, side, subject) of round trips sent with publish(reply=...)
        #: and awaited later (mesh/bus.py sends a transition's work items and events, then awaits
        #: their acks together); nc.request's own publishes are timed by request()
        sent: dict[str, tuple[float, str, str]] = {}

        def side(nc: Any) -> str:
            name = str(nc.options.get("name") or "?")
            return "client" if name.startswith("hot-client") else "agent"

        def begin(t: float) -> None:
            if counter._inflight == 0:
                counter.waves += 1
                counter._busy_since = t
            counter._inflight += 1

        def end(t: float, done: float, key: tuple[str, str]) -> None:
            counter.counts[key] += 1
            counter.wait_s[key] += done - t
            counter.spans.append((t, done, *key))
            counter._inflight -= 1
            if counter._inflight == 0:
                counter.busy_s += done - counter._busy_since

        async def request(nc: Any, subject: str, *args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            active = counter.active
            if active:
                begin(t)
            try:
                return await orig_request(nc, subject, *args, **kwargs)
            finally:
                if active:
                    end(t, time.perf_counter(), (side(nc), _category(subject, True)))

        async def publish(nc: Any, subject: str, *args: Any, **kwargs: Any) -> Any:
            reply = kwargs.get("reply") or (args[1] if len(args) > 1 else "")
            data = kwargs.get("payload") or (args[0] if args else b"")
            if counter.active and (not reply or subject.startswith("$JS.API.CONSUMER.MSG.NEXT")):
                # A pull request's reply subject gets the items whenever the queue has
                # some: not a round trip anyone awaits.
                counter.counts[(side(nc), _category(subject, False, data))] += 1
            elif counter.active and not (nc._resp_sub_prefix and reply.startswith(nc._resp_sub_prefix.decode())):
                t = time.perf_counter()
                begin(t)
                sent[reply] = (t, side(nc), subject)
            return await orig_publish(nc, subject, *args, **kwargs)

        async def process_msg(nc: Any, sid: int, subject: bytes, *args: Any) -> Any:
            started = sent.pop(subject.decode(), None) if sent else None
            if started is not None:
                t, who, what = started
                end(t, time.perf_counter(), (who, _category(what, True)))
            elif counter.active:
                text = subject.decode(errors="replace")
                if ".work." in text:
                    counter.counts[(side(nc), "work item delivered (incoming)")] += 1
                elif ".rec." in text:
                    counter.counts[(side(nc), "record write republished to a follower (incoming)")] += 1
            return await orig_process_msg(nc, sid, subject, *args)

        async def subscribe(nc: Any, subject: str, *args: Any, **kwargs: Any) -> Any:
            if counter.active and not subject.startswith("_INBOX"):
                counter.counts[(side(nc), "subscribe (SUB)")] += 1
            return await orig_subscribe(nc, subject, *args, **kwargs)

        async def unsubscribe(sub: Any, *args: Any, **kwargs: Any) -> Any:
            if counter.active:
                counter.counts[(side(sub._conn), "unsubscribe (UNSUB)")] += 1
            return await orig_unsub(sub, *args, **kwargs)

        Client.request, Client.publish = request, publish  # type: ignore[method-assign,assignment]
        Client.subscribe, Subscription.unsubscribe = subscribe, unsubscribe  # type: ignore[method-assign,assignment]
        Client._process_msg = process_msg  # type: ignore[method-assign,assignment]
        try:
            yield self
        finally:
            Client.request, Client.publish = orig_request, orig_publish  # type: ignore[method-assign]
            Client.subscribe, Subscription.unsubscribe = orig_subscribe, orig_unsub  # type: ignore[method-assign]
            Client._process_msg = orig_process_msg  # type: ignore[method-assign]


def _quiet_info_logging(level: str = "info") -> None:
    """Log like `mesh agent run` does (info: two lines per task), into /dev/null."""
    import os
    import sys

    from mesh.logs import configure_logging

    saved = sys.stderr
    sys.stderr = open(os.devnull, "w")
    try:
        configure_logging(level)
    finally:
        sys.stderr = saved


async def _session(url: str, n: int, mode: str, storage: str = "file") -> dict[str, Any]:
    """Run ``n`` sequential no-op tasks with an in-process agent and client."""
    from bench.drive import mesh_sequential
    from bench.workers import Noop, Opts
    from mesh.agent import Agent, AgentConfig
    from mesh.bus import Settings
    from mesh.client import Mesh

    settings = Settings(storage=storage)
    agent = Agent(
        AgentConfig(id="hot-agent", serves=("echo",), capacity=64), Noop(Opts()), server=url, settings=settings
    )
    out: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:
        await tg.start(agent.run)
        mesh = await Mesh.connect(url, client_id="hot-client", settings=settings)
        try:
            await mesh_sequential(mesh, 20)
            if mode == "count":
                counter = NatsCounter()
                bounds: list[tuple[float, float]] = []
                with counter.installed():
                    counter.active = True
                    t, cpu = time.perf_counter(), time.process_time()
                    for _ in range(n):
                        t0 = time.perf_counter()
                        record = await mesh.run("echo", "ping")
                        bounds.append((t0, time.perf_counter()))
                        assert record.state == "done", record
                    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
                    counter.active = False
                lat = [b - a for a, b in bounds]
                out["ops"] = [
                    {
                        "side": s,
                        "op": op,
                        "per_task": c / n,
                        "wait_ms_per_task": counter.wait_s.get((s, op), 0.0) * 1000 / n,
                    }
                    for (s, op), c in sorted(counter.counts.items(), key=lambda kv: (kv[0][0], -kv[1]))
                ]
                out["waves_per_task"] = counter.waves / n
                out["busy_ms_per_task"] = counter.busy_s * 1000 / n
                # The timeline of the median task: every round trip between its submit and its end.
                order = sorted(range(n), key=lambda i: lat[i])
                a, b = bounds[order[n // 2]]
                out["timeline"] = [
                    {"start_ms": (s0 - a) * 1000, "end_ms": (s1 - a) * 1000, "side": side, "op": op}
                    for s0, s1, side, op in sorted(counter.spans)
                    if a <= s0 <= b
                ]
                out["timeline_total_ms"] = (b - a) * 1000
                out["latency"] = dist_ms(lat)
                out["cpu_ms_per_task"] = cpu * 1000 / n
                out["wall_ms_per_task"] = wall * 1000 / n
            elif mode == "pyinstrument":
                from pyinstrument import Profiler

                profiler = Profiler(interval=0.0002, async_mode="disabled")
                profiler.start()
                await mesh_sequential(mesh, n)
                profiler.stop()
                out["tree"] = profiler.output_text(unicode=False, color=False, show_all=False)
                out["flat"] = profiler.output_text(unicode=False, color=False, flat=True)
            elif mode == "cprofile":
                prof = cProfile.Profile()
                prof.enable()
                await mesh_sequential(mesh, n)
                prof.disable()
                out["cprofile"] = prof
            else:
                cpu = time.process_time()
                out["latency"] = dist_ms(await mesh_sequential(mesh, n))
                out["cpu_ms_per_task"] = (time.process_time() - cpu) * 1000 / n
        finally:
            await mesh.close()
            agent.drain()
            await agent.stopped()
            tg.cancel_scope.cancel()
    return out


def _top_self(prof: cProfile.Profile, n_tasks: int, limit: int = 25) -> list[dict[str, Any]]:
    stats = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        short = filename.split("site-packages/")[-1].split("/work/main/")[-1]
        rows.append(
            {
                "function": f"{short}:{line}({func})",
                "calls_per_task": nc / n_tasks,
                "self_us_per_task": tt * 1e6 / n_tasks,
                "cum_us_per_task": ct * 1e6 / n_tasks,
            }
        )
    rows.sort(key=lambda r: -r["self_us_per_task"])
    return rows[:limit]


def _trim_tree(text: str, max_lines: int = 90) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(lines[:max_lines])


def main(quick: bool = False) -> dict[str, Any]:
    n = 20 if quick else 400
    out: dict[str, Any] = {"n": n}
    _quiet_info_logging()
    with broker() as b:
        res = anyio.run(_session, b.url, n, "count")
        out.update(res)
        per_side: Counter[str] = Counter()
        for op in res["ops"]:
            if op["op"].endswith(ROUND_TRIP):
                per_side[op["side"]] += op["per_task"]
        out["round_trips_per_task"] = dict(per_side)
        out["round_trip_wait_ms_per_task"] = sum(op["wait_ms_per_task"] for op in res["ops"])
        progress(
            NAME,
            f"{n} tasks: p50 {res['latency']['p50']:.2f} ms; JetStream round trips per task {dict(per_side)} "
            f"in {res['waves_per_task']:.1f} sequential waves; "
            f"CPU {res['cpu_ms_per_task']:.2f} ms per task (agent + client in one process)",
        )
        prof = anyio.run(_session, b.url, n, "cprofile")["cprofile"]
        out["top_self"] = _top_self(prof, n)
        try:
            import pyinstrument  # noqa: F401

            tree = anyio.run(_session, b.url, n, "pyinstrument")
            out["profiler"] = "pyinstrument"
            out["tree"] = _trim_tree(tree["tree"])
            out["flat"] = _trim_tree(tree["flat"], 40)
        except ImportError:
            stream = io.StringIO()
            pstats.Stats(prof, stream=stream).sort_stats("cumulative").print_stats(40)
            out["profiler"] = "cProfile (pyinstrument not installed)"
            out["tree"] = _trim_tree(stream.getvalue(), 70)
        progress(NAME, f"profiled with {out['profiler']}")

        # What the agent's per-task info logging costs (CPU per task, agent + client). structlog
        # caches configured loggers, so each level gets a fresh process.
        logging_cost = {}
        for level in ("info", "warning"):
            res_level = subprocess.run(
                [sys.executable, "-m", "bench.hotpath", b.url, str(n), level],
                capture_output=True,
                text=True,
                env=child_env(),
                check=True,
                timeout=300,
            )
            logging_cost[level] = json.loads(res_level.stdout.strip().splitlines()[-1])["cpu_ms_per_task"]
        out["logging_cpu_ms_per_task"] = logging_cost
        progress(
            NAME,
            f"CPU per task with info logging {logging_cost['info']:.2f} ms, with warning {logging_cost['warning']:.2f} ms",
        )

    # What durability costs: the same tasks with other storage settings.
    storage: dict[str, Any] = {}
    m = max(n // 2, 10)
    with broker() as b:
        storage["file (default: fsync every 2 min)"] = anyio.run(_session, b.url, m, "latency")["latency"]
    with broker() as b:
        storage["memory"] = anyio.run(_session, b.url, m, "latency", "memory")["latency"]
    with tempdir() as d:
        conf = d / "sync.conf"
        conf.write_text('jetstream {\n  sync_interval: "always"\n}\n')
        with broker("-c", str(conf)) as b:
            storage["file, sync_interval always"] = anyio.run(_session, b.url, m, "latency")["latency"]
    out["storage"] = storage
    progress(NAME, "storage modes, p50: " + ", ".join(f"{k} {v['p50']:.2f} ms" for k, v in storage.items()))
    out["setup"] = (
        "one process: an echo Agent (capacity 64) and a Mesh client; sequential no-op tasks; local nats-server"
    )
    return out


if __name__ == "__main__":
    # python -m bench.hotpath URL N LEVEL: CPU per task at that log level, as JSON.
    _quiet_info_logging(sys.argv[3])
    print(json.dumps(anyio.run(_session, sys.argv[1], int(sys.argv[2]), "latency")))
