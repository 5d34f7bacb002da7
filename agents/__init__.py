"""The roles of an agent-mesh organization (imported only by the kinds that use them).

- :mod:`agents.llm`: the LLM agent (kind ``llm``): a model (litellm) acting through the
  protocol's actions; offline without a model.
- :mod:`agents.critic`: the critic / red team (kind ``critic``).
- :mod:`agents.research`: the research desk's researcher (``retrieve``) and writer
  (``writer``) on Python's own documentation.
- :mod:`agents.prompt`, :mod:`agents.tools`, :mod:`agents.text`: what a model is told,
  the tools it gets, and text methods that need no model (BM25, support checking).
- ``agents/orgs/research-desk.toml`` (what ``mesh demo`` runs), ``agents/briefs/``.

See docs/AGENTS.md.
"""
