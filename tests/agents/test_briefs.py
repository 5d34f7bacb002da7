"""Brief and org files: the new fields, and errors that name the file, the field and
the fix (decoded with msgspec into typed structs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mesh.briefs import BRIEF_TEMPLATE, Brief, BriefError, load_brief, load_org
from mesh.kinds import KindError, ReviewedResults, make_worker
from protocol import Budget, ReviewPolicy

BASE = 'name = "a"\nserves = ["x"]\n'


@pytest.fixture(autouse=True)
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESH_MODEL", raising=False)  # kinds here work offline whatever the environment says


def brief_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "brief.toml"
    path.write_text(text)
    return path


def test_the_template_is_a_working_llm_brief(tmp_path: Path) -> None:
    brief = load_brief(brief_file(tmp_path, BRIEF_TEMPLATE))
    assert (brief.kind, brief.serves, brief.temperature) == ("llm", ("summarize",), 0.2)
    assert brief.may and brief.must_not and brief.brief.strip()
    make_worker(brief)  # constructs offline (no model configured), without litellm


def test_new_fields_round_trip(tmp_path: Path) -> None:
    brief = load_brief(
        brief_file(
            tmp_path,
            BASE
            + (
                'may = ["ask"]\nmust_not = ["guess"]\nmodel = ["openai/gpt-4o-mini", "anthropic/claude-3-5-haiku-20241022"]\n'
                'temperature = 0.0\nbudget = { tokens = 1000, cost = 0.5 }\ntools = ["search_docs"]\ndelegates = ["critique", "human.x"]\n'
                'review_results = { capability = "critique", max_reworks = 1, escalate_to = "human.x" }\n'
            ),
        )
    )
    assert brief.may == ("ask",) and brief.must_not == ("guess",)
    assert brief.models() == ("openai/gpt-4o-mini", "anthropic/claude-3-5-haiku-20241022")
    assert brief.budget == Budget(tokens=1000, cost=0.5) and brief.tools == ("search_docs",)
    assert brief.review_results == ReviewPolicy(capability="critique", max_reworks=1, escalate_to="human.x")


def test_models_default_to_mesh_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_MODEL", "openai/gpt-4o-mini, ollama/llama3")
    assert Brief(name="a", serves=("x",)).models() == ("openai/gpt-4o-mini", "ollama/llama3")
    assert Brief(name="a", serves=("x",), model="m/one").models() == ("m/one",)
    monkeypatch.setenv("MESH_MODEL", "")
    assert Brief(name="a", serves=("x",)).models() == ()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("temperature = 3.0\n", "field `temperature`: must be between 0 and 2, got 3.0"),
        ("model = []\n", "field `model`: give a litellm model name"),
        ('model = ["a/b", "a/b"]\n', "field `model`: a model is listed twice"),
        ('tools = ["web search"]\n', "field `tools`: invalid tool name 'web search'"),
        ('may = [""]\n', "field `may`: remove the empty entry"),
        ("budget = { tokens = -1 }\n", "field `budget.tokens`: Expected `int` >= 0"),
        ('review = { capability = "Bad Cap" }\n', "field `review.capability`: invalid capability 'Bad Cap'"),
        ("review = { quorum = 0 }\n", "field `review.quorum`: Expected `int` >= 1"),
        (
            'review_results = { capability = "x" }\n',
            "field `review_results.capability`: 'x' is served by this agent itself",
        ),
        ('review_results = { capability = "critique" }\n', "add 'critique' to `delegates`"),
        (
            'delegates = ["critique"]\nreview_results = { capability = "critique", escalate_to = "human.x" }\n',
            "field `review_results.escalate_to`: sending results to 'human.x' is a handoff; add 'human.x' to `delegates`",
        ),
        ("temprature = 0.1\n", "unknown field `temprature` (a typo? see `mesh brief new` for the fields)"),
    ],
)
def test_invalid_briefs_name_file_field_and_fix(tmp_path: Path, extra: str, expected: str) -> None:
    path = brief_file(tmp_path, BASE + extra)
    with pytest.raises(BriefError) as info:
        load_brief(path)
    assert str(info.value).startswith(f"{path}: "), info.value
    assert expected in str(info.value), info.value


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ('tools = ["web_search"]\n', "field `tools`: unknown tool(s) web_search; available: search_docs"),
        (
            "[options]\nmax_turn = 3\n",
            "field `options.max_turn`: unknown option; the options of kind 'llm' are max_turns",
        ),
        ('[options]\nmax_turns = "many"\n', "field `options.max_turns`: Expected `int`, got `str`"),
        ("[options]\nmax_turns = 0\n", "field `options.max_turns`: must be at least 1"),
        ("[options]\nmock_responses = [3]\n", "field `options.mock_responses[0]`: give a string, or a table"),
    ],
)
def test_invalid_llm_settings_are_kind_errors_naming_the_field(tmp_path: Path, options: str, expected: str) -> None:
    brief = load_brief(brief_file(tmp_path, BASE + 'kind = "llm"\n' + options))
    with pytest.raises(KindError) as info:
        make_worker(brief)
    assert str(info.value).startswith("brief 'a': "), info.value
    assert expected in str(info.value), info.value


def test_org_inline_agents_take_every_brief_field(tmp_path: Path) -> None:
    org = tmp_path / "org.toml"
    org.write_text(
        'name = "o"\n[[agents]]\nname = "w"\nserves = ["write"]\ntext = "Write."\nmust_not = ["invent"]\n'
        'model = "openai/gpt-4o-mini"\ntemperature = 0.7\nbudget = { tokens = 10 }\ntools = ["search_docs"]\nreplicas = 2\n'
    )
    _, [(brief, replicas)] = load_org(org)
    assert (brief.brief, brief.must_not, brief.model, brief.temperature, replicas) == (
        "Write.",
        ("invent",),
        "openai/gpt-4o-mini",
        0.7,
        2,
    )
    assert brief.budget == Budget(tokens=10) and brief.tools == ("search_docs",)


def test_org_errors_name_the_entry(tmp_path: Path) -> None:
    (tmp_path / "w.toml").write_text(BASE)
    org = tmp_path / "org.toml"
    org.write_text('name = "o"\n[[agents]]\nbrief = "w.toml"\nname = "w"\nserves = ["x"]\n')
    with pytest.raises(BriefError, match=r"org.toml: agents\[0\]: give either `brief = .*` or an inline brief"):
        load_org(org)
    org.write_text('name = "o"\n[[agents]]\nname = "w"\nserves = ["x"]\ntemperature = -1.0\n')
    with pytest.raises(BriefError, match=r"org.toml: agents\[0\]: field `temperature`: must be between 0 and 2"):
        load_org(org)


def test_a_kind_without_rework_gets_its_results_reviewed_by_a_wrapper(tmp_path: Path) -> None:
    for kind in ("echo", "llm"):  # an llm agent without a model cannot rework either
        text = BASE + f'kind = "{kind}"\ndelegates = ["critique"]\nreview_results = {{ capability = "critique" }}\n'
        assert isinstance(make_worker(load_brief(brief_file(tmp_path, text))), ReviewedResults)


def test_mesh_imports_neither_agents_nor_litellm_unless_a_brief_asks() -> None:
    code = (
        "import sys\nfrom mesh.kinds import make_worker, KINDS\nfrom mesh.briefs import Brief\n"
        "make_worker(Brief(name='a', serves=('x',), kind='echo'))\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'agents', 'litellm'}))\n"
        "make_worker(Brief(name='b', serves=('x',), kind='llm'))  # no model: offline, still no litellm\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'agents', 'litellm'}))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "MESH_MODEL": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert [line for line in out.splitlines() if line.startswith("[")] == ["[]", "['agents']"]
