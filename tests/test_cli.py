"""The `mesh` command line, run as a user would: separate processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from mesh.broker import Broker
from mesh.client import Mesh
from mesh.process import spawn_agent
from mesh.testing import AgentProcs, wait_for, write_brief


def mesh(
    *args: str, server: str | None = None, timeout: float = 60, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    if server:
        env["MESH_SERVER"] = server
    proc = subprocess.run(
        [sys.executable, "-m", "mesh", *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"mesh {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_help_lists_the_commands() -> None:
    out = mesh("--help").stdout
    for command in (
        "demo",
        "broker",
        "setup",
        "agent",
        "up",
        "submit",
        "agents",
        "watch",
        "trace",
        "cancel",
        "brief",
        "ui",
    ):
        assert command in out


def test_help_does_not_import_heavy_modules() -> None:
    heavy = ("nats", "litellm", "anyio", "structlog", "rich", "aiohttp", "msgspec", "protocol", "a2a", "uvicorn")
    code = f"import sys; from mesh.cli import build_parser; build_parser(); print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _importers(importtime_log: str) -> dict[str, str]:
    """Every module a ``-X importtime`` log lists, with the module that imported it
    ("-": the program itself). Importing ``a.b`` lists the package ``a`` under ``a.b``:
    a package's importer is the first module above it outside the package."""
    rows = []
    for line in importtime_log.splitlines():
        if line.startswith("import time:") and "cumulative" not in line:
            name = line.split("|")[2]
            rows.append((name.strip(), (len(name) - len(name.lstrip()) - 1) // 2))
    above: dict[int, str] = {}
    importers: dict[str, str] = {}
    for name, depth in reversed(rows):  # a module is listed after what it imported
        above[depth] = name
        outside = (above[d] for d in range(depth - 1, -1, -1) if not above[d].startswith(name + "."))
        importers.setdefault(name, next(outside, "-"))
    return importers


async def test_agent_run_imports_only_what_an_idle_agent_needs(broker: Broker, tmp_path: Path) -> None:
    """`mesh agent run` for a kind that calls no model must not pay for the model stack,
    the client's commands, the embedded broker or the renderers (bench/footprint.py
    measures what that costs). Nor aiohttp, which nats-py imports for its websocket
    transport whenever it is installed (the dev and llm extras install it): `mesh agent
    run` keeps it out for nats:// servers. rich is made unimportable: structlog imports it
    on its own when installed, and only structlog may try to."""
    hidden = tmp_path / "hidden"
    for package in ("rich",):
        (hidden / package).mkdir(parents=True)
        (hidden / package / "__init__.py").write_text("raise ImportError('hidden by tests/test_cli.py')\n")
    env = {
        "PYTHONPROFILEIMPORTTIME": "1",
        "PYTHONPATH": os.pathsep.join([str(hidden), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    brief = write_brief(tmp_path, "lean", ["lean"], kind="echo")
    log = tmp_path / "agent.log"
    agent = spawn_agent(brief, server=broker.url, agent_id="lean", log_path=log, env=env)
    try:
        await wait_for(
            lambda: "agent ready" in log.read_text(errors="replace") or agent.process.poll() is not None,
            what="the agent to be ready",
        )
    finally:
        agent.drain()
        await anyio.to_thread.run_sync(agent.wait, 30)
    text = log.read_text(errors="replace")
    assert "agent ready" in text, text[-3000:]
    importers = _importers(text)
    assert "mesh.agent" in importers and "nats" in importers, "no -X importtime output in the agent's log"

    never = ("litellm", "agents", "httpx", "openai", "urllib.request", "mesh.broker", "mesh.cli.render", "mesh.top")
    assert {m: importers[m] for m in never if m in importers} == {}
    # (nats-py's attempt, refused on purpose, is still listed: but nothing under it)
    assert not [m for m in importers if m.startswith(("aiohttp.", "multidict"))]
    only_from = {"rich": "structlog."}
    unexpected = {
        m: importers[m] for m, allowed in only_from.items() if m in importers and not importers[m].startswith(allowed)
    }
    assert unexpected == {}


@pytest.mark.parametrize(("server", "websockets"), [("nats://127.0.0.1:4222", False), ("ws://127.0.0.1:8080", True)])
def test_nats_is_imported_without_websockets_unless_a_url_needs_them(server: str, websockets: bool) -> None:
    pytest.importorskip("aiohttp", reason="aiohttp is not installed: nats-py never loads it")
    code = (
        "import sys\n"
        "from mesh.cli.commands import _import_nats_without_websockets as lean\n"
        f"lean({server!r})\n"
        "import nats.aio.transport as t\n"
        "print(t.aiohttp is not None)\n"
        "import aiohttp\n"  # a model call (litellm) still can
        "print(aiohttp.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(websockets), "aiohttp"]


async def test_submit_wait_json_agents_and_trace(agent_procs: AgentProcs, mesh_client: Mesh, broker: Broker) -> None:
    agent_procs.start("echoer", ["echo"], kind="echo")
    await agent_procs.ready(mesh_client)
    out = mesh("submit", "echo", "hi there", "--wait", "--json", server=broker.url).stdout
    record = json.loads(out)
    for field in ("id", "state", "result", "reason", "owner", "epoch", "attempts"):
        assert field in record
    assert record["state"] == "done" and record["result"] == "hi there" and record["owner"] == "echoer"

    cards = json.loads(mesh("agents", "--json", server=broker.url).stdout)
    assert [c["id"] for c in cards] == ["echoer"] and cards[0]["serves"] == ["echo"]
    table = mesh("agents", server=broker.url).stdout
    assert "echoer" in table and "AGENT" in table

    trace = mesh("trace", record["id"], server=broker.url).stdout
    assert record["id"] in trace and "claim" in trace and "done" in trace

    status = json.loads(mesh("agent", "status", "echoer", server=broker.url).stdout)
    assert status["agent"] == "echoer"


async def test_setup_sets_the_retention_and_trace_says_when_a_task_is_beyond_it(broker: Broker) -> None:
    out = mesh("setup", "--retention", "2d", "--retention-bytes", "1GiB", server=broker.url).stderr
    assert "finished work stays readable for 2 days, at most 1073741824 bytes" in out
    client = await Mesh.connect(broker.url, client_id="setup-check")
    try:
        events = (await client.bus.js.stream_info(client.names.events_stream)).config
    finally:
        await client.close()
    assert events.max_age == 2 * 86400 and events.max_bytes == 1024**3
    # Asked without new values, setup only says what is in force.
    assert "2 days" in mesh("setup", server=broker.url).stderr
    bad = mesh("setup", "--retention", "forever", server=broker.url, check=False)
    assert bad.returncode == 2 and "invalid duration 'forever'" in bad.stderr
    gone = mesh("trace", "long-gone", server=broker.url, check=False)
    assert gone.returncode != 0 and "not in the events history" in gone.stderr and "Traceback" not in gone.stderr


def test_submit_without_agent_fails_no_agent_with_exit_1(broker: Broker) -> None:
    proc = mesh("submit", "nobody", "x", "--wait", "--claim-timeout", "300ms", server=broker.url, check=False)
    assert proc.returncode == 1
    assert "no_agent" in proc.stdout


@pytest.mark.parametrize(
    "command",
    [("agents",), ("agent", "run", str(Path(__file__).parents[1] / "deploy" / "briefs" / "summarizer.toml"))],
    ids=["client", "agent"],
)
def test_unreachable_server_is_a_clear_error(command: tuple[str, ...]) -> None:
    proc = mesh(*command, "--server", "nats://127.0.0.1:9", check=False)
    assert proc.returncode == 2
    assert "cannot reach a NATS server at nats://127.0.0.1:9" in proc.stderr
    assert "mesh broker" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_duration_is_a_clear_error() -> None:
    proc = mesh("submit", "echo", "x", "--deadline", "soon", check=False)
    assert proc.returncode == 2 and "invalid duration 'soon'" in proc.stderr


def test_brief_new_then_check(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    mesh("brief", "new", str(path))
    assert "ok" in mesh("brief", "check", str(path)).stdout
    again = mesh("brief", "new", str(path), check=False)
    assert again.returncode == 2 and "exists" in again.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('name = "a"\nserves = ["x"]\ncapacity = "two"\n', "field `capacity`: Expected `int`, got `str`"),
        ('name = "a"\nserve = ["x"]\n', "unknown field `serve`"),
        ('name = "a b"\nserves = ["x"]\n', "field `name`: invalid agent id"),
        ('name = "a"\nserves = ["Bad Cap"]\n', "field `serves`: invalid capability"),
        ('name = "a"\nserves = ["x"]\nkind = "nope"\n', "unknown kind 'nope'"),
        ('name = "a"\n', "missing required field `serves`"),
        ("name = \n", "not valid TOML"),
        (
            'name = "a"\nserves = ["x"]\n[review]\nquorum = 16\nreject_quorum = 16\n',
            "field `review.reject_quorum`: 16 vetoes with quorum 16 is more votes than one round holds",
        ),
        (
            'name = "a"\nserves = ["x"]\ndelegates = ["critique"]\n'
            '[review_results]\ncapability = "critique"\nreject_quorum = 2\n',
            "field `review_results.reject_quorum`: only a task's own review guarantees distinct reviewers",
        ),
    ],
)
def test_invalid_briefs_name_file_field_and_fix(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "brief.toml"
    path.write_text(content)
    proc = mesh("brief", "check", str(path), check=False)
    assert proc.returncode == 2
    assert str(path) in proc.stderr or "brief 'a'" in proc.stderr
    assert expected in proc.stderr, proc.stderr


def test_bad_values_are_one_line_errors_without_tracebacks(tmp_path: Path) -> None:
    binary = tmp_path / "binary.toml"
    binary.write_bytes(bytes(range(256)))
    wrong_option = tmp_path / "wrong.toml"
    wrong_option.write_text('name = "w"\nserves = ["a"]\nkind = "sleep"\n[options]\nseconds = "abc"\n')
    cases = [
        (("brief", "check", str(binary)), "not valid TOML"),
        (("brief", "check", str(wrong_option)), "cannot use its [options]"),
        (("agent", "run", str(wrong_option), "--server", "nats://127.0.0.1:9"), "cannot use its [options]"),
        (("submit", "x", "y", "--data", f"@{tmp_path / 'missing.json'}"), "cannot read the file"),
        (("submit", "x", "y", "--review", "100"), "a review needs 1 to 16 approvals"),
        (("submit", "x", "y", "--review", "-1"), "a review needs 1 to 16 approvals"),
        (("submit", "x", "y", "--reject-quorum", "2"), "--reject-quorum needs --review"),
        (
            ("submit", "x", "y", "--review", "1", "--reject-quorum", "0"),
            "invalid reject quorum '0': a whole number from 1 to 16",
        ),
        (("submit", "x", "y", "--deadline", "nan"), "duration must be positive"),
        (("submit", "x", "y", "--deadline", "inf"), "duration must be positive"),
        (("setup", "--retention-bytes", "lots"), "invalid size 'lots'"),
    ]
    for args, expected in cases:
        proc = mesh(*args, check=False)
        assert proc.returncode == 2, (args, proc.returncode, proc.stderr)
        assert expected in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)


async def test_agent_drain_command_stops_an_agent(agent_procs: AgentProcs, mesh_client: Mesh, broker: Broker) -> None:
    agent_procs.start("drainee", ["echo"], kind="echo")
    await agent_procs.ready(mesh_client)
    reply = json.loads(mesh("agent", "drain", "drainee", server=broker.url).stdout)
    assert reply["draining"] is True
    assert agent_procs.procs["drainee"].wait(20) == 0


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
async def test_up_runs_an_org_and_a_stop_signal_drains_it(
    tmp_path: Path, broker: Broker, mesh_client: Mesh, stop: signal.Signals
) -> None:
    write_brief(tmp_path, "upper", ["echo"], kind="echo", options={"prefix": "up: "})
    org = tmp_path / "org.toml"
    org.write_text(
        'name = "two"\n[[agents]]\nbrief = "upper.toml"\nreplicas = 2\n'
        '[[agents]]\nname = "inline"\nserves = ["other"]\nkind = "echo"\n'
    )
    assert "3 processes" in mesh("brief", "check", str(org)).stdout
    up = _spawn_up(org, broker.url, tmp_path / "up.log")
    try:

        async def joined() -> bool:
            return {c.id for c in await mesh_client.agents()} == {"upper-1", "upper-2", "inline"}

        await wait_for(joined, what="the org's three agents")
        assert (await mesh_client.run("echo", "x")).result == "up: x"
        up.send_signal(stop)
        assert up.wait(30) == 0, (tmp_path / "up.log").read_text()
        assert "draining agents" in (tmp_path / "up.log").read_text()
        await wait_for(lambda: _no_agents(mesh_client), what="every agent to leave")
    finally:
        if up.poll() is None:
            up.kill()
        up.wait()


def _spawn_up(org: Path, server: str, log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "mesh", "up", str(org), "--server", server], stderr=log)


async def _no_agents(mesh_client: Mesh) -> bool:
    return not await mesh_client.agents()


def test_demo_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_KEYS", str(tmp_path / "keys"))  # (not ./mesh-keys in the repo)
    proc = mesh("demo", timeout=120)
    out = proc.stdout
    assert "authorization on: one key per process" in out  # secure by default
    assert (tmp_path / "keys" / "writer.nk").exists() and (tmp_path / "keys" / "demo.pub").exists()
    assert "1. a question the documentation answers" in out and "pydoc_data.topics['compound']" in out
    assert "the exception is suppressed" in out and "[1]" in out and "no model configured" in out
    assert "fact-check: approved by fact-checker" in out and "approve   -> done by fact-checker" in out
    assert (
        "the human inbox (`mesh inbox`) holds:" in out and "[human.desk]" in out and "human-demo answered task" in out
    )
    assert "failed (no_agent)" in out
    assert "stopped every agent" in out


async def test_watch_prints_events_live(
    agent_procs: AgentProcs, mesh_client: Mesh, broker: Broker, tmp_path: Path
) -> None:
    agent_procs.start("echoer", ["echo"], kind="echo")
    await agent_procs.ready(mesh_client)
    log_path = tmp_path / "watch.out"
    watcher = _spawn(["watch", "--server", broker.url], log_path)
    try:

        async def watching() -> bool:
            return any(c.name and c.name.startswith("client-") for c in await _connections(broker))

        await wait_for(watching, what="mesh watch to connect")

        # The connection comes before the consumer: watch until a probe task shows up
        # (any of them: an end is printed once checked against the verified writes, a
        # moment after its requester has seen it).
        probes: list[str] = []

        async def probe_seen() -> bool:
            probes.append((await mesh_client.run("echo", "probe")).id)
            text = log_path.read_text()
            return any(f"{probe} finish" in text for probe in probes)

        await wait_for(probe_seen, what="mesh watch to print a probe task")
        record = await mesh_client.run("echo", "watch me")

        def printed() -> bool:
            text = log_path.read_text()
            return f"{record.id} finish" in text and "-> done" in text

        await wait_for(printed, what="the finish event on mesh watch's output")
        assert f"{record.id} created" in log_path.read_text()
    finally:
        watcher.terminate()
        watcher.wait(10)


async def test_inbox_lists_and_answers_escalated_work(mesh_client: Mesh, broker: Broker) -> None:
    record = await mesh_client.submit("human.review", "Is this release good to ship?")
    listing = mesh("inbox", server=broker.url).stdout
    assert record.id in listing and "Is this release good to ship?" in listing
    items = json.loads(mesh("inbox", "--json", server=broker.url).stdout)
    assert [i["id"] for i in items] == [record.id]
    out = mesh("inbox", "--as", "human-bob", "answer", record.id, "yes, ship it", server=broker.url).stdout
    assert "done" in out
    final = await mesh_client.wait(record)
    assert final.result == "yes, ship it" and final.author == "human-bob"
    assert mesh("inbox", server=broker.url).stdout.startswith("nothing waits")


async def test_submit_wait_answers_a_question_from_the_terminal(
    agent_procs: AgentProcs, mesh_client: Mesh, broker: Broker
) -> None:
    agent_procs.start("asker", ["ambiguous"], kind="mesh.faults:Asker", options={"question": "Which file?"})
    await agent_procs.ready(mesh_client)
    proc = await anyio.run_process(
        [sys.executable, "-m", "mesh", "submit", "ambiguous", "open it", "--wait", "--server", broker.url],
        input=b"notes.txt\n",
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert "Which file?" in proc.stderr.decode()
    assert proc.stdout.decode().strip() == "open it -> using your answer: notes.txt"


def _spawn(args: list[str], out: Path) -> subprocess.Popen[bytes]:
    with open(out, "wb") as f:
        return subprocess.Popen([sys.executable, "-m", "mesh", *args], stdout=f, stderr=subprocess.DEVNULL)


async def _connections(broker: Broker) -> list[Any]:
    import urllib.request
    from types import SimpleNamespace

    def fetch() -> list[Any]:
        with urllib.request.urlopen(f"{broker.monitor_url}/connz", timeout=2) as resp:
            data = json.loads(resp.read())
        return [SimpleNamespace(name=c.get("name")) for c in data.get("connections", [])]

    return await anyio.to_thread.run_sync(fetch)


def test_mesh_bench_org_runs_a_quick_sweep_and_prints_measured_beside_arithmetic() -> None:
    out = mesh("bench", "org", timeout=120).stdout
    assert "accuracy (arithmetic)" in out
    # every quick cell, one row each: the policies and the correlated cell
    rows = [line for line in out.splitlines() if line.startswith(("targets", "rho"))]
    assert [r.split("  ")[0] for r in rows] == ["targets", "targets", "targets", "rho"], out
    assert any("k=1, r=2" in r for r in rows), out
