"""The LLM agent's parts that need no broker and no model: what the model is told
(only its task's context), the tools it gets, litellm mock parameters, and the text
methods the desk uses offline (BM25, extractive composition, support checking)."""

from __future__ import annotations

import json
import time
from typing import Any

import msgspec

from agents.llm import mock_params
from agents.prompt import review_prompt, system_prompt, task_prompt
from agents.research import NO_ANSWER, Passage, check_support, compose, pydoc_index
from agents.text import BM25, sentences, strip_markers, support, terms
from agents.tools import protocol_tools
from mesh.briefs import Brief
from protocol import Budget, TaskRecord, Usage, Vote, new_task

NOW = 1_800_000_000.0

BRIEF = Brief(
    name="writer",
    role="Writer",
    brief="Answer from sources.",
    may=("ask for sources",),
    must_not=("invent facts",),
    serves=("write",),
    delegates=("retrieve",),
)


def record(**fields: Any) -> TaskRecord:
    base = new_task(
        task_id="t1", capability="write", instruction="Explain the with statement.", requester="desk", now=NOW
    )
    return msgspec.structs.replace(base, **fields)


def test_system_prompt_is_the_brief_and_the_rules_of_acting() -> None:
    text = system_prompt(BRIEF, mode="work", tools=["delegate", "ask", "finish", "decline"], can_delegate=True)
    for part in (
        "You are writer, the Writer",
        "Answer from sources.",
        "- ask for sources",
        "- invent facts",
        "`delegate` to: retrieve",
        "`ask`",
    ):
        assert part in text, part
    no_hops = system_prompt(BRIEF, mode="work", tools=["ask", "finish"], can_delegate=False)
    assert "no hops left" in no_hops
    review = system_prompt(BRIEF, mode="review", tools=["approve", "veto"], can_delegate=False, preface="Find flaws.")
    assert "Find flaws." in review and "`veto` with one specific reason per flaw" in review


def test_task_prompt_holds_only_this_tasks_context() -> None:
    veto = Vote(reviewer="checker", verdict="veto", reasons=("sentence 2 is unsupported",))
    rec = record(
        criteria="Cite every sentence.",
        data={"passages": ["p1"]},
        feedback=(veto,),
        reworks=1,
        budget=Budget(tokens=1000),
        spent=Usage(tokens=400),
        deadline=NOW + 30,
        hops_left=3,
        children=("q1", "c1"),
    )
    question = record(
        id="q1", capability="agent.desk", instruction="Which version?", state="done", result="3.12", parent="t1"
    )
    child = record(
        id="c1", capability="retrieve", instruction="Find passages.", state="done", result={"passages": 2}, parent="t1"
    )
    text = task_prompt(rec, children=[question, child], now=NOW)
    for part in (
        "Explain the with statement.",
        "Cite every sentence.",
        '{"passages": ["p1"]}',
        "checker: sentence 2 is unsupported",
        "Q: Which version?\n  A: 3.12",
        '[retrieve] Find passages.: {"passages": 2}',
        "deadline in 30 s",
        "600 tokens left",
        "3 hops left",
    ):
        assert part in text, part
    big = task_prompt(record(data={"text": "x" * 50_000}), now=NOW, data_chars=1000)
    assert len(big) < 2000 and "more characters]" in big


def test_review_prompt_shows_the_result_the_criteria_and_the_findings() -> None:
    rec = record(state="review", result="The answer.", author="writer", criteria="must mention: with")
    text = review_prompt(rec, findings=["does not mention with"])
    for part in ("by writer", "must mention: with", "The answer.", "Automatic checks found", "- does not mention with"):
        assert part in text, part


def names(tools: list[dict[str, Any]]) -> list[str]:
    return [t["function"]["name"] for t in tools]


def test_tools_follow_the_brief_and_the_hop_limit() -> None:
    assert names(protocol_tools(mode="work", delegates=("retrieve",), can_delegate=True)) == [
        "delegate",
        "ask",
        "finish",
        "decline",
    ]
    assert "delegate" not in names(protocol_tools(mode="work", delegates=("retrieve",), can_delegate=False))
    assert "delegate" not in names(protocol_tools(mode="work", delegates=(), can_delegate=True))
    review = protocol_tools(mode="review", delegates=(), can_delegate=False)
    assert names(review) == ["approve", "veto"]
    assert review[1]["function"]["parameters"]["properties"]["reasons"]["minItems"] == 1


def test_mock_params_are_litellms() -> None:
    assert mock_params("hello", call=1) == {"mock_response": "hello"}
    params = mock_params({"tool": "finish", "args": {"result": "ok"}}, call=2)
    assert params["mock_tool_calls"] == [
        {
            "id": "call_2_0",
            "type": "function",
            "function": {"name": "finish", "arguments": json.dumps({"result": "ok"})},
        }
    ]
    two = mock_params({"content": "thinking", "tool_calls": [{"tool": "ask", "args": {}}, {"tool": "finish"}]}, call=3)
    assert two["mock_response"] == "thinking" and [c["function"]["name"] for c in two["mock_tool_calls"]] == [
        "ask",
        "finish",
    ]


def test_bm25_ranks_the_right_documentation_first() -> None:
    bm = BM25(["the cat sat on the mat", "dogs bark at cats", "a long treatise on mats and rugs", "no match"])
    assert [i for i, _ in bm.top("cat mat", 4)] == [0, 1, 2]  # both terms first; then the shorter document
    started = time.monotonic()
    found = pydoc_index().search("What does the nonlocal statement do?", 3)
    assert found[0].id.startswith("nonlocal#") and time.monotonic() - started < 1.0
    assert pydoc_index().search("Who painted the Mona Lisa?", 4, min_score=3.0) == []


def test_text_methods() -> None:
    assert sentences('It works, e.g. here. Then it stops! Does it? "Yes."') == [
        "It works, e.g. here.",
        "Then it stops!",
        "Does it?",
        '"Yes."',
    ]
    assert terms("The Managers raised") == ["manager", "rais"]
    assert (
        support("The with statement calls __exit__ [1].", "The with statement always calls __exit__ at the end.") == 1.0
    )
    assert support("Lists are immutable.", "Tuples are immutable sequences.") == 0.5


PASSAGES = [
    Passage(
        id="global#1",
        title="global",
        source="pydoc global 1",
        text='The "global" statement is a declaration which holds for the entire current code block. It means that the listed identifiers are to be interpreted as globals.',
    ),
    Passage(
        id="global#2",
        title="global",
        source="pydoc global 2",
        text='Names listed in a "global" statement must not be used in the same code block textually preceding that "global" statement.',
    ),
]


def test_compose_is_extractive_and_cites_every_sentence() -> None:
    result = compose("What does the global statement declare?", PASSAGES, n=2)
    said = sentences(result["answer"])
    assert len(said) == 2 and all("[" in s for s in said)
    data = {"passages": [{"id": p.id, "title": p.title, "source": p.source, "text": p.text} for p in PASSAGES]}
    assert check_support(result, data) == []
    assert compose("Who painted the Mona Lisa?", [])["answer"] == NO_ANSWER
    veto = f"sentence 1 is not supported by its cited passage (50% of its terms): {strip_markers(said[0])!r}"
    avoided = compose("What does the global statement declare?", PASSAGES, n=2, avoid=(veto,))  # a rework
    assert strip_markers(said[0])[:-1] not in avoided["answer"]


def test_check_support_vetoes_what_the_passages_do_not_say() -> None:
    data = {"passages": [{"id": p.id, "title": p.title, "source": p.source, "text": p.text} for p in PASSAGES]}
    cite = {"n": 1, "id": "global#1", "source": "s", "text": PASSAGES[0].text}
    ok = 'The "global" statement is a declaration which holds for the entire current code block [1].'
    assert check_support({"answer": ok, "citations": [cite]}, data) == []
    reasons = check_support(
        {"answer": ok + " Globals are stored in the registry [1]. Uncited claim.", "citations": [cite]}, data
    )
    assert any(r.startswith("sentence 2 is not supported") for r in reasons)
    assert any(r.startswith("sentence 3 cites no passage") for r in reasons)
    forged = {"n": 1, "id": "global#1", "source": "s", "text": "The global statement is deprecated."}
    assert any(
        "not one of the passages provided" in r for r in check_support({"answer": ok, "citations": [forged]}, data)
    )
    assert check_support("just text", data) == ["the result is not an answer with citations ({answer, citations})"]
