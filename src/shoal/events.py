"""Typed events: everything the runtime does, as small immutable records.

Times are seconds since the outermost run started, on the event loop's clock (the virtual
clock of :mod:`shoal.testing` too): the runs and agents nested in a run (agent nodes, patterns,
an agent's model turns and tool phases) count from the same start, so the events of one run
and everything in it are on one clock, and an agent tree run alone counts from its own start.
:class:`RunStarted` carries the wall-clock time of that start (``epoch``, a nested run's too)
so a reader can place them in real time. A sink is any callable
taking an :class:`Event`; it runs on the event loop, so it must be quick (queue work elsewhere).
Events are only built when a run has at least one sink, which keeps runs without observers fast.

Model text as it is generated comes as :class:`TextDelta` events, only to sinks that ask for
them (a true ``wants_text`` attribute, see :func:`wants_text`): an agent streams its model's
reply only when such a sink listens, and sends a plain request otherwise.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
import os
import shlex
import signal
import stat
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, Any

from shoal._pydantic import to_jsonable_python
from shoal.exceptions import ConfigError, bounded_text
from shoal.merge import error_text, shown
from shoal.outcome import _strict, json_text, jsonable

__all__ = [
    "ApprovalDecided",
    "ApprovalRequested",
    "AgentFinished",
    "AgentStarted",
    "Event",
    "EventSink",
    "EventsDropped",
    "JsonlSink",
    "ModelResponded",
    "ModelRetrying",
    "ModelServerStarted",
    "ModelServerStarting",
    "NodeCancelled",
    "NodeFinished",
    "NodeHeld",
    "NodeQueued",
    "NodeRetrying",
    "NodeSkipped",
    "NodeStarted",
    "PlanCallParsed",
    "RunFinished",
    "RunStarted",
    "TextDelta",
    "ToolCallRejected",
    "MAX_EDIT_CHARS",
    "edited_args_text",
    "placement",
    "wants_text",
    "writing_fd",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of all events: which run, and when (seconds since the outermost run started).

    ``lineage`` says where in an agent tree the event happened, e.g.
    ``"lead/researcher#2/search#1"`` (the second ``researcher`` subagent the lead started, and
    that subagent's first ``search`` call); empty for plans run outside an agent.
    """

    run_id: str
    time: float
    lineage: str = ""

    @property
    def kind(self) -> str:
        """The event's type name, e.g. ``"NodeStarted"``."""
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-ready data, with its ``kind``; never raises.

        Its fields as they are, not ``asdict``'s deep copies: a ``str`` subclass (a model's
        text, a prompt, an error's message) whose copying fails made a sink writing the event
        out lose it; JSON takes such text by its characters, without calling its methods.
        """
        names = _FIELDS.get(type(self))
        if names is None:
            names = _FIELDS[type(self)] = tuple(f.name for f in fields(self))
        # strict JSON: a model may report a NaN cost or a token count too long to write out
        data: dict[str, Any] = _strict(to_jsonable_python(
            {name: getattr(self, name) for name in names}, fallback=_shown_in_json))
        data["kind"] = self.kind
        return data


#: The field names of each kind of event (for :meth:`Event.to_dict`).
_FIELDS: dict[type[Event], tuple[str, ...]] = {}


def _shown_in_json(value: Any) -> str:
    """What JSON cannot hold, as its repr; never raises (see :func:`shoal.merge.shown`)."""
    try:
        text = repr(value)
    except KeyboardInterrupt:
        raise
    except BaseException:
        return shown(value)  # the placeholder naming its type
    return text if isinstance(text, str) else shown(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStarted(Event):
    """A run began with ``nodes`` nodes.

    ``epoch`` is the wall-clock time its events' times count from: its own start, or the
    outermost run's (or agent tree's) for a nested run.
    """

    nodes: int
    epoch: float


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeQueued(Event):
    """A node's dependencies are done; it waits for a free slot."""

    node_id: str
    tool: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeStarted(Event):
    """An attempt of a node started on ``executor``."""

    node_id: str
    tool: str
    attempt: int
    executor: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRetrying(Event):
    """An attempt failed and another follows after ``delay`` seconds."""

    node_id: str
    tool: str
    attempt: int
    delay: float
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeFinished(Event):
    """A node ran and ended (``ok``, ``failed``, ``timed_out`` or ``cancelled``)."""

    node_id: str
    tool: str
    status: str
    attempts: int
    duration: float
    error: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSkipped(Event):
    """A node will not run because a node it needs did not succeed."""

    node_id: str
    tool: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeHeld(Event):
    """A node waits for the abandoned call ``by`` (timed out or cancelled) to really end.

    ``by``'s outcome is recorded, but its work still runs (a thread cannot be killed), and
    it shares a resource key with this node or one of them is exclusive: this node starts
    once that work ends, or ends with the run's cancel or deadline. ``reason`` says so.
    """

    node_id: str
    tool: str
    reason: str
    by: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeCancelled(Event):
    """A node that had not started was cancelled."""

    node_id: str
    tool: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFinished(Event):
    """The run ended; ``counts`` maps each status to how many nodes ended in it."""

    counts: dict[str, int]
    makespan: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentStarted(Event):
    """An agent (the lead or a subagent, see ``lineage``) began work on ``prompt``.

    Where its turn loop runs, as its :class:`~shoal.agents.result.AgentResult` says too:
    ``isolation`` is ``"inline"`` (in its parent's process), ``"process"`` (a process of its
    own) or ``"ray"`` (a Ray actor); ``pid`` is the id of the process that runs it (on its
    machine); ``where`` names the machine, as ``AgentResult.where`` does: the host name, or
    for a Ray agent its node's address and Ray node id (``"10.0.0.7 node 4f1c..."``).
    :meth:`placement` says it in a few words (``"process 4242"``). Events journaled by older
    versions of shoal have them empty (``""``, ``0``).
    """

    agent: str
    prompt: str
    depth: int
    where: str = ""
    pid: int = 0
    isolation: str = ""

    def placement(self) -> str:
        """Where the agent runs, in a few words (see :func:`placement`)."""
        return placement(self.isolation, self.pid, self.where)


def placement(isolation: str, pid: int, where: str) -> str:
    """Where an agent runs, in a few words, for people.

    ``"inline"`` (in its parent's process), ``"process 4242"``, ``"ray 10.0.0.7 node
    4f1c2a3b"`` (a Ray agent: its node, the node id cut to 8 characters); ``""`` when nothing
    is known (an event journaled by an older shoal).
    """
    if isolation == "ray":
        host, _, node = where.partition(" node ")
        return " ".join(part for part in ("ray", host, f"node {node[:8]}" if node else "")
                        if part)
    if isolation == "process":
        return f"process {pid}" if pid else "process"
    return isolation


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelResponded(Event):
    """A model turn ended: how much text, which tool calls, and the tokens it cost."""

    agent: str
    model: str
    turn: int
    text: str
    tool_calls: tuple[str, ...]
    input_tokens: int
    output_tokens: int
    duration: float
    #: US dollars, for a model with a known price (``None``: not known)
    cost: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelRetrying(Event):
    """A model request failed in a way worth another try, which follows after ``delay`` s.

    ``attempt`` is the try that failed and ``attempts`` how many are allowed; ``error`` says
    what went wrong (``cannot reach api.openai.com: connection refused``, ``HTTP 429: ...``).
    :meth:`describe` gives the line shoal's command line shows.
    """

    model: str
    attempt: int
    attempts: int
    delay: float
    error: str

    def describe(self) -> str:
        """``retrying (3/8) in 4 s: <error>``."""
        wait = f"{self.delay:.1f}" if self.delay < 10 else f"{self.delay:.0f}"
        return f"retrying ({self.attempt + 1}/{self.attempts}) in {wait} s: {self.error}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelServerStarting(Event):
    """A model began starting a server of its own (the local model); requests wait for it."""

    model: str
    detail: str = "starting local model server"


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelServerStarted(Event):
    """The model's server is up after ``duration`` seconds, or, with an ``error``, is not.

    ``cancelled``: its start was given up because the run asking for it was cancelled (a
    Ctrl-C while the model loads); ``error`` then says so. Not a failure of the server.
    """

    model: str
    duration: float
    error: str = ""
    cancelled: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TextDelta(Event):
    """A piece of an agent's model reply, as the model generates it.

    ``lineage`` names the agent (``lead/researcher#2``); ``turn`` is its model turn (1 for
    the first). The pieces of one turn, joined, are the reply's text. When a request is
    retried (a :class:`ModelRetrying` of the same lineage comes first) the text of that turn
    starts again from the beginning. Sent only to sinks that ask for text (see
    :func:`wants_text`).
    """

    agent: str
    turn: int
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class EventsDropped(Event):
    """An event stream's consumer fell behind and ``count`` events were left out here.

    ``kinds`` counts them by kind (``{"TextDelta": 120, "NodeStarted": 3}``). Only progress
    events are ever left out (see :class:`shoal.EventStream`); the events that say how each
    agent, node and run ended never are.
    """

    count: int
    kinds: dict[str, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCallRejected(Event):
    """A tool call the model asked for did not run (malformed, unknown, over a budget).

    The model gets ``error`` as the call's result.
    """

    agent: str
    call_id: str
    tool: str
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanCallParsed(Event):
    """A planner's model has written one call of its plan (``mode="plan"``).

    Sent the moment the call's line is read from the streaming reply, before the call is
    checked or started. ``run_id`` and ``time`` are those of the plan's own run, the clock of
    its calls' :class:`NodeStarted` and :class:`NodeFinished` events and outcomes, so the gap
    between a call being written and it starting can be read off directly. ``node_id`` is the
    call's number in the plan.
    """

    agent: str
    node_id: str
    tool: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentFinished(Event):
    """An agent ended, with a ``status`` and a short preview of its ``output``.

    ``status`` is ``ok``, ``failed``, ``cancelled``, ``max_turns`` or ``budget_exceeded``.
    ``cut_off`` (as :attr:`AgentResult.cut_off <shoal.agents.result.AgentResult.cut_off>`)
    says an ``ok`` answer was cut short at the model's output cap, and how to raise it.
    """

    agent: str
    status: str
    output: str
    turns: int
    total_tokens: int
    duration: float
    error: str = ""
    cut_off: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ApprovalRequested(Event):
    """A node needs approval (``reason`` says why) and waits for its approver's decision."""

    node_id: str
    tool: str
    request_id: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ApprovalDecided(Event):
    """A decision on a node's request.

    ``verdict`` is ``approve``, ``deny`` or ``edit``; ``by`` says who decided (an approver's
    name, ``timeout``, ``budget``, ``no approver``, ``journal``). ``edited_args`` is, for an
    edit, the arguments the node was approved to run with as JSON text (at most
    :data:`MAX_EDIT_CHARS` characters, see :func:`edited_args_text`); else empty.
    """

    node_id: str
    tool: str
    verdict: str
    reason: str
    by: str
    edited_args: str = ""


#: The most characters of an approver's edited arguments an event or a model's note shows.
MAX_EDIT_CHARS = 2_000


def edited_args_text(args: Any) -> str:
    r"""Arguments an approver's edit made a call run with, as JSON text a person can read.

    Quotes and control characters escaped, cut to :data:`MAX_EDIT_CHARS` (saying how much
    was left out): what :class:`ApprovalDecided` carries and an edited call's model reads.
    A lone surrogate is written out as the text ``\udcff`` (:func:`~shoal.outcome.json_text`):
    JSON's escape of a surrogate pair's two code points read as the character they pair to.
    """
    return bounded_text(json_text(jsonable(args), indent=None), MAX_EDIT_CHARS)


EventSink = Callable[[Event], None]

_log = logging.getLogger("shoal")


#: A sink's failures logged in full (with the traceback) in one run; after these, only
#: its 10th, 100th, 1000th ... failure is said, in one line (see :func:`deliver`).
FAILURES_LOGGED = 3


def deliver(sink: EventSink, event: Event, what: str = "event sink",
            failures: dict[int, int] | None = None) -> None:
    """Give ``event`` to ``sink``; whatever the sink raises is logged, never passed on.

    An observer's bug must not break what it observes. That holds for everything a sink can
    raise but Ctrl-C (``KeyboardInterrupt``, which still stops the run): its ``sys.exit()``,
    and a ``CancelledError`` of its own too (a cancelled future's ``result()`` raises one):
    a sink is called, never awaited, so no cancellation of the run comes through it, and
    passed on, it broke the run that was recording an outcome (its result lost).

    A sink runs outside any task: ``asyncio.current_task()`` is ``None`` in it, so it cannot
    cancel the task that emitted the event (``asyncio.current_task().cancel()`` in a sink
    fails, and is logged as any failure). That task is the run's own (its driver, an agent's
    turn, a call's): cancelled at its next ``await``, it ended the whole run ``cancelled``,
    every call with it, and the caller got a ``CancelledError`` instead of the result.

    ``failures``: the failures so far of the sinks of one run (by ``id``; the run holds its
    sinks, so ids stay theirs). With it, a sink failing on every event has its first
    :data:`FAILURES_LOGGED` failures logged with their traceback, then only its 10th, 100th
    ... in one line: a traceback per event flooded the log with 24 lines per event and made
    a run of 5,000 calls ten times slower.
    """
    loop = _running_loop()
    # none: not on a loop, or between tasks (a loop's callback)
    task = asyncio.current_task(loop) if loop is not None and _CAN_LEAVE else None
    if task is not None:
        _leave_task(task.get_loop(), task)  # (see above) entered again whatever the sink does
    try:
        answer: object = sink(event)  # type: ignore[func-returns-value]  # a sink may lie
        if answer is not None and inspect.isawaitable(answer):  # nothing will await it
            if inspect.iscoroutine(answer):
                answer.close()  # (not left to warn that it was never awaited)
            raise TypeError(f"it returned {type(answer).__name__}, to be awaited: a sink is "
                            "called, never awaited; handle the event in the call")
    except KeyboardInterrupt as exc:
        pass_ctrl_c(exc)
    except BaseException as exc:
        _failed(sink, event, what, failures, exc)
    finally:
        if task is not None:
            _enter_task(task.get_loop(), task)


def pass_ctrl_c(exc: KeyboardInterrupt) -> None:
    """Hand a Ctrl-C that an observer raised (a sink, a span processor) to Ctrl-C's handler.

    Raised out of the code that was recording an event, it broke off that code (an outcome
    half recorded) and left the event loop at once, its tasks behind, a traceback printed
    for each. On the main thread, where ``asyncio.run`` and ``run_sync`` install theirs, the
    handler is called as a Ctrl-C would call it: the run's task is cancelled, every call ends
    with an outcome, and the caller gets ``KeyboardInterrupt`` once that is done. Elsewhere,
    or with no handler of that kind (Python's own raises it; an ignored ``SIGINT`` would lose
    it), it is raised on as it came.
    """
    handler = signal.getsignal(signal.SIGINT)
    if (threading.current_thread() is not threading.main_thread() or not callable(handler)
            or handler is signal.default_int_handler):
        raise exc
    loop = _running_loop()
    if loop is not None and loop in _INTERRUPTED:  # handed once: the run is stopping already
        _log.warning("an observer raised KeyboardInterrupt again while the run stops; ignored")
        return
    if loop is not None:
        _INTERRUPTED.add(loop)
    signal.raise_signal(signal.SIGINT)  # its handler runs now (it may raise: passed on)


#: The loops an observer's Ctrl-C was handed on for: a second one there is no second Ctrl-C
#: (which asyncio's handler takes as "stop now"), only the same observer again.
_INTERRUPTED: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def _failed(sink: EventSink, event: Event, what: str, failures: dict[int, int] | None,
            exc: BaseException) -> None:
    """Log what ``sink`` raised on ``event`` (see :func:`deliver`), in the except clause."""
    # a sink that reached for the task it runs on (to cancel it, say) met None: say why
    why = (" (a sink runs outside any task: asyncio.current_task() is None in it, so it "
           "cannot cancel the run it observes)"
           if isinstance(exc, AttributeError) and exc.obj is None else "")
    if failures is None:
        _log.exception("%s %s failed on %s; continuing%s", what, shown(sink), event.kind, why)
        return
    n = failures[id(sink)] = failures.get(id(sink), 0) + 1
    if n <= FAILURES_LOGGED:
        _log.exception("%s %s failed on %s; continuing%s%s", what, shown(sink), event.kind,
                       why, "" if n < FAILURES_LOGGED else " (from here on, only every "
                       "10th, 100th, 1000th ... failure is logged)")
    elif _power_of_ten(n):
        _log.error("%s %s has failed %d times in this run, the last on %s: %s", what,
                   shown(sink), n, event.kind, error_text(exc))


# the running loop, or None (a sink may be called from a thread); and how a task is made the
# loop's current one and not: asyncio's own (3.11 to 3.13), used as its eager tasks use them.
# Not public: a Python without them calls sinks inside the task, as before.
_running_loop = asyncio.events._get_running_loop
_CAN_LEAVE = hasattr(asyncio.tasks, "_enter_task") and hasattr(asyncio.tasks, "_leave_task")


def _unavailable(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
    """Stands in for asyncio's helper where it has none (never called: see _CAN_LEAVE)."""


_enter_task = getattr(asyncio.tasks, "_enter_task", _unavailable)
_leave_task = getattr(asyncio.tasks, "_leave_task", _unavailable)


def _power_of_ten(n: int) -> bool:
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1


def wants_text(sink: EventSink) -> bool:
    """Whether ``sink`` asked for :class:`TextDelta` events.

    A sink asks by a true ``wants_text`` attribute; a bound method asks when its object has
    one. Other sinks never see a :class:`TextDelta`, and a run none of whose sinks asks does
    not stream its models' replies.
    """
    try:
        if getattr(sink, "wants_text", False):
            return True
        return bool(getattr(getattr(sink, "__self__", None), "wants_text", False))
    except Exception:  # a sink's own __getattr__ (or flag) that fails: it asked for nothing
        return False


def writing_fd(path: str, *, append: bool = True) -> int:
    """``path`` opened to write (appended to, else emptied; made if missing): a FIFO if read.

    Opened without waiting (``O_NONBLOCK``), then made blocking again: a FIFO that no process
    reads is ``ENXIO`` at once, raised as an :class:`OSError` saying so, not a wait for a
    reader that may never come (see :class:`JsonlSink`; ``shoal show RUN --html FIFO`` waited
    so, for ever).
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    nonblock = getattr(os, "O_NONBLOCK", 0)  # (none on Windows, whose FIFOs are not files)
    try:
        fd = os.open(path, flags | nonblock, 0o666)
    except OSError as exc:
        if exc.errno == errno.ENXIO and _is_fifo(path):
            raise OSError(exc.errno, f"it is a FIFO (named pipe) that no process is reading; "
                          f"start its reader first (such as: cat {shlex.quote(path)}), then "
                          f"{'the run' if append else 'the command again'}",
                          path) from None
        raise
    if nonblock:
        os.set_blocking(fd, True)  # written as a file is: a full pipe waits for its reader
    return fd


def _is_fifo(path: str) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


class JsonlSink:
    """Writes each event as one JSON line to a file (opened on creation, closed by ``close``).

    A file that stops taking lines (a full disk, a file system gone read-only) does not fail
    the run: the first failure is logged once as a warning on the ``shoal`` logger, saying
    why; :attr:`error` keeps that message (:attr:`reason` the system's reason alone) and
    :attr:`lost` counts the events not written.

    A FIFO (named pipe) is written as a reader reads it: start the reader first. With no
    process reading it, opening one for writing waits until one does (forever, with none
    coming: ``shoal run --events FIFO`` hung before the run began, saying nothing); it now
    raises :class:`OSError` at once, naming the path and what to do. A reader that stops
    reading without closing the pipe holds the run once the pipe is full, as for any pipe;
    one that closes it ends the file's events as a full disk does (logged once).
    """

    def __init__(self, path: str | Path) -> None:
        if not isinstance(path, str | os.PathLike):
            raise ConfigError(f"JsonlSink takes a file path, got {type(path).__name__} "
                              f"{shown(path)}")
        self.path = str(path)
        self.error = ""  # why events stopped being written ('' while all is well)
        self.reason = ""  # the system's word for it alone ("No space left on device")
        self.lost = 0
        # held open for the run's lifetime; closed by close(). Line-buffered: a file being
        # followed (tail -f) is current, and a killed run loses no event it had written.
        try:
            self._file: IO[str] = open(writing_fd(self.path), "a",  # noqa: SIM115
                                       encoding="utf-8", buffering=1)
        except ValueError as exc:  # a NUL, a lone surrogate: no file system can name it
            raise ConfigError(f"JsonlSink cannot open {shown(path)}: {exc}") from None

    def __call__(self, event: Event) -> None:
        """Append ``event`` as one line."""
        if self.error:
            self.lost += 1
            return
        try:
            self._file.write(json_text(event.to_dict(), indent=None) + "\n")
        except OSError as exc:
            self.lost += 1
            self._failed(exc)
        except ValueError:  # closed (by close(), say, while a runtime still feeds it)
            if not self._file.closed:
                raise
            self.lost += 1
            self._failed(OSError("the file was closed"))

    def close(self) -> None:
        """Flush and close the file."""
        try:
            self._file.close()
        except OSError as exc:  # the last line could not be flushed: closed all the same
            self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        if self.error:
            return
        self.reason = str(exc.strerror or exc)
        self.error = (f"cannot write the events file {self.path!r}: {self.reason}; "
                      "the events from here on are not in it")
        _log.warning("%s", self.error)
