"""A bounded number of agents watch a capability's board (watch slots); the others
take nudges and read the board when they may have missed work. Real broker, real
agent processes."""

from __future__ import annotations

from mesh.client import Mesh
from mesh.testing import AgentProcs, wait_for
from protocol import BOARD_WATCH_SLOTS, decode_beat


async def _watchers(mesh: Mesh, served: str) -> dict[int, str]:
    entries = await mesh.bus.snapshot(f"watch.{served}.*", bucket=mesh.bus.agents)
    return {mesh.names.parse_watch_slot_key(e.key)[1]: e.value.decode() for e in entries if e.value}


async def test_only_a_few_agents_watch_and_a_newcomer_reads_the_board_on_joining(
    agent_procs: AgentProcs, mesh_client: Mesh
) -> None:
    first = [f"s{i}" for i in range(BOARD_WATCH_SLOTS)]
    for name in first:
        agent_procs.start(name, ["slow"], kind="sleep", capacity=1, options={"seconds": 12, "steps": 12})
    await agent_procs.ready(mesh_client)

    async def all_slots_held() -> bool:
        return len(await _watchers(mesh_client, "slow")) == BOARD_WATCH_SLOTS

    await wait_for(all_slots_held, what="the first agents to take every watch slot")
    assert set((await _watchers(mesh_client, "slow")).values()) == set(first)

    records = [await mesh_client.submit("slow", f"job {i}", claim_timeout_s=60) for i in range(BOARD_WATCH_SLOTS + 2)]

    async def first_agents_busy() -> bool:
        states = [(await mesh_client.get(r.id)).state for r in records]
        return states.count("working") == BOARD_WATCH_SLOTS

    await wait_for(first_agents_busy, what="every watcher to be busy")
    # The newcomer finds no free slot: it never sees the offers live, and the nudges
    # were passed among the busy agents and dropped. It must read the board on joining.
    agent_procs.start("late", ["slow"], kind="sleep", capacity=1, options={"seconds": 0.1})
    await agent_procs.ready(mesh_client, "late")

    async def newcomer_working() -> bool:
        owners = [(await mesh_client.get(r.id)).owner for r in records]
        return "late" in owners

    await wait_for(newcomer_working, timeout=8, what="the newcomer to claim a waiting task from the board")
    assert "late" not in (await _watchers(mesh_client, "slow")).values()
    for r in records:
        await mesh_client.cancel(r.id)


async def test_a_dead_watchers_slot_passes_to_another_agent(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    names = [f"w{i}" for i in range(BOARD_WATCH_SLOTS + 1)]
    for name in names:
        agent_procs.start(name, ["quick"], kind="echo", capacity=2)
    await agent_procs.ready(mesh_client)

    async def all_slots_held() -> bool:
        return len(await _watchers(mesh_client, "quick")) == BOARD_WATCH_SLOTS

    await wait_for(all_slots_held, what="watch slots to be taken")
    watchers = await _watchers(mesh_client, "quick")
    (outsider,) = set(names) - set(watchers.values())
    victim = watchers[0]
    agent_procs.procs[victim].kill()  # no goodbye: its slot must expire by itself

    async def outsider_watches() -> bool:
        return outsider in (await _watchers(mesh_client, "quick")).values()

    # The slot's TTL is three heartbeats (6 s); then a non-watcher takes it within
    # about two heartbeats.
    await wait_for(outsider_watches, timeout=20, what=f"{outsider} to take {victim}'s watch slot")
    assert victim not in (await _watchers(mesh_client, "quick")).values()
    assert (await mesh_client.run("quick", "still served")).state == "done"


async def test_a_draining_watcher_hands_its_slot_over_at_once(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    names = [f"d{i}" for i in range(BOARD_WATCH_SLOTS)]
    for name in names:
        agent_procs.start(name, ["calm"], kind="echo")
    await agent_procs.ready(mesh_client)

    async def all_slots_held() -> bool:
        return len(await _watchers(mesh_client, "calm")) == BOARD_WATCH_SLOTS

    await wait_for(all_slots_held, what="watch slots to be taken")
    agent_procs.procs["d0"].drain()
    assert agent_procs.procs["d0"].wait(20) == 0

    async def slot_freed() -> bool:
        return "d0" not in (await _watchers(mesh_client, "calm")).values()

    await wait_for(slot_freed, timeout=2, what="the drained agent's slot to be given up")


async def test_an_owner_announces_each_renewal_with_a_lease_beat(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    agent_procs.start("beater", ["long"], kind="sleep", options={"seconds": 3, "steps": 3})
    await agent_procs.ready(mesh_client)
    record = await mesh_client.submit("long", "take your time", lease_s=0.6)
    sub = await mesh_client.nc.subscribe(mesh_client.names.task_beats(record.id))
    try:
        beats = [decode_beat((await sub.next_msg(timeout=5)).data) for _ in range(3)]
    finally:
        await sub.unsubscribe()
    assert {(b.task, b.owner, b.epoch) for b in beats} == {(record.id, "beater", 1)}
    revisions = [b.revision for b in beats]
    assert revisions == sorted(set(revisions)), revisions  # every beat a newer renewal
    _, latest = await mesh_client.bus.read(record.id)
    assert latest >= revisions[-1]
    await mesh_client.cancel(record.id)


async def test_a_restarted_watcher_takes_back_its_own_slot_at_once(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    names = [f"r{i}" for i in range(BOARD_WATCH_SLOTS)]
    for name in names:
        agent_procs.start(name, ["again"], kind="echo")
    await agent_procs.ready(mesh_client)
    assert sorted((await _watchers(mesh_client, "again")).values()) == names  # in the directory: watching
    agent_procs.procs["r0"].kill()  # its slot stays held (by a dead process) until it expires
    agent_procs.procs["r0"].wait(10)
    before = {e.key: e.revision for e in await mesh_client.bus.snapshot("watch.again.*", bucket=mesh_client.bus.agents)}
    (key,) = [
        e.key
        for e in await mesh_client.bus.snapshot("watch.again.*", bucket=mesh_client.bus.agents)
        if e.value == b"r0"
    ]
    agent_procs.start("r0", ["again"], kind="echo")

    async def taken_back() -> bool:
        entry = await mesh_client.bus.agents.get(key)
        return entry.value == b"r0" and (entry.revision or 0) > before[key]

    # The old run's slot would expire 6 s after its last renewal (and its card is
    # still listed until then): the new run takes the slot back as it starts.
    await wait_for(taken_back, timeout=5, what="the restarted agent to take its slot back")
    after = await mesh_client.bus.snapshot("watch.again.*", bucket=mesh_client.bus.agents)
    assert sorted(e.value.decode() for e in after) == names
