"""Signed record writes (protocol/signing.py, PROTOCOL.md 6.23): the published vectors
hold when checked the way another language would (PyNaCl and hashlib directly, from
the vector's bytes alone); tampering with any byte of a signed write fails it; and
check_write gives each vector's verdict."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import msgspec
import nacl.exceptions
import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from proto_strategies import capabilities, cards, records

from protocol import (
    SIG_HEADER,
    TERMINAL_STATES,
    Forged,
    TaskRecord,
    check_alone,
    check_write,
    digest,
    end_unreadable,
    held_card,
    may_take,
    parties,
    sign,
    signature_of,
    signed_payload,
    signing_key,
    stamp_unreadable_end,
    verify,
)

VECTORS = json.loads((Path(__file__).parents[2] / "protocol" / "vectors" / "signing.json").read_text())
KEY = signing_key(VECTORS["keys"][0]["seed"])


def _nkey_public_bytes(public_key: str) -> bytes:
    """An nkey public key decoded by hand: base32, prefix byte, 32 key bytes, CRC-16."""
    raw = base64.b32decode(public_key + "=" * (-len(public_key) % 8))
    assert raw[0] == 20 << 3  # 'U': a user key
    return raw[1:33]


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.mark.parametrize("key", VECTORS["keys"], ids=lambda k: k["name"])
def test_key_vectors_derive_from_their_seed_bytes(key: dict[str, Any]) -> None:
    made = nacl.signing.SigningKey(bytes.fromhex(key["seed_hex"]))
    assert bytes(made.verify_key) == _nkey_public_bytes(key["public_key"])
    assert signing_key(key["seed"]).public_key == key["public_key"]


@pytest.mark.parametrize("case", VECTORS["signatures"], ids=lambda c: c["name"])
def test_signature_vectors_verify_from_their_bytes_alone(case: dict[str, Any]) -> None:
    value = base64.b64decode(case["value_b64"])
    over = base64.b64decode(case["over_b64"])
    headers = case["headers"]
    prev = base64.urlsafe_b64encode(hashlib.sha256(over).digest()).rstrip(b"=").decode() if over else ""
    assert headers["Mesh-Prev"] == prev == case["prev"]
    payload = b"mesh.v2.rec\n" + case["key"].encode() + b"\n" + prev.encode() + b"\n" + value
    assert payload == base64.b64decode(case["payload_b64"])
    verify_key = nacl.signing.VerifyKey(_nkey_public_bytes(headers["Mesh-Signer"]))
    verify_key.verify(payload, _unb64url(headers["Mesh-Sig"]))  # raises if not
    for refused in case["refused"]:
        signature = signature_of(refused["headers"]) if SIG_HEADER in refused["headers"] else None
        if signature is None:
            continue  # a missing header: nothing to verify, refused as unsigned
        with pytest.raises(nacl.exceptions.BadSignatureError if len(_unb64url(signature.sig)) == 64 else ValueError):
            try:
                sig = _unb64url(signature.sig)
            except Exception:
                raise ValueError("not base64url") from None
            if len(sig) != 64:
                raise ValueError("not 64 bytes")
            moved = base64.b64decode(refused["value_b64"])
            signed = b"mesh.v2.rec\n" + case["key"].encode() + b"\n" + signature.prev.encode() + b"\n" + moved
            nacl.signing.VerifyKey(_nkey_public_bytes(signature.signer)).verify(signed, sig)


@pytest.mark.parametrize("case", VECTORS["writes"], ids=lambda c: c["name"])
def test_write_vectors(case: dict[str, Any]) -> None:
    prev = msgspec.convert(case["prev"], TaskRecord)
    new = msgspec.convert(case["new"], TaskRecord)
    operators = frozenset(VECTORS["operators"])
    bound = {k: tuple(v) for k, v in VECTORS["bound"].items()}
    if case["expect"] == "ok":
        check_write(prev, new, case["signer"], operators=operators, bound=bound, stored_at=case["stored_at"])
    else:
        with pytest.raises(Forged) as refused:
            check_write(prev, new, case["signer"], operators=operators, bound=bound, stored_at=case["stored_at"])
        assert refused.value.why == case["expect"]["refused"]


@settings(max_examples=300, deadline=None)
@given(value=st.binary(min_size=1, max_size=300), prev=st.binary(max_size=40), data=st.data())
def test_tampering_with_any_byte_fails_verification(value: bytes, prev: bytes, data: st.DataObject) -> None:
    """Flip any bit of the value, of Mesh-Prev or of the signature: refused as Forged."""
    key = "task.T1"
    prev_digest = digest(prev) if prev else ""
    headers = sign(KEY, key, prev_digest, value)
    signature = signature_of(headers)
    assert signature is not None
    verify(signature, key, value)
    target = data.draw(st.sampled_from(["value", "prev", "sig", "key"]))
    if target == "value":
        i = data.draw(st.integers(0, len(value) - 1))
        value = value[:i] + bytes([value[i] ^ (1 << data.draw(st.integers(0, 7)))]) + value[i + 1 :]
    elif target == "prev":
        signature = msgspec.structs.replace(signature, prev=digest(prev + b"x"))
    elif target == "key":
        key = "task.T2"
    else:
        raw = bytearray(_unb64url(signature.sig))
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= 1 << data.draw(st.integers(0, 7))
        signature = msgspec.structs.replace(signature, sig=base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode())
    with pytest.raises(Forged):
        verify(signature, key, value)


@settings(max_examples=300, deadline=None)
@given(
    headers=st.dictionaries(st.sampled_from(["Mesh-Signer", "Mesh-Prev", "Mesh-Sig", "Other"]), st.text(max_size=120))
)
def test_any_garbled_signature_headers_are_forged_never_a_crash(headers: dict[str, str]) -> None:
    """The h11 fuzz rule for signatures: any headers either verify or raise Forged."""
    try:
        signature = signature_of(headers)
        if signature is not None:
            verify(signature, "task.T1", b"{}")
    except Forged:
        return
    assert signature is None


def test_signed_payload_is_the_documented_concatenation() -> None:
    assert signed_payload("task.T1", "abc", b"{}") == b"mesh.v2.rec\ntask.T1\nabc\n{}"


@given(records())
def test_an_unreadable_records_end_names_its_writer_so_it_checks_alone(copy: TaskRecord) -> None:
    """The holder of a work item that met an unreadable record ends the task from the
    item's copy; named as its owner when the copy does not name its key, its end is
    never refused for want of a party (only a copy inconsistent in itself is), and an
    end by a key the copy names is left as it is."""
    ended = end_unreadable(copy, why="unreadable", now=copy.updated + 1)
    stamped = stamp_unreadable_end(copy, ended, "holder", KEY.public_key)
    if copy.state in TERMINAL_STATES or KEY.public_key in parties(ended):
        assert stamped == ended
        return
    assert (stamped.owner, stamped.owner_key) == ("holder", KEY.public_key)
    try:
        check_alone(stamped, KEY.public_key)
    except Forged as exc:
        assert "not a party" not in exc.why, exc


@given(
    card=cards, bound_to=st.none() | st.lists(capabilities | st.just("*"), max_size=3).map(tuple), known=st.booleans()
)
def test_a_card_serves_only_what_its_key_is_bound_to(card: Any, bound_to: Any, known: bool) -> None:
    """A reader takes a card's capabilities as far as the key of its id is bound to them,
    and the key it knows for the id as the card's; a card of a name it knows no key of
    is taken as written."""
    key = KEY.public_key if known else None
    bound = {} if bound_to is None else {KEY.public_key: bound_to}
    held = held_card(card, key, bound)
    if key is None:
        assert held == card
        return
    assert held.public_key == key
    assert set(held.serves) <= set(card.serves)
    assert all(may_take(bound, key, c) for c in held.serves)
    assert [c for c in card.serves if may_take(bound, key, c)] == list(held.serves)
    assert msgspec.structs.replace(held, serves=card.serves, public_key=card.public_key) == card
