"""The research desk (agents/orgs/research-desk.toml, what `mesh demo` runs), offline:
real agent processes, a real broker, real documentation (pydoc_data.topics)."""

from __future__ import annotations

from collections.abc import Callable
from pydoc_data.topics import topics

import msgspec
import pytest

from agents.demo import DEMO_ORG, OUT_OF_SCOPE, QUESTION
from agents.text import markers, sentences, strip_markers
from mesh.briefs import load_org
from mesh.broker import Broker
from mesh.client import Mesh
from mesh.process import AgentProcess, spawn_agent
from mesh.testing import AgentProcs, wait_for
from protocol import TaskRecord

#: no model: the desk's writer and fact-checker work offline whatever the environment says
OFFLINE_ENV = {"MESH_MODEL": ""}


@pytest.fixture(scope="module")
def desk(shared_procs: AgentProcs, shared_start: Callable[..., AgentProcess]) -> AgentProcs:
    _, briefs = load_org(DEMO_ORG)
    for brief, _ in briefs:
        log = shared_procs.directory / f"{brief.name}.log"
        shared_procs.procs[brief.name] = spawn_agent(
            DEMO_ORG,
            server=shared_procs.broker.url,
            agent_id=brief.name,
            agent_name=brief.name,
            log_path=log,
            env=OFFLINE_ENV,
        )
    return shared_procs


@pytest.fixture
async def mesh(desk: AgentProcs, shared_client: Mesh) -> Mesh:
    await desk.ready(shared_client, timeout=60)
    return shared_client


def _flat(text: str) -> str:
    return " ".join(text.split())


async def test_every_sentence_of_the_answer_is_supported_by_a_cited_passage(mesh: Mesh) -> None:
    record = await mesh.run("research", QUESTION, deadline_s=30)
    assert record.state == "done", record.error
    result = record.result
    assert "no model configured" in result["method"]  # it says how it was written
    cited = {c["n"]: c for c in result["citations"]}
    said = sentences(result["answer"])
    assert len(said) >= 2
    for sentence in said:
        numbers = markers(sentence)
        assert numbers, f"uncited: {sentence!r}"
        # Checked independently of the fact-checker: the sentence is in a cited passage.
        assert any(strip_markers(sentence) in cited[n]["text"] for n in numbers), sentence
    for c in result["citations"]:
        topic = c["id"].split("#")[0]
        assert c["text"] in _flat(topics[topic]), f"citation {c['n']} is not real documentation"
    assert "__exit__" in result["answer"] and "suppressed" in result["answer"]
    # The fact-checker approved it before it counted.
    write = next(r for _, r in await mesh.tree(record.id) if r.capability == "write")
    assert [(v.reviewer, v.verdict) for v in write.votes] == [("fact-checker", "approve")]


async def test_the_fact_checker_vetoes_unsupported_sentences_and_invented_sources(mesh: Mesh) -> None:
    passage = {
        "id": "global#1",
        "title": "The global statement",
        "source": "pydoc",
        "text": 'The "global" statement is a declaration which holds for the entire current code block.',
    }
    answer = {
        "answer": 'The "global" statement is a declaration which holds for the entire current code block [1]. '
        "It also makes every variable faster to look up [1]. It was added in Python 4 [2].",
        "citations": [
            {"n": 1, **{k: passage[k] for k in ("id", "source", "text")}},
            {"n": 2, "id": "made-up#1", "source": "nowhere", "text": "Python 4 added the global statement."},
        ],
    }
    review = {"instruction": "What does global do?", "criteria": "", "data": {"passages": [passage]}, "result": answer}
    record = await mesh.run("fact-check", "Check this answer.", data={"review": review}, deadline_s=30)
    assert record.state == "done" and record.result["approve"] is False
    reasons = record.result["reasons"]
    assert any("citation [2] is not one of the passages" in r for r in reasons), reasons
    assert any("sentence 2 is not supported" in r and "faster" in r for r in reasons), reasons
    assert not any("sentence 1 " in r for r in reasons), reasons


async def test_an_unanswerable_question_is_vetoed_reworked_and_escalated_to_a_person(
    mesh: Mesh, shared_broker: Broker
) -> None:
    task = await mesh.submit("research", OUT_OF_SCOPE, deadline_s=30, claim_timeout_s=20)

    async def inbox() -> list[TaskRecord]:
        return await mesh.offered("human")

    waiting = (await wait_for(inbox, what="the escalation to reach the human inbox"))[0]
    assert waiting.capability == "human.desk" and waiting.instruction == OUT_OF_SCOPE
    assert len(waiting.feedback) == 2 and all("cites no passage" in v.reasons[0] for v in waiting.feedback)
    async with await Mesh.connect(shared_broker.url, client_id="human-ann") as person:
        await person.take_and_finish(waiting.id, {"answer": "Out of scope.", "citations": []})
    final = await mesh.wait(task)
    assert final.state == "done" and final.result["answer"] == "Out of scope."
    assert msgspec.to_builtins(final.result)["citations"] == []
