"""``shoal run module:name "task"`` for compositions: a pattern, or a function making a plan.

Besides an :class:`~shoal.Agent`, ``shoal run`` takes

* a pattern (``shoal.patterns.pipeline(...)``, ``fan_out(...)``, ``reflect(...)``): it runs
  on the task as one node;
* a function of the task returning a :class:`~shoal.Plan` (``def review(question) ->
  shoal.Plan``): the plan is the program's structure; its agent nodes, maps and tools run
  side by side. The answer is the value of the node ``answer`` if there is one, else of the
  plan's last node.

Either way the run is shown as an agent tree rooted at the composition's name: every node (a
tool call, an agent, a map's items) is a row, agents with their own calls below them. The
result is the root's :class:`~shoal.agents.result.AgentResult`: its calls are the plan's
nodes, its children the agents that ran as nodes, so ``--json``, the journal and ``shoal
show`` treat it as they treat an agent run. The exit code is 0 only when every node of the
plan succeeded (every item of every map included): a job that read five papers of six did
not do what it claims.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

from shoal import instrumentation
from shoal.agents.agent import Agent
from shoal.agents.budget import Budget
from shoal.agents.context import TreeContext
from shoal.agents.node import SHARED_KEY, Composition, component_of
from shoal.agents.result import AgentResult
from shoal.agents.toolcalls import CallRecord, result_text
from shoal.events import AgentFinished, AgentStarted, EventSink, deliver
from shoal.exceptions import AgentError, ConfigError, PlanError
from shoal.merge import error_text
from shoal.models.base import Model, ToolCall, ToolResultMessage
from shoal.nodeids import plain_text
from shoal.outcome import Outcome, RunResult, jsonable
from shoal.patterns import Pattern
from shoal.plan import Plan
from shoal.runtime import RunHandle, Runtime
from shoal.scheduler import driver
from shoal.scheduler.scope import ORIGIN_KEY, RunScope
from shoal.store.claims import RunClaim, claim_run, claim_run_nothing

__all__ = ["ANSWER_NODE", "Composed", "agents_of", "build_plan", "is_composition",
           "start_composition"]

#: The node whose value is a composed plan's answer (else the plan's last node).
ANSWER_NODE = "answer"

#: What ``shoal run`` takes besides an agent: a pattern, or a function of the task making a plan.
Composed = Pattern | Callable[[str], Plan]

#: Characters of the first failure's message in a composition's error (--json has each whole).
CAUSE_WIDTH = 300

#: The id of a map's item: ``"reader#1[3]"`` is an item of the map ``reader#1``.
_ITEM_ID = re.compile(r"(.*)\[\d+\]", re.DOTALL)


def is_composition(found: object) -> bool:
    """Whether ``found`` is a pattern or a plain function (of the task) to run as a plan."""
    return isinstance(found, Pattern) or (
        inspect.isfunction(found) and not isinstance(found, Agent))


def name_of(composed: Composed, target: str) -> str:
    """The root's name in the tree: the pattern's name, or the function's.

    A function's name is the one the target gives it (a lambda's ``__name__`` is
    ``<lambda>``, and a function made by another has its maker's inner name).
    """
    if isinstance(composed, Pattern):
        return composed.name
    return target.rpartition(":")[2] or getattr(composed, "__name__", "") or "plan"


def build_plan(composed: Composed, task: str, target: str) -> Plan:
    """The plan to run: a pattern as one node, or what the function makes of the task.

    Raises :class:`ConfigError` when the function fails or returns something else, and
    :class:`~shoal.exceptions.PlanError` (every problem) when the plan is not valid.
    """
    if isinstance(composed, Pattern):
        plan = Plan(composed.name)
        plan.add(composed, {"task": task}, node_id=ANSWER_NODE)
    else:
        _check_signature(composed, target)
        plan = _call(composed, task, target)
    if not plan.nodes:  # nothing to run, and no node to be the answer
        raise ConfigError(f"{target} made the plan {plan.name!r} with no nodes; add the calls "
                          "it should run (plan.call(...), plan.map(...))")
    plan.validate()
    return plan


def _check_signature(function: Callable[..., Any], target: str) -> None:
    """Raise :class:`ConfigError` unless ``function`` can be called with the task alone."""
    if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
        raise ConfigError(f"{target} is an async function; shoal run takes a plain function "
                          "of the task returning a shoal.Plan (def, not async def)")
    try:
        inspect.signature(function).bind("task")
    except TypeError:
        raise ConfigError(f"{target} takes {_parameters(function)}; a function that shoal run "
                          "takes is called with the task as its one argument, e.g. "
                          "def review(question: str) -> shoal.Plan") from None
    except ValueError:  # no signature to read (a builtin): calling it will tell
        return


def _parameters(function: Callable[..., Any]) -> str:
    params = str(inspect.signature(function).replace(return_annotation=inspect.Signature.empty))
    return "no argument" if params == "()" else f"the arguments {params}"


def _call(function: Callable[[str], Plan], task: str, target: str) -> Plan:
    """What ``function`` makes of ``task``; :class:`ConfigError` when it fails or is no plan."""
    try:
        plan = function(task)
    except (ConfigError, PlanError, KeyboardInterrupt):
        raise
    except BaseException as exc:  # SystemExit too: a plan function does not end the command
        # (its message is its own code's: error_text never raises, quoting it)
        raise ConfigError(f"{target}: making the plan failed: {error_text(exc)}") from None
    if inspect.isgenerator(plan):
        plan.close()
    if not isinstance(plan, Plan):
        raise ConfigError(f"{target} returned a {type(plan).__name__}; a function that "
                          "shoal run takes must return a shoal.Plan (or name an Agent or "
                          "a pattern instead)")
    return plan


def agents_of(plan: Plan) -> list[Agent[Any]]:
    """Every agent a plan runs: its agent nodes, the agents inside its patterns, subagents."""
    found: dict[int, Agent[Any]] = {}
    todo: list[Any] = [component_of(node.tool) for node in plan]
    while todo:
        item = todo.pop()
        if isinstance(item, Agent):
            for agent in item.with_subagents():
                found.setdefault(id(agent), agent)
        elif isinstance(item, Pattern):
            todo.extend(item.parts())
    return list(found.values())


def answer_node(plan: Plan) -> str:
    """The node whose value is the answer: ``answer``, else the plan's last node."""
    if ANSWER_NODE in plan:
        return ANSWER_NODE
    return plan.nodes[-1].id


class CompositionRun:
    """A composed plan running under a root lineage, and the root's result once it ends."""

    def __init__(self, plan: Plan, name: str, handle: RunHandle, held: Composition,
                 sinks: Sequence[EventSink], claim: RunClaim | None = None) -> None:
        self.plan = plan
        self._claim = claim  # the root's run id, held until the run has ended
        self.name = name
        self.handle = handle
        self.held = held  # the agents' tree, entered once for the whole run
        self.ctx = held.ctx
        self._sinks = sinks
        self.result = AgentResult[Any](name, name, held.ctx.run_id, "")
        # the composition's root runs in this process, as its AgentStarted says
        self.result.where, self.result.pid = driver.HOST, os.getpid()
        self.result.isolation = "inline"

    @property
    def run_id(self) -> str:
        """The id of the plan's run (``shoal show`` and ``resume`` take the root's)."""
        return self.handle.run_id

    def cancel(self, *, reason: str = "cancelled by the user") -> None:
        """Cancel the whole composition: every node, every agent in it."""
        self.handle.cancel(reason=reason)

    async def wait(self) -> AgentResult[Any]:
        """The root's result, once every node has ended."""
        try:
            run = await self.handle
        finally:
            try:
                await self.held.leave()  # its models close, its wall clock stops
            finally:
                if self._claim is not None:
                    self._claim.release()
        return self._finish(run)

    def _finish(self, run: RunResult) -> AgentResult[Any]:
        root = self.result
        root.duration = self.ctx.now()
        root.started_at = run.started_at_epoch
        ordered = self._in_plan_order(run)
        root.calls = [_record(self.name, o, self._arguments(o.node_id), run.started_at_epoch)
                      for o in ordered]
        root.children = _top_agents(self.ctx.results) + self._replayed_agents(ordered)
        for child in root.children:
            root.usage = root.usage + child.usage
        answer = run[answer_node(self.plan)]
        failed = [o for o in run if not o.ok]
        if not failed:
            root.status, root.output = "ok", answer.value
        else:
            root.status = "cancelled" if run.cancelled_reason else "failed"
            root.output = answer.value if answer.ok else None
            shown = "; ".join(f"{o.node_id} {o.status}" for o in failed[:6])
            # the run could not finish (not bad input): --json says AgentError, as for an agent
            error = AgentError(f"{len(failed)} of {len(run)} nodes did not succeed: {shown}"
                               + ("; ..." if len(failed) > 6 else "") + _first_cause(failed))
            error.result = root
            root.error = error
        self._emit(AgentFinished(
            run_id=self.ctx.run_id, time=self.ctx.now(), lineage=self.name, agent=self.name,
            status=root.status, output=_output_text(root.output) if root.ok else "",
            turns=0, total_tokens=root.usage.total_tokens, duration=root.duration,
            error="" if root.error is None else str(root.error)))
        return root

    def _arguments(self, node_id: str) -> str:
        """A node's arguments as the plan gives them, as JSON (for ``--json``, ``shoal show``).

        A ref is shown as ``$node``, a map item's argument as ``$list[3]``.
        """
        item = _ITEM_ID.fullmatch(node_id)
        owner = item[1] if item is not None and node_id not in self.plan else None
        key = owner if owner is not None else node_id
        if key not in self.plan:
            return "{}"
        node = self.plan.node(key)
        args = dict(node.args)
        if owner is not None and node.map is not None and node.map.item_arg in args:
            args[node.map.item_arg] = f"{args[node.map.item_arg]!r}[{_index_of(node_id)}]"
        return json.dumps(jsonable(args))

    def _in_plan_order(self, run: RunResult) -> list[Outcome]:
        """The nodes' outcomes in plan order, a map's items (by index) just before the map."""
        items: dict[str, list[Outcome]] = {}
        for outcome in run:
            item = _ITEM_ID.fullmatch(outcome.node_id)
            if item is not None and item[1] in self.plan:
                items.setdefault(item[1], []).append(outcome)
        ordered: list[Outcome] = []
        for outcome in run:
            item = _ITEM_ID.fullmatch(outcome.node_id)
            if item is None or item[1] not in items:
                ordered += (sorted(items[outcome.node_id], key=_index)
                            if outcome.node_id in items else self._replayed_items(outcome))
                ordered.append(outcome)
        return ordered

    def _replayed_items(self, outcome: Outcome) -> list[Outcome]:
        """The items of a map that a resume took whole from the journal (its value, item order).

        Only for a map that keeps no failures (``partial=False``): its value then has one
        entry per item. A node that is no map has no items.
        """
        node = self.plan.node(outcome.node_id) if outcome.node_id in self.plan else None
        if (node is None or node.map is None or node.map.partial or not outcome.ok
                or not isinstance(outcome.value, list)):
            return []
        return [Outcome(f"{outcome.node_id}[{i}]", outcome.tool, "ok", value,
                        started_at=outcome.started_at, finished_at=outcome.started_at)
                for i, value in enumerate(outcome.value)]

    def _replayed_agents(self, outcomes: Sequence[Outcome]) -> list[AgentResult[Any]]:
        """The agent nodes a resumed run took from the journal: their answers, not asked again.

        They did not run in this session (its turns and tokens were counted in the one that
        ran them), but they are agents of the tree all the same: ``--json``'s ``children`` and
        ``shoal show`` list them, with their status and answer.
        """
        agents: dict[str, tuple[Agent[Any], bool]] = {}
        for node in self.plan:
            component = component_of(node.tool)
            if isinstance(component, Agent):
                agents[node.id] = (component, node.map is not None)
        found: list[AgentResult[Any]] = []
        for outcome in outcomes:
            lineage = f"{self.name}/{outcome.node_id}"
            if not outcome.ok or lineage in self.ctx.results:
                continue
            item = _ITEM_ID.fullmatch(outcome.node_id)
            owner = agents.get(item[1]) if item is not None else None
            own = agents.get(outcome.node_id)
            agent = (owner[0] if owner is not None and owner[1]  # an item of an agent map
                     else own[0] if own is not None and not own[1] else None)
            if agent is not None:
                found.append(AgentResult[Any](agent.name, lineage, self.ctx.run_id, "",
                                              output=outcome.value, status="ok",
                                              duration=outcome.duration))
        return found

    def _emit(self, event: Any) -> None:
        for sink in self._sinks:
            deliver(sink, event)


def start_composition(composed: Composed, task: str, target: str, *, runtime: Runtime,
                      sinks: Sequence[EventSink], run_id: str, resume: bool = False,
                      model: Model | None = None, budget: Budget | None = None,
                      force: bool = False, plan: Plan | None = None) -> CompositionRun:
    """Start ``composed`` on ``task`` in ``runtime``, under the root ``run_id``.

    The plan runs as ``<run_id>/<name>``, journaled like an agent's steps, so that the root
    record (kept by the CLI) and the plan's own records do not meet; ``resume`` continues it.
    ``model`` replaces every agent's model (``--model``). ``plan``: the plan
    :func:`build_plan` made already (else it is made here).
    """
    name = name_of(composed, target)
    plan = plan if plan is not None else build_plan(composed, task, target)
    store = runtime.store
    # the whole composition's claim, as an agent tree's (Agent.start): its plan's run is nested
    # under the root and claims nothing, so without it a resume from another process while
    # this one runs was refused only by the record's pid, saying the lock folder was removed
    claim = claim_run_nothing() if store is None else claim_run(store, run_id, force=force)
    try:
        return _start(composed, name, plan, task, runtime, sinks, run_id, claim, resume, model,
                      budget, force)
    except BaseException:
        claim.release()
        raise


def _start(composed: Composed, name: str, plan: Plan, task: str, runtime: Runtime,
           sinks: Sequence[EventSink], run_id: str, claim: RunClaim, resume: bool,
           model: Model | None, budget: Budget | None, force: bool) -> CompositionRun:
    """:func:`start_composition` once the root's run id is claimed."""
    ctx = TreeContext(run_id=run_id, runtime=runtime, budget=budget, sinks=sinks,
                      model_override=model, resuming=resume, force=force)
    for agent in agents_of(plan):  # a missing key or SDK stops the run here
        ctx.model_for(agent.model)
    held = Composition(ctx)
    held.enter()  # its models stay open, its wall clock runs, until the run ends
    # the plan's events count from the root's start, as the root's own do
    shared: dict[str, Any] = {SHARED_KEY: held, ORIGIN_KEY: ctx.started,
                              instrumentation.SHARED_KEY: ctx.observing}
    plan_run = f"{run_id}/{name}"
    store = runtime.store
    again = resume and store is not None and store.get_run(plan_run) is not None
    started = AgentStarted(run_id=run_id, time=ctx.now(), lineage=name, agent=name,
                           prompt=task, depth=0, where=driver.HOST, pid=os.getpid(),
                           isolation="inline")
    for sink in sinks:
        deliver(sink, started)
    handle = runtime.start(plan, run_id=None if again else plan_run,
                           resume=plan_run if again else None, lineage=name,
                           on_event=list(sinks), force=force, budget=budget,
                           within=RunScope(runtime, run_id, budget=budget, shared=shared,
                                           resuming=resume))
    run = CompositionRun(plan, name, handle, held, sinks, claim)
    run.result.prompt = task
    return run


#: Characters of the answer an :class:`AgentFinished` event carries (as an agent's does).
OUTPUT_CHARS = 200


def _output_text(value: Any) -> str:
    """The answer's start for the root's ``AgentFinished``; never raises.

    The answer is any node's value: a tool's output may be a huge int (no text past 4,300
    digits), nest too deep for ``str``, or have a ``__str__`` that raises (or exits). It is
    written as a model reads a tool's result: text as it is, anything else as JSON.
    """
    if isinstance(value, str):
        return plain_text(value)[:OUTPUT_CHARS]
    return json.dumps(jsonable(value), ensure_ascii=False)[:OUTPUT_CHARS]


def _top_agents(results: dict[str, AgentResult[Any]]) -> list[AgentResult[Any]]:
    """The agents that ran as nodes, at any depth of patterns: those with no agent above.

    (A subagent is in its parent's ``children`` already.)
    """
    lineages = set(results)
    return [r for lineage, r in results.items()
            if not any(lineage.startswith(f"{other}/") for other in lineages)]


def _first_cause(failed: Sequence[Outcome]) -> str:
    """The error of the node that failed first (not a map's summary of its items), if any."""
    causes = [o for o in failed if o.status == "failed" and o.error is not None
              and o.error.type != "MapItemsFailed"]
    if not causes:
        return ""
    first = min(causes, key=lambda o: o.finished_at if o.finished_at is not None else 0.0)
    assert first.error is not None
    message = first.error.message
    cut = message if len(message) <= CAUSE_WIDTH else message[:CAUSE_WIDTH] + "…"
    return f" (first: {first.node_id}: {first.error.type}: {cut})"


def _index(item: Outcome) -> int:
    """A map item's index (``reader#1[3]``: 3)."""
    return _index_of(item.node_id)


def _index_of(node_id: str) -> int:
    return int(node_id.rsplit("[", 1)[1].rstrip("]"))


def _record(root: str, outcome: Outcome, arguments: str, epoch: float) -> CallRecord:
    """A node of the plan as a call of the root (an agent node is also a child agent)."""
    text, is_error = result_text(outcome)
    call = ToolCall(outcome.node_id, outcome.tool, arguments)
    return CallRecord(call, f"{root}/{outcome.node_id}", outcome.status,
                      ToolResultMessage(outcome.node_id, outcome.tool, text, is_error), outcome,
                      epoch)

