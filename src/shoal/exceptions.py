"""Every error shoal raises, in one tree.

::

    ShoalError                      base of everything below
    ├── PlanError                   a plan is invalid; ``.problems`` lists *every* problem at once
    ├── ToolDefinitionError         a function cannot become a tool (bad policy, bad signature)
    ├── ToolArgumentError           arguments do not fit a tool's schema; ``.argument`` names one
    ├── ToolTimeoutError            a call ran past its timeout (the outcome is ``timed_out``)
    ├── UpstreamFailedError         an open run's ``value()`` of a node that did not succeed
    ├── RunClosedError              a node added to an open run that takes no more (closed, or
    │                               its runtime closed); also a ``RuntimeError``
    ├── RunNotEndedError            an open run's or an event stream's ``result`` read before
    │                               the run ended; also a ``RuntimeError``
    ├── SelfWaitError               a node of an open run awaited the run, itself, or a node
    │                               that waits on it (it would hang); also a ``RuntimeError``
    ├── NoEventLoopError            ``open_run()`` or ``start()`` called with no running event
    │                               loop (from sync code); also a ``RuntimeError``
    ├── AsyncOnlyError              an open run used with ``with``, not ``async with``; also a
    │                               ``TypeError``
    ├── ExecutorError               a backend could not run a call (not the tool's own error)
    │   ├── SerializationError      arguments or a result could not be moved to the backend
    │   ├── WorkerCrashedError      the worker process died during the call; ``.cause`` says how
    │   ├── ToolQuarantinedError    a tool crashed its workers too often in this run: not started
    │   └── NoThreadError           the OS refused a new thread while the pool's were all busy:
    │                               a sync call that waited too long for one is not started
    ├── RemoteToolError             stands in for a tool's exception that could not be pickled
    ├── ConfigError                 an invalid runtime setting (limits, executors, rates)
    │   ├── ArgumentTypeError       a plan's, an open run's or a ref's argument of the wrong
    │   │                           kind (a node id that is no text); also a ``TypeError``
    │   ├── StatusError             an :class:`~shoal.outcome.Outcome` of a status that is not
    │   │                           one of ``STATUSES`` (a typo); also a ``ValueError``
    │   └── OpenFilesLimitError     a process's ``open_files`` limit reached by its tools' files
    │                               or its model's connections; also an ``OSError`` (EMFILE)
    ├── MissingDependencyError      an optional extra is not installed; says what to install
    ├── StoreError                  the journal cannot be opened, read or written
    │   ├── StoreVersionError       the journal file is newer than this shoal; names both versions
    │   ├── JournalWriteError       a run stopped because its journal could not be written;
    │   │                           ``.result`` holds the outcomes it had (the calls that ran)
    │   ├── JournalDamagedError     part of the journal is not what shoal wrote; ``.damage``
    │   │                           says where (a run cannot be resumed from damaged rows)
    │   ├── RunActiveError          resume: the run is still running in another process (or
    │   │                           being resumed); ``.pid`` and ``.host`` name it; ``force``
    │   └── RunNotFoundError        the journal has no run with that id
    ├── PlanChangedError            resume: the plan differs from the one the run started with;
    │                               ``.differences`` lists what changed; nothing runs
    ├── BoardError                  a shared board was used in a way it cannot be
    │   ├── BoardKeyError           a key the board does not declare; names the declared ones
    │   └── BoardValueError         a value the key's merge rule cannot merge
    ├── ModelError                  a model request failed (after shoal's retries, if transient)
    │   ├── ModelHTTPError          the provider answered with an error status; ``.status``
    │   ├── MissingAPIKeyError      a hosted model has no API key; ``.env_var`` names it
    │   └── ModelConnectionError    the provider could not be reached, or did not answer in time
    ├── ScriptError                 a ScriptedModel got a request it has no step for, or has
    │                               steps left unused
    ├── AgentError                  an agent run could not finish; ``.result`` holds it so far
    │   ├── BudgetExceeded          a budget of the run's tree ran out; ``.limit`` names it
    │   ├── MaxTurnsExceeded        the agent used all its turns without a final answer
    │   ├── MaxReplansExceeded      a planner's joiner asked for more new plans than
    │   │                           ``max_replans`` allows
    │   └── OutputValidationError   the final answer did not fit ``output_type``, after retries
    │       └── OutputCutOffError   cut off at the model's output cap, it could not be read
    ├── MCPServerError              an MCP server could not be reached or started, crashed, or
    │                               broke the protocol; ``.server`` names it, ``.cause`` says how
    └── MCPToolError                an MCP server's tool answered with an error (``isError``);
                                    the message is the server's text

Errors raised *by tools* are never wrapped in this tree: they are recorded as a ``failed``
outcome whose :class:`~shoal.outcome.ErrorInfo` keeps the original type name, message and
traceback text. Every class here pickles with its attributes, so errors survive the trip
back from worker processes and Ray tasks.

A cancelled call or a run past its ``deadline`` raises nothing: the call's outcome says so
(``cancelled`` with its reason; ``timed_out``). ``CallCancelledError`` and
``DeadlineExceededError``, which nothing ever raised, are deprecated: importing one warns, and
an ``except`` clause naming one still catches nothing, as before.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shoal import _lazy

if TYPE_CHECKING:
    from shoal.outcome import RunResult

__all__ = [
    "BoardError",
    "BoardKeyError",
    "BoardValueError",
    "ConfigError",
    "AgentError",
    "ArgumentTypeError",
    "StatusError",
    "AsyncOnlyError",
    "BudgetExceeded",
    "ExecutorError",
    "JournalDamagedError",
    "JournalWriteError",
    "MCPServerError",
    "MCPToolError",
    "MaxReplansExceeded",
    "MaxTurnsExceeded",
    "MissingAPIKeyError",
    "MissingDependencyError",
    "NoEventLoopError",
    "OpenFilesLimitError",
    "NoThreadError",
    "ModelConnectionError",
    "ModelError",
    "ModelHTTPError",
    "OutputCutOffError",
    "OutputValidationError",
    "PlanChangedError",
    "PlanError",
    "PlanProblem",
    "RemoteToolError",
    "RunActiveError",
    "RunClosedError",
    "RunNotEndedError",
    "RunNotFoundError",
    "ScriptError",
    "SelfWaitError",
    "SerializationError",
    "ShoalError",
    "StoreError",
    "StoreVersionError",
    "ToolArgumentError",
    "ToolDefinitionError",
    "ToolQuarantinedError",
    "ToolTimeoutError",
    "UpstreamFailedError",
    "WorkerCrashedError",
    "bounded_text",
    "describe_exception",
    "exception_message",
    "install_hint",
    "source_checkout",
]


class ShoalError(Exception):
    """Base class of every error shoal raises."""


@dataclass(frozen=True, slots=True)
class PlanProblem:
    """One thing wrong with a plan: where it is (``node``, may be empty), a code, and a message.

    Codes: ``unknown_tool``, ``bad_arguments``, ``dangling_ref``, ``foreign_ref`` (a ref
    another plan or open run made), ``self_ref``, ``cycle``,
    ``duplicate_id``, ``bad_id`` (an id holding ``/``, or empty), ``bad_after``, ``syntax``,
    ``bad_import``, ``bad_shape`` (including bad ``options``), and for plan files ``not_found``,
    ``unreadable``, ``duplicate_key`` (a key twice in one mapping) and ``too_large`` (past a
    limit of :mod:`shoal.plandata`).
    """

    code: str
    message: str
    node: str = ""

    def __post_init__(self) -> None:
        # messages quote the plan (keys, ids, tool names): a 1 MB key must not make a 1 MB
        # message, so the middle of a long one is left out, keeping its start and its advice
        object.__setattr__(self, "message", bounded_text(self.message, MAX_PROBLEM_CHARS))

    def __str__(self) -> str:
        where = f"node {bounded_text(repr(self.node), 200)}: " if self.node else ""
        return f"[{self.code}] {where}{_one_line(self.message)}"


#: what would break a problem's line or reorder what follows it: control characters, line
#: and paragraph separators, bidirectional overrides and isolates
_BREAKS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _one_line(message: str) -> str:
    r"""``message`` with each character that would break its line escaped (``\n``, ``\u202e``).

    A message quotes text shoal does not control (a module's error as it was imported, a
    tool's schema error): a line break in it forged a line of the problem list.
    """
    if _BREAKS.search(message) is None:
        return message
    escaped = _BREAKS.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), message)
    return bounded_text(escaped, MAX_PROBLEM_CHARS)  # (an escape is up to 6 characters)


MAX_PROBLEM_CHARS = 2000  # of a plan problem's message
PROBLEMS_IN_MESSAGE = 100  # of a PlanError's problems, in its message (.problems has all)


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` of any exception, never raising (a ``__str__`` may fail or lie)."""
    message = exception_message(exc)
    name = type(exc).__name__
    return f"{name}: {message}" if message else name


def exception_message(exc: BaseException) -> str:
    """``str(exc)``, never raising: an exception's own ``__str__`` may fail."""
    try:
        message = str(exc)
    except KeyboardInterrupt:
        raise
    except BaseException:  # SystemExit too: an error's own code must not end the program
        return "<its message cannot be shown: its __str__ failed>"
    return message if isinstance(message, str) else ""


def ended_with(error: BaseException, note: str) -> BaseException:
    """``error``, which ended a run that so has no result, with ``note`` saying so (once).

    Raised again each time the result is read, as awaiting the run raised it: the note is
    added the first time only.
    """
    if note not in getattr(error, "__notes__", ()):
        error.add_note(note)
    return error


def bounded_text(text: str, limit: int) -> str:
    """``text``, or its start and end with a note of how much of the middle was left out."""
    if len(text) <= limit:
        return text
    keep = max(limit - 60, 2)
    head, tail = text[: keep * 3 // 4], text[len(text) - keep // 4:]
    return f"{head} …[{len(text) - len(head) - len(tail):,} characters left out]… {tail}"


class PlanError(ShoalError):
    """A plan failed validation; ``problems`` holds every problem found, not only the first."""

    def __init__(self, problems: Sequence[PlanProblem], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        # the source is a plan's name, or a file's path: a 1 MB name must not make the message
        # (its line breaks escaped: a name "p\n  - [ok] ..." forged a line of the list)
        source = bounded_text(_one_line(self.source), 200) if self.source else ""
        head = f"invalid plan{f' {source}' if source else ''}: "
        head += f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}"
        shown = [head, *map(str, self.problems[:PROBLEMS_IN_MESSAGE])]
        if len(self.problems) > PROBLEMS_IN_MESSAGE:  # a plan of 300,000 broken nodes: its
            # message was 45 MB, which a traceback prints whole; the first say enough
            shown.append(f"... and {len(self.problems) - PROBLEMS_IN_MESSAGE:,} more "
                         "(.problems holds every one)")
        return "\n  - ".join(shown)

    def __reduce__(self) -> tuple[type[PlanError], tuple[list[PlanProblem], str]]:
        return (PlanError, (self.problems, self.source))


class ToolDefinitionError(ShoalError):
    """A function or policy cannot be turned into a tool; the message says what to change."""


class ToolArgumentError(ShoalError):
    """Arguments do not fit a tool's schema.

    ``tool`` names the tool, ``argument`` the first offending argument (empty when the problem
    is not tied to one), and the message lists every problem pydantic found.
    """

    def __init__(self, tool: str, argument: str, message: str) -> None:
        self.tool = tool
        self.argument = argument
        self.detail = message
        super().__init__(f"bad arguments for tool {tool!r}: {message}")

    def __reduce__(self) -> tuple[type[ToolArgumentError], tuple[str, str, str]]:
        return (ToolArgumentError, (self.tool, self.argument, self.detail))


class ToolTimeoutError(ShoalError):
    """A call ran longer than its timeout."""

    def __init__(self, tool: str, timeout: float) -> None:
        self.tool = tool
        self.timeout = timeout
        super().__init__(f"tool {tool!r} did not finish within its timeout of {timeout:g} s")

    def __reduce__(self) -> tuple[type[ToolTimeoutError], tuple[str, float]]:
        return (ToolTimeoutError, (self.tool, self.timeout))


class UpstreamFailedError(ShoalError):
    """An open run's ``value()`` was asked for a node that did not succeed."""


class RunClosedError(ShoalError, RuntimeError):
    """A node was added to an open run that takes no more; the message says why.

    The run was closed (its block left, ``close()``), or its runtime was closed while it went
    (:meth:`shoal.Runtime.aclose` ends the runs still going on it). A ``RuntimeError`` too, as
    this refusal was before it had a type of its own.
    """


class RunNotEndedError(ShoalError, RuntimeError):
    """A ``result`` was read before its run ended (an open run's, an event stream's).

    The message says when it can be read. A ``RuntimeError`` too, as this refusal was before
    it had a type of its own.
    """


class SelfWaitError(ShoalError, RuntimeError):
    """A node of an open run waited on what cannot end while it runs; the message says why.

    ``await run`` (the whole run) from one of its nodes, ``run.wait(...)`` on the node itself,
    on a node that waits on it, or on one that needs its output: that wait would never end.
    Raised by the waiting call, at once; the run goes on.
    """


class NoEventLoopError(ShoalError, RuntimeError):
    """``open_run()`` or ``start()`` was called with no running event loop (from sync code).

    A ``RuntimeError`` too, as this refusal was before it had a type of its own.
    """


class AsyncOnlyError(ShoalError, TypeError):
    """An open run was used with ``with``; it needs ``async with`` (or ``close()`` and ``await``).

    A ``TypeError`` too, as Python's own refusal of ``with`` on it was before.
    """


class ExecutorError(ShoalError):
    """A backend failed to run a call for reasons of its own, not the tool's."""


class SerializationError(ExecutorError):
    """Arguments or a result could not be serialised for the backend (e.g. not picklable)."""


class WorkerCrashedError(ExecutorError):
    """The worker process running a call died (exit code, signal) before it replied."""

    def __init__(self, tool: str, cause: str, returncode: int | None = None) -> None:
        self.tool = tool
        self.cause = cause
        self.returncode = returncode
        super().__init__(f"the worker process running tool {tool!r} died: {cause}")

    def __reduce__(self) -> tuple[type[WorkerCrashedError], tuple[str, str, int | None]]:
        return (WorkerCrashedError, (self.tool, self.cause, self.returncode))


class ToolQuarantinedError(ExecutorError):
    """A tool's calls killed their worker process ``crashes`` times in this run; no more tries."""

    def __init__(self, tool: str, crashes: int) -> None:
        self.tool = tool
        self.crashes = crashes
        super().__init__(f"tool {tool!r} is quarantined for the rest of this run: its calls "
                         f"crashed their worker process {crashes} times")

    def __reduce__(self) -> tuple[type[ToolQuarantinedError], tuple[str, int]]:
        return (ToolQuarantinedError, (self.tool, self.crashes))


class NoThreadError(ExecutorError):
    """A sync call got no thread: the OS refused to start one, and the pool's were all busy.

    ``busy`` is how many threads the pool had (0: none at all), ``waited`` how many seconds
    the call waited for one of them to take it. The call never ran.
    """

    def __init__(self, tool: str, cause: str, busy: int, waited: float) -> None:
        self.tool = tool
        self.cause = cause
        self.busy = busy
        self.waited = waited
        others = (f"the pool's {busy} threads were all busy for {waited:g} s" if busy
                  else "the pool has no thread")
        super().__init__(f"no thread to run tool {tool!r}: the OS refused to start one "
                         f"({cause}), and {others}; lower the runtime's thread_workers or "
                         "max_concurrency, or raise the process's thread limit (ulimit -u, "
                         "a container's pids limit)")

    def __reduce__(self) -> tuple[type[NoThreadError], tuple[str, str, int, float]]:
        return (NoThreadError, (self.tool, self.cause, self.busy, self.waited))


class RemoteToolError(ShoalError):
    """A tool's exception, raised in a worker process, that could not be sent back as itself.

    ``type_name`` is the original exception's type (``module.QualName``), ``message`` its
    text and ``traceback_text`` the traceback as the worker formatted it.
    """

    def __init__(self, type_name: str, message: str, traceback_text: str = "") -> None:
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text
        super().__init__(f"{type_name}: {message}" if message else type_name)

    def __reduce__(self) -> tuple[type[RemoteToolError], tuple[str, str, str]]:
        return (RemoteToolError, (self.type_name, self.message, self.traceback_text))


class ConfigError(ShoalError):
    """An invalid runtime or tool setting; the message names it and what is accepted."""


class OpenFilesLimitError(ConfigError, OSError):
    """A process's ``open_files`` limit was reached; the message says what limit to give.

    Raised in place of the bare ``OSError: [Errno 24] Too many open files`` that a tool's
    files, an agent's model connections or their imports met in a worker or agent process
    with ``limits={"open_files": N}``: ``limit`` is N, ``own`` the descriptors the process
    held of its own before any of them opened one. An ``OSError`` too (``errno`` is
    ``EMFILE``), so what caught or retried the bare error still does.
    """

    def __init__(self, message: str, limit: int = 0, own: int = 0) -> None:
        import errno

        super().__init__(message)
        self.errno = errno.EMFILE
        self.limit = limit
        self.own = own

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.limit, self.own))


class ArgumentTypeError(ConfigError, TypeError):
    """A plan, an open run or a ref was given an argument of the wrong kind; the message says so.

    A node id or ``item_arg=`` that is no text, an ``after=`` naming something that is no
    node, a ref's key that is neither a field name nor an index, a node named by neither a ref
    nor its id. A ``TypeError`` too, as these refusals were before they had a type of their own.
    """


class StatusError(ConfigError, ValueError):
    """An outcome was made with a status that is none of :data:`~shoal.outcome.STATUSES`.

    A typo (``"okay"``) in a store or a backend of your own: such an outcome was counted
    nowhere, was not ``ok``, and read back from the journal as damaged. A ``ValueError`` too.
    """


class MissingDependencyError(ShoalError, ImportError):
    """An optional dependency is missing; the message gives the ``pip install`` line.

    ``package`` names what is missing (one package, or several joined by commas), ``extra``
    the shoal extra that installs it. Running from a source checkout (an editable install, or
    the ``src`` tree on the path), the line is the checkout's ``pip install -e '.[extra]'``,
    with the PyPI form given too.
    """

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        several = "," in package
        super().__init__(f"{package} {'are' if several else 'is'} not installed; install "
                         f"{'them' if several else 'it'} with: {install_hint(extra)}")

    def __reduce__(self) -> tuple[type[MissingDependencyError], tuple[str, str]]:
        return (MissingDependencyError, (self.package, self.extra))


def install_hint(extra: str, checkout: str | None = None) -> str:
    """The command that installs shoal's ``extra``.

    ``pip install 'shoal[extra]'``; for shoal run from a source checkout (``checkout``, found
    by :func:`source_checkout` when not given), the checkout's editable install instead.
    """
    checkout = checkout if checkout is not None else source_checkout()
    pypi = f"pip install 'shoal[{extra}]'"
    if not checkout:
        return pypi
    return (f"pip install -e '.[{extra}]' in {checkout} (the source checkout this shoal runs "
            f"from; from PyPI it would be {pypi})")


def source_checkout() -> str:
    """The source checkout this shoal runs from, or ``""`` for an installed wheel.

    An editable install says so in its ``direct_url.json`` (PEP 610); shoal imported straight
    from a ``src`` tree has the project's ``pyproject.toml`` two folders up.
    """
    import json
    from importlib import metadata
    from pathlib import Path
    from urllib.parse import unquote, urlsplit

    here = Path(__file__).resolve().parent  # .../src/shoal
    try:
        text = metadata.distribution("shoal").read_text("direct_url.json")
        info = json.loads(text) if text else {}
    except (metadata.PackageNotFoundError, ValueError):
        info = {}
    if isinstance(info, dict) and (info.get("dir_info") or {}).get("editable"):
        url = urlsplit(str(info.get("url", "")))
        if url.scheme == "file" and Path(unquote(url.path)).is_dir():
            return str(Path(unquote(url.path)))
    project = here.parent.parent
    pyproject = project / "pyproject.toml"
    if here.parent.name == "src" and pyproject.is_file():
        try:
            if 'name = "shoal"' in pyproject.read_text(encoding="utf-8"):
                return str(project)
        except OSError:
            return ""
    return ""


class StoreError(ShoalError):
    """The journal could not be opened, read or written (a locked or corrupt file, a full disk)."""


class JournalWriteError(StoreError):
    """A run's journal could not be written, so the run stopped (a full disk, a read-only file).

    ``result`` holds the outcomes the run had when it stopped: which calls ran and which
    finished (their side effects happened, though the journal may not say so), or ``None``
    if it stopped before it had any.
    """

    result: RunResult | None = None


class StoreVersionError(StoreError):
    """The journal file was written by a newer shoal, with a schema this code does not know."""

    def __init__(self, path: str, found: int, supported: int) -> None:
        self.path = path
        self.found = found
        self.supported = supported
        super().__init__(
            f"the journal {path!r} has schema version {found}, but this shoal knows only up to "
            f"version {supported}; upgrade shoal to read it (or use another --store file)")

    def __reduce__(self) -> tuple[Any, ...]:
        return (StoreVersionError, (self.path, self.found, self.supported))


class JournalDamagedError(StoreError):
    """Part of the journal does not hold what shoal wrote there (a damaged file, a hand edit).

    ``where`` names the journal (or the run); ``damage`` lists each damaged cell as
    ``table.column: what is wrong``. Listing and showing runs go on and mark what is damaged;
    a damaged run cannot be resumed, since shoal cannot know what its damaged rows said.
    """

    def __init__(self, where: str, damage: Sequence[str]) -> None:
        self.where = where
        self.damage = list(damage)
        shown = "\n  - ".join(self.damage[:10])
        more = f"\n  ... and {len(self.damage) - 10} more" if len(self.damage) > 10 else ""
        super().__init__(f"the journal is damaged ({where}):\n  - {shown}{more}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (JournalDamagedError, (self.where, self.damage))


class RunActiveError(StoreError):
    """Resume was asked for a run that a live process is running (or resuming) right now.

    Running it here too could run a call twice. ``pid`` and ``host`` name that process (0 and
    ``""`` when unknown). If you are sure it can no longer run anything (it is stuck, or its
    machine is gone), resume with ``force=True`` (``shoal resume RUN --force``).
    """

    def __init__(self, run_id: str, pid: int = 0, host: str = "", how: str = "") -> None:
        self.run_id = run_id
        self.pid = pid
        self.host = host
        self.how = how
        who = f"process {pid}" if pid else "another process"
        where = f" on {host}" if host else ""
        super().__init__(
            f"run {run_id!r} is still running in {who}{where}{f' ({how})' if how else ''}; "
            f"resuming it now could run its calls twice. Wait for it to end, or stop it "
            f"(shoal cancel {run_id}); if you are sure that process can no longer run anything, "
            f"resume anyway with: shoal resume {run_id} --force (Python: force=True)")

    def __reduce__(self) -> tuple[Any, ...]:
        return (RunActiveError, (self.run_id, self.pid, self.host, self.how))


class RunNotFoundError(StoreError, KeyError):
    """The journal has no run with this id."""

    def __init__(self, run_id: str, where: str = "") -> None:
        self.run_id = run_id
        self.where = where
        super().__init__(f"no run {run_id!r} in the journal{f' {where}' if where else ''}")

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        return (RunNotFoundError, (self.run_id, self.where))


class PlanChangedError(ShoalError):
    """Resume was asked with a plan (or agent) that differs from the one the run started with.

    ``differences`` lists each change (``node 'b': arguments changed``, ``node 'x' added`` ...);
    nothing was run.
    """

    def __init__(self, run_id: str, differences: Sequence[str]) -> None:
        self.run_id = run_id
        self.differences = list(differences)
        shown = "\n  - ".join(self.differences[:20])
        hidden = len(self.differences) - 20
        more = f"\n  ... and {hidden} more" if hidden > 0 else ""
        super().__init__(f"cannot resume run {run_id!r}: the plan changed since it started "
                         f"(nothing was run):\n  - {shown}{more}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (PlanChangedError, (self.run_id, self.differences))

class BoardError(ShoalError):
    """A shared board (:class:`shoal.Board`) was used in a way it cannot be.

    For instance a handle used after its call ended, or asked for by a call on a process or
    Ray worker, which a handle cannot reach.
    """


class BoardKeyError(BoardError):
    """A write or read of a key the board does not declare; the message lists the declared keys."""


class BoardValueError(BoardError):
    """A value the key's merge rule cannot merge (a counter given text, incomparable minima)."""


class ModelError(ShoalError):
    """A model request failed; ``model`` names the model.

    Transient failures (429, 5xx, timeouts) are retried by shoal first; this is raised once
    the retries are spent.
    """

    def __init__(self, model: str, message: str) -> None:
        self.model = model
        self.detail = message
        super().__init__(f"model {model!r}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.model, self.detail))


class ModelHTTPError(ModelError):
    """The provider answered with an error status.

    ``status`` is the HTTP status, ``retry_after`` the seconds the provider asked us to wait
    (from ``Retry-After``; ``None`` when it did not say), and ``transient`` whether another
    try may succeed (429 and 5xx).
    """

    def __init__(self, model: str, message: str, status: int,
                 retry_after: float | None = None) -> None:
        self.status = status
        self.retry_after = retry_after
        super().__init__(model, f"HTTP {status}: {message}")
        self.detail = message

    @property
    def transient(self) -> bool:
        """Whether the request may succeed if sent again (rate limits, server errors)."""
        return self.status in (408, 409, 429) or self.status >= 500

    def __reduce__(self) -> tuple[Any, ...]:
        return (ModelHTTPError, (self.model, self.detail, self.status, self.retry_after))


class MissingAPIKeyError(ModelError):
    """A hosted model has no API key: ``env_var`` names the variable to set.

    Raised when the model is created (for an agent: when its run starts, or a subagent's), so
    no work starts without one.
    """

    def __init__(self, model: str, env_var: str) -> None:
        self.env_var = env_var
        super().__init__(model, f"{env_var} is not set: export it, or pass api_key=... (or "
                                "use the model 'local', which needs no key)")

    def __reduce__(self) -> tuple[Any, ...]:
        return (MissingAPIKeyError, (self.model, self.env_var))


class ModelConnectionError(ModelError):
    """The provider could not be reached or did not answer in time (always transient)."""

    transient = True


class ScriptError(ShoalError):
    """A :class:`~shoal.testing.ScriptedModel` was asked what its script does not cover.

    Raised for a request it has no step for, and by ``check()`` for steps never used.
    """


class AgentError(ShoalError):
    """An agent run could not finish.

    ``result`` is the run so far (an ``AgentResult``): every outcome recorded before the
    error, the messages and the usage.
    """

    result: Any = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), self.args)


class BudgetExceeded(AgentError):
    """A budget of the agent tree ran out; ``limit`` names it.

    ``limit`` is one of ``tokens``, ``cost``, ``requests``, ``subagents``, ``depth``,
    ``fan_out``, ``wall_clock``; ``used`` and ``allowed`` give the figures. New calls stop at
    once. ``unheld`` says why the limit cannot be held at all (a ``cost`` limit with a model
    reply of unknown price), when that is what stopped the tree: it is stopped as for a
    breach, since what it spends can no longer be counted. ``advice``, when given, is what
    the message says to do instead of raising the limit (one that cannot help).
    """

    def __init__(self, limit: str, used: float, allowed: float, where: str = "",
                 unheld: str = "", advice: str = "") -> None:
        self.limit = limit
        self.used = used
        self.allowed = allowed
        self.where = where
        self.unheld = unheld
        self.advice = advice
        at = f" (at {where})" if where else ""
        if unheld:
            super().__init__(f"budget {limit} limit of {allowed:g} cannot be held: "
                             f"{unheld}{at}")
        else:
            # the fix, for whoever reads the outcome: which argument of which class to raise
            super().__init__(f"budget exceeded: {limit} limit is {allowed:g}, "
                             f"{'reached' if used <= allowed else f'used {used:g}'}{at}; "
                             f"{advice or f'raise Budget({limit}=) to allow more'}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (BudgetExceeded, (self.limit, self.used, self.allowed, self.where, self.unheld,
                                 self.advice))


class MaxTurnsExceeded(AgentError):
    """The agent used ``max_turns`` model turns without giving a final answer."""


class MaxReplansExceeded(AgentError):
    """A planner (``mode="plan"``) was asked for a new plan more than ``max_replans`` times."""


class OutputValidationError(AgentError):
    """The model's final answer did not fit the agent's ``output_type`` after every retry."""


class OutputCutOffError(OutputValidationError):
    """The final answer was cut off at the model's output cap and could not be read.

    Structured output cut mid-JSON (or an answer with no text before the cap): asking again
    with the same cap would be cut again, so it is raised at once, saying how to raise it.
    """


MCP_ERROR_CHARS = 20_000  # of an MCP server's error text kept in a message


class MCPServerError(ShoalError):
    """An MCP server failed as a server: not started, unreachable, crashed, or off-protocol.

    ``server`` names it (its name and how it was started or reached); ``cause`` says what
    happened, with the end of what the server wrote to stderr when there is any.
    """

    def __init__(self, server: str, cause: str) -> None:
        self.server = server
        self.cause = bounded_text(cause, MCP_ERROR_CHARS)
        super().__init__(f"MCP server {server}: {self.cause}")

    def __reduce__(self) -> tuple[type[MCPServerError], tuple[str, str]]:
        return (MCPServerError, (self.server, self.cause))


class MCPToolError(ShoalError):
    """An MCP server's tool reported an error (a result with ``isError: true``).

    The message is the text the server sent back; ``server`` and ``tool`` name where it
    came from (``tool`` as the server calls it).
    """

    def __init__(self, server: str, tool: str, text: str) -> None:
        self.server = server
        self.tool = tool
        self.text = bounded_text(text, MCP_ERROR_CHARS)
        super().__init__(self.text or f"MCP tool {tool!r} of {server} failed, saying nothing")

    def __reduce__(self) -> tuple[type[MCPToolError], tuple[str, str, str]]:
        return (MCPToolError, (self.server, self.tool, self.text))


# Never raised, so no longer exported; kept for one release so that a program naming one still
# runs, with a warning. Not aliases of ShoalError: an ``except CallCancelledError`` that caught
# nothing before must not start catching every shoal error.
class _CallCancelledError(ShoalError):
    """Deprecated: never raised. A cancelled call's outcome is ``cancelled``, with its reason."""


class _DeadlineExceededError(ShoalError):
    """Deprecated: never raised. At the run's deadline, running calls end ``timed_out``."""


# their former names (a pickle of one finds it by this name, through __getattr__)
_CallCancelledError.__name__ = _CallCancelledError.__qualname__ = "CallCancelledError"
_DeadlineExceededError.__name__ = _DeadlineExceededError.__qualname__ = "DeadlineExceededError"

_NEVER_RAISED = ("is deprecated and will be removed in the next release: nothing raises it; "
                 "{}")

if not TYPE_CHECKING:  # at run time only: type checkers keep flagging unknown names
    __getattr__, _ = _lazy.lazy_attributes(__name__, globals(), {}, deprecated={
        "CallCancelledError": _lazy.Deprecated(
            __name__, "_CallCancelledError",
            "shoal.exceptions.CallCancelledError " + _NEVER_RAISED.format(
                "a cancelled call's outcome is 'cancelled', with its reason")),
        "DeadlineExceededError": _lazy.Deprecated(
            __name__, "_DeadlineExceededError",
            "shoal.exceptions.DeadlineExceededError " + _NEVER_RAISED.format(
                "at the run's deadline, running calls end 'timed_out'")),
    })
