"""Agents as plan nodes: ``plan.call(agent, task=...)`` runs the agent as one node.

An agent node takes a ``task`` and, optionally, more keyword arguments; any of them may be
refs to other nodes' outputs. The agent's prompt is the task followed by each extra argument
under its name (see :func:`render_prompt`). The node's value is the agent's answer: the text,
or its ``output_type`` instance (so ``ref["field"]`` reaches a field). An agent that ends
without an answer (budget, ``max_turns``, a model error, cancellation) fails the node with the
agent's error.

Every agent node (and every pattern, :mod:`shoal.patterns`) of one outermost run, at any depth
of nesting, runs in one :class:`~shoal.agents.context.TreeContext`: one budget tracker, so a
``Budget`` given to the run holds exactly across all of them; one set of model gates; one
place to cancel a subtree. It lives in the run's :attr:`RunScope.shared
<shoal.scheduler.scope.RunScope.shared>`, which nested runs share. Each agent runs under the
lineage of its node (``pipeline#1/reader#2``), and its model turns and tool phases are
journaled runs named after that lineage, so a resumed plan replays an agent's finished steps
instead of asking again, exactly as a resumed agent tree does for its subagents.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from shoal.agents.agent import Agent  # at run time: the node tool's schema reads the hints
from shoal.agents.context import TreeContext, is_within, tree_in
from shoal.agents.result import AgentResult
from shoal.agents.run import AgentRun
from shoal.exceptions import AgentError, ShoalError, ToolDefinitionError
from shoal.nodeids import plain_text
from shoal.outcome import jsonable
from shoal.policy import ToolPolicy
from shoal.scheduler.scope import RunScope, register_injector
from shoal.schema import Injected
from shoal.tools import Tool

if TYPE_CHECKING:
    from shoal.events import EventSink
    from shoal.executors.base import Call

__all__ = ["Composition", "NodeContext", "NodeInjected", "agent_node_tool", "check_rerun",
           "component_of", "composition",
           "observer_sinks", "render_prompt", "render_value", "run_observed"]

T = TypeVar("T")

#: The key of the :class:`Composition` in :attr:`RunScope.shared`.
SHARED_KEY = "shoal.composition"


@dataclass(frozen=True, slots=True)
class NodeContext:
    """Where a node that runs agents or nested runs sits: its run's scope, id and attempt."""

    scope: RunScope
    node_id: str
    attempt: int = 1
    #: the attempt's call, whose outcome :meth:`ran_on` places
    call: Call | None = field(default=None, compare=False, repr=False)

    def ran_on(self, where: str) -> None:
        """Record on the node's outcome that its work ran on ``where`` (an agent's machine).

        The node itself only awaits its agent: the outcome names where the agent ran (a Ray
        agent's node), not the machine that waited for it. ``""`` changes nothing.
        """
        if where and self.call is not None:
            self.call.where = where

    @property
    def continues(self) -> bool:
        """Whether what this node ran before (journaled) is continued rather than started.

        So when its run is resumed, and when the node runs again after a failed attempt
        (``retries``): the steps it finished replay, the rest run.
        """
        return self.scope.resuming or self.attempt > 1

    @property
    def lineage(self) -> str:
        """The node's lineage: the run's lineage and the node id (``pipeline#1/reader#2``)."""
        return self.scope.where(self.node_id)


_FAR = frozenset({"process", "ray"})  # backends whose calls run in another process


def _node_context(call: Call, scope: RunScope | None) -> NodeContext:
    if scope is None:  # the runtime gives every run a scope; a bare executor call has none
        raise ShoalError(f"{call.tool.name!r} runs agents: run it in a plan through a runtime")
    if call.isolation in _FAR:  # its context (the run's scope) cannot be sent there
        raise ToolDefinitionError(
            f"{call.tool.name!r} runs an agent or pattern node, which only awaits its agents' "
            f"steps and cannot run on the {call.isolation} backend; leave its node inline and "
            f"give the Agent isolation={call.isolation!r} to run the agent itself there")
    return NodeContext(scope, call.node_id, call.attempt, call)


register_injector("node", _node_context)

#: A parameter the runtime fills with the call's :class:`NodeContext`.
NodeInjected = Annotated[NodeContext, Injected("node")]


@dataclass(eq=False)
class Composition:
    """What the agent and pattern nodes of one outermost run share (see the module docstring).

    ``errors`` keeps the exception each failed agent or pattern node raised, by lineage: a
    run's outcomes keep only an error's type and message, and a pattern whose step failed
    raises the step's own exception (a ``BudgetExceeded`` stays one through any nesting).
    """

    ctx: TreeContext
    #: whether the tree is this composition's own (a plan's), not an agent's it joined
    owned: bool = True
    errors: dict[str, BaseException] = field(default_factory=dict)
    active: int = 0

    def enter(self) -> None:
        """An agent or pattern node starts: the first one arms the ``wall_clock`` budget."""
        self.active += 1
        if self.active == 1 and self.owned:
            self.ctx.start_clock()

    async def leave(self) -> None:
        """A node ended: when none runs any more, disarm the clock and close the models.

        Models the tree made from strings (``"openai:..."``, ``"local"``) hold connections
        or a server. Inside a pattern they stay open from step to step (the pattern's node
        is running); once no agent or pattern node runs there is no later moment that is sure
        to come, so they close, and a later node of the run makes them again.
        """
        self.active -= 1
        if self.active == 0 and self.owned:  # an agent's tree: its root does this
            self.ctx.stop_clock()
            await self.ctx.close_models()


def check_rerun(node: NodeContext, shared: Composition) -> None:
    """Refuse to run an agent or pattern node again when nothing can replay what it did.

    A node retried after a failed attempt continues from the journal: its finished tool
    calls replay. With no journal (``Runtime(store=None)``) they would run a second time
    (a board written twice, a message sent twice), so the retry fails saying so instead.
    A node whose agents made no tool call yet starts afresh: that is safe.
    """
    if node.attempt == 1 or node.scope.runtime.store is not None:
        return
    ran = sorted(lineage for lineage, result in shared.ctx.results.items()
                 if is_within(lineage, node.lineage) and result.calls)
    if ran:
        raise AgentError(
            f"{node.lineage} cannot be retried (attempt {node.attempt}): its agents made tool "
            f"calls ({', '.join(ran[:3])}{' ...' if len(ran) > 3 else ''}), and with no "
            "journal (Runtime(store=None)) nothing replays them, so they would run a second "
            "time; give the runtime a store (the default, 'memory', will do)")


def composition(scope: RunScope) -> Composition:
    """The :class:`Composition` of the outermost run around ``scope`` (made on first use)."""
    found = scope.shared.get(SHARED_KEY)
    if found is None:
        tree = tree_in(scope.shared)  # a pattern among an agent's tools: join its tree
        if tree is not None:
            # made afresh each time, its errors kept by the tree: kept in the tree's own
            # scope, it would make the tree a reference cycle (tree, scope, composition)
            return Composition(tree, owned=False, errors=tree.joined_errors)
        found = Composition(TreeContext(
            run_id=scope.run_id, runtime=scope.runtime, budget=scope.budget,
            sinks=scope.sinks, resuming=scope.resuming, board=scope.board,
            within=scope.shared))  # its events on the run's clock, traced as it is
        # held until the outermost run ends: its agents' models stay open from one node
        # to the next (a local model server is not restarted for each)
        found.enter()
        scope.at_end(found.leave)
        scope.shared[SHARED_KEY] = found
    assert isinstance(found, Composition)
    return found


# -- prompts --------------------------------------------------------------------------------


def render_value(value: Any) -> str:
    """A value as prompt text: a string as it is, anything else as indented JSON.

    JSON as :func:`shoal.outcome.jsonable` makes it: pydantic models and dataclasses become
    objects, and what JSON cannot hold becomes its ``repr``.
    """
    if isinstance(value, str):  # a subclass's text: its own __str__ and __format__ left out
        return plain_text(value)
    return json.dumps(jsonable(value), indent=2, ensure_ascii=False)


def render_prompt(task: Any, context: Mapping[str, Any]) -> str:
    """The prompt of an agent node: the task, then each extra argument under its name.

    ``render_prompt("Write the review", {"summaries": ["a", "b"]})`` is::

        Write the review

        summaries:
        [
          "a",
          "b"
        ]
    """
    parts = [render_value(task)]
    parts += [f"{name}:\n{render_value(value)}" for name, value in context.items()]
    return "\n\n".join(parts)


# -- running ----------------------------------------------------------------------------------


async def run_observed(work: Coroutine[Any, Any, T], on_cancel: Callable[[], None]) -> T:
    """Run ``work`` as its own task; when the caller is cancelled, ``on_cancel()`` stops it.

    The caller waits until ``work`` has ended (its outcomes recorded), then raises
    ``CancelledError``: a cancelled node never leaves work running behind it.
    """
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            value = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            if not cancelled:
                on_cancel()
            cancelled = True
            continue
        if cancelled:
            raise asyncio.CancelledError
        return value


async def _agent_node(agent: Agent[Any], task: Any, shoal_node: NodeInjected,
                      **context: Any) -> Any:
    """Run the agent on the task (and the other arguments, rendered into its prompt).

    Args:
        agent: the agent (bound when the node's tool is made).
        task: what the agent should do: text, or any value (shown to it as JSON).
        shoal_node: where the node runs (filled in by the runtime).
        **context: more for the prompt, each shown under its name.
    """
    shared = composition(shoal_node.scope)
    check_rerun(shoal_node, shared)
    lineage = shoal_node.lineage
    if shoal_node.continues:
        shared.ctx.resume_within(lineage)
    run = AgentRun(agent, shared.ctx, lineage=lineage, depth=0,
                   prompt=render_prompt(task, context))
    result = await _run_agent(shared, run)
    shoal_node.ran_on(result.where)
    if result.status == "ok":
        return result.output
    error = result.error or AgentError(f"agent {lineage} ended {result.status}")
    shared.errors[lineage] = error
    raise error


_agent_node._runs_component = True  # type: ignore[attr-defined]  # see component_of


async def _run_agent(shared: Composition, run: AgentRun) -> AgentResult[Any]:
    """Run one agent node's agent; cancelling the node cancels the agent and its subagents."""
    shared.enter()
    try:
        return await run_observed(
            _settled_agent(run),
            lambda: shared.ctx.cancel(run.lineage, "cancelled with its plan node"))
    finally:
        await shared.leave()


async def _settled_agent(run: AgentRun) -> AgentResult[Any]:
    """The agent's result, also when it ended by cancellation (a budget breach, its node)."""
    try:
        return await run.run()
    except asyncio.CancelledError:
        if run.result.status == "running":
            raise
        return run.result


def agent_node_tool(agent: Agent[Any]) -> Tool[..., Any]:
    """The tool that runs ``agent`` as a plan node (see the module docstring)."""
    about = agent.description or (agent.instructions.strip().splitlines() or [""])[0]
    # Inline: it only awaits the agent's steps, which run as runs of their own. Idempotent in
    # the resume sense: a node that was running when its run stopped runs again on resume, and
    # every step its agent finished (model turns, tool phases) replays from the journal; calls
    # that were in flight inside are settled by their own tools' idempotency.
    return Tool(partial(_agent_node, agent), name=agent.name,
                description=f"Run the {agent.name} agent" + (f": {about}" if about else ""),
                policy=ToolPolicy(isolation="inline", idempotent=True))


def component_of(tool: Tool[..., Any]) -> Any:
    """The agent or pattern a node tool runs (``None`` for an ordinary tool)."""
    fn = tool.fn
    if isinstance(fn, partial) and fn.args and getattr(fn.func, "_runs_component", False):
        return fn.args[0]
    return None


def observer_sinks(scope: RunScope) -> tuple[EventSink, ...]:
    """The sinks for a run nested in the run of ``scope``: those that run was given itself.

    Not the runtime's: a nested run gets those from the runtime, and passing them again would
    send each of its events twice. Under an agent's tool phase, the agent tree's sinks (that
    phase's own sink stamps lineages for the phase's calls only).
    """
    shared = composition(scope)
    if not shared.owned:
        return (shared.ctx.emit_nested,) if shared.ctx.observed_nested else ()
    own = scope.runtime._sinks  # the runtime's own sinks, to leave them out
    return tuple(s for s in scope.sinks if s not in own)
