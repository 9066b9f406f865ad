"""The spans behind :mod:`shoal.integrations.otel`, built from shoal's typed events.

One :class:`Tracing` is installed as the process's instrumentation
(:mod:`shoal.instrumentation`). Each run gets a :class:`RunSpans` (the run's span and one span
per call) and each agent tree a :class:`TreeSpans` (one span per agent; the tree's run span when
the tree is not itself inside a call). The runs of an agent's steps (its model turns and tool
phases) make no run span of their own: their calls are children of the agent's span, and a
model turn's one call *is* the ``chat`` span.

Times. Events carry times on the event loop's clock; a span's times are those, placed in
wall-clock time by one anchor per event loop (the wall clock and the loop's clock read together
when instrumentation first sees the loop). Every span made on one loop is on one time line, so
children sit inside their parents exactly, also on shoal's virtual clock
(:mod:`shoal.testing.clock`), where durations are the virtual ones.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from shoal.agents.context import TreeContext, tree_in
from shoal.agents.run import MODEL_TURN_POLICY
from shoal.deps import Edge
from shoal.events import (
    FAILURES_LOGGED,
    AgentFinished,
    AgentStarted,
    ApprovalDecided,
    ApprovalRequested,
    Event,
    ModelResponded,
    ModelRetrying,
    ModelServerStarted,
    ModelServerStarting,
    NodeCancelled,
    NodeFinished,
    NodeRetrying,
    NodeSkipped,
    NodeStarted,
    RunFinished,
    RunStarted,
    ToolCallRejected,
    pass_ctrl_c,
)
from shoal.executors.base import Call
from shoal.merge import error_text
from shoal.outcome import Outcome, json_text, jsonable
from shoal.scheduler.driver import Driver

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

__all__ = ["RunSpans", "Tracing", "TreeSpans"]

log = logging.getLogger("shoal")

#: Set in the context of every call attempt: an agent started there is inside a call span,
#: so its tree needs no run span of its own.
_IN_CALL: contextvars.ContextVar[bool] = contextvars.ContextVar("shoal_otel_in_call",
                                                                default=False)
_PROPAGATOR = TraceContextTextMapPropagator()
#: Backends that run a call in this process, where the context itself carries the span.
_IN_PROCESS = frozenset({"inline", "thread"})
#: C0 controls but tab and newline, DEL, C1 controls: they break log lines and some backends.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_FAILED = ("failed", "timed_out")
_INT64 = 2**63  # OTLP's integers are 64-bit: a larger one travels as text
_AGENT_FAILED = ("failed", "max_turns", "budget_exceeded")

E = TypeVar("E", bound=Event)


class Cleaner:
    """Makes any value a safe attribute: bounded, valid UTF-8, no control characters."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def text(self, value: object) -> str:
        """``value`` as a bounded, clean string."""
        if isinstance(value, str):
            text = value
        else:
            try:
                text = str(value)
            except Exception:  # a hostile __str__: the type is still worth knowing
                text = f"<unprintable {type(value).__name__}>"
        if len(text) <= self.limit and text.isascii() and text.isprintable():
            return text  # the common case, and already clean
        if len(text) > self.limit:
            cut = len(text) - self.limit
            text = f"{text[:self.limit]}... [{cut} more characters]"
        # lone surrogates (from surrogateescape'd bytes, say) are not UTF-8: protobuf refuses
        # them; each is written out as the other views write it (\udcff), not as a bare '?'
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        return _CONTROL.sub("\ufffd", text)

    def json(self, value: Any) -> str:
        """``value`` as bounded JSON text (what JSON cannot hold, as its ``repr``)."""
        try:
            text = json_text(jsonable(value), indent=None, ascii=False)
        except Exception:  # a value jsonable cannot take (a hostile __repr__ ...)
            text = self.text(value)
        return self.text(text)

    def attributes(self, values: Mapping[str, object]) -> dict[str, AttributeValue]:
        """Clean attribute values: strings cleaned, numbers and flags kept, ``None`` left out."""
        out: dict[str, AttributeValue] = {}
        limit = self.limit
        for key, value in values.items():
            if value is None:
                continue
            if _kept(value, limit):
                out[key] = value
            elif isinstance(value, tuple | list):
                out[key] = self.texts(value)
            else:
                out[key] = self.text(value)
        return out

    def texts(self, values: tuple[object, ...] | list[object]) -> list[str]:
        """Clean strings for a list attribute, all of them together bounded by the limit too.

        Each string is bounded on its own, but a model can ask for thousands of calls in one
        turn: the list stops once its items hold ``limit`` characters, its last item saying
        how many more there were.
        """
        kept: list[str] = []
        used = 0
        for index, value in enumerate(values):
            if used >= self.limit:
                kept.append(f"... [{len(values) - index} more items]")
                break
            text = self.text(value)
            kept.append(text)
            used += max(len(text), 1)  # empty strings count: the number of items is bounded
        return kept


def _kept(value: object, limit: int) -> TypeGuard[AttributeValue]:
    """Whether a value can be an attribute as it is (the common case: short plain text)."""
    if type(value) is str:
        return len(value) <= limit and value.isascii() and value.isprintable()
    return isinstance(value, bool | float) or (
        isinstance(value, int) and -_INT64 <= value < _INT64)


@dataclass(slots=True)
class _Anchor:
    """The wall clock and a loop's clock read together (see the module docstring)."""

    wall_ns: int
    loop_time: float

    def ns(self, loop_time: float) -> int:
        return self.wall_ns + int((loop_time - self.loop_time) * 1e9)


class Tracing:
    """The instrumentation :func:`shoal.otel.instrument` installs."""

    def __init__(self, tracer_provider: TracerProvider | None, *, capture_content: bool,
                 max_attribute_length: int) -> None:
        from shoal import __version__

        self.tracer: Tracer = trace.get_tracer("shoal", __version__,
                                               tracer_provider=tracer_provider)
        self.capture = capture_content
        self.clean = Cleaner(max_attribute_length)
        self._anchors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Anchor] = (
            weakref.WeakKeyDictionary())
        self._trees: weakref.WeakKeyDictionary[TreeContext, TreeSpans] = (
            weakref.WeakKeyDictionary())
        self._lock = threading.Lock()  # runs on loops in other threads share the two above
        self._end_failures = 0  # spans whose end raised (see end)

    def observe_run(self, driver: Driver) -> RunSpans:
        """The spans of one run."""
        return RunSpans(self, driver)

    def observe_tree(self, tree: TreeContext) -> TreeSpans:
        """The spans of one agent tree."""
        spans = TreeSpans(self, tree)
        with self._lock:
            self._trees[tree] = spans
        return spans

    def tree_of(self, driver: Driver) -> TreeSpans | None:
        """The spans of the agent tree a run belongs to, if it belongs to one."""
        scope = driver.scope
        tree = tree_in(scope.shared) if scope is not None else None
        if tree is None:
            return None
        with self._lock:
            return self._trees.get(tree)

    def anchor(self) -> _Anchor:
        """The running loop's anchor (see the module docstring)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            anchor = self._anchors.get(loop)
            if anchor is None:
                anchor = self._anchors[loop] = _Anchor(time.time_ns(), loop.time())
        return anchor

    def ns(self) -> int:
        """Now, on the running loop's clock, as wall-clock nanoseconds."""
        return self.anchor().ns(asyncio.get_running_loop().time())

    def start(self, name: str, parent: otel_context.Context | None, start_ns: int, *,
              kind: SpanKind = SpanKind.INTERNAL, links: list[Link] | None = None,
              attributes: Mapping[str, object] | None = None) -> Span:
        """A started span with clean attributes (``parent`` ``None``: the current context)."""
        return self.tracer.start_span(
            self.clean.text(name), context=parent, kind=kind, links=links,
            attributes=self.clean.attributes(attributes or {}), start_time=start_ns)

    def set(self, span: Span, attributes: Mapping[str, object]) -> None:
        """Set clean attributes on ``span``."""
        span.set_attributes(self.clean.attributes(attributes))

    def event(self, span: Span, name: str, at_ns: int, attributes: Mapping[str, object]) -> None:
        """Add an event with clean attributes to ``span``."""
        span.add_event(name, self.clean.attributes(attributes), timestamp=at_ns)

    def fail(self, span: Span, description: object) -> None:
        """Mark ``span`` failed, saying why."""
        span.set_status(Status(StatusCode.ERROR, self.clean.text(description)))

    def end(self, span: Span, end_ns: int) -> None:
        """End ``span``: what its processors raise is logged, Ctrl-C passed on.

        Its caller has forgotten it as open already. A processor or exporter can raise what
        is not an ``Exception`` (``GeneratorExit``, a signal handler's exception): the span
        is ended all the same (the SDK marks it before it hands it on), and the spans ended
        after it must be too.
        """
        try:
            span.end(end_ns)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # tracing must never change how a run ends
            # bounded as sinks' failures are: an exporter failing on every span of a wide
            # run must not write a traceback per span
            n = self._end_failures = self._end_failures + 1
            if n <= FAILURES_LOGGED:
                log.warning("OpenTelemetry: ending a span raised; continuing", exc_info=True)
            elif str(n).strip("0") == "1":  # its 10th, 100th ... failure
                log.warning("OpenTelemetry: ending a span has raised %d times, the last: %s",
                            n, error_text(exc))


def _handles(table: dict[type[Event], Callable[[Any, Any], None]],
             kind: type[E]) -> Callable[[Callable[[Any, E], None]], Callable[[Any, E], None]]:
    """Register a method as the handler of events of ``kind`` in ``table``."""
    def register(method: Callable[[Any, E], None]) -> Callable[[Any, E], None]:
        table[kind] = method
        return method

    return register


def provider_and_model(name: str) -> tuple[str, str]:
    """``("openai", "gpt-4.1-mini")`` from ``"openai:gpt-4.1-mini"``; ``_OTHER`` if unsaid."""
    provider, sep, model = name.partition(":")
    return (provider, model) if sep and provider and model else ("_OTHER", name)


def _node_lineage(lineage: str, node_id: str) -> str:
    return f"{lineage}/{node_id}" if lineage else node_id


_RUN: dict[type[Event], Callable[[Any, Any], None]] = {}
_TREE: dict[type[Event], Callable[[Any, Any], None]] = {}


class RunSpans:
    """The spans of one run: the run's own (unless it is an agent's step) and its calls'."""

    def __init__(self, tracing: Tracing, driver: Driver) -> None:
        self.t = tracing
        self.driver = driver
        self.run_span: Span | None = None
        self.parent: otel_context.Context | None = None  # the calls' parent
        self.tree: TreeSpans | None = None  # the agent tree of an agent step
        self.open: dict[str, Span] = {}  # node id -> its span, while it runs
        self.ended: dict[str, SpanContext] = {}  # node id -> its span, once ended (for links)
        self._into: dict[str, list[Edge]] = {}  # node id -> the edges into it
        self._indexed = 0  # edges of the (growing) graph indexed so far
        self._anchor: _Anchor | None = None  # the run's loop's, from its start

    def __call__(self, event: Event) -> None:
        """Take one of the run's events."""
        handler = _RUN.get(type(event))
        if handler is not None:
            handler(self, event)

    # -- the run ------------------------------------------------------------------------

    @_handles(_RUN, RunStarted)
    def _run_started(self, event: RunStarted) -> None:
        self._anchor = self.t.anchor()
        driver = self.driver
        self.tree = tree = self.t.tree_of(driver)
        agent = tree.agents.get(driver.lineage) if tree is not None else None
        if agent is not None:  # a model turn or tool phase of this agent: its calls are its
            self.parent = trace.set_span_in_context(agent)
            return
        self.tree = None
        self.run_span = self.t.start(
            "shoal.run", None, self._ns(event.time), attributes={
                "shoal.run.id": driver.state.run_id, "shoal.lineage": driver.lineage or None,
                "shoal.run.nodes": event.nodes})
        self.parent = trace.set_span_in_context(self.run_span)

    @_handles(_RUN, RunFinished)
    def _run_finished(self, event: RunFinished) -> None:
        self._end_open(self._ns(event.time))
        span, self.run_span = self.run_span, None
        if span is None:
            return
        counts = {status: n for status, n in event.counts.items() if n}
        self.t.set(span, {**{f"shoal.run.{s}": n for s, n in counts.items()},
                          "shoal.run.makespan": event.makespan})
        bad = {s: n for s, n in counts.items() if s in _FAILED}
        if self.driver.cancelled_reason:  # the whole run was cancelled (or ran out of time)
            self.t.fail(span, self.driver.cancelled_reason)
        elif bad:
            self.t.fail(span, ", ".join(f"{n} {s}" for s, n in sorted(bad.items())))
        self.t.end(span, self._ns(event.time))

    def close(self) -> None:
        """The run is over: end what is still open (a run cancelled from outside)."""
        try:
            self._close()
        except KeyboardInterrupt as exc:  # Ctrl-C (a processor's, or its signal handler's)
            pass_ctrl_c(exc)  # stops the run as Ctrl-C does
        except BaseException:  # tracing must never change how a run ends (GeneratorExit too)
            log.exception("OpenTelemetry: could not end the spans of run %s",
                          self.driver.state.run_id)

    def _close(self) -> None:
        if self._anchor is None:  # it never started
            return
        now = self._ns(self.driver.now())
        self._end_open(now)
        span, self.run_span = self.run_span, None
        if span is not None:
            self.t.fail(span, self.driver.cancelled_reason or "the run stopped")
            self.t.end(span, now)

    def _end_open(self, end_ns: int) -> None:
        for node_id, span in list(self.open.items()):
            self.t.set(span, {"shoal.call.status": "cancelled"})
            self._finish(node_id, span, end_ns)

    # -- calls --------------------------------------------------------------------------

    def attempt_context(self, call: Call) -> contextvars.Context:
        """The context of one attempt: its call's span current; a carrier for other processes.

        If that cannot be made, the attempt runs all the same, in a plain copy of the context.
        """
        try:
            return self._attempt_context(call)
        except Exception:  # tracing must never stop a call
            log.exception("OpenTelemetry: no span for call %s of run %s", call.node_id,
                          self.driver.state.run_id)
            return contextvars.copy_context()

    def _attempt_context(self, call: Call) -> contextvars.Context:
        span = self._span(call.node_id, self._ns(self.driver.now()), call.isolation)
        if self.t.capture and not (self.tree is not None and self._is_model_turn(call.node_id)):
            # the arguments this attempt runs with: refs resolved, edits approved
            self.t.set(span, {"gen_ai.tool.call.arguments": self.t.clean.json(call.args)})
        current = trace.set_span_in_context(span)
        context = contextvars.copy_context()
        context.run(otel_context.attach, current)
        context.run(_IN_CALL.set, True)
        if call.isolation not in _IN_PROCESS:
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier, context=current)
            call.trace = carrier
        return context

    @_handles(_RUN, NodeStarted)
    def _node_started(self, event: NodeStarted) -> None:
        if event.attempt == 1 and event.node_id in self.open:
            return  # its span started with its attempt, saying where it runs
        at = self._ns(event.time)
        span = self._span(event.node_id, at, event.executor)
        if event.attempt > 1:  # the first attempt is the span's start (or its approval's end)
            self.t.event(span, "shoal.attempt", at, {"shoal.attempt": event.attempt,
                                                     "shoal.call.isolation": event.executor})

    @_handles(_RUN, NodeRetrying)
    def _node_retrying(self, event: NodeRetrying) -> None:
        at = self._ns(event.time)
        self.t.event(self._span(event.node_id, at), "shoal.retry", at, {
            "shoal.attempt": event.attempt, "shoal.retry.delay": event.delay,
            "shoal.retry.error": event.error})

    @_handles(_RUN, ApprovalRequested)
    def _approval_requested(self, event: ApprovalRequested) -> None:
        at = self._ns(event.time)
        span = self._span(event.node_id, at)
        self.t.set(span, {"shoal.approval.requested": True, "shoal.approval.reason": event.reason})
        self.t.event(span, "shoal.approval.requested", at, {
            "shoal.approval.request_id": event.request_id, "shoal.approval.reason": event.reason})

    @_handles(_RUN, ApprovalDecided)
    def _approval_decided(self, event: ApprovalDecided) -> None:
        at = self._ns(event.time)
        span = self._span(event.node_id, at)
        self.t.set(span, {"shoal.approval.verdict": event.verdict, "shoal.approval.by": event.by})
        self.t.event(span, "shoal.approval.decided", at, {
            "shoal.approval.verdict": event.verdict, "shoal.approval.by": event.by,
            "shoal.approval.reason": event.reason or None,
            # arguments are content, as the call's own are: only when content is captured
            "shoal.approval.edited_args": (event.edited_args or None) if self.t.capture
            else None})

    @_handles(_RUN, NodeFinished)
    def _node_finished(self, event: NodeFinished) -> None:
        at = self._ns(event.time)
        span = self._span(event.node_id, at)
        outcome = self._outcome(event.node_id)
        attributes: dict[str, object] = {
            "shoal.call.status": event.status, "shoal.call.attempts": event.attempts,
            "shoal.call.abandoned": bool(outcome and outcome.abandoned) or None}
        model_turn = self.tree is not None and self._is_model_turn(event.node_id)
        if event.status in _FAILED:
            error = outcome.error if outcome is not None else None
            attributes["error.type"] = error.type if error is not None else event.status
            self.t.fail(span, event.error or event.status)
        elif event.status != "ok":  # denied, in doubt: why
            attributes["shoal.call.reason"] = event.error or None
        elif self.t.capture and outcome is not None and not model_turn:
            attributes["gen_ai.tool.call.result"] = self.t.clean.json(outcome.value)
        self.t.set(span, attributes)
        if model_turn:
            assert self.tree is not None
            self.tree.model_turn_ended(self, event, span, outcome, at)
            return
        self._finish(event.node_id, span, at)

    @_handles(_RUN, NodeSkipped)
    def _node_skipped(self, event: NodeSkipped) -> None:
        self._never_ran(event.node_id, "skipped", event.reason, event.time)

    @_handles(_RUN, NodeCancelled)
    def _node_cancelled(self, event: NodeCancelled) -> None:
        self._never_ran(event.node_id, "cancelled", event.reason, event.time)

    def _never_ran(self, node_id: str, status: str, reason: str, when: float) -> None:
        at = self._ns(when)
        span = self._span(node_id, at)
        self.t.set(span, {"shoal.call.status": status, "shoal.call.reason": reason,
                          "shoal.call.attempts": 0})
        self._finish(node_id, span, at)

    def _finish(self, node_id: str, span: Span, end_ns: int) -> None:
        # forgotten as open first: ending it may raise (its processors), and a span left
        # open here was ended again at the run's end ("Calling end() on an ended span")
        self.open.pop(node_id, None)
        if self.tree is not None:  # a model request that never ran, or was cut short
            self.tree.forget_chat(span)
        self.ended[node_id] = span.get_span_context()
        self.t.end(span, end_ns)

    def _span(self, node_id: str, start_ns: int, isolation: str = "") -> Span:
        """The call's span, started at ``start_ns`` if it has none yet."""
        span = self.open.get(node_id)
        if span is not None:
            if isolation:  # its first attempt, after its approval
                self.t.set(span, {"shoal.call.isolation": isolation})
            return span
        driver = self.driver
        node = driver.graph.nodes[driver.graph.position[node_id]]
        owner = self._map_of(node_id)
        if owner is not None and owner not in self.ended:
            # a map runs from its first item on: its span is open before any of its
            # dependents starts (they start before its NodeFinished arrives), for their links
            self._span(owner, start_ns)
        lineage = _node_lineage(driver.lineage, node_id)
        base = {"shoal.run.id": driver.state.run_id, "shoal.node.id": node_id,
                "shoal.lineage": lineage, "shoal.call.isolation": isolation or None}
        if self.tree is not None and self._is_model_turn(node_id):
            span = self.tree.model_turn_started(self, base, start_ns)
        else:
            attributes: dict[str, object] = {
                **base, "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": node.tool.name,
                "gen_ai.tool.type": "function"}
            # an item waited for what its map waited for (its own edges: earlier items')
            links = [*self._links(owner), *self._links(node_id)] if owner else self._links(node_id)
            span = self.t.start(f"execute_tool {node.tool.name}", self.parent, start_ns,
                                links=links, attributes=attributes)
        self.open[node_id] = span
        return span

    def _map_of(self, node_id: str) -> str | None:
        """The map that made item ``node_id`` (``m#1[3]``: ``m#1``); ``None`` for other nodes."""
        if not node_id.endswith("]"):
            return None
        owner = node_id.rsplit("[", 1)[0]
        graph = self.driver.graph
        pos = graph.position.get(owner)
        return owner if pos is not None and graph.nodes[pos].map is not None else None

    def _links(self, node_id: str) -> list[Link]:
        """A link to each call ``node_id`` waited for, saying why (one per edge)."""
        edges = self.driver.graph.edges
        for edge in edges[self._indexed:]:
            self._into.setdefault(edge.target, []).append(edge)
        self._indexed = len(edges)
        links = []
        for edge in self._into.get(node_id, ()):
            source = self.ended.get(edge.source)
            if source is None:
                opened = self.open.get(edge.source)
                source = opened.get_span_context() if opened is not None else None
            if source is not None:  # a call replayed from the journal has no span to link
                links.append(Link(source, self.t.clean.attributes({
                    "shoal.edge.reason": edge.kind, "shoal.edge.detail": edge.detail,
                    "shoal.edge.source": edge.source})))
        return links

    def _is_model_turn(self, node_id: str) -> bool:
        graph = self.driver.graph
        return graph.nodes[graph.position[node_id]].tool.policy is MODEL_TURN_POLICY

    def _outcome(self, node_id: str) -> Outcome | None:
        pos = self.driver.graph.position.get(node_id)
        return None if pos is None else self.driver.state.outcome_at(pos)

    def _ns(self, event_time: float) -> int:
        """A time of the run's clock (seconds since it started) as wall-clock nanoseconds."""
        anchor = self._anchor or self.t.anchor()
        return anchor.ns(self.driver.state.clock_origin + event_time)


@dataclass(slots=True)
class _Chat:
    """A model request's span, from its call's start until its reply is known."""

    span: Span
    end_ns: int = 0  # set once its call ended


class TreeSpans:
    """The spans of one agent tree: one per agent; the tree's run span when it needs one."""

    def __init__(self, tracing: Tracing, tree: TreeContext) -> None:
        self.t = tracing
        # not the tree itself: Tracing maps trees to these weakly, and a value that held its
        # key would keep every tree alive
        self.run_id = tree.run_id
        self.results = tree.results  # every agent's result, by lineage
        self.agents: dict[str, Span] = {}  # lineage -> the agent's span, while it runs
        self.models: dict[str, str] = {}  # lineage -> its model's name, once known
        self.chats: dict[str, _Chat] = {}  # lineage -> its model request in progress
        self.run_span: Span | None = None
        self._root = ""  # the lineage whose end ends the run span

    def __call__(self, event: Event) -> None:
        """Take one of the tree's events (the runs' own events reach their RunSpans)."""
        handler = _TREE.get(type(event))
        if handler is not None:
            handler(self, event)

    @_handles(_TREE, AgentStarted)
    def _agent_started(self, event: AgentStarted) -> None:
        now = self.t.ns()
        parent: otel_context.Context | None = None  # the current one: a call's, for a subagent
        if event.depth == 0 and not _IN_CALL.get() and self.run_span is None:
            self._root = event.lineage
            self.run_span = self.t.start("shoal.run", None, now, attributes={
                "shoal.run.id": self.run_id, "shoal.run.kind": "agent"})
            parent = trace.set_span_in_context(self.run_span)
        attributes: dict[str, object] = {
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": event.agent,
            "shoal.lineage": event.lineage, "shoal.agent.depth": event.depth,
            "shoal.run.id": self.run_id}
        # where its turn loop runs (an event journaled by an older shoal does not say)
        if event.isolation:
            attributes["shoal.agent.isolation"] = event.isolation
        if event.pid:
            attributes["shoal.agent.pid"] = event.pid
        if event.where:
            attributes["shoal.agent.where"] = event.where
        if self.t.capture:
            attributes["gen_ai.input.messages"] = self.t.clean.json(
                [{"role": "user", "parts": [{"type": "text", "content": event.prompt}]}])
        self.agents[event.lineage] = self.t.start(f"invoke_agent {event.agent}", parent, now,
                                                  attributes=attributes)

    @_handles(_TREE, AgentFinished)
    def _agent_finished(self, event: AgentFinished) -> None:
        now = self.t.ns()
        chat = self.chats.pop(event.lineage, None)
        if chat is not None:  # its reply never came back to the agent (it was stopped)
            self.t.end(chat.span, chat.end_ns or now)
        span = self.agents.pop(event.lineage, None)
        if span is not None:
            self._end_agent(span, event, now)
        if event.lineage == self._root and self.run_span is not None:
            run_span, self.run_span = self.run_span, None
            if event.status in _AGENT_FAILED:
                self.t.fail(run_span, event.error or event.status)
            self.t.end(run_span, now)

    def _end_agent(self, span: Span, event: AgentFinished, now: int) -> None:
        result = self.results.get(event.lineage)
        attributes: dict[str, object] = {
            "shoal.agent.status": event.status, "shoal.agent.turns": event.turns,
            "shoal.agent.total_tokens": event.total_tokens}
        if result is not None:
            attributes["gen_ai.usage.input_tokens"] = result.usage.input_tokens
            attributes["gen_ai.usage.output_tokens"] = result.usage.output_tokens
            if self.t.capture and result.output is not None:
                attributes["gen_ai.output.messages"] = self.t.clean.json(
                    [{"role": "assistant", "parts": [{"type": "text",
                                                      "content": result.output}]}])
        self.t.set(span, attributes)
        if event.status in _AGENT_FAILED:
            self.t.set(span, {"error.type": event.status})
            self.t.fail(span, event.error or event.status)
        self.t.end(span, now)

    # -- model requests -----------------------------------------------------------------

    def model_turn_started(self, run: RunSpans, base: Mapping[str, object],
                           start_ns: int) -> Span:
        """The span of a model request whose call (in the agent's model-turn run) starts."""
        lineage = run.driver.lineage
        model = self.models.get(lineage, "")
        attributes: dict[str, object] = {**base, "gen_ai.operation.name": "chat",
                                         "shoal.lineage": lineage}
        if model:
            attributes.update(self._model_attributes(model))
        span = self.t.start(f"chat {provider_and_model(model)[1]}" if model else "chat",
                            run.parent, start_ns, kind=SpanKind.CLIENT, attributes=attributes)
        self.chats[lineage] = _Chat(span)
        return span

    def model_turn_ended(self, run: RunSpans, event: NodeFinished, span: Span,
                         outcome: Outcome | None, at: int) -> None:
        """The call of a model request ended: a reply waits for its ModelResponded."""
        lineage = run.driver.lineage
        run.open.pop(event.node_id, None)
        chat = self.chats.get(lineage)
        if event.status != "ok" or chat is None or chat.span is not span:
            if chat is not None and chat.span is span:
                del self.chats[lineage]
            # failed, or not the request in progress: no reply will name it
            self.t.end(span, at)
            return
        response = outcome.value if outcome is not None else None
        usage = getattr(response, "usage", None)
        self.t.set(span, {
            "gen_ai.response.model": getattr(response, "model", "") or None,
            "gen_ai.usage.input_tokens": getattr(usage, "input_tokens", None),
            "gen_ai.usage.output_tokens": getattr(usage, "output_tokens", None),
            "gen_ai.response.finish_reasons": [reason] if (
                reason := getattr(response, "stop_reason", "")) else None})
        chat.end_ns = at

    def forget_chat(self, span: Span) -> None:
        """``span`` ended without a reply: no ModelResponded is to end it."""
        for lineage, chat in list(self.chats.items()):
            if chat.span is span:
                del self.chats[lineage]

    @_handles(_TREE, ModelResponded)
    def _model_responded(self, event: ModelResponded) -> None:
        self.models[event.lineage] = event.model
        chat = self.chats.pop(event.lineage, None)
        if chat is None:  # a turn replayed from the journal: it made no request
            return
        model = provider_and_model(event.model)[1]
        span = chat.span
        span.update_name(self.t.clean.text(f"chat {model}"))
        attributes: dict[str, object] = {
            **self._model_attributes(event.model), "shoal.agent.turn": event.turn,
            "gen_ai.usage.input_tokens": event.input_tokens,
            "gen_ai.usage.output_tokens": event.output_tokens,
            "shoal.model.tool_calls": list(event.tool_calls) or None}
        if self.t.capture and event.text:
            attributes["gen_ai.output.messages"] = self.t.clean.json(
                [{"role": "assistant", "parts": [{"type": "text", "content": event.text}]}])
        self.t.set(span, attributes)
        self.t.end(span, chat.end_ns or self.t.ns())

    def _model_attributes(self, name: str) -> dict[str, object]:
        provider, model = provider_and_model(name)
        return {"gen_ai.provider.name": provider, "gen_ai.request.model": model,
                "shoal.model": name}

    @_handles(_TREE, ModelRetrying)
    def _model_retrying(self, event: ModelRetrying) -> None:
        self.models.setdefault(event.lineage, event.model)
        self._note(event.lineage, "shoal.model.retry", {
            "shoal.attempt": event.attempt, "shoal.model.attempts": event.attempts,
            "shoal.retry.delay": event.delay, "shoal.retry.error": event.error})

    @_handles(_TREE, ModelServerStarting)
    def _server_starting(self, event: ModelServerStarting) -> None:
        self._note(event.lineage, "shoal.model.server_starting", {"shoal.model": event.model})

    @_handles(_TREE, ModelServerStarted)
    def _server_started(self, event: ModelServerStarted) -> None:
        self._note(event.lineage, "shoal.model.server_started", {
            "shoal.model": event.model, "shoal.model.server_seconds": event.duration,
            "shoal.model.server_error": event.error or None})

    def _note(self, lineage: str, name: str, attributes: Mapping[str, object]) -> None:
        """An event on the agent's request in progress, else on the agent's span."""
        chat = self.chats.get(lineage)
        span = chat.span if chat is not None else self.agents.get(lineage)
        if span is not None:
            self.t.event(span, name, self.t.ns(), attributes)

    @_handles(_TREE, ToolCallRejected)
    def _tool_call_rejected(self, event: ToolCallRejected) -> None:
        agent_lineage = event.lineage.rpartition("/")[0]
        agent = self.agents.get(agent_lineage)
        now = self.t.ns()
        span = self.t.start(
            f"execute_tool {event.tool}",
            trace.set_span_in_context(agent) if agent is not None else None, now,
            attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": event.tool,
                        "gen_ai.tool.call.id": event.call_id or None,
                        "shoal.lineage": event.lineage, "shoal.call.status": "rejected",
                        "error.type": "rejected"})
        self.t.fail(span, event.error)
        self.t.end(span, now)
