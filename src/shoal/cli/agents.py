"""``shoal run module:agent "prompt"``: run an agent with a live tree of agents and calls.

The target names an :class:`~shoal.agents.agent.Agent` object as ``package.module:name`` or
``path/to/file.py:name``. Output: the final tree and the answer (or, with ``--json``, the whole
:class:`~shoal.agents.result.AgentResult` as JSON). Exit codes as for plans: 0 the agent
answered, 1 it stopped without an answer (budget, max turns, model error), 2 bad input, 130
Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import sys
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.text import Text

from shoal.agents.agent import Agent
from shoal.agents.budget import Budget
from shoal.agents.result import AgentResult
from shoal.cli.agent_journal import AgentJournal, summary
from shoal.cli.compose import (
    Composed,
    agents_of,
    build_plan,
    is_composition,
    start_composition,
)
from shoal.cli.interrupt import (
    Cancellable,
    CtrlC,
    say_stopped,
    stopped_by_a_call,
    stopped_in_doubt,
)
from shoal.cli.live import LivePause, live_view, show_cursor
from shoal.cli.render import announce, events_file, events_incomplete
from shoal.cli.safe import count, one_line, others_to_stderr, safe_str
from shoal.cli.tree import AgentTree, live_rows, not_ok_word, render_tree
from shoal.events import Event, JsonlSink, ModelRetrying, ModelServerStarted, ModelServerStarting
from shoal.exceptions import (
    AgentError,
    ConfigError,
    MissingAPIKeyError,
    MissingDependencyError,
    ModelError,
    PlanError,
    ScriptError,
    StoreError,
    describe_exception,
    exception_message,
)
from shoal.models import check_model_spec, resolve_model
from shoal.models.base import Model
from shoal.outcome import _strict, json_text
from shoal.planfile import check_import
from shoal.runtime import Runtime, new_run_id, run_blocking

__all__ = ["AgentOptions", "agent_source", "check_models", "is_agent_target", "load_agent",
           "model_option", "notice_lines", "run_agent_target"]

REFRESH_PER_SECOND = 8
ANSWER_WIDTH = 20_000  # characters of the answer shown (--json has it whole)
NOTICE_WIDTH = 500  # characters of a line saying what a model waits for
PLAN_SUFFIXES = (".yaml", ".yml", ".json")
EXIT_JOURNAL_FAILED = 2  # as ``shoal run PLAN`` says a journal that failed mid-run


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
    modules: tuple[str, ...] | None = None  # what the target may import (None: any module)
    # calls in doubt settled on resume, by lineage (--rerun-in-doubt, --mark-done)
    rerun_in_doubt: tuple[str, ...] = ()
    mark_done: Mapping[str, Any] | None = None


def is_agent_target(target: str) -> bool:
    """Whether ``target`` names an agent (``module:name``) rather than a plan file."""
    if target.lower().endswith(PLAN_SUFFIXES) or Path(target).is_file():
        return False
    module, sep, name = target.rpartition(":")
    return bool(sep and module and name.isidentifier())


def agent_source(target: str, cwd: str = "") -> Path | None:
    """The file that defines the agent ``target`` names, found without importing anything.

    ``path/file.py:name`` names it; for ``package.module:name``, the first ``module.py`` (or
    package ``__init__.py``) on ``sys.path``, as an import would find it; ``None`` if none.
    ``cwd``: the folder the run was started in (first on its import path), if not this one.
    """
    module, _, _ = target.rpartition(":")
    if module.endswith(".py"):
        return Path(cwd or ".", module)
    parts = module.split(".")
    if not all(part.isidentifier() for part in parts):
        return None
    for entry in ([cwd] if cwd else []) + sys.path:
        folder = Path(entry or ".").joinpath(*parts)
        for candidate in (folder.with_suffix(".py"), folder / "__init__.py"):
            with contextlib.suppress(OSError, ValueError):
                if candidate.is_file():
                    return candidate
    return None


def load_agent(target: str, modules: Sequence[str] | None = None) -> Agent[Any] | Composed:
    """Import what ``target`` names: an agent, a pattern, or a function making a plan.

    (See :mod:`shoal.cli.compose`.) Raises :class:`ConfigError` saying what is wrong, and
    :class:`PlanError` (before importing anything) for a module ``modules`` does not allow,
    as for a plan file's import paths.
    """
    module_name, _, attr = target.rpartition(":")
    module = _import(module_name, modules, target)
    try:
        found = getattr(module, attr)
    except AttributeError:
        names = sorted(n for n, v in vars(module).items()
                       if isinstance(v, Agent) or is_composition(v))
        raise ConfigError(f"{module_name!r} has no attribute {attr!r}; the agents, patterns "
                          f"and plan functions it defines: {', '.join(names) or 'none'}"
                          ) from None
    if not isinstance(found, Agent) and not is_composition(found):
        raise ConfigError(f"{target!r} is a {type(found).__name__}, not a shoal.Agent, a "
                          "pattern or a function returning a shoal.Plan")
    return cast("Agent[Any] | Composed", found)


def model_option(spec: str, modules: Sequence[str] | None = None) -> str | Model:
    """The ``--model`` option: a model string, or a model object named as ``module:name``.

    Model strings (``openai:...``, ``anthropic:...``, ``local``) are kept as they are; anything
    else names a :class:`Model` object (or a function making one) to import, from a module
    ``modules`` allows (see :func:`load_agent`).
    """
    provider, sep, _ = spec.partition(":")
    module_name, _, attr = spec.rpartition(":")
    if not sep or provider in ("openai", "anthropic", "local") or not module_name.strip() \
            or not attr.isidentifier():
        return spec  # a model string, or no module:name either (':'): said as a model string's

    if not module_name.endswith(".py") and "/" not in module_name:
        _check_importable(spec, module_name)
    found = getattr(_import(module_name, modules, spec), attr, None)
    if callable(found) and not isinstance(found, Model):
        found = found()
    if not isinstance(found, Model):
        what = (f"{module_name.strip()!r} has no {attr!r}" if found is None
                else f"{attr!r} is a {type(found).__name__}")
        raise ConfigError(f"--model {spec!r} is neither a model string (openai:NAME, "
                          f"anthropic:NAME, local) nor a shoal Model object ({what})")
    return found


def _check_importable(spec: str, module_name: str) -> None:
    """Refuse a ``--model`` whose module cannot be found, as the unknown model it most likely is.

    ``bogus:thing`` is a mistyped provider far more often than a module: the message names the
    model strings accepted (and a close provider) as well as the ``module:NAME`` form.
    """
    top = module_name.partition(".")[0].strip()
    if top.isidentifier() and importlib.util.find_spec(top) is not None:
        return
    try:
        check_model_spec(spec)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; on the command line also module:NAME or dir/file.py:NAME "
                          f"naming one (no module {module_name.strip()!r} is importable "
                          "from here)") from None


def _import(module_name: str, modules: Sequence[str] | None = None, name: str = "") -> Any:
    """The module (or file) ``module_name``, imported once ``modules`` allows it."""
    check_import(name or module_name, modules, name or module_name)  # before its code runs
    if module_name.endswith(".py") or "/" in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise ConfigError(f"no such file: {module_name!r}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:  # /etc/passwd: Python makes nothing of it
            raise ConfigError(f"{module_name!r} is not a Python file: name a .py file, as "
                              "dir/file.py:agent")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        # as python does for a script: its directory first on the path, so that its
        # siblings import, and worker processes (which import from this sys.path) find
        # its tools under the same module name
        folder = str(path.resolve().parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        _exec(spec.loader, module, module_name)
        return module
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {describe_exception(exc)}; run shoal "
                          "from the directory "
                          "that holds the package, or give a file path (dir/file.py:agent)"
                          ) from None
    except _SAID_AS_IS:
        raise
    except BaseException as exc:  # as for a file: its error, not a traceback or its exit
        raise ConfigError(f"importing {module_name!r} failed: {describe_exception(exc)}"
                          ) from None


# errors of a module's import that the commands print as they are; any other error (a
# ScriptError of a model run as the module loads, say) is named in a ConfigError, never
# shown as a traceback
_SAID_AS_IS = (ConfigError, PlanError, MissingDependencyError, KeyboardInterrupt)


def _exec(loader: Any, module: Any, where: str) -> None:
    try:
        loader.exec_module(module)
    except _SAID_AS_IS:
        raise
    except BaseException as exc:  # SystemExit too: importing a module does not end the command
        raise ConfigError(f"importing {where!r} failed: {describe_exception(exc)}") from None


def run_agent_target(options: AgentOptions, console: Console, live: bool) -> int:
    """Run the agent and print the outcome; return the exit code."""
    if not options.prompt or not options.prompt.strip():  # blank: a whole run on no question
        raise ConfigError(f"give the prompt after the agent: shoal run {options.target} "
                          "\"your question\"")
    with others_to_stderr(options.as_json):  # a module printing as it imports
        agent = load_agent(options.target, options.modules)
        if isinstance(agent, Agent):
            check_models(agent, options.model)
    view = AgentTree(text=live)  # the live tree shows what the models are writing
    sinks: list[Any] = [view] + ([options.events] if options.events is not None else [])
    if options.journal is not None:
        sinks.append(options.journal)
    if not live:  # nobody watches a tree: say on stderr what the models are waiting for
        sinks.append(notice_lines)
    # Ctrl-C is held from before the loop is made (as for a plan): a press at any moment from
    # here on cancels the run, as it starts if it has not yet; none is lost in between
    ctrl_c = CtrlC(on_hard_exit=partial(show_cursor, console) if live else _no_cursor)
    try:
        with others_to_stderr(options.as_json), ctrl_c:  # a tool's print is not the JSON's
            # (asyncio.run, but a task that ignores its cancellation does not hold it forever)
            result, error = run_blocking(
                _drive(agent, options, sinks, console, view, live, ctrl_c)
                if isinstance(agent, Agent)
                else _drive_composition(agent, options, sinks, console, view, live, ctrl_c))
    except KeyboardInterrupt:  # a call's own: Ctrl-C during the run raises none (see CtrlC)
        journal = options.journal
        return stopped_by_a_call(journal.run_id if journal is not None else "",
                                 journal is not None, options.as_json)
    composed = not isinstance(agent, Agent)
    if composed and options.resume and result is not None:
        # the live view saw this session's events only; the result has the nodes and agents
        # taken from the journal too
        view = AgentTree.from_summary(summary(result))
    _print(result, error, options.as_json, console, view, composed=composed,
           events=options.events)
    if ctrl_c.interrupted:
        if options.journal is not None and (result is None or not result.ok):
            doubtful = (_stopped_in_doubt(agent, result) if isinstance(agent, Agent)
                        and result is not None else [])
            say_stopped(options.journal.run_id, ctrl_c.reason, doubtful, agent=True)
        return ctrl_c.exit_code
    if _journal_failed(error):  # the run's calls are shown above, and what to do
        return EXIT_JOURNAL_FAILED
    return 0 if error is None else 1


def check_models(agent: Agent[Any], override: str | Model | None) -> None:
    """Make every model the run will use, so a missing key or SDK stops it before it starts.

    Raises :class:`ConfigError` with one line to act on (the key to export, ``--model
    local``), or :class:`~shoal.exceptions.MissingDependencyError` with the install line.
    """
    specs = {override} if override is not None else {a.model for a in agent.with_subagents()}
    for spec in specs:
        if not isinstance(spec, Model):
            _resolved(spec)


def _resolved(spec: str) -> Model:
    """The model ``spec`` names; :class:`ConfigError` (one line to act on) if it cannot be made."""
    try:
        return resolve_model(spec)
    except MissingAPIKeyError as exc:
        raise ConfigError(f"{exc.env_var} is not set (the model {exc.model!r} needs it): "
                          "export it, or pass --model local") from None
    except ModelError as exc:
        raise ConfigError(str(exc)) from None


def notice_lines(event: Event) -> None:
    """What a model waits for (a retry, a server starting), as a line on stderr.

    The sink used when no live tree shows it.
    """
    if isinstance(event, ModelRetrying):
        line = f"{event.model} {event.describe()}"
    elif isinstance(event, ModelServerStarting):
        line = f"{event.model}: {event.detail}…"
    elif isinstance(event, ModelServerStarted):
        line = (f"{event.model}: the server's start was cancelled" if event.cancelled
                else f"{event.model}: the server did not start: {event.error}" if event.error
                else f"{event.model}: the server is up after {event.duration:.1f} s")
    else:
        return
    where = f"{event.lineage}: " if event.lineage else ""
    # a provider's error text is not ours: escaped, on one line, bounded
    sys.stderr.write(f"shoal: {one_line(where + line, NOTICE_WIDTH)}\n")
    sys.stderr.flush()


def _stopped_in_doubt(agent: Agent[Any], result: AgentResult[Any]) -> list[str]:
    """The calls of the tree (by lineage) that its resume will hold in doubt (see interrupt)."""
    idempotent: dict[str, bool] = {}
    agents = [agent]
    while agents:  # the tools of every agent of the tree (a subagent's call is idempotent)
        each = agents.pop()
        for name, tool in each.tools_by_name.items():
            idempotent.setdefault(name, tool.policy.idempotent)
        agents.extend(each.subagents)
    found: list[str] = []
    results = [result]
    while results:
        each_result = results.pop(0)
        outcomes = [c.outcome for c in each_result.calls if c.outcome is not None]
        doubtful = set(stopped_in_doubt(outcomes, idempotent))
        found += [c.lineage for c in each_result.calls
                  if c.outcome is not None and c.outcome.node_id in doubtful]
        results.extend(each_result.children)
    return found


async def _drive(agent: Agent[Any], options: AgentOptions, sinks: list[Any], console: Console,
                 view: AgentTree, live: bool, ctrl_c: CtrlC,
                 ) -> tuple[AgentResult[Any] | None, BaseException | None]:
    runtime = options.runtime or Runtime()
    journal = options.journal
    if journal is not None and not options.resume:
        journal.begin(options.target, options.prompt or "", options.model_spec)
    try:  # refused (the run is live elsewhere, a key is missing) before anything runs
        handle = agent.start(options.prompt or "", runtime=runtime, model=options.model,
                             budget=options.budget, on_event=sinks,
                             run_id=journal.run_id if journal is not None else None,
                             resume=options.resume, force=options.force,
                             rerun_in_doubt=options.rerun_in_doubt, mark_done=options.mark_done)
    except BaseException:
        await _abandon(runtime, journal, options.resume)
        raise
    return await _watch(handle, handle, handle.run_id, options, runtime, console, view, live,
                        ctrl_c)


async def _drive_composition(composed: Composed, options: AgentOptions, sinks: list[Any],
                             console: Console, view: AgentTree, live: bool, ctrl_c: CtrlC,
                             ) -> tuple[AgentResult[Any] | None, BaseException | None]:
    """Run a pattern or a plan function as ``_drive`` runs an agent (see shoal.cli.compose)."""
    runtime = options.runtime or Runtime()
    journal = options.journal
    run_id = journal.run_id if journal is not None else new_run_id()
    if options.rerun_in_doubt or options.mark_done:
        await runtime.aclose()
        raise ConfigError(f"--rerun-in-doubt and --mark-done settle the calls of an agent "
                          f"tree; {options.target!r} is a pattern or a plan function, whose "
                          "agents' calls cannot be settled from the command line yet: resume it "
                          "without them (its agents are told which calls are in doubt)")
    try:  # a bad plan or a missing key: refused before the journal records a run
        plan = build_plan(composed, options.prompt or "", options.target)
        for agent in agents_of(plan):
            check_models(agent, options.model)
        override = (options.model if isinstance(options.model, Model) or options.model is None
                    else _resolved(options.model))
    except BaseException:
        await runtime.aclose()
        raise
    if journal is not None and not options.resume:
        journal.begin(options.target, options.prompt or "", options.model_spec, composed=True)
    try:
        run = start_composition(composed, options.prompt or "", options.target,
                                runtime=runtime, sinks=sinks, run_id=run_id,
                                resume=options.resume, model=override, budget=options.budget,
                                force=options.force, plan=plan)
    except MissingAPIKeyError as exc:
        await _abandon(runtime, journal, options.resume)
        raise ConfigError(f"{exc.env_var} is not set (the model {exc.model!r} needs it): "
                          "export it, or pass --model local") from None
    except BaseException:
        await _abandon(runtime, journal, options.resume)
        raise
    return await _watch(run, run.wait(), run_id, options, runtime, console, view, live, ctrl_c)


async def _watch(run: Cancellable, result_of: Awaitable[AgentResult[Any]], run_id: str,
                 options: AgentOptions, runtime: Runtime, console: Console, view: AgentTree,
                 live: bool, ctrl_c: CtrlC,
                 ) -> tuple[AgentResult[Any] | None, BaseException | None]:
    """Follow a started agent or composition to its end; close the runtime after.

    The live tree (or nothing), Ctrl-C (``ctrl_c``, entered before the loop was made, is
    given the run here), and the journal's heartbeat, which also brings
    ``shoal cancel`` from another process. A journal that cannot be written stops the run
    (as it stops a plan's) and is the error returned, beside the result so far: the calls
    that ran are shown, never lost behind the error.
    """
    journal = options.journal
    if journal is not None:
        announce(journal.run_id, options.resume, getattr(journal.store, "path", "the store"))
    beating = (asyncio.ensure_future(_beat(journal, run)) if journal is not None
               else None)  # shoal cancel RUN from another process
    result: AgentResult[Any] | None = None
    error: BaseException | None = None
    ctrl_c.attach(run)  # a press made before this cancels the run now
    try:
        try:
            result = await (_follow(result_of, run_id, console, view, options.pause)
                            if live else result_of)
            error = None if result.ok else result.error
        except (AgentError, ModelError, ScriptError, StoreError) as exc:
            # ScriptError: a ScriptedModel asked what its script does not cover (the
            # program's own mistake, one line); StoreError: the journal of a step failed
            # (JournalWriteError) or could not record its end, and the run stopped with
            # what it had (the agent puts its result on each)
            so_far = getattr(exc, "result", None)
            result, error = so_far if isinstance(so_far, AgentResult) else None, exc
    finally:
        journal_error = await _stop_beating(beating)
        if journal is not None:
            journal_error = journal_error or _ended(journal, result, ctrl_c.interrupted)
        await runtime.aclose()
    return result, error or journal_error


async def _beat(journal: AgentJournal, run: Cancellable) -> None:
    """The journal's heartbeat; a journal that cannot be written stops the run, then raises."""
    try:
        await journal.beat(lambda why: run.cancel(reason=why))
    except StoreError as exc:
        run.cancel(reason=f"the journal could not be written: {exc}")
        raise


async def _stop_beating(beating: asyncio.Future[None] | None) -> StoreError | None:
    """Stop the heartbeat; the journal's error if that is what had stopped it."""
    if beating is None:
        return None
    beating.cancel()
    (ended,) = await asyncio.gather(beating, return_exceptions=True)
    return ended if isinstance(ended, StoreError) else None


def _ended(journal: AgentJournal, result: AgentResult[Any] | None,
           interrupted: bool) -> StoreError | None:
    """Record the run's end; the journal's error if it cannot be written."""
    try:
        journal.end(result, interrupted)
    except StoreError as exc:
        return exc
    return None


def _journal_failed(error: BaseException | None) -> bool:
    """Whether the run stopped because its journal (or a step's) could not be written."""
    return isinstance(error, StoreError) or isinstance(getattr(error, "__cause__", None),
                                                       StoreError)


def _no_cursor() -> None:
    """Without a live tree there is no cursor to give back on a forced exit."""


async def _abandon(runtime: Runtime, journal: AgentJournal | None, resume: bool) -> None:
    """A run refused before it started: end its new record, release the runtime."""
    if journal is not None and not resume:  # never end a live run's record
        journal.end(None, False)
    await runtime.aclose()


async def _follow(handle: Awaitable[AgentResult[Any]], run_id: str, console: Console,
                  view: AgentTree, pause: LivePause | None) -> AgentResult[Any]:
    waiter = asyncio.ensure_future(handle)
    title = f"shoal · agent run {run_id}"

    def frame() -> RenderableType:  # bounded: each redraw holds the loop the run is on
        return render_tree(view, title, rows=live_rows(console.size.height))

    with live_view(frame(), console) as display:
        if pause is not None:
            pause.attach(display)
        try:
            while not waiter.done():
                await asyncio.wait({waiter}, timeout=1 / REFRESH_PER_SECOND)
                if pause is None or not pause.paused:  # a prompt holds the terminal
                    display.update(frame(), refresh=True)
        finally:
            if pause is not None:
                pause.attach(None)
    return waiter.result()


def _print(result: AgentResult[Any] | None, error: BaseException | None, as_json: bool,
           console: Console, view: AgentTree, *, composed: bool = False,
           events: JsonlSink | None = None) -> None:
    if as_json:
        data: dict[str, Any] = _json(result) if result is not None else {}
        if error is not None:
            # a model's own error (a ModelError subclass) may have a __str__ that fails
            data["error"] = {"type": type(error).__name__, "message": exception_message(error)}
        if events is not None:
            data["events_file"] = events_file(events)
        # strict JSON: a model may report a NaN cost or a count too long to write out
        sys.stdout.write(json_text(_strict(data), indent=2) + "\n")
        sys.stdout.flush()
        return
    title = f"shoal · agent run {result.run_id}" if result is not None else "shoal"
    parts: list[Any] = [render_tree(view, title)]
    if result is not None and result.status == "ok":
        answer = safe_str(result.output, ANSWER_WIDTH)
        parts.append(Panel(Text(answer), title="answer", title_align="left"))
        if result.cut_off:  # the answer above is cut short: say so beside it
            parts.append(Text(safe_str(result.cut_off, ANSWER_WIDTH), style="yellow"))
    if result is not None:
        line = _composed_line(result) if composed else _summary_line(result)
        parts.append(Text(line, style="dim"))
    incomplete = events_incomplete(events)
    if incomplete is not None:
        parts.append(incomplete)
    console.print(Group(*parts))
    if error is not None:
        sys.stderr.write(f"error: {safe_str(error, ANSWER_WIDTH)}\n")


def _summary_line(result: AgentResult[Any]) -> str:
    usage = result.usage
    agents = result.walk()
    calls = sum(len(a.calls) for a in agents)
    failed = sum(a.failed_calls for a in agents)
    how = not_ok_word(str(c.status) for a in agents for c in a.calls)
    return (f"{result.turns} turn{'s' if result.turns != 1 else ''} by the lead, "
            f"{usage.requests} model request{'s' if usage.requests != 1 else ''}, "
            f"{calls} tool call{'s' if calls != 1 else ''}"
            + (f" ({failed} {how})" if failed else "")
            + f", {count(usage.total_tokens)} tokens"
            + (f", ${usage.cost:.4f}" if usage.cost is not None else "")
            + f", {result.duration:.2f} s")


def _composed_line(result: AgentResult[Any]) -> str:
    """The summary of a pattern's or a plan function's run: its nodes, agents and requests."""
    nodes = len(result.calls)
    failed = sum(not c.ok for c in result.calls)
    agents = len(result.walk()) - 1
    usage = result.usage
    return (f"{nodes} node{'s' if nodes != 1 else ''}" + (f" ({failed} not ok)" if failed else "")
            + f", {agents} agent{'s' if agents != 1 else ''}, "
            f"{usage.requests} model request{'s' if usage.requests != 1 else ''}, "
            f"{count(usage.total_tokens)} tokens"
            + (f", ${usage.cost:.4f}" if usage.cost is not None else "")
            + f", {result.duration:.2f} s")


def _json(result: AgentResult[Any]) -> dict[str, Any]:
    """The result as JSON, each agent with ``failed_calls`` and each call's ``duration``."""
    data = result.to_dict()
    _add_counts(data, summary(result))
    return data


def _add_counts(data: dict[str, Any], tree: dict[str, Any]) -> None:
    data["failed_calls"] = tree["failed_calls"]
    data["calls_failed_in_tree"] = tree["calls_failed_in_tree"]
    for call, summed in zip(data.get("calls", ()), tree["calls"], strict=False):
        call.setdefault("duration", summed["duration"])
    for child, summed in zip(data.get("children", ()), tree["children"], strict=False):
        _add_counts(child, summed)
