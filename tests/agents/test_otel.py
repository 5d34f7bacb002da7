"""OpenTelemetry export: task spans built from the events stream of real agent
processes (checked with the SDK's in-memory exporter), the same spans and an LLM
agent's model-call spans received over OTLP/HTTP by a small receiver built on
opentelemetry-proto, bad OTEL_* settings, and no import at all when nothing asks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mesh.broker import Broker
from mesh.client import Mesh
from mesh.otel import export_task_spans, task_span_sink, trace_settings, tracing_wanted
from mesh.process import AgentProcess
from mesh.testing import AgentProcs, wait_for
from protocol import ReviewPolicy

PRIMARY = "openai/gpt-4o-mini"


def _attrs(span: Any) -> dict[str, Any]:
    return dict(span.attributes or {})


def _hex(n: int, width: int) -> str:
    return f"{n:0{width}x}"


# --- settings -----------------------------------------------------------------------------


def test_settings_that_cannot_work_are_problems_not_errors() -> None:
    assert not tracing_wanted({}) and not tracing_wanted({"OTEL_SERVICE_NAME": "x"})
    assert tracing_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert not tracing_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"})

    bad_url = trace_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector 4318"})
    assert not bad_url.enabled and "OTEL_EXPORTER_OTLP_ENDPOINT" in bad_url.problems[0]
    bad_port = trace_settings({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:99999"})
    assert not bad_port.enabled and "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" in bad_port.problems[0]

    json_protocol = trace_settings({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    assert json_protocol.enabled and json_protocol.protocol == "http/protobuf" and json_protocol.problems
    grpc = trace_settings({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_PROTOCOL": "x"})
    assert (grpc.enabled, grpc.protocol, grpc.problems) == (True, "grpc", ())
    unknown = trace_settings({"OTEL_TRACES_EXPORTER": "zipkin"})
    assert unknown.enabled and unknown.exporter == "otlp" and "zipkin" in unknown.problems[0]
    assert not trace_settings({"OTEL_TRACES_EXPORTER": "none"}).enabled


def test_nothing_is_imported_when_nothing_asks_for_traces() -> None:
    """An agent process without OTEL_* settings loads no OpenTelemetry module, even
    through a model call's span (a no-op then)."""
    code = (
        "import sys\n"
        "import mesh, mesh.agent, mesh.work, mesh.otel, mesh.cli.commands, agents.llm\n"
        "from mesh.otel import model_call\n"
        "with model_call('00-' + '1' * 32 + '-' + '2' * 16 + '-01', agent='a', model='m', provider='p') as call:\n"
        "    call.usage(input_tokens=1, output_tokens=2)\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]", out.stdout


# --- the span tree, in memory -------------------------------------------------------------


async def test_the_span_tree_of_a_delegated_reviewed_task(agent_procs: AgentProcs, mesh_client: Mesh) -> None:
    agent_procs.start("front", ["front"], kind="relay", delegates=["back"])
    agent_procs.start("back", ["back"], kind="echo")
    agent_procs.start("checker", ["review"], kind="check")
    await agent_procs.ready(mesh_client)
    memory = InMemorySpanExporter()
    sink = task_span_sink(memory)
    passed = await mesh_client.run("front", "pickle, please", review=1, criteria="must mention: pickle")
    rejected = await mesh_client.run(
        "front", "no such word", review=ReviewPolicy(quorum=1, max_reworks=1), criteria="must mention: pickle"
    )
    assert (passed.state, rejected.state, rejected.reason) == ("done", "failed", "rejected")
    trees = {r.id: await mesh_client.tree(r.id) for r in (passed, rejected)}
    wanted = {record.id for tree in trees.values() for _, record in tree}

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: export_task_spans(mesh_client, sink, history=True))
        await wait_for(
            lambda: wanted <= {_attrs(s)["mesh.task.id"] for s in memory.get_finished_spans()},
            what="a span for every task",
        )
        tg.cancel_scope.cancel()
    spans = {_attrs(s)["mesh.task.id"]: s for s in memory.get_finished_spans()}

    # The approved tree: the root task, and its child under it, in the root's trace.
    (_, root), (_, child) = trees[passed.id]
    root_span, child_span = spans[root.id], spans[child.id]
    trace_id, root_span_id = root.trace.split("-")[1:3]  # type: ignore[union-attr]
    assert _hex(root_span.context.trace_id, 32) == trace_id and _hex(root_span.context.span_id, 16) == root_span_id
    assert root_span.parent is None
    assert _hex(child_span.context.trace_id, 32) == trace_id
    assert child_span.parent is not None and _hex(child_span.parent.span_id, 16) == root_span_id
    assert _hex(child_span.context.span_id, 16) == child.trace.split("-")[2]  # type: ignore[union-attr]
    assert root_span.name == "task front" and child_span.name == "task back"
    attributes = _attrs(root_span)
    assert attributes["mesh.task.capability"] == "front" and attributes["mesh.task.owner"] == "front"
    assert (attributes["mesh.task.epoch"], attributes["mesh.task.attempts"]) == (root.epoch, root.attempts)
    assert attributes["mesh.task.result_bytes"] == len(b'"pickle, please"')
    assert attributes["mesh.task.state"] == "done" and attributes["mesh.task.approvals"] == 1
    assert attributes["mesh.task.tokens"] == 0 and "mesh.task.reason" not in attributes
    names = [e.name for e in root_span.events]
    assert "delegate" in names and "result" in names and names[-1] == "vote", names
    vote = root_span.events[-1]
    assert vote.attributes["mesh.actor"] == "checker" and vote.attributes["mesh.verdict"] == "approve"
    assert root_span.start_time <= child_span.start_time <= child_span.end_time <= root_span.end_time
    assert root_span.status.is_unset

    # The rejected one: vetoed, sent back (re-opened for rework), vetoed again, failed.
    rejected_span = spans[rejected.id]
    names = [e.name for e in rejected_span.events]
    assert names.count("veto") == 2 and "re-open" in names, names
    veto = next(e for e in rejected_span.events if e.name == "veto")
    assert "pickle" in veto.attributes["mesh.note"]
    assert not rejected_span.status.is_ok and rejected_span.status.description == "rejected"
    assert _attrs(rejected_span)["mesh.task.reason"] == "rejected" and _attrs(rejected_span)["mesh.task.reworks"] == 1
    sink.close()


async def test_a_task_begun_before_the_exporter_still_gets_its_whole_span(
    agent_procs: AgentProcs, mesh_client: Mesh
) -> None:
    """The exporter follows only new events here (no --history), and starts while the
    task runs: the transitions before it are read back from the stream."""
    agent_procs.start("sleeper", ["nap"], kind="sleep", options={"seconds": 3.0, "steps": 3})
    await agent_procs.ready(mesh_client)
    record = await mesh_client.submit("nap", "a while")

    async def progressed() -> bool:
        return (await mesh_client.get(record.id)).progress == "step 1/3"

    await wait_for(progressed, what="the task's first progress note")
    memory = InMemorySpanExporter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: export_task_spans(mesh_client, task_span_sink(memory)))
        await wait_for(lambda: memory.get_finished_spans(), timeout=30, what="the task's span")
        tg.cancel_scope.cancel()
    (span,) = memory.get_finished_spans()
    # The claim was written before the exporter started (progress notes are heartbeats
    # of the record, not events): it comes from the stream's stored events.
    assert [(e.name, e.attributes["mesh.actor"]) for e in span.events] == [("claim", "sleeper"), ("result", "sleeper")]
    assert span.start_time == int(record.created * 1e9)


# --- over OTLP, with an LLM agent's model calls --------------------------------------------


class Receiver:
    """An OTLP/HTTP trace receiver: decodes each export request with opentelemetry-proto."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, Any], Any]] = []
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = ExportTraceServiceRequest.FromString(body)
                with receiver.changed:
                    for resource_spans in request.resource_spans:
                        resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                        for scope in resource_spans.scope_spans:
                            receiver.spans += [(resource, span) for span in scope.spans]
                    receiver.changed.notify_all()
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def named(self, name: str) -> list[Any]:
        with self.changed:
            return [span for _, span in self.spans if span.name == name]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    thread = threading.Thread(target=r.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


def _attr(span: Any, key: str) -> Any:
    for a in span.attributes:
        if a.key == key:
            value = a.value
            return getattr(value, value.WhichOneof("value"))
    return None


def _exporter(broker: Broker, env: dict[str, str]) -> subprocess.Popen[str]:
    """`mesh otel export` as its own process."""
    return subprocess.Popen(
        [sys.executable, "-m", "mesh", "otel", "export", "--history", "--server", broker.url],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(process: subprocess.Popen[str]) -> str:
    """SIGTERM, as a service manager stops it; what it said on stderr."""
    process.send_signal(signal.SIGTERM)
    return process.communicate(timeout=30)[1]


@pytest.mark.slow
async def test_task_and_model_call_spans_reach_an_otlp_receiver(
    broker: Broker,
    agent_procs: AgentProcs,
    mesh_client: Mesh,
    start_agent: Callable[..., AgentProcess],
    receiver: Receiver,
) -> None:
    otel_env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    start_agent(
        "planner",
        kind="llm",
        model=PRIMARY,
        role="Planner",
        brief="Plan; delegate drafting.",
        serves=["plan"],
        delegates=["draft"],
        env=otel_env,
        options={
            "mock_responses": [
                {"tool": "delegate", "args": {"capability": "draft", "instruction": "Draft a haiku."}},
                {"tool": "finish", "args": {"result": "planned"}},
            ]
        },
    )
    start_agent("drafter", serves=["draft"], kind="echo")
    exporter = _exporter(broker, {**otel_env, "OTEL_SERVICE_NAME": "desk-traces"})
    try:
        await agent_procs.ready(mesh_client, "planner", "drafter", timeout=90)
        record = await mesh_client.run("plan", "Plan a poem.", deadline_s=60)
        assert record.state == "done", (record, agent_procs.log("planner")[-3000:])
        child = (await mesh_client.tree(record.id))[1][1]
        await wait_for(
            lambda: (
                len(receiver.named("task plan")) == 1
                and len(receiver.named("task draft")) == 1
                and len(receiver.named(f"chat {PRIMARY}")) == 2
            ),
            timeout=30,
            what="the task spans and both model-call spans at the receiver",
        )
    finally:
        err = _stop(exporter)
    assert exporter.returncode == 0, err
    assert "exported 2 task spans" in err

    trace_id, span_id = record.trace.split("-")[1:3]  # type: ignore[union-attr]
    (plan,) = receiver.named("task plan")
    (draft,) = receiver.named("task draft")
    assert (plan.trace_id.hex(), plan.span_id.hex(), plan.parent_span_id) == (trace_id, span_id, b"")
    assert (draft.trace_id.hex(), draft.parent_span_id.hex()) == (trace_id, span_id)
    assert draft.span_id.hex() == child.trace.split("-")[2]  # type: ignore[union-attr]
    assert _attr(plan, "mesh.task.tokens") == record.spent.tokens > 0
    assert [e.name for e in plan.events].count("charge") == 2
    resources = {span.name: resource for resource, span in receiver.spans}
    assert resources["task plan"]["service.name"] == "desk-traces"
    for call in receiver.named(f"chat {PRIMARY}"):
        # The model calls are children of the task they were made for, with GenAI attributes.
        assert (call.trace_id.hex(), call.parent_span_id.hex()) == (trace_id, span_id)
        assert call.kind == call.SPAN_KIND_CLIENT
        assert _attr(call, "gen_ai.operation.name") == "chat" and _attr(call, "gen_ai.request.model") == PRIMARY
        assert _attr(call, "gen_ai.provider.name") == "openai"
        assert _attr(call, "gen_ai.usage.input_tokens") + _attr(call, "gen_ai.usage.output_tokens") == 30
        assert plan.start_time_unix_nano <= call.start_time_unix_nano <= call.end_time_unix_nano
    assert resources[f"chat {PRIMARY}"]["mesh.agent"] == "planner"


async def test_task_spans_reach_an_otlp_grpc_receiver(
    broker: Broker, agent_procs: AgentProcs, mesh_client: Mesh
) -> None:
    """OTLP over gRPC, chosen by OTEL_EXPORTER_OTLP_PROTOCOL, to a receiver built on
    opentelemetry-proto's gRPC service."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    received: list[Any] = []

    class Traces(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            received.extend(span for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans)
            return ExportTraceServiceResponse()

    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    agent_procs.start("echoer", ["echo"], kind="echo")
    exporter = _exporter(
        broker,
        {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        },
    )
    try:
        await agent_procs.ready(mesh_client)
        record = await mesh_client.run("echo", "over grpc")
        await wait_for(lambda: any(s.name == "task echo" for s in received), timeout=30, what="the span over gRPC")
    finally:
        err = _stop(exporter)
        server.stop(None)
    assert exporter.returncode == 0, err
    (span,) = [s for s in received if s.name == "task echo"]
    assert (span.trace_id.hex(), span.span_id.hex()) == tuple(record.trace.split("-")[1:3])  # type: ignore[union-attr]
    assert _attr(span, "mesh.task.owner") == "echoer" and _attr(span, "mesh.task.state") == "done"


@pytest.mark.slow
async def test_bad_or_missing_otel_settings_warn_and_the_agent_works(
    agent_procs: AgentProcs, mesh_client: Mesh, start_agent: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    # An OpenTelemetry that cannot be imported, as where the extra is not installed.
    shadow = tmp_path / "no-otel"
    (shadow / "opentelemetry").mkdir(parents=True)
    (shadow / "opentelemetry" / "__init__.py").write_text("raise ImportError('the otel extra is not installed')\n")
    script = {"mock_responses": [{"tool": "finish", "args": {"result": "fine"}}]}
    start_agent(
        "bad-url",
        kind="llm",
        model=PRIMARY,
        serves=["one"],
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": "collector 4318"},
        options=script,
    )
    start_agent(
        "no-extra",
        kind="llm",
        model=PRIMARY,
        serves=["two"],
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "PYTHONPATH": str(shadow)},
        options=script,
    )
    await agent_procs.ready(mesh_client, timeout=90)
    for capability in ("one", "two"):
        record = await mesh_client.run(capability, "Do it.", deadline_s=60)
        assert (record.state, record.result) == ("done", "fine")
    assert "is not an http:// or https:// URL" in agent_procs.log("bad-url")
    assert "OpenTelemetry is not installed" in agent_procs.log("no-extra")
    assert "pip install 'agent-mesh[otel]'" in agent_procs.log("no-extra")


# --- the span builder alone ----------------------------------------------------------------


def _event(kind: str, of: Any, at: float, **fields: Any) -> Any:
    """A TaskEvent about task ``of`` (``record=`` attaches a record, as terminal events do)."""
    from protocol import TaskEvent

    values = {
        "kind": kind,
        "task": of.id,
        "root": of.root,
        "parent": of.parent,
        "capability": of.capability,
        "actor": "a",
        "state": of.state,
        "at": at,
    }
    return TaskEvent(**{**values, **fields})


def test_a_takeover_is_a_lapse_and_memory_is_bounded() -> None:
    import msgspec

    from mesh.spans import SpanBuilder
    from protocol import new_task, traceparent

    builder = SpanBuilder(max_open=2)
    task = new_task(
        task_id="t1", capability="x", instruction="i", requester="me", now=100.0, trace=traceparent("1" * 32, "2" * 16)
    )
    assert builder.feed(_event("created", task, 100.0, record=task)) == []
    assert builder.feed(_event("claim", task, 101.0, actor="a", epoch=1, state="working")) == []
    assert builder.feed(_event("claim", task, 105.0, actor="b", epoch=2, state="working")) == []
    done = msgspec.structs.replace(task, state="done", owner="b", epoch=2, attempts=2, lapses=1, result=[1, 2])
    (span,) = builder.feed(_event("finish", done, 106.0, actor="b", epoch=2, record=done))
    assert [e.name for e in span.events] == ["claim", "lapse", "claim", "result"]
    assert span.events[1].attributes["mesh.actor"] == "b"
    assert (span.start, span.end, span.trace_id, span.span_id) == (100.0, 106.0, "1" * 32, "2" * 16)
    assert span.attributes["mesh.task.lapses"] == 1 and span.attributes["mesh.task.result_bytes"] == len(b"[1,2]")
    assert builder.feed(_event("ended", done, 107.0, record=done)) == []  # one span per task

    # Past max_open unfinished tasks the oldest is forgotten: its span still comes, without its events.
    others = [msgspec.structs.replace(task, id=f"o{i}", root=f"o{i}") for i in range(3)]
    for other in others:
        builder.feed(_event("claim", other, 110.0, epoch=1, state="working"))
    assert builder.forgotten == 1
    first = msgspec.structs.replace(others[0], state="done")
    (span,) = builder.feed(_event("finish", first, 111.0, record=first))
    assert [e.name for e in span.events] == ["result"] and span.start == 100.0
