"""The tools a model sees: the protocol's actions (delegate, ask, finish, decline;
approve and veto for reviewers) and an explicit registry of extra tools a brief may
name in ``tools``. Schemas are OpenAI-style function tools, which litellm passes to
every provider."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from .corpus import pydoc_index

__all__ = ["Tool", "EXTRA_TOOLS", "protocol_tools", "tool_schema"]

Mode = Literal["work", "review"]


def tool_schema(
    name: str, description: str, properties: dict[str, Any], required: tuple[str, ...] = ()
) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": list(required)},
        },
    }


def protocol_tools(*, mode: Mode, delegates: tuple[str, ...], can_delegate: bool) -> list[dict[str, Any]]:
    """The protocol's actions available to a model in ``mode``."""
    if mode == "review":
        return [
            tool_schema(
                "approve",
                "Approve the result: it meets every acceptance criterion and you found no flaw that matters.",
                {"note": {"type": "string", "description": "optional: what you checked"}},
            ),
            tool_schema(
                "veto",
                "Send the result back for rework. Give every flaw you found as a specific reason.",
                {
                    "reasons": {
                        "type": "array",
                        "items": {"type": "string"},
                        "minItems": 1,
                        "description": "one specific, checkable reason per flaw",
                    }
                },
                ("reasons",),
            ),
        ]
    tools = []
    if can_delegate and delegates:
        tools.append(
            tool_schema(
                "delegate",
                "Hand a piece of work to another agent and wait for its result. "
                f"capability must be one of {', '.join(delegates)} (or a dotted sub-capability of one).",
                {
                    "capability": {"type": "string", "description": f"one of: {', '.join(delegates)}"},
                    "instruction": {"type": "string", "description": "what to do, self-contained"},
                    "criteria": {"type": "string", "description": "acceptance criteria a reviewer checks"},
                    "data": {"type": "object", "description": "optional input for the task (JSON)"},
                    "review": {
                        "type": "object",
                        "description": "optional: have the result reviewed before it counts",
                        "properties": {"quorum": {"type": "integer", "minimum": 1}, "capability": {"type": "string"}},
                    },
                },
                ("capability", "instruction"),
            )
        )
    tools += [
        tool_schema(
            "ask",
            "Ask your requester a clarifying question and wait for the answer. Ask rather than guess.",
            {"question": {"type": "string"}},
            ("question",),
        ),
        tool_schema(
            "finish",
            "Submit your result for this task. This ends your work on it.",
            {"result": {"type": "string", "description": "the complete result"}},
            ("result",),
        ),
        tool_schema(
            "decline",
            "Refuse the task because your brief forbids it or it cannot be done; say why.",
            {"reason": {"type": "string"}},
            ("reason",),
        ),
    ]
    return tools


@dataclass(frozen=True)
class Tool:
    """An extra tool: its schema and an async function of the parsed arguments."""

    schema: dict[str, Any]
    call: Callable[[dict[str, Any]], Awaitable[str]]


async def _search_docs(args: dict[str, Any]) -> str:
    query = str(args.get("query", ""))
    k = max(1, min(int(args.get("k", 3)), 8))
    found = pydoc_index().search(query, k, min_score=1.0)
    return json.dumps([{"id": p.id, "source": p.source, "text": p.text} for p in found])


#: Extra tools by name, for a brief's ``tools`` list.
EXTRA_TOOLS: dict[str, Tool] = {
    "search_docs": Tool(
        tool_schema(
            "search_docs",
            "Search Python's language documentation (BM25 over pydoc_data.topics); returns the best passages.",
            {"query": {"type": "string"}, "k": {"type": "integer", "minimum": 1, "maximum": 8}},
            ("query",),
        ),
        _search_docs,
    ),
}
