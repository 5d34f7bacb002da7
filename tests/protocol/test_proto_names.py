"""Names: buckets, keys and subjects are built and parsed by pure functions that
round-trip, and refuse anything that is not one valid NATS token (or dotted tokens)."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from proto_strategies import agent_ids, capabilities, kinds, prefixes, task_ids

from protocol import (
    BOARD_WATCH_SLOTS,
    MAJOR_VERSION,
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
    assert n.tasks_bucket == "mesh-v1-tasks"
    assert n.agents_bucket == "mesh-v1-agents"
    assert n.events_stream == "mesh-v1-events"
    assert n.events_subjects == ("mesh.v1.evt.>", "mesh.v1.err.>")
    assert n.service_name == "mesh-agent"
    assert n.task_key("T1") == "task.T1"
    assert n.offer_key("summarize.medical", "T1") == "offer.summarize.medical.T1"
    assert n.offer_filter("summarize") == "offer.summarize.>"
    assert n.agent_key("a-1") == "agent.a-1"
    assert n.event_subject("R", "T1", "claim") == "mesh.v1.evt.R.T1.claim"
    assert n.events_filter() == "mesh.v1.evt.>"
    assert n.events_filter("R") == "mesh.v1.evt.R.>"
    assert n.error_subject("a-1") == "mesh.v1.err.a-1"
    assert n.control_subject("a-1") == "mesh.v1.ctl.a-1"
    assert VERSION_HEADER == "Mesh-Version"
    assert MAJOR_VERSION == 1


def test_prefix_changes_every_name() -> None:
    n = Names("acme")
    assert n.tasks_bucket == "acme-v1-tasks"
    assert n.events_subjects == ("acme.v1.evt.>", "acme.v1.err.>")
    assert n.event_subject("R", "T", "done") == "acme.v1.evt.R.T.done"
    assert n.control_subject("x") == "acme.v1.ctl.x"


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
    assert n.tasks_bucket.startswith(prefix + "-v1-")


# --- round trips ------------------------------------------------------------------------


@given(prefixes, task_ids)
def test_task_key_round_trip(prefix: str, task_id: str) -> None:
    n = Names(prefix)
    assert n.parse_task_key(n.task_key(task_id)) == task_id


@given(prefixes, capabilities, task_ids)
def test_offer_key_round_trip(prefix: str, capability: str, task_id: str) -> None:
    n = Names(prefix)
    key = n.offer_key(capability, task_id)
    assert n.parse_offer_key(key) == (capability, task_id)
    # The key is inside the filter of the capability and of every shorter prefix of it.
    tokens = capability.split(".")
    for i in range(1, len(tokens) + 1):
        assert key.startswith(n.offer_filter(".".join(tokens[:i]))[:-1])


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
    assert n.error_subject(agent_id).split(".") == [prefix, "v1", "err", agent_id]
    assert n.control_subject(agent_id).split(".") == [prefix, "v1", "ctl", agent_id]


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
        ("parse_task_key", "offer.a.T"),
        ("parse_task_key", "task"),
        ("parse_task_key", "task."),
        ("parse_task_key", "task.a.b"),
        ("parse_task_key", "tasks.a"),
        ("parse_offer_key", "offer.T"),
        ("parse_offer_key", "task.a.T"),
        ("parse_offer_key", "offer..T"),
        ("parse_offer_key", "offer.A.T"),
        ("parse_offer_key", "offer.a.T*"),
        ("parse_agent_key", "task.a"),
        ("parse_agent_key", "agent.a.b"),
        ("parse_agent_key", "agent."),
        ("parse_event_subject", "mesh.v1.evt.R.T"),
        ("parse_event_subject", "mesh.v2.evt.R.T.claim"),
        ("parse_event_subject", "other.v1.evt.R.T.claim"),
        ("parse_event_subject", "mesh.v1.err.R.T.claim"),
        ("parse_event_subject", "mesh.v1.evt.R.T.claim.x"),
        ("parse_event_subject", "mesh.v1.evt.R.T.*"),
        ("parse_event_subject", "mesh.v1.evt.R.T.Claim"),
        ("parse_event_subject", "mesh.v1.evt.R..claim"),
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
        n.offer_key("Bad", "T")
    with pytest.raises(InvalidName):
        n.offer_filter("a.>")
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
    for name in (n.task_key(task_id), n.offer_key(capability, task_id), n.event_subject(task_id, task_id, "claim")):
        assert not set(name) & set("*> \t\r\n")
        assert all(name.split("."))


def test_watch_slot_keys_round_trip_and_stay_in_range() -> None:
    n = Names()
    for slot in range(BOARD_WATCH_SLOTS):
        key = n.watch_slot_key("summarize.medical", slot)
        assert key == f"watch.summarize.medical.{slot}"
        assert n.parse_watch_slot_key(key) == ("summarize.medical", slot)
    for bad_slot in (-1, BOARD_WATCH_SLOTS):
        with pytest.raises(InvalidName):
            n.watch_slot_key("summarize", bad_slot)
    for bad_key in ("watch.summarize", "agent.a.0", f"watch.summarize.{BOARD_WATCH_SLOTS}", "watch.Sum.0", "watch.a.x"):
        with pytest.raises(InvalidName):
            n.parse_watch_slot_key(bad_key)
