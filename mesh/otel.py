"""OpenTelemetry: task spans exported from the events stream, model-call spans from agents.

Two producers, one trace (docs/ARCHITECTURE.md, "Traces"):

- ``mesh otel export`` (:func:`export_task_spans`) follows the events stream and sends
  one span per task (mesh/spans.py builds them), with the task's own traceparent ids;
- an agent whose process has ``OTEL_*`` settings sends a span per model call
  (:func:`model_call`, through :meth:`mesh.TaskContext.model_call`), the child of its
  task's span, with the GenAI semantic conventions.

Configuration is OpenTelemetry's own environment variables (``OTEL_SERVICE_NAME``,
``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_PROTOCOL`` = ``http/protobuf`` or
``grpc``, ``OTEL_TRACES_EXPORTER``, ``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``...). The SDK
is the ``otel`` extra and is imported only where spans are made: an agent with no
``OTEL_*`` setting imports nothing and pays one dictionary lookup per model call. A
setting that cannot work (an endpoint that is not a URL, an unknown protocol, the extra
missing) is a warning; the agent works on, without spans.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import structlog

from .spans import SpanBuilder, TaskSpan, span_ids

if TYPE_CHECKING:
    from protocol import TaskEvent

    from .client import Mesh

__all__ = [
    "ModelCall",
    "OtelUnavailable",
    "TaskSpanSink",
    "TraceSettings",
    "export_task_spans",
    "model_call",
    "task_span_sink",
    "trace_settings",
    "tracing_wanted",
]

log = structlog.get_logger("mesh.otel")

INSTALL_HINT = "pip install 'agent-mesh[otel]'"
SCOPE = "agent-mesh"

#: settings that ask a process for traces (any one of them)
_ASKING = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER")
_EXPORTERS = ("otlp", "console", "none")
_PROTOCOLS = ("http/protobuf", "grpc")


class OtelUnavailable(Exception):
    """The ``otel`` extra is not installed."""


@dataclass(frozen=True)
class TraceSettings:
    """What the ``OTEL_*`` variables ask for, checked. ``problems`` are said as warnings;
    ``enabled`` is False when no spans can be sent (disabled, or an unusable endpoint)."""

    enabled: bool
    exporter: str = "otlp"
    protocol: str = "http/protobuf"
    endpoint: str | None = None
    problems: tuple[str, ...] = ()


def tracing_wanted(env: Mapping[str, str]) -> bool:
    """Whether ``env`` asks for traces at all (an agent with none of these imports nothing)."""
    return any(env.get(name) for name in _ASKING) and env.get("OTEL_SDK_DISABLED", "").lower() != "true"


def trace_settings(env: Mapping[str, str]) -> TraceSettings:
    problems: list[str] = []
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return TraceSettings(enabled=False)
    exporter = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    chosen = [e.strip() for e in exporter.split(",") if e.strip()]
    usable = [e for e in chosen if e in _EXPORTERS]
    if len(usable) != len(chosen):
        problems.append(
            f"OTEL_TRACES_EXPORTER={exporter!r}: agent-mesh sends spans with otlp or console (or none); using "
            f"{usable[0] if usable else 'otlp'}"
        )
    exporter = usable[0] if usable else "otlp"
    if exporter == "none":
        return TraceSettings(enabled=False, exporter="none", problems=tuple(problems))
    name = (
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
        if env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        else "OTEL_EXPORTER_OTLP_PROTOCOL"
    )
    protocol = env.get(name, "http/protobuf").strip().lower() or "http/protobuf"
    if protocol not in _PROTOCOLS:
        problems.append(f"{name}={protocol!r} is not supported here (use http/protobuf or grpc); using http/protobuf")
        protocol = "http/protobuf"
    name = (
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        else "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    endpoint = env.get(name, "").strip() or None
    if exporter == "otlp" and endpoint is not None:
        url = urllib.parse.urlsplit(endpoint)
        try:
            port_ok = url.port is None or 0 < url.port
        except ValueError:
            port_ok = False
        if url.scheme not in ("http", "https") or not url.hostname or not port_ok:
            problems.append(
                f"{name}={endpoint!r} is not an http:// or https:// URL with a host (e.g. http://collector:4318): "
                "no spans are sent"
            )
            return TraceSettings(enabled=False, protocol=protocol, endpoint=endpoint, problems=tuple(problems))
    return TraceSettings(
        enabled=True, exporter=exporter, protocol=protocol, endpoint=endpoint, problems=tuple(problems)
    )


def _warn(settings: TraceSettings, who: str) -> None:
    for problem in settings.problems:
        log.warning("OpenTelemetry setting ignored", problem=problem, process=who)


def _span_exporter(settings: TraceSettings) -> Any:
    """The SDK exporter the settings name; it reads its own OTEL_EXPORTER_OTLP_* details
    (endpoint, headers, timeout, certificates, compression)."""
    if settings.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )
    return OTLPSpanExporter()


def _provider(attributes: dict[str, str], *, exporter: Any, id_generator: Any = None, batch: bool = True) -> Any:
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as exc:
        raise OtelUnavailable(f"OpenTelemetry export needs the otel extra ({INSTALL_HINT}): {exc}") from None
    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME, but what it is
    # given wins over them: our default name only where the operator set none.
    if os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        attributes = {k: v for k, v in attributes.items() if k != "service.name"}
    provider = TracerProvider(resource=Resource.create(attributes), id_generator=id_generator)
    provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    return provider


# --- model-call spans, in an agent's process ---------------------------------------------


class ModelCall:
    """One model call's span (a no-op when the process sends no traces): enter it around
    the call, then report what came back with :meth:`usage`."""

    __slots__ = ("_span",)

    def __init__(self, span: Any = None) -> None:
        self._span = span

    def __enter__(self) -> ModelCall:
        return self

    def usage(self, *, input_tokens: int = 0, output_tokens: int = 0, response_model: str = "") -> None:
        if self._span is None:
            return
        self._span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
        self._span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
        if response_model:
            self._span.set_attribute("gen_ai.response.model", response_model)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._span is None:
            return
        if exc is not None:
            from opentelemetry.trace import Status, StatusCode

            self._span.set_attribute("error.type", type(exc).__qualname__)
            self._span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
        self._span.end()


_NO_CALL = ModelCall()


class _AgentTracing:
    """A process's tracer for model calls, made on first use (or None: no traces)."""

    tracer: Any = None
    decided = False


def _agent_tracer(agent: str) -> Any:
    if _AgentTracing.decided:
        return _AgentTracing.tracer
    _AgentTracing.decided = True
    if not tracing_wanted(os.environ):
        return None
    settings = trace_settings(os.environ)
    _warn(settings, agent)
    if not settings.enabled:
        return None
    try:
        provider = _provider({"service.name": SCOPE, "mesh.agent": agent}, exporter=_span_exporter(settings))
    except (ImportError, OtelUnavailable) as exc:
        log.warning(
            "OTEL_* settings ask for traces but OpenTelemetry is not installed; no model-call spans",
            fix=INSTALL_HINT,
            error=str(exc),
        )
        return None
    _AgentTracing.tracer = provider.get_tracer(SCOPE)
    log.info("sending model-call spans", exporter=settings.exporter, protocol=settings.protocol)
    return _AgentTracing.tracer


def model_call(
    trace: str | None,
    *,
    agent: str,
    model: str,
    provider: str,
    max_tokens: int | None = None,
    temperature: float | None = None,
) -> ModelCall:
    """A span for one model call, child of the task whose traceparent is ``trace``
    (GenAI semantic conventions: ``chat <model>``, kind client)."""
    tracer = _agent_tracer(agent)
    if tracer is None:
        return _NO_CALL
    from opentelemetry import trace as api
    from opentelemetry.context import Context

    context = Context()
    ids = span_ids(trace)
    if ids is not None:
        parent = api.SpanContext(
            int(ids[0], 16), int(ids[1], 16), is_remote=True, trace_flags=api.TraceFlags(api.TraceFlags.SAMPLED)
        )
        context = api.set_span_in_context(api.NonRecordingSpan(parent), context)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,  # the older name, still read by many backends
        "gen_ai.request.model": model,
        "mesh.agent": agent,
    }
    if max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = max_tokens
    if temperature is not None:
        attributes["gen_ai.request.temperature"] = temperature
    span = tracer.start_span(f"chat {model}", context=context, kind=api.SpanKind.CLIENT, attributes=attributes)
    return ModelCall(span)


# --- task spans, in the exporter's process -----------------------------------------------


class TaskSpanSink:
    """Turns :class:`~mesh.spans.TaskSpan` into SDK spans with the task's own ids."""

    def __init__(self, provider: Any, ids: Any) -> None:
        self.provider, self._ids = provider, ids
        self._tracer = provider.get_tracer(SCOPE)
        self.sent = 0

    def emit(self, span: TaskSpan) -> None:
        from opentelemetry import trace as api
        from opentelemetry.context import Context
        from opentelemetry.trace import Status, StatusCode

        trace_id, span_id = int(span.trace_id, 16), int(span.span_id, 16)
        context = Context()
        if span.parent_span_id is not None:
            parent = api.SpanContext(
                trace_id, int(span.parent_span_id, 16), is_remote=True, trace_flags=api.TraceFlags(1)
            )
            context = api.set_span_in_context(api.NonRecordingSpan(parent), context)
        self._ids.next = (trace_id, span_id)
        otel_span = self._tracer.start_span(
            span.name, context=context, attributes=span.attributes, start_time=_ns(span.start)
        )
        for event in span.events:
            otel_span.add_event(event.name, event.attributes, timestamp=_ns(event.at))
        if span.error is not None:
            otel_span.set_status(Status(StatusCode.ERROR, span.error))
        otel_span.end(end_time=_ns(span.end))
        self.sent += 1

    def close(self) -> None:
        """Send what is batched, then stop."""
        self.provider.shutdown()


def task_span_sink(exporter: Any = None, *, env: Mapping[str, str] | None = None) -> TaskSpanSink:
    """A sink sending to ``exporter`` as each span ends (tests: an in-memory exporter), or
    by default to what the ``OTEL_*`` settings name, in batches. Raises
    :class:`OtelUnavailable` without the extra."""
    try:
        from opentelemetry.sdk.trace.id_generator import IdGenerator
    except ImportError as exc:
        raise OtelUnavailable(f"`mesh otel export` needs the otel extra ({INSTALL_HINT}): {exc}") from None

    class TaskIds(IdGenerator):
        """Hands the SDK the ids of the task whose span is being made."""

        next: tuple[int, int] = (0, 0)

        def generate_trace_id(self) -> int:
            return self.next[0]

        def generate_span_id(self) -> int:
            return self.next[1]

    batch = exporter is None
    if exporter is None:
        settings = trace_settings(os.environ if env is None else env)
        _warn(settings, "exporter")
        if not settings.enabled:
            raise OtelUnavailable(
                "the OTEL_* settings turn traces off (OTEL_SDK_DISABLED, OTEL_TRACES_EXPORTER=none, or an "
                "unusable endpoint): nothing to export to"
            )
        exporter = _span_exporter(settings)
    ids = TaskIds()
    return TaskSpanSink(_provider({"service.name": SCOPE}, exporter=exporter, id_generator=ids, batch=batch), ids)


async def export_task_spans(
    mesh: Mesh, sink: TaskSpanSink, *, history: bool = False, on_span: Callable[[TaskSpan], None] | None = None
) -> None:
    """Follow the events stream (``history``: every stored event first) and send one
    span per task that ends, until cancelled. A parent task whose span id was not seen
    in the stream (it started before we followed) is read from the mesh."""
    builder = SpanBuilder()
    async with mesh.backing() as backing:
        async for event in mesh.events(history=history):
            if not await backing.backed(event):
                # Events are unsigned: one no verified write shows would be exported as
                # the task's (an end with whatever record it carries, a claim by anyone).
                # Left out; the real ones follow.
                log.warning("an event no verified write shows: not exported", task=event.task, actor=event.actor)
                continue
            await _export(mesh, builder, event, sink, on_span)


async def _export(
    mesh: Mesh,
    builder: SpanBuilder,
    event: TaskEvent,
    sink: TaskSpanSink,
    on_span: Callable[[TaskSpan], None] | None,
) -> None:
    from protocol import RemoteProtocolError

    from .bus import MeshError

    for span in builder.feed(event):
        if not span.whole:
            await _complete(mesh, span)
        if span.parent_task is not None and span.parent_span_id is None:
            try:
                parent = await mesh.get(span.parent_task, root=span.root)
            except (MeshError, RemoteProtocolError) as exc:
                log.info("parent task not found: its child's span is a root", task=span.task, error=str(exc))
            else:
                ids = span_ids(parent.trace)
                span.parent_span_id = None if ids is None else ids[1]
        sink.emit(span)
        if on_span is not None:
            on_span(span)


async def _complete(mesh: Mesh, span: TaskSpan) -> None:
    """Fill in the transitions of a task that began before we followed the stream,
    from the events the stream still holds for it (one read, only for such tasks)."""
    from protocol import RemoteProtocolError, decode_event

    from .bus import MeshError

    try:
        stored = await mesh.bus.stored(mesh.names.events_stream, mesh.names.task_events_filter(span.task, span.root))
    except MeshError as exc:
        log.info(
            "a task's earlier events could not be read: its span has only the later ones",
            task=span.task,
            error=str(exc),
        )
        return
    events = []
    for data in stored:
        with contextlib.suppress(RemoteProtocolError):
            events.append(decode_event(data))
    unbacked = await mesh.unbacked(events)  # one archive walk, with identities
    again = SpanBuilder()
    for event in events:
        if (event.task, event.at, event.kind) in unbacked:
            continue
        for whole in again.feed(event):
            if whole.task == span.task:
                span.events, span.start, span.whole = whole.events, whole.start, whole.whole


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)
