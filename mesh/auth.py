"""The broker's half of the mesh's security: a nats-server authorization config built
from a directory of public keys (:mod:`mesh.identity`), one nkey user per key with the
publish and subscribe permissions of its role.

NATS permissions are subject allow/deny lists, so they can bind what a subject names:
an agent may write only the directory key, error subject and control subject of its
own id (its key's name), take work only from the queues of the capabilities its key is
bound to (``serves`` in its ``.pub``), and nobody but the server publishes the records'
republish subjects. They cannot see into a message: who owns a task, who may vote on
it. docs/SECURITY.md has the table, and what stays open.

The config is an ``authorization { users = [...] }`` block: production servers
``include`` it (``mesh auth config DIR --out FILE``); ``mesh broker --auth DIR`` runs the
embedded broker with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from protocol import MAJOR_VERSION, Names

from .identity import ANY_CAPABILITY, PublicKey, Role, inbox_prefix, list_keys

__all__ = ["Permissions", "permissions", "auth_config", "write_auth_config"]

#: a nats-server user's permissions: {"publish": {"allow": [...], "deny": [...]}, ...}
Permissions = dict[str, Any]


def _streams(names: Names) -> dict[str, str]:
    return {
        "tasks": f"KV_{names.tasks_bucket}",
        "agents": f"KV_{names.agents_bucket}",
        "events": names.events_stream,
        "work": names.work_stream,
        "archive": names.archive_stream,
    }


def _shared_publish(names: Names, name: str) -> list[str]:
    """What agents and clients both publish: task records and what a write announces
    (work items, events), their own error reports, and the JetStream API calls of a
    party that reads records, the directory and the history."""
    s = _streams(names)
    base = f"{names.prefix}.v{MAJOR_VERSION}"
    api = "$JS.API"
    readable = (s["tasks"], s["agents"], s["events"])
    out = [
        # A task's record: its parties compare-and-set it. Which party may make which
        # write is per task (owner, epoch, requester): not a subject, so not here.
        f"$KV.{names.tasks_bucket}.task.*",
        f"{base}.work.>",
        f"{base}.evt.>",
        names.error_subject(name),
        f"{api}.INFO",
        # which stream holds a subject (nats-py asks before subscribing to a stream)
        f"{api}.STREAM.NAMES",
    ]
    for stream in s.values():
        # Whoever comes first creates the mesh's resources (idempotent: an existing
        # stream of another config is refused); nobody but an operator changes them.
        out += [f"{api}.STREAM.INFO.{stream}", f"{api}.STREAM.CREATE.{stream}"]
    for stream in (s["tasks"], s["events"], s["work"], s["archive"]):
        out += [f"{api}.DIRECT.GET.{stream}", f"{api}.DIRECT.GET.{stream}.>"]
    out += [f"{api}.STREAM.MSG.GET.{s['agents']}", f"{api}.STREAM.MSG.GET.{s['tasks']}"]
    for stream in readable:
        # Readers (`mesh trace`, `mesh top`, the directory, event followers) use
        # consumers of their own, without acks; ordered ones reply to flow control.
        out += [
            f"{api}.CONSUMER.CREATE.{stream}",
            f"{api}.CONSUMER.CREATE.{stream}.>",
            f"{api}.CONSUMER.INFO.{stream}.*",
            f"{api}.CONSUMER.DELETE.{stream}.*",
            f"{api}.CONSUMER.MSG.NEXT.{stream}.*",
        ]
    out += [f"$JS.FC.{stream}.>" for stream in readable]
    work = s["work"]
    out += [
        # Whoever puts an item on a capability's queue makes sure the queue exists.
        f"{api}.CONSUMER.CREATE.{work}.*.{base}.work.>",
        f"{api}.CONSUMER.INFO.{work}.*",
        f"{api}.CONSUMER.LIST.{work}",
    ]
    return out


def _shared_subscribe(names: Names, name: str) -> list[str]:
    return [
        f"{inbox_prefix(name)}.>",
        # A task's parties follow its record here (any party may read any record).
        names.records_subjects,
    ]


def _queue_subjects(names: Names, serves: tuple[str, ...] | None) -> list[str]:
    """Pulling and settling work, on the queues of the capabilities an agent's key is
    bound to (a queue is a consumer named by its capability: one subject token)."""
    work = names.work_stream
    if serves is None or ANY_CAPABILITY in serves:
        consumers = ["*"]
    else:
        consumers = [names.queue_consumer(capability) for capability in serves]
    out = []
    for consumer in consumers:
        out += [f"$JS.API.CONSUMER.MSG.NEXT.{work}.{consumer}", f"$JS.ACK.{work}.{consumer}.>"]
    return out


def permissions(
    role: Role, name: str, names: Names | None = None, serves: tuple[str, ...] | None = None
) -> Permissions:
    """The permissions of a key named ``name`` with ``role`` on the mesh ``names``,
    bound to the capabilities ``serves`` (see :class:`mesh.identity.PublicKey`)."""
    names = names or Names()
    if role == "operator":
        # Everything, but nobody, not even an operator, speaks for the server: a
        # forged republished write would be taken as the bucket's.
        return {"publish": {"allow": [">"], "deny": [names.records_subjects]}, "subscribe": {"allow": [">"]}}
    work = names.work_stream
    publish = _shared_publish(names, name)
    subscribe = _shared_subscribe(names, name)
    # Everything outside the allow lists is refused already; these denies say the
    # rules that matter out loud, and hold even if an allow above grows too wide.
    deny_publish = [
        # Only the server republishes accepted record writes: a forged one here would
        # be taken as the bucket's by every follower (mesh/follow.py).
        names.records_subjects,
        "$JS.API.STREAM.UPDATE.>",
        "$JS.API.STREAM.DELETE.>",
        "$JS.API.STREAM.PURGE.>",
        f"$JS.API.CONSUMER.DELETE.{work}.>",
        # Other parties' inboxes: a reply goes out through allow_responses, to a
        # request this key received, never to an inbox it picked.
        "_INBOX.>",
    ]
    deny_subscribe: list[str] = []
    if role == "agent":
        control = names.control_subject(name)
        publish += [
            f"$KV.{names.agents_bucket}.{names.agent_key(name)}",  # its own card: put, heartbeat, removal
            control,  # asking its own id whether a live namesake answers (one id, one process)
        ]
        # Pulling work, settling and renewing what it holds: on its bound queues only.
        publish += _queue_subjects(names, serves)
        # Items leave a queue by their holder's ack; nobody else removes one (an
        # agent that could would drop any queue's waiting work).
        deny_publish.append(f"$JS.API.STREAM.MSG.DELETE.{work}")
        subscribe += [
            control,
            f"$JS.EVENT.ADVISORY.CONSUMER.CREATED.{work}.*",
            # The services API (`nats micro ls`): its listing subjects are shared by
            # every instance, and an instance's id is random, so not bindable to a key.
            "$SRV.PING",
            "$SRV.INFO",
            "$SRV.STATS",
            f"$SRV.*.{names.service_name}",
            f"$SRV.*.{names.service_name}.*",
        ]
    else:  # a client asks for work and reads; it is no agent and controls none
        control_all = f"{names.prefix}.v{MAJOR_VERSION}.ctl.>"
        deny_publish += [f"$KV.{names.agents_bucket}.>", control_all, f"$JS.ACK.{work}.>"]
        deny_subscribe += [control_all]
        if serves is None or serves:
            # A person answering from the inbox holds no item: once the task is
            # answered it takes the item off the queue by its sequence. The subject
            # cannot name the item, so only keys bound to some capability (a person's)
            # may; a requester's (bound to none) may not.
            publish.append(f"$JS.API.STREAM.MSG.DELETE.{work}")
        else:
            deny_publish.append(f"$JS.API.STREAM.MSG.DELETE.{work}")
    perms: Permissions = {"publish": {"allow": publish, "deny": deny_publish}, "subscribe": {"allow": subscribe}}
    if role == "agent":
        # Answering a request it received (a control request, a services API ping):
        # one reply each, within a minute, to the requester's inbox. A client answers
        # nothing (a question to it is a task, answered by a record write).
        perms["allow_responses"] = {"max": 1, "expires": "1m"}
    if deny_subscribe:
        perms["subscribe"]["deny"] = deny_subscribe
    return perms


def auth_config(keys: list[PublicKey], names: Names | None = None) -> str:
    """A nats-server config fragment: one nkey user per key, with its role's permissions."""
    names = names or Names()
    users = []
    for key in keys:
        user = {"nkey": key.public_key, "permissions": permissions(key.role, key.name, names, key.serves)}
        bound = "" if key.serves is None or key.role == "operator" else f", serves {', '.join(key.serves) or 'nothing'}"
        users.append(f"    # {key.name} ({key.role}{bound})\n    " + json.dumps(user, indent=2).replace("\n", "\n    "))
    header = (
        f"# agent-mesh authorization for mesh {names.prefix!r}: written by `mesh auth config` from "
        f"{len(keys)} public keys.\n# Include it in a nats-server config (`include auth.conf`); reload the server "
        "(nats-server --signal reload) after adding keys.\n"
    )
    return header + "authorization {\n  users = [\n" + ",\n".join(users) + "\n  ]\n}\n"


def write_auth_config(keys_dir: Path | str, out: Path | str, names: Names | None = None) -> int:
    """Write the config of the keys in ``keys_dir`` to ``out``; returns how many users."""
    keys = list_keys(keys_dir)
    text = auth_config(keys, names)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(out)  # a server reloading meanwhile reads the old file or the new, whole
    return len(keys)
