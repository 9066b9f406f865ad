"""Orchestration patterns: small compositions of agents that nest and run as plan nodes.

* :func:`pipeline` ``(a, b, c)``: each step's output is the next step's task.
* :func:`fan_out` ``(*workers, aggregate=agg)``: every worker on the same task at once; the
  aggregator gets the task and every worker's output, each under its node id.
* :func:`reflect` ``(worker, critic, max_rounds=3)``: the worker drafts, the critic reviews,
  the worker revises with the feedback, until the critic accepts or ``max_rounds`` is reached.

Hierarchical work (a lead delegating to subagents) is an :class:`~shoal.Agent` with
``subagents=``; it is a step like any other.

A step is an agent or another pattern, so patterns nest: ``pipeline(a, fan_out(...),
reflect(...))``. A pattern is a plan node (``plan.call(pattern, task=..., **more)``; the extra
arguments reach its first steps as an agent node's do, see :mod:`shoal.agents.node`) and runs
on its own with :meth:`Pattern.run`. Each runs its steps as a nested run of the runtime,
named and journaled under its node (``<run id>/<node id>``; a reflect loop one per round,
``<run id>/<node id>/round-2``), its steps under the node's lineage
(``pipeline#1/reader#1``; a reflect loop's drafts ``reflect#1/writer#1``, ``writer#2``...), so:

* one ``Budget`` (given to the outermost run) holds exactly across every agent at any depth;
* approvals go to the runtime's approver, and events carry each agent's lineage
  (``pipeline#1/fan_out#1/reader#3``) for live views;
* cancelling the pattern's node (or the whole run) cancels everything inside it;
* a resumed run replays every step that finished instead of running it again.

A pattern's value is its last step's (a pipeline), the aggregator's or the list of worker
outputs (a fan-out), or a :class:`Reflection` (a reflect loop). When a pattern is a step of
another, what passes on is its *output*: for a reflect loop, the accepted (or last) draft,
``Reflection.output``. A step that fails fails the pattern with the step's own error (a
``BudgetExceeded`` stays one); later steps are skipped.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

from shoal import _lazy
from shoal.agents.agent import Agent
from shoal.agents.node import (
    SHARED_KEY,
    Composition,
    NodeContext,
    NodeInjected,
    check_rerun,
    composition,
    observer_sinks,
    run_observed,
)
from shoal.exceptions import ConfigError, ShoalError
from shoal.merge import error_text, shown
from shoal.nodeids import plain_text
from shoal.outcome import RunResult
from shoal.plan import Plan, Ref, each_item
from shoal.policy import ToolPolicy
from shoal.runtime import Runtime, check_run_id, run_blocking
from shoal.tools import Tool

if TYPE_CHECKING:
    from shoal._verdict import Verdict
    from shoal.agents.budget import Budget
    from shoal.board import Board
    from shoal.events import EventSink
    from shoal.runtime import RunHandle

__all__ = [
    "MAX_ROUNDS", "FanOut", "NotAcceptedError", "Pattern", "PatternError", "Pipeline", "Reflect",
    "Reflection", "Step", "Verdict", "fan_out", "pipeline", "reflect",
]  # fmt: skip

# Verdict, a pydantic model, loads on first use (see shoal._verdict); this module's own code
# imports it where it needs it
__getattr__, _ = _lazy.lazy_attributes(__name__, globals(), {"Verdict": "shoal._verdict"})

# as agent names: a pattern may become a tool (fullmatch: '$' also matches before a final
# newline, and 'fan\n' passed, a name no model API takes)
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

#: The most rounds a :func:`reflect` loop may be given: each is a draft and a review (two
#: agent runs); a loop meant to go on "until accepted" is bounded by this and by its budget.
MAX_ROUNDS = 1000


class PatternError(ShoalError):
    """A pattern's step did not succeed, for a reason that is not an exception of its own.

    (A step that raised, an agent over budget for one, fails its pattern with that error.)
    """


class NotAcceptedError(PatternError):
    """A ``reflect(..., must_accept=True)`` loop ran ``max_rounds`` rounds without acceptance.

    ``reflection`` holds the last draft and the critic's last feedback.
    """

    def __init__(self, message: str, reflection: Reflection) -> None:
        super().__init__(message)
        self.reflection = reflection


@dataclass(frozen=True, slots=True)
class Reflection:
    """What a :func:`reflect` loop gives: the last draft and whether the critic accepted it.

    ``output`` is the worker's last output; ``accepted`` whether the critic accepted it (false
    when the loop stopped at ``max_rounds``); ``rounds`` how many drafts were made;
    ``feedback`` the critic's last words.
    """

    output: Any
    accepted: bool
    rounds: int
    feedback: str = ""


class Pattern:
    """A composition of agents that runs as one plan node (see the module docstring).

    Subclasses build their steps' nested runs in :meth:`_run`.
    """

    kind: ClassVar[str] = "pattern"

    def __init__(self, name: str | None) -> None:
        if name is not None and (not isinstance(name, str) or not _NAME.fullmatch(name)):
            raise ConfigError(f"{self.kind} name {shown(name)} must be 1-64 letters, digits, "
                              "'_' or '-' (it names the pattern's nodes and their lineage)")
        # a str subclass's own __eq__/__hash__/__str__ would run wherever the name is used
        self.name = self.kind if name is None else plain_text(name)

    @property
    def called(self) -> str:
        """The pattern as messages name it: ``reflect``, or ``reflect review`` if named."""
        return self.kind if self.name == self.kind else f"{self.kind} {self.name}"

    # -- as a node --------------------------------------------------------------------------

    @functools.cached_property
    def node_tool(self) -> Tool[..., Any]:
        """The tool that runs this pattern as a plan node: ``plan.call(pattern, task=...)``."""
        # Idempotent in the resume sense: a pattern node that was running when its run stopped
        # runs again on resume and continues its nested runs, whose finished steps replay.
        return Tool(partial(_pattern_node, self), name=self.name,
                    description=f"Run the {self.called}: {self.describe()}",
                    policy=ToolPolicy(isolation="inline", idempotent=True))

    def describe(self) -> str:
        """What the pattern does, in a few words (its tool's description, for a model)."""
        return self.kind

    def __shoal_node__(self) -> Tool[..., Any]:
        """What :func:`shoal.plan.as_tool` makes of a pattern: its :attr:`node_tool`."""
        return self.node_tool

    @property
    def output_path(self) -> tuple[str | int, ...]:
        """Where, in this pattern's value, the output a next step gets is (``()``: all of it).

        Found by a loop down the steps each pattern passes on (a pipeline its last step's):
        patterns nested thousands deep run, and recursing here failed them with a bare
        RecursionError from about 1,000 deep.
        """
        step: Step | None = self
        while isinstance(step, Pattern):
            if step is not self and type(step).output_path is not Pattern.output_path:
                return step.output_path  # a pattern subclass that says it in its own way
            path, step = step._passes_on()
            if path:
                return path
        return ()

    def _passes_on(self) -> tuple[tuple[str | int, ...], Step | None]:
        """The path in this pattern's value to what it passes on, or the step it passes on."""
        return (), None

    async def _run(self, node: NodeContext, task: Any, context: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    def parts(self) -> list[Step]:
        """The agents and patterns this pattern is made of (its direct steps)."""
        return [v for v in vars(self).values() if isinstance(v, Agent | Pattern)] + [
            s for v in vars(self).values() if isinstance(v, tuple) for s in v
            if isinstance(s, Agent | Pattern)]

    # -- on its own -------------------------------------------------------------------------

    async def run(self, task: Any, *, runtime: Runtime | None = None,
                  budget: Budget | None = None, board: Board | None = None,
                  on_event: EventSink | Sequence[EventSink] | None = None,
                  run_id: str | None = None, **context: Any) -> Any:
        """Run the pattern on ``task`` as a one-node plan and return its value.

        ``context``: more arguments for the first steps, as for a node. ``runtime``: the
        runtime (default: a fresh one, closed at the end); ``budget``: for every agent inside;
        ``board``: shared by the tools of every agent inside.
        Raises the error of the step that failed (e.g. :class:`~shoal.BudgetExceeded`), or
        :class:`PatternError`.
        """
        if run_id is not None:  # its inner runs are named under it by '/'
            check_run_id(run_id)
        if runtime is not None and not isinstance(runtime, Runtime):
            raise ConfigError(f"{self.called}: runtime= takes a shoal.Runtime, got "
                              f"{type(runtime).__name__} {shown(runtime)}")
        own = runtime is None
        active = runtime if runtime is not None else Runtime()
        plan = Plan(name=self.name)
        ref = plan.add(self, {"task": task, **context}, node_id=self.name)
        try:
            # an outermost run of its own (not one nested in a stand-in scope): it claims its
            # run id (the same id run twice at once is refused, not journaled as one run),
            # and its end closes what its agents' tree made (models made from strings)
            if run_id is not None and active.store is not None and active.store.get_run(
                    run_id) is not None:  # (the runtime's own words name a plan this has not)
                raise ConfigError(
                    f"{self.called}: run {run_id!r} is in the journal already; "
                    "run() starts a new run, so give another run_id (or none). To continue "
                    f"that run, resume the one-node plan run() made: plan = shoal.Plan(name="
                    f"{self.name!r}); plan.add(pattern, {{'task': task, **the same context}}, "
                    f"node_id={self.name!r}); runtime.resume({run_id!r}, plan)")
            handle = active.start(plan, run_id=run_id, on_event=on_event, budget=budget,
                                  board=board)
            result = await handle
        finally:
            if own:
                await active.aclose()
        outcome = result[ref]
        if outcome.ok:
            return outcome.value
        scope = handle.scope
        found = scope.shared.get(SHARED_KEY) if scope is not None else None
        error = found.errors.get(self.name) if isinstance(found, Composition) else None
        raise error or PatternError(f"{self.called} ended {outcome.status}: "
                                    f"{outcome.error or outcome.reason}")

    def run_sync(self, task: Any, **options: Any) -> Any:
        """:meth:`run` from synchronous code (starts and closes an event loop)."""
        return run_blocking(self.run(task, **options), "'await pattern.run(task)'")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


async def _pattern_node(pattern: Pattern, task: Any, shoal_node: NodeInjected,
                        **context: Any) -> Any:
    """Run the pattern on the task (and the other arguments, for its first steps).

    Args:
        pattern: the pattern (bound when the node's tool is made).
        task: what to do: text, or any value (shown to the agents as JSON).
        shoal_node: where the node runs (filled in by the runtime).
        **context: more for the first steps' prompts, each shown under its name.
    """
    shared = composition(shoal_node.scope)
    shared.enter()  # the models its agents share stay open from one step to the next
    try:
        check_rerun(shoal_node, shared)
        return await pattern._run(shoal_node, task, context)
    except Exception as exc:
        shared.errors[shoal_node.lineage] = exc
        raise
    finally:
        await shared.leave()


_pattern_node._runs_component = True  # type: ignore[attr-defined]  # see component_of


#: What a pattern is made of: agents and other patterns.
Step = Agent[Any] | Pattern


# -- helpers for the patterns ----------------------------------------------------------------


def _steps(owner: str, given: object, what: str) -> tuple[Step, ...]:
    """The steps (``what``: "step", "worker") given to a pattern, each checked.

    A ``ConfigError`` for none, for what is no collection of steps, and for an iterable that
    raises while it is read (a generator's own error, kept as the cause).
    """
    if given is None:
        given = ()
    if isinstance(given, str | bytes | Mapping) or not isinstance(given, Iterable):
        raise ConfigError(f"{owner}: give the {what}s as a list of agents and patterns, got "
                          f"{type(given).__name__} {shown(given)}")
    def failed(exc: Exception) -> ConfigError:  # the iterable's own code raised
        return ConfigError(f"{owner}: reading its {what}s raised {error_text(exc)}")

    # each checked as it is read: an endless iterator (itertools.count()) is refused at once
    steps = [_check_step(owner, step) for step in each_item(given, failed)]
    if not steps:
        raise ConfigError(f"{owner}: give at least one {what}")
    return tuple(steps)


def _check_step(owner: str, step: Any) -> Step:
    if not isinstance(step, Agent | Pattern):
        raise ConfigError(f"{owner}: a step must be an Agent or a pattern, got "
                          f"{type(step).__name__} {shown(step)}")
    return step


def _output(step: Step, ref: Ref) -> Ref:
    """A ref to what ``step`` passes on: its whole value, or a reflect loop's draft."""
    path = step.output_path if isinstance(step, Pattern) else ()
    return Ref(ref.node, path) if path else ref


async def _nested(node: NodeContext, plan: Plan, suffix: str = "") -> RunResult:
    """Run ``plan`` under ``node``'s run, and wait for it.

    Its run id is the node's (``<run id>/<node id>``) and ``suffix``; its nodes sit under the
    node's lineage. Resumed when the node continues (its run resumed, or a retry) and the
    journal has it.
    """
    scope = node.scope
    run_id = scope.nested_run_id(node.node_id) + suffix
    store = scope.runtime.store
    resume = node.continues and store is not None and store.get_run(run_id) is not None
    handle = scope.runtime.start(plan, run_id=None if resume else run_id,
                                 resume=run_id if resume else None,
                                 lineage=node.lineage, within=scope,
                                 on_event=observer_sinks(scope))
    return await run_observed(_finished(handle),
                              lambda: handle.cancel(reason="its pattern's node was cancelled"))


async def _finished(handle: RunHandle) -> RunResult:
    return await handle


def _value(node: NodeContext, result: RunResult, ref: Ref) -> Any:
    """The value ``ref`` points at, or raise why its run did not get there."""
    outcome = result[ref]
    if outcome.ok:
        return ref.pick(outcome.value)
    errors = composition(node.scope).errors
    first = None
    for step in result:  # plan order: the first step that failed is the cause
        if step.ok or step.status == "skipped":
            continue
        error = errors.get(f"{node.lineage}/{step.node_id}")
        if error is not None:
            raise error
        first = first or step
    step = first or outcome
    raise PatternError(f"{node.lineage}: step {step.node_id} ended {step.status}: "
                       f"{step.error or step.reason}")


def _plan(node: NodeContext, suffix: str = "") -> Plan:
    return Plan(name=f"{node.lineage}{suffix}")


def _add(plan: Plan, step: Step, args: Mapping[str, Any], counts: dict[str, int]) -> Ref:
    """Add ``step`` with an id counted across several plans (``writer#2``: the second)."""
    counts[step.name] = counts.get(step.name, 0) + 1
    return plan.add(step, args, node_id=f"{step.name}#{counts[step.name]}")


# -- the patterns --------------------------------------------------------------------------


class Pipeline(Pattern):
    """Steps in order, each step's output the next step's task (see :func:`pipeline`)."""

    kind = "pipeline"

    def __init__(self, steps: Iterable[Step], name: str | None = None) -> None:
        super().__init__(name)
        self.steps = _steps(self.called, steps, "step")

    def describe(self) -> str:
        """``a, then b, then c``."""
        return ", then ".join(s.name for s in self.steps)

    def _passes_on(self) -> tuple[tuple[str | int, ...], Step | None]:
        """A pipeline passes on what its last step passes on."""
        return (), self.steps[-1]

    async def _run(self, node: NodeContext, task: Any, context: Mapping[str, Any]) -> Any:
        plan = _plan(node)
        previous: Any = task
        ref = Ref("")
        for index, step in enumerate(self.steps):
            ref = plan.add(step, {"task": previous, **(context if index == 0 else {})})
            previous = _output(step, ref)
        return _value(node, await _nested(node, plan), ref)


class FanOut(Pattern):
    """Workers on the same task at once, and an optional aggregator (see :func:`fan_out`)."""

    kind = "fan_out"

    def __init__(self, workers: Iterable[Step], aggregate: Step | None = None,
                 name: str | None = None) -> None:
        super().__init__(name)
        self.workers = _steps(self.called, workers, "worker")
        self.aggregate = None if aggregate is None else _check_step(
            f"{self.called} aggregate", aggregate)

    def describe(self) -> str:
        """``a, b and c at once, then agg``."""
        names = [w.name for w in self.workers]
        text = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]} at once"
        return text if self.aggregate is None else f"{text}, then {self.aggregate.name}"

    def _passes_on(self) -> tuple[tuple[str | int, ...], Step | None]:
        """A fan-out passes on what its aggregator passes on (or the list of outputs)."""
        return (), self.aggregate

    def _worker_nodes(self, plan: Plan, task: Any, context: Mapping[str, Any]) -> list[Ref]:
        """Add the workers' nodes; refs to their outputs, in order.

        The one place that decides what the workers run on: a fan-out over several items
        (one node per item) would add its nodes here.
        """
        return [_output(w, plan.add(w, {"task": task, **context})) for w in self.workers]

    async def _run(self, node: NodeContext, task: Any, context: Mapping[str, Any]) -> Any:
        plan = _plan(node)
        outputs = self._worker_nodes(plan, task, context)
        if self.aggregate is None:
            result = await _nested(node, plan)
            return [_value(node, result, ref) for ref in outputs]
        named = {ref.node: ref for ref in outputs}
        agg = plan.add(self.aggregate, {"task": task, **named})
        return _value(node, await _nested(node, plan), agg)


class Reflect(Pattern):
    """A worker and a critic in a loop until the critic accepts (see :func:`reflect`)."""

    kind = "reflect"

    def __init__(self, worker: Step, critic: Step, max_rounds: int = 3,
                 must_accept: bool = False, name: str | None = None) -> None:
        super().__init__(name)
        self.worker = _check_step(f"{self.called} worker", worker)
        self.critic = _check_step(f"{self.called} critic", critic)
        rounds = (int.__int__(max_rounds)  # an int subclass's own comparisons left out
                  if isinstance(max_rounds, int) and not isinstance(max_rounds, bool) else 0)
        if not 1 <= rounds <= MAX_ROUNDS:
            raise ConfigError(f"{self.called}: max_rounds must be a whole number from 1 to "
                              f"{MAX_ROUNDS}, got {shown(max_rounds)}; a loop that never "
                              "converges is bounded by it (and by a Budget)")
        if not isinstance(must_accept, bool):  # 'no' would be taken as true
            raise ConfigError(f"{self.called}: must_accept must be True or False, got "
                              f"{shown(must_accept)}")
        self.max_rounds = rounds
        self.must_accept = must_accept

    def describe(self) -> str:
        """``w drafts and c reviews, up to 3 rounds``."""
        return (f"{self.worker.name} drafts and {self.critic.name} reviews, up to "
                f"{self.max_rounds} round{'s' if self.max_rounds > 1 else ''}")

    def _passes_on(self) -> tuple[tuple[str | int, ...], Step | None]:
        """A reflect loop passes on its draft, ``Reflection.output``."""
        return ("output",), None

    async def _run(self, node: NodeContext, task: Any, context: Mapping[str, Any]) -> Any:
        taken = sorted(_LOOP_ARGUMENTS.intersection(context))
        if taken:  # from round 2 the loop's own value would silently replace the caller's
            raise ConfigError(f"reflect {node.lineage}: {', '.join(taken)} "
                              f"{'is' if len(taken) == 1 else 'are'} the loop's own argument"
                              f"{'' if len(taken) == 1 else 's'} for the worker's later "
                              "rounds; give the value another name")
        from shoal._verdict import Verdict

        draft: Any = None
        verdict = Verdict(accept=False)
        counts: dict[str, int] = {}  # ids go on across rounds: writer#2 is the second draft
        for round_ in range(1, self.max_rounds + 1):
            # each round is a run of its own (<run id>/<node id>/round-2); its nodes sit
            # directly under the loop's node: reflect#1/writer#2, reflect#1/critic#2
            suffix = f"/round-{round_}"
            plan = _plan(node, suffix)
            more = dict(context) if round_ == 1 else {
                **context, "previous_draft": draft, "feedback": verdict.feedback}
            drafted = _output(self.worker, _add(plan, self.worker, {"task": task, **more},
                                                counts))
            reviewed = _output(self.critic, _add(plan, self.critic,
                                                 {"task": task, "draft": drafted}, counts))
            result = await _nested(node, plan, suffix)
            draft = _value(node, result, drafted)
            verdict = verdict_of(_value(node, result, reviewed), node.lineage)
            if verdict.accept:
                return Reflection(draft, True, round_, verdict.feedback)
        reflection = Reflection(draft, False, self.max_rounds, verdict.feedback)
        if self.must_accept:
            raise NotAcceptedError(f"reflect {node.lineage}: the critic accepted none of "
                                   f"{self.max_rounds} drafts; last feedback: "
                                   f"{verdict.feedback[:200]}", reflection)
        return reflection


#: What a reflect loop's worker gets from round 2 on, besides the task and the context.
_LOOP_ARGUMENTS = frozenset({"previous_draft", "feedback"})

# matched after the leading whitespace is stripped: two '\s*' around '\**' tried every split
# of a run of spaces between them (32,000 spaces took 14 s, on the event loop)
_ACCEPT = re.compile(r"\**\s*accept(ed)?\b", re.IGNORECASE)
# what may follow it, matched from its end: 'accept: false' is a verdict's field, not assent
# (the word alone: 'ACCEPT: no changes needed' is assent, 'accept: no.' a refusal)
_SAID = re.compile(r"[ \t*]*[:=][ \t]*\**(?:(?P<no>false|no|not(?: yet)?)|true|yes)\**"
                   r"(?=[ \t]*(?:[.,;!\n]|$))", re.IGNORECASE)


def verdict_of(review: Any, where: str = "") -> Verdict:
    """A critic's output as a :class:`Verdict`.

    A ``Verdict`` is taken as it is; a mapping or object with an ``accept`` field too (a
    replayed or look-alike verdict). Text is an acceptance when its first word is ``ACCEPT``
    or ``ACCEPTED`` (any case, markdown bold allowed), unless a refusal follows it
    (``accept: false``, ``no``, ``not yet``); a JSON object with a bool ``accept`` (in a
    code fence too) is that verdict; any other text is feedback, whole.
    Anything else is a :class:`PatternError`.
    """
    from shoal._verdict import Verdict

    if isinstance(review, Verdict):
        return review
    if isinstance(review, str):
        return _text_verdict(review)
    if isinstance(review, Mapping):
        accept, feedback = review.get("accept"), review.get("feedback", "")
    else:  # its attributes, not its __dict__: a dataclass with slots (or a model) has none
        accept, feedback = _attribute(review, "accept"), _attribute(review, "feedback", "")
    if isinstance(accept, bool):
        return Verdict(accept=accept, feedback=_feedback(feedback))
    raise PatternError(f"reflect {where}: the critic must answer a shoal.patterns.Verdict "
                       f"(output_type=Verdict) or text starting with ACCEPT; got "
                       f"{shown(review)}")


def _text_verdict(review: str) -> Verdict:
    """A critic's text as a :class:`Verdict` (see :func:`verdict_of`).

    A critic without ``output_type=Verdict`` may still answer in its shape: a JSON object
    (``{"accept": true, "feedback": "ok"}``, perhaps fenced) is that verdict, and
    ``accept: false`` (or ``no``, ``= 0``) is a refusal whose first word happens to be
    "accept": taken for assent, a JSON verdict of acceptance ran the loop to ``max_rounds``,
    and a refusal ended it with the draft refused.
    """
    from shoal._verdict import Verdict

    text = review.lstrip()
    if text.startswith(("{", "`")):
        found = _json_verdict(text)
        if found is not None:
            return found
    accepted = _ACCEPT.match(text)
    if not accepted:
        return Verdict(accept=False, feedback=review.strip())
    said = _SAID.match(text, accepted.end())
    if said is not None and said.group("no"):
        return Verdict(accept=False, feedback=review.strip())
    rest = text[accepted.end() if said is None else said.end():]
    return Verdict(accept=True, feedback=rest.strip(" :.-\n*"))


def _json_verdict(text: str) -> Verdict | None:
    """The verdict a JSON object (perhaps in a code fence) holds, if it is one; else None."""
    from shoal._verdict import Verdict

    body = text.rstrip()
    if body.startswith("```") and body.endswith("```") and "\n" in body:
        # a markdown code fence: ```json, its lines, ``` (no regex: a fence never closed
        # made a pattern of one backtrack for minutes on a long answer)
        body = body[body.index("\n"):-3].strip()
    if not (body.startswith("{") and body.endswith("}")):
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # prose in braces, or nested past Python's stack
        return None
    accept = data.get("accept") if isinstance(data, dict) else None
    if not isinstance(accept, bool):
        return None
    return Verdict(accept=accept, feedback=_feedback(data.get("feedback", "")))


def _attribute(value: Any, name: str, default: Any = None) -> Any:
    """``value.name`` if it has one, else ``default`` (its own code's error: ``default`` too)."""
    try:
        return getattr(value, name, default)
    except Exception:  # a property that raises: no such field, as far as a verdict goes
        return default


def _feedback(value: Any) -> str:
    """A look-alike verdict's feedback as text (a value whose ``__str__`` raises: its repr)."""
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except Exception:  # the critic's value's own code: the loop goes on, quoting it
        return shown(value)


def pipeline(*steps: Step, name: str | None = None) -> Pipeline:
    """Steps run in order: the first gets the task, each next one the previous one's output.

    The value is the last step's. ``name`` names the node (default ``"pipeline"``).
    """
    return Pipeline(steps, name)


def fan_out(*workers: Step, aggregate: Step | None = None, name: str | None = None) -> FanOut:
    """Every worker runs on the same task at once; the aggregator combines their outputs.

    The aggregator's prompt is the task, then each worker's output under the worker's node id
    (``reader#1:``, ``reader#2:`` ...; one agent may be given several times). Its output is
    the value; without an aggregator the value is the list of the workers' outputs, in order.
    Every worker must succeed: one that fails fails the fan-out (the others still finish).
    """
    return FanOut(workers, aggregate, name)


def reflect(worker: Step, critic: Step, *, max_rounds: int = 3, must_accept: bool = False,
            name: str | None = None) -> Reflect:
    """The worker drafts and the critic reviews, until the critic accepts or ``max_rounds``.

    Round 1: the worker gets the task. The critic gets the task and the draft (``draft:``) and
    answers a :class:`Verdict` (give it ``output_type=Verdict``) or text whose first word is
    ``ACCEPT`` to accept; any other text is feedback. Each later round the worker gets the
    task, its ``previous_draft`` and the critic's ``feedback``.

    The value is a :class:`Reflection`: the last draft, and ``accepted`` saying whether the
    critic accepted it. Reaching ``max_rounds`` without acceptance is not an error (the draft
    may still be useful; check ``accepted``) unless ``must_accept=True``: then the node fails
    with :class:`NotAcceptedError`. ``max_rounds`` is at most :data:`MAX_ROUNDS`.
    """
    return Reflect(worker, critic, max_rounds, must_accept, name)

