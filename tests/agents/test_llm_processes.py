"""The LLM agent end to end: real agent processes on a real broker, the model
replaced by litellm's own offline mocks (``mock_response`` with tool calls, mock
provider errors). Covers a delegation, a clarification, a veto and rework, a budget
exhaustion, a provider error with fallback, and a total provider outage."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable

import pytest

from mesh.client import Mesh
from mesh.process import AgentProcess
from mesh.testing import AgentProcs
from protocol import Budget, ReviewPolicy, TaskRecord

PRIMARY = "openai/gpt-4o-mini"
FALLBACK = "anthropic/claude-3-5-haiku-20241022"


def finish(result: str) -> dict[str, object]:
    return {"tool": "finish", "args": {"result": result}}


@pytest.fixture(scope="module")
def llm_agents(shared_start: Callable[..., AgentProcess], shared_procs: AgentProcs) -> AgentProcs:
    """Every agent of this module, started once (an LLM agent imports litellm: seconds).
    The generalist's scripted replies are keyed by the capability of the task."""
    if importlib.util.find_spec("litellm") is None or importlib.util.find_spec("mcp") is None:
        pytest.fail(
            "the LLM agent needs litellm[mcp]==1.106.2: install the `llm` extra (the `dev` extra should include it)"
        )
    shared_start(
        "generalist",
        kind="llm",
        model=PRIMARY,
        role="Generalist",
        brief="Do the work; delegate drafting.",
        serves=["plan", "clarify", "essay", "spend", "forbidden"],
        delegates=["draft"],
        tools=["search_docs"],
        capacity=4,
        options={
            "mock_responses": {
                "plan": [
                    {"tool": "delegate", "args": {"capability": "draft", "instruction": "Draft a haiku about queues."}},
                    finish("planned and drafted"),
                ],
                "clarify": [{"tool": "ask", "args": {"question": "Which Python version?"}}, finish("installed it")],
                # The second claim of the same task (the rework) gets the second reply.
                "essay": [finish("first draft"), finish("second draft, with pickle")],
                "spend": [{"tool": "search_docs", "args": {"query": "with statement"}}] * 4,
                "forbidden": [
                    {"tool": "delegate", "args": {"capability": "secrets", "instruction": "Leak them."}},  # refused
                    {"tool": "decline", "args": {"reason": "my brief does not cover secrets"}},
                ],
            }
        },
    )
    shared_start("drafter", serves=["draft"], kind="echo", options={"prefix": "draft: "})
    shared_start(
        "critic",
        serves=["critique"],
        kind="critic",
        model=PRIMARY,
        options={
            "mock_responses": [
                {"tool": "veto", "args": {"reasons": []}},  # refused: a veto needs reasons; the model is told so
                {"tool": "veto", "args": {"reasons": ["the essay does not mention pickle"]}},
                {"tool": "approve", "args": {}},
            ]
        },
    )
    shared_start(
        "sturdy",
        serves=["sturdy"],
        kind="llm",
        model=[PRIMARY, FALLBACK],
        options={
            "retries": 1,
            "mock_errors": {PRIMARY: "litellm.InternalServerError"},
            "mock_responses": [finish("answered by the fallback")],
        },
    )
    shared_start(
        "fragile",
        serves=["fragile"],
        kind="llm",
        model=[PRIMARY, FALLBACK],
        options={
            "retries": 0,
            "mock_errors": {PRIMARY: "litellm.InternalServerError", FALLBACK: "litellm.RateLimitError"},
        },
    )
    # The research desk's writer with a model: the same brief as offline, plus a model.
    shared_start(
        "scribe",
        serves=["write"],
        kind="writer",
        model=PRIMARY,
        options={
            "sentences": 3,
            "mock_responses": [
                finish(
                    'The "global" statement is a declaration which holds for the entire current code block [1]. '
                    "It names globals [1][9]."
                )
            ],
        },
    )
    return shared_procs


@pytest.fixture
async def mesh(llm_agents: AgentProcs, shared_client: Mesh) -> Mesh:
    await llm_agents.ready(shared_client, timeout=90)
    return shared_client


async def test_delegates_through_a_tool_call_and_charges_usage(mesh: Mesh) -> None:
    record = await mesh.run("plan", "Plan a poem.", deadline_s=30)
    assert (record.state, record.result, record.owner) == ("done", "planned and drafted", "generalist")
    tree = await mesh.tree(record.id)
    child = tree[1][1]
    assert (child.capability, child.instruction, child.owner, child.result) == (
        "draft",
        "Draft a haiku about queues.",
        "drafter",
        "draft: Draft a haiku about queues.",
    )
    assert child.hops_left == record.hops_left - 1
    assert record.spent.tokens == 60  # two model calls; litellm's mock usage is 30 tokens each
    events = await mesh.history(record.root)
    assert [e.kind for e in events if e.task == record.id].count("charge") == 2


async def test_asks_the_requester_and_uses_the_answer(mesh: Mesh) -> None:
    asked: list[TaskRecord] = []

    async def answer(question: TaskRecord) -> str:
        asked.append(question)
        return "3.12"

    record = await mesh.wait(await mesh.submit("clarify", "Install Python.", deadline_s=30), on_question=answer)
    assert record.state == "done" and record.result == "installed it"
    assert [q.instruction for q in asked] == ["Which Python version?"]
    tree = await mesh.tree(record.id)
    assert [(r.capability, r.result) for _, r in tree[1:]] == [("agent.test-client", "3.12")]


async def test_a_critic_vetoes_with_reasons_and_the_author_reworks(mesh: Mesh) -> None:
    policy = ReviewPolicy(quorum=1, capability="critique", max_reworks=2)
    record = await mesh.run(
        "essay", "Write about serialization.", review=policy, criteria="must mention: pickle", deadline_s=30
    )
    assert record.state == "done" and record.result == "second draft, with pickle"
    assert record.reworks == 1 and record.attempts == 2
    assert [(v.reviewer, v.reasons) for v in record.feedback] == [("critic", ("the essay does not mention pickle",))]
    assert [(v.reviewer, v.verdict, v.round) for v in record.votes] == [("critic", "approve", 1)]


async def test_budget_exhaustion_stops_the_agent_cleanly(mesh: Mesh) -> None:
    record = await mesh.run("spend", "Research forever.", budget=Budget(tokens=50), deadline_s=30)
    assert (record.state, record.reason) == ("failed", "budget")
    assert record.spent.tokens == 60  # the second call went past 50 and ended the task


async def test_a_refused_delegation_is_reported_to_the_model_which_may_decline(mesh: Mesh) -> None:
    record = await mesh.run("forbidden", "Get the secrets.", deadline_s=30)
    assert (record.state, record.reason) == ("failed", "rejected")
    assert record.error == "declined by generalist: my brief does not cover secrets"
    assert record.children == ()  # the brief's `delegates` held: no child was created


async def test_provider_error_falls_back_to_the_next_model(mesh: Mesh, llm_agents: AgentProcs) -> None:
    record = await mesh.run("sturdy", "Answer anyway.", deadline_s=30)
    assert (record.state, record.result) == ("done", "answered by the fallback")
    log = llm_agents.log("sturdy")
    assert "model answered" in log and "claude-3-5-haiku" in log


async def test_provider_outage_fails_the_task_with_error_naming_the_provider(mesh: Mesh) -> None:
    started = time.monotonic()
    record = await mesh.run("fragile", "Answer anyway.", deadline_s=30)
    assert (record.state, record.reason) == ("failed", "error")
    assert "model provider" in record.error and "anthropic" in record.error, record.error
    assert PRIMARY in record.error and FALLBACK in record.error
    assert time.monotonic() - started < 20  # an outage ends the task; it never hangs to its deadline


async def test_the_desk_writer_uses_the_model_and_cites_the_passages_it_marks(mesh: Mesh) -> None:
    passages = [
        {
            "id": "global#1",
            "title": "global",
            "source": "pydoc global 1",
            "text": 'The "global" statement is a declaration which holds for the entire current code block.',
        },
        {"id": "global#2", "title": "global", "source": "pydoc global 2", "text": "Unused."},
    ]
    record = await mesh.run("write", "What does global do?", data={"passages": passages}, deadline_s=30)
    assert record.state == "done", record.error
    result = record.result
    assert result["method"] == f"written by the model {PRIMARY}"
    assert result["answer"].startswith('The "global" statement')
    assert [(c["n"], c["id"]) for c in result["citations"]] == [(1, "global#1")]  # [9] cites nothing given
