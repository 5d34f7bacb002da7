"""Briefs and org files: the organization as TOML a person can read and review.

A *brief* describes one agent: its role, its written brief (responsibilities, what
it may and must not do), what it serves, whom it may delegate to, its capacity, the
review policies for the tasks it creates and for the results it produces, its model
settings (model or fallback list, temperature, budget, tools) and the ``kind`` of
implementation. An *org* file lists agents (inline or by path to a brief) with
replicas. Errors name the file, the field and what to do about it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import msgspec

from protocol import (
    MAX_LEASE_S,
    MAX_VOTES,
    Budget,
    InvalidName,
    ReviewPolicy,
    best_match,
    validate_agent_id,
    validate_capability,
)

__all__ = ["BriefError", "Brief", "McpServer", "Org", "load_brief", "load_org", "BRIEF_TEMPLATE"]


class BriefError(ValueError):
    """A brief or org file is invalid; the message says where and how to fix it."""


class McpServer(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An MCP server whose tools a model-calling agent may use (``[[mcp_servers]]``):
    a command the agent starts and speaks to over stdio, or a streamable HTTP URL."""

    #: names its tools for the model: tool ``read`` of server ``files`` is ``files__read``
    name: str
    #: stdio: the program and its arguments, e.g. ["python", "-m", "my_tools"]
    command: tuple[str, ...] = ()
    #: environment for the command (added to a minimal default one)
    env: dict[str, str] = {}
    #: working directory of the command (default: the agent's)
    cwd: str | None = None
    #: streamable HTTP: the server's endpoint, e.g. "http://127.0.0.1:8000/mcp"
    url: str | None = None
    #: only these of its tools (default: all it lists)
    tools: tuple[str, ...] = ()
    #: seconds one tool call may take; past it the model is told it timed out
    timeout_s: float = 30.0
    #: seconds the server may take to start and answer at the agent's start
    connect_timeout_s: float = 30.0


class Brief(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: agent id (and default process name); letters, digits, '_' and '-'
    name: str
    role: str = ""
    #: the written brief: responsibilities, what the agent may and must not do
    brief: str = ""
    #: what the agent may do, and what it must not do (one line each; part of its prompt)
    may: tuple[str, ...] = ()
    must_not: tuple[str, ...] = ()
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
    #: review policy for the results this agent produces: they are checked by
    #: reviewers of ``review_results.capability`` before the agent returns them
    review_results: ReviewPolicy | None = None
    #: LLM settings, used by model-calling kinds: a litellm model name, or a list
    #: (the first is used, the others are fallbacks); $MESH_MODEL is the default
    model: str | tuple[str, ...] | None = None
    temperature: float = 0.2
    #: the most one task may cost this agent (tokens, cost in USD)
    budget: Budget | None = None
    #: extra tools the model may call besides the protocol's actions
    tools: tuple[str, ...] = ()
    #: MCP servers whose tools the model may call too (connected once per agent)
    mcp_servers: tuple[McpServer, ...] = ()
    #: the lease of the queues this agent creates (how long it may stay silent before
    #: its work moves to another agent); None: $MESH_LEASE_S, else 10 s
    lease_s: float | None = None
    drain_timeout_s: float = 30.0

    def models(self) -> tuple[str, ...]:
        """The models to use, in fallback order: the brief's, else ``$MESH_MODEL``
        (comma-separated for fallbacks), else none (kinds then work offline)."""
        if isinstance(self.model, str):
            return (self.model,)
        if self.model:
            return self.model
        return tuple(m.strip() for m in os.environ.get("MESH_MODEL", "").split(",") if m.strip())


class Org(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    description: str = ""
    #: each entry is either ``brief = "path/to/brief.toml"`` (plus ``replicas``) or an
    #: inline brief: the fields of a brief file, with its text under ``text`` (since
    #: ``brief`` names the file), plus ``replicas``
    agents: tuple[dict[str, Any], ...]


def _decode(path: Path, tp: type[Any]) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BriefError(f"{path}: cannot read ({exc.strerror}); check the path") from None
    try:
        return msgspec.toml.decode(raw, type=tp)
    except UnicodeDecodeError:
        raise BriefError(f"{path}: not a text file (TOML must be UTF-8); see `mesh brief new` for a template") from None
    except msgspec.ValidationError as exc:
        raise BriefError(f"{path}: {_explain(str(exc))}") from None
    except msgspec.DecodeError as exc:
        raise BriefError(f"{path}: not valid TOML ({exc}); see `mesh brief new` for a template") from None
    except RecursionError:
        raise BriefError(f"{path}: nested too deeply to read; a brief is a flat list of fields") from None


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
    if not 1 <= brief.capacity <= MAX_CAPACITY:
        raise BriefError(f"{where}: field `capacity`: must be 1 to {MAX_CAPACITY}, got {brief.capacity}")
    # (written so that nan fails too; an endless lease would never fail over)
    if brief.lease_s is not None and not MIN_LEASE_S <= brief.lease_s <= MAX_LEASE_S:
        raise BriefError(
            f"{where}: field `lease_s`: must be {MIN_LEASE_S:g} to {MAX_LEASE_S:g} seconds (a protocol limit)"
        )
    if not 0 <= brief.drain_timeout_s <= MAX_SECONDS:
        raise BriefError(f"{where}: field `drain_timeout_s`: must be 0 to {MAX_SECONDS:g} seconds (a day)")
    _check_reviews(brief, where)
    _check_model(brief, where)
    _check_mcp(brief, where)
    for field in ("may", "must_not"):
        if not all(line.strip() for line in getattr(brief, field)):
            raise BriefError(f"{where}: field `{field}`: remove the empty entry (one rule per string)")
    return brief


def _check_reviews(brief: Brief, where: str) -> None:
    for field in ("review", "review_results"):
        policy: ReviewPolicy | None = getattr(brief, field)
        if policy is None:
            continue
        for sub, cap in (("capability", policy.capability), ("escalate_to", policy.escalate_to)):
            if cap is None:
                continue
            try:
                validate_capability(cap)
            except InvalidName as exc:
                raise BriefError(f"{where}: field `{field}.{sub}`: {exc}") from None
        if policy.quorum - 1 + policy.reject_quorum > MAX_VOTES:
            raise BriefError(
                f"{where}: field `{field}.reject_quorum`: {policy.reject_quorum} vetoes with quorum {policy.quorum} "
                f"is more votes than one round holds; keep quorum + reject_quorum at most {MAX_VOTES + 1}"
            )
    own = brief.review_results
    if own is None:
        return
    if own.reject_quorum != 1:
        raise BriefError(
            f"{where}: field `review_results.reject_quorum`: only a task's own review guarantees distinct "
            "reviewers, which the last round's rule needs; set `reject_quorum` in `review` of the agent that "
            "delegates to this one (or on the task), and remove it here"
        )
    if best_match(brief.serves, own.capability):
        raise BriefError(
            f"{where}: field `review_results.capability`: {own.capability!r} is served by this agent "
            "itself; an author cannot review its own results: name another agent's capability"
        )
    for sub, cap in (("capability", own.capability), ("escalate_to", own.escalate_to)):
        if cap is not None and best_match(brief.delegates, cap) is None:
            raise BriefError(
                f"{where}: field `review_results.{sub}`: sending results to {cap!r} is a handoff; "
                f"add {cap!r} to `delegates`"
            )


def _check_model(brief: Brief, where: str) -> None:
    models = (brief.model,) if isinstance(brief.model, str) else (brief.model or ())
    if brief.model is not None and (not models or not all(m.strip() for m in models)):
        raise BriefError(
            f'{where}: field `model`: give a litellm model name (e.g. "openai/gpt-4o-mini") '
            "or a non-empty list of them (the first is used, the rest are fallbacks)"
        )
    if len(set(models)) != len(models):
        raise BriefError(f"{where}: field `model`: a model is listed twice; list each fallback once")
    if not 0.0 <= brief.temperature <= 2.0:
        raise BriefError(f"{where}: field `temperature`: must be between 0 and 2, got {brief.temperature}")
    for tool in brief.tools:
        if not _TOOL.fullmatch(tool):
            raise BriefError(f"{where}: field `tools`: invalid tool name {tool!r}: use letters, digits and '_'")
    if len(set(brief.tools)) != len(brief.tools):
        raise BriefError(f"{where}: field `tools`: a tool is listed twice")


def _check_mcp(brief: Brief, where: str) -> None:
    names = [server.name for server in brief.mcp_servers]
    for i, server in enumerate(brief.mcp_servers):
        at = f"mcp_servers[{i}]"
        if not _MCP_NAME.fullmatch(server.name):
            raise BriefError(
                f"{where}: field `{at}.name`: invalid name {server.name!r}: 1 to 24 letters, digits and '_' (not '__'), "
                "starting with a letter"
            )
        if names.count(server.name) > 1:
            raise BriefError(
                f"{where}: field `{at}.name`: {server.name!r} is listed twice; give each server its own name"
            )
        if bool(server.command) == (server.url is not None):
            raise BriefError(
                f'{where}: field `{at}`: give either `command` (a stdio server, e.g. ["python", "-m", "my_tools"]) or `url` '
                '(streamable HTTP, e.g. "http://127.0.0.1:8000/mcp"), not both'
            )
        if server.command and not all(part.strip() for part in server.command):
            raise BriefError(
                f"{where}: field `{at}.command`: remove the empty entry (the program, then one string per argument)"
            )
        if server.url is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", server.url):
            raise BriefError(f"{where}: field `{at}.url`: {server.url!r} is not an http:// or https:// URL")
        if (server.env or server.cwd is not None) and not server.command:
            raise BriefError(
                f"{where}: field `{at}`: `env` and `cwd` are for a `command`; a `url` server runs elsewhere"
            )
        for tool in server.tools:
            if not _TOOL.fullmatch(tool):
                raise BriefError(
                    f"{where}: field `{at}.tools`: invalid tool name {tool!r}: use letters, digits and '_'"
                )
        # (written so that nan fails too: a call with no bound could hold the agent)
        for field in ("timeout_s", "connect_timeout_s"):
            if not 0 < getattr(server, field) <= MAX_MCP_TIMEOUT_S:
                raise BriefError(
                    f"{where}: field `{at}.{field}`: must be more than 0 and at most {MAX_MCP_TIMEOUT_S:g} seconds"
                )


#: the longest one MCP tool call may take
MAX_MCP_TIMEOUT_S = 3600.0

_MCP_NAME = re.compile(r"(?!.*__)[A-Za-z][A-Za-z0-9_]{0,23}")

#: what one agent process works on at once (each slot is a pull request on its queues)
MAX_CAPACITY = 10_000
MIN_LEASE_S = 0.1
MAX_SECONDS = 86_400.0

_TOOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


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
        fields = dict(entry)
        replicas = fields.pop("replicas", 1)
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
            raise BriefError(f"{where}: field `replicas`: must be a whole number, at least 1")
        path_ = fields.pop("brief", None)
        if path_ is not None:
            if fields:
                raise BriefError(
                    f'{where}: give either `brief = "path/to/brief.toml"` or an inline brief (`name`, `serves`, ...), '
                    f"not both (found {', '.join(sorted(fields))})"
                )
            if not isinstance(path_, str):
                raise BriefError(f"{where}: field `brief`: expected the path of a brief file")
            brief = load_brief(p.parent / path_)
        elif "name" in fields:
            if "text" in fields:
                fields["brief"] = fields.pop("text")
            try:
                brief = msgspec.convert(fields, type=Brief)
            except msgspec.ValidationError as exc:
                raise BriefError(f"{where}: {_explain(str(exc)).replace('field `brief`', 'field `text`')}") from None
            brief = _check(brief, where)
        else:
            raise BriefError(f'{where}: give either `brief = "path/to/brief.toml"` or an inline `name` and `serves`')
        out.append((brief, replicas))
    names = [b.name for b, _ in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BriefError(f"{p}: agent names must be unique; repeated: {', '.join(dupes)} (use `replicas` for copies)")
    return org, out


BRIEF_TEMPLATE = '''\
# An agent brief for agent-mesh. Check it with: mesh brief check FILE
# Run it alone with:                            mesh agent run FILE --server nats://HOST:4222
# or list it in an org file (one line per agent: brief = "FILE", replicas = N) for `mesh up`.

# Agent id: letters, digits, '_' and '-'. Replicas get a suffix (-1, -2, ...).
name = "summarizer"
role = "Summarizer"

# The written brief: the agent's responsibilities. Model-calling kinds put it, and
# the two lists below, in the model's instructions.
brief = """
Summarize the document you are given in three sentences, faithfully.
"""
may = ["ask the requester what the summary is for"]
must_not = ["invent facts that are not in the document"]

# Capabilities it serves (dotted; `summarize` also covers `summarize.medical`, when
# no free specialist takes it), and those it may hand work to (enforced).
serves = ["summarize"]
delegates = []
expertise = []

# How many tasks it works on at once (1 to 10000).
capacity = 2

# How long it may go silent before the broker gives its work to another agent (the
# lease of the queues it is the first to create; $MESH_LEASE_S, else 10 s). A busy
# agent renews on its own; this is the failover time when it dies. 0.1 to 3600 s.
# lease_s = 10.0

# Implementation: `llm` (a model-driven agent; see `mesh kinds` for the others) or
# `package.module:Class` for your own code. With no model configured (no `model`
# here, no $MESH_MODEL) an `llm` agent works offline: it hands the task to its first
# delegate, or answers extractively from the task's text, and says so.
kind = "llm"

# The model, through litellm: one name, or a list (the first is used, the others
# are fallbacks when a provider fails). $MESH_MODEL is the default.
# model = ["openai/gpt-4o-mini", "anthropic/claude-3-5-haiku-20241022"]
temperature = 0.2  # 0 to 2

# The most one task may cost this agent; the task's own budget applies as well.
# budget = { tokens = 20000, cost = 0.05 }

# Extra tools for the model besides the protocol's actions (delegate, ask, finish):
# e.g. "search_docs" (BM25 search in Python's documentation).
tools = []

# MCP servers whose tools the model may call as well (optional; `llm` kind, needs the
# mcp extra: pip install 'agent-mesh[mcp]'). Tool `read` of server `files` is
# `files__read` to the model. A stdio server is started by the agent and stopped with it:
# [[mcp_servers]]
# name = "files"
# command = ["python", "-m", "my_file_tools"]
# timeout_s = 30           # per call; a slower call is reported to the model as timed out
# tools = ["read", "list"] # only these (default: all the server lists)
# Or a streamable HTTP server:
# [[mcp_servers]]
# name = "search"
# url = "http://127.0.0.1:8000/mcp"

# Review policy for the tasks this agent creates when it delegates (optional):
# [review]
# quorum = 1
# capability = "review"
# max_reworks = 2
# reject_quorum = 2        # the last round rejects only on 2 distinct vetoes (default 1):
#                          # a right answer survives one noisy reviewer (docs/ORGANIZATIONS.md)
# escalate_to = "human.review"

# Review policy for the results this agent produces: reviewers of `capability`
# check them before the agent returns them (optional):
# [review_results]
# capability = "critique"
# max_reworks = 1

# Settings for the kind (for `llm`: max_turns, max_tokens, timeout_s, retries).
[options]
'''
