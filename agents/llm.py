"""The LLM agent (kind ``llm``): a model acting through the protocol's actions.

Its prompt is its brief plus *only its task's context* (:mod:`agents.prompt`). It
calls the model through litellm's Router (``acompletion`` with tools; fallbacks to the
brief's other models; transient errors retried with backoff) and does what the model
asks through the task handle: ``delegate`` (a child task), ``ask`` (a clarification to
the requester), ``finish`` (the result), ``decline``; as a reviewer ``approve`` or
``veto`` with reasons. Every call's tokens and cost are charged to the task's budget.
It stops cleanly when the task's budget, deadline or hop limit, or its own brief's
budget or turn limit, says so; a provider outage fails the task with reason ``error``
and a message naming the providers that failed.

litellm is imported only here, only when a model is configured, with
``LITELLM_LOCAL_MODEL_COST_MAP=True`` so nothing reaches the internet at import.
With no model configured (no ``model`` in the brief, no ``$MESH_MODEL``) the agent
works offline with deterministic methods and says so.

Offline testing uses litellm's own mock facilities through the brief's options:
``mock_responses`` (one per model call of a task: a string, or ``{tool = "...", args =
{...}}``, or ``{content = "...", tool_calls = [{tool, args}, ...]}``; or a table of
such lists by the task's capability) and ``mock_errors`` (model name -> a litellm
mock error such as ``"litellm.InternalServerError"``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import anyio.abc
import msgspec
import structlog

from mesh.briefs import Brief
from mesh.kinds import (
    KindError,
    criteria_flaws,
    request_review,
    review_request,
    reviewed_record,
    settle_rejected,
    summarize,
)
from mesh.work import RoleViolation, TaskContext, TaskFailed, Verdict
from protocol import LocalProtocolError, ReviewPolicy, TaskRecord

from .mcp_tools import McpTools, digest
from .prompt import review_prompt, system_prompt, task_prompt
from .tools import EXTRA_TOOLS, Tool, protocol_tools

__all__ = ["LLMOptions", "LLMAgent", "ModelClient", "ModelFailed", "Reply", "import_litellm", "mock_params"]

log = structlog.get_logger("agents.llm")

Mode = Literal["work", "review"]


class LLMOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``[options]`` of an ``llm`` brief."""

    #: model calls per task before the agent gives up (reason ``budget``)
    max_turns: int = 12
    #: completion tokens per call (less if the task's budget has fewer left)
    max_tokens: int = 1024
    #: seconds per model request (retries and fallbacks get their own)
    timeout_s: float = 60.0
    #: retries of a transient provider error, per model, with exponential backoff
    retries: int = 2
    #: how much of the task's data goes into the prompt, in characters
    data_chars: int = 8000
    #: extra litellm parameters for every model (e.g. api_base for a local server)
    model_params: dict[str, Any] = {}
    #: offline testing: litellm mock responses, one per model call of a task, in
    #: order (or a table of such lists by the task's capability)
    mock_responses: list[Any] | dict[str, list[Any]] | None = None
    #: offline testing: models that fail, with a litellm mock error
    mock_errors: dict[str, str] = {}


def load_options(brief: Brief, *, ignore: tuple[str, ...] = ()) -> LLMOptions:
    raw = {k: v for k, v in brief.options.items() if k not in ignore}
    try:
        options = msgspec.convert(raw, LLMOptions)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if " - at `$." in message:
            what, _, where = message.partition(" - at `$.")
            message = f"field `options.{where.rstrip('`')}`: {what}"
        elif message.startswith("Object contains unknown field"):
            name = message.split("`")[1] if "`" in message else "?"
            known = ", ".join(LLMOptions.__struct_fields__ + ignore)
            message = f"field `options.{name}`: unknown option; the options of kind {brief.kind!r} are {known}"
        raise KindError(f"brief {brief.name!r}: {message}") from None
    for name in ("max_turns", "max_tokens", "data_chars"):
        if getattr(options, name) < 1:
            raise KindError(f"brief {brief.name!r}: field `options.{name}`: must be at least 1")
    if options.retries < 0 or options.timeout_s <= 0:
        raise KindError(f"brief {brief.name!r}: field `options`: retries must be >= 0 and timeout_s > 0")
    scripts = options.mock_responses if isinstance(options.mock_responses, dict) else {"": options.mock_responses or []}
    for key, script in scripts.items():
        for i, turn in enumerate(script):
            try:
                mock_params(turn, call=0)
            except ValueError as exc:
                where = f"options.mock_responses{'.' + key if key else ''}[{i}]"
                raise KindError(f"brief {brief.name!r}: field `{where}`: {exc}") from None
    return options


def mock_params(turn: Any, *, call: int) -> dict[str, Any]:
    """litellm's mock parameters for one scripted model reply."""
    if isinstance(turn, str):
        return {"mock_response": turn}
    if not isinstance(turn, dict):
        raise ValueError("give a string, or a table with `tool` and `args` (or `content` and `tool_calls`)")
    calls = turn.get("tool_calls")
    if calls is None:
        calls = [{"tool": turn["tool"], "args": turn.get("args", {})}] if "tool" in turn else []
    if not isinstance(calls, list) or not all(isinstance(c, dict) and isinstance(c.get("tool"), str) for c in calls):
        raise ValueError("each tool call needs a `tool` name (and `args`)")
    params: dict[str, Any] = {"mock_response": str(turn.get("content", ""))}
    if calls:
        params["mock_tool_calls"] = [
            {
                "id": f"call_{call}_{i}",
                "type": "function",
                "function": {"name": c["tool"], "arguments": json.dumps(c.get("args", {}))},
            }
            for i, c in enumerate(calls)
        ]
    return params


def import_litellm() -> Any:
    """Import litellm without letting it reach the internet (its price map is read
    from the package, not fetched)."""
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    import litellm

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    return litellm


class ModelFailed(Exception):
    """Every model of the brief failed (after retries and fallbacks), or timed out."""


@dataclass
class ToolCall:
    id: str
    name: str
    args: dict[str, Any] | None
    raw: str


@dataclass
class Reply:
    content: str
    calls: list[ToolCall]
    tokens: int
    cost: float
    model: str
    input_tokens: int = 0
    output_tokens: int = 0

    def message(self) -> dict[str, Any]:
        """The assistant message to append to the conversation."""
        out: dict[str, Any] = {"role": "assistant", "content": self.content or None}
        if self.calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.raw}} for c in self.calls
            ]
        return out


def _provider(model: str) -> str:
    return model.split("/", 1)[0] if "/" in model else model


class ModelClient:
    """The brief's models behind one litellm Router: the first model is asked, the
    others are its fallbacks; transient errors are retried with backoff."""

    def __init__(self, models: tuple[str, ...], *, temperature: float, options: LLMOptions) -> None:
        self.litellm = import_litellm()
        self.models = models
        self.temperature = temperature
        self.options = options
        self.mocking = options.mock_responses is not None or bool(options.mock_errors)
        self._router = None if self.mocking else self._make_router({})
        self._calls = 0

    def _make_router(self, turn: dict[str, Any]) -> Any:
        model_list = []
        for m in self.models:
            params: dict[str, Any] = {"model": m, **self.options.model_params}
            if m in self.options.mock_errors:
                params["mock_response"] = self.options.mock_errors[m]
            else:
                params.update(turn)
            model_list.append({"model_name": m, "litellm_params": params})
        return self.litellm.Router(
            model_list=model_list,
            fallbacks=[{self.models[0]: list(self.models[1:])}] if len(self.models) > 1 else [],
            num_retries=self.options.retries,
            retry_after=0,
            timeout=self.options.timeout_s,
        )

    async def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        *,
        max_tokens: int,
        patience: float,
        turn: Any = None,
    ) -> Reply:
        self._calls += 1
        router = (
            self._router
            if self._router is not None
            else self._make_router({} if turn is None else mock_params(turn, call=self._calls))
        )
        kwargs: dict[str, Any] = {
            "model": self.models[0],
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": max_tokens,
        }
        if tools:
            kwargs["tools"] = tools
        try:
            with anyio.fail_after(patience):
                response = await router.acompletion(**kwargs)
        except TimeoutError:
            raise ModelFailed(
                f"no answer from the model providers within {patience:.0f} s (models tried: {', '.join(self.models)})"
            ) from None
        except Exception as exc:  # litellm raises many types; all of them mean "the provider failed"
            raise ModelFailed(self._describe(exc)) from exc
        return self._reply(response)

    def _describe(self, exc: Exception) -> str:
        provider = getattr(exc, "llm_provider", None) or _provider(self.models[-1])
        model = getattr(exc, "model", None) or self.models[-1]
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        tried = ", ".join(f"{m} ({_provider(m)})" for m in self.models)
        return (
            f"model provider {provider!r} failed for {model}: {type(exc).__name__}: {first} "
            f"[models tried, in order: {tried}; {self.options.retries} retries each]"
        )

    def _reply(self, response: Any) -> Reply:
        message = response.choices[0].message
        calls: list[ToolCall] = []
        for tc in getattr(message, "tool_calls", None) or []:
            raw = tc.function.arguments or "{}"
            try:
                args = json.loads(raw)
            except json.JSONDecodeError:
                args = None
            calls.append(
                ToolCall(
                    id=tc.id or f"call_{len(calls)}",
                    name=tc.function.name,
                    args=args if isinstance(args, dict) else None,
                    raw=raw,
                )
            )
        usage = getattr(response, "usage", None)
        tokens = int(getattr(usage, "total_tokens", 0) or 0)
        hidden = getattr(response, "_hidden_params", {}) or {}
        cost = hidden.get("response_cost")
        if cost is None:
            try:
                cost = self.litellm.completion_cost(completion_response=response)
            except Exception:  # no price known for this model: tokens are still charged
                cost = 0.0
        model = str(hidden.get("litellm_model_name") or getattr(response, "model", "") or self.models[0])
        return Reply(
            content=message.content or "",
            calls=calls,
            tokens=tokens,
            cost=float(cost or 0.0),
            model=model,
            input_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            output_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        )


class _Final:
    def __init__(self, value: Any) -> None:
        self.value = value


@dataclass
class _Session:
    """One task's conversation with the model (its only memory)."""

    task: TaskContext
    mode: Mode
    charge: bool
    messages: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0
    cost: float = 0.0
    rounds: int = 0
    vetoes: list[str] = field(default_factory=list)
    #: how each MCP tool call of the current turn went, by call id (for its progress line)
    tool_lines: dict[str, str] = field(default_factory=dict)


class LLMAgent:
    """A model (litellm) acting through delegate, ask, finish; reviews with approve/veto.
    Offline without a model."""

    def __init__(self, brief: Brief, *, system: str = "", ignore_options: tuple[str, ...] = ()) -> None:
        self.brief = brief
        self.system = system
        self.options = load_options(brief, ignore=ignore_options)
        unknown = [t for t in brief.tools if t not in EXTRA_TOOLS]
        if unknown:
            raise KindError(
                f"brief {brief.name!r}: field `tools`: unknown tool(s) {', '.join(unknown)}; "
                f"available: {', '.join(sorted(EXTRA_TOOLS)) or 'none'}"
            )
        self.extra: dict[str, Tool] = {t: EXTRA_TOOLS[t] for t in brief.tools}
        #: the brief's MCP servers' tools (connected by :meth:`serve`)
        self.mcp = McpTools(brief)
        self.models = brief.models()
        self.client = (
            ModelClient(self.models, temperature=brief.temperature, options=self.options) if self.models else None
        )
        self._mock_position: dict[tuple[str, Mode], int] = {}
        #: with a model it reworks with its reviewers' reasons itself (a brief's
        #: `review_results`); offline, mesh.kinds.ReviewedResults does the review
        self.handles_review_results = self.client is not None
        if self.client is None:
            log.info("no model configured: working offline", agent=brief.name)

    # --- the worker interface ---------------------------------------------------------

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Hold the brief's MCP servers' connections while the agent runs."""
        await self.mcp.serve(task_status=task_status)

    async def work(self, task: TaskContext) -> Any:
        if review_request(task.data) is not None:
            verdict = await self.judge(reviewed_record(task), task, charge=True)
            return {"approve": verdict.approve, "reasons": list(verdict.reasons)}
        if self.client is None:
            return await self.offline(task)
        return await self._work(task)

    async def review(self, task: TaskContext) -> Verdict:
        try:
            return await self.judge(task.record, task, charge=False)
        except Exception as exc:  # a reviewer that cannot judge must not approve, nor crash its agent
            log.warning("review failed", task=task.record.id, error=str(exc))
            return Verdict(approve=False, reasons=(f"{self.brief.name} could not review this result: {exc}",))

    async def judge(self, record: TaskRecord, task: TaskContext, *, charge: bool) -> Verdict:
        """Review ``record``'s result (with the model, or by rules when offline)."""
        if self.client is None:
            reasons = self.findings(record)
            return Verdict(approve=not reasons, reasons=tuple(reasons))
        return await self._judge(record, task, charge=charge)

    def findings(self, record: TaskRecord) -> list[str]:
        """Flaws a program can find; the model is shown them, offline they decide."""
        reasons = criteria_flaws(record)
        if record.result is None or not str(record.result).strip():
            reasons.insert(0, "the result is empty")
        return reasons

    # --- offline ----------------------------------------------------------------------

    async def offline(self, task: TaskContext) -> Any:
        """No model configured: hand the task to the first delegate, or summarize its
        text extractively; either way say so."""
        await task.progress("offline: no model configured (set `model` in the brief or MESH_MODEL)")
        if self.brief.delegates and task.record.hops_left > 0:
            to = self.brief.delegates[0]
            child = await task.delegate(
                to, task.instruction, data=task.data, criteria=task.record.criteria, review=self.brief.review
            )
            if child.state != "done":
                raise TaskFailed(f"{to} task {child.id} ended {child.state}: {child.reason} {child.error}".strip())
            return child.result
        text = (
            task.data.get("text") if isinstance(task.data, dict) else task.data if isinstance(task.data, str) else None
        )
        body = summarize(str(text), 3) if text else task.instruction
        return f"{body}\n[offline: {self.brief.name} has no model configured; this is {'an extractive summary of the input' if text else 'the instruction, unchanged'}]"

    # --- the model loop ---------------------------------------------------------------

    async def _work(self, task: TaskContext) -> Any:
        children = await task.children()
        can_delegate = task.record.hops_left > 0
        tools = protocol_tools(mode="work", delegates=self.brief.delegates, can_delegate=can_delegate)
        tools += [t.schema for t in self.extra.values()] + self.mcp.schemas()
        session = self._session(
            task,
            "work",
            tools,
            can_delegate=can_delegate,
            charge=True,
            prompt=task_prompt(task.record, children=children, now=time.time(), data_chars=self.options.data_chars),
        )
        for turn in range(1, self.options.max_turns + 1):
            reply = await self._call(session, tools)
            session.messages.append(reply.message())
            if not reply.calls:
                if reply.content.strip():  # a plain answer is the result
                    outcome = await self._finish(session, reply.content.strip())
                    if isinstance(outcome, _Final):
                        return outcome.value
                    session.messages.append({"role": "user", "content": outcome})
                else:
                    session.messages.append(
                        {"role": "user", "content": "Use your tools: call `finish` with the result."}
                    )
                continue
            for call in reply.calls:
                outcome = await self._act(session, call)
                if isinstance(outcome, _Final):
                    return outcome.value
                session.messages.append({"role": "tool", "tool_call_id": call.id, "content": outcome})
            said = ", ".join(session.tool_lines.pop(c.id, c.name) for c in reply.calls)
            await task.progress(f"turn {turn}: {said} ({reply.model})")
        raise TaskFailed(
            f"no result after {self.options.max_turns} model turns (the brief's options.max_turns)", reason="budget"
        )

    def _session(
        self,
        task: TaskContext,
        mode: Mode,
        tools: list[dict[str, Any]],
        *,
        can_delegate: bool,
        charge: bool,
        prompt: str,
    ) -> _Session:
        """A conversation that opens with the brief's system prompt and the task (or review) prompt."""
        system = system_prompt(
            self.brief,
            mode=mode,
            tools=[t["function"]["name"] for t in tools],
            can_delegate=can_delegate,
            preface=self.system,
        )
        messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
        return _Session(task=task, mode=mode, charge=charge, messages=messages)

    async def _judge(self, record: TaskRecord, task: TaskContext, *, charge: bool) -> Verdict:
        tools = protocol_tools(mode="review", delegates=(), can_delegate=False) + [
            t.schema for t in self.extra.values()
        ]
        tools += self.mcp.schemas()
        session = self._session(
            task,
            "review",
            tools,
            can_delegate=False,
            charge=charge,
            prompt=review_prompt(record, data_chars=self.options.data_chars, findings=self.findings(record)),
        )
        for _ in range(self.options.max_turns):
            reply = await self._call(session, tools)
            session.messages.append(reply.message())
            if not reply.calls:
                session.messages.append(
                    {"role": "user", "content": "Give your verdict: call `approve`, or `veto` with reasons."}
                )
                continue
            for call in reply.calls:
                outcome = await self._act(session, call)
                if isinstance(outcome, _Final):
                    verdict: Verdict = outcome.value
                    log.info(
                        "verdict", task=record.id, approve=verdict.approve, reasons=verdict.reasons, model=reply.model
                    )
                    return verdict
                session.messages.append({"role": "tool", "tool_call_id": call.id, "content": outcome})
        return Verdict(
            approve=False, reasons=(f"{self.brief.name} reached no verdict in {self.options.max_turns} model turns",)
        )

    async def _call(self, session: _Session, tools: list[dict[str, Any]]) -> Reply:
        """One model call within the task's deadline and budgets; usage is charged."""
        assert self.client is not None
        task, record = session.task, session.task.record
        patience = self.options.timeout_s * (self.options.retries + 1) * len(self.models) + 5.0
        if record.deadline is not None:
            left = record.deadline - time.time()
            if left <= 0:
                raise TaskFailed("the deadline passed before the model was asked")
            patience = min(patience, left)
        max_tokens = self.options.max_tokens
        for limit, used in self._token_limits(session):
            if limit - used <= 0:
                raise TaskFailed(f"no tokens left in the budget ({used} of {limit} spent)", reason="budget")
            max_tokens = min(max_tokens, limit - used)
        turn = self._next_mock(record, session.mode)
        model = self.client.models[0]
        try:
            with task.model_call(
                model=model, provider=_provider(model), max_tokens=max_tokens, temperature=self.client.temperature
            ) as call:
                reply = await self.client.complete(
                    session.messages, tools, max_tokens=max_tokens, patience=patience, turn=turn
                )
                call.usage(
                    input_tokens=reply.input_tokens, output_tokens=reply.output_tokens, response_model=reply.model
                )
        except ModelFailed as exc:
            log.warning("model call failed", task=record.id, error=str(exc))
            raise TaskFailed(str(exc), reason="error") from None
        log.info(
            "model answered",
            task=record.id,
            model=reply.model,
            tokens=reply.tokens,
            cost=reply.cost,
            tools=[c.name for c in reply.calls],
        )
        session.tokens += reply.tokens
        session.cost += reply.cost
        if session.charge:
            # past the task's budget: Lost, task failed(budget)
            await task.charge(tokens=reply.tokens, cost=reply.cost, note=f"turn {turn}: {reply.model}")
        own = self.brief.budget
        if own is not None and (
            (own.tokens is not None and session.tokens > own.tokens)
            or (own.cost is not None and session.cost > own.cost)
        ):
            raise TaskFailed(
                f"{self.brief.name}'s own budget per task is spent ({session.tokens} tokens, {session.cost:.6f} USD)",
                reason="budget",
            )
        return reply

    def _token_limits(self, session: _Session) -> list[tuple[int, int]]:
        out = []
        record = session.task.record
        if session.charge and record.budget is not None and record.budget.tokens is not None:
            out.append((record.budget.tokens, record.spent.tokens))
        if self.brief.budget is not None and self.brief.budget.tokens is not None:
            out.append((self.brief.budget.tokens, session.tokens))
        return out

    def _next_mock(self, record: TaskRecord, mode: Mode) -> Any:
        """The next scripted reply for this task (a rework continues its script)."""
        script = self.options.mock_responses
        if script is None:
            return None
        if isinstance(script, dict):
            script = script.get(record.capability, [])
        key = (record.id, mode)
        position = self._mock_position.get(key, 0)
        self._mock_position[key] = position + 1
        if position >= len(script):
            raise TaskFailed(f"options.mock_responses has {len(script)} replies; call {position + 1} has none")
        return script[position]

    # --- acting on the model's tool calls --------------------------------------------

    async def _act(self, session: _Session, call: ToolCall) -> str | _Final:
        task, args = session.task, call.args
        if args is None:
            return f"error: the arguments of {call.name} are not a JSON object: {call.raw[:200]}"
        allowed = {"approve", "veto"} if session.mode == "review" else {"delegate", "ask", "finish", "decline"}
        try:
            if call.name in self.extra:
                try:
                    return await self.extra[call.name].call(args)
                except Exception as exc:  # a tool's failure is the model's information, not the task's end
                    return f"error: {call.name} failed: {type(exc).__name__}: {exc}"
            if call.name in self.mcp.tools:
                return await self._mcp_call(session, call, args)
            if call.name not in allowed:
                known = allowed | set(self.extra) | set(self.mcp.tools)
                return f"error: there is no tool {call.name!r} here; use one of: {', '.join(sorted(known))}"
            match call.name:
                case "approve":
                    return _Final(Verdict(approve=True))
                case "veto":
                    reasons = tuple(str(r).strip() for r in args.get("reasons") or () if str(r).strip())
                    if not reasons:
                        return "error: a veto needs at least one specific reason; call veto again with `reasons`"
                    return _Final(Verdict(approve=False, reasons=reasons))
                case "delegate":
                    return await self._delegate(task, args)
                case "ask":
                    try:
                        answer = await task.ask(str(args["question"]))
                    except TaskFailed as exc:
                        return f"no answer: {exc}"
                    return json.dumps({"answer": answer})
                case "finish":
                    return await self._finish(session, args.get("result", ""))
                case _:  # decline
                    raise TaskFailed(
                        f"declined by {self.brief.name}: {args.get('reason', 'no reason given')}", reason="rejected"
                    )
        except KeyError as exc:
            return f"error: {call.name} needs the argument {exc}"

    async def _mcp_call(self, session: _Session, call: ToolCall, args: dict[str, Any]) -> str:
        """Call an MCP tool within the task's deadline; what it reports it cost is
        charged; how it went (name, arguments' digest, outcome, duration) goes into
        the turn's progress line and the log."""
        task = session.task
        left = None if task.record.deadline is None else task.record.deadline - time.time()
        outcome = await self.mcp.call(call.name, args, within=left)
        ms = outcome.seconds * 1000
        session.tool_lines[call.id] = f"{call.name} ({digest(args)}) {outcome.status} in {ms:.0f} ms"
        log.info(
            "mcp tool called",
            task=task.record.id,
            tool=call.name,
            args=digest(args),
            status=outcome.status,
            ms=round(ms, 1),
            tokens=outcome.tokens,
            cost=outcome.cost,
        )
        session.tokens += outcome.tokens
        session.cost += outcome.cost
        if session.charge and (outcome.tokens or outcome.cost):
            # past the budget: Lost, failed(budget)
            await task.charge(tokens=outcome.tokens, cost=outcome.cost, note=f"mcp {session.tool_lines[call.id]}")
        return outcome.text

    async def _delegate(self, task: TaskContext, args: dict[str, Any]) -> str:
        capability, instruction = str(args["capability"]), str(args["instruction"])
        review = self.brief.review
        asked = args.get("review")
        if review is None and isinstance(asked, dict):
            try:
                review = ReviewPolicy(
                    quorum=int(asked.get("quorum", 1)), capability=str(asked.get("capability", "review"))
                )
            except (TypeError, ValueError):
                review = ReviewPolicy()
        try:
            child = await task.delegate(
                capability, instruction, data=args.get("data"), criteria=str(args.get("criteria", "")), review=review
            )
        except (RoleViolation, LocalProtocolError) as exc:  # not allowed, or not a valid capability
            return f"refused: {exc}"
        return json.dumps(
            {
                "task": child.id,
                "state": child.state,
                "result": child.result,
                "reason": child.reason,
                "error": child.error,
            },
            default=str,
        )

    async def _finish(self, session: _Session, result: Any) -> str | _Final:
        policy = self.brief.review_results
        if policy is None:
            return _Final(result)
        verdict = await request_review(session.task, result, policy, round=session.rounds)
        if verdict.approve:
            return _Final(result)
        session.rounds += 1
        session.vetoes += verdict.reasons
        if session.rounds > policy.max_reworks:
            return _Final(await settle_rejected(session.task, result, tuple(session.vetoes), policy))
        return (
            "Reviewers vetoed your result:\n"
            + "\n".join(f"- {r}" for r in verdict.reasons)
            + ("\nRevise it to address every point, then call finish again.")
        )
