"""OpenTelemetry traces for shoal (extra ``otel``): ``shoal.otel.instrument()``.

Once instrumented, every run and agent tree started in this process makes spans, built from
shoal's typed events (:mod:`shoal.events`) and nested by lineage:

- ``shoal.run``: a plan's run, or the whole tree of an ``Agent.run``;
- ``invoke_agent {name}``: one agent (the lead or a subagent) from start to answer;
- ``chat {model}``: one model request, with the GenAI semantic conventions
  (``gen_ai.operation.name``, ``gen_ai.provider.name``, ``gen_ai.request.model``,
  ``gen_ai.response.model``, ``gen_ai.usage.input_tokens`` / ``output_tokens``);
- ``execute_tool {tool}``: one call, from its first attempt (or its approval request) to its
  outcome, with shoal's own attributes (``shoal.call.status``, ``shoal.call.attempts``,
  ``shoal.call.isolation``, approvals, retries) and a span link to each call it waited for,
  whose ``shoal.edge.reason`` says why (``data``, ``after``, ``resource``, ``exclusive``).

A subagent's span is a child of the tool-call span that runs it. While a call runs, its span
is the current span: spans a tool makes itself are its children, also in process and Ray
workers, which get the W3C trace context with the call (they export with their own provider).
Not instrumented, shoal costs nothing more than one check per run and per call attempt.

This module imports no OpenTelemetry until :func:`instrument` is called; without the extra,
that raises :class:`~shoal.exceptions.MissingDependencyError` with the ``pip install`` line.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from shoal import instrumentation
from shoal.exceptions import ConfigError, MissingDependencyError
from shoal.merge import shown

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

__all__ = ["DEFAULT_MAX_ATTRIBUTE_LENGTH", "instrument", "is_instrumented", "uninstrument"]

#: Characters kept of a string attribute (a longer one is cut, and says so).
DEFAULT_MAX_ATTRIBUTE_LENGTH = 4096


def instrument(tracer_provider: TracerProvider | None = None, *, capture_content: bool = False,
               max_attribute_length: int = DEFAULT_MAX_ATTRIBUTE_LENGTH) -> None:
    """Make spans for every run and agent tree started from now on (see the module docstring).

    Args:
        tracer_provider: where the spans go (default: OpenTelemetry's global provider, as
            set by ``opentelemetry.trace.set_tracer_provider``, also if set later).
        capture_content: also record what calls and agents were given and gave back (tool
            arguments and results, prompts, answers, model text) as ``gen_ai.*`` attributes.
            Off by default: they may hold personal or secret data.
        max_attribute_length: characters kept of any string attribute (and, about, of all
            the items of a list attribute together); every string is also made valid UTF-8
            without control characters, so no value can break an exporter.

    Calling it again replaces the earlier settings (runs in flight keep theirs).
    """
    if isinstance(max_attribute_length, bool) or not isinstance(max_attribute_length, int) \
            or max_attribute_length < 16:
        raise ConfigError(f"max_attribute_length must be a whole number of at least 16, "
                          f"got {shown(max_attribute_length)}")
    if not isinstance(capture_content, bool):  # 'false' (say, from an environment variable)
        # would be true: prompts, arguments and results, personal or secret, would go out
        raise ConfigError(f"capture_content must be True or False, got {shown(capture_content)}")
    if tracer_provider is not None and not _is_provider(tracer_provider):
        raise ConfigError(f"tracer_provider takes an OpenTelemetry TracerProvider (one with "
                          f"get_tracer), got {type(tracer_provider).__name__} "
                          f"{shown(tracer_provider)}")
    try:
        spans = importlib.import_module("shoal.integrations._otel")
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("opentelemetry"):
            raise
        raise MissingDependencyError("opentelemetry-api, opentelemetry-sdk", "otel") from None
    instrumentation.install(spans.Tracing(tracer_provider, capture_content=capture_content,
                                          max_attribute_length=max_attribute_length))


def _is_provider(value: object) -> bool:
    """Whether ``value`` can give tracers (the API's ``TracerProvider`` or a look-alike)."""
    try:
        return callable(getattr(value, "get_tracer", None))
    except Exception:  # an attribute of its own that fails: not a provider to rely on
        return False


def uninstrument() -> None:
    """Stop making spans for runs and trees started from now on (those in flight finish).

    A run or agent tree in flight keeps the instrumentation it started with, for the runs
    nested in it too (an agent's model turns and tool phases, agent nodes, patterns): its
    trace is whole. :func:`instrument` called again mid-run does the same.
    """
    instrumentation.uninstall()


def is_instrumented() -> bool:
    """Whether :func:`instrument` is in force."""
    return instrumentation.active is not None
