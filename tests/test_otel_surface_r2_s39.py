"""Found by attacking shoal's OpenTelemetry spans, session 39 (second round): a span processor
that raises what is not an ``Exception`` (``GeneratorExit``, ``KeyboardInterrupt`` from a
signal handler) as a span ends.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import shoal
from shoal import Plan, Runtime
from shoal.testing import run_virtual
from tests.test_otel import nap

ROOT = Path(__file__).resolve().parent.parent
ENDED_TWICE = "Calling end() on an ended span"


class RaisingOnEnd(SpanProcessor):
    """Raises ``error`` as the span named ``name`` ends (after the exporter has it)."""

    def __init__(self, name: str, error: type[BaseException]) -> None:
        self.name = name
        self.error = error

    def on_end(self, span: ReadableSpan) -> None:
        if span.name == self.name:
            raise self.error()


def instrumented(name: str, error: type[BaseException]) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.add_span_processor(RaisingOnEnd(name, error))
    shoal.otel.instrument(provider)
    try:
        yield exporter
    finally:
        shoal.otel.uninstrument()
        provider.shutdown()


@pytest.fixture
def exit_on_call() -> Iterator[InMemorySpanExporter]:
    yield from instrumented("execute_tool nap", GeneratorExit)


@pytest.fixture
def exit_on_run() -> Iterator[InMemorySpanExporter]:
    yield from instrumented("shoal.run", GeneratorExit)


def statuses(exporter: InMemorySpanExporter) -> list[tuple[str, object]]:
    return sorted((s.name, (s.attributes or {}).get("shoal.call.status"))
                  for s in exporter.get_finished_spans())


def test_a_call_span_whose_end_raises_generator_exit_is_ended_once(
        exit_on_call: InMemorySpanExporter, caplog: pytest.LogCaptureFixture) -> None:
    # was: the call's span stayed in shoal's open spans; the run's end ended it again
    # ("Calling end() on an ended span", once per call) and the second call's span was
    # never ended by its own NodeFinished
    plan = Plan()
    a = plan.call(nap, seconds=0.5, tag="a")
    plan.call(nap, seconds=0.5, tag=a)
    with caplog.at_level(logging.WARNING):
        result = run_virtual(shoal.run(plan))
    assert result.ok
    assert ENDED_TWICE not in caplog.text
    assert statuses(exit_on_call) == [("execute_tool nap", "ok"), ("execute_tool nap", "ok"),
                                      ("shoal.run", None)]
    run_span = next(s for s in exit_on_call.get_finished_spans() if s.name == "shoal.run")
    assert run_span.status.is_ok  # the run did not fail: its calls are not 'cancelled'


def test_a_run_span_whose_end_raises_generator_exit_leaves_a_cancelled_run_cancelled(
        exit_on_run: InMemorySpanExporter) -> None:
    # was: the GeneratorExit raised ending the span of a run cancelled from outside escaped
    # (only Exception was caught): the caller awaiting the run got it, not its CancelledError
    plan = Plan()
    plan.call(nap, seconds=60.0)

    async def go() -> None:
        async with Runtime() as runtime:
            task = asyncio.ensure_future(runtime.run(plan))
            await asyncio.sleep(1.0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    run_virtual(go())
    assert statuses(exit_on_run) == [("execute_tool nap", "cancelled"), ("shoal.run", None)]


CTRL_C = """
import logging
from tests.test_otel_surface_r2_s39 import instrumented
import shoal
from shoal.testing import run_virtual
from tests.test_otel import nap
logging.basicConfig(level=logging.WARNING)
tracing = instrumented("execute_tool nap", KeyboardInterrupt)  # (kept: its end uninstruments)
exporter = next(tracing)
plan = shoal.Plan()
plan.call(nap, seconds=0.5, tag="a")
plan.call(nap, seconds=5.0, tag="b")
try:
    run_virtual(shoal.run(plan))
except KeyboardInterrupt:
    print("interrupted", sorted(s.name for s in exporter.get_finished_spans()), flush=True)
"""


def test_ctrl_c_from_a_span_processor_still_stops_the_run_and_ends_spans_once() -> None:
    # in a process of its own: a KeyboardInterrupt out of a loop leaves its tasks behind,
    # which warn as they are collected (errors here)
    done = subprocess.run([sys.executable, "-c", CTRL_C], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    # the Ctrl-C is handed to asyncio's handler, as a Ctrl-C would be (session 40): the run
    # stops as it does on Ctrl-C, its own span ended too
    assert ("interrupted ['execute_tool nap', 'execute_tool nap', 'shoal.run']"
            in done.stdout), done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert ENDED_TWICE not in done.stderr
