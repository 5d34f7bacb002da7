"""The published artifacts: the conformance vectors replay through the reference
implementation, and schemas, vectors and docs have not drifted from the code."""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import msgspec
import pytest

import protocol as p
from tools import spec
from tools.spec import docs as spec_docs
from tools.spec import rules as spec_rules

ROOT = Path(p.__file__).resolve().parent.parent
VECTORS = ROOT / "protocol" / "vectors"
SCHEMAS = ROOT / "protocol" / "schema"


def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def builtins(obj: Any) -> Any:
    return msgspec.json.decode(p.encode(obj))


TRANSITION_CASES = load("transitions.json")["cases"]


# --- replay -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", TRANSITION_CASES, ids=[c["name"] for c in TRANSITION_CASES])
def test_transition_vector(case: dict[str, Any]) -> None:
    record = p.decode_record(json.dumps(case["record"]).encode())
    event = p.decode_transition(json.dumps(case["event"]).encode())
    expect = case["expect"]
    if "record" in expect:
        assert builtins(p.apply(record, event, case["now"])) == expect["record"]
    else:
        with pytest.raises(p.TransitionError) as info:
            p.apply(record, event, case["now"])
        assert type(info.value).__name__ == expect["error"]
        assert (info.value.state, info.value.event, info.value.actor) == (
            expect["state"],
            expect["event"],
            expect["actor"],
        )


def test_vectors_cover_every_row_target_and_illegal_pair() -> None:
    reached = {
        (c["record"]["state"], c["event"]["kind"], c["expect"]["record"]["state"])
        for c in TRANSITION_CASES
        if "record" in c["expect"]
    }
    for (state, kind), targets in p.TRANSITIONS.items():
        for target in targets:
            assert (state, kind, target) in reached, (state, kind, target)
    refused = {(c["record"]["state"], c["event"]["kind"]) for c in TRANSITION_CASES if "error" in c["expect"]}
    for state in spec.STATES:
        for kind in p.EVENT_KINDS:
            if (state, kind) not in p.TRANSITIONS:
                assert (state, kind) in refused
    assert {c["expect"]["error"] for c in TRANSITION_CASES if "error" in c["expect"]} == {"Fenced", "TransitionError"}
    assert len({c["name"] for c in TRANSITION_CASES}) == len(TRANSITION_CASES)


def test_coverage_check_catches_a_missing_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding a row to TRANSITIONS without vectors for it fails the generator."""
    monkeypatch.setitem(p.machine.TRANSITIONS, ("open", "renew"), ("working",))
    with pytest.raises(RuntimeError, match="missing"):
        spec.transition_vectors()


def record(doc: Any) -> p.TaskRecord:
    return p.decode_record(json.dumps(doc).encode())


def test_rule_vectors() -> None:
    rules = load("rules.json")
    assert set(rules["how"]) <= set(rules)
    for case in rules["specificity"]:
        assert p.specificity(case["served"], case["capability"]) == case["specificity"]
    for case in rules["pull_priority"]:
        served = tuple(case["served"])
        assert p.best_match(served, case["capability"]) == case["best_match"]
        assert p.pull_priority(served, case["capability"]) == case["priority"]
    for case in rules["work_items"]:
        old = None if case["old"] is None else record(case["old"])
        items = p.work_items(old, record(case["new"]), case["revision"])
        assert [builtins(i) for i in items] == case["items"]
        assert [p.work_item_id(i) for i in items] == case["ids"]
    for case in rules["on_delivery"]:
        item = p.decode_work_item(json.dumps(case["item"]).encode())
        decision = p.on_delivery(item, record(case["record"]), agent=case["agent"], ticket=case["ticket"])
        match decision:
            case p.Take(event=event):
                assert case["expect"] == {"take": builtins(event)}
            case p.Drop(why=why):
                assert case["expect"] == {"drop": why}
            case p.HandBack(why=why):
                assert case["expect"] == {"hand_back": why}
    for case in rules["judge_waiting"]:
        event = p.judge_waiting(
            record(case["record"]),
            actor=case["actor"],
            waited_s=case["waited_s"],
            queue_active=case["queue_active"],
            now=case["now"],
        )
        assert (None if event is None else builtins(event)) == case["expect"]
    for case in rules["trail_gap"]:
        last = None if case["last_event"] is None else p.decode_event(json.dumps(case["last_event"]).encode())
        gap = p.trail_gap(record(case["record"]), case["revision"], last)
        got = None if gap is None else {"kind": gap.kind, "actor": gap.actor, "items": [builtins(i) for i in gap.items]}
        assert got == case["expect"], case["name"]
    for case in rules["end_unreadable"]:
        ended = p.end_unreadable(record(case["copy"]), why=case["why"], now=case["now"])
        assert builtins(ended) == case["expect"], case["name"]
    for case in rules["agent_core"]:
        a = case["agent"]
        core = p.AgentCore(
            agent=a["agent"],
            serves=tuple(a["serves"]),
            capacity=a["capacity"],
            reviews=a["reviews"],
            connected_at=case["connected_at"],
        )
        for held in case["holding"]:
            core.arrived()
            core.hold(held["ticket"], task=held["task"], kind=held["kind"], lease_s=30.0, claim_timeout_s=10.0, now=0.0)
        item = p.decode_work_item(json.dumps(case["item"]).encode())
        args = {k: case[k] for k in ("ticket", "delivered", "lease_s", "now")}
        if case["step"] == "receive":
            got = core.receive(item, **args)
        else:
            got = core.decide(item, record(case["record"]), case["revision"], **args)
        assert spec_rules.action(got) == case["expect"], case["name"]
    whitespace = {chr(int(c[2:], 16)) for c in rules["fingerprint_whitespace"]}
    for case in rules["fingerprint"]:
        assert p.fingerprint(case["capability"], case["instruction"]) == case["fingerprint"]
        # The spelled-out rule: split at the listed code points, join with one space, fold.
        words = "".join(" " if ch in whitespace else ch for ch in case["instruction"]).split(" ")
        assert " ".join(w for w in words if w).casefold() == case["normalized"], case["why"]
        digest = hashlib.sha256(f"{case['capability']}\n{case['normalized']}".encode()).hexdigest()
        assert digest[:16] == case["fingerprint"]
    for case in rules["split_budget"]:
        budget = None if case["budget"] is None else p.Budget(**case["budget"])
        parent = msgspec.structs.replace(record(rules["ask"]["parent"]), budget=budget, spent=p.Usage(**case["spent"]))
        got = p.split_budget(parent, case["share"])
        assert (None if got is None else builtins(got)) == case["child_budget"]
    for case in rules["delegate"]:
        assert builtins(p.delegate(record(case["parent"]), **case["args"])) == case["child"]
    question = rules["ask"]
    parent = record(question["parent"])
    child = question["child"]
    got = p.ask(
        parent, child_id=child["id"], question=child["instruction"], actor=parent.owner or "", now=child["created"]
    )
    assert builtins(got) == child
    trace = rules["traceparent"]
    for case in trace["make"]:
        assert p.traceparent(case["trace_id"], case["span_id"]) == case["traceparent"]
    for case in trace["child"]:
        assert p.child_traceparent(case["parent"], case["span_id"]) == case["child"]
    assert trace["invalid"]
    for case in trace["header"]:
        assert (case["trace"] if p.trace_id(case["trace"]) else None) == case["header"]
    for value in trace["invalid"]:
        with pytest.raises(p.LocalProtocolError):
            p.new_task(task_id="T", capability="x", instruction="", requester="c", now=0.0, trace=value)


def test_rule_vectors_cover_every_decision() -> None:
    rules = load("rules.json")
    decisions = {next(iter(c["expect"])) for c in rules["on_delivery"]}
    assert decisions == {"take", "drop", "hand_back"}
    verdicts = {None if c["expect"] is None else c["expect"]["reason"] for c in rules["judge_waiting"]}
    assert verdicts == {None, "deadline", "no_agent"}
    counts = {len(c["items"]) for c in rules["work_items"]}
    assert {0, 1, 2} <= counts
    assert None in {c["priority"] for c in rules["pull_priority"]}


def test_name_vectors() -> None:
    names = load("names.json")
    assert names["version_header"] == {"name": p.VERSION_HEADER, "value": "2"}
    assert (names["priority_group"], names["max_priority"]) == (p.PRIORITY_GROUP, p.MAX_PRIORITY)
    for mesh in names["meshes"]:
        n = p.Names(mesh["prefix"])
        assert n.tasks_bucket == mesh["tasks_bucket"]
        assert n.agents_bucket == mesh["agents_bucket"]
        assert n.events_stream == mesh["events_stream"]
        assert list(n.events_subjects) == mesh["events_subjects"]
        assert n.work_stream == mesh["work_stream"]
        assert n.work_subjects == mesh["work_subjects"]
        assert n.records_subjects == mesh["records_subjects"]
        assert n.service_name == mesh["service_name"]
        assert n.task_key(mesh["task_key"]["task"]) == mesh["task_key"]["key"]
        assert n.record_subject(mesh["record_subject"]["task"]) == mesh["record_subject"]["subject"]
        assert n.agent_key(mesh["agent_key"]["agent"]) == mesh["agent_key"]["key"]
        work = mesh["work_subject"]
        assert n.work_subject(work["capability"]) == work["subject"]
        assert n.parse_work_subject(work["subject"]) == work["capability"]
        for queue in mesh["queue_consumer"]:
            assert n.queue_consumer(queue["capability"]) == queue["consumer"]
        assert any(len(q["capability"]) > 200 for q in mesh["queue_consumer"])
        pull = mesh["pull_subject"]
        assert pull["subject"] == f"$JS.API.CONSUMER.MSG.NEXT.{n.work_stream}.{n.queue_consumer(pull['capability'])}"
        create = mesh["create_subject"]
        assert create["subject"] == (
            f"$JS.API.CONSUMER.CREATE.{n.work_stream}.{n.queue_consumer(create['capability'])}."
            f"{n.work_subject(create['capability'])}"
        )
        assert mesh["consumer_created_advisories"] == f"$JS.EVENT.ADVISORY.CONSUMER.CREATED.{n.work_stream}.*"
        subject = mesh["event_subject"]
        assert n.event_subject(subject["root"], subject["task"], subject["kind"]) == subject["subject"]
        assert n.parse_event_subject(subject["subject"]) == (subject["root"], subject["task"], subject["kind"])
        assert n.events_filter(mesh["events_filter"]["root"]) == mesh["events_filter"]["filter"]
        for case in mesh["task_events_filter"]:
            assert n.task_events_filter(case["task"], case["root"]) == case["filter"]
        assert n.control_subject(mesh["control_subject"]["agent"]) == mesh["control_subject"]["subject"]
        assert n.error_subject(mesh["error_subject"]["agent"]) == mesh["error_subject"]["subject"]
    for kind, validate in (
        ("capability", p.validate_capability),
        ("agent_id", p.validate_agent_id),
        ("task_id", p.validate_task_id),
    ):
        for valid in names[kind]["valid"]:
            assert validate(valid) == valid
        for invalid in names[kind]["invalid"]:
            with pytest.raises(p.InvalidName):
                validate(invalid)
        assert names[kind]["valid"] and names[kind]["invalid"]
    for case in names["clarification_capability"]:
        assert p.clarification_capability(case["agent"]) == case["capability"]


def test_resource_vectors_name_the_mesh_resources() -> None:
    """resources.json names every stream and bucket of the default mesh (its values are
    checked against a real broker in tests/test_resources.py)."""
    resources = load("resources.json")
    names = p.Names()
    assert {s["name"] for s in resources["streams"]} == {
        f"KV_{names.tasks_bucket}",
        f"KV_{names.agents_bucket}",
        names.events_stream,
        names.archive_stream,
        names.work_stream,
    }
    assert set(resources["how"]) <= set(resources)
    for case in resources["headers"]:
        kv = case["subject"].startswith("$KV.")
        assert ("Mesh-Version" in case["headers"]) is not kv, case["what"]


def test_decode_vectors() -> None:
    decoders = {
        "task_record": p.decode_record,
        "work_item": p.decode_work_item,
        "agent_card": p.decode_card,
        "task_event": p.decode_event,
        "transition": p.decode_transition,
        "control_request": p.decode_control,
        "control_reply": p.decode_control_reply,
        "error_report": p.decode_error,
    }
    cases = load("decode.json")["cases"]
    assert {c["expect"] for c in cases} == {"accept", "refuse"}
    assert {c["message"] for c in cases} >= {"task_record", "work_item", "task_event", "transition"}
    for case in cases:
        decode = decoders[case["message"]]
        if case["expect"] == "accept":
            decoded = decode(case["input"].encode())
            for field, value in case.get("decoded", {}).items():
                got = getattr(decoded, field)
                assert got == value and type(got) is type(value), case["name"]
        else:
            with pytest.raises(p.RemoteProtocolError):
                decode(case["input"].encode())


# --- schemas ------------------------------------------------------------------------------


def test_schemas_describe_the_examples() -> None:
    """Every published schema names its type, and every message in the docs' examples
    has the fields its schema requires (a light check: no JSON Schema validator is a
    dependency)."""
    for stem in spec.SCHEMAS:
        doc = json.loads((SCHEMAS / f"{stem}.json").read_text(encoding="utf-8"))
        assert doc["$schema"].startswith("https://json-schema.org/")
        assert doc["$id"].endswith(f"/{stem}.json")
        assert "$defs" in doc
    record_schema = json.loads((SCHEMAS / "task_record.json").read_text(encoding="utf-8"))["$defs"]["TaskRecord"]
    example = load("transitions.json")["cases"][0]["record"]
    assert set(record_schema["required"]) <= set(example)
    assert set(example) == set(record_schema["properties"])
    assert record_schema["properties"]["capability"]["pattern"].startswith("^")
    union = json.loads((SCHEMAS / "transition.json").read_text(encoding="utf-8"))
    assert set(union["discriminator"]["mapping"]) == set(p.EVENT_KINDS)


def _sample_struct(doc: str) -> type[msgspec.Struct]:
    """A struct ``Sample`` (with a nested ``Inner``) whose docstrings are ``doc``."""

    inner = msgspec.defstruct("Inner", [("x", int, 0)])
    sample = msgspec.defstruct(
        "Sample",
        [
            ("inner", inner),
            ("description", str, "a field named description"),
            ("meta", Annotated[dict[str, str], msgspec.Meta(examples=[{"description": "  kept  as  is"}])], {}),
        ],
    )
    inner.__doc__ = sample.__doc__ = doc
    return sample


def test_schemas_do_not_depend_on_docstring_indentation() -> None:
    """msgspec 0.22 kept a docstring's source indentation in ``description``, 0.23 strips
    it (and Python 3.13 strips it when compiling): the same struct, its docstring indented
    any way, has the same published schema and field table, and data is left alone."""
    docs = [
        "First line of the summary.\n\n    Second paragraph, indented\n    as in a class body.\n    ",
        "First line of the summary.\n\n        Second paragraph, indented\n        as in a class body.\n        ",
        "First line of the summary.\n\nSecond paragraph, indented\nas in a class body.",
        "\n    First line of the summary.\n    \n    Second paragraph, indented\n    as in a class body.\n",
        "First line of the summary.\n\n\tSecond paragraph, indented\n\tas in a class body.\n\t",
    ]
    schemas = [spec.json_schema(_sample_struct(doc)) for doc in docs]
    expected = "First line of the summary.\n\nSecond paragraph, indented\nas in a class body."
    for got in schemas:
        assert got == schemas[0]
        assert got["$defs"]["Sample"]["description"] == expected
        assert got["$defs"]["Inner"]["description"] == expected
        props = got["$defs"]["Sample"]["properties"]
        assert props["description"]["default"] == "a field named description"
        assert props["meta"]["examples"] == [{"description": "  kept  as  is"}]
    assert {spec_docs.first_line(_sample_struct(doc)) for doc in docs} == {"First line of the summary."}
    assert len({spec_docs.fields(_sample_struct(doc)) for doc in docs}) == 1


def test_published_descriptions_are_our_docstrings_cleaned() -> None:
    """Every description in the published schemas is ``inspect.cleandoc`` of the type's own
    docstring, whatever msgspec made of it."""
    types = {tp.__name__: tp for tp in vars(p).values() if isinstance(tp, type) and issubclass(tp, msgspec.Struct)}
    checked = 0
    for stem in spec.SCHEMAS:
        doc = json.loads((SCHEMAS / f"{stem}.json").read_text(encoding="utf-8"))
        for name, definition in doc["$defs"].items():
            if "description" in definition:
                assert definition["description"] == inspect.cleandoc(types[name].__doc__), (stem, name)
                checked += 1
    assert checked > 10


# --- drift ----------------------------------------------------------------------------------


def test_artifacts_match_the_code() -> None:
    problems = spec.check(ROOT)
    assert not problems, "run `python -m tools.spec` and review the diff:\n" + "\n".join(problems)


@pytest.fixture
def copy_of_repo(tmp_path: Path) -> Path:
    for folder in ("protocol/schema", "protocol/vectors", "docs"):
        (tmp_path / folder).parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(ROOT / folder, tmp_path / folder)
    return tmp_path


def test_check_reports_drift(copy_of_repo: Path) -> None:
    root = copy_of_repo
    assert spec.check(root) == []
    (root / "protocol/schema/work_item.json").write_text("{}\n", encoding="utf-8")
    (root / "protocol/vectors/transitions.json").unlink()
    (root / "protocol/vectors/old.json").write_text("[]\n", encoding="utf-8")
    (root / "protocol/schema/lease_beat.json").write_text("{}\n", encoding="utf-8")  # a version 1 schema
    doc = root / "docs/PROTOCOL.md"
    doc.write_text(doc.read_text(encoding="utf-8").replace("stateDiagram-v2", "stateDiagram"), encoding="utf-8")
    problems = spec.check(root)
    assert "protocol/schema/work_item.json: differs from the code" in problems
    assert "protocol/vectors/transitions.json: missing" in problems
    assert "protocol/vectors/old.json: no longer generated" in problems
    assert "protocol/schema/lease_beat.json: no longer generated" in problems
    assert "docs/PROTOCOL.md: generated section diagram differs from the code" in problems
    assert spec.main(["--check", "--root", str(root)]) == 1
    # Writing repairs everything, and only the generated parts of the docs; the generator
    # owns the schema and vector directories: what it no longer makes is removed.
    spec.write(root)
    assert spec.check(root) == []
    assert not (root / "protocol/schema/lease_beat.json").exists()
    assert sorted(f.stem for f in (root / "protocol/schema").glob("*.json")) == sorted(spec.SCHEMAS)
    assert doc.read_text(encoding="utf-8") == (ROOT / "docs/PROTOCOL.md").read_text(encoding="utf-8")


def test_check_reports_missing_markers(copy_of_repo: Path) -> None:
    doc = copy_of_repo / "docs/PROTOCOL.md"
    doc.write_text(doc.read_text(encoding="utf-8").replace("<!-- END GENERATED: names -->", ""), encoding="utf-8")
    assert "docs/PROTOCOL.md: generated section names has no markers" in spec.check(copy_of_repo)


def test_hand_written_prose_is_left_alone(copy_of_repo: Path) -> None:
    doc = copy_of_repo / "docs/PROTOCOL.md"
    doc.write_text(doc.read_text(encoding="utf-8") + "\nA note added by hand.\n", encoding="utf-8")
    assert spec.check(copy_of_repo) == []
    spec.write(copy_of_repo)
    assert doc.read_text(encoding="utf-8").endswith("A note added by hand.\n")


def test_check_runs_as_a_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tools.spec", "--check"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout


def test_docs_diagram_is_generated_from_the_table() -> None:
    text = (ROOT / "docs/PROTOCOL.md").read_text(encoding="utf-8")
    for (state, kind), targets in p.TRANSITIONS.items():
        for target in targets:
            line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"{state} --> {target}:"))
            assert kind in line


def test_docs_name_every_rule_and_message() -> None:
    """The prose is about what the code publishes: every list in rules.json and every
    published message type is named in PROTOCOL.md, and the document is version 2."""
    text = (ROOT / "docs/PROTOCOL.md").read_text(encoding="utf-8")
    assert text.startswith(f"# The agent-mesh wire protocol, version {p.MAJOR_VERSION}\n")
    for name in load("rules.json"):
        if name not in ("about", "protocol", "how"):
            assert f"`{name}`" in text, name
    for stem in spec.SCHEMAS:
        assert f"#### {stem.replace('_', ' ').capitalize()}" in text, stem
    for gone in ("lease_s", "offer_key", "LeaseBeat", "takes"):
        assert text.count(f"`{gone}`") <= 2, gone  # only in "Changes from version 1"
