"""``Agent``: a model, instructions, tools and subagents, run with every tool call in parallel.

An :class:`Agent` is an immutable definition; each :meth:`Agent.run` makes its own run state
(:class:`~shoal.agents.run.AgentRun` inside a :class:`~shoal.agents.context.TreeContext`), so
one agent can run many times at once and serve as a subagent of many parents.

A subagent becomes a tool of its parent named after it, taking one argument, ``task``; the
parent's model may call several in one turn and they run in parallel, each in a fresh context.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import re
from collections.abc import Callable, Collection, Coroutine, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Generic, Literal, get_args

from typing_extensions import TypeVar

from shoal.agents.budget import Budget
from shoal.agents.context import DEFAULT_MODEL, TreeContext
from shoal.agents.output import OutputSpec
from shoal.agents.result import AgentResult
from shoal.agents.run import AgentRun
from shoal.agents.toolcalls import ToolErrorFormat, check_run_options
from shoal.approvals import Approver, Callback
from shoal.events import EventSink
from shoal.exceptions import (
    AgentError,
    ConfigError,
    ShoalError,
    ToolDefinitionError,
    bounded_text,
    describe_exception,
    exception_message,
)
from shoal.limits import ProcessLimits, env_names, parse_process_limits
from shoal.merge import shown
from shoal.models import check_model_spec
from shoal.models.base import Model, ModelSettings, ToolSpec
from shoal.models.retry import ModelGates
from shoal.nodeids import plain_text
from shoal.plan import as_tool
from shoal.policy import ToolPolicy, _labels, _resources
from shoal.runtime import run_blocking
from shoal.scheduler.scope import check_budget
from shoal.schema import Injected
from shoal.streaming import DEFAULT_BUFFER, EventStream, Started
from shoal.tools import Tool

if TYPE_CHECKING:
    from shoal.agents.settle import Settling
    from shoal.board import Board
    from shoal.runtime import Runtime
    from shoal.store.claims import RunClaim

__all__ = ["Agent", "AgentHandle"]

#: The type of an agent's answer: ``str`` unless ``output_type`` says otherwise, so
#: ``agent = shoal.Agent(...)`` needs no annotation under a strict type checker.
T = TypeVar("T", default=str)


#: How an agent works: ``"tools"`` (each turn's tool calls run as they are asked for) or
#: ``"plan"`` (the model writes a whole plan of calls first; see :mod:`shoal.agents.planner`).
AgentMode = Literal["tools", "plan"]

#: Where an agent's turn loop runs (see ``Agent(isolation=)`` and :mod:`shoal.agents.remote`).
AgentIsolation = Literal["inline", "process", "ray"]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what OpenAI and Anthropic accept as tool names


async def _subagent_entry(task: str,
                          shoal_node: Annotated[Any, Injected("node")] = None) -> str:
    """Run the subagent on a task and return its final answer.

    Args:
        task: what the subagent should do; it sees nothing else of this conversation.
        shoal_node: the call's place in its run (filled in by the runtime): its outcome
            records where the subagent ran.
    """
    raise AssertionError("a subagent's tool is bound to its run before it is called")


async def _inline_subagent_entry(task: str) -> str:
    """Run the subagent on a task and return its final answer.

    Args:
        task: what the subagent should do; it sees nothing else of this conversation.
    """
    raise AssertionError("a subagent's tool is bound to its run before it is called")


@dataclass(frozen=True, eq=False)
class Agent(Generic[T]):
    """A model that calls tools and subagents, with every call of a turn running in parallel.

    Args:
        name: the agent's name (letters, digits, ``_``, ``-``); a subagent is offered to its
            parent's model as a tool of this name.
        model: a :class:`~shoal.models.base.Model`, or a string: ``"local"`` (a small model
            run on this machine; the ``local`` extra; the default), ``"openai:gpt-4.1-mini"``,
            ``"anthropic:claude-sonnet-4-5"``. A string of another form is a
            :class:`~shoal.exceptions.ConfigError` here, naming the close match.
        instructions: the system prompt.
        tools: tools (or plain functions) the model may call; a pattern of
            :mod:`shoal.patterns` too (it takes a ``task``, and its agents run within this
            agent's tree: its budget, cancellation and journal).
        subagents: agents the model may delegate to, as tools taking a ``task``.
        description: what a parent's model is told this agent does (default: the first line
            of the instructions).
        output_type: the type of the final answer (a pydantic model, dataclass, ...); the
            model is asked for JSON, which is validated, and asked again when it does not fit.
        max_turns: model turns (requests) this agent may make in one run, on its own; the whole
            tree's requests are bounded by ``Budget(requests=)``. Each counts one in
            ``Usage.requests``.
        output_retries: how often an answer that does not fit ``output_type`` is sent back.
        settings: sampling settings (temperature, max_tokens, ...).
        budget: the default budget when this agent is the root of a run.
        tool_error_format: words what the model reads about a call that did not succeed:
            a function of the call's :class:`~shoal.agents.toolcalls.CallRecord` (whose
            ``message.content`` is shoal's sentence, e.g. ``fetch timed out after 1 s``, and
            ``outcome`` the full error) returning the text to send instead.
        stream_dispatch: read the model's reply as a stream and start each tool call the
            moment its arguments are complete, rather than when the reply ends (``None``, the
            default: on for models whose stream reports each call as it completes,
            :attr:`~shoal.models.base.Model.streams_tool_calls`). Results still go back in
            the order asked; ``False`` turns it off.
        mode: ``"tools"`` (the default): each model turn asks for tool calls and sees their
            results, until it answers. ``"plan"``: the LLMCompiler-style planner (see
            :mod:`shoal.agents.planner`): the model writes a whole plan of numbered calls
            (``$N`` refers to call N's result), each call starts as soon as its line is
            read and its inputs are done, and a joiner turn then reads the results and
            either answers or asks for a new plan. Tools and subagents can both be called
            from a plan.
        max_replans: in ``mode="plan"``, how many new plans the joiner may ask for after
            the first (each new plan can use the finished results of the earlier ones); a
            joiner asking for more ends the run with
            :class:`~shoal.exceptions.MaxReplansExceeded`.
        isolation: where the agent's turn loop runs: ``"inline"`` (the default: on the
            caller's event loop) or ``"process"``: a process of its own, with its own model
            client, a scrubbed environment (``env``) and OS limits (``limits``), sharing the
            tree's budget, model gates, events, approver, cancellation and journal (see
            :mod:`shoal.agents.remote`), or ``"ray"``: a Ray actor of its own, on a node
            with what ``resources`` and ``labels`` ask for, sharing the same (see
            :mod:`shoal.agents.ray_agent`).
        env: names of environment variables the agent's process may see besides the
            allow-list every worker gets (``isolation="process"``): its provider's key, e.g.
            ``env=["OPENAI_API_KEY"]``; nothing else of the parent's environment reaches it.
            With ``isolation="ray"`` their values are given to the agent's actor (through
            Ray's ``runtime_env``), on top of the node's own environment.
        limits: OS limits on the agent's process (``isolation="process"``), a
            :class:`~shoal.limits.ProcessLimits` or a mapping as a tool's ``limits=`` takes
            (``{"memory": "2GB", "open_files": 256}``); ``cpu_seconds`` counts its whole run.
        resources: what the agent's actor needs on a Ray cluster (``isolation="ray"``), as a
            tool's ``resources=``: ``{"num_cpus": 1}``, ``{"memory": 2e9}``, a custom
            resource ``{"node-b": 1}``; by default it reserves no CPU.
        labels: the node labels its actor needs (``isolation="ray"``), as a tool's
            ``labels=``: ``{"zone": "b"}``.
    """

    name: str
    model: str | Model = DEFAULT_MODEL
    instructions: str = ""
    tools: Sequence[Tool[..., Any] | Callable[..., Any]] = ()
    subagents: Sequence[Agent[Any]] = ()
    description: str = ""
    output_type: type[T] | None = None
    max_turns: int = 10
    output_retries: int = 2
    settings: ModelSettings = field(default_factory=ModelSettings)
    budget: Budget | None = None
    tool_error_format: ToolErrorFormat | None = None
    stream_dispatch: bool | None = None
    mode: AgentMode = "tools"
    max_replans: int = 2
    isolation: AgentIsolation = "inline"
    env: Sequence[str] = ()
    limits: ProcessLimits | dict[str, Any] | None = None
    resources: Mapping[str, float] | tuple[tuple[str, float], ...] = ()
    labels: Mapping[str, str] | tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            named = (bounded_text(repr(self.name), 120) if isinstance(self.name, str)
                     else shown(self.name))  # a message to read: bounded; no repr of its own
            raise ConfigError(f"agent name {named} must be 1-64 letters, digits, '_' or "
                              "'-' (it becomes a tool name for parent agents)")
        if type(self.name) is not str:  # a subclass's own __eq__/__hash__/__str__ left out
            object.__setattr__(self, "name", plain_text(self.name))
        try:
            check_model_spec(self.model)  # a misspelt model fails here, not when a run starts
        except ConfigError as exc:
            raise ConfigError(f"agent {self.name!r}: {exc}") from None
        self._check_counts()
        for text in ("instructions", "description"):  # both go into prompts as they are
            if not isinstance(getattr(self, text), str):
                raise ConfigError(f"agent {self.name!r}: {text} must be a str, got "
                                  f"{type(getattr(self, text)).__name__} "
                                  f"{shown(getattr(self, text))}")
        try:
            check_budget(self.budget)
        except ConfigError as exc:
            raise ConfigError(f"agent {self.name!r}: {exc}") from None
        agents = [t for t in self._listed("tools") if isinstance(t, Agent)]
        if agents:  # a pattern is welcome: it runs as a tool within this agent's tree
            raise ConfigError(f"agent {self.name!r}: {agents[0]!r} is not a tool; an agent the "
                              "model may delegate to belongs in subagents=")
        object.__setattr__(self, "tools", self._as_tools())
        object.__setattr__(self, "subagents", self._listed("subagents"))
        strays = [a for a in self.subagents if not isinstance(a, Agent)]
        if strays:
            raise ConfigError(f"agent {self.name!r}: subagents must be Agents, got "
                              f"{shown(strays[0])} (a function the model may call belongs in "
                              "tools=)")
        if self.tool_error_format is not None and not callable(self.tool_error_format):
            raise ConfigError(f"agent {self.name!r}: tool_error_format must be a function of a "
                              f"CallRecord, got {shown(self.tool_error_format)}")
        if not isinstance(self.settings, ModelSettings):  # else it fails at the provider
            raise ConfigError(f"agent {self.name!r}: settings= takes a shoal.models."
                              f"ModelSettings(temperature=..., max_tokens=...), got "
                              f"{type(self.settings).__name__} {shown(self.settings)}")
        if self.stream_dispatch is not None and not isinstance(self.stream_dispatch, bool):
            raise ConfigError(f"agent {self.name!r}: stream_dispatch must be True, False or "
                              f"None (on where the model streams), got "
                              f"{shown(self.stream_dispatch)}")
        try:
            self.output_spec  # noqa: B018 - built now, so a type pydantic cannot use fails here
        except Exception as exc:  # schema generation and similar; pydantic's own repr of a
            # value that is no type may raise, or recurse without end (a list 100,000 deep)
            raise ConfigError(f"agent {self.name!r}: output_type {shown(self.output_type)} "
                              f"cannot be checked: {describe_exception(exc)}") from None
        names = [t.name for t in self._tools] + [a.name for a in self.subagents]
        clashes = sorted({n for n in names if names.count(n) > 1})
        if clashes:
            remote = any(hasattr(t, "remote") for t in self._tools if t.name in clashes)
            raise ConfigError(f"agent {self.name!r} has several tools or subagents named "
                              f"{clashes}; names must be unique" + (
                                  " (two MCP servers with the same tool names: give one's "
                                  "tools a prefix, shoal.mcp.tools(..., prefix='b_'))"
                                  if remote else ""))
        self._check_mode()
        self._check_isolation()

    def _check_isolation(self) -> None:
        isolations = get_args(AgentIsolation)
        if not isinstance(self.isolation, str) or self.isolation not in isolations:
            raise ConfigError(f"agent {self.name!r}: isolation must be one of "
                              f"{', '.join(map(repr, isolations))}, got {shown(self.isolation)}")
        try:
            object.__setattr__(self, "env", env_names(self.env))
        except ValueError as exc:
            raise ConfigError(f"agent {self.name!r}: env {exc}") from None
        try:
            object.__setattr__(self, "limits", parse_process_limits(self.limits))
        except ConfigError as exc:
            raise ConfigError(f"agent {self.name!r}: {exc}") from None
        if self.isolation == "inline" and (self.env or self.limits is not None):
            raise ConfigError(f"agent {self.name!r}: env= and limits= apply to an agent in "
                              "its own process; add isolation='process'")
        if self.isolation == "ray" and self.limits is not None:
            raise ConfigError(f"agent {self.name!r}: limits= applies to isolation='process'; "
                              "on Ray ask for what the agent needs with resources= "
                              "(e.g. {'memory': 2e9})")
        self._check_placement()

    def _check_placement(self) -> None:
        try:
            object.__setattr__(self, "resources", _resources(
                dict(self.resources) if isinstance(self.resources, tuple) else self.resources))
            object.__setattr__(self, "labels", _labels(
                dict(self.labels) if isinstance(self.labels, tuple) else self.labels))
        except (ToolDefinitionError, TypeError, ValueError) as exc:
            raise ConfigError(f"agent {self.name!r}: {exc}") from None
        if (self.resources or self.labels) and self.isolation != "ray":
            raise ConfigError(f"agent {self.name!r}: resources= and labels= place an agent on "
                              "a Ray cluster; add isolation='ray'")

    def _check_mode(self) -> None:
        modes = get_args(AgentMode)
        if not isinstance(self.mode, str) or self.mode not in modes:
            raise ConfigError(f"agent {self.name!r}: mode must be one of "
                              f"{', '.join(map(repr, modes))}, got {shown(self.mode)}")
        if self.mode == "plan" and not self.tools_by_name:
            raise ConfigError(f"agent {self.name!r}: a planner (mode='plan') needs tools to "
                              "plan with: give it tools= or subagents=")

    def _check_counts(self) -> None:
        for name, least in (("max_turns", 1), ("output_retries", 0), ("max_replans", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"agent {self.name!r}: {name} must be a whole number, "
                                  f"{least} or more, got {shown(value)}")

    def _as_tools(self) -> tuple[Tool[..., Any], ...]:
        """The ``tools`` as Tools; an item that is not one names the agent and its place."""
        tools = []
        for index, item in enumerate(self._listed("tools")):
            try:
                made = as_tool(item)
                made.check_api_name()  # the model is offered it: a name its API refuses fails
            except ToolDefinitionError as exc:  # every request, not this line
                raise ToolDefinitionError(f"agent {self.name!r}: tools[{index}]: {exc}") from None
            tools.append(made)
        return tuple(tools)

    def _listed(self, field_name: str) -> tuple[Any, ...]:
        """The ``tools`` or ``subagents`` as a tuple; one item given bare is a mistake."""
        value = getattr(self, field_name)
        if isinstance(value, Tool | Agent | str | bytes) or callable(value) or not isinstance(
                value, Sequence | set | frozenset):
            raise ConfigError(f"agent {self.name!r}: {field_name} must be a list, got "
                              f"{shown(value)}; write {field_name}=[...]")
        return tuple(value)

    # -- derived, cached once per definition -------------------------------------------

    @functools.cached_property
    def output_spec(self) -> OutputSpec | None:
        """How the final answer is checked (``None``: plain text)."""
        if self.output_type is None or self.output_type is str:
            return None
        return OutputSpec.of(self.output_type)

    @functools.cached_property
    def full_instructions(self) -> str:
        """The instructions, plus the output format when there is an ``output_type``."""
        spec = self.output_spec
        if spec is None:
            return self.instructions
        return f"{self.instructions}\n\n{spec.instructions()}".strip()

    @functools.cached_property
    def _request_parts(self) -> dict[str, Any]:
        """The fixed parts of this agent's model requests, as canonical JSON.

        Its instructions, tools, settings and output schema: made once per definition, not
        once per run, for the requests' digests (see
        :class:`~shoal.agents.run.ConversationDigest`).
        """
        from shoal.store.fingerprint import canonical

        spec = self.output_spec
        parts: dict[str, Any] = canonical({
            "instructions": self.full_instructions, "tools": self.tool_specs,
            "settings": self.settings, "output_schema": spec.schema if spec else None})
        return parts

    @functools.cached_property
    def _request_json(self) -> tuple[bytes, bytes]:
        """The canonical JSON of :attr:`_request_parts` with a lineage, split around it.

        The digest of each run's requests hashes ``before + lineage + after``: the parts that
        are the same for every run are encoded once per definition, not once per run.
        """
        from shoal.agents.run import request_json_around_lineage

        return request_json_around_lineage(self._request_parts)

    @functools.cached_property
    def subagent_tool(self) -> Tool[..., Any]:
        """The tool a parent's model sees for this agent: it takes a ``task``."""
        about = self.description or (self.instructions.strip().splitlines() or [""])[0]
        description = (f"Delegate a task to the {self.name} agent"
                       + (f": {about}" if about else "")
                       + ". Several calls run in parallel, each with a fresh context.")
        # Idempotent: on resume a subagent that was running at the crash runs again, and its
        # own journaled steps replay, so nothing it finished is asked or done twice.
        return Tool(_subagent_entry, name=self.name, description=description,
                    policy=ToolPolicy(isolation="inline", idempotent=True))

    @functools.cached_property
    def _call_tool(self) -> Tool[..., Any]:
        """The tool a parent binds for each call of this agent: :attr:`subagent_tool`'s kind.

        For an agent whose turn loop runs in the parent's loop (``isolation="inline"``), the
        same tool (name, description, arguments, policy) without its injected node: the
        call's outcome names this machine as where it ran, which is where such an agent runs,
        so nothing is injected, and the call takes the runtime's lean path for an inline call
        (no injection to settle: a task's two coroutines less for each subagent of a swarm).
        """
        tool = self.subagent_tool
        if self.isolation != "inline":  # the node records where it ran (a Ray node)
            return tool
        return Tool(_inline_subagent_entry, name=tool.name, description=tool.description,
                    policy=tool.policy)

    @functools.cached_property
    def node_tool(self) -> Tool[..., Any]:
        """The tool that runs this agent as a plan node: ``plan.call(agent, task=...)``.

        See :mod:`shoal.agents.node`: the node's value is the agent's answer.
        """
        from shoal.agents.node import agent_node_tool  # registers the node injector on use

        return agent_node_tool(self)

    def __shoal_node__(self) -> Tool[..., Any]:
        """What :func:`shoal.plan.as_tool` makes of an agent: its :attr:`node_tool`."""
        return self.node_tool

    @functools.cached_property
    def subagents_by_name(self) -> Mapping[str, Agent[Any]]:
        """Subagents by name."""
        return {a.name: a for a in self.subagents}

    @functools.cached_property
    def tools_by_name(self) -> Mapping[str, Tool[..., Any]]:
        """Every tool the model may call, subagents included, by name."""
        found: dict[str, Tool[..., Any]] = {t.name: t for t in self._tools}
        found.update({a.name: a.subagent_tool for a in self.subagents})
        return found

    @functools.cached_property
    def tool_specs(self) -> tuple[ToolSpec, ...]:
        """The tools as the model sees them (as defined: see :meth:`specs_now`)."""
        return tuple(ToolSpec(t.name, t.description, t.json_schema())
                     for t in self.tools_by_name.values())

    def specs_now(self) -> tuple[ToolSpec, ...]:
        """The tools as the model sees them this turn: :attr:`tool_specs`, unless changed since.

        An MCP server may change its tools while it runs (and say so). Each tool with a
        ``spec_now(made)`` method (an MCP tool) says how it is offered now: ``made``, its spec
        in :attr:`tool_specs`; another (the server lists it otherwise now); or None (the
        server lists it no more: it is left out).
        """
        specs = self.tool_specs
        changing = self._changing_tools
        if not changing:
            return specs
        now: list[ToolSpec | None] = list(specs)
        for place, spec_now in changing:
            now[place] = spec_now(specs[place])
        if all(a is b for a, b in zip(now, specs, strict=True)):
            return specs  # the same object: a request's digest encodes it once per definition
        return tuple(spec for spec in now if spec is not None)

    @functools.cached_property
    def _changing_tools(self) -> tuple[tuple[int, Callable[[ToolSpec], ToolSpec | None]], ...]:
        """Where :attr:`tool_specs` holds a tool its server may change, and its ``spec_now``."""
        found = ((place, getattr(tool, "spec_now", None))
                 for place, tool in enumerate(self.tools_by_name.values()))
        return tuple((place, spec_now) for place, spec_now in found if callable(spec_now))

    @property
    def _tools(self) -> tuple[Tool[..., Any], ...]:
        return tuple(t for t in self.tools if isinstance(t, Tool))

    # -- running ----------------------------------------------------------------------

    def _check_prompt(self, prompt: object) -> str:
        """Refuse a prompt that is not a str: caught here, not as a run failed in its turn.

        A ``str`` subclass is taken as its plain text: its own ``__repr__`` or ``__eq__``
        (which may raise) would be called wherever the prompt goes (the request's size, the
        events, the journal), and failed the run in its first turn.
        """
        if not isinstance(prompt, str):
            raise ConfigError(f"agent {self.name!r}: the prompt must be a str, got "
                              f"{type(prompt).__name__} {shown(prompt)}")
        return plain_text(prompt)

    def start(
        self,
        prompt: str,
        *,
        runtime: Runtime | None = None,
        model: str | Model | None = None,
        budget: Budget | None = None,
        on_event: EventSink | Sequence[EventSink] | None = None,
        run_id: str | None = None,
        gates: ModelGates | None = None,
        approver: Approver | Callback | None = None,
        resume: bool = False,
        force: bool = False,
        board: Board | None = None,
        rerun_in_doubt: Collection[str] = (),
        mark_done: Mapping[str, Any] | None = None,
    ) -> AgentHandle[T]:
        """Start a run on the running loop and return its handle at once (see :meth:`run`).

        With a journal, the tree claims its run id first (see :mod:`shoal.store.claims`): a
        run that a live process is running is refused with
        :class:`~shoal.exceptions.RunActiveError` (``force=True``: go on regardless).
        ``rerun_in_doubt`` and ``mark_done`` settle calls in doubt when resuming (see
        :meth:`resume`).
        """
        from shoal.runtime import (
            Runtime,
            check_flag,
            check_resume_id,
            check_run_id,
            new_run_id,
        )
        from shoal.store.claims import claim_run, claim_run_nothing

        try:  # first: nothing (a claim, a runtime, a template process) is made for nothing
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(f"agent {self.name!r}: start() runs on the running event loop, "
                               "and there is none: call it from async code (or use "
                               "run_sync(prompt) from synchronous code)") from None
        prompt = self._check_prompt(prompt)
        # here, not when the tree's first step run starts (force='no' failed only there, and
        # resume='no' was taken for true)
        for flag, value in (("resume", resume), ("force", force)):
            if value is not False:
                check_flag(flag, value)
        if run_id is not None and not resume:  # the tree's step runs hang under it by '/'
            check_run_id(run_id)

        sinks = check_run_options(runtime, budget, on_event, gates)
        if approver is not None and runtime is not None:
            raise ConfigError("approver= applies to the runtime an agent run makes; you passed "
                              "your own runtime, so give it the approver: "
                              "Runtime(approver=...)")
        if board is not None:
            from shoal.board import check_board

            check_board(board)
        own_runtime = runtime is None
        active = runtime if runtime is not None else Runtime(approver=approver)
        if run_id is not None and resume:
            check_resume_id(active.store, run_id)
        settle = self._settling(active, run_id if resume else None, rerun_in_doubt, mark_done)
        override = None
        if model is not None:
            from shoal.models import resolve_model

            override = model if isinstance(model, Model) else resolve_model(model)
        ctx = TreeContext(run_id=run_id or new_run_id(), runtime=active,
                          budget=budget or self.budget, sinks=sinks, gates=gates,
                          model_override=override, resuming=resume, force=force, board=board,
                          settling=settle)
        for agent in self.with_subagents():  # a missing key or SDK stops the run here, not
            ctx.model_for(agent.model)          # when a subagent first runs
        # the whole tree's claim: its steps are runs of their own, claimed one by one
        claim = (claim_run_nothing() if active.store is None
                 else claim_run(active.store, ctx.run_id, force=force))
        if resume and board is not None and active.store is not None:
            from shoal.board import replay_journal  # finished subagents will not write again

            try:
                replay_journal(board, active.store, ctx.run_id)
            except BaseException:
                claim.release()
                raise
        root = AgentRun(self, ctx, lineage=self.name, depth=0, prompt=prompt)
        if any(agent.isolation == "process" for agent in self.with_subagents()):
            ctx.agent_processes().prestart()  # its imports overlap the lead's first turn
        close_override = override is not None and not isinstance(model, Model)
        tree = _run_root(root, own_runtime, override if close_override else None)
        task = loop.create_task(_claimed(claim, tree))
        task.add_done_callback(functools.partial(_if_it_never_ran, tree, claim, ctx))
        return AgentHandle(ctx, root, task)

    async def run(
        self,
        prompt: str,
        *,
        runtime: Runtime | None = None,
        model: str | Model | None = None,
        budget: Budget | None = None,
        on_event: EventSink | Sequence[EventSink] | None = None,
        run_id: str | None = None,
        gates: ModelGates | None = None,
        approver: Approver | Callback | None = None,
        board: Board | None = None,
    ) -> AgentResult[T]:
        """Run the agent on ``prompt`` and return its result.

        Args:
            prompt: the task, as the first user message.
            runtime: a :class:`~shoal.Runtime` for the tool calls (default: a fresh one,
                closed at the end).
            model: overrides the model of every agent in the tree (e.g. to run an example on
                a hosted model).
            budget: a :class:`Budget` for the whole tree (default: the agent's ``budget``).
            on_event: event sinks; every event carries its lineage.
            run_id: the tree's run id (default: a new one).
            gates: share model rate limits with other runs.
            approver: decides on calls of tools that need approval
                (``@shoal.tool(approval=...)``): an :class:`~shoal.approvals.Approver` or a
                function of an :class:`~shoal.approvals.ApprovalRequest`. Without one, such
                calls are denied. With your own ``runtime``, give it the approver instead.
            board: a :class:`~shoal.Board` shared by every tool of the tree, subagents'
                included (see :class:`~shoal.BoardHandle`); the lead's result holds its
                merged values and conflicts at the end.

        Raises :class:`~shoal.exceptions.BudgetExceeded`,
        :class:`~shoal.exceptions.MaxTurnsExceeded`,
        :class:`~shoal.exceptions.OutputValidationError`,
        :class:`~shoal.exceptions.ModelError` or :class:`~shoal.exceptions.AgentError` (when
        cancelled); each carries the run so far as ``.result``. So a returned result always
        holds an answer: ``result.output`` is a ``T``.
        """
        return await self.start(prompt, runtime=runtime, model=model, budget=budget,
                                on_event=on_event, run_id=run_id, gates=gates,
                                approver=approver, board=board)

    def stream(
        self,
        prompt: str,
        *,
        runtime: Runtime | None = None,
        model: str | Model | None = None,
        budget: Budget | None = None,
        on_event: EventSink | Sequence[EventSink] | None = None,
        run_id: str | None = None,
        gates: ModelGates | None = None,
        approver: Approver | Callback | None = None,
        board: Board | None = None,
        buffer: int = DEFAULT_BUFFER,
    ) -> EventStream[AgentResult[T]]:
        """Run the agent on ``prompt`` and yield its events as they happen, then its result.

        ``async for item in lead.stream("prompt"): ...`` gets every event of the tree with
        its lineage, the models' text as :class:`~shoal.events.TextDelta` pieces while they
        write it, and last the :class:`AgentResult` (a failed run's too: the stream does not
        raise for it). ``buffer`` bounds what waits unread (see :class:`shoal.EventStream`:
        the run never waits for the reader); leaving the loop early cancels the run. The
        other arguments are those of :meth:`run`.
        """
        prompt = self._check_prompt(prompt)  # these two now, not when iterated
        sinks = check_run_options(runtime, budget, on_event, gates)

        def begin(sink: EventSink) -> Started[AgentResult[T]]:
            handle = self.start(prompt, runtime=runtime, model=model, budget=budget,
                                on_event=[*sinks, sink], run_id=run_id, gates=gates,
                                approver=approver, board=board)
            return Started(functools.partial(_settled, handle),
                           lambda why: handle.cancel(reason=why))

        return EventStream(begin, buffer=buffer)

    def run_sync(
        self,
        prompt: str,
        *,
        runtime: Runtime | None = None,
        model: str | Model | None = None,
        budget: Budget | None = None,
        on_event: EventSink | Sequence[EventSink] | None = None,
        run_id: str | None = None,
        gates: ModelGates | None = None,
        approver: Approver | Callback | None = None,
        board: Board | None = None,
    ) -> AgentResult[T]:
        """:meth:`run` from synchronous code (starts and closes an event loop)."""
        return run_blocking(
            self.run(prompt, runtime=runtime, model=model, budget=budget, on_event=on_event,
                     run_id=run_id, gates=gates, approver=approver, board=board),
            "'await agent.run(prompt)'")

    def _settling(self, runtime: Runtime, resumed: str | None, rerun_in_doubt: Collection[str],
                  mark_done: Mapping[str, Any] | None) -> Settling | None:
        """The calls in doubt to settle, by agent (checked), or ``None`` for none."""
        from shoal.agents.settle import settling
        from shoal.store.resume import check_settling

        if not check_settling(rerun_in_doubt, mark_done) and not mark_done:
            return None
        if resumed is None or runtime.store is None:
            raise ConfigError("rerun_in_doubt and mark_done apply only when resuming a run "
                              "(agent.resume(run_id, prompt, runtime=..., ...))")
        return settling(runtime.store, resumed, self, rerun_in_doubt, mark_done) or None

    async def resume(self, run_id: str, prompt: str, *, runtime: Runtime, **options: Any,
                     ) -> AgentResult[T]:
        """Continue the run ``run_id`` from the journal of ``runtime`` (a durable store).

        Every model turn and tool phase the journal finished is replayed, not asked or run
        again; the rest runs as usual. Give the same prompt and agent definition: a changed
        instruction, tool or prompt makes a different first request, which resume's change
        check refuses with :class:`~shoal.exceptions.PlanChangedError` before anything runs.
        A run that a live process is still running is refused with
        :class:`~shoal.exceptions.RunActiveError`; ``force=True`` resumes it anyway. A tree
        that wrote to a board needs it again (``board=``): replayed calls merge their writes
        into it once more.

        A call in doubt (in flight when the run stopped, or stopped while its tool ran; not
        idempotent) is told to its agent as in doubt, unless settled here, named by its
        lineage as ``shoal show`` prints it: ``rerun_in_doubt=["lead/helper#1/pay#1"]`` runs
        it again (it did not take effect), ``mark_done={"lead/pay#1": value}`` records it
        ``ok`` with that value (it did); its agent then goes on with that result. A name that
        is no call in doubt, or one whose agent an earlier resume told already, is a
        :class:`~shoal.exceptions.ConfigError` before anything runs.
        """
        check_run_options(runtime, None, None, None)
        if runtime is None or runtime.store is None:
            raise ConfigError("resuming an agent needs the runtime whose journal holds the run: "
                              "Runtime(store='sqlite:///runs.db')")
        return await self.start(prompt, runtime=runtime, run_id=run_id, resume=True, **options)

    def resume_sync(self, run_id: str, prompt: str, **options: Any) -> AgentResult[T]:
        """:meth:`resume` from synchronous code."""
        return run_blocking(self.resume(run_id, prompt, **options),
                            "'await agent.resume(run_id, prompt, ...)'")

    def with_subagents(self) -> list[Agent[Any]]:
        """The agent itself and every subagent below it, each once."""
        found: dict[int, Agent[Any]] = {}
        todo: list[Agent[Any]] = [self]
        while todo:
            agent = todo.pop()
            if id(agent) not in found:
                found[id(agent)] = agent
                todo.extend(agent.subagents)
        return list(found.values())

    def __repr__(self) -> str:
        model = self.model if isinstance(self.model, str) else self.model.name
        return (f"<Agent {self.name} model={model} tools={[t.name for t in self._tools]} "
                f"subagents={[a.name for a in self.subagents]}>")


class AgentHandle(Generic[T]):
    """A running agent tree: await it for the result, or cancel all or part of it."""

    def __init__(self, ctx: TreeContext, root: AgentRun,
                 task: asyncio.Task[AgentResult[Any]]) -> None:
        self._ctx = ctx
        self._root = root
        self._task = task

    @property
    def run_id(self) -> str:
        """The tree's run id."""
        return self._ctx.run_id

    def __await__(self) -> Generator[Any, None, AgentResult[T]]:
        return self._task.__await__()

    def done(self) -> bool:
        """Whether the run has ended."""
        return self._task.done()

    def cancel(self, lineage: str | None = None, *, reason: str = "cancelled by the user") -> None:
        """Cancel the whole tree, or one agent (by ``lineage``) and everything below it.

        With ``lineage`` (e.g. ``"lead/researcher#2"``) only that subtree stops; its parent
        gets an error result for the subagent's call and goes on. One not started yet is
        stopped as it starts.
        """
        if lineage is not None and (not isinstance(lineage, str) or not lineage):
            # an empty or mistyped lineage must not stop the whole tree, as no argument does
            raise TypeError(f"cancel() takes an agent's lineage such as "
                            f"'{self._root.lineage}/researcher#2', or nothing for the whole "
                            f"tree; got {shown(lineage)}")
        if not isinstance(reason, str):
            raise TypeError(f"cancel()'s reason must be text, got {type(reason).__name__}")
        self._ctx.cancel(lineage or self._root.lineage, reason)

    def results(self) -> Mapping[str, AgentResult[Any]]:
        """Every agent's result so far (finished or still running), by lineage."""
        return dict(self._ctx.results)

    @property
    def result(self) -> AgentResult[T]:
        """The lead's result so far (its ``status`` is ``running`` until it ends)."""
        return self._root.result


async def _settled(handle: AgentHandle[T]) -> AgentResult[T]:
    """The tree's result, a failed one too (the error that carries it is not raised)."""
    try:
        return await handle
    except ShoalError as exc:
        result = getattr(exc, "result", None)
        if isinstance(result, AgentResult):
            return result
        raise


async def _claimed(claim: RunClaim, tree: Coroutine[Any, Any, AgentResult[Any]],
                   ) -> AgentResult[Any]:
    """Run the tree, then let its claim go."""
    try:
        return await tree
    finally:
        claim.release()


def _if_it_never_ran(tree: Coroutine[Any, Any, AgentResult[Any]], claim: RunClaim,
                     ctx: TreeContext, _: object) -> None:
    """Let go of what :meth:`Agent.start` made, if the tree's task ended before its first step.

    A task cancelled that soon never runs its coroutine, so neither :func:`_claimed` (which
    lets the claim go) nor :func:`_run_root` (which ends what the tree holds) ran: the
    claim would stay taken, the template forked for process agents would live on, and the
    tree's coroutine would be reported as never awaited. Nothing else ran yet: no model was
    asked, no run started, so what is left to end needs no coroutine.
    """
    if inspect.getcoroutinestate(tree) != inspect.CORO_CREATED:
        return  # it ran: _claimed and _run_root ended everything
    tree.close()  # it never will (closed, not reported as never awaited)
    claim.release()
    ctx.stop_unstarted()


async def _run_root(root: AgentRun, own_runtime: bool, own_model: Model | None) -> AgentResult[Any]:
    ctx = root.ctx
    ctx.start_clock()
    try:
        result = await root.run()
    except asyncio.CancelledError:
        result = root.result
        current = asyncio.current_task()
        if result.status == "running" or (current is not None and current.cancelling()):
            raise  # this task itself was cancelled (not the tree through its handle)
    finally:
        ctx.stop_clock()
        await ctx.close_models()
        if own_model is not None:
            await own_model.aclose()
        if own_runtime:
            await ctx.runtime.aclose()
    if ctx.board is not None:  # what the tree's tools merged, as it stands at the end
        result.board, result.conflicts = ctx.board.snapshot(), ctx.board.conflicts
    if result.status == "ok":
        return result
    error = result.error
    if not isinstance(error, ShoalError):
        error = AgentError(f"agent {root.lineage} ended {result.status}: "
                           f"{exception_message(error) if error is not None else ''}")
    error.result = result  # type: ignore[attr-defined]  # also on ModelError: the run so far
    raise error

