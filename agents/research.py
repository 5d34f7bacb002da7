"""The research desk's roles, working on real documentation that ships with Python
(``pydoc_data.topics``: the language reference behind ``help()``).

- :class:`Researcher` (kind ``retrieve``) ranks passages with BM25 and returns the best.
- :class:`Writer` (kind ``writer``) composes an answer that cites its passages: with a
  model configured it is the LLM agent (:mod:`agents.llm`); without one it composes
  extractively (every sentence taken from a cited passage) and says so.
- :func:`check_support` is the fact-checker's method: every sentence must be
  supported by a passage it cites (used by :class:`agents.critic.Critic`).

An answer is ``{"answer": text with [n] markers, "citations": [{"n", "id", "source",
"text"}], "method": how it was written}``.
"""

from __future__ import annotations

import textwrap
from typing import Any

import msgspec

from mesh.briefs import Brief
from mesh.kinds import KindError
from mesh.work import TaskContext

from .corpus import Index, Passage, pydoc_index, pydoc_passages
from .text import markers, sentences, strip_markers, support, terms

__all__ = [
    "Passage",
    "pydoc_passages",
    "Index",
    "Researcher",
    "Writer",
    "compose",
    "check_support",
    "render_answer",
    "NO_ANSWER",
]

#: what the extractive writer says when its passages do not answer the question
NO_ANSWER = "The passages I was given do not answer this question."


class Researcher:
    """Retrieves passages from Python's documentation (``pydoc_data.topics``) ranked
    by BM25: the best ``k`` (option, default 4) above ``min_score`` (default 3.0)."""

    def __init__(self, brief: Brief) -> None:
        self.k = int(brief.options.get("k", 4))
        self.min_score = float(brief.options.get("min_score", 3.0))
        if self.k < 1:
            raise KindError(f"brief {brief.name!r}: field `options.k`: must be at least 1")
        self.index = pydoc_index()

    async def work(self, task: TaskContext) -> Any:
        query = task.data.get("question", task.instruction) if isinstance(task.data, dict) else task.instruction
        found = self.index.search(str(query), self.k, min_score=self.min_score)
        await task.progress(f"retrieved {len(found)} passages from {len(self.index.passages)}")
        return {
            "passages": [msgspec.to_builtins(p) for p in found],
            "method": f"BM25 over {len(self.index.passages)} paragraphs of pydoc_data.topics",
        }


def _passages(data: Any) -> list[Passage]:
    raw = data.get("passages") if isinstance(data, dict) else None
    if not isinstance(raw, list):
        return []
    try:
        return msgspec.convert(raw, list[Passage])
    except msgspec.ValidationError:
        return []


def compose(question: str, passages: list[Passage], *, n: int = 3, avoid: tuple[str, ...] = ()) -> dict[str, Any]:
    """An extractive answer: the ``n`` sentences of the passages that best match the
    question (by the terms they share, weighted by rarity among the passages), in
    the order of their passages' rank, each with a marker citing its passage.
    Sentences named in ``avoid`` (e.g. quoted by a reviewer's veto) are left out."""
    wanted = set(terms(question))
    candidates: list[tuple[int, int, str]] = []
    seen: set[str] = set()
    for rank, p in enumerate(passages):
        for pos, s in enumerate(sentences(p.text)):
            if len(s.split()) < 6 or s[-1] not in ".!?" or not s[0].isupper() or s in seen:
                continue  # fragments, lead-ins to code or lists, repeats
            if not any(s in a for a in avoid):
                seen.add(s)
                candidates.append((rank, pos, s))
    docs = [set(terms(s)) for _, _, s in candidates]
    df = {t: sum(1 for d in docs if t in d) for t in wanted}

    def score(i: int) -> float:
        rank, _, s = candidates[i]
        shared = wanted & docs[i]
        rarity = sum(1.0 / df[t] for t in shared)
        return rarity * len(shared) / (1 + 0.02 * len(s.split())) / (1 + 0.1 * rank)

    ranked = sorted((i for i in range(len(candidates)) if score(i) > 0), key=lambda i: (-score(i), i))[:n]
    chosen = sorted(ranked, key=lambda i: candidates[i][:2])
    if not chosen:
        return {"answer": NO_ANSWER, "citations": [], "method": "extractive"}
    numbers: dict[int, int] = {}
    out = []
    for i in chosen:
        rank, _, s = candidates[i]
        number = numbers.setdefault(rank, len(numbers) + 1)
        out.append(f"{s[:-1]} [{number}]{s[-1]}")
    citations = [
        {"n": number, "id": passages[rank].id, "source": passages[rank].source, "text": passages[rank].text}
        for rank, number in numbers.items()
    ]
    return {"answer": " ".join(out), "citations": citations, "method": "extractive"}


class Writer:
    """Writes an answer that cites its sources (``data.passages``): with a model
    configured, the LLM agent; without one, extractive composition (and says so)."""

    def __init__(self, brief: Brief) -> None:
        self.brief = brief
        self.sentences = int(brief.options.get("sentences", 3))
        self.llm: Any = None
        if brief.models():
            from .llm import LLMAgent

            self.llm = LLMAgent(brief, system=WRITER_SYSTEM, ignore_options=("sentences",))
        #: with a model, the LLM agent reworks with its reviewers' reasons (`review_results`)
        self.handles_review_results = self.llm is not None

    async def work(self, task: TaskContext) -> Any:
        question = task.data.get("question", task.instruction) if isinstance(task.data, dict) else task.instruction
        passages = _passages(task.data)
        if self.llm is not None:
            raw = await self.llm.work(task)
            text = raw if isinstance(raw, str) else str(raw.get("answer", raw)) if isinstance(raw, dict) else str(raw)
            return cite(text, passages, method=f"written by the model {self.llm.models[0]}")
        avoid = tuple(reason for vote in task.record.feedback for reason in vote.reasons)
        result = compose(str(question), passages, n=self.sentences, avoid=avoid)
        result["method"] = (
            "extractive: the sentences of the retrieved passages that best match the question, quoted with "
            "their sources (no model configured; set MESH_MODEL to use one)"
        )
        if result["answer"] == NO_ANSWER and task.record.feedback:
            result["method"] += "; reworked after a veto, but the passages still do not answer it"
        await task.progress(
            f"composed {len(sentences(result['answer']))} sentences citing {len(result['citations'])} passages"
        )
        return result


WRITER_SYSTEM = """\
You write answers from sources. The task's data holds numbered passages; answer the
question using only what they say, and end every sentence with the marker of the
passage that supports it, like [1] or [2][3] (the number is the passage's position in
the list, starting at 1). Do not add anything the passages do not say. If they do
not answer the question, say so in one sentence without a marker."""


def cite(text: str, passages: list[Passage], *, method: str) -> dict[str, Any]:
    """An answer from a model's text with ``[n]`` markers that refer to positions in
    ``passages``: the citations are the passages it actually cites."""
    used = sorted({n for s in sentences(text) for n in markers(s) if 1 <= n <= len(passages)})
    citations = [
        {"n": n, "id": passages[n - 1].id, "source": passages[n - 1].source, "text": passages[n - 1].text} for n in used
    ]
    return {"answer": text.strip(), "citations": citations, "method": method}


def check_support(result: Any, data: Any, *, threshold: float = 0.8) -> list[str]:
    """The fact-checker's method: reasons to veto ``result`` (empty if every sentence
    is supported by a passage it cites). A citation counts only if its text is one of
    the passages the task was given (``data.passages``), when it was given some."""
    if not isinstance(result, dict) or not isinstance(result.get("answer"), str):
        return ["the result is not an answer with citations ({answer, citations})"]
    given = {p.id: p for p in _passages(data)}
    cited: dict[int, str] = {}
    reasons = []
    for c in result.get("citations") or []:
        if not isinstance(c, dict) or not isinstance(c.get("n"), int):
            reasons.append(f"citation {c!r} has no number")
            continue
        source = given.get(str(c.get("id")))
        if given and (source is None or source.text != c.get("text")):
            reasons.append(f"citation [{c['n']}] is not one of the passages provided for this task")
            continue
        cited[c["n"]] = str(c.get("text", ""))
    said = sentences(result["answer"])
    if not said:
        reasons.append("the answer is empty")
    for i, s in enumerate(said, 1):
        numbers = markers(s)
        quote = strip_markers(s)
        if not numbers:
            reasons.append(f"sentence {i} cites no passage: {quote!r}")
            continue
        best = max((support(s, cited[n]) for n in numbers if n in cited), default=None)
        if best is None:
            reasons.append(
                f"sentence {i} cites [{'], ['.join(map(str, numbers))}], which is not in the citations: {quote!r}"
            )
        elif best < threshold:
            reasons.append(f"sentence {i} is not supported by its cited passage ({best:.0%} of its terms): {quote!r}")
    return reasons


def render_answer(result: Any, *, width: int = 100) -> str:
    """An answer with its citations, for people."""
    if not isinstance(result, dict) or "answer" not in result:
        return str(result)
    lines = textwrap.wrap(str(result["answer"]), width)
    citations = result.get("citations") or []
    if citations:
        lines.append("sources:")
        for c in citations:
            excerpt = str(c.get("text", ""))
            excerpt = excerpt if len(excerpt) <= 90 else excerpt[:89] + "…"
            lines.append(f"  [{c.get('n')}] {c.get('source')}")
            lines.append(f'      "{excerpt}"')
    if result.get("method"):
        lines.append(f"method: {result['method']}")
    return "\n".join(lines)
