"""Identities and the broker's permissions (issue 14): each attack the broker can stop
is attempted against a real nats-server run with authorization, and refused; honest
agents go on working. The attacks are counted in docs/SECURITY.md.

An attacker here is a raw nats-py connection with a valid key of its own (a compromised
agent or client, or a prompt-injected one driving its process), sending exactly the
messages the attack needs. A refused publish or subscription comes back from the
server as a "permissions violation" error on that connection; a flush after the
attempt guarantees the error has arrived (the server answers in order)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import msgspec
import nats
import nats.errors
import pytest
from nats.aio.client import Client

from mesh.auth import auth_config, permissions
from mesh.broker import Broker, find_nats_server
from mesh.bus import MeshError, Unreachable
from mesh.client import Mesh
from mesh.identity import IdentityError, inbox_prefix, list_keys, load_seed, new_key
from mesh.testing import AgentProcs, Keys, wait_for
from protocol import AgentCard, ControlRequest, Names, TaskRecord, encode, new_task

pytestmark = pytest.mark.auth

NAMES = Names()


class Attacker:
    """A raw connection with a key of its own, recording the server's refusals."""

    def __init__(self, nc: Client, refusals: list[str]) -> None:
        self.nc, self.refusals = nc, refusals
        self.arrived = anyio.Event()

    async def refused(self, what: str, subject: str) -> None:
        """Assert the server refused ``what`` ('publish' or 'subscription') on ``subject``."""
        want = f'permissions violation for {what} to "{subject}"'.lower()
        await self.nc.flush()
        with anyio.move_on_after(5):  # nats-py may hand the error over after the flush's answer
            while not any(want in r.lower() for r in self.refusals):
                await self.arrived.wait()
                self.arrived = anyio.Event()
        assert any(want in r.lower() for r in self.refusals), f"not refused: {what} {subject}: {self.refusals}"

    async def publish_refused(self, subject: str, data: bytes = b"x", headers: dict[str, str] | None = None) -> None:
        await self.nc.publish(subject, data, headers=headers)
        await self.refused("publish", subject)

    async def subscribe_refused(self, subject: str) -> None:
        await self.nc.subscribe(subject)
        await self.refused("subscription", subject)


@pytest.fixture
async def attacker(keys: Keys) -> AsyncIterator[Callable[..., Awaitable[Attacker]]]:
    connections: list[Client] = []

    async def connect(name: str, role: str = "agent") -> Attacker:
        refusals: list[str] = []
        attacker: Attacker | None = None

        async def on_error(exc: Exception) -> None:
            refusals.append(str(exc))
            if attacker is not None:
                attacker.arrived.set()

        seed = load_seed(keys.seed(name, role))
        nc = await nats.connect(
            keys.broker.url,
            nkeys_seed_str=seed.seed,
            inbox_prefix=inbox_prefix(name),
            error_cb=on_error,
            allow_reconnect=False,
        )
        connections.append(nc)
        attacker = Attacker(nc, refusals)
        return attacker

    yield connect
    for nc in connections:
        await nc.close()


def card_subject(agent_id: str) -> str:
    return f"$KV.{NAMES.agents_bucket}.{NAMES.agent_key(agent_id)}"


async def honest_agent(agent_procs: AgentProcs, mesh_client: Mesh, name: str = "alice") -> AgentCard:
    agent_procs.start(name, ["echo"], kind="echo")
    await agent_procs.ready(mesh_client)
    card = await mesh_client.bus.card(name)
    assert card is not None
    return card


async def still_works(agent_procs: AgentProcs, keys: Keys, agent_id: str = "alice") -> None:
    """Honest parties go on working: a client's task is done by the honest agent."""
    client = await keys.connect("carol", "client")
    try:
        with anyio.fail_after(30):
            final = await client.run("echo", "still here?")
        assert final.state == "done" and final.owner == agent_id
    finally:
        await client.close()


# --- connecting --------------------------------------------------------------------------


async def test_an_unknown_key_cannot_connect(broker: Broker, tmp_path: Path) -> None:
    new_key(tmp_path / "elsewhere", "mallory", "operator")  # a well-formed key the broker never heard of
    with pytest.raises(Unreachable, match="refused the key"):
        await Mesh.connect(broker.url, settings=_settings(tmp_path / "elsewhere" / "mallory.nk"))


async def test_no_key_cannot_connect(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESH_NKEY")
    with pytest.raises(Unreachable, match="requires a key"):
        await Mesh.connect(broker.url)


async def test_a_key_acts_only_as_its_own_name(keys: Keys, broker: Broker) -> None:
    with pytest.raises(IdentityError, match="is not the name of the key"):
        await Mesh.connect(broker.url, client_id="alice", settings=keys.settings("carol", "client"))


# --- the directory -------------------------------------------------------------------------


async def test_an_agent_cannot_overwrite_or_delete_another_agents_card(
    agent_procs: AgentProcs, mesh_client: Mesh, attacker: Any, keys: Keys
) -> None:
    card = await honest_agent(agent_procs, mesh_client)
    bob = await attacker("bob")
    forged = msgspec.structs.replace(card, serves=("everything",), capacity=999)
    await bob.publish_refused(card_subject("alice"), encode(forged))
    await bob.publish_refused(card_subject("alice"), b"", headers={"KV-Operation": "PURGE", "Nats-Rollup": "sub"})
    await bob.publish_refused(card_subject("alice"), b"", headers={"KV-Operation": "DEL"})
    stream = f"KV_{NAMES.agents_bucket}"
    await bob.publish_refused(f"$JS.API.STREAM.PURGE.{stream}", msgspec.json.encode({"filter": card_subject("alice")}))
    await bob.publish_refused(f"$JS.API.STREAM.MSG.DELETE.{stream}", msgspec.json.encode({"seq": 1}))
    await bob.publish_refused(f"$JS.API.STREAM.DELETE.{stream}")
    now = await mesh_client.bus.card("alice")
    assert now is not None and now.serves == ("echo",)
    await still_works(agent_procs, keys)


async def test_an_agent_writes_its_own_card(agent_procs: AgentProcs, mesh_client: Mesh, keys: Keys) -> None:
    card = await honest_agent(agent_procs, mesh_client)
    assert card.public_key == load_seed(keys.seed("alice")).public_key  # the card names its key


async def test_nobody_adds_a_ghost_card(mesh_client: Mesh, attacker: Any) -> None:
    ghost = AgentCard(id="ghost", serves=("everything",), capacity=999)
    bob = await attacker("bob")
    await bob.publish_refused(card_subject("ghost"), encode(ghost))
    carol = await attacker("carol", "client")
    await carol.publish_refused(card_subject("ghost"), encode(ghost))
    await carol.publish_refused(card_subject("carol"), encode(msgspec.structs.replace(ghost, id="carol")))
    assert await mesh_client.bus.card("ghost") is None and await mesh_client.bus.card("carol") is None


async def test_a_card_counts_only_for_what_its_key_is_bound_to(mesh_client: Mesh, attacker: Any, keys: Keys) -> None:
    """Attack 26: the broker lets an agent write its own card, not choose what it says. A
    card claiming capabilities its key is not bound to (so that gateways offer them and
    views show them served), or another key, is read as far as the key's binding goes; a
    card naming another agent's id under one's own name is no card."""
    bound_key(keys, "mallory", "agent", ["echo"])
    mallory = await attacker("mallory")
    js = mallory.nc.jetstream()
    alice = load_seed(keys.seed("alice")).public_key
    await js.publish(card_subject("mallory"), encode(AgentCard(id="alice", serves=("echo",))))
    olive = await keys.connect("olive", "client")  # a reader that knows mallory's .pub
    try:
        assert [c.id for c in await olive.agents()] == [], await olive.agents()
        claims = AgentCard(id="mallory", serves=("echo", "legal.review"), capacity=999, public_key=alice)
        await js.publish(card_subject("mallory"), encode(claims))
        card = await olive.bus.card("mallory")
        assert card is not None and card.serves == ("echo",), card
        assert card.public_key == load_seed(keys.seed("mallory")).public_key
        assert [(c.id, c.serves) for c in await olive.agents()] == [("mallory", ("echo",))]
        async with anyio.create_task_group() as tg:  # the live directory, as `mesh ui` follows it

            async def first_change() -> None:
                async for agent_id, change in olive.bus.directory_changes():
                    assert (agent_id, change and change.serves) == ("mallory", ("echo",))
                    tg.cancel_scope.cancel()

            tg.start_soon(first_change)
    finally:
        await olive.close()


async def test_a_client_cannot_write_into_the_directory(mesh_client: Mesh, keys: Keys) -> None:
    carol = await keys.connect("carol", "client")
    try:
        with pytest.raises(MeshError):  # the broker drops the publish: no ack ever comes
            await carol.bus.publish_card(AgentCard(id="carol"), ttl_s=60)
        assert await mesh_client.bus.card("carol") is None
    finally:
        await carol.close()


# --- control subjects ----------------------------------------------------------------------


async def test_an_agent_cannot_answer_or_drain_through_another_agents_control_subject(
    agent_procs: AgentProcs, mesh_client: Mesh, attacker: Any, keys: Keys
) -> None:
    await honest_agent(agent_procs, mesh_client)
    bob = await attacker("bob")
    control = NAMES.control_subject("alice")
    await bob.subscribe_refused(control)  # to take alice's control requests (and answer them)
    await bob.nc.subscribe("x.q", queue="q")  # (a harmless subscription still works)
    await bob.subscribe_refused(f"{NAMES.prefix}.v2.ctl.>")
    await bob.publish_refused(control, encode(ControlRequest(action="drain")))
    card = await mesh_client.bus.card("alice")
    assert card is not None and not card.draining
    await still_works(agent_procs, keys)


async def test_a_client_cannot_drain_an_agent(agent_procs: AgentProcs, mesh_client: Mesh, keys: Keys) -> None:
    await honest_agent(agent_procs, mesh_client)
    carol = await keys.connect("carol", "client")
    try:
        with pytest.raises(MeshError, match=r"did not answer|no agent"):
            await carol.control("alice", "drain", timeout=1.0)
    finally:
        await carol.close()
    card = await mesh_client.bus.card("alice")
    assert card is not None and not card.draining
    await still_works(agent_procs, keys)
    # an operator may (mesh_client is the operator test-client)
    reply = await mesh_client.control("alice", "drain")
    assert reply.draining


async def test_nobody_reads_another_partys_inbox(attacker: Any) -> None:
    bob = await attacker("bob")
    await bob.subscribe_refused("_INBOX.>")
    await bob.subscribe_refused(f"{inbox_prefix('alice')}.>")
    await bob.publish_refused(f"{inbox_prefix('alice')}.abc", b'{"stream":"KV_mesh-v2-tasks","seq":1}')


# --- the records ---------------------------------------------------------------------------


async def test_nobody_publishes_on_the_record_republish_subjects(mesh_client: Mesh, attacker: Any) -> None:
    record = new_task(task_id="t1", capability="echo", instruction="x", requester="carol", now=time.time())
    for name, role in (("bob", "agent"), ("carol", "client"), ("root", "operator")):
        party = await attacker(name, role)
        await party.publish_refused(NAMES.record_subject("t1"), encode(record), headers={"Nats-Sequence": "99"})


async def test_nobody_but_an_operator_destroys_or_reconfigures_the_mesh(mesh_client: Mesh, attacker: Any) -> None:
    for name, role in (("bob", "agent"), ("carol", "client")):
        party = await attacker(name, role)
        for stream in (f"KV_{NAMES.tasks_bucket}", NAMES.events_stream, NAMES.work_stream, NAMES.archive_stream):
            await party.publish_refused(f"$JS.API.STREAM.DELETE.{stream}")
            await party.publish_refused(f"$JS.API.STREAM.PURGE.{stream}", b"{}")
            await party.publish_refused(f"$JS.API.STREAM.UPDATE.{stream}", b"{}")
        await party.publish_refused(f"$JS.API.CONSUMER.DELETE.{NAMES.work_stream}.echo")
    assert len(await mesh_client.bus.js.streams_info()) == 5


async def test_a_party_cannot_wipe_the_task_records_with_a_rollup(mesh_client: Mesh, keys: Keys) -> None:
    """A header is nothing permissions can refuse: the tasks bucket refuses rollups."""
    for i in range(3):
        record = new_task(task_id=f"t{i}", capability="echo", instruction="x", requester="test-client", now=time.time())
        await mesh_client.bus._compare_and_set(NAMES.task_key(record.id), encode(record), 0, finished=False)
    carol = await keys.connect("carol", "client")
    try:
        # (with rollups refused, the broker answers with an error instead of an ack)
        reply = await carol.bus.nc.request(
            f"$KV.{NAMES.tasks_bucket}.task.t0", b"x", headers={"Nats-Rollup": "all"}, timeout=2.0
        )
        assert b"rollup" in reply.data.lower(), reply.data  # the stream's refusal, not an ack
    finally:
        await carol.close()
    info = await mesh_client.bus.js.stream_info(f"KV_{NAMES.tasks_bucket}")
    assert info.state.messages == 3


async def test_an_agent_cannot_wipe_the_directory_with_a_rollup_on_its_own_card(
    agent_procs: AgentProcs, mesh_client: Mesh, keys: Keys
) -> None:
    """The one key an agent may write in the directory is its own card's: a rollup
    there would wipe every card. The directory bucket refuses rollups."""
    agent_procs.start("alice", ["echo"], kind="echo")
    agent_procs.start("bob", ["echo"], kind="echo")
    await agent_procs.ready(mesh_client)
    seed = load_seed(keys.seed("bob"))
    nc = await nats.connect(keys.broker.url, nkeys_seed_str=seed.seed, inbox_prefix=inbox_prefix("bob"))
    try:
        reply = await nc.request(card_subject("bob"), b"x", headers={"Nats-Rollup": "all"}, timeout=2.0)
        assert b"rollup not permitted" in reply.data, reply.data
    finally:
        await nc.close()
    assert {"alice", "bob"} <= {card.id for card in await mesh_client.agents()}


async def test_a_revoked_key_is_disconnected_when_the_broker_reloads(keys: Keys, broker: Broker) -> None:
    closed = anyio.Event()

    async def on_closed() -> None:
        closed.set()

    seed = load_seed(keys.seed("bob"))
    nc = await nats.connect(
        broker.url,
        nkeys_seed_str=seed.seed,
        inbox_prefix=inbox_prefix("bob"),
        allow_reconnect=False,
        closed_cb=on_closed,
    )
    (keys.directory / "bob.pub").unlink()  # revoking: the .pub leaves the keys directory
    broker.reload()
    with anyio.fail_after(10):
        await closed.wait()
    assert nc.is_closed
    with pytest.raises(Unreachable, match="refused the key"):
        await Mesh.connect(broker.url, client_id="bob", settings=_settings(keys.directory / "bob.nk"))


# --- one id, one key -------------------------------------------------------------------------


async def test_a_second_process_under_an_agents_id_with_another_key_is_refused(
    agent_procs: AgentProcs, mesh_client: Mesh, keys: Keys, attacker: Any
) -> None:
    await honest_agent(agent_procs, mesh_client)
    brief = agent_procs.directory / "alice.toml"
    env = {**os.environ, "MESH_NKEY": str(keys.seed("bob"))}
    # through the command line: refused before it connects, in one line
    proc = await anyio.run_process(
        [sys.executable, "-m", "mesh", "agent", "run", str(brief), "--id", "alice", "--server", keys.broker.url],
        env=env,
        check=False,
    )
    stderr = proc.stderr.decode()
    assert proc.returncode == 2, stderr
    assert stderr.strip().splitlines()[-1].startswith("mesh agent: error: id 'alice' is not the name of the key")
    # around it (a raw connection with bob's key): the broker refuses alice's subjects
    bob = await attacker("bob")
    await bob.subscribe_refused(NAMES.control_subject("alice"))
    await bob.publish_refused(card_subject("alice"), b"", headers={"KV-Operation": "PURGE", "Nats-Rollup": "sub"})
    await bob.publish_refused(NAMES.error_subject("alice"), b"{}")
    assert await mesh_client.bus.card("alice") is not None
    await still_works(agent_procs, keys)


async def test_an_agent_runs_under_its_keys_name(broker: Broker, mesh_client: Mesh, keys: Keys, tmp_path: Path) -> None:
    from mesh.testing import write_brief

    brief = write_brief(tmp_path, "worker", ["echo"], kind="echo")
    env = {**os.environ, "MESH_NKEY": str(keys.seed("dora"))}
    async with await anyio.open_process(
        [sys.executable, "-m", "mesh", "agent", "run", str(brief), "--server", broker.url],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as proc:
        try:
            await wait_for(lambda: mesh_client.bus.card("dora"), what="the agent to join under its key's name")
        finally:
            proc.terminate()
            with anyio.fail_after(30):
                await proc.wait()


# --- honest agents, end to end ------------------------------------------------------------------


async def test_with_auth_a_clients_task_is_done_with_review(
    agent_procs: AgentProcs, mesh_client: Mesh, keys: Keys
) -> None:
    agent_procs.start("alice", ["echo"], kind="echo")
    agent_procs.start("rev1", ["review"], kind="check")
    agent_procs.start("rev2", ["review"], kind="check")
    await agent_procs.ready(mesh_client)
    carol = await keys.connect("carol", "client")
    try:
        with anyio.fail_after(60):
            final = await carol.run("echo", "hello", review=2)
        assert final.state == "done", final
        assert {v.reviewer for v in final.votes} == {"rev1", "rev2"}
        history = await carol.history(final.root)  # a client reads the trail
        assert history
        with anyio.fail_after(10):  # and follows the events (an ordered consumer, with flow control)
            async for event in carol.events(root=final.root, history=True):
                assert event.root == final.root
                break
        assert {c.id for c in await carol.agents()} == {"alice", "rev1", "rev2"}  # and reads the directory
    finally:
        await carol.close()
    for agent_id in agent_procs.procs:
        assert "permissions violation" not in agent_procs.log(agent_id), agent_procs.log(agent_id)


async def test_with_auth_a_client_answers_an_agents_question(
    agent_procs: AgentProcs, mesh_client: Mesh, keys: Keys
) -> None:
    agent_procs.start("asker", ["ambiguous"], kind="mesh.faults:Asker", options={"question": "Which Python version?"})
    await agent_procs.ready(mesh_client)
    carol = await keys.connect("carol", "client")

    async def answer(question: TaskRecord) -> str:
        assert question.capability == "agent.carol"
        return "3.11"

    try:
        with anyio.fail_after(30):
            record = await carol.wait(await carol.submit("ambiguous", "install it"), on_question=answer)
        assert record.state == "done" and record.result == "install it -> using your answer: 3.11"
        cancelled = await carol.cancel((await carol.submit("nobody-serves", "x", claim_timeout_s=30)).id)
        assert cancelled.state == "cancelled"  # a requester cancels its own task
    finally:
        await carol.close()


# --- the config itself -----------------------------------------------------------------------------


def test_the_auth_config_is_valid_nats_server_config(tmp_path: Path) -> None:
    for name, role in (("a1", "agent"), ("c1", "client"), ("o1", "operator")):
        new_key(tmp_path / "keys", name, role)
    conf = tmp_path / "auth.conf"
    conf.write_text(auth_config(list_keys(tmp_path / "keys")))
    main = tmp_path / "main.conf"
    main.write_text('include "auth.conf"\n')
    proc = subprocess.run([find_nats_server(), "-t", "-c", str(main)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_permissions_bind_the_agents_own_subjects() -> None:
    perms = permissions("agent", "alice")
    allow = perms["publish"]["allow"]
    assert card_subject("alice") in allow and NAMES.control_subject("alice") in allow
    assert not any(s.startswith(f"$KV.{NAMES.agents_bucket}.") and s != card_subject("alice") for s in allow)
    assert NAMES.records_subjects in perms["publish"]["deny"]
    client = permissions("client", "carol")
    assert not any(s.startswith(f"$KV.{NAMES.agents_bucket}") for s in client["publish"]["allow"])
    assert not any(".ctl." in s for s in client["publish"]["allow"] + client["subscribe"]["allow"])


# --- seed files ---------------------------------------------------------------------------------


def test_a_new_seed_is_private_and_never_overwritten(tmp_path: Path) -> None:
    key = new_key(tmp_path, "alice", "agent")
    seed = tmp_path / "alice.nk"
    assert stat.S_IMODE(seed.stat().st_mode) == 0o600
    assert load_seed(seed).public_key == key.public_key
    with pytest.raises(IdentityError, match="never overwritten"):
        new_key(tmp_path, "alice", "client")


def _settings(seed: Path) -> object:
    import dataclasses

    from mesh.settings import Settings

    return dataclasses.replace(Settings.from_env(), nkey=str(seed))


# --- the command line: keys, config, bad seed files -------------------------------------------


def mesh_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


UNREACHABLE = "nats://127.0.0.1:9"


def test_bad_seed_files_get_one_line_naming_the_file(tmp_path: Path) -> None:
    new_key(tmp_path, "good", "agent")
    open_seed = tmp_path / "open.nk"
    open_seed.write_bytes((tmp_path / "good.nk").read_bytes())
    open_seed.chmod(0o644)
    garbage = tmp_path / "garbage.nk"
    garbage.write_text("not a seed\n")
    garbage.chmod(0o600)
    account = tmp_path / "account.nk"  # a seed, but of an account, not a user
    account.write_text("SAAGNJOZTRPYHBJWSBYDA4RRZK2FCGKVLVLYXJ3BTT4NRXYWK5BFNBAWBQ\n")
    account.chmod(0o600)
    (tmp_path / "adir.nk").mkdir()
    cases = {
        str(tmp_path / "missing.nk"): "does not exist",
        str(open_seed): "chmod 600",
        str(garbage): "does not hold a NATS user seed",
        str(account): "does not hold a NATS user seed",
        str(tmp_path / "adir.nk"): "not a regular file",
    }
    for path, what in cases.items():
        one_line_error(mesh_cli("agents", "--nkey", path, "--server", UNREACHABLE), path, what)
        one_line_error(mesh_cli("submit", "echo", "hi", "--server", UNREACHABLE, env={"MESH_NKEY": path}), path, what)
    brief = tmp_path / "b.toml"
    brief.write_text('name = "b"\nserves = ["echo"]\nkind = "echo"\n')
    run = mesh_cli("agent", "run", str(brief), "--nkey", str(open_seed), "--server", UNREACHABLE)
    one_line_error(run, str(open_seed), "chmod 600")


def test_keys_new_list_and_auth_config_from_the_command_line(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    made = mesh_cli("keys", "new", "alice", "--role", "agent", "--dir", str(keys))
    assert made.returncode == 0 and made.stdout.strip().startswith("U"), made.stderr
    assert stat.S_IMODE((keys / "alice.nk").stat().st_mode) == 0o600
    one_line_error(mesh_cli("keys", "new", "alice", "--role", "client", "--dir", str(keys)), "never overwritten")
    one_line_error(mesh_cli("keys", "new", "a.b", "--role", "client", "--dir", str(keys)), "invalid key name")
    assert mesh_cli("keys", "new", "carol", "--role", "client", env={"MESH_KEYS": str(keys)}).returncode == 0
    listed = mesh_cli("keys", "list", str(keys))
    assert listed.returncode == 0 and "alice" in listed.stdout and "client" in listed.stdout
    out = tmp_path / "auth.conf"
    assert mesh_cli("auth", "config", str(keys), "--out", str(out)).returncode == 0
    assert "authorization {" in out.read_text() and made.stdout.strip() in out.read_text()
    one_line_error(mesh_cli("auth", "config", str(tmp_path / "nope")), "does not exist")


def _broker_says(*args: str, tmp_path: Path) -> str:
    """Run `mesh broker`, return its stderr once it is up, then stop it."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mesh",
            "broker",
            "--port",
            "0",
            "--http-port",
            "0",
            "--store",
            str(tmp_path / "js"),
            *args,
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "agents connect with" in line:
                break
    finally:
        proc.terminate()
        proc.communicate(timeout=30)  # (reads the rest, closes the pipe)
    return "".join(lines)


def test_broker_without_auth_says_it_is_open(tmp_path: Path) -> None:
    said = _broker_says(tmp_path=tmp_path)
    warning = [line for line in said.splitlines() if "WARNING" in line]
    assert len(warning) == 1 and "OPEN" in warning[0] and "--auth" in warning[0]


def test_broker_with_auth_lets_in_only_its_keys(tmp_path: Path) -> None:
    new_key(tmp_path / "keys", "alice", "agent")
    said = _broker_says("--auth", str(tmp_path / "keys"), tmp_path=tmp_path)
    assert "WARNING" not in said and "authorization on: 2 keys" in said, said
    assert (tmp_path / "keys" / "operator.nk").exists()  # the broker's own setup connected as the operator


def test_control_and_retention_need_an_operator_key(tmp_path: Path) -> None:
    new_key(tmp_path, "carol", "client")
    seed = str(tmp_path / "carol.nk")
    one_line_error(mesh_cli("agent", "drain", "alice", "--nkey", seed, "--server", UNREACHABLE), "operator's key")
    one_line_error(mesh_cli("setup", "--retention", "1d", "--nkey", seed, "--server", UNREACHABLE), "operator's key")


async def test_up_runs_its_org_with_auth_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mesh.testing import write_brief

    monkeypatch.delenv("MESH_NKEY", raising=False)
    write_brief(tmp_path, "upper", ["echo"], kind="echo", options={"prefix": "up: "})
    org = tmp_path / "org.toml"
    org.write_text('name = "one"\n[[agents]]\nbrief = "upper.toml"\n')
    keys = tmp_path / "keys"
    log = tmp_path / "up.log"
    up = _spawn(["up", str(org), "--keys", str(keys)], log)
    try:
        said = await wait_for(
            lambda: "submit work with" in log.read_text() and log.read_text(), what="mesh up to start its org"
        )
        line = next(x for x in said.splitlines() if "submit work with" in x)
        server = line.split("--server ")[1].split()[0]
        assert f"--nkey {keys / 'client.nk'}" in line
        assert {p.name for p in keys.glob("*.pub")} == {"upper.pub", "operator.pub", "client.pub"}
        with pytest.raises(Unreachable, match="requires a key"):  # the org's broker is not open
            await Mesh.connect(server)
        client = await Mesh.connect(server, settings=_settings(keys / "client.nk"))
        try:
            await wait_for(lambda: client.bus.card("upper"), what="the org's agent to join")
            # `mesh up` follows the directory with the org's client key, as a client may.
            await wait_for(lambda: "agent upper up (1/1)" in log.read_text(), what="mesh up to say the agent is up")
            with anyio.fail_after(30):
                assert (await client.run("echo", "x")).result == "up: x"
        finally:
            await client.close()
    finally:
        up.terminate()
        assert await anyio.to_thread.run_sync(up.wait, 60) == 0, log.read_text()


async def test_up_binds_its_agents_to_their_briefs_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`mesh up --bind`: each agent's key serves its brief's capabilities and those below
    them the org names, so the generalist still takes a specialist's overflow."""
    from mesh.testing import write_brief

    monkeypatch.delenv("MESH_NKEY", raising=False)
    write_brief(tmp_path, "gen", ["echo"], kind="echo", options={"prefix": "gen: "})
    write_brief(tmp_path, "med", ["echo.medical"], kind="echo", options={"prefix": "med: "})
    org = tmp_path / "org.toml"
    org.write_text('name = "two"\n[[agents]]\nbrief = "gen.toml"\n[[agents]]\nbrief = "med.toml"\n')
    keys = tmp_path / "keys"
    log = tmp_path / "up.log"
    up = _spawn(["up", str(org), "--keys", str(keys), "--bind"], log)
    try:
        said = await wait_for(
            lambda: "submit work with" in log.read_text() and log.read_text(), what="mesh up to start its org"
        )
        line = next(x for x in said.splitlines() if "submit work with" in x)
        server = line.split("--server ")[1].split()[0]
        assert load_seed(keys / "gen.nk").serves == ("echo", "echo.medical")
        assert load_seed(keys / "med.nk").serves == ("echo.medical",)
        assert load_seed(keys / "client.nk").serves == ("*",)
        client = await Mesh.connect(server, settings=_settings(keys / "client.nk"))
        try:
            await wait_for(lambda: "(2/2)" in log.read_text(), what="both agents up")
            with anyio.fail_after(30):
                assert (await client.run("echo", "x")).result == "gen: x"
                assert (await client.run("echo.medical", "y")).result in ("med: y", "gen: y")
        finally:
            await client.close()
    finally:
        up.terminate()
        assert await anyio.to_thread.run_sync(up.wait, 60) == 0, log.read_text()


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "mesh", *argv], stderr=log)


async def test_a_clients_commands_work_with_auth(agent_procs: AgentProcs, mesh_client: Mesh, keys: Keys) -> None:
    await honest_agent(agent_procs, mesh_client)
    env = {**os.environ, "MESH_NKEY": str(keys.seed("carol", "client")), "MESH_SERVER": keys.broker.url}

    async def cli(*argv: str) -> str:
        proc = await anyio.run_process([sys.executable, "-m", "mesh", *argv], env=env, check=False)
        assert proc.returncode == 0, (argv, proc.stderr.decode())
        return proc.stdout.decode()

    done = json.loads(await cli("submit", "echo", "hi", "--wait", "--json"))
    assert done["state"] == "done" and done["requester"] == "carol"
    assert done["id"] in await cli("trace", done["id"])
    assert "alice" in await cli("agents")
    assert "alice" in await cli("top", "--once")
    await cli("inbox")
    queued = json.loads(await cli("submit", "nobody-serves", "x", "--json"))
    await cli("cancel", queued["id"])
    with anyio.fail_after(30):  # `mesh watch` follows the events (runs until stopped)
        async with await anyio.open_process(
            [sys.executable, "-m", "mesh", "watch", "--history"], env=env, stderr=subprocess.DEVNULL
        ) as watch:
            assert watch.stdout is not None
            seen = b""
            async for chunk in watch.stdout:
                seen += chunk
                if done["id"].encode() in seen:
                    break
            watch.terminate()


# --- queues bound to keys (attacks 24 and 25) -----------------------------------------------------


def bound_key(keys: Keys, name: str, role: str, serves: list[str]) -> Path:
    """A key bound to ``serves``, let in by the broker."""
    new_key(keys.directory, name, role, serves=serves)
    keys.broker.reload()
    return keys.directory / f"{name}.nk"


async def test_an_agent_takes_work_only_from_the_queues_its_key_is_bound_to(
    agent_procs: AgentProcs, mesh_client: Mesh, attacker: Any, keys: Keys
) -> None:
    work = NAMES.work_stream
    waiting = await mesh_client.submit("translate", "bonjour", claim_timeout_s=60)  # its queue holds one item
    bound_key(keys, "mallory", "agent", ["echo"])
    mallory = await attacker("mallory")
    other = NAMES.queue_consumer("translate")
    pull = msgspec.json.encode({"batch": 1, "expires": 10**9, "group": "mesh", "priority": 0})
    await mallory.publish_refused(f"$JS.API.CONSUMER.MSG.NEXT.{work}.{other}", pull)
    await mallory.publish_refused(f"$JS.ACK.{work}.{other}.1.2.1.1700000000000000000.0", b"+TERM")
    await mallory.publish_refused(f"$JS.API.STREAM.MSG.DELETE.{work}", msgspec.json.encode({"seq": 1}))
    items = await mesh_client.bus.waiting_items("translate")
    assert [item.task for _, item in items] == [waiting.id]  # still there, for a translator
    # An honest agent bound to its brief's capability works as before.
    bound_key(keys, "alice", "agent", ["echo"])
    await honest_agent(agent_procs, mesh_client)
    await still_works(agent_procs, keys)
    assert "permissions violation" not in agent_procs.log("alice").lower()


async def test_a_generalist_takes_the_tasks_below_its_capability_only_if_bound_to_them(
    agent_procs: AgentProcs, mesh_client: Mesh, keys: Keys
) -> None:
    # The queues exist before the agents look for them (at start).
    medical = await mesh_client.submit("echo.medical", "for a specialist", claim_timeout_s=60)
    legal = await mesh_client.submit("echo.legal", "for a generalist", claim_timeout_s=60)
    bound_key(keys, "gen", "agent", ["echo", "echo.legal"])
    agent_procs.start("gen", ["echo"], kind="echo")
    await agent_procs.ready(mesh_client)
    with anyio.fail_after(30):
        assert (await mesh_client.wait(legal.id)).state == "done"
        assert (await mesh_client.wait((await mesh_client.submit("echo", "its own")).id)).state == "done"
    # Started before either task was done, it looked at echo.medical's queue and left it.
    assert (await mesh_client.get(medical.id)).state == "open"
    assert [item.task for _, item in await mesh_client.bus.waiting_items("echo.medical")] == [medical.id]
    assert "permissions violation" not in agent_procs.log("gen").lower()


async def test_an_agent_serving_beyond_its_keys_binding_stops_with_one_line(
    agent_procs: AgentProcs, mesh_client: Mesh, keys: Keys
) -> None:
    bound_key(keys, "narrow", "agent", ["echo"])
    proc = agent_procs.start("narrow", ["echo", "translate"], kind="echo")
    assert await anyio.to_thread.run_sync(proc.process.wait, 30) == 2
    log = agent_procs.log("narrow")
    assert "is bound to echo" in log and "serves translate too" in log and "mesh keys bind narrow" in log, log
    assert "Traceback" not in log


async def test_only_a_person_clears_the_items_of_what_it_answered(mesh_client: Mesh, keys: Keys) -> None:
    asked = await mesh_client.submit("human.review", "is this fine?", claim_timeout_s=60)
    bound_key(keys, "pat", "client", ["human"])
    requester = await keys.connect("req", "client")  # a requester's key: bound to nothing
    person = await Mesh.connect(keys.broker.url, client_id="pat", settings=_settings(keys.directory / "pat.nk"))
    try:
        assert load_seed(keys.directory / "req.nk").serves == ()
        assert [r.id for r in await person.offered("human")] == [asked.id]
        done = await person.take_and_finish(asked.id, "fine")
        assert done.state == "done"
        assert await mesh_client.bus.waiting_items("human.review") == []  # taken off the queue
        # A requester answering leaves the item (it may not delete), and no inbox offers it.
        other = await requester.submit("human.review", "and this?", claim_timeout_s=60)
        with anyio.fail_after(3):  # not the 5 s of a refused, unanswered request
            assert (await requester.take_and_finish(other.id, "also fine")).state == "done"
        assert [item.task for _, item in await mesh_client.bus.waiting_items("human.review")] == [other.id]
        assert await person.offered("human") == []
    finally:
        await requester.close()
        await person.close()


async def test_a_squatted_queue_is_said_and_not_pulled_from(
    agent_procs: AgentProcs, mesh_client: Mesh, keys: Keys, attacker: Any
) -> None:
    work = NAMES.work_stream
    mallory = await attacker("mallory", "client")
    name, subject = NAMES.queue_consumer("echo"), NAMES.work_subject("translate")
    config = {"durable_name": name, "filter_subject": subject, "ack_policy": "explicit"}
    reply = await mallory.nc.request(
        f"$JS.API.CONSUMER.CREATE.{work}.{name}.{subject}",
        msgspec.json.encode({"stream_name": work, "action": "create", "config": config}),
        timeout=5,
    )
    assert b'"error"' not in reply.data, reply.data  # allowed: whoever submits first makes a queue
    agent_procs.start("alice", ["echo"], kind="echo")
    await agent_procs.ready(mesh_client)
    await wait_for(lambda: "not pulling from a squatted queue" in agent_procs.log("alice"), what="the agent to say so")
    assert "an operator must delete that consumer" in agent_procs.log("alice")


def test_permissions_bind_an_agent_to_its_queues_and_keep_deletes_from_agents_and_requesters() -> None:
    work = NAMES.work_stream
    bound = permissions("agent", "alice", NAMES, ("summarize", "summarize.medical"))["publish"]
    assert f"$JS.API.CONSUMER.MSG.NEXT.{work}.summarize~medical" in bound["allow"]
    assert not any(s.startswith(f"$JS.API.CONSUMER.MSG.NEXT.{work}.*") for s in bound["allow"])
    assert f"$JS.API.STREAM.MSG.DELETE.{work}" in bound["deny"]
    anywhere = permissions("agent", "alice", NAMES, ("*",))["publish"]["allow"]
    assert f"$JS.API.CONSUMER.MSG.NEXT.{work}.*" in anywhere and f"$JS.ACK.{work}.*.>" in anywhere
    assert f"$JS.API.STREAM.MSG.DELETE.{work}" in permissions("client", "pat", NAMES, ("human",))["publish"]["allow"]
    assert f"$JS.API.STREAM.MSG.DELETE.{work}" in permissions("client", "req", NAMES, ())["publish"]["deny"]


def test_keys_are_bound_from_the_command_line(tmp_path: Path) -> None:
    env = {"MESH_KEYS": str(tmp_path / "keys")}
    assert (
        mesh_cli("keys", "new", "gen", "--role", "agent", "--serves", "summarize,summarize.medical", env=env).returncode
        == 0
    )
    assert mesh_cli("keys", "new", "req", "--role", "client", env=env).returncode == 0
    listed = mesh_cli("keys", "list", env=env).stdout
    assert "serves summarize, summarize.medical" in listed and "serves nothing" in listed, listed
    assert mesh_cli("keys", "bind", "req", "--serves", "human", env=env).returncode == 0
    assert load_seed(tmp_path / "keys" / "req.nk").serves == ("human",)
    one_line_error(mesh_cli("keys", "bind", "req", "--serves", "bad..cap", env=env), "cannot bind a key to 'bad..cap'")
    one_line_error(mesh_cli("keys", "bind", "nobody", "--serves", "x", env=env), "nobody.pub does not exist")
    assert "serves summarize, summarize.medical" in mesh_cli("auth", "config", str(tmp_path / "keys")).stdout
