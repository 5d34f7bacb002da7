"""A 3-node NATS cluster with replicated buckets and stream: killing one node mid-run
loses nothing and completes nothing twice."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from mesh.bus import Settings, Unavailable
from mesh.client import Mesh
from mesh.process import spawn_agent
from mesh.testing import Cluster, wait_for, write_brief


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "cluster").start()
    try:
        yield c
    finally:
        c.stop()


async def connect_when_ready(url: str) -> Mesh:
    """JetStream elects its meta leader a moment after the nodes start."""
    last: Exception | None = None
    for _ in range(100):
        try:
            return await Mesh.connect(url, client_id="cluster-client", settings=Settings(replicas=3))
        except Exception as exc:
            last = exc
            await anyio.sleep(0.2)
    raise AssertionError(f"the cluster never became ready for JetStream: {last}")


async def test_losing_one_node_of_three_loses_nothing(cluster: Cluster, tmp_path: Path) -> None:
    mesh = await connect_when_ready(cluster.url)
    info = await mesh.bus.js.stream_info(f"KV_{mesh.names.tasks_bucket}")
    assert info.config.num_replicas == 3
    procs = []
    try:
        for name in ("k1", "k2"):
            brief = write_brief(
                tmp_path, name, ["job"], kind="sleep", capacity=8, lease_s=2.0, options={"seconds": 0.4, "steps": 4}
            )
            procs.append(
                spawn_agent(
                    brief,
                    server=cluster.url,
                    agent_id=name,
                    log_path=tmp_path / f"{name}.log",
                    env={"MESH_REPLICAS": "3"},
                )
            )

        async def joined() -> bool:
            try:
                return {c.id for c in await mesh.agents()} == {"k1", "k2"}
            except Unavailable:  # a replicated stream electing its leader answers 503 a while
                return False

        try:
            await wait_for(joined, timeout=60, what="agents to join through the cluster")
        except AssertionError as exc:  # say why: the agents' own words
            logs = {p.agent_id: p.log_path.read_text()[-1500:] for p in procs if p.log_path is not None}
            raise AssertionError(f"{exc}; agents' logs: {logs}") from None
        records = [await mesh.submit("job", f"job {i}", claim_timeout_s=30) for i in range(40)]

        async def some_done() -> bool:
            return (await mesh.get(records[0].id)).state == "done"

        await wait_for(some_done, timeout=30, what="work to be under way")
        cluster.nodes[0].kill()  # the node everyone connected to first

        finals = [await mesh.wait(r.id) for r in records]
        assert Counter(r.state for r in finals) == {"done": 40}, [
            (r.state, r.reason, r.error) for r in finals if r.state != "done"
        ]
        # Every task's finish is recorded exactly once. An agent whose event met the
        # stream's leader election re-sends it (same Nats-Msg-Id) while it works on, so
        # the requester may see the end (core NATS) before the stream has stored it.
        counts: list[int] = []

        async def one_finish_each() -> bool:
            finishes = Counter(e.task for e in await mesh.history(None) if e.kind == "finish")
            counts[:] = sorted(finishes[r.id] for r in finals)
            return counts == [1] * len(finals)

        with contextlib.suppress(AssertionError):  # timed out: the assert below says how
            await wait_for(one_finish_each, timeout=30, what="one recorded finish per task")
        assert counts == [1] * len(finals), counts
        assert all(p.process.poll() is None for p in procs)
    finally:
        for p in procs:
            p.drain()
        for p in procs:
            try:
                p.wait(30)
            except Exception:
                p.kill()
        await mesh.close()
