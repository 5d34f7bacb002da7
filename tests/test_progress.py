"""Progress where work is long, in its piped form, through real processes: `mesh
submit --wait` writes a plain status line per change (state, owner, progress note,
elapsed) and `mesh up` says each agent as it comes up."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import anyio

from mesh.broker import Broker
from mesh.client import Mesh
from mesh.testing import AgentProcs, wait_for, write_brief

STATUS = re.compile(r"^\s*(\d+\.\d)s  (\w+)\s*(.*)$")


async def test_submit_wait_writes_a_status_line_per_change_when_piped(
    agent_procs: AgentProcs, mesh_client: Mesh, broker: Broker
) -> None:
    agent_procs.start("sleeper", ["nap"], kind="sleep", options={"seconds": 1.5, "steps": 3})
    await agent_procs.ready(mesh_client)
    proc = await anyio.run_process(
        [sys.executable, "-m", "mesh", "submit", "nap", "rest a while", "--wait", "--server", broker.url], check=False
    )
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert '"slept": 1.5' in proc.stdout.decode()
    assert "\r" not in err and "\x1b" not in err  # plain lines, nothing rewritten in place
    lines = err.splitlines()
    assert lines[0].startswith("submitted ") and lines[0].endswith("waiting ...")
    statuses = [m.groups() for line in lines[1:] if (m := STATUS.match(line))]
    assert len(statuses) == len(lines) - 1, lines  # every other line is a status line
    states = [state for _, state, _ in statuses]
    assert states[0] in ("open", "working") and states[-1] == "done", statuses
    working = [detail for _, state, detail in statuses if state == "working"]
    assert working[-3:] == [f"owner sleeper  step {i}/3" for i in (1, 2, 3)], statuses
    assert statuses[-1][2] == "owner sleeper  step 3/3"
    elapsed = [float(e) for e, _, _ in statuses]
    assert elapsed == sorted(elapsed) and elapsed[-1] >= 1.5
    assert len(set(statuses)) == len(statuses)  # a line per change, not per look


async def test_up_says_each_agent_as_it_comes_up(broker: Broker, mesh_client: Mesh, tmp_path: Path) -> None:
    write_brief(tmp_path, "echoer", ["echo"], kind="echo")
    org = tmp_path / "org.toml"
    org.write_text('name = "pair"\n[[agents]]\nbrief = "echoer.toml"\nreplicas = 2\n')
    log = tmp_path / "up.log"
    up = _spawn_up(org, broker.url, log)
    try:
        said = await wait_for(
            lambda: "all 2 agents up in" in log.read_text() and log.read_text(), timeout=60, what="both agents up"
        )
        arrivals = [line for line in said.splitlines() if line.startswith("agent ") and " up (" in line]
        assert sorted(arrivals) == ["agent echoer-1 up (1/2)", "agent echoer-2 up (2/2)"] or sorted(arrivals) == [
            "agent echoer-1 up (2/2)",
            "agent echoer-2 up (1/2)",
        ], said
        assert {c.id for c in await mesh_client.agents()} == {"echoer-1", "echoer-2"}
    finally:
        up.terminate()
        assert await anyio.to_thread.run_sync(up.wait, 60) == 0, log.read_text()


def _spawn_up(org: Path, server: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "mesh", "up", str(org), "--server", server], stderr=out)


def test_on_a_terminal_the_line_is_rewritten_in_place() -> None:
    """The terminal form, with a stream that says it is a terminal: each update redraws
    the one line, the end leaves the final status on a line of its own, and an agent's
    progress note cannot move the cursor."""
    import io

    import msgspec

    from mesh.cli.progress import StatusLine
    from protocol import new_task

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    status = StatusLine(out)
    task = new_task(task_id="t1", capability="x", instruction="i", requester="me", now=1.0)
    status.update(task)
    working = msgspec.structs.replace(task, state="working", owner="w-1", progress="step 1\x1b[2J\nhalf")
    status.update(working)
    status.draw()  # what the ticker does: the same line, a newer elapsed time
    status.finish(msgspec.structs.replace(working, state="done"))
    text = out.getvalue()
    assert text.count("\r\x1b[2K") == 4  # three draws, and the clear before the final line
    assert "\n" not in text[:-1] and text.endswith("\n")  # one line, rewritten; the last one kept
    drawn = text.split("\r\x1b[2K")
    assert drawn[2].split()[1:] == ["working", "owner", "w-1", "step", r"1\x1b[2J\nhalf"]
    assert drawn[-1].split()[1] == "done"
