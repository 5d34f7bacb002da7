"""Names: buckets, keys and subjects are built and parsed by pure functions that
round-trip, and refuse anything that is not one valid NATS token (or dotted tokens)."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from proto_strategies import agent_ids, capabilities, kinds, prefixes, task_ids

from protocol import (
    MAJOR_VERSION,
    MAX_PRIORITY,
    PRIORITY_GROUP,
    VERSION_HEADER,
    InvalidName,
    LocalProtocolError,
    Names,
    capability_tokens,
    clarification_capability,
    validate_agent_id,
    validate_capability,
    validate_task_id,
)

CAPABILITY = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}(\.[a-z0-9][a-z0-9_-]{0,63}){0,7}")
IDENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def test_default_names() -> None:
    n = Names()
    assert n.prefix == "mesh"
    assert n.tasks_bucket == "mesh-v2-tasks"
    assert n.agents_bucket == "mesh-v2-agents"
    assert n.events_stream == "mesh-v2-events"
    assert n.events_subjects == ("mesh.v2.evt.>", "mesh.v2.err.>")
    assert n.work_stream == "mesh-v2-work"
    assert n.work_subjects == "mesh.v2.work.>"
    assert n.records_subjects == "mesh.v2.rec.>"
    assert n.service_name == "mesh-agent"
    assert n.task_key("T1") == "task.T1"
    assert n.record_subject("T1") == "mesh.v2.rec.task.T1"
    assert n.work_subject("summarize.medical") == "mesh.v2.work.summarize.medical"
    assert n.queue_consumer("summarize.medical") == "summarize~medical"
    assert n.agent_key("a-1") == "agent.a-1"
    assert n.event_subject("R", "T1", "claim") == "mesh.v2.evt.R.T1.claim"
    assert n.events_filter() == "mesh.v2.evt.>"
    assert n.events_filter("R") == "mesh.v2.evt.R.>"
    assert n.task_events_filter("T1", "R") == "mesh.v2.evt.R.T1.*"
    assert n.task_events_filter("T1") == "mesh.v2.evt.*.T1.*"
    assert n.error_subject("a-1") == "mesh.v2.err.a-1"
    assert n.control_subject("a-1") == "mesh.v2.ctl.a-1"
    assert VERSION_HEADER == "Mesh-Version"
    assert MAJOR_VERSION == 2
    assert (PRIORITY_GROUP, MAX_PRIORITY) == ("mesh", 9)


def test_prefix_changes_every_name() -> None:
    n = Names("acme")
    assert n.tasks_bucket == "acme-v2-tasks"
    assert n.events_subjects == ("acme.v2.evt.>", "acme.v2.err.>")
    assert n.event_subject("R", "T", "done") == "acme.v2.evt.R.T.done"
    assert n.control_subject("x") == "acme.v2.ctl.x"
    assert n.work_stream == "acme-v2-work"
    assert n.work_subject("x.y") == "acme.v2.work.x.y"
    assert n.record_subject("T") == "acme.v2.rec.task.T"
    # A queue's name is the same in every mesh: it lives in the mesh's own work stream.
    assert n.queue_consumer("x.y") == Names().queue_consumer("x.y")


@pytest.mark.parametrize("prefix", ["", "Mesh", "1mesh", "me.sh", "me sh", "m*", "m>", "a" * 33, "mesh\n", "-x"])
def test_invalid_prefix(prefix: str) -> None:
    with pytest.raises(InvalidName, match="invalid mesh prefix"):
        Names(prefix)


@pytest.mark.parametrize("prefix", [None, 3, b"mesh"])
def test_prefix_of_wrong_type(prefix: object) -> None:
    with pytest.raises(InvalidName):
        Names(prefix)  # type: ignore[arg-type]


@given(prefixes)
def test_valid_prefixes_accepted(prefix: str) -> None:
    n = Names(prefix)
    assert n.tasks_bucket.startswith(prefix + "-v2-")


# --- round trips ------------------------------------------------------------------------


@given(prefixes, task_ids)
def test_task_key_round_trip(prefix: str, task_id: str) -> None:
    n = Names(prefix)
    assert n.parse_task_key(n.task_key(task_id)) == task_id


@given(prefixes, capabilities)
def test_work_subject_round_trip(prefix: str, capability: str) -> None:
    n = Names(prefix)
    subject = n.work_subject(capability)
    assert n.parse_work_subject(subject) == capability
    # Every queue's subject is in the work stream, and the record subjects are not.
    assert subject.startswith(n.work_subjects[:-1])
    assert not subject.startswith(n.records_subjects[:-1])


@given(prefixes, task_ids)
def test_record_subject_is_the_republished_task_key(prefix: str, task_id: str) -> None:
    n = Names(prefix)
    subject = n.record_subject(task_id)
    # RePublish maps $KV.<bucket>.<key> to <records prefix>.<key>.
    assert subject == n.records_subjects[:-1] + n.task_key(task_id)
    assert n.parse_task_key(subject[len(n.records_subjects) - 1 :]) == task_id


@given(capabilities, capabilities)
def test_queue_names_are_valid_consumer_names_and_one_to_one(a: str, b: str) -> None:
    """Consumer names may not contain dots, wildcards or spaces; a capability's queue
    name maps back to it (or, for a long one, to nothing else)."""
    for capability in (a, b):
        name = Names().queue_consumer(capability)
        assert not set(name) & set(".*> \t\r\n/\\")
        assert 0 < len(name) <= 200
        if len(capability) <= 200:
            assert name.replace("~", ".") == capability
    assert (Names().queue_consumer(a) == Names().queue_consumer(b)) == (a == b)


def test_a_long_capabilitys_queue_name_is_shortened_with_a_digest() -> None:
    long = ".".join(f"{c}{'x' * 29}" for c in "abcdefgh")
    name = Names().queue_consumer(long)
    assert len(long) > 200 and len(name) == 197
    assert name[:180] == long.replace(".", "~")[:180] and name[180] == "~"
    assert name != Names().queue_consumer(long[:-1] + "y")


@given(prefixes, task_ids, task_ids)
def test_task_events_filter_matches_the_tasks_event_subjects(prefix: str, root: str, task_id: str) -> None:
    n = Names(prefix)
    subject = n.event_subject(root, task_id, "created")
    for pattern in (n.task_events_filter(task_id, root), n.task_events_filter(task_id)):
        tokens, wanted = subject.split("."), pattern.split(".")
        assert len(tokens) == len(wanted)
        assert all(w in ("*", t) for w, t in zip(wanted, tokens, strict=True))


@given(prefixes, agent_ids)
def test_agent_key_round_trip(prefix: str, agent_id: str) -> None:
    n = Names(prefix)
    assert n.parse_agent_key(n.agent_key(agent_id)) == agent_id


@given(prefixes, task_ids, task_ids, kinds)
def test_event_subject_round_trip(prefix: str, root: str, task_id: str, kind: str) -> None:
    n = Names(prefix)
    subject = n.event_subject(root, task_id, kind)
    assert n.parse_event_subject(subject) == (root, task_id, kind)
    assert subject.startswith(n.events_filter(root)[:-1])
    assert subject.startswith(n.events_filter()[:-1])


@given(prefixes, agent_ids)
def test_error_and_control_subjects(prefix: str, agent_id: str) -> None:
    n = Names(prefix)
    assert n.error_subject(agent_id).split(".") == [prefix, "v2", "err", agent_id]
    assert n.control_subject(agent_id).split(".") == [prefix, "v2", "ctl", agent_id]


@given(capabilities)
def test_capability_tokens(capability: str) -> None:
    assert ".".join(capability_tokens(capability)) == capability
    assert 1 <= len(capability_tokens(capability)) <= 8


@given(agent_ids)
def test_clarification_capability(agent_id: str) -> None:
    cap = clarification_capability(agent_id)
    assert cap == f"agent.{agent_id.lower()}"
    assert validate_capability(cap) == cap


# --- refusals -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "capability",
    [
        "",
        ".",
        "a.",
        ".a",
        "a..b",
        "Summarize",
        "sum marize",
        "sum*",
        "sum.>",
        "-x",
        "_x",
        "a\n",
        "summarize\n",
        "x" * 65,
        ".".join(["a"] * 9),
        "é",
    ],
)
def test_invalid_capability(capability: str) -> None:
    with pytest.raises(InvalidName, match="invalid capability") as info:
        validate_capability(capability)
    assert repr(capability) in str(info.value)
    assert "summarize.medical" in str(info.value)  # the message shows a valid example


@pytest.mark.parametrize("agent_id", ["", "a.b", "a b", "a*", ">", "-a", "x" * 65, "a\n", "ü"])
def test_invalid_agent_id(agent_id: str) -> None:
    with pytest.raises(InvalidName, match="invalid agent id") as info:
        validate_agent_id(agent_id)
    assert "no dots" in str(info.value)


@pytest.mark.parametrize("task_id", ["", "a.b", "a b", "a*", ">", "_a", "x" * 65, "a\n"])
def test_invalid_task_id(task_id: str) -> None:
    with pytest.raises(InvalidName, match="invalid task id"):
        validate_task_id(task_id)


@pytest.mark.parametrize("value", [None, 1, b"a", ("a",)])
def test_non_strings_are_invalid_names(value: object) -> None:
    for validate in (validate_capability, validate_agent_id, validate_task_id):
        with pytest.raises(InvalidName):
            validate(value)  # type: ignore[arg-type]


def test_invalid_name_is_local_and_value_error() -> None:
    assert issubclass(InvalidName, LocalProtocolError)
    assert issubclass(InvalidName, ValueError)


@given(st.text(max_size=80))
@example("summarize\n")
@example("a.b.c.d.e.f.g.h")
def test_capability_validation_matches_the_grammar(text: str) -> None:
    if CAPABILITY.fullmatch(text):
        assert validate_capability(text) == text
    else:
        with pytest.raises(InvalidName):
            validate_capability(text)


@given(st.text(max_size=80))
@example("abc\n")
def test_id_validation_matches_the_grammar(text: str) -> None:
    for validate in (validate_agent_id, validate_task_id):
        if IDENT.fullmatch(text):
            assert validate(text) == text
        else:
            with pytest.raises(InvalidName):
                validate(text)


@pytest.mark.parametrize(
    ("method", "key"),
    [
        ("parse_task_key", "agent.T"),
        ("parse_task_key", "task"),
        ("parse_task_key", "task."),
        ("parse_task_key", "task.a.b"),
        ("parse_task_key", "tasks.a"),
        ("parse_agent_key", "task.a"),
        ("parse_agent_key", "agent.a.b"),
        ("parse_agent_key", "agent."),
        ("parse_work_subject", "mesh.v2.work."),
        ("parse_work_subject", "mesh.v2.work.A"),
        ("parse_work_subject", "mesh.v2.work.a.>"),
        ("parse_work_subject", "mesh.v1.work.a"),
        ("parse_work_subject", "other.v2.work.a"),
        ("parse_work_subject", "mesh.v2.rec.task.a"),
        ("parse_event_subject", "mesh.v2.evt.R.T"),
        ("parse_event_subject", "mesh.v1.evt.R.T.claim"),
        ("parse_event_subject", "other.v2.evt.R.T.claim"),
        ("parse_event_subject", "mesh.v2.err.R.T.claim"),
        ("parse_event_subject", "mesh.v2.evt.R.T.claim.x"),
        ("parse_event_subject", "mesh.v2.evt.R.T.*"),
        ("parse_event_subject", "mesh.v2.evt.R.T.Claim"),
        ("parse_event_subject", "mesh.v2.evt.R..claim"),
    ],
)
def test_parse_refuses_foreign_names(method: str, key: str) -> None:
    with pytest.raises(InvalidName):
        getattr(Names(), method)(key)


@pytest.mark.parametrize("kind", ["", "a.b", "*", ">", "Claim", "x y", "1st", "a" * 33])
def test_event_subject_refuses_bad_kinds(kind: str) -> None:
    with pytest.raises(InvalidName, match="invalid event kind"):
        Names().event_subject("R", "T", kind)


def test_builders_validate_their_arguments() -> None:
    n = Names()
    with pytest.raises(InvalidName):
        n.task_key("a.b")
    with pytest.raises(InvalidName):
        n.work_subject("Bad")
    with pytest.raises(InvalidName):
        n.queue_consumer("a.>")
    with pytest.raises(InvalidName):
        n.record_subject("a.b")
    with pytest.raises(InvalidName):
        n.task_events_filter("T", "a.b")
    with pytest.raises(InvalidName):
        n.agent_key("a.b")
    with pytest.raises(InvalidName):
        n.error_subject("*")
    with pytest.raises(InvalidName):
        n.control_subject(">")
    with pytest.raises(InvalidName):
        n.events_filter("a.b")


@given(prefixes, task_ids, capabilities)
def test_names_never_contain_wildcards_or_spaces(prefix: str, task_id: str, capability: str) -> None:
    n = Names(prefix)
    for name in (
        n.task_key(task_id),
        n.record_subject(task_id),
        n.work_subject(capability),
        n.event_subject(task_id, task_id, "claim"),
    ):
        assert not set(name) & set("*> \t\r\n")
        assert all(name.split("."))
