"""The published artifacts: the conformance vectors replay through the reference
implementation, and schemas, vectors and docs have not drifted from the code."""

from __future__ import annotations

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
from protocol import spec

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


def test_rule_vectors() -> None:
    rules = load("rules.json")
    for case in rules["fit"]:
        args: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in case["input"].items()}
        assert p.fit(**args) == case["fit"]
        if case["delay"] is not None:
            assert p.claim_delay(case["fit"]) == case["delay"]
    for case in rules["claim_delay"]:
        assert p.claim_delay(case["fit"], window=case["window"], jitter=case["jitter"]) == case["delay"]
    for case in rules["specificity"]:
        assert p.specificity(case["served"], case["capability"]) == case["specificity"]
    for case in rules["fingerprint"]:
        assert p.fingerprint(case["capability"], case["instruction"]) == case["fingerprint"]
    for case in rules["delegate"]:
        parent = p.decode_record(json.dumps(case["parent"]).encode())
        assert builtins(p.delegate(parent, **case["args"])) == case["child"]
    question = rules["ask"]
    parent = p.decode_record(json.dumps(question["parent"]).encode())
    child = question["child"]
    got = p.ask(
        parent, child_id=child["id"], question=child["instruction"], actor=parent.owner or "", now=child["created"]
    )
    assert builtins(got) == child
    for case in rules["board"]:
        old = None if case["old"] is None else p.decode_record(json.dumps(case["old"]).encode())
        new = p.decode_record(json.dumps(case["new"]).encode())
        change = p.board_change(old, new, case["revision"])
        assert {k: builtins(v) for k, v in change.put.items()} == case["put"]
        assert list(change.delete) == case["delete"]


def test_name_vectors() -> None:
    names = load("names.json")
    assert names["version_header"] == {"name": p.VERSION_HEADER, "value": "1"}
    for mesh in names["meshes"]:
        n = p.Names(mesh["prefix"])
        assert n.tasks_bucket == mesh["tasks_bucket"]
        assert n.agents_bucket == mesh["agents_bucket"]
        assert n.events_stream == mesh["events_stream"]
        assert list(n.events_subjects) == mesh["events_subjects"]
        assert n.task_key(mesh["task_key"]["task"]) == mesh["task_key"]["key"]
        offer = mesh["offer_key"]
        assert n.offer_key(offer["capability"], offer["task"]) == offer["key"]
        assert n.parse_offer_key(offer["key"]) == (offer["capability"], offer["task"])
        subject = mesh["event_subject"]
        assert n.event_subject(subject["root"], subject["task"], subject["kind"]) == subject["subject"]
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


def test_decode_vectors() -> None:
    decoders = {
        "task_record": p.decode_record,
        "offer": p.decode_offer,
        "agent_card": p.decode_card,
        "task_event": p.decode_event,
        "transition": p.decode_transition,
        "control_request": p.decode_control,
        "control_reply": p.decode_control_reply,
        "error_report": p.decode_error,
        "lease_beat": p.decode_beat,
    }
    cases = load("decode.json")["cases"]
    assert {c["expect"] for c in cases} == {"accept", "refuse"}
    for case in cases:
        decode = decoders[case["message"]]
        if case["expect"] == "accept":
            decode(case["input"].encode())
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
    assert {spec._first_line(_sample_struct(doc)) for doc in docs} == {"First line of the summary."}
    assert len({spec._fields(_sample_struct(doc)) for doc in docs}) == 1


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
    assert not problems, "run `python -m protocol.spec` and review the diff:\n" + "\n".join(problems)


@pytest.fixture
def copy_of_repo(tmp_path: Path) -> Path:
    for folder in ("protocol/schema", "protocol/vectors", "docs"):
        (tmp_path / folder).parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(ROOT / folder, tmp_path / folder)
    return tmp_path


def test_check_reports_drift(copy_of_repo: Path) -> None:
    root = copy_of_repo
    assert spec.check(root) == []
    (root / "protocol/schema/offer.json").write_text("{}\n", encoding="utf-8")
    (root / "protocol/vectors/transitions.json").unlink()
    (root / "protocol/vectors/old.json").write_text("[]\n", encoding="utf-8")
    doc = root / "docs/PROTOCOL.md"
    doc.write_text(doc.read_text(encoding="utf-8").replace("stateDiagram-v2", "stateDiagram"), encoding="utf-8")
    problems = spec.check(root)
    assert "protocol/schema/offer.json: differs from the code" in problems
    assert "protocol/vectors/transitions.json: missing" in problems
    assert "protocol/vectors/old.json: no longer generated" in problems
    assert "docs/PROTOCOL.md: generated section diagram differs from the code" in problems
    assert spec.main(["--check", "--root", str(root)]) == 1
    # Writing repairs everything, and only the generated parts of the docs.
    spec.write(root)
    assert spec.check(root) == []
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
        [sys.executable, "-m", "protocol.spec", "--check"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout


def test_docs_diagram_is_generated_from_the_table() -> None:
    text = (ROOT / "docs/PROTOCOL.md").read_text(encoding="utf-8")
    for (state, kind), targets in p.TRANSITIONS.items():
        for target in targets:
            line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"{state} --> {target}:"))
            assert kind in line
