"""A worker's side of trace propagation: run a call inside the caller's trace context.

When shoal is instrumented (``shoal.otel.instrument()``), a call sent to another process
carries the W3C trace context of its call span (``traceparent``, ``tracestate``: see
:attr:`shoal.executors.base.Call.trace`). The worker attaches it around the tool, so that
spans the tool makes with the OpenTelemetry API are children of that call span, in the same
trace, whatever provider the worker exports them with. Without a carrier, or without
OpenTelemetry in the worker, nothing is done and nothing is imported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["joined"]


@contextlib.contextmanager
def joined(carrier: Mapping[str, str] | None) -> Iterator[None]:
    """Run the block inside the trace context ``carrier`` holds (if any, and if it can be)."""
    token = _attach(carrier) if carrier else None
    try:
        yield
    finally:
        if token is not None:
            from opentelemetry import context

            context.detach(token)


def _attach(carrier: Mapping[str, str]) -> Any:
    try:
        from opentelemetry import context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:  # the worker's Python has no OpenTelemetry: its tool makes no spans
        return None
    try:
        return context.attach(TraceContextTextMapPropagator().extract(dict(carrier)))
    except Exception:  # a malformed carrier must never fail the call it came with
        return None
