"""Reading what a stream holds while it is written faster than it is read.

`mesh trace`, `mesh top --once` and the views' first picture read a stream to its end.
A busy mesh writes its events stream and tasks bucket faster than one Python reader
reads them; a read that went on until nothing was left chased the tail and never
returned. A read now ends at the stream's last message as of its start.
"""

from __future__ import annotations

import os
import subprocess
import sys

import anyio

from mesh.broker import Broker
from mesh.client import Mesh
from mesh.testing import wait_for

#: a separate process publishing events as fast as it can (core NATS: no acks)
FLOOD = """
import sys, anyio
from mesh.client import Mesh

async def main(url):
    mesh = await Mesh.connect(url, client_id="flooder")
    subject = mesh.names.event_subject("flood", "flood", "created")
    while True:
        for _ in range(1000):
            await mesh.bus.nc.publish(subject, b"{}")
        await mesh.bus.nc.flush()

anyio.run(main, sys.argv[1])
"""


def _flooder(url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", FLOOD, url], env=dict(os.environ), stderr=subprocess.DEVNULL)


async def test_a_read_of_a_stream_written_faster_than_it_is_read_ends(mesh_client: Mesh, broker: Broker) -> None:
    stream = mesh_client.names.events_stream
    subject = mesh_client.names.events_filter("flood")
    flooder = _flooder(broker.url)
    try:

        async def held() -> int:
            return (await mesh_client.bus.js.stream_info(stream)).state.messages >= 20_000

        await wait_for(held, timeout=30, what="the flooder to fill the events stream")
        before = (await mesh_client.bus.js.stream_info(stream)).state.last_seq
        with anyio.fail_after(60):
            read = await mesh_client.bus.stored_messages(stream, subject)
        # Every message stored before the read began, in order, and not much more.
        sequences = [m.seq for m in read]
        assert sequences == sorted(sequences) and sequences[-1] >= before, (sequences[-1], before)
        assert len([s for s in sequences if s <= before]) == before, (len(sequences), before)
        assert flooder.poll() is None  # it was writing all along
        after = (await mesh_client.bus.js.stream_info(stream)).state.last_seq
        assert after > sequences[-1], "the stream did not grow while it was read: this test shows nothing"
    finally:
        flooder.kill()
        flooder.wait(10)
