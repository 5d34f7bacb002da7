"""Signing vectors (``protocol/vectors/signing.json``): exact bytes, digests and ed25519
signatures a peer in another language can check, and who may make which write
(``protocol.signing.check_write``). Cases are data in ``tools/cases/signing.toml``."""

from __future__ import annotations

import base64
from typing import Any

import msgspec
import nkeys

from protocol.codec import encode
from protocol.names import Names
from protocol.signing import (
    SIG_HEADER,
    Forged,
    SigningKey,
    check_write,
    digest,
    sign,
    signature_of,
    signed_payload,
    signing_key,
    stamp,
    verify,
)
from protocol.types import TaskRecord

from .cases import T0, BadCase, Cases, keys, wire

__all__ = ["SIGNING_HOW", "signing_vectors"]

SIGNING_HOW = (
    "`keys`: each party's nkey seed and public key (the seed's 32 bytes are `seed_hex`). `signatures`: the "
    "value is the exact stored bytes (base64 `value_b64`); Mesh-Prev is the base64url (unpadded) SHA-256 of "
    "the replaced value (`over_b64`; empty for a key's first write); the signed payload is "
    "`mesh.v2.rec\\n` + key + `\\n` + Mesh-Prev + `\\n` + value (`payload_b64`); `headers` must verify, and "
    "every entry of `refused` must not. `writes`: check_write(prev, new, signer, operators, bound) must accept "
    "(`expect` is `ok`) or refuse with a reason starting with `expect` (the text is informative); `bound` "
    "maps a key to the capabilities it is bound to serve (`*`: any; a key not listed is not held); `stored_at` "
    "is when the broker stored the write (its Nats-Time-Stamp, Unix seconds)."
)


def _key(seeds: dict[str, SigningKey], name: str) -> SigningKey:
    if name not in seeds:
        raise BadCase(f"no key {name!r} in [keys]")
    return seeds[name]


def _carry(prev: TaskRecord | None, record: TaskRecord) -> TaskRecord:
    """``record`` with the keys ``prev`` recorded (world.toml's records have none)."""
    if prev is None:
        return record
    votes = {(v.reviewer, v.round, v.verdict): v.key for v in (*prev.votes, *prev.feedback)}
    slots = {(s.reviewer, s.ticket): s.key for s in prev.slots}
    return msgspec.structs.replace(
        record,
        requester_key=prev.requester_key,
        owner_key=prev.owner_key,
        author_key=prev.author_key,
        votes=tuple(msgspec.structs.replace(v, key=votes.get((v.reviewer, v.round, v.verdict))) for v in record.votes),
        feedback=tuple(
            msgspec.structs.replace(v, key=votes.get((v.reviewer, v.round, v.verdict))) for v in record.feedback
        ),
        slots=tuple(msgspec.structs.replace(s, key=slots.get((s.reviewer, s.ticket))) for s in record.slots),
    )


def _chain(cases: Cases, seeds: dict[str, SigningKey], chain: list[Any]) -> list[tuple[TaskRecord, SigningKey]]:
    out: list[tuple[TaskRecord, SigningKey]] = []
    prev: TaskRecord | None = None
    for step in chain:
        if not (isinstance(step, list) and len(step) == 2):
            raise BadCase(f"a chain step is [record, signer], not {step!r}")
        signer = _key(seeds, step[1])
        record = stamp(prev, _carry(prev, cases.record(step[0])), signer.public_key)
        out.append((record, signer))
        prev = record
    return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _refusals(key: str, prev: str, value: bytes, headers: dict[str, str]) -> list[dict[str, Any]]:
    sig = headers[SIG_HEADER]
    changed = {
        "one byte of the value changed": (value[:-1] + bytes([value[-1] ^ 1]), headers),
        "Mesh-Prev changed": (value, {**headers, "Mesh-Prev": digest(b"another value")}),
        "the signature truncated": (value, {**headers, SIG_HEADER: sig[:-4]}),
        "one character of the signature changed": (
            value,
            {**headers, SIG_HEADER: sig[:5] + ("A" if sig[5] != "A" else "B") + sig[6:]},
        ),
        "another key named as signer": (value, {**headers, "Mesh-Signer": signing_key(_seed(99)).public_key}),
        "Mesh-Sig missing": (value, {k: v for k, v in headers.items() if k != SIG_HEADER}),
    }
    out = []
    for what, (v, h) in changed.items():
        try:
            signature = signature_of(h)
            assert signature is not None
            verify(signature, key, v)
        except Forged as exc:
            out.append({"what": what, "value_b64": _b64(v), "headers": h, "why": exc.why})
            continue
        raise AssertionError(f"{what}: verified")  # pragma: no cover
    return out


def _seed(byte: int) -> bytes:
    return bytes(nkeys.encode_seed(bytes([byte]) * 32, nkeys.PREFIX_BYTE_USER))


def signing_vectors(cases: Cases) -> dict[str, Any]:
    """signing.toml."""
    source = cases.file("signing")
    names = Names()
    seeds: dict[str, SigningKey] = {}
    key_vectors = []
    for name, byte in source.table("keys").items():
        if not isinstance(byte, int) or not 0 <= byte <= 255:
            raise BadCase(f"key {name}: a byte 0-255, not {byte!r}")
        seed = _seed(byte)
        seeds[name] = signing_key(seed)
        key_vectors.append(
            {
                "name": name,
                "seed_hex": (bytes([byte]) * 32).hex(),
                "seed": seed.decode(),
                "public_key": seeds[name].public_key,
            }
        )
    operators = frozenset(_key(seeds, n).public_key for n in source.array("operators"))
    bound = {_key(seeds, n).public_key: tuple(caps) for n, caps in source.table("bound").items()}

    def signature(case: dict[str, Any]) -> dict[str, Any]:
        keys(case, ("name", "signer", "record", "over"))
        signer = _key(seeds, case["signer"])
        over = cases.record(case["over"]) if case["over"] else None
        record = stamp(over, _carry(over, cases.record(case["record"])), signer.public_key)
        value = encode(record)
        over_bytes = encode(over) if over is not None else b""
        prev = digest(over_bytes) if over is not None else ""
        key = names.task_key(record.id)
        headers = sign(signer, key, prev, value)
        return {
            "name": case["name"],
            "key": key,
            "signer": case["signer"],
            "over_b64": _b64(over_bytes),
            "value_b64": _b64(value),
            "prev": prev,
            "payload_b64": _b64(signed_payload(key, prev, value)),
            "headers": headers,
            "refused": _refusals(key, prev, value, headers),
        }

    def write(case: dict[str, Any]) -> dict[str, Any]:
        keys(case, ("name", "chain", "expect"), ("set", "stamp", "stored_at"))
        steps = _chain(cases, seeds, case["chain"])
        if len(steps) < 2:
            raise BadCase("a chain of two writes at least: the last is checked over the one before")
        prev = steps[-2][0]
        new, signer = steps[-1]
        if case.get("stamp", True) is False:
            new = _carry(prev, cases.record(case["chain"][-1][0]))
        changes = {
            k: (_key(seeds, v[4:]).public_key if isinstance(v, str) and v.startswith("key:") else v)
            for k, v in case.get("set", {}).items()
        }
        if changes:
            new = msgspec.convert({**msgspec.to_builtins(new), **changes}, TaskRecord)
        stored_at = T0 + float(case["stored_at"]) if "stored_at" in case else new.updated
        try:
            check_write(prev, new, signer.public_key, operators=operators, bound=bound, stored_at=stored_at)
            got = "ok"
        except Forged as exc:
            got = exc.why
        if not got.startswith(case["expect"]):
            raise BadCase(f"expected {case['expect']!r}, check_write says {got!r}")
        return {
            "name": case["name"],
            "prev": wire(prev),
            "new": wire(new),
            "signer": signer.public_key,
            "stored_at": stored_at,
            "expect": "ok" if got == "ok" else {"refused": got},
        }

    return {
        "keys": key_vectors,
        "operators": sorted(operators),
        "bound": {k: list(v) for k, v in sorted(bound.items())},
        "signatures": source.each("signature", signature),
        "writes": source.each("write", write),
    }
