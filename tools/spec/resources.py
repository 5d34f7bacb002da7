"""The JetStream resources and write headers (``protocol/vectors/resources.json``).

Code, not case data: every value here is derived from protocol.names, the protocol's
limits and the reference runtime's default settings (``mesh/settings.py``); there is no
input to list. tests/test_resources.py compares them with a real broker's account.
"""

from __future__ import annotations

from typing import Any

from mesh.defaults import STREAM_MAX_CONSUMERS
from mesh.settings import Settings
from protocol.limits import HEADER_ROOM_BYTES, MAX_CARD_AGE_S, MAX_CARD_BYTES, MAX_RECORD_BYTES
from protocol.names import MAJOR_VERSION, PRIORITY_GROUP, VERSION_HEADER, Names
from protocol.rules import traceparent

__all__ = ["NS", "RESOURCES_HOW", "ns", "resource_vectors"]

NS = 1_000_000_000


def ns(seconds: float) -> int:
    return int(seconds * NS)


def resource_vectors() -> dict[str, Any]:
    """The JetStream resources of a mesh with the default prefix and the reference
    runtime's default settings, as the JetStream API reports them (``$JS.API.STREAM.INFO``
    and ``$JS.API.CONSUMER.INFO`` ``config``; durations in nanoseconds)."""
    names = Names()
    settings = Settings()
    capability = "summarize.medical"
    streams = [
        {
            "name": f"KV_{names.tasks_bucket}",
            "what": "the tasks bucket",
            "must": {
                "subjects": [f"$KV.{names.tasks_bucket}.>"],
                "retention": "limits",
                "max_msgs_per_subject": 1,
                "discard": "new",
                "allow_direct": True,
                "allow_rollup_hdrs": False,
                "deny_delete": True,
                "allow_msg_ttl": True,
                "max_msg_size": MAX_RECORD_BYTES + HEADER_ROOM_BYTES,
                "republish": {"src": f"$KV.{names.tasks_bucket}.>", "dest": names.records_subjects},
            },
            "default": {
                "storage": settings.storage,
                "num_replicas": settings.replicas,
                "max_age": 0,
                "max_consumers": STREAM_MAX_CONSUMERS,
            },
        },
        {
            "name": f"KV_{names.agents_bucket}",
            "what": "the directory bucket",
            "must": {
                "subjects": [f"$KV.{names.agents_bucket}.>"],
                "retention": "limits",
                "max_msgs_per_subject": 1,
                "discard": "new",
                "allow_rollup_hdrs": False,
                "deny_delete": True,
                "allow_msg_ttl": True,
                "max_msg_size": MAX_CARD_BYTES + HEADER_ROOM_BYTES,
                "max_age": ns(MAX_CARD_AGE_S),
            },
            "default": {
                "storage": settings.storage,
                "num_replicas": settings.replicas,
                "max_consumers": STREAM_MAX_CONSUMERS,
            },
        },
        {
            "name": names.events_stream,
            "what": "the events stream (trace and archive)",
            "must": {
                "subjects": list(names.events_subjects),
                "retention": "limits",
                "allow_direct": True,
                "duplicate_window": ns(120),
            },
            "default": {
                "storage": settings.storage,
                "num_replicas": settings.replicas,
                "max_consumers": STREAM_MAX_CONSUMERS,
                "max_age": ns(settings.retention_s),
                "max_bytes": settings.retention_bytes,
            },
        },
        {
            "name": names.archive_stream,
            "what": "the archive (the broker's copy of every accepted write of the tasks bucket)",
            "must": {
                "sources": [{"name": f"KV_{names.tasks_bucket}"}],
                "retention": "limits",
                "allow_direct": True,
            },
            "default": {
                "storage": settings.storage,
                "num_replicas": settings.replicas,
                "max_consumers": STREAM_MAX_CONSUMERS,
                "max_age": ns(settings.retention_s),
                "max_bytes": settings.retention_bytes,
            },
        },
        {
            "name": names.work_stream,
            "what": "the work stream (every queue's items)",
            "must": {
                "subjects": [names.work_subjects],
                "retention": "workqueue",
                "allow_direct": True,
                "duplicate_window": ns(120),
            },
            "default": {
                "storage": settings.storage,
                "num_replicas": settings.replicas,
                "max_consumers": STREAM_MAX_CONSUMERS,
                "max_age": ns(settings.retention_s),
            },
        },
    ]
    queue = {
        "stream": names.work_stream,
        "capability": capability,
        "must": {
            "durable_name": names.queue_consumer(capability),
            "filter_subject": names.work_subject(capability),
            "ack_policy": "explicit",
            "max_deliver": -1,
            "priority_groups": [PRIORITY_GROUP],
            "priority_policy": "prioritized",
        },
        "default": {
            "ack_wait": ns(settings.lease_s),
            "max_waiting": 4096,
            "inactive_threshold": ns(settings.queue_idle_s),
        },
    }
    ttl = str(int(settings.finished_ttl_s))
    task = f"$KV.{names.tasks_bucket}.{names.task_key('T1')}"
    headers = [
        {
            "what": "a record write that leaves the task live (compare-and-set on revision 4)",
            "subject": task,
            "headers": {"Nats-Expected-Last-Subject-Sequence": "4"},
        },
        {
            "what": "a record write that ends the task: it carries the finished-record TTL (whole seconds)",
            "subject": task,
            "headers": {"Nats-Expected-Last-Subject-Sequence": "4", "Nats-TTL": ttl},
            "default": {"Nats-TTL": ttl},
        },
        {
            "what": "a card put: its TTL is a few heartbeats (three of 2 s here)",
            "subject": f"$KV.{names.agents_bucket}.{names.agent_key('agent-a')}",
            "headers": {"Nats-TTL": "6"},
            "default": {"Nats-TTL": "6"},
        },
        {
            "what": "a card removal (an agent leaving): a delete marker that expires in a minute",
            "subject": f"$KV.{names.agents_bucket}.{names.agent_key('agent-a')}",
            "headers": {"KV-Operation": "DEL", "Nats-TTL": "60"},
        },
        {
            "what": "a work item (with the task's trace, when it is a valid traceparent)",
            "subject": names.work_subject(capability),
            "headers": {
                VERSION_HEADER: str(MAJOR_VERSION),
                "Nats-Msg-Id": "T1:0:work:0:<record_tag>",
                "traceparent": traceparent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"),
            },
        },
        {
            "what": "a task event (with the task's trace, when it is a valid traceparent)",
            "subject": names.event_subject("T1", "T1", "claim"),
            "headers": {
                VERSION_HEADER: str(MAJOR_VERSION),
                "Nats-Msg-Id": "T1:1:claim:<record_tag>",
                "traceparent": traceparent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"),
            },
        },
        {
            "what": "an error report",
            "subject": names.error_subject("agent-a"),
            "headers": {VERSION_HEADER: str(MAJOR_VERSION)},
        },
    ]
    return {"streams": streams, "queue": queue, "headers": headers}


#: How to read resources.json (docs/PROTOCOL.md section 6.20 has the rules).
RESOURCES_HOW: dict[str, str] = {
    "streams": "Each JetStream stream a mesh (prefix `mesh`) uses, by `name`: a party that creates it MUST give it "
    "every setting in `must`, and the values in `default` unless its operator chose others; a party that finds it "
    "MAY compare the `config` of `$JS.API.STREAM.INFO.<name>` with `must`. Durations are nanoseconds, sizes bytes; "
    "a bucket is the stream `KV_<bucket>`.",
    "queue": "The durable pull consumer that is a capability's queue, as `$JS.API.CONSUMER.INFO` reports its "
    "`config`: `must` for every queue (its names derived from the capability as in names.json), `default` the "
    "reference runtime's choice (`ack_wait` is the lease).",
    "headers": "The headers each kind of write carries, exactly: KV writes carry no `Mesh-Version` (their value's "
    "`v` says the version); stream publishes and error reports do. Values under `default` are the reference "
    "runtime's settings, not rules. `<record_tag>` in a `Nats-Msg-Id` stands for the tag of the record the message "
    "carries or announces (rules.json `work_items` shows whole ids; PROTOCOL.md 6.17).",
}
