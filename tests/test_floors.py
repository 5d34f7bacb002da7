"""The floors hold (docs/ARCHITECTURE.md): protocol <- mesh <- agents. The runtime finds
kinds through the entry-point group ``agent_mesh.kinds`` (a real distribution on
sys.path here, with its own dist-info), never imports agents/ or pytest by itself, and
agents/ has no import cycle."""

from __future__ import annotations

import ast
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from mesh.agent import Agent, AgentConfig
from mesh.briefs import Brief
from mesh.broker import Broker
from mesh.client import Mesh
from mesh.kinds import KindError, kind_conflicts, kinds, make_worker
from mesh.work import TaskContext
from protocol import AddChild

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    """Top-level and nested imports of one module, as absolute dotted names."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            out.add(module)
            # `from . import x` imports the submodule x
            out |= {f"{module}.{alias.name}" for alias in node.names if not node.module}
    return out


def _modules(floor: str) -> dict[str, Path]:
    return {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for p in (ROOT / floor).rglob("*.py")
    }


@pytest.mark.parametrize(("floor", "above"), [("protocol", ("mesh", "agents")), ("mesh", ("agents",))])
def test_a_floor_imports_nothing_above_it(floor: str, above: tuple[str, ...]) -> None:
    found = {
        f"{name} imports {imported}"
        for name, path in _modules(floor).items()
        for imported in _imports(path)
        if imported.split(".")[0] in above
    }
    assert not found


def test_agents_has_no_import_cycle() -> None:
    modules = _modules("agents")
    graph = {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, "import cycle: " + " -> ".join((*path[path.index(name) :], name))
        if name not in done:
            for imported in sorted(graph[name]):
                visit(imported, (*path, name))
            done.add(name)

    for name in sorted(graph):
        visit(name, ())


def test_the_runtime_imports_neither_pytest_nor_agents() -> None:
    code = (
        "import sys\nimport mesh, mesh.testing, mesh.kinds, mesh.cli.commands\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'pytest', '_pytest', 'agents'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_roles_of_agents_are_published_kinds() -> None:
    found = kinds()
    for name in ("llm", "critic", "retrieve", "writer", "a2a"):
        assert found[name].origin.startswith("agent-mesh "), found[name].origin
        assert f"agent_mesh.kinds {name} = agents." in found[name].origin
    assert found["echo"].origin == "mesh"


# --- a kind published by a distribution of its own -----------------------------------------


def _distribution(site: Path, entry_points: str, module: str = "") -> str:
    """Install a tiny distribution into ``site`` the way pip lays one out: its module
    and a dist-info with METADATA and entry_points.txt. Returns its unique name."""
    name = f"meshkind_{secrets.token_hex(4)}"
    (site / f"{name}.py").write_text(module)
    info = site / f"{name}-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text("[agent_mesh.kinds]\n" + entry_points.format(name=name))
    return name


SHOUT = '''
class Shout:
    """Says the instruction loudly. Nothing more."""

    def __init__(self, brief):
        self.brief = brief

    async def work(self, task):
        return task.instruction.upper()
'''


def _cli(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "mesh", *args], capture_output=True, text=True, env=env, timeout=60)


def test_a_published_kind_is_found_and_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _distribution(tmp_path, "shout = {name}:Shout\n", SHOUT)
    monkeypatch.syspath_prepend(str(tmp_path))
    kind = kinds()["shout"]
    assert kind.origin == f"{name} 1.2: agent_mesh.kinds shout = {name}:Shout"
    assert kind.summary() == "Says the instruction loudly."
    worker = make_worker(Brief(name="a", serves=("x",), kind="shout"))
    assert type(worker).__name__ == "Shout" and type(worker).__module__ == name

    listed = _cli(tmp_path, "kinds")
    assert listed.returncode == 0, listed.stderr
    assert "shout    Says the instruction loudly." in listed.stdout
    assert f"from {name} 1.2: agent_mesh.kinds shout = {name}:Shout" in listed.stdout
    assert "llm " in listed.stdout and "echo " in listed.stdout


def test_a_broken_entry_point_is_one_line_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _distribution(tmp_path, "broken = {name}_missing.module:Nope\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(KindError) as caught:
        make_worker(Brief(name="a", serves=("x",), kind="broken"))
    message = str(caught.value)
    assert "\n" not in message
    assert f"brief 'a': kind 'broken' ({name} 1.2: agent_mesh.kinds broken = {name}_missing.module:Nope)" in message
    assert "ModuleNotFoundError" in message

    listed = _cli(tmp_path, "kinds")
    assert listed.returncode == 2
    assert listed.stderr.count("\n") == 1 and "Traceback" not in listed.stderr
    assert listed.stderr.startswith("mesh kinds: error: kind 'broken'") and name in listed.stderr
    assert "echo " in listed.stdout  # the others are still listed


def test_a_published_kind_cannot_replace_a_built_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _distribution(tmp_path, "echo = {name}:Shout\n", SHOUT)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert kinds()["echo"].origin == "mesh"
    assert type(make_worker(Brief(name="a", serves=("x",), kind="echo"))).__name__ == "Echo"
    assert [line for line in kind_conflicts() if name in line] == [
        f"kind 'echo' ({name} 1.2: agent_mesh.kinds echo = {name}:Shout) is ignored: 'echo' is a built-in kind"
    ]


def test_an_unknown_demo_is_one_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "mesh", "demo", "nope"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == "mesh demo: error: no demo 'nope' in the entry-point group agent_mesh.demo (research-desk)\n"


# --- what agents/ needs from TaskContext -----------------------------------------------------


async def test_a_worker_reads_its_children_through_the_task_context(broker: Broker, mesh_client: Mesh) -> None:
    """``TaskContext.children()`` (what the LLM agent shows its model after a failover):
    the records of the work delegated so far; a child that cannot be read is left out."""

    class Echo:
        async def work(self, task: TaskContext) -> Any:
            return task.instruction

    class Delegator:
        async def work(self, task: TaskContext) -> Any:
            first = await task.delegate("echo", "one")
            await task.write(AddChild(actor=task.agent, epoch=task.epoch, child="never-created"))
            second = await task.delegate("echo", "two")
            return [(c.id == first.id or c.id == second.id, c.state, c.result) for c in await task.children()]

    boss = Agent(AgentConfig(id="boss", serves=("boss",), delegates=("echo",)), Delegator(), server=broker.url)
    echo = Agent(AgentConfig(id="echo-1", serves=("echo",)), Echo(), server=broker.url)
    async with anyio.create_task_group() as tg:
        for agent in (boss, echo):
            await tg.start(agent.run)
        record = await mesh_client.run("boss", "x")
        for agent in (boss, echo):
            agent.drain()
            await agent.stopped()
    assert record.state == "done", record.error
    assert record.result == [[True, "done", "one"], [True, "done", "two"]]
    assert len(record.children) == 3


def test_only_the_bus_speaks_nats_py() -> None:
    """mesh/bus.py is the one edge to nats-py (docs/ARCHITECTURE.md): no other module of
    the runtime or the roles imports it, builds a JetStream or KV subject, or reaches
    through a bus to its connection. The CLI's one exception imports nats-py early,
    without its websocket transport, and speaks nothing. mesh.auth names JetStream and
    KV subjects in the broker's permission config (it writes a file; it sends nothing)."""
    exempt = {"mesh.bus": "everything", "mesh.cli.commands": {"nats.aio.client"}}
    config_writers = {"mesh.auth"}
    found = []
    for name, path in {**_modules("mesh"), **_modules("agents")}.items():
        allowed = exempt.get(name, set())
        if allowed == "everything":
            continue
        nats = {m for m in _imports(path) if m.split(".")[0] == "nats"} - set(allowed)
        if nats:
            found.append(f"{name} imports {sorted(nats)}")
        text = path.read_text()
        needles = (".nc.", ".js.") if name in config_writers else ("$JS.", "$KV.", ".nc.", ".js.")
        found += [f"{name} has {needle!r}" for needle in needles if needle in text]
    assert not found
