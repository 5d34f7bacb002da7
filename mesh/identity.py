"""Identities: ed25519 keys in NATS's own format (nkeys), one per agent, client or
operator, and the files that hold them.

A key is two files in a keys directory: ``NAME.nk``, the seed (the secret: mode 0600,
the format ``nats --nkey`` reads too), and ``NAME.pub``, its public side (name, role,
public key as JSON) that the broker's auth config is built from (:mod:`mesh.auth`).
The key's name is its holder's id in the mesh: the broker lets an agent write only the
card, error subject and control subject of its key's name, so ids are bound to keys.

Errors a user can fix are :class:`IdentityError`, one line naming the file and what to
do (the CLI shows them as they are).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec

from protocol import ANY_CAPABILITY, InvalidName, validate_agent_id, validate_capability

__all__ = [
    "ROLES",
    "Role",
    "IdentityError",
    "PublicKey",
    "Identity",
    "ANY_CAPABILITY",
    "may_serve",
    "bind_key",
    "default_keys_dir",
    "new_key",
    "load_seed",
    "list_keys",
    "ensure_keys",
    "connect_options",
    "default_id",
    "inbox_prefix",
    "refused_message",
]

Role = Literal["agent", "client", "operator"]
#: who may do what is per role (docs/SECURITY.md): an agent works, a client asks for
#: work, an operator may do everything (drain agents, change retention)
ROLES: tuple[Role, ...] = ("agent", "client", "operator")
SEED_SUFFIX = ".nk"
PUB_SUFFIX = ".pub"


class IdentityError(ValueError):
    """A key file that cannot be used (missing, unreadable, too open, not a seed), a
    key name or role that is not valid, or an id that is not the key's."""


class PublicKey(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The public side of a key: what ``NAME.pub`` holds, and the auth config reads."""

    name: str
    role: Role
    public_key: str
    #: The capabilities the key is bound to, which the broker enforces: an agent may
    #: take work only from these capabilities' queues; a client (a person answering
    #: from the inbox) may clear the waiting items of tasks it answered, which a
    #: requester's key (``()``) may not. ``"*"``: any. None: a key made before
    #: bindings, treated as ``"*"``.
    serves: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Identity:
    """A loaded seed: the secret, and who it is."""

    name: str
    #: None when the seed has no ``.pub`` beside it (a seed copied alone)
    role: Role | None
    public_key: str
    seed: str
    path: Path
    #: the key's binding, from its ``.pub`` (None: unknown or unbound; see PublicKey)
    serves: tuple[str, ...] | None = None

    def check_id(self, mesh_id: str) -> None:
        """Refuse to act under an id that is not this key's name: the broker would
        refuse the writes anyway, one by one, and the process would look broken. An
        operator's key may act under any id (its permissions allow everything)."""
        if mesh_id != self.name and self.role != "operator":
            who = {"client": "a client", None: "a party"}.get(self.role, "an agent")
            raise IdentityError(
                f"id {mesh_id!r} is not the name of the key {self.path} ({self.name!r}): with a key, "
                f"{who} runs under its key's name; drop --id, or use the key named {mesh_id!r}"
            )


def default_keys_dir() -> Path:
    """Where keys live unless a command is told: ``$MESH_KEYS``, else ``./mesh-keys``."""
    return Path(os.environ.get("MESH_KEYS") or "mesh-keys")


def _valid_name(name: str) -> str:
    try:
        return validate_agent_id(name)
    except InvalidName as exc:
        raise IdentityError(f"invalid key name: {exc}") from None


def _valid_role(role: str) -> Role:
    if role not in ROLES:
        raise IdentityError(f"invalid role {role!r}: expected one of {', '.join(ROLES)}")
    return role


def may_serve(serves: tuple[str, ...] | None, capability: str) -> bool:
    """Whether a key bound to ``serves`` may take work from ``capability``'s queue."""
    return serves is None or ANY_CAPABILITY in serves or capability in serves


def _valid_serves(serves: Iterable[str]) -> tuple[str, ...]:
    out = []
    for capability in serves:
        if capability != ANY_CAPABILITY:
            try:
                validate_capability(capability)
            except InvalidName as exc:
                raise IdentityError(f"cannot bind a key to {capability!r}: {exc}") from None
        if capability not in out:
            out.append(capability)
    return tuple(out)


def _default_serves(role: Role) -> tuple[str, ...] | None:
    # An agent's key made by hand pulls from any queue until bound (`mesh keys bind`);
    # a client's is a requester's: it clears no queue's items.
    return {"agent": (ANY_CAPABILITY,), "client": ()}.get(role)


def new_key(directory: Path | str, name: str, role: str, *, serves: Iterable[str] | None = None) -> PublicKey:
    """Make a new user key ``name``: write its seed (mode 0600, never over an existing
    file) and its public side into ``directory`` (created 0700 if missing). ``serves``
    binds it to capabilities (see :class:`PublicKey`); the default binds an agent's key
    to any queue and a client's to none."""
    import nkeys

    _valid_name(name)
    role = _valid_role(role)
    bound = _valid_serves(serves) if serves is not None else _default_serves(role)
    directory = Path(directory)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise IdentityError(f"cannot create the keys directory {directory}: {exc.strerror or exc}") from None
    seed_path, pub_path = directory / f"{name}{SEED_SUFFIX}", directory / f"{name}{PUB_SUFFIX}"
    for path in (seed_path, pub_path):
        if path.exists() or path.is_symlink():
            raise IdentityError(f"{path} exists: a key is never overwritten (remove it first, or pick another name)")
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    try:
        # O_EXCL: a file that appeared since the check above is not overwritten either;
        # the mode is set at creation, so the secret is never readable by others.
        fd = os.open(seed_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(seed + b"\n")
        key = PublicKey(name=name, role=role, public_key=public, serves=None if role == "operator" else bound)
        with open(pub_path, "xb") as f:
            f.write(msgspec.json.format(msgspec.json.encode(key)) + b"\n")
    except OSError as exc:
        raise IdentityError(f"cannot write the key {seed_path}: {exc.strerror or exc}") from None
    return key


def load_seed(path: Path | str) -> Identity:
    """Read and check a seed file: it must exist, be readable by us only, and hold a
    user seed. Its name is the file's stem; its role comes from the ``.pub`` beside it."""
    import nkeys

    path = Path(path)
    fix = f"make one with `mesh keys new NAME --role agent|client|operator` (seed files are NAME{SEED_SUFFIX})"
    try:
        info = path.stat()
    except FileNotFoundError:
        raise IdentityError(f"seed file {path} does not exist; {fix}") from None
    except OSError as exc:
        raise IdentityError(f"seed file {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise IdentityError(f"seed file {path} is not a regular file; {fix}")
    if os.name == "posix" and info.st_mode & 0o077:
        raise IdentityError(
            f"seed file {path} is readable by others (mode {stat.S_IMODE(info.st_mode):04o}): "
            f"anyone who reads it can act as its key; run `chmod 600 {path}`"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IdentityError(f"cannot read seed file {path}: {exc.strerror or exc}") from None
    seed = data.strip()
    if not _is_user_seed(seed):
        raise IdentityError(f"seed file {path} does not hold a NATS user seed (a line starting 'SU'); {fix}")
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    name = _valid_name(path.name.removesuffix(SEED_SUFFIX))
    role: Role | None = None
    serves: tuple[str, ...] | None = None
    pub_path = path.with_name(f"{name}{PUB_SUFFIX}")
    if pub_path.exists():
        pub = _read_pub(pub_path)
        if pub.public_key != public:
            raise IdentityError(f"{pub_path} is not the public side of {path} (the keys differ); remove the stray file")
        role, serves = pub.role, pub.serves
    return Identity(name=name, role=role, public_key=public, seed=seed.decode(), path=path, serves=serves)


def _is_user_seed(seed: bytes) -> bool:
    """A well-formed user seed: base32 of a seed prefix, 32 bytes and a valid CRC."""
    import base64
    import binascii

    import nkeys

    if not seed.startswith(b"SU") or len(seed) != 58:
        return False
    try:
        raw = base64.b32decode(seed + b"=" * (-len(seed) % 8))
    except (binascii.Error, ValueError):
        return False
    body, crc = raw[:-2], int.from_bytes(raw[-2:], "little")
    if crc != nkeys.crc16(bytearray(body)):
        return False
    with contextlib.suppress(nkeys.NkeysError):
        prefix, _ = nkeys.decode_seed(bytearray(seed))
        return bool(prefix == nkeys.PREFIX_BYTE_USER)
    return False


def _read_pub(path: Path) -> PublicKey:
    try:
        key = msgspec.json.decode(path.read_bytes(), type=PublicKey)
    except OSError as exc:
        raise IdentityError(f"cannot read {path}: {exc.strerror or exc}") from None
    except msgspec.DecodeError as exc:
        raise IdentityError(f"{path} is not a public key file ({exc}); write keys with `mesh keys new`") from None
    if path.name != f"{key.name}{PUB_SUFFIX}":
        raise IdentityError(f"{path} names the key {key.name!r}: the file must be {key.name}{PUB_SUFFIX}")
    _valid_name(key.name)
    if key.serves is not None:
        _valid_serves(key.serves)
    if not (key.public_key.startswith("U") and len(key.public_key) == 56):
        raise IdentityError(f"{path}: {key.public_key!r} is not a NATS user public key (56 characters from 'U')")
    return key


def list_keys(directory: Path | str) -> list[PublicKey]:
    """The public keys in ``directory`` (its ``*.pub`` files), by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise IdentityError(f"keys directory {directory} does not exist; make keys with `mesh keys new NAME --dir DIR`")
    keys = [_read_pub(p) for p in sorted(directory.glob(f"*{PUB_SUFFIX}"))]
    seen: dict[str, str] = {}
    for key in keys:
        if key.public_key in seen:
            raise IdentityError(
                f"{directory}: keys {seen[key.public_key]!r} and {key.name!r} are the same key; remove one"
            )
        seen[key.public_key] = key.name
    return keys


def bind_key(directory: Path | str, name: str, serves: Iterable[str]) -> PublicKey:
    """Bind the key ``name`` to ``serves`` (rewrites its ``.pub``; the broker enforces
    it once its auth config is rewritten and reloaded)."""
    pub_path = Path(directory) / f"{_valid_name(name)}{PUB_SUFFIX}"
    if not pub_path.exists():
        raise IdentityError(f"{pub_path} does not exist; make the key with `mesh keys new {name} --role ROLE`")
    key = msgspec.structs.replace(_read_pub(pub_path), serves=_valid_serves(serves))
    if key.role == "operator":
        raise IdentityError(f"{pub_path} is an operator's key: it may do everything, and binds to nothing")
    tmp = pub_path.with_name(pub_path.name + ".tmp")
    try:
        tmp.write_bytes(msgspec.json.format(msgspec.json.encode(key)) + b"\n")
        tmp.replace(pub_path)
    except OSError as exc:
        raise IdentityError(f"cannot write {pub_path}: {exc.strerror or exc}") from None
    return key


def ensure_keys(
    directory: Path | str, wanted: dict[str, str], serves: dict[str, tuple[str, ...]] | None = None
) -> dict[str, Path]:
    """Make the keys in ``wanted`` (name -> role) that ``directory`` lacks; return each
    one's seed path. An existing key is reused as it is (its role must match); a key
    named in ``serves`` is bound to those capabilities (an existing one rebound if its
    binding differs: an org whose briefs changed)."""
    directory = Path(directory)
    serves = serves or {}
    out = {}
    for name, role in wanted.items():
        seed_path = directory / f"{name}{SEED_SUFFIX}"
        pub_path = directory / f"{name}{PUB_SUFFIX}"
        bound = serves.get(name)
        if seed_path.exists() and pub_path.exists():
            have = _read_pub(pub_path)
            if have.role != role:
                raise IdentityError(f"{pub_path} is a key of role {have.role!r}, not {role!r}; remove it or rename")
            if bound is not None and have.serves != _valid_serves(bound):
                bind_key(directory, name, bound)
        else:
            new_key(directory, name, role, serves=bound)
        out[name] = seed_path
    return out


def default_id(nkey: str | Path | None) -> str | None:
    """The id a process connecting with ``nkey`` acts under unless told: its key's name,
    but for an operator's key (an operator may act under any id, so it is no agent's
    identity: an agent or client it runs gets the id it would get without a key)."""
    if nkey is None:
        return None
    identity = load_seed(nkey)
    return None if identity.role == "operator" else identity.name


def inbox_prefix(name: str) -> str:
    """The inbox prefix of a key's connections: ``_INBOX.<name>``. The broker lets a key
    subscribe only under its own, so nobody reads another party's replies (JetStream
    acks, control answers) or learns their inboxes to forge them."""
    return f"_INBOX.{name}"


def connect_options(nkey: str | Path | None, mesh_id: str) -> dict[str, Any]:
    """nats-py ``connect`` options for a connection acting as ``mesh_id``: none without
    a key; with one, its seed (the server checks a signature of its nonce) and its inbox
    prefix. An id that is not the key's name is refused here (:meth:`Identity.check_id`)."""
    if nkey is None:
        return {}
    identity = load_seed(nkey)
    identity.check_id(mesh_id)
    return {"nkeys_seed_str": identity.seed, "inbox_prefix": inbox_prefix(identity.name)}


def refused_message(url: str, nkey: str | Path | None) -> str:
    """What to say when a broker refuses a connection's credentials."""
    if nkey is None:
        return (
            f"the broker at {url} requires a key: pass --nkey FILE or set MESH_NKEY "
            "(make one with `mesh keys new NAME --role ROLE`; its .pub must be in the broker's auth config)"
        )
    return (
        f"the broker at {url} refused the key {nkey}: it is not in the broker's auth config; add its .pub to the "
        "keys directory, rewrite the config (`mesh auth config DIR`) and reload the broker"
    )
