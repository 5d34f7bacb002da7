"""Protocol limits at the edges, with a real broker and real agent processes: records
and items over a limit (or of another major version) written raw are refused and
reported, and the agent keeps serving; a result over the limit fails its task cleanly;
a client and the CLI refuse a task over a limit with one clear error."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import nats
import nats.js.errors
import pytest
from raw_writes import put_raw

from mesh import OverLimit
from mesh.broker import Broker
from mesh.bus import NotFound
from mesh.client import Mesh
from mesh.testing import AgentProcs, wait_for
from protocol import (
    MAX_CARD_BYTES,
    MAX_DATA_BYTES,
    MAX_ERROR_CHARS,
    MAX_INSTRUCTION_CHARS,
    MAX_RECORD_BYTES,
    MAX_RESULT_BYTES,
    ErrorReport,
    RemoteProtocolError,
    WorkItem,
    decode_error,
    encode,
    new_task,
)


def _open(task_id: str, capability: str = "echo") -> dict[str, object]:
    record = new_task(task_id=task_id, capability=capability, instruction="x", requester="test-client", now=time.time())
    doc: dict[str, object] = msgspec.json.decode(encode(record))
    return doc


async def test_records_and_items_over_a_limit_are_refused_reported_and_never_worked(
    agent_procs: AgentProcs, mesh_client: Mesh
) -> None:
    proc = agent_procs.start("worker", ["echo"], kind="echo")
    await agent_procs.ready(mesh_client)
    sub = await mesh_client.bus.nc.subscribe("mesh.v2.err.>")
    js, kv = mesh_client.bus.js, mesh_client.bus.tasks
    queue = "mesh.v2.work.echo"

    # Records in the bucket: one of another major version, one with a result over the
    # limit. Each gets a well-formed item whose copy of the record is stale, so the
    # agent's compare-and-set fails, it reads the bucket, and must refuse what it finds.
    raw = {
        "task.v99": json.dumps({**_open("v99"), "v": 99}).encode(),
        "task.big1": json.dumps({**_open("big1"), "result": "x" * MAX_RESULT_BYTES}).encode(),
    }
    for key, value in raw.items():
        await put_raw(mesh_client, key, value)
        task = key.removeprefix("task.")
        fine = new_task(task_id=task, capability="echo", instruction="x", requester="test-client", now=time.time())
        await js.publish(queue, encode(WorkItem(task=task, capability="echo", revision=99, record=fine)))
    # A record at the limit is stored, with the headers of a compare-and-set and a TTL.
    at_limit = b"x" * MAX_RECORD_BYTES
    headers = {"Nats-Expected-Last-Subject-Sequence": "0", "Nats-TTL": "600s"}
    await js.publish(f"$KV.{mesh_client.bus.names.tasks_bucket}.task.atlimit", at_limit, headers=headers)
    await mesh_client.bus.agents.put("agent.atlimit", b"x" * MAX_CARD_BYTES)
    # Larger than a record may be: the broker itself refuses it (new buckets carry the
    # limit as their max_value_size), in the tasks bucket and the directory alike.
    for bucket, key in ((kv, "task.huge"), (mesh_client.bus.agents, "agent.huge")):
        with pytest.raises(nats.js.errors.APIError):
            await bucket.put(key, b"x" * 900_000)
    # Items that carry such records themselves: refused at the queue.
    item = msgspec.json.decode(encode(WorkItem(task="v99b", capability="echo", revision=0, record=new_task(
        task_id="v99b", capability="echo", instruction="x", requester="test-client", now=time.time()))))  # fmt: skip
    await js.publish(queue, json.dumps({**item, "v": 99}).encode())
    await js.publish(queue, json.dumps({**item, "record": {**item["record"], "data": "x" * MAX_DATA_BYTES}}).encode())

    # The agent is alive and serving.
    assert (await mesh_client.run("echo", "still here")).state == "done"
    assert proc.process.poll() is None
    # Nothing of them was trusted or worked: the agent holding each one's item ended
    # the task from the item's own copy (PROTOCOL 6.15).
    for key in raw:

        async def ended(key: str = key) -> bool:
            with contextlib.suppress(RemoteProtocolError):
                record = await mesh_client.get(key.removeprefix("task."))
                return record.state == "failed" and "unreadable" in record.error and record.result is None
            return False

        await wait_for(ended, what=f"{key} to be ended")

    reports: list[ErrorReport] = []

    async def reported() -> bool:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.05)
            except nats.errors.TimeoutError:
                break
            reports.append(decode_error(msg.data))
        keys = {r.key for r in reports}
        bad_items = [r for r in reports if r.subject == queue and "bad work item" in r.error]
        return {"task.v99", "task.big1"} <= keys and len(bad_items) >= 2

    await wait_for(reported, what="error reports for every record and item over a limit")
    errors = " ".join(r.error for r in reports)
    assert "Expected `int` <= 2 - at `$.v`" in errors  # v: 99
    assert f"result is {MAX_RESULT_BYTES + 2} bytes, over the limit of {MAX_RESULT_BYTES} bytes" in errors


async def test_a_result_over_the_limit_fails_the_task_and_the_agent_keeps_serving(
    agent_procs: AgentProcs, mesh_client: Mesh
) -> None:
    proc = agent_procs.start("big", ["echo"], kind="echo", options={"prefix": "x" * MAX_RESULT_BYTES})
    await agent_procs.ready(mesh_client)
    for _ in range(2):  # twice: the agent survives the first
        final = await mesh_client.run("echo", "hello")
        assert final.state == "failed" and final.reason == "error"
        assert final.error.startswith("result too large: result is ")
        assert final.result is None
    assert proc.process.poll() is None


async def test_a_sleep_of_1e308_seconds_fails_at_once(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    agent_procs.start("sleeper", ["sleep"], kind="sleep")
    await agent_procs.ready(mesh_client)
    final = await mesh_client.run("sleep", "forever", data={"seconds": 1e308})
    assert final.state == "failed" and final.reason == "error" and "seconds must be 0 to 86400" in final.error
    assert (await mesh_client.run("sleep", "briefly", data={"seconds": 0.01})).state == "done"


async def test_submit_over_a_limit_raises_over_limit_and_writes_nothing(mesh_client: Mesh) -> None:
    cases = [
        ({"data": "x" * MAX_DATA_BYTES}, "data"),
        ({"instruction": "i" * (MAX_INSTRUCTION_CHARS + 1)}, "instruction"),
        ({"deadline_s": float("inf")}, "deadline"),
        ({"claim_timeout_s": float("nan")}, "claim_timeout_s"),
        ({"hops": 1000}, "hops_left"),
    ]
    for kwargs, field in cases:
        instruction = str(kwargs.pop("instruction", "x"))
        with pytest.raises(OverLimit) as refused:
            await mesh_client.submit("echo", instruction, task_id="over1", **kwargs)  # type: ignore[arg-type]
        assert refused.value.field == field and str(refused.value).startswith(f"task refused: {field} is ")
    with pytest.raises(NotFound):  # nothing was written
        await mesh_client.bus.read("over1")


def test_cli_submit_over_a_limit_is_one_line_and_exit_2(broker: Broker, tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"text": "x" * MAX_DATA_BYTES}))
    env = {**os.environ, "MESH_SERVER": broker.url}
    for args in (["--data", f"@{big}"], ["--deadline", "400d"]):
        proc = subprocess.run(
            [sys.executable, "-m", "mesh", "submit", "echo", "summarize", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "over the limit" in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def test_briefs_and_settings_keep_the_duration_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mesh.briefs import BriefError, load_brief
    from mesh.settings import Settings, SettingsError

    for extra, field in (("lease_s = 1e308", "lease_s"), ("[review]\nquorum = 100", "review.quorum"),
                         ("[review]\nescalation_timeout_s = 1e9", "review.escalation_timeout_s")):  # fmt: skip
        path = tmp_path / "brief.toml"
        path.write_text(f'name = "x"\nserves = ["echo"]\nkind = "echo"\n{extra}\n')
        with pytest.raises(BriefError, match=f"field `{field}`"):
            load_brief(path)
    monkeypatch.setenv("MESH_LEASE_S", "2h")
    with pytest.raises(SettingsError, match="MESH_LEASE_S: 7200 s is over the limit of 3600 s"):
        Settings.from_env()


async def test_a_failure_message_over_the_limit_is_cut_not_lost(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    agent_procs.start("failer", ["fail"], kind="fail", options={"message": "why " * MAX_ERROR_CHARS})
    await agent_procs.ready(mesh_client)
    final = await mesh_client.run("fail", "try")
    assert final.state == "failed" and final.reason == "error"
    assert final.error.startswith("why why") and final.error.endswith(" ... (truncated)")
    assert len(final.error) <= MAX_ERROR_CHARS
