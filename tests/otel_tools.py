"""Tools for tests/test_otel.py that run in other processes (process workers, Ray workers).

Each makes a span of its own with the OpenTelemetry API, as a user's tool would, and exports
it from the worker over OTLP/HTTP to the endpoint it is given (one provider per process and
endpoint, exporting each span as it ends). The span's parent is whatever context the worker
runs the tool in: shoal's call span, when the trace context came along with the call.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import shoal

_tracers: dict[str, Any] = {}


def _tracer(endpoint: str) -> Any:
    tracer = _tracers.get(endpoint)
    if tracer is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": "shoal-worker"}))
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint,
                                                                         timeout=10)))
        tracer = _tracers[endpoint] = provider.get_tracer("tests.otel_tools")
    return tracer


def _work(endpoint: str, label: str) -> int:
    with _tracer(endpoint).start_as_current_span(f"worker {label}") as span:
        span.set_attribute("worker.pid", os.getpid())
    return os.getpid()


@shoal.tool(isolation="process")
def traced_in_worker(endpoint: str, label: str) -> int:
    """Make a span named ``worker {label}`` in this worker; return the worker's pid."""
    return _work(endpoint, label)


@shoal.tool(isolation="process")
async def traced_in_worker_async(endpoint: str, label: str) -> int:
    """:func:`traced_in_worker` as an async tool (it runs on the worker's own loop)."""
    await asyncio.sleep(0)
    return _work(endpoint, label)


def _current() -> tuple[int, int]:
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return context.trace_id, context.span_id


@shoal.tool
def current_trace() -> tuple[int, int]:
    """The trace and span ids of the span current where this runs (zeros: none)."""
    return _current()


@shoal.tool
async def current_trace_async() -> tuple[int, int]:
    """:func:`current_trace` as an async tool."""
    return _current()
