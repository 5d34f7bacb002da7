"""The broker resources the reference runtime makes, and the headers of its writes, are
what protocol/vectors/resources.json (and so docs/PROTOCOL.md 6.20) tells a peer: a real
broker's own account of its streams and queues is compared with the vectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import nats

from mesh.broker import Broker
from mesh.client import Mesh
from mesh.settings import Settings
from mesh.testing import nats_options
from protocol import MSG_ID_DIGEST_CHARS, decode_event, decode_work_item, record_tag, work_item_id

VECTORS = json.loads((Path(__file__).parent.parent / "protocol/vectors/resources.json").read_text(encoding="utf-8"))


def _subset(config: dict[str, Any], want: dict[str, Any], what: str) -> None:
    for key, value in want.items():
        assert config.get(key) == value, f"{what}: {key} is {config.get(key)!r}, the vectors say {value!r}"


async def _info(nc: nats.NATS, subject: str) -> dict[str, Any]:
    reply = json.loads((await nc.request(subject, b"", timeout=5)).data)
    assert "error" not in reply, reply
    config: dict[str, Any] = reply["config"]
    return config


async def test_streams_and_queues_are_as_the_vectors_say(broker: Broker, mesh_client: Mesh) -> None:
    await mesh_client.bus.ensure_queue(VECTORS["queue"]["capability"])
    defaults = Settings.from_env() == Settings()  # an environment's own settings change the defaults
    nc = await nats.connect(broker.url, **nats_options())
    try:
        for stream in VECTORS["streams"]:
            config = await _info(nc, f"$JS.API.STREAM.INFO.{stream['name']}")
            _subset(config, stream["must"], stream["name"])
            if defaults:
                _subset(config, stream["default"], stream["name"])
        queue = VECTORS["queue"]
        config = await _info(nc, f"$JS.API.CONSUMER.INFO.{queue['stream']}.{queue['must']['durable_name']}")
        _subset(config, queue["must"], "queue")
        if defaults:
            _subset(config, queue["default"], "queue")
    finally:
        await nc.close()


async def test_writes_carry_the_headers_the_vectors_say(broker: Broker, mesh_client: Mesh) -> None:
    """A task created and cancelled: its work item, its events and its ending record
    write, seen on the wire; KV writes carry no Mesh-Version."""
    want = {case["what"].split(" (")[0].split(":")[0]: case["headers"] for case in VECTORS["headers"]}
    nc = await nats.connect(broker.url, **nats_options())
    try:
        kv = await nc.subscribe("$KV.mesh-v2-tasks.>")
        work = await nc.subscribe("mesh.v2.work.>")
        events = await nc.subscribe("mesh.v2.evt.>")
        cards = await nc.subscribe("$KV.mesh-v2-agents.>")
        await nc.flush()
        record = await mesh_client.submit("summarize.medical", "x", claim_timeout_s=60)
        await mesh_client.cancel(record.id)
        item = await work.next_msg(timeout=5)
        write = await kv.next_msg(timeout=5)
        told = [await events.next_msg(timeout=5) for _ in range(2)]  # created, cancel
        await mesh_client.bus.remove_card("agent-a")
        removal = await cards.next_msg(timeout=5)
    finally:
        await nc.close()
    ending = want["a record write that ends the task"]
    assert dict(removal.headers or {}) == want["a card removal"]
    headers = dict(write.headers or {})
    signed = {h: headers.pop(h) for h in ("Mesh-Signer", "Mesh-Prev", "Mesh-Sig") if h in headers}
    assert headers == {**ending, "Nats-Expected-Last-Subject-Sequence": "0"}
    # With identities the write is signed too (PROTOCOL.md 6.23), over the key's first value.
    assert len(signed) == (3 if mesh_client.bus.trust.signed else 0), signed
    assert set(item.headers or {}) == set(want["a work item"])
    assert (item.headers or {})["Mesh-Version"] == "2"
    print(item.data.decode())
    assert (item.headers or {})["Nats-Msg-Id"] == work_item_id(decode_work_item(item.data))
    for event in told:
        assert set(event.headers or {}) == set(want["a task event"])
        announced = decode_event(event.data)
        tag = (event.headers or {})["Nats-Msg-Id"].rsplit(":", 1)[1]
        assert len(tag) == MSG_ID_DIGEST_CHARS and (announced.record is None or tag == record_tag(announced.record))


async def test_more_than_a_thousand_capabilities_each_get_a_queue(broker: Broker, mesh_client: Mesh) -> None:
    """nats-server 2.15 caps a stream that sets no `max_consumers` at 1,000 consumers:
    the mesh's streams set their own, so the 1,001st capability in use gets its queue."""
    with anyio.fail_after(120):
        for n in range(1001):
            await mesh_client.bus.ensure_queue(f"cap{n}")
    assert len(await mesh_client.bus.queues()) == 1001
