"""Briefs and org files: the organization as TOML a person can read and review.

A *brief* describes one agent: its role, its written brief, what it serves, whom it
may delegate to, its capacity and the ``kind`` of implementation. An *org* file
lists agents (inline or by path to a brief) with replicas. Errors name the file,
the field and what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from protocol import Budget, InvalidName, ReviewPolicy, validate_agent_id, validate_capability

__all__ = ["BriefError", "Brief", "OrgAgent", "Org", "load_brief", "load_org", "BRIEF_TEMPLATE"]


class BriefError(ValueError):
    """A brief or org file is invalid; the message says where and how to fix it."""


class Brief(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: agent id (and default process name); letters, digits, '_' and '-'
    name: str
    role: str = ""
    #: the written brief: responsibilities, what the agent may and must not do
    brief: str = ""
    serves: tuple[str, ...]
    delegates: tuple[str, ...] = ()
    expertise: tuple[str, ...] = ()
    capacity: int = 1
    #: implementation: a built-in kind (`mesh kinds`) or `package.module:Class`
    kind: str = "echo"
    #: kind-specific settings (e.g. seconds for `sleep`)
    options: dict[str, Any] = {}
    #: review policy for the tasks this agent creates when it delegates
    review: ReviewPolicy | None = None
    #: LLM settings, used by model-calling kinds
    model: str | tuple[str, ...] | None = None
    temperature: float = 0.2
    budget: Budget | None = None
    tools: tuple[str, ...] = ()
    lease_s: float = 10.0
    drain_timeout_s: float = 30.0


class OrgAgent(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: path to a brief file, relative to the org file ...
    brief: str | None = None
    # ... or the brief inline (same fields as a brief file)
    name: str | None = None
    role: str = ""
    serves: tuple[str, ...] = ()
    delegates: tuple[str, ...] = ()
    expertise: tuple[str, ...] = ()
    capacity: int = 1
    kind: str = "echo"
    options: dict[str, Any] = {}
    text: str = ""
    review: ReviewPolicy | None = None
    model: str | tuple[str, ...] | None = None
    replicas: int = 1


class Org(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    description: str = ""
    agents: tuple[OrgAgent, ...]


def _decode(path: Path, tp: type[Any]) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BriefError(f"{path}: cannot read ({exc.strerror}); check the path") from None
    try:
        return msgspec.toml.decode(raw, type=tp)
    except msgspec.ValidationError as exc:
        raise BriefError(f"{path}: {_explain(str(exc))}") from None
    except msgspec.DecodeError as exc:
        raise BriefError(f"{path}: not valid TOML ({exc}); see `mesh brief new` for a template") from None


def _explain(message: str) -> str:
    # msgspec says e.g. "Expected `int`, got `str` - at `$.capacity`"; name the field first.
    if " - at `$." in message:
        what, _, where = message.partition(" - at `$.")
        return f"field `{where.rstrip('`')}`: {what}"
    if message.startswith("Object missing required field"):
        field = message.split("`")[1] if "`" in message else "?"
        return f"missing required field `{field}`"
    if message.startswith("Object contains unknown field"):
        field = message.split("`")[1] if "`" in message else "?"
        return f"unknown field `{field}` (a typo? see `mesh brief new` for the fields)"
    return message


def _check(brief: Brief, where: str) -> Brief:
    try:
        validate_agent_id(brief.name)
    except InvalidName as exc:
        raise BriefError(f"{where}: field `name`: {exc}") from None
    if not brief.serves:
        raise BriefError(f"{where}: field `serves`: list at least one capability the agent serves")
    for field in ("serves", "delegates"):
        for cap in getattr(brief, field):
            try:
                validate_capability(cap)
            except InvalidName as exc:
                raise BriefError(f"{where}: field `{field}`: {exc}") from None
    if brief.capacity < 1:
        raise BriefError(f"{where}: field `capacity`: must be at least 1, got {brief.capacity}")
    if brief.lease_s <= 0:
        raise BriefError(f"{where}: field `lease_s`: must be positive")
    return brief


def load_brief(path: str | Path) -> Brief:
    p = Path(path)
    brief: Brief = _decode(p, Brief)
    return _check(brief, str(p))


def load_org(path: str | Path) -> tuple[Org, list[tuple[Brief, int]]]:
    """The org and its agents' briefs with replica counts."""
    p = Path(path)
    org: Org = _decode(p, Org)
    out: list[tuple[Brief, int]] = []
    for i, entry in enumerate(org.agents):
        where = f"{p}: agents[{i}]"
        if entry.replicas < 1:
            raise BriefError(f"{where}: field `replicas`: must be at least 1")
        if entry.brief is not None:
            brief = load_brief(p.parent / entry.brief)
        elif entry.name is not None:
            brief = _check(
                Brief(
                    name=entry.name, role=entry.role, brief=entry.text, serves=entry.serves, delegates=entry.delegates,
                    expertise=entry.expertise, capacity=entry.capacity, kind=entry.kind, options=entry.options,
                    review=entry.review, model=entry.model,
                ),
                where,
            )
        else:
            raise BriefError(f"{where}: give either `brief = \"path/to/brief.toml\"` or an inline `name` and `serves`")
        out.append((brief, entry.replicas))
    names = [b.name for b, _ in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BriefError(f"{p}: agent names must be unique; repeated: {', '.join(dupes)} (use `replicas` for copies)")
    return org, out


BRIEF_TEMPLATE = '''\
# An agent brief for agent-mesh. Check it with: mesh brief check FILE
# Run it with:                                  mesh agent run FILE --server nats://HOST:4222

# Agent id: letters, digits, '_' and '-'. Replicas get a suffix (-1, -2, ...).
name = "summarizer"
role = "Summarizer"

# The written brief: responsibilities, what the agent may and must not do.
brief = """
Summarize the document you are given in three sentences, faithfully.
You may delegate fact lookups to `lookup`. You must not invent facts.
"""

# Capabilities it serves (dotted; `summarize` also covers `summarize.medical`,
# at lower fit than a specialist), and those it may hand work to.
serves = ["summarize"]
delegates = []
expertise = []

# How many tasks it works on at once.
capacity = 2

# Implementation: a built-in kind (echo, sleep, fail, relay, extract, check) or
# `package.module:Class` for your own code.
kind = "echo"

# Settings for the kind, e.g. seconds = 2.0 for `sleep`.
[options]

# Review policy for the tasks this agent creates when it delegates (optional):
# [review]
# quorum = 1
# capability = "review"
# max_reworks = 2
# escalate_to = "human.review"
'''
