"""What OpenTelemetry export costs: the same no-op tasks with `mesh otel export` running
and not, in one run; and the cost of a model-call span in an agent, on and off.

Two brokers side by side, one echo agent process on each. On the "on" broker a `mesh
otel export` process follows the events stream and sends a span per task over
OTLP/HTTP (default batching) to a receiver in this process that decodes every request
(opentelemetry-proto) and counts the spans. The client alternates between the two in
blocks: sequential tasks (p50 latency), then a burst of concurrent ones (throughput),
so whatever else the machine does slows both alike. CPU per task: each broker's, each
agent's and the exporter's own.

The model-call span is timed in this process: `model_call(...)` entered and left with
its usage set, tracing off (what every agent without OTEL_* settings pays) against on
(a real SDK tracer with its batch processor sending to the receiver), alternating blocks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio

from bench.common import (
    AgentRun,
    Child,
    agent_runs,
    broker,
    child_env,
    cpu_seconds,
    dist_ms,
    progress,
    python,
    ratio,
    spread,
    tempdir,
    write_brief,
)
from bench.drive import mesh_concurrent, mesh_sequential

NAME = "otel"


class Receiver:
    """An OTLP/HTTP trace receiver that decodes each request and counts its spans."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        self.spans = 0
        self.requests = 0
        self.lock = threading.Lock()
        receiver = self
        reply = ExportTraceServiceResponse().SerializeToString()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = ExportTraceServiceRequest.FromString(
                    self.rfile.read(int(self.headers.get("Content-Length", "0")))
                )
                n = sum(len(s.spans) for rs in request.resource_spans for s in rs.scope_spans)
                with receiver.lock:
                    receiver.spans += n
                    receiver.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@contextmanager
def receiving() -> Iterator[Receiver]:
    r = Receiver()
    thread = threading.Thread(target=r.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


async def _measure(urls: dict[str, str], pids: dict[str, dict[str, int]], sizes: dict[str, int]) -> Any:
    from mesh.client import Mesh

    meshes = {mode: await Mesh.connect(url, client_id="bench-client") for mode, url in urls.items()}
    lat: dict[str, list[float]] = {"off": [], "on": []}
    rates: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, dict[str, float]] = {mode: dict.fromkeys(pids[mode], 0.0) for mode in pids}
    tasks: dict[str, int] = {"off": 0, "on": 0}
    paired: dict[str, list[float]] = {"p50": [], "rate": []}
    try:
        for mesh in meshes.values():  # warm-up: queues made, connections warm
            await mesh_sequential(mesh, sizes["warmup"])
            await mesh_concurrent(mesh, sizes["warmup"] * 4, 16)
            tasks["on" if mesh is meshes["on"] else "off"] += sizes["warmup"] * 5
        counted = dict(tasks)
        for block in range(sizes["blocks"]):
            block_p50: dict[str, float] = {}
            for mode in ("off", "on") if block % 2 == 0 else ("on", "off"):
                mesh = meshes[mode]
                before = {who: cpu_seconds(pid) for who, pid in pids[mode].items()}
                seq = await mesh_sequential(mesh, sizes["sequential"])
                lat[mode] += seq
                block_p50[mode] = dist_ms(seq)["p50"]
                burst = await mesh_concurrent(mesh, sizes["concurrent"], sizes["inflight"])
                rates[mode].append(burst["rate"])
                for who, pid in pids[mode].items():
                    cpu[mode][who] += cpu_seconds(pid) - before[who]
                tasks[mode] += sizes["sequential"] + sizes["concurrent"]
            paired["p50"].append(ratio(block_p50["on"], block_p50["off"]))
            paired["rate"].append(ratio(rates["on"][-1], rates["off"][-1]))
            progress(
                NAME,
                f"block {block + 1}/{sizes['blocks']}: p50 off {dist_ms(lat['off'])['p50']:.2f} ms, "
                f"on {dist_ms(lat['on'])['p50']:.2f} ms; rate off {rates['off'][-1]:.0f}/s, on {rates['on'][-1]:.0f}/s",
            )
    finally:
        for mesh in meshes.values():
            await mesh.close()
    p50 = {mode: dist_ms(v)["p50"] for mode, v in lat.items()}
    measured = {mode: tasks[mode] - counted[mode] for mode in tasks}
    return {
        "latency_ms": {mode: dist_ms(v) for mode, v in lat.items()},
        "rate_per_s": {mode: spread(v) for mode, v in rates.items()},
        "cpu_ms_per_task": {
            mode: {who: 1000 * s / max(measured[mode], 1) for who, s in cpu[mode].items()} for mode in cpu
        },
        "ratio_p50_on_off": ratio(p50["on"], p50["off"]),
        "ratio_rate_on_off": ratio(spread(rates["on"])["median"], spread(rates["off"])["median"]),
        "paired_ratio_p50_on_off": spread(paired["p50"]),
        "paired_ratio_rate_on_off": spread(paired["rate"]),
        "tasks_on": tasks["on"],
    }


def _model_call_cost(receiver: Receiver, calls: int, blocks: int) -> dict[str, Any]:
    """Microseconds per model-call span, tracing off vs on, alternating blocks."""
    import os

    from mesh import otel

    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.url
    try:
        provider = otel._provider(
            {"service.name": "bench"}, exporter=otel._span_exporter(otel.trace_settings(os.environ))
        )
    finally:
        del os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"]
    tracer = provider.get_tracer(otel.SCOPE)
    parent = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    per_call: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for block in range(blocks):
            for mode in ("off", "on") if block % 2 == 0 else ("on", "off"):
                otel._AgentTracing.decided, otel._AgentTracing.tracer = True, (tracer if mode == "on" else None)
                t0 = time.perf_counter()
                for _ in range(calls):
                    with otel.model_call(parent, agent="bench", model="m", provider="p", max_tokens=100) as call:
                        call.usage(input_tokens=10, output_tokens=20, response_model="m")
                per_call[mode].append((time.perf_counter() - t0) / calls * 1e6)
                # Untimed: the batch goes out between blocks, so no block meets a full
                # queue (spans dropped) or another block's export.
                provider.force_flush()
    finally:
        otel._AgentTracing.decided, otel._AgentTracing.tracer = False, None
        provider.shutdown()
    off, on = spread(per_call["off"]), spread(per_call["on"])
    return {"us_per_call": {"off": off, "on": on}, "on_minus_off_us": on["median"] - off["median"], "calls": calls}


def main(quick: bool = False) -> dict[str, Any]:
    sizes = (
        {"warmup": 3, "blocks": 2, "sequential": 10, "concurrent": 40, "inflight": 16, "calls": 200, "call_blocks": 2}
        if quick
        else {
            "warmup": 20,
            "blocks": 12,
            "sequential": 100,
            "concurrent": 500,
            "inflight": 64,
            "calls": 1000,
            "call_blocks": 20,
        }
    )
    with tempdir() as d, receiving() as receiver:
        echo = write_brief(d, "echo", ["echo"], kind="echo", capacity=64)
        with broker() as off_b, broker() as on_b:
            (d / "off").mkdir()
            (d / "on").mkdir()
            runs = [AgentRun(echo, off_b.url, "echo1", d / "off"), AgentRun(echo, on_b.url, "echo1", d / "on")]
            exporter = Child(
                "exporter",
                python("-m", "mesh", "otel", "export", "--history", "--server", on_b.url),
                env=child_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_SERVICE_NAME="bench"),
                log=d / "exporter.log",
            ).start()
            try:
                with agent_runs(runs):
                    progress(NAME, "two brokers, an echo agent on each, `mesh otel export` on one; alternating blocks")
                    assert off_b.process is not None and on_b.process is not None and exporter.proc is not None
                    pids = {
                        "off": {"broker": off_b.process.pid, "agent": runs[0].pid},
                        "on": {"broker": on_b.process.pid, "agent": runs[1].pid, "exporter": exporter.proc.pid},
                    }
                    result: dict[str, Any] = anyio.run(_measure, {"off": off_b.url, "on": on_b.url}, pids, sizes)
            finally:
                exporter.stop()
        # The exporter flushes its batch when stopped: every task should have its span.
        result["spans_received"] = receiver.spans
        result["export_requests"] = receiver.requests
        result["model_call"] = _model_call_cost(receiver, sizes["calls"], sizes["call_blocks"])
    result["sizes"] = sizes
    result["setup"] = (
        "2 brokers, 1 echo agent process (capacity 64) on each, the client in the bench process; on one broker "
        "`mesh otel export` sends a span per task over OTLP/HTTP (default batch settings) to a receiver in the "
        "bench process; sequential p50 and concurrent bursts, interleaved"
    )
    progress(
        NAME,
        f"task spans received {result['spans_received']} for {result['tasks_on']} tasks; model-call span "
        f"{result['model_call']['us_per_call']['off']['median']:.2f} us off, "
        f"{result['model_call']['us_per_call']['on']['median']:.1f} us on",
    )
    return result
