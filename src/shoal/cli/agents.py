"""``shoal run module:agent "prompt"``: run an agent with a live tree of agents and calls.

The target names an :class:`~shoal.agents.agent.Agent` object as ``package.module:name`` or
``path/to/file.py:name``. Output: the final tree and the answer (or, with ``--json``, the whole
:class:`~shoal.agents.result.AgentResult` as JSON). Exit codes as for plans: 0 the agent
answered, 1 it stopped without an answer (budget, max turns, model error), 2 bad input, 130
Ctrl-C.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.text import Text

from shoal.agents.agent import Agent, AgentHandle
from shoal.agents.budget import Budget
from shoal.agents.result import AgentResult
from shoal.cli.agent_journal import AgentJournal
from shoal.cli.interrupt import EXIT_INTERRUPTED, CtrlC
from shoal.cli.live import LivePause
from shoal.cli.tree import AgentTree, render_tree
from shoal.events import JsonlSink
from shoal.exceptions import AgentError, ConfigError, ModelError, ShoalError
from shoal.models.base import Model
from shoal.runtime import Runtime

__all__ = ["AgentOptions", "is_agent_target", "load_agent", "model_option", "run_agent_target"]

REFRESH_PER_SECOND = 8
PLAN_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True, slots=True)
class AgentOptions:
    """What ``shoal run TARGET PROMPT`` was asked to do."""

    target: str
    prompt: str | None
    model: str | Model | None = None
    as_json: bool = False
    runtime: Runtime | None = None
    budget: Budget | None = None
    events: JsonlSink | None = None
    pause: LivePause | None = None  # lets a console approver stop the live tree while it asks
    journal: AgentJournal | None = None  # the run's root record in a durable journal
    model_spec: str | None = None  # --model as given, for the journal
    resume: bool = False  # continue journal.run_id instead of starting a new run
    force: bool = False  # resume even if another process seems to run it (--force)


def is_agent_target(target: str) -> bool:
    """Whether ``target`` names an agent (``module:name``) rather than a plan file."""
    if target.lower().endswith(PLAN_SUFFIXES) or Path(target).is_file():
        return False
    module, sep, name = target.rpartition(":")
    return bool(sep and module and name.isidentifier())


def load_agent(target: str) -> Agent[Any]:
    """Import the agent ``target`` names; raise :class:`ConfigError` saying what is wrong."""
    module_name, _, attr = target.rpartition(":")
    module = _import(module_name)
    try:
        found = getattr(module, attr)
    except AttributeError:
        names = sorted(n for n, v in vars(module).items() if isinstance(v, Agent))
        raise ConfigError(f"{module_name!r} has no attribute {attr!r}; the agents it defines: "
                          f"{', '.join(names) or 'none'}") from None
    if not isinstance(found, Agent):
        raise ConfigError(f"{target!r} is a {type(found).__name__}, not a shoal.Agent")
    return found


def model_option(spec: str) -> str | Model:
    """The ``--model`` option: a model string, or a model object named as ``module:name``.

    Model strings (``openai:...``, ``anthropic:...``, ``local``) are kept as they are; anything
    else names a :class:`Model` object (or a function making one) to import.
    """
    provider, sep, _ = spec.partition(":")
    if not sep or provider in ("openai", "anthropic", "local"):
        return spec
    module_name, _, attr = spec.rpartition(":")
    found = getattr(_import(module_name), attr, None)
    if callable(found) and not isinstance(found, Model):
        found = found()
    if not isinstance(found, Model):
        raise ConfigError(f"--model {spec!r} is neither a model string (openai:NAME, "
                          "anthropic:NAME, local) nor a shoal Model object")
    return found


def _import(module_name: str) -> Any:
    if module_name.endswith(".py") or "/" in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise ConfigError(f"no such file: {module_name!r}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        _exec(spec.loader, module, module_name)
        return module
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}; run shoal from the directory "
                          "that holds the package, or give a file path (dir/file.py:agent)"
                          ) from None


def _exec(loader: Any, module: Any, where: str) -> None:
    try:
        loader.exec_module(module)
    except ShoalError:
        raise
    except Exception as exc:
        raise ConfigError(f"importing {where!r} failed: {type(exc).__name__}: {exc}") from None


def run_agent_target(options: AgentOptions, console: Console, live: bool) -> int:
    """Run the agent and print the outcome; return the exit code."""
    if not options.prompt:
        raise ConfigError(f"give the prompt after the agent: shoal run {options.target} "
                          "\"your question\"")
    agent = load_agent(options.target)
    view = AgentTree()
    sinks: list[Any] = [view] + ([options.events] if options.events is not None else [])
    result, error, interrupted = asyncio.run(_drive(agent, options, sinks, console, view, live))
    _print(result, error, options.as_json, console, view)
    if interrupted:
        return EXIT_INTERRUPTED
    return 0 if error is None else 1


async def _drive(agent: Agent[Any], options: AgentOptions, sinks: list[Any], console: Console,
                 view: AgentTree, live: bool,
                 ) -> tuple[AgentResult[Any] | None, BaseException | None, bool]:
    runtime = options.runtime or Runtime()
    journal = options.journal
    if journal is not None and not options.resume:
        journal.begin(options.target, options.prompt or "", options.model_spec)
    try:  # refused (the run is live elsewhere) before anything runs or is written
        handle = agent.start(options.prompt or "", runtime=runtime, model=options.model,
                             budget=options.budget, on_event=sinks,
                             run_id=journal.run_id if journal is not None else None,
                             resume=options.resume, force=options.force)
    except BaseException:
        await runtime.aclose()
        raise
    beating = asyncio.ensure_future(journal.beat()) if journal is not None else None
    result: AgentResult[Any] | None = None
    interrupted = False
    try:
        with CtrlC(handle) as ctrl_c:
            try:
                result = await (_follow(handle, console, view, options.pause) if live
                                else handle)
                interrupted = ctrl_c.interrupted
                return result, None, interrupted
            except (AgentError, ModelError) as exc:
                result, interrupted = getattr(exc, "result", None), ctrl_c.interrupted
                return result, exc, interrupted
    finally:
        if beating is not None:
            beating.cancel()
            await asyncio.gather(beating, return_exceptions=True)
        if journal is not None:
            journal.end(result, interrupted)
        await runtime.aclose()


async def _follow(handle: AgentHandle[Any], console: Console, view: AgentTree,
                  pause: LivePause | None) -> AgentResult[Any]:
    waiter = asyncio.ensure_future(handle)
    title = f"shoal · agent run {handle.run_id}"
    with Live(render_tree(view, title), console=console, auto_refresh=False,
              transient=True) as display:
        if pause is not None:
            pause.attach(display)
        try:
            while not waiter.done():
                await asyncio.wait({waiter}, timeout=1 / REFRESH_PER_SECOND)
                if pause is None or not pause.paused:  # a prompt holds the terminal
                    display.update(render_tree(view, title), refresh=True)
        finally:
            if pause is not None:
                pause.attach(None)
    return waiter.result()


def _print(result: AgentResult[Any] | None, error: BaseException | None, as_json: bool,
           console: Console, view: AgentTree) -> None:
    if as_json:
        data: dict[str, Any] = result.to_dict() if result is not None else {}
        if error is not None:
            data["error"] = {"type": type(error).__name__, "message": str(error)}
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        sys.stdout.flush()
        return
    title = f"shoal · agent run {result.run_id}" if result is not None else "shoal"
    parts: list[Any] = [render_tree(view, title)]
    if result is not None and result.status == "ok":
        parts.append(Panel(Text(str(result.output)), title="answer", title_align="left"))
    if result is not None:
        usage = result.usage
        parts.append(Text(f"{result.turns} turns by the lead, {usage.requests} model requests, "
                          f"{usage.total_tokens} tokens"
                          + (f", ${usage.cost:.4f}" if usage.cost is not None else "")
                          + f", {result.duration:.2f} s", style="dim"))
    console.print(Group(*parts))
    if error is not None:
        sys.stderr.write(f"error: {error}\n")

