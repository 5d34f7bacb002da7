"""Raw writes for tests that play a buggy party: bytes put into the tasks bucket as they
are. (A test helper, not runtime: only mesh/bus.py speaks nats-py in the runtime.)"""

from __future__ import annotations

import nats.js.errors

from mesh.client import Mesh
from protocol import digest


async def put_raw(mesh: Mesh, key: str, value: bytes) -> int:
    """Write ``value`` at ``key`` of the tasks bucket as it is, over whatever is there:
    what a buggy party writes. With identities it is signed with ``mesh``'s key over the
    current value, so readers meet a corrupt record of a party's, not a forgery (which
    tests/test_signed.py covers). Returns the write's revision."""
    try:
        current: bytes | None = (await mesh.bus.tasks.get(key)).value or b""
    except nats.js.errors.KeyNotFoundError:
        current = None
    prev = "" if current is None else digest(current)
    headers = mesh.bus.trust.headers(key, prev, value)
    ack = await mesh.bus.js.publish(f"$KV.{mesh.names.tasks_bucket}.{key}", value, headers=headers or None)
    return int(ack.seq)
