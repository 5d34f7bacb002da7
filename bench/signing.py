"""Where the time of signed record writes goes (PROTOCOL.md 6.23), per write, in-process:
signing, checking a signature, the digest, decoding, ``check_write``, stamping, and a
reader's ``Trust.admit`` of a new revision against one it has verified before (a lookup).
Medians of 5 runs of ``n`` calls on a ~2 KB record (a 1 KB result).

    python -m bench.signing
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import nkeys

from mesh.trust import Trust
from protocol import (
    Claim,
    Finish,
    apply,
    check_write,
    decode_record,
    digest,
    encode,
    new_task,
    sign,
    signature_of,
    signing_key,
    stamp,
    verify,
)

NAME = "signing"


def _ms(call: Callable[[], Any], n: int) -> float:
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            call()
        runs.append((time.perf_counter() - start) / n * 1e3)
    return statistics.median(runs)


def main(quick: bool = False) -> dict[str, Any]:
    n = 200 if quick else 2000
    key = signing_key(nkeys.encode_seed(bytes([2]) * 32, nkeys.PREFIX_BYTE_USER))
    r0 = stamp(
        None, new_task(task_id="T1", capability="echo", instruction="x" * 200, requester="c", now=1.0), key.public_key
    )
    r1 = stamp(r0, apply(r0, Claim(actor="a", ticket=1), 2.0), key.public_key)
    r2 = stamp(r1, apply(r1, Finish(actor="a", epoch=1, result="y" * 1000), 3.0), key.public_key)
    v1, v2 = encode(r1), encode(r2)
    headers = sign(key, "task.T1", digest(v1), v2)
    signature = signature_of(headers)
    assert signature is not None

    def admit_new() -> None:
        trust = Trust(key)
        trust.wrote("T1", 1, v1, r1)
        trust.admit("T1", "task.T1", 2, v2, headers)

    seen = Trust(key)
    seen.wrote("T1", 1, v1, r1)
    seen.admit("T1", "task.T1", 2, v2, headers)
    return {
        "record_bytes": len(v2),
        "ms_per_call": {
            "sign": _ms(lambda: sign(key, "task.T1", digest(v1), v2), n),
            "verify_signature": _ms(lambda: verify(signature, "task.T1", v2), n),
            "digest": _ms(lambda: digest(v2), n),
            "decode_record": _ms(lambda: decode_record(v2), n),
            "check_write": _ms(lambda: check_write(r1, r2, key.public_key), n),
            "stamp": _ms(lambda: stamp(r1, r2, key.public_key), n),
            "admit_new_revision": _ms(admit_new, n // 2),
            "admit_revision_seen_before": _ms(lambda: seen.admit("T1", "task.T1", 2, v2, headers), n),
        },
    }


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=1))
