"""The ``shoal`` command: ``shoal run PLAN_FILE`` runs a plan file and shows how it goes.

``shoal run`` journals to ``.shoal/runs.db`` (``--store PATH``, ``--no-store``); ``shoal runs``,
``shoal show``, ``shoal resume`` and ``shoal cancel`` work on that journal
(:mod:`shoal.cli.journal`).

Exit codes: 0 every node ok; 1 some node did not succeed; 2 a bad plan or bad options;
130 interrupted by Ctrl-C; 143 stopped by SIGTERM (taken as Ctrl-C is, while the plan loads
too).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from fnmatch import fnmatchcase
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from shoal import __version__
from shoal.agents.budget import Budget
from shoal.approvals import Approver, Rule, RulesApprover
from shoal.cli import presses
from shoal.cli.agent_journal import AgentJournal
from shoal.cli.agents import (
    AgentOptions,
    agent_source,
    is_agent_target,
    model_option,
    run_agent_target,
)
from shoal.cli.approver import ConsoleApprover
from shoal.cli.interrupt import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    CtrlC,
    say_stopped,
    sigterm_as_ctrl_c,
    stopped_by_a_call,
    stopped_in_doubt,
    terminated,
)
from shoal.cli.journal import register as register_journal_commands
from shoal.cli.live import LivePause, follow, show_cursor
from shoal.cli.mcp import register as register_mcp_commands
from shoal.cli.outputs import is_stdout, journal_clash, plan_clash
from shoal.cli.pipes import guarded
from shoal.cli.render import (
    announce,
    events_file,
    events_incomplete,
    plan_problems,
    render_result,
)
from shoal.cli.safe import (
    clean,
    install_log_handler,
    is_terminal,
    live_fits,
    one_line,
    others_to_stderr,
)
from shoal.cli.safe import console as safe_console
from shoal.events import JsonlSink
from shoal.exceptions import (
    ConfigError,
    JournalWriteError,
    MissingDependencyError,
    PlanChangedError,
    PlanError,
    RunActiveError,
    StoreError,
    ToolDefinitionError,
    bounded_text,
)
from shoal.outcome import RunResult, json_text
from shoal.plan import Plan
from shoal.plandata import DataError, read_text
from shoal.planfile import check_import, load_plan
from shoal.runtime import Runtime, check_deadline, new_run_id, run_blocking
from shoal.store.sqlite import DEFAULT_PATH, SQLiteStore

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_OK", "RunOptions", "app", "approver_for", "main",
           "run_agent", "run_plan"]

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
USAGE_ERROR_WIDTH = 2000  # characters of a command-line error, which quotes what was typed

class _Interrupted(Exception):
    """A Ctrl-C inside a command, carried past typer to :func:`main` (see :class:`_Commands`)."""


class _Commands(TyperGroup):
    """``shoal``'s commands; a Ctrl-C in one reaches :func:`main` to be said in one line.

    typer turns it into a silent exit 130 of its own (click, into an ``Abort``): ``shoal show``
    stopped so printed nothing, where every other Ctrl-C says ``interrupted``.
    """

    def invoke(self, ctx: Any) -> Any:  # click's Context, which typer may vendor
        """Run the command; a ``KeyboardInterrupt`` comes out as :class:`_Interrupted`."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Interrupted from exc


app = typer.Typer(
    name="shoal",
    help="Run DAGs of tool calls with all the parallelism their dependencies allow.",
    no_args_is_help=True,
    add_completion=False,
    cls=_Commands,
)


class ExecutorName(StrEnum):
    """Backends a run can default to (sync tools always run on threads)."""

    inline = "inline"
    thread = "thread"
    process = "process"
    ray = "ray"


@dataclass(frozen=True, slots=True)
class RunOptions:
    """What ``shoal run`` was asked to do."""

    plan_file: Path
    as_json: bool = False
    max_concurrency: int | None = None
    executor: str | None = None
    deadline: float | None = None
    fail_fast: bool = False
    events: Path | None = None
    approve: str | None = None
    approval_timeout: float | None = None
    process_workers: int | None = None
    store: Path | None = None  # the journal file (None: no journal)
    resume: str | None = None  # the run to resume (plan_file is the one it started with)
    rerun_in_doubt: tuple[str, ...] = ()
    mark_done: Mapping[str, Any] | None = None
    force: bool = False  # resume even if another process seems to run the run
    modules: tuple[str, ...] | None = None  # what the plan may import (None: see plan_modules)

    def start_options(self) -> dict[str, Any]:
        """What ``Runtime.start`` needs besides the plan: where it came from, or the resume."""
        if self.resume is not None:
            return {"resume": self.resume, "rerun_in_doubt": self.rerun_in_doubt,
                    "mark_done": self.mark_done, "force": self.force}
        if self.store is None:
            return {}
        try:  # as the plan was read: a FIFO read already reads as empty, never waited on
            text = read_text(self.plan_file, "plan file")
        except DataError:  # changed since it was loaded: nothing kept to resume from
            text = ""
        settings = {"executor": self.executor, "max_concurrency": self.max_concurrency,
                    "process_workers": self.process_workers}
        return {"source": {"path": str(self.plan_file.resolve()), "cwd": os.getcwd(),
                           "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
                           "text": text, "settings": settings}}

    def runtime(self, pause: LivePause | None = None) -> Runtime:
        """A runtime with these settings; unset ones keep the runtime's defaults.

        ``pause`` lets a console approver stop the live view while it asks.
        """
        settings: dict[str, Any] = {"executor": self.executor, "deadline": self.deadline,
                                    "fail_fast": self.fail_fast,
                                    "process_workers": self.process_workers,
                                    "approver": approver_for(self.approve, pause),
                                    "approval_timeout": self.approval_timeout,
                                    "store": None if self.store is None else SQLiteStore(
                                        self.store, keep_events=True)}
        if self.max_concurrency is not None:  # None would mean unbounded, not "default"
            settings["max_concurrency"] = self.max_concurrency
        return Runtime(**settings)


def approver_for(mode: str | None, pause: LivePause | None = None) -> Approver | None:
    """The approver ``--approve MODE`` names; without one, the console when stdin is a terminal.

    ``console`` asks on the terminal, ``deny`` refuses every gated call, ``allow`` approves
    every one (say so explicitly: it is the same as not gating), anything else is a rules
    file (YAML or JSON; ``otherwise: ask`` passes unmatched calls to the console).
    """
    if mode is None:
        mode = "console" if is_terminal(sys.stdin) else None
    if mode is None:
        return None  # gated calls are denied, saying how to approve them
    console = ConsoleApprover(pause=pause)
    if mode == "console":
        return console
    if mode == "deny":
        return RulesApprover([Rule("deny", reason="denied by --approve deny")])
    if mode == "allow":
        return RulesApprover([Rule("allow", reason="approved by --approve allow")])
    return RulesApprover.from_file(mode, ask=console)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"shoal {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_show_version, is_eager=True, help="Print the version and exit.",
    )] = False,
) -> None:
    """Run DAGs of tool calls with all the parallelism their dependencies allow."""


RUN_HELP = "\n\n".join([
    "Run the plan in PLAN_FILE, with every call whose inputs are ready running at once; or "
    "run an agent: shoal run package.module:agent \"PROMPT\" (or path/file.py:agent), with a "
    "live tree of agents and their calls; --model overrides the model of every agent.",
    "Tools are named by import path ('package.module:function'). The current directory is put "
    "first on sys.path (as 'python -m' does), so run shoal from the directory that holds your "
    "tools' package, e.g. from the repository root: shoal run examples/site_report/plan.yaml",
    "On a terminal a live view shows progress; piped, only the final table is printed.",
    "Exit codes: 0 every node ok; 1 some node did not succeed; 2 bad plan or options; "
    "130 interrupted (Ctrl-C once cancels the run and still prints every outcome, and how to "
    "resume it; twice quits at once); 143 the same after SIGTERM.",
])


#: The environment variable that lists the modules a plan file may import (comma-separated).
MODULES_ENV = "SHOAL_PLAN_MODULES"


def split_modules(values: Sequence[str]) -> tuple[str, ...]:
    """``["a,b", "c"]`` -> ``("a", "b", "c")``: --modules given several times, or with commas."""
    return tuple(part.strip() for value in values for part in value.split(",") if part.strip())


def plan_modules(given: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """What a plan file may import: ``--modules``, else ``$SHOAL_PLAN_MODULES``, else anything.

    An empty or blank variable counts as unset.
    """
    if given is not None:
        return given
    value = os.environ.get(MODULES_ENV, "")
    return split_modules([value]) if value.strip() else None

@app.command("run", help=RUN_HELP)
def run_command(
    plan_file: Annotated[Path, typer.Argument(
        metavar="PLAN_FILE|MODULE:AGENT", show_default=False,
        help="A plan file (.yaml, .yml or .json) listing nodes: id, tool, args, after, options; "
             "or an agent as package.module:name or path/file.py:name.",
    )],
    prompt: Annotated[str | None, typer.Argument(
        metavar="[PROMPT]", show_default=False, help="The task, when running an agent.",
    )] = None,
    model: Annotated[str | None, typer.Option(
        "--model", metavar="MODEL", show_default=False,
        help="Agents only: run every agent of the tree on this model instead, e.g. "
             "openai:gpt-4.1-mini, anthropic:claude-sonnet-4-5 or local.",
    )] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the result as JSON on stdout (nothing else goes there).",
    )] = False,
    max_concurrency: Annotated[int | None, typer.Option(
        "--max-concurrency", metavar="N", min=1, show_default=False,
        help="Calls in flight at once across the run (default 1000).",
    )] = None,
    executor: Annotated[ExecutorName | None, typer.Option(
        "--executor", show_default=False,
        help="Backend for tools that do not choose one: inline (async tools on the event "
             "loop), thread, process (worker processes: crash isolation, OS limits, scrubbed "
             "environment) or ray (RAY_ADDRESS, else a local Ray). Default: inline for async "
             "and thread for sync tools; sync tools never run inline.",
    )] = None,
    deadline: Annotated[float | None, typer.Option(
        "--deadline", metavar="SECONDS", show_default=False,
        help="Stop the run after this long: running calls time out, the rest are cancelled.",
    )] = None,
    fail_fast: Annotated[bool, typer.Option(
        "--fail-fast", help="Cancel everything else as soon as one call fails.",
    )] = False,
    events: Annotated[Path | None, typer.Option(
        "--events", metavar="FILE.jsonl", show_default=False,
        help="Append every event (queued, started, finished, ...) to this file as JSON lines.",
    )] = None,
    approve: Annotated[str | None, typer.Option(
        "--approve", metavar="console|deny|allow|RULES", show_default=False,
        help="Who decides on calls that need approval: console (ask here; the default when "
             "stdin is a terminal), deny, allow, or a rules file (YAML/JSON: rules of "
             "allow/deny patterns, otherwise: deny|allow|ask). Without an approver such calls "
             "are denied.",
    )] = None,
    approval_timeout: Annotated[float | None, typer.Option(
        "--approval-timeout", metavar="SECONDS", min=0.001, show_default=False,
        help="Deny a call nobody decided on within this long.",
    )] = None,
    process_workers: Annotated[int | None, typer.Option(
        "--process-workers", metavar="N", min=1, show_default=False,
        help="Worker processes for the process backend (default: one per CPU).",
    )] = None,
    store: Annotated[Path, typer.Option(
        "--store", metavar="PATH",
        help="Journal the run here (SQLite), for shoal runs / show / resume / cancel.",
    )] = DEFAULT_PATH,
    no_store: Annotated[bool, typer.Option(
        "--no-store", help="Do not journal the run (it cannot be resumed).",
    )] = False,
    modules: Annotated[list[str] | None, typer.Option(
        "--modules", metavar="PKG[,PKG...]", show_default=False,
        help=f"The modules and packages the plan's import paths (or the module:agent and "
             f"--model module:name given) may name (repeatable or comma-separated); nothing "
             f"else is imported. Default: ${MODULES_ENV} if set, else any module.",
    )] = None,
) -> None:
    """Run a plan file or an agent (see RUN_HELP)."""
    if is_agent_target(str(plan_file)):
        raise typer.Exit(run_agent(str(plan_file), prompt, model, as_json, max_concurrency,
                                   executor.value if executor is not None else None,
                                   deadline, events, approve=approve,
                                   approval_timeout=approval_timeout,
                                   store=None if no_store else store,
                                   modules=None if modules is None else split_modules(modules)))
    if prompt is not None or model is not None:
        raise typer.Exit(_bad_input(
            "usage", f"a PROMPT and --model are for agents (module:agent); {str(plan_file)!r} "
                     "is a plan file", as_json))
    options = RunOptions(plan_file, as_json, max_concurrency,
                         executor.value if executor is not None else None,
                         deadline, fail_fast, events, approve, approval_timeout, process_workers,
                         None if no_store else store,
                         modules=None if modules is None else split_modules(modules))
    raise typer.Exit(run_plan(options))



register_journal_commands(app)  # runs, show, resume, cancel
register_mcp_commands(app)  # mcp serve


@sigterm_as_ctrl_c()  # from the start: its module may import for a while
def run_agent(target: str, prompt: str | None, model: str | None, as_json: bool,
              max_concurrency: int | None, executor: str | None, deadline: float | None,
              events: Path | None, *, approve: str | None = None,
              approval_timeout: float | None = None, store: Path | None = None,
              resume: str | None = None, force: bool = False,
              modules: tuple[str, ...] | None = None, rerun_in_doubt: tuple[str, ...] = (),
              mark_done: Mapping[str, Any] | None = None) -> int:
    """Run the agent ``target`` names on ``prompt`` as ``shoal run`` does; return the exit code.

    ``deadline`` becomes the tree's wall-clock budget. ``approve`` names the approver as
    ``--approve`` does (console by default on a terminal; the live tree pauses while it asks).
    With ``store`` the run is journaled there; ``resume`` continues that journaled run,
    settling the calls in doubt that ``rerun_in_doubt`` and ``mark_done`` name (by lineage).
    ``modules`` (else ``$SHOAL_PLAN_MODULES``) lists what the target and ``--model`` may
    import, as for a plan file.
    """
    allowed = plan_modules(modules)
    _put_cwd_on_path()
    sink = _open_events(events, store, as_json, agent_source(target),
                        "the file that defines the run's agent")
    if isinstance(sink, str):
        return _bad_input("events", sink, as_json)
    live = not as_json and live_fits(sys.stdout)  # not in a 1-column window
    console = safe_console()  # a sane size whatever COLUMNS and LINES say
    pause = LivePause() if live else None
    try:
        check_import(target, allowed, target)  # before anything is made, or imported
        check_deadline(deadline)  # as for a plan: 0 is refused, not read as "no deadline"
        settings: dict[str, Any] = {"executor": executor, "approval_timeout": approval_timeout,
                                    "approver": approver_for(approve, pause)}
        if max_concurrency is not None:
            settings["max_concurrency"] = max_concurrency
        journal = None
        if store is not None:  # the run id is printed once the run is journaled
            settings["store"] = SQLiteStore(store, keep_events=True)
            journal = AgentJournal(settings["store"], resume or new_run_id())
        chosen = model_option(model, allowed) if model is not None else None
        options = AgentOptions(target, prompt, chosen, as_json, Runtime(**settings),
                               None if deadline is None else Budget(wall_clock=deadline), sink,
                               pause, journal, model, resume is not None, force, allowed,
                               rerun_in_doubt, mark_done)
        return run_agent_target(options, console, live)
    except PlanError as exc:  # a plan function's plan: every problem, as for a plan file
        return _bad_plan(exc, as_json)
    except (ConfigError, ToolDefinitionError, MissingDependencyError) as exc:
        return _bad_input("config", str(exc), as_json)
    except PlanChangedError as exc:
        return _bad_input("agent_changed", str(exc), as_json)
    except RunActiveError as exc:
        return _bad_input("run_active", str(exc), as_json)
    except StoreError as exc:
        return _bad_input("journal", str(exc), as_json)
    finally:
        if sink is not None:
            sink.close()


@sigterm_as_ctrl_c()  # from the start: loading the plan imports its tools' modules
def run_plan(options: RunOptions) -> int:
    """Run ``options.plan_file`` as ``shoal run`` does, print the result; return the exit code.

    Does not return when calls were abandoned on threads (it exits the process instead).
    """
    try:
        return _run_checked(options)
    except PlanError as exc:
        return _bad_plan(exc, options.as_json)
    except (ConfigError, ToolDefinitionError, MissingDependencyError) as exc:
        return _bad_input("config", str(exc), options.as_json)
    except PlanChangedError as exc:
        return _bad_input("plan_changed", str(exc), options.as_json)
    except RunActiveError as exc:
        return _bad_input("run_active", str(exc), options.as_json)
    except JournalWriteError as exc:
        return _journal_stopped(exc, options.as_json)
    except StoreError as exc:
        return _bad_input("journal", str(exc), options.as_json)


def _journal_stopped(exc: JournalWriteError, as_json: bool) -> int:
    """The error, and what the run did before its journal failed: those calls ran."""
    if exc.result is None:
        return _bad_input("journal", str(exc), as_json)
    message = str(exc)
    sys.stderr.write(f"error: {clean(bounded_text(message, USAGE_ERROR_WIDTH), newlines=True)}\n")
    if as_json:
        sys.stdout.write(json_text({"error": "journal", "message": message,
                                    "result": exc.result.to_dict()}, indent=2) + "\n")
    else:
        safe_console().print(render_result(exc.result))
    sys.stdout.flush()
    if exc.result.abandoned:
        _exit_leaving_threads(exc.result, EXIT_BAD_INPUT)
    return EXIT_BAD_INPUT


def _run_checked(options: RunOptions) -> int:
    _put_cwd_on_path()
    live = not options.as_json and live_fits(sys.stdout)
    pause = LivePause() if live else None
    runtime = options.runtime(pause)
    with others_to_stderr(options.as_json):  # a tool module printing as it imports
        plan = load_plan(options.plan_file, modules=plan_modules(options.modules))
    _warn_of_rules_for_no_tool(runtime.approvals.approver, plan)
    sink = _open_events(options.events, options.store, options.as_json, options.plan_file)
    if isinstance(sink, str):
        return _bad_input("events", sink, options.as_json)
    console = safe_console()  # a sane size whatever COLUMNS and LINES say
    started: list[str] = []  # the run's id, once it has one
    # Ctrl-C is held from before the loop is made: a press at any moment from here on
    # cancels the run (as it starts, if it has not yet), none is lost in between
    ctrl_c = CtrlC(on_hard_exit=partial(show_cursor, console) if live else _nothing)
    try:
        with ctrl_c:
            try:
                with others_to_stderr(options.as_json):  # a tool's print is not the JSON's
                    # (asyncio.run, but a task that ignores its cancellation, an abandoned
                    # call's, does not hold the loop's end forever)
                    result, _ = run_blocking(_drive(
                        runtime, plan, sink, console if live else None, pause,
                        options.start_options(), started, ctrl_c))
            except KeyboardInterrupt:  # a call's own: Ctrl-C raises none here (see CtrlC)
                return stopped_by_a_call(started[0] if started else "",
                                         runtime.store is not None, options.as_json)
    finally:
        if sink is not None:
            sink.close()
    _print_result(result, options.as_json, console, sink)
    if ctrl_c.interrupted and started and runtime.store is not None and not result.ok:
        # after the table: the last thing a user sees
        say_stopped(started[0], ctrl_c.reason, stopped_in_doubt(result, {
            node.tool.name: node.tool.policy.idempotent for node in plan.nodes}),
            earlier=[o.node_id for o in result if o.status == "in_doubt"])
    code = ctrl_c.exit_code if ctrl_c.interrupted else (EXIT_OK if result.ok else EXIT_FAILED)
    if result.abandoned:
        _exit_leaving_threads(result, code)
    return code


def _warn_of_rules_for_no_tool(approver: Approver | None, plan: Plan) -> None:
    """Warn of each rule whose tool pattern matches no tool of ``plan``: a misspelt name.

    ``deny: delet_file`` denies nothing, silently; with ``otherwise: allow`` the call it meant
    runs unasked. A warning only: a plan's agents may call tools that are not its nodes.
    """
    if not isinstance(approver, RulesApprover):
        return
    tools = sorted({node.tool.name for node in plan.nodes})
    for rule in approver.rules:
        if not any(fnmatchcase(name, rule.tool) for name in tools):
            sys.stderr.write(
                f"warning: the rule {rule.action} '{clean(rule.tool)}' matches no tool of this "
                f"plan ({clean(one_line(', '.join(tools), 120))}); is the name misspelt?\n")


def _put_cwd_on_path() -> None:
    """Make modules under the current directory importable, as ``python -m`` does."""
    cwd = os.getcwd()
    if not sys.path or sys.path[0] != cwd:
        sys.path.insert(0, cwd)


def _open_events(path: Path | None, store: Path | None, as_json: bool,
                 plan: Path | None = None,
                 called: str = "the run's plan file") -> JsonlSink | str | None:
    """The events file's sink, or a message saying why it cannot be opened.

    Never the journal ``store`` or any other SQLite file (see :mod:`shoal.cli.outputs`), nor
    the run's ``plan`` file (``called`` says what it is), nor, with ``--json``, standard
    output: its lines made the JSON no JSON reader takes.
    """
    if path is None:
        return None
    if as_json and is_stdout(path):
        return (f"{str(path)!r} is standard output, where --json writes the result: name "
                "another file for the events, or leave out --json")
    what = "appending the events there"
    clash = journal_clash(path, store, what) or plan_clash(path, plan, what, called)
    if clash:
        return clash
    try:
        return JsonlSink(path)
    except OSError as exc:
        return f"cannot open the events file {str(path)!r}: {exc.strerror or exc}"


async def _drive(runtime: Runtime, plan: Plan, sink: JsonlSink | None,
                 live: Console | None, pause: LivePause | None = None,
                 start: Mapping[str, Any] | None = None,
                 started: list[str] | None = None,
                 ctrl_c: CtrlC | None = None) -> tuple[RunResult, bool]:
    """Run ``plan``; return its result and whether Ctrl-C stopped it.

    ``started`` gets the run's id as soon as it has one. ``ctrl_c``, entered already, is
    given the run to cancel; without it one is entered for the run.
    """
    try:
        handle = runtime.start(plan, on_event=sink, **(start or {}))
        if ctrl_c is not None:  # a press before this cancels the run now
            ctrl_c.attach(handle)
        if started is not None:
            started.append(handle.run_id)
        if runtime.store is not None:  # the id that shoal show / resume / cancel take
            announce(handle.run_id, bool((start or {}).get("resume")),
                     getattr(runtime.store, "path", "the store"))
        with contextlib.nullcontext(ctrl_c) if ctrl_c is not None else CtrlC(
                handle, on_hard_exit=(partial(show_cursor, live) if live is not None
                                      else _nothing)) as watching:
            title = f"shoal · {plan.name}" if plan.name else "shoal"
            result = await (follow(handle, live, title, pause) if live is not None else handle)
        return result, watching.interrupted
    finally:
        await runtime.aclose()


def _nothing() -> None:
    """Without a live view there is no cursor to restore on a forced exit."""


def _print_result(result: RunResult, as_json: bool, console: Console,
                  sink: JsonlSink | None = None) -> None:
    """The result; and, with ``--events``, whether the events file has every event."""
    if as_json:
        data = result.to_dict()
        if sink is not None:
            data["events_file"] = events_file(sink)
        sys.stdout.write(json_text(data, indent=2) + "\n")
    else:
        console.print(render_result(result))
        incomplete = events_incomplete(sink)
        if incomplete is not None:
            console.print(incomplete)
    sys.stdout.flush()


def _exit_leaving_threads(result: RunResult, code: int) -> None:
    """Exit now: abandoned calls (threads, tasks that ignore cancellation) cannot be stopped.

    A thread would hold the process open.
    """
    count = len(result.abandoned)
    shown = ", ".join(one_line(n, 60) for n in result.abandoned[:5])
    sys.stderr.write(f"warning: {count} call{'s' if count != 1 else ''} abandoned, which "
                     f"cannot be stopped ({shown}"
                     f"{', ...' if count > 5 else ''}); exiting without waiting for them\n")
    sys.stderr.flush()
    os._exit(code)


def _bad_plan(exc: PlanError, as_json: bool) -> int:
    sys.stderr.write(f"error: {plan_problems(exc)}\n")
    if as_json:
        problems = [{"code": p.code, "node": p.node, "message": p.message} for p in exc.problems]
        sys.stdout.write(json_text({"error": "plan", "problems": problems}, indent=2) + "\n")
    return EXIT_BAD_INPUT


def _bad_input(kind: str, message: str, as_json: bool) -> int:
    # the message may quote a file or an option at any length: --json has it whole
    sys.stderr.write(f"error: {clean(bounded_text(message, USAGE_ERROR_WIDTH), newlines=True)}\n")
    if as_json:
        sys.stdout.write(json_text({"error": kind, "message": message}, indent=2) + "\n")
    return EXIT_BAD_INPUT


def main() -> None:
    """Entry point of the ``shoal`` console script.

    Ctrl-C outside a run (while typer builds the command line, or a slow tool module
    imports) ends it with exit code 130 and one line, as during a run.
    """
    with guarded():  # a reader that stops reading (| head -1) fails no call, changes no code
        code = _command()
        if presses() and code not in (EXIT_INTERRUPTED, EXIT_TERMINATED):  # a press whose
            code = _interrupted()  # KeyboardInterrupt was lost
    sys.exit(code if isinstance(code, int) else EXIT_OK)


def _command() -> Any:
    """Run the command line; its exit code (or what typer returned)."""
    try:
        install_log_handler()  # the library's warnings quote node ids and errors: escape them
        code = app(standalone_mode=False)  # so that errors come back here to be escaped
    except (KeyboardInterrupt, _Interrupted) as exc:  # in a command, or while typer makes it
        code = _interrupted(terminated(exc))
    except typer.Abort as exc:  # click's word for a Ctrl-C (or end of input) in a command
        if isinstance(exc.__cause__, KeyboardInterrupt):
            code = _interrupted(terminated(exc.__cause__))
        else:
            sys.stderr.write("aborted\n")
            code = EXIT_FAILED
    except OSError as exc:
        code = _cannot_write(exc) if exc.errno in _FULL else _crashed()
    except Exception as exc:
        code = _command_line_error(exc) if _is_usage_error(exc) else _crashed()
    return code


def _interrupted(by_sigterm: bool = False) -> int:
    """Say that Ctrl-C (or SIGTERM, taken as Ctrl-C is) ended the command; its exit code."""
    sys.stderr.write("terminated\n" if by_sigterm else "interrupted\n")
    return EXIT_TERMINATED if by_sigterm else EXIT_INTERRUPTED


# a disk full, over quota, a file too large, an I/O error, a read-only file system: the
# output (stdout redirected to a file, say) could not be written; no bug to show a traceback of
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS})


def _cannot_write(exc: OSError) -> int:
    """Say that the output could not be written, in one line."""
    where = repr(str(exc.filename)) if exc.filename else "the output"
    sys.stderr.write(f"error: cannot write {clean(where)}: {exc.strerror or exc}\n")
    # what stdout still holds cannot be written either: send it nowhere, rather than have
    # the interpreter's last flush print the same failure again as it exits
    with contextlib.suppress(OSError, ValueError):
        nowhere = os.open(os.devnull, os.O_WRONLY)
        os.dup2(nowhere, sys.stdout.fileno())
    return EXIT_FAILED


def _is_usage_error(exc: Exception) -> bool:
    """Whether ``exc`` is click's word on a bad command line (typer may vendor click)."""
    return callable(getattr(exc, "format_message", None)) and isinstance(
        getattr(exc, "exit_code", None), int)


def _command_line_error(exc: Any) -> int:
    """Print a bad option or argument as click would, with what the user typed escaped."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # its message is the help text: ours
        exc.show()
        return int(exc.exit_code)
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        sys.stderr.write(f"{ctx.get_usage()}\nTry '{clean(ctx.command_path)} --help' for help."
                         "\n")
    message = clean(bounded_text(str(exc.format_message()), USAGE_ERROR_WIDTH), newlines=True)
    sys.stderr.write(f"error: {message}\n")
    return int(exc.exit_code)


def _crashed() -> int:
    """Print the traceback of a bug, escaped: its messages may quote anything."""
    sys.stderr.write(clean(traceback.format_exc(), newlines=True))
    return EXIT_FAILED


if __name__ == "__main__":
    main()
