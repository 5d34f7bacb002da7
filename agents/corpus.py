"""The research desk's corpus: prose passages of the documentation that ships with
Python (``pydoc_data.topics``, the language reference behind ``help()``) and a BM25
index over them. It depends on nothing but :mod:`agents.text`, so that the model's
``search_docs`` tool (:mod:`agents.tools`) and the researcher (:mod:`agents.research`)
share it without importing each other."""

from __future__ import annotations

import functools
import re
import textwrap

import msgspec

from .text import BM25

__all__ = ["Passage", "pydoc_passages", "Index", "pydoc_index"]


class Passage(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    title: str
    source: str
    text: str
    score: float = 0.0


def _is_prose(block: str) -> bool:
    text = " ".join(block.split())
    words = text.split()
    if len(words) < 8 or "::=" in text or ">>>" in text or set(text) <= set("*=-~ "):
        return False
    if not (text.endswith(".") or ". " in text):
        return False
    plain = sum(
        1 for w in words if re.fullmatch(r"[\"'\u201c\u2018(]*[A-Za-z][a-z\u2019'-]*[.,;:)\"'\u201d\u2019]*", w)
    )
    return plain / len(words) >= 0.6


@functools.cache
def pydoc_passages() -> tuple[Passage, ...]:
    """Prose paragraphs of every topic in ``pydoc_data.topics`` (code and grammar left
    out), each with a stable id ``topic#n`` and a human-readable source."""
    from pydoc_data.topics import topics

    out, seen = [], set()
    for topic, doc in sorted(topics.items()):
        lines = doc.strip().splitlines()
        title = lines[0].strip() if lines else topic
        n = 0
        for block in re.split(r"\n\s*\n", doc):
            text = " ".join(block.split())
            if not _is_prose(textwrap.dedent(block)) or text in seen:
                continue  # code, grammar, or a paragraph another topic has too
            seen.add(text)
            n += 1
            out.append(
                Passage(
                    id=f"{topic}#{n}",
                    title=title,
                    source=f"pydoc_data.topics[{topic!r}], paragraph {n} ({title})",
                    text=text,
                )
            )
    return tuple(out)


class Index:
    """BM25 over passages; the title counts as part of each passage."""

    def __init__(self, passages: tuple[Passage, ...]) -> None:
        self.passages = passages
        self.bm25 = BM25([f"{p.title} {p.text}" for p in passages])

    def search(self, query: str, k: int = 4, *, min_score: float = 0.0) -> list[Passage]:
        return [
            msgspec.structs.replace(self.passages[i], score=round(score, 3))
            for i, score in self.bm25.top(query, k, min_score=min_score)
        ]


@functools.cache
def pydoc_index() -> Index:
    return Index(pydoc_passages())
