"""Text methods that need no model: tokens, sentences, BM25 ranking, and checking
that a sentence is supported by a passage. Pure functions, standard library only."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

__all__ = ["STOPWORDS", "terms", "sentences", "BM25", "support", "strip_markers", "markers"]

STOPWORDS = frozenset(
    """a about above after again against all also an and any are as at be because been before being below
    between both but by can could did do does doing done down during each either etc even every for from
    further had has have having here how however i if in into is it its itself just may might more most much
    must no nor not now of off on once one only or other our out over own per same shall should since so some
    such than that the their them then there these they this those through thus to too under until up upon us
    use used uses using very via was we were what when where whether which who whom why will would
    yet you your e g i e""".split()
)
# (Python keywords such as `with`, `else` and `while` are content words in Python's docs.)

_WORD = re.compile(r"[a-z_][a-z0-9_]*")
# A sentence ends at . ! or ? followed by space and an upper-case letter, a quote or
# an opening bracket; "e.g." and "i.e." do not end one.
_SENTENCE_END = re.compile(r"(?<!\be\.g\.)(?<!\bi\.e\.)(?<=[.!?])\s+(?=[A-Z\"'(\u201c\u2018*])")
_MARKER = re.compile(r"\s*\[(\d{1,3})\]")


def _stem(word: str) -> str:
    """A light stemmer: enough to match "cat"/"cats", "raises"/"raised"."""
    if word.startswith("_") or word.endswith("ss"):
        return word
    for suffix, keep in (("ing", 4), ("ed", 4), ("es", 4), ("s", 3)):
        if word.endswith(suffix) and len(word) - len(suffix) >= keep:
            return word[: -len(suffix)]
    return word


def terms(text: str) -> list[str]:
    """Content terms of ``text``: lower-cased words without stopwords, lightly stemmed."""
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in STOPWORDS and len(w) > 1]


def sentences(text: str) -> list[str]:
    """Split prose into sentences (whitespace normalised)."""
    flat = " ".join(text.split())
    return [s.strip() for s in _SENTENCE_END.split(flat) if s.strip()]


def markers(sentence: str) -> list[int]:
    """Citation markers ``[n]`` in a sentence."""
    return [int(n) for n in _MARKER.findall(sentence)]


def strip_markers(sentence: str) -> str:
    return _MARKER.sub("", sentence).strip()


class BM25:
    """Okapi BM25 over a fixed list of documents (k1 = 1.5, b = 0.75)."""

    def __init__(self, documents: Sequence[str], *, k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self.docs = [Counter(terms(d)) for d in documents]
        self.lengths = [sum(c.values()) for c in self.docs]
        self.avgdl = sum(self.lengths) / max(len(self.docs), 1)
        df: Counter[str] = Counter()
        for c in self.docs:
            df.update(c.keys())
        n = len(self.docs)
        self.idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}

    def score(self, query: Iterable[str], i: int) -> float:
        doc, length = self.docs[i], self.lengths[i]
        total = 0.0
        for t in query:
            f = doc.get(t, 0)
            if f:
                norm = self.k1 * (1 - self.b + self.b * length / self.avgdl)
                total += self.idf[t] * f * (self.k1 + 1) / (f + norm)
        return total

    def top(self, query: str, k: int, *, min_score: float = 0.0) -> list[tuple[int, float]]:
        """The ``k`` best documents for ``query`` as (index, score), best first."""
        q = set(terms(query))
        scored = [(i, self.score(q, i)) for i in range(len(self.docs))]
        best = sorted((s for s in scored if s[1] > min_score), key=lambda s: (-s[1], s[0]))
        return best[:k]


def support(sentence: str, passage: str) -> float:
    """How much of ``sentence`` the ``passage`` supports: the share of the sentence's
    content terms (citation markers removed) that occur in the passage, in [0, 1].
    A sentence copied from the passage scores 1.0."""
    said = set(terms(strip_markers(sentence)))
    if not said:
        return 1.0
    return len(said & set(terms(passage))) / len(said)
