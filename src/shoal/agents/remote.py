"""Agents in their own process: ``Agent(isolation="process")``.

An agent whose ``isolation`` is ``"process"`` runs its whole turn loop (its model requests, its
tools, and its own subagents unless they say otherwise) in a process of its own, with its own
model client, an environment scrubbed as process workers' are (:func:`~shoal.executors.process.
worker_env`: provider keys pass by name only, ``Agent(env=[...])``) and its OS limits
(``Agent(limits=...)``). What the tree shares stays in the parent, in the root's
:class:`~shoal.agents.context.TreeContext`, and the child reaches it through a small RPC over
one socket:

* **budgets**: each model request, each response's usage and each subagent start is charged
  by the root's tracker (``start_request``; ``reserve``, which holds the request's output cap
  of ``Budget(tokens=)`` with every request of the tree, waiting while nothing is left
  unheld, and ``release``, one way, which gives it back; ``add_usage``, ``take_subagent``),
  and so is what a reply streamed so far (``streamed``, one way), so limits stay exact across
  processes and nothing is spent twice;
* **model gates**: before each request the child takes a slot of the root's gate for its model
  (``gate_enter``; ``gate_exit`` gives it back), and a ``Retry-After`` it meets closes the root's
  gate for the whole tree (``gate_pause``): one rate-limit gate per model across the tree;
* **events** go one way to the root's sinks, lineage intact (``event``);
* **approvals** are asked of the root's approver through its desk (``review``, whose budget,
  rate and batches count them; ``withdraw``); the child's own runtime binds
  each decision to the call's arguments and journals it, as any runtime does;
* **the board**: the tree's board stays in the root; the child's tools read it and commit
  their writes to it (``board_read``, ``board_commit_call``...; see
  :func:`shoal.agents._process.remote_board`). With a durable journal the root journals each
  call's commit in the same step as it applies it, keyed by the call (see
  :meth:`TreeServer.commit_call`): a kill at any moment leaves the board and the journal
  agreeing, and a call that runs again (after a resume, or in a retried agent) finds its
  commit and does not apply it twice;
* **journal**: with a SQLite journal the child's runtime opens the same file, so its model
  turns and tool phases are journaled runs of the root's journal under the child's lineage,
  and a resumed tree replays them in the process that runs the agent again. With another
  durable journal (one without a file, such as a Ray agent's, which reaches the root's
  through its parent), the child journals through its parent (``store``: see
  :class:`~shoal.agents._process.ParentStore`), and so on up the chain to the root: every
  agent of the tree, however nested, journals in the root's journal. With the in-memory
  journal the child keeps its journal in memory and sends each step it finishes on to its
  parent (``journal``, one way: see :class:`~shoal.agents._process.ParentMirror`), which
  keeps it for the tree's journal (:class:`Mirrored`), so a child run again after its
  process died (a retried agent plan node) replays them, as an inline agent does;
* **cancellation**: the parent sends ``cancel`` and, if the child has not ended within
  :data:`CANCEL_GRACE` seconds, kills its process group; a child whose socket closes (the
  parent died) kills its group and exits.

The child is forked from the tree's template process where it can be (Linux), ready in
milliseconds, else started as ``python -m shoal.agents._process FD`` (see
:mod:`shoal.agents._launch`); either way it runs the same program with the same environment,
session, limits and messages.

A child that dies (``SIGKILL``, a segfault, ``os._exit``) gives its parent's call an
:class:`~shoal.exceptions.AgentError` naming the cause (``killed by signal SIGKILL``); its
siblings go on.

The wire: each message is an 8-byte big-endian length and a cloudpickled tuple. The parent
sends its ``sys.path`` first (plain pickle, so the child can import what the agent's pickle
names), then ``("start", StartSpec)``, then ``("reply", id, ok, value)`` and ``("cancel",
reason, breach)`` (``breach``: the tree's :class:`~shoal.exceptions.BudgetExceeded`, or
``None`` when a person or a timeout cancelled the agent). The child sends ``("call", id,
op, args)``, ``("event", event)``, ``("gate_exit", name)``, ``("gate_pause", name,
seconds)``, ``("withdraw", request_ids)`` (approval requests it no longer needs),
``("streamed", lineage, tokens)`` (the tokens a reply streaming there surely spent so far;
``0``: it ended without usage), ``("release", lineage)`` (the output tokens a request held
of ``Budget(tokens=)``, given back: it ended without usage),
``("journal", [(run_id, pickled records), ...])`` (the steps it finished, with the
in-memory journal) and last
``("done", result)`` (or ``("error", text)`` when it cannot even load the agent's
definition, ``("unstartable", text)`` when its limits leave it no event loop, or its model
cannot be made there). The parent side
(:class:`TreeServer`) only needs a :class:`Channel`, and the child side
(:mod:`shoal.agents._process`) only a connected socket, so another transport plugs in there:
for Ray, an actor whose socket connects back to a listener of the parent over TCP.
What the child sends is loaded with the restricted loader of
:mod:`shoal.executors.results`, as a tool worker's replies are: the agent's process runs tools
and reads what models write, so it must not be able to run code in the parent (which holds
the keys it was not given). Its results hold allowed types only (plain data, dataclasses,
pydantic models, exceptions...); anything else is refused (``allow_result_types`` widens
it). A refusal in the agent's result costs only its part (a call's value, a message, a plan, a
board key, the usage, the answer, the end error: see :func:`without_refused`); in any other
message, it fails the agent with a
:class:`~shoal.exceptions.SerializationError` naming it.
Bytes that are no message (a tool of the agent's can write to its socket: a length past
:data:`MAX_MESSAGE`, a message of no known kind or whose parts do not fit it) fail the agent
with a :class:`~shoal.exceptions.SerializationError` saying what came (see :func:`checked`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections import Counter, deque
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from shoal.agents._cutshort import CutShort, cause
from shoal.events import AgentFinished, AgentStarted, Event
from shoal.exceptions import (
    AgentError,
    BudgetExceeded,
    ConfigError,
    SerializationError,
    ShoalError,
    describe_exception,
)
from shoal.executors._reaper import kill_tree
from shoal.executors._shipping import dumps
from shoal.executors._worker import AGENT_SOCKET_ENDED_EXIT
from shoal.executors.process import _Process, _ref_of, describe_exit, process_state, worker_env
from shoal.executors.results import (
    Refused,
    allowed_result_types,
    load_result,
    load_salvaging,
    refusal_in,
)
from shoal.limits import parse_process_limits
from shoal.merge import shown
from shoal.models.base import Usage
from shoal.models.retry import _plain
from shoal.scheduler import driver
from shoal.store.memory import DEFAULT_MAX_RUNS

if TYPE_CHECKING:
    from shoal.agents._launch import AgentLauncher
    from shoal.agents.agent import Agent
    from shoal.agents.budget import Budget
    from shoal.agents.context import TreeContext
    from shoal.agents.result import AgentResult, AgentStatus
    from shoal.agents.run import AgentRun
    from shoal.board import Board
    from shoal.executors._process_ref import ProcessRef
    from shoal.limits import ProcessLimits
    from shoal.models.base import Model
    from shoal.models.retry import ModelRetry
    from shoal.runtime import Runtime
    from shoal.store.base import EffectRecord, Store
    from shoal.store.claims import RunClaim

__all__ = ["CANCEL_GRACE", "PARENT_EVENTS", "PARENT_MEMORY", "PARENT_MEMORY_EVENTS",
           "PARENT_STORE", "STOPPED_CHECK", "STOPPED_GRACE", "STORE_METHODS", "Channel",
           "Mirrored", "ProcessChannel", "StartSpec", "StopWatch", "TreeServer", "Watched",
           "load_message", "load_mirrored", "routed_store",
           "run_elsewhere", "start_spec", "without_refused"]

#: Seconds a cancelled agent process gets to record its end before it is killed.
CANCEL_GRACE = 0.5
#: How long a process whose socket ended may take to exit before it is killed (its error then
#: says so, rather than name the SIGKILL that is ours).
_ENDING_WAIT = 2.0
#: Seconds an agent process may stay stopped (``SIGSTOP``, ``SIGTSTP``) before its parent
#: kills it and fails its call: stopped, it answers nothing, and with no deadline its tree
#: waited for good. Only its state counts, never how long it takes to answer, so an agent
#: busy for hours is never ended for it.
STOPPED_GRACE = 30.0
#: Seconds between two checks of the state of a tree's agent processes (one read of
#: ``/proc`` each, by one task for all of them).
STOPPED_CHECK = 1.0
#: The ``StartSpec.store`` of an agent whose journal is its parent's (see
#: :class:`~shoal.agents._process.ParentStore`), without and with the run's events.
PARENT_STORE, PARENT_EVENTS = "parent", "parent+events"
#: The ``StartSpec.store`` of an agent whose parent journals in memory: it keeps its journal
#: in memory and mirrors every write to its parent's (see
#: :class:`~shoal.agents._process.ParentMirror`), without and with the run's events.
PARENT_MEMORY, PARENT_MEMORY_EVENTS = "parent-memory", "parent-memory+events"
#: The store methods a remote agent may call on its parent's store (for runs of its own
#: subtree only; listing runs and cancelling them are not among them).
STORE_METHODS = frozenset({
    "write", "get_run", "outcomes", "attempts", "events", "effects", "request_approval",
    "decide", "use_decision", "approvals", "take_cancel_requests", "heartbeat",
})

HEADER = struct.Struct(">Q")
#: The most bytes one message from an agent may announce: more is garbage on its socket (a
#: tool writing to it), whose announced length would be waited for until the agent ended.
MAX_MESSAGE = 1 << 32
#: Seconds a message's body may take to come once its length has, plus one per
#: :data:`SLOWEST_RATE` bytes of it: an agent writes each message whole, so a body that does
#: not come is part of one written to its socket by something else (a tool), and its length
#: would be waited for until the agent ended (never, if it waits for a reply meanwhile).
MESSAGE_WAIT = 30.0
SLOWEST_RATE = 1 << 20

log = logging.getLogger("shoal")


@dataclass(frozen=True)
class StartSpec:
    """Everything an agent process needs to run its agent as part of the tree."""

    agent: Agent[Any]
    prompt: str
    lineage: str
    depth: int
    run_id: str
    budget: Budget
    #: the root's origin (loop time, epoch seconds): loop clocks are ``time.monotonic``, one
    #: clock for the machine's processes, so the child's event times agree with the tree's
    origin: tuple[float, float]
    observed: bool
    wants_text: bool
    resuming: bool
    force: bool
    override: Model | None
    retry: ModelRetry | None
    #: the SQLite journal's path, "memory" (the tree has no journal), :data:`PARENT_STORE` /
    #: :data:`PARENT_EVENTS` (the agent journals through its parent), or
    #: :data:`PARENT_MEMORY` / :data:`PARENT_MEMORY_EVENTS` (in memory, mirrored to its parent)
    store: str
    runtime: dict[str, Any] = field(default_factory=dict)
    approver: bool = False
    limits: ProcessLimits | None = None
    #: the rules of the tree's board, which the root keeps (``None``: the tree has none)
    board: dict[str, Any] | None = None
    #: what the root's restricted loader allows besides plain data (``allow_result_types``)
    allowed: tuple[Any, ...] = ()
    #: the calls in doubt settled on resume within the agent's subtree (see agents.settle)
    settling: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = field(default_factory=dict)


class Channel(ABC):
    """The parent's end of one remote agent's messages (a process's socket; Ray's later)."""

    @abstractmethod
    def send(self, message: tuple[Any, ...]) -> None:
        """Queue one message to the agent (never blocks)."""

    @abstractmethod
    async def receive(self) -> tuple[Any, ...] | None:
        """The agent's next message, or ``None`` once it is gone."""

    @abstractmethod
    def kill(self) -> None:
        """End the agent now, and everything it started (it gets no say)."""

    @abstractmethod
    async def ended(self) -> str:
        """Wait until the agent's process is gone and say how it ended."""

    @abstractmethod
    async def close(self) -> None:
        """End the agent and everything it started; reap it."""


class ProcessChannel(Channel):
    """A process running :func:`shoal.agents._process.main` on a socket, and that socket.

    Forked from the tree's template where it can be, else ``python -m shoal.agents._process
    FD`` (see :mod:`shoal.agents._launch`).
    """

    def __init__(self, proc: _Process, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.proc = proc
        #: how the process is signalled: never by its bare pid, which another process may
        #: hold once this one has been reaped
        self.ref = _ref_of(proc)
        self.lineage = ""  # the agent's, for messages
        #: why its parent killed it, when it was found stopped (see :class:`StopWatch`)
        self.stalled: str | None = None
        self._reader = reader
        self._writer = writer

    @property
    def pid(self) -> int:
        """The agent process's id."""
        return self.proc.pid

    @classmethod
    async def start(cls, spec: StartSpec, env_names: tuple[str, ...],
                    launcher: AgentLauncher | None = None) -> ProcessChannel:
        """Start the agent's process and send it the import path and its spec.

        ``launcher``: the tree's (forks it from a template where it can); else a fresh
        interpreter.
        """
        from shoal.agents._launch import AgentLauncher

        launcher = launcher or AgentLauncher(fork=False)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = await launcher.launch(theirs.fileno(), worker_env(env_names))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        try:
            reader, writer = await asyncio.open_unix_connection(sock=ours)
        except BaseException:
            ours.close()
            ref = _ref_of(proc)
            kill_tree(ref)
            await asyncio.shield(proc.wait())
            _let_go(proc, ref)
            raise
        channel = cls(proc, reader, writer)
        channel.lineage = spec.lineage
        channel._write(pickle.dumps(list(sys.path)))
        try:
            with _by_value(_unimportable(spec.agent)):
                channel._write(dumps(("start", spec), f"agent {spec.lineage!r} (to run it in "
                                     "a process of its own, its definition is pickled)"))
        except BaseException:
            await channel.close()
            raise
        return channel

    def _write(self, body: bytes) -> None:
        self._writer.write(HEADER.pack(len(body)) + body)

    def send(self, message: tuple[Any, ...]) -> None:
        """Queue one message (a closed socket drops it: the child is gone)."""
        if not self._writer.is_closing():
            self._write(dumps(message, "a message to an agent process"))

    async def receive(self) -> tuple[Any, ...] | None:
        """The next message, or ``None`` at the end of the socket."""
        what = f"a message from the process running agent {self.lineage}"
        body = await read_body(self._reader, what)
        # restricted: an agent process runs tools, and must not run code here (see the
        # module docstring)
        return None if body is None else checked(load_message(body, what), what)

    def kill(self) -> None:
        """SIGKILL the process and every descendant (unless it has been reaped)."""
        if self.proc.returncode is None:
            kill_tree(self.ref)

    async def ended(self) -> str:
        """How the process ended (it closed its socket: it is gone or going)."""
        if self.stalled is not None:  # killed here for it: the SIGKILL is not the cause
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 2.0)
            return self.stalled
        try:
            code = await asyncio.wait_for(self.proc.wait(), _ENDING_WAIT)
        except TimeoutError:  # closed its socket yet lingers: not ours to wait for
            kill_tree(self.ref)
            await self.proc.wait()
            return getattr(self.proc, "lost", None) or (
                f"its socket to shoal ended but the process did not (a tool shut down or "
                f"closed the socket, or the process hung as it exited): it was killed after "
                f"{_ENDING_WAIT:g} s")
        if code == AGENT_SOCKET_ENDED_EXIT:
            return (f"exit code {code}: its socket to shoal ended while shoal still read it, "
                    "so a tool shut it down or closed it (socket.shutdown, os.close or "
                    "os.closerange on a descriptor the tool did not open); the process ended "
                    "what its tools had started, and exited")
        return getattr(self.proc, "lost", None) or describe_exit(code)

    async def close(self) -> None:
        """Kill the process group and every descendant, then reap the process."""
        if self.proc.returncode is None:
            self.kill()
        self._writer.close()
        await asyncio.shield(self.proc.wait())
        _let_go(self.proc, self.ref)


async def read_body(reader: asyncio.StreamReader, what: str) -> bytes | None:
    """The next message's pickled body on ``reader``, or ``None`` once it ends.

    Raises :class:`~shoal.exceptions.SerializationError` for a length past
    :data:`MAX_MESSAGE` (garbage where a message should start), and :class:`CutShort` (one)
    for a body shorter than its length: the socket ended before all of it came, or nothing
    more came for :data:`MESSAGE_WAIT` seconds, or not all of it within that plus a second
    per :data:`SLOWEST_RATE` bytes.
    """
    try:
        header = await reader.readexactly(HEADER.size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    size = HEADER.unpack(header)[0]
    if size > MAX_MESSAGE:
        raise SerializationError(
            f"{what} announced {size:,} bytes, more than any message may hold "
            f"({MAX_MESSAGE:,}): something wrote other bytes to its socket ({header!r})")
    buffered = getattr(reader, "_buffer", None)  # (CPython's StreamReader keeps one)
    if buffered is not None and len(buffered) >= size:  # here whole: no timer to arm
        return await reader.readexactly(size)
    return await _read_slowly(reader, what, size)


async def _read_slowly(reader: asyncio.StreamReader, what: str, size: int) -> bytes:
    """A body of ``size`` bytes that is still coming: as it comes, within its two waits.

    A sender stopped in the middle (or a tool that wrote a part) is found after
    :data:`MESSAGE_WAIT` s without a byte, whatever the length it announced: the whole
    message's wait (a second more per :data:`SLOWEST_RATE` bytes) let a 16 MiB length that
    never came hold its agent 16 s longer.
    """
    loop = asyncio.get_running_loop()
    wait = MESSAGE_WAIT + size / SLOWEST_RATE
    deadline = loop.time() + wait
    parts: list[bytes] = []
    came = 0
    try:
        while came < size:
            left = deadline - loop.time()
            async with asyncio.timeout(min(MESSAGE_WAIT, left)):
                part = await reader.read(size - came)
            if not part:
                raise CutShort(what, size, came, f"its socket ended after {came:,}", ended=True)
            parts.append(part)
            came += len(part)
    except ConnectionError as exc:
        raise CutShort(what, size, came, f"its socket failed before all came ({exc})",
                       ended=True) from None
    except TimeoutError:
        why = (f"not all came within {wait:g} s" if loop.time() >= deadline
               else f"not all came within {MESSAGE_WAIT:g} s of its last byte ({came:,} came)")
        raise CutShort(what, size, came, why, ended=False) from None
    return parts[0] if len(parts) == 1 else b"".join(parts)


#: The shape of each message an agent sends (see the module docstring): its length, and a
#: check of its parts after the kind.
_SHAPES: dict[str, tuple[int, Any]] = {
    "done": (2, lambda m: _is_result(m[1])),
    "error": (2, lambda m: isinstance(m[1], str)),
    "unstartable": (2, lambda m: isinstance(m[1], str)),
    "event": (2, lambda m: isinstance(m[1], Event)),
    "call": (4, lambda m: type(m[1]) is int and isinstance(m[2], str)
             and isinstance(m[3], tuple)),
    "refused": (4, lambda m: True),  # made by load_message
    "dropped": (2, lambda m: True),  # made by load_message
    "gate_exit": (2, lambda m: isinstance(m[1], str)),
    "gate_pause": (3, lambda m: isinstance(m[1], str) and type(m[2]) in (int, float)
                   and 0 <= m[2] < float("inf")),
    "withdraw": (2, lambda m: isinstance(m[1], list | tuple)),
    "streamed": (3, lambda m: isinstance(m[1], str) and type(m[2]) is int and m[2] >= 0),
    "release": (2, lambda m: isinstance(m[1], str)),
    "journal": (2, lambda m: True),  # checked as it is kept (see TreeServer.mirror)
    "here": (3, lambda m: True),  # a Ray actor's first (checked by its channel)
}


def _is_result(value: Any) -> bool:
    from shoal.agents.result import AgentResult

    return isinstance(value, AgentResult)


def checked(message: Any, what: str) -> tuple[Any, ...]:
    """``message`` if it has the shape of a message an agent sends, else raise saying so.

    A tool of the agent's can write to its socket: a message of no known kind, or whose
    parts do not fit its kind, is a :class:`~shoal.exceptions.SerializationError` naming it
    (the agent is failed), never a ``TypeError`` deep in the parent.
    """
    if isinstance(message, tuple) and message and isinstance(message[0], str):
        shape = _SHAPES.get(message[0])
        if shape is not None and len(message) == shape[0] and shape[1](message):
            return message
    raise SerializationError(f"{what} is malformed: {_cut(shown(message))}")


def _cut(text: str) -> str:
    return text if len(text) <= 200 else text[:197] + "..."


def load_message(body: bytes, what: str) -> Any:
    """A message from an agent's process or Ray actor, loaded with the restricted loader.

    The agent's result (``done``), when the loader refuses something in it, is loaded again
    with each refused thing left out (see :func:`without_refused`): a tool value of a class
    this process does not allow costs only its own call, not the whole agent. Checked here,
    by this process's own rules, rather than in the agent's process, whose rules may differ
    (it may have imported modules this one has not); and only once the load has failed, so a
    result that loads costs nothing more. A request (``call``) this loader refuses becomes
    ``("refused", id, op, why)``, which the agent is answered with as an error; an event it
    refuses, ``("dropped", "event")`` (left out, logged); any other message it refuses raises,
    as :func:`~shoal.executors.results.load_result` does.
    """
    try:
        return load_result(body, what)
    except SerializationError as refused:
        try:
            message = load_salvaging(body)
        except Exception:
            raise refused from None
        if (isinstance(message, tuple) and len(message) == 4 and message[0] == "call"
                and type(message[1]) is int and type(message[2]) is str):
            # a request this process refuses (the agent's own check let it by: its rules
            # may differ): refused to the asking call, not to the whole agent
            return ("refused", message[1], message[2], str(refused))
        if isinstance(message, tuple) and len(message) == 2 and message[0] == "event":
            # an event holding what this process refuses (a tool call's name of a str
            # subclass): that event is left out, logged; the agent goes on
            log.warning("an event of %s was left out: %s", what, refused)
            return ("dropped", message[0])
        if not (isinstance(message, tuple) and len(message) == 2 and message[0] == "done"):
            raise refused from None
        from shoal.agents.result import AgentResult

        result = message[1]
        if not isinstance(result, AgentResult):
            raise refused from None
        try:
            kept = without_refused(result)
        except RecursionError:  # a result among its own subagents: see _own_subtree
            raise refused from None
        if refusal_in(kept) is not None:
            raise refused from None
        return ("done", kept)


def without_refused(result: AgentResult[Any]) -> AgentResult[Any]:
    """``result`` (as :func:`~shoal.executors.results.load_salvaging` loads it), less the refused.

    Each part that holds something refused is replaced, saying why with a
    :class:`~shoal.exceptions.SerializationError`'s text that names the part; the rest is kept:

    * a call whose value holds it is ``failed`` with such an error (its model was given the
      value as usual); a call whose record holds it elsewhere (the model's call, the message
      its model read) keeps its plain parts, the rest replaced by the error's text;
    * a message of the conversation (a model's reply of a class or with fields of its own,
      a tool's text of a ``str`` subclass) is replaced by one of its role whose text is the
      error's, its tool calls kept as plain :class:`~shoal.models.base.ToolCall` s;
    * the answer: the agent ``failed`` with such an error; the end error: such an error in
      its place;
    * a plan's text: the error's text; a board key's value: the error itself; a conflict:
      left out; the usage: its plain counts; any other field: its default;
    * the same in each agent below (one that is refused whole is a ``failed`` result).
    """
    from shoal.agents.result import AgentResult

    lineage = _text(getattr(result, "lineage", "")) or "?"
    changes: dict[str, Any] = {}
    for item in fields(AgentResult):
        value = getattr(result, item.name, None)
        if item.name in _SCALARS:
            if refusal_in(value) is not None or not isinstance(value, _SCALARS[item.name]):
                changes[item.name] = _default(item)
                _lost(f"agent {lineage}'s {item.name}", refusal_in(value) or "not loadable")
            continue
        if item.name in _KEPT_AS_IS or refusal_in(value) is None:
            continue
        fix = _FIXES.get(item.name)
        changes[item.name] = _default(item) if fix is None else fix(value, lineage)
    kept = replace(result, **changes) if changes else result
    if (why := refusal_in(result.output)) is not None:
        kept = replace(kept, status="failed", output=None, error=SerializationError(
            f"agent {lineage}'s answer cannot be loaded by its parent: {why}"))
    elif (why := refusal_in(result.error)) is not None:
        error = result.error
        said = (describe_exception(error) if isinstance(error, BaseException)
                and not isinstance(error, Refused) else "an error")
        kept = replace(kept, error=SerializationError(
            f"agent {lineage} ended with an error its parent cannot load ({said}): {why}"))
    elif "status" in changes:
        kept = replace(kept, status="failed", error=SerializationError(
            f"agent {lineage}'s status cannot be loaded by its parent: "
            f"{refusal_in(result.status) or 'it is no text'}"))
    return kept


#: The fields of :class:`~shoal.agents.result.AgentResult` that are plain values, and their types.
_SCALARS: dict[str, type | tuple[type, ...]] = {
    "agent": str, "lineage": str, "run_id": str, "prompt": str, "status": str,
    "where": str, "isolation": str, "turns": int, "pid": int, "duration": (int, float),
    "started_at": (int, float)}
#: The fields :func:`without_refused` handles after the others (answer and end error).
_KEPT_AS_IS = frozenset({"output", "error"})


def _default(item: Any) -> Any:
    """The default of a dataclass field (``None`` for one without)."""
    from dataclasses import MISSING

    if item.default is not MISSING:
        return item.default
    if item.default_factory is not MISSING:
        return item.default_factory()
    return None


def _text(value: Any) -> str:
    """``value`` if it is plain text, else ``""``."""
    return value if type(value) is str else ""


def _lost(what: str, why: str) -> None:
    log.warning("%s cannot be loaded by its parent and was left out: %s", what, why)


def _calls_without_refused(calls: Any, lineage: str) -> list[Any]:
    if not isinstance(calls, list):
        _lost(f"agent {lineage}'s calls", refusal_in(calls) or "no list")
        return []
    return [_call_without_refused(record, lineage) for record in calls]


def _children_without_refused(children: Any, lineage: str) -> list[Any]:
    from shoal.agents.result import AgentResult

    if not isinstance(children, list):
        _lost(f"agent {lineage}'s subagents", refusal_in(children) or "no list")
        return []
    kept = []
    for index, child in enumerate(children, 1):
        why = refusal_in(child)
        if why is None:
            kept.append(child)
        elif isinstance(child, AgentResult):
            kept.append(without_refused(child))
        else:  # refused whole: which agent it was is lost with it
            where = f"{lineage}/?{index}"
            kept.append(AgentResult(
                agent="?", lineage=where, run_id="", prompt="", status="failed",
                error=SerializationError(f"subagent {index} of agent {lineage} cannot be "
                                         f"loaded by its parent: {why}")))
    return kept


def _messages_without_refused(messages: Any, lineage: str) -> list[Any]:
    if not isinstance(messages, list):
        _lost(f"agent {lineage}'s messages", refusal_in(messages) or "no list")
        return []
    return [message if refusal_in(message) is None
            else _plain_message(message, f"message {index} of agent {lineage}")
            for index, message in enumerate(messages, 1)]


def _plain_message(message: Any, where: str, why: str | None = None,
                   problem: Any = refusal_in) -> Any:
    """``message``, which holds something refused, as a plain one of its role saying so.

    ``why`` (default: what :func:`refusal_in` says) and ``problem`` (which of its tool calls
    need replacing: default, those :func:`refusal_in` finds a refusal in) serve the agent's
    own process too, for a message that does not pickle (``problem``: why not).
    """
    from shoal.models.base import AssistantMessage, ToolResultMessage, UserMessage

    said = "cannot be loaded by its parent" if why is None else "cannot go back to its parent"
    note = f"[SerializationError: {where} {said}: {why or refusal_in(message)}]"
    if isinstance(message, ToolResultMessage):
        return ToolResultMessage(_text(message.call_id), _text(message.name), note, True)
    if isinstance(message, UserMessage):
        return UserMessage(note)
    calls = getattr(message, "tool_calls", ())
    return AssistantMessage(note, tuple(_plain_tool_call(c, problem) for c in calls)
                            if isinstance(calls, tuple | list) else ())


def _plain_tool_call(call: Any, problem: Any = refusal_in) -> Any:
    """``call``, or, when ``problem`` finds one in it, a plain ``ToolCall`` of its plain parts."""
    from shoal.models.base import ToolCall

    if problem(call) is None:
        return call
    return ToolCall(_text(getattr(call, "id", "")), _text(getattr(call, "name", "")),
                    _text(getattr(call, "arguments", "")) or "{}")


def _plans_without_refused(plans: Any, lineage: str) -> list[Any]:
    if not isinstance(plans, list):
        _lost(f"agent {lineage}'s plans", refusal_in(plans) or "no list")
        return []
    return [plan if refusal_in(plan) is None and isinstance(plan, str) else
            f"[SerializationError: plan {index} of agent {lineage} cannot be loaded by its "
            f"parent: {refusal_in(plan) or 'it is no text'}]"
            for index, plan in enumerate(plans, 1)]


def _board_without_refused(board: Any, lineage: str) -> dict[str, Any] | None:
    if not isinstance(board, dict):
        _lost(f"agent {lineage}'s board", refusal_in(board) or "no dict")
        return None
    kept: dict[str, Any] = {}
    for key, value in board.items():
        if refusal_in(key) is not None or not isinstance(key, str):
            _lost(f"a board key of agent {lineage}", refusal_in(key) or "no text")
            continue
        why = refusal_in(value)
        kept[key] = value if why is None else SerializationError(
            f"board key {key!r} of agent {lineage} cannot be loaded by its parent: {why}")
    return kept


def _conflicts_without_refused(conflicts: Any, lineage: str) -> list[Any]:
    if not isinstance(conflicts, list):
        _lost(f"agent {lineage}'s board conflicts", refusal_in(conflicts) or "no list")
        return []
    kept = []
    for conflict in conflicts:
        why = refusal_in(conflict)
        if why is None:
            kept.append(conflict)
        else:
            _lost(f"a board conflict of agent {lineage}", why)
    return kept


def _usage_without_refused(usage: Any, lineage: str) -> Usage:
    """The plain counts of ``usage`` (a count that is refused, or no number, is 0)."""
    counts: dict[str, Any] = {}
    for item in fields(Usage):
        value = getattr(usage, item.name, None)
        if type(value) is int or (item.name == "cost" and type(value) is float):
            counts[item.name] = value
    _lost(f"part of agent {lineage}'s usage", refusal_in(usage) or "no usage")
    return Usage(**counts)


_FIXES: dict[str, Any] = {
    "calls": _calls_without_refused, "children": _children_without_refused,
    "messages": _messages_without_refused, "plans": _plans_without_refused,
    "board": _board_without_refused, "conflicts": _conflicts_without_refused,
    "usage": _usage_without_refused, "own_usage": _usage_without_refused}


def _call_without_refused(record: Any, lineage: str) -> Any:
    """``record``, less what it holds that is refused (see :func:`without_refused`).

    A value that is refused fails the call; a refused call as the model wrote it, or message
    its model read, is replaced by its plain parts and the error's text.
    """
    from shoal.agents.toolcalls import CallRecord
    from shoal.models.base import ToolResultMessage
    from shoal.outcome import ErrorInfo, Outcome

    if refusal_in(record) is None:
        return record
    if not isinstance(record, CallRecord):  # refused whole: a call lost, saying so
        why = refusal_in(record)
        where = f"a call of agent {lineage}"
        return _lost_call(where, why)
    named = _text(record.lineage) or f"a call of agent {lineage}"
    changes: dict[str, Any] = {}
    outcome = record.outcome
    if outcome is not None and (why := refusal_in(outcome)) is not None:
        if isinstance(outcome, Outcome) and refusal_in(outcome.value) is not None:
            why = refusal_in(outcome.value)
            error = SerializationError(f"{named} ran and returned a value its agent's parent "
                                       f"cannot load: {why}")
        else:
            error = SerializationError(f"the outcome of {named} cannot be loaded by its "
                                       f"agent's parent: {why}")
        if isinstance(outcome, Outcome) and refusal_in(
                replace(outcome, value=None, error=None)) is None:
            changes["outcome"] = replace(
                outcome, status="failed", value=None,
                error=ErrorInfo.from_exception(error, with_traceback=False))
        else:
            changes["outcome"] = None
        changes["status"] = "failed"
    if (why := refusal_in(record.call)) is not None:
        changes["call"] = _plain_tool_call(record.call)
    if (why := refusal_in(record.message)) is not None:
        message = record.message
        changes["message"] = ToolResultMessage(
            _text(getattr(message, "call_id", "")), _text(getattr(message, "name", "")),
            f"[SerializationError: the result its model read for {named} cannot be loaded by "
            f"its agent's parent: {why}]", True)
    for name, kind, default in (("lineage", str, ""), ("status", str, "failed"),
                                ("epoch", (int, float), 0.0), ("turn", int, 0)):
        value = changes.get(name, getattr(record, name))
        if refusal_in(value) is not None or not isinstance(value, kind):
            changes[name] = default
    return replace(record, **changes)


def _lost_call(where: str, why: str | None) -> Any:
    """The record of a call that was refused whole: ``failed``, saying so."""
    from shoal.agents.toolcalls import CallRecord
    from shoal.models.base import ToolCall, ToolResultMessage

    text = f"[SerializationError: {where} cannot be loaded by its parent: {why}]"
    return CallRecord(ToolCall("", "?"), "", "failed", ToolResultMessage("", "?", text, True))


def _let_go(proc: _Process, ref: ProcessRef) -> None:
    """Kill what ``proc``'s tools left in its group, then have it reaped; close ``ref``.

    The group is killed while ``proc`` is unreaped (see
    :meth:`~shoal.executors._process_ref.ProcessRef.kill_group`): a forked agent is a zombie
    of the template until :meth:`close <shoal.executors.process._ForkedProcess.close>`, a
    spawned one of this process; once reaped, its pid, which is its group's id, may name
    another process's group. (Started by asyncio where there are no pidfds, it was reaped
    already: its group is then killed only while no other process holds its pid.)
    """
    ref.kill_group(signal.SIGKILL)
    if not isinstance(proc, asyncio.subprocess.Process):
        proc.close()  # reaped now: by the template, or by this process
    ref.close()


def _unimportable(agent: Agent[Any]) -> set[str]:
    """Modules of the tree's tools and models that no other process can import.

    Modules made at run time (``types.ModuleType``, as notebooks and doc runners do) are in
    ``sys.modules`` here but nowhere else: what they define must travel by value.
    """
    found: set[str] = set()
    for each in agent.with_subagents():
        things: list[Any] = [getattr(t, "fn", t) for t in each.tools]
        things.append(type(each.model))
        for thing in things:
            name = getattr(thing, "__module__", None)
            module = sys.modules.get(name or "")
            if module is not None and name != "__main__" and (
                    getattr(module, "__spec__", None) is None):
                found.add(module.__name__)
    return found


@contextlib.contextmanager
def _by_value(modules: set[str]) -> Iterator[None]:
    """Have cloudpickle pickle what ``modules`` define by value, for the duration."""
    import cloudpickle  # type: ignore[import-untyped]

    registered = []
    try:
        for name in modules:
            cloudpickle.register_pickle_by_value(sys.modules[name])
            registered.append(name)
        yield
    finally:
        for name in registered:
            with contextlib.suppress(ValueError):
                cloudpickle.unregister_pickle_by_value(sys.modules[name])


class _Gone(Exception):
    """The agent's channel ended before its result came."""


class Watched(Protocol):
    """What :class:`StopWatch` watches: an agent's channel to a process on this machine."""

    lineage: str
    stalled: str | None  # why it was killed, once it was

    @property
    def pid(self) -> int:
        """The agent's process, on this machine (alive while the channel is open)."""

    def kill(self) -> None:
        """End the agent now, and everything it started."""


class StopWatch:
    """Ends the agent processes of one event loop found stopped for :data:`STOPPED_GRACE` s.

    One task checks them all every :data:`STOPPED_CHECK` s, while there are any: a process
    stopped (state ``T``) answers nothing, its socket stays open and its call would wait for
    good. One stopped by a debugger (``t``) is left alone: someone is looking at it.
    """

    _of_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, StopWatch]] = (
        weakref.WeakKeyDictionary())

    def __init__(self) -> None:
        self._since: dict[Watched, float | None] = {}  # when first seen stopped
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def watch(cls, channel: Watched) -> None:
        """Watch ``channel``'s process until :meth:`forget`."""
        loop = asyncio.get_running_loop()
        watch = cls._of_loop.get(loop)
        if watch is None:
            watch = cls._of_loop[loop] = cls()
        watch._since[channel] = None
        if watch._task is None:
            watch._task = loop.create_task(watch._run())

    @classmethod
    def forget(cls, channel: Watched) -> None:
        """Stop watching ``channel``'s process (its agent ended)."""
        watch = cls._of_loop.get(asyncio.get_running_loop())
        if watch is not None:
            watch._since.pop(channel, None)
            if not watch._since and watch._task is not None:  # none left: no task lingers
                watch._task.cancel()
                watch._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._since:
            await asyncio.sleep(STOPPED_CHECK)
            self._check(loop.time())
        self._task = None

    def _check(self, now: float) -> None:
        for channel, since in list(self._since.items()):
            if process_state(channel.pid) != b"T":
                self._since[channel] = None
            elif since is None:
                self._since[channel] = now
            elif now - since >= STOPPED_GRACE:
                del self._since[channel]
                channel.stalled = (
                    f"agent process {channel.pid} stopped (SIGSTOP or SIGTSTP) and did not "
                    f"answer for {STOPPED_GRACE:g} s: it was killed")
                log.warning("agent %s: %s", channel.lineage, channel.stalled)
                channel.kill()


class TreeServer:
    """Answers one remote agent's requests from the tree's context (see the module docstring).

    Budget charges are answered at once, in the order they come, without an ``await`` in
    between: that keeps the limits exact, as in one process. Gate slots and approvals wait, so
    each is answered by a task of its own.
    """

    def __init__(self, ctx: TreeContext, channel: Channel, lineage: str, depth: int) -> None:
        self.ctx = ctx
        self.channel = channel
        self.lineage = lineage
        self.depth = depth  # the agent's own: its subagents are deeper
        self._held: Counter[str] = Counter()  # gate slots the agent holds, by model name
        self._asked: Counter[str] = Counter()  # ids of the approval requests it waits for
        #: what the agent's tree charged so far (a crashed agent's result still says it)
        self.usage = Usage()
        self.requests = 0  # requests charged (one whose usage never came still counts)
        self.turns = 0  # the requests the agent itself started: its turns, its subagents' not
        self.started = False  # whether the agent said it started (AgentStarted)
        self._tasks: set[asyncio.Task[None]] = set()
        # journal writes of board commits under way: let finish, never cancelled (a commit
        # applied to the board is journaled, whatever became of the agent that made it)
        self._journaling: set[asyncio.Task[None]] = set()
        #: lineages whose replies it charged while streaming: forgotten when it ends (a
        #: process that died mid-reply sends no usage to settle them)
        self._streaming: set[str] = set()
        #: lineages whose requests hold output tokens of the tree's budget (see _reserve)
        self._holding: set[str] = set()
        self._claims: dict[int, RunClaim] = {}  # run claims held for the agent's journal
        self._next_claim = 0
        #: run ids of this agent's subtree (the only runs it may journal or commit for)
        self._runs = f"{ctx.run_id}/{lineage}/"

    async def serve(self) -> AgentResult[Any]:
        """Answer requests until the agent's result comes; :class:`_Gone` if it never does."""
        while (message := await self.channel.receive()) is not None:
            kind = message[0]
            if kind == "done":
                result: AgentResult[Any] = message[1]
                return result
            if kind == "unstartable":  # its process cannot run it (a limit too small)
                raise AgentError(f"the process for agent {self.lineage} could not start: "
                                 f"{message[1]}")
            if kind == "error":
                raise AgentError(
                    f"the process for agent {self.lineage} could not load its definition: "
                    f"{message[1]} (what the agent holds, its tools and its model, must be "
                    "importable there: defined in a module on sys.path, or in the script run "
                    "as __main__)")
            if kind == "event":
                event = message[1]
                self.started = self.started or (
                    isinstance(event, AgentStarted) and event.lineage == self.lineage)
                self.ctx.emit(event)
            elif kind == "call":
                self._call(message[1], message[2], message[3])
            elif kind == "refused":  # see load_message
                self._reply(message[1], message[2], False, SerializationError(message[3]))
            elif kind == "gate_exit":
                self._release(message[1])
            elif kind == "gate_pause":
                # no longer than this tree's gates wait for a Retry-After: a pause of 1e300 s
                # (the check above takes any finite one) closed the gate for good
                gate = self.ctx.gates.for_name(message[1])
                gate.pause(min(message[2], gate.retry.max_retry_after))
            elif kind == "withdraw":
                self._withdraw(message[1])
            elif kind == "streamed":
                self._streamed(message[1], message[2])
            elif kind == "release":
                self._unhold(message[1])
            elif kind == "journal":
                self.mirror(message[1])
        raise _Gone

    def mirror(self, entries: Any) -> None:
        """Keep what an agent whose journal is in memory journaled (see ``ParentMirror``).

        Kept as it came (see :class:`Mirrored`), for this process's store, which is in memory
        too (the agent was told so), and passed on up when that store is itself mirrored to
        a parent. Only runs of the agent's own subtree are taken; nothing is answered.
        """
        store = self.ctx.runtime.store
        if store is None or store.durable or not isinstance(entries, list):
            log.warning("agent %s sent journal records its parent does not take", self.lineage)
            return
        kept = [(run_id, blob) for run_id, blob in (e for e in entries if _entry(e))
                if run_id.startswith(self._runs)]
        if len(kept) < len(entries):
            log.warning("agent %s sent journal records that are not its own runs': dropped",
                        self.lineage)
        Mirrored.of(store).add(store, kept)
        forward = getattr(store, "forward", None)
        if callable(forward):  # an agent in the middle of a chain: its parent keeps them too
            forward(kept)

    def _call(self, call_id: int, op: str, args: tuple[Any, ...]) -> None:
        if op in ("gate_enter", "review", "reserve"):
            self._later(self._answer_later(call_id, op, args))
            return
        if op in ("store", "store_claim", "store_release"):
            self._later(self._store_call(call_id, op, args))
            return
        if op == "board_commit_call":
            self.commit_call(call_id, args)
            return
        tracker = self.ctx.tracker
        value: Any = None
        try:
            if op == "start_request":
                tracker.start_request(*args)
                self.requests += 1
                self.turns += args[0] == self.lineage  # as AgentRun.start_turn counts them
                # the agent caps its request's output to what is left: neither spent nor
                # held by a request in flight
                value = tracker.committed()
            elif op == "refund_request":  # a turn stopped before it asked its model
                tracker.refund_request(*args)
                self.requests -= 1
                self.turns -= args[0] == self.lineage
            elif op == "add_usage":
                usage = args[0] if len(args) == 2 else None
                if not (type(usage) is Usage and _plain(usage)):  # never a refund
                    raise ShoalError(f"an agent process reported usage {_cut(shown(usage))}, "
                                     "which no model reply has (counts from 0 up)")
                self.usage = self.usage + usage
                tracker.add_usage(*args)
                self._holding.discard(args[-1])  # its usage replaced what it held
            elif op == "take_subagent":
                value = tracker.take_subagent(*self._subagent_at(args))
            elif op.startswith("board_"):
                value = self._board(op, args)
            else:
                raise ShoalError(f"an agent process asked for {op!r}, which is no request")
        except Exception as exc:  # a breach above all: the agent raises it where it stands
            self._reply(call_id, op, False, exc)
            return
        self._reply(call_id, op, True, value)

    def _streamed(self, where: str, tokens: int) -> None:
        """Charge the tokens a reply of the agent's subtree streamed so far to the tree.

        One way, nothing answered: a breach stops the tree (this agent with it) from here.
        """
        if not self._in_subtree(where):
            log.warning("agent %s charged tokens streamed by %s, not of its subtree: dropped",
                        self.lineage, _cut(where))
            return
        self._streaming.add(where)
        with contextlib.suppress(BudgetExceeded):  # the tree is told (see BudgetTracker.stop)
            self.ctx.tracker.charge_streamed(tokens, where)

    def _subagent_at(self, args: tuple[Any, ...]) -> tuple[int, str]:
        """The depth and lineage of a subagent the agent asks to start, if its subtree's.

        A child that said its subagent sat at a lesser depth than its own (or outside its
        subtree) would start subagents past ``Budget(depth=)``: refused.
        """
        depth, where = args if len(args) == 2 else (None, None)
        if not (type(depth) is int and depth > self.depth and type(where) is str
                and where.startswith(f"{self.lineage}/")):
            raise ShoalError(f"agent {self.lineage} (at depth {self.depth}) asked for a "
                             f"subagent at depth {_cut(shown(depth))}, {_cut(shown(where))}: "
                             "not one of its own subtree")
        return depth, where

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        """Answer a request by a task of its own (it waits: a gate, a person, the journal)."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _reply(self, call_id: int, op: str, ok: bool, value: Any) -> None:
        """Answer a request; one whose answer cannot be pickled fails the asking call there.

        A board value too deeply nested to pickle, say: the agent's call fails with a
        :class:`~shoal.exceptions.SerializationError`, and the agent goes on.
        """
        try:
            self.channel.send(("reply", call_id, ok, value))
        except SerializationError as exc:
            self.channel.send(("reply", call_id, False, SerializationError(
                f"the tree's answer to an agent process ({op.replace('_', ' ')}) cannot be "
                f"sent to it: {exc}")))

    def _board(self, op: str, args: tuple[Any, ...]) -> Any:
        """Answer a read or commit of the agent's board with the tree's (the root's) board."""
        board = self.ctx.board
        if board is None:
            raise ShoalError(f"an agent process asked the board ({op}), but this tree has none")
        if op == "board_read":
            return board._read(args[0])
        if op == "board_get":
            return board[args[0]]
        if op == "board_snapshot":
            return board.snapshot()
        if op == "board_conflicts":
            return board.conflicts
        if op == "board_commit":
            writer, writes, seen, call, recorded, number, digest = args
            self._writer(writer)
            if call is not None:
                self._own(call[0])
            return board._commit(writer, [(str(k), v) for k, v in writes], seen,
                                 call=None if call is None else (str(call[0]), str(call[1])),
                                 recorded=recorded, number=number, args=str(digest))
        if op == "board_replay":
            self._own(getattr(args[0], "run_id", None))
            board._replay(args[0])
            return None
        raise ShoalError(f"an agent process asked for {op!r}, which is no request")

    def commit_call(self, call_id: int, args: tuple[Any, ...]) -> None:
        """Commit one call's board writes for the agent, and journal them in the same step.

        The root applies the writes (at once, in the order commits come) and, with a durable
        journal, journals the commit keyed by the call before it answers: from the root's
        point of view the two are one step. A kill of the agent (or of the root) at any moment
        leaves the journal holding every write the board holds, so a resume neither loses a
        write nor applies one twice: the journaled commit counts whatever became of the call
        (see :func:`shoal.store.resume.standing_effects`), and the call, run again, finds it
        applied (:meth:`Board._commit_call <shoal.board.Board._commit_call>`). The answer is
        ``None`` (nothing left for the agent to journal) or, without a durable journal, the
        record the agent journals with the call's outcome.

        An agent in the middle of a chain (whose board is itself its parent's) passes the
        commit on: the root, which holds the board, journals it.
        """
        try:
            board = self.ctx.board
            if board is None:
                raise ShoalError("an agent process asked the board (board_commit_call), but "
                                 "this tree has none")
            writer, writes, seen, call, digest = args
            self._own(call[0])
            self._writer(writer)
            key = (str(call[0]), str(call[1]))
            record = board._commit_call(str(writer), [(str(k), v) for k, v in writes],
                                        dict(seen), key, str(digest))
        except Exception as exc:  # a merge that fails, a breach: the call fails there
            self._reply(call_id, "board_commit_call", False, exc)
            return
        store = self.ctx.runtime.store
        if record is None or not board.local or store is None or not store.durable:
            self._reply(call_id, "board_commit_call", True, record)
            return
        task = asyncio.ensure_future(self._journal_commit(call_id, store, board, record))
        self._journaling.add(task)
        task.add_done_callback(self._journaling.discard)

    async def _journal_commit(self, call_id: int, store: Store, board: Board,
                              record: EffectRecord) -> None:
        """Journal a commit the board holds now (on a thread), then tell the agent it is."""
        from shoal.board import at_commit

        try:
            await asyncio.to_thread(store.write, [at_commit(record)])
        except Exception as exc:  # the journal cannot be written: the call fails saying so
            board._not_journaled(record)  # ... and, run again, journals it
            self._reply(call_id, "board_commit_call", False, exc)
            return
        self._reply(call_id, "board_commit_call", True, None)

    async def _store_call(self, call_id: int, op: str, args: tuple[Any, ...]) -> None:
        """Answer the agent's journal (a :class:`~shoal.agents._process.ParentStore`)."""
        try:
            value = await self._store_answer(op, args)
        except Exception as exc:
            self._reply(call_id, op, False, exc)
            return
        self._reply(call_id, op, True, value)

    async def _store_answer(self, op: str, args: tuple[Any, ...]) -> Any:
        """Do what the agent asks of the journal, on a thread, for runs of its subtree only.

        The store is this process's: the root's own, or (an agent in the middle of a chain)
        its parent's, asked in turn: every agent of the tree journals in the root's journal.
        """
        store = self.ctx.runtime.store
        if store is None:
            raise ShoalError("this tree has no journal")
        if op == "store_release":
            claim = self._claims.pop(args[0], None)
            if claim is not None:
                claim.release()
            return None
        if op == "store_claim":
            from shoal.store.claims import claim_run

            self._own(args[0])
            claim = await asyncio.to_thread(claim_run, store, args[0])
            self._next_claim += 1
            self._claims[self._next_claim] = claim
            return self._next_claim
        if not store.durable:  # what its agents sent it is there before it is read
            await asyncio.to_thread(Mirrored.of(store).load_into, store)
        name, positional, named = args
        if name not in STORE_METHODS:
            raise ShoalError(f"agent {self.lineage} asked the journal for {name!r}, which it "
                             "may not")
        if name == "write":
            for record in positional[0]:
                self._own(getattr(record, "run_id", None))
        elif name == "request_approval":  # an ApprovalRecord
            self._own(getattr(positional[0] if positional else None, "run_id", None))
        else:
            self._own(positional[0] if positional else named.get("run_id"))
        return await asyncio.to_thread(getattr(store, name), *positional, **named)

    def _writer(self, writer: Any) -> None:
        """Refuse a board write in the name of a writer outside the agent's subtree.

        A conflict names the writers whose values met: one of another agent's would blame it.
        """
        if not (isinstance(writer, str) and (writer == self.lineage
                                             or writer.startswith(f"{self.lineage}/"))):
            raise ShoalError(f"agent {self.lineage} may write the board only as itself or a "
                             f"call of its own, not as {_cut(shown(writer))}")

    def _own(self, run_id: Any) -> None:
        if not isinstance(run_id, str) or not run_id.startswith(self._runs):
            raise ShoalError(f"agent {self.lineage} may journal only its own runs "
                             f"({self._runs}...), not {run_id!r}")

    async def _answer_later(self, call_id: int, op: str, args: tuple[Any, ...]) -> None:
        try:
            if op == "gate_enter":
                await self.ctx.gates.for_name(args[0]).acquire()
                self._held[args[0]] += 1
                value: Any = None
            elif op == "reserve":
                value = await self._reserve(args)
            else:
                value = await self._review(args[0])
        except Exception as exc:
            self._reply(call_id, op, False, exc)
            return
        self._reply(call_id, op, True, value)

    async def _review(self, batch: Any) -> Any:
        """Decisions from the root's desk, as for the root's own requests.

        So the root's ``approval_budget`` and ``approval_rate`` count the agent's requests
        too, they join the root's batches, and its approver is asked one batch at a time.
        """
        desk = self.ctx.runtime.approvals
        if desk.approver is None:  # the agent was told there is none; it denies on its own
            raise ShoalError("this tree has no approver")
        if not isinstance(batch, list):
            raise ShoalError(f"agent {self.lineage} asked for decisions on "
                             f"{_cut(shown(batch))}, not a list of requests")
        for request in batch:
            self._check_request(request)
        loop = asyncio.get_running_loop()
        rulings: list[asyncio.Future[Any]] = []
        for request in batch:
            ruling: asyncio.Future[Any] = loop.create_future()
            rulings.append(ruling)
            self._asked[request.id] += 1
            desk.submit(request, partial(_settle, ruling))
        try:
            return list(await asyncio.gather(*rulings))
        except asyncio.CancelledError:  # the agent ended: nobody waits for these any more
            for request in batch:
                desk.withdraw(request.id)
            raise
        finally:
            self._asked.subtract(request.id for request in batch)
            self._asked = +self._asked  # without the ids it no longer waits for

    def _check_request(self, request: Any) -> None:
        """Refuse a request about a call that is not of the agent's own subtree.

        A request names its call (run, node, arguments) and so does its id; the desk keys
        pending requests by id. One naming another agent's call would be shown to the
        approver as that agent's, or take the place of that agent's own pending request
        (whose call then waited for good).
        """
        from shoal.approvals.policy import ApprovalRequest, request_id

        if not (type(request) is ApprovalRequest and type(request.run_id) is str
                and request.run_id.startswith(self._runs) and type(request.lineage) is str
                and request.lineage.startswith(f"{self.lineage}/")
                and type(request.node_id) is str and type(request.args_hash) is str
                and request.id == request_id(request.run_id, request.node_id,
                                             request.args_hash)):
            raise ShoalError(f"agent {self.lineage} asked for a decision on a call that is "
                             f"not its own: {_cut(shown(request))}")

    def _withdraw(self, request_ids: Any) -> None:
        """The agent no longer needs these decisions (its calls were cancelled or timed out).

        Only requests it asked for itself, and still waits for: never another agent's.
        """
        for request_id in request_ids:
            if isinstance(request_id, str) and self._asked[request_id] > 0:
                self.ctx.runtime.approvals.withdraw(request_id)

    async def _reserve(self, args: tuple[Any, ...]) -> int | None:
        """Hold output tokens of the tree's budget for a request of the agent's subtree.

        The cap it holds (see ``BudgetTracker.reserve``) is given back by the request's usage
        or a ``release`` message, or when the agent ends.
        """
        where, most = args if len(args) == 2 else (None, None)
        if not (isinstance(where, str) and self._in_subtree(where)
                and type(most) is int and most >= 1):
            raise ShoalError(f"agent {self.lineage} asked to hold {_cut(shown(args))} of the "
                             "token budget: not a lineage of its subtree and a count from 1")
        cap = await self.ctx.tracker.reserve(where, most)
        self._holding.add(where)
        return cap

    def _unhold(self, where: str) -> None:
        """Give back what a request of the agent's subtree held (it ended without usage)."""
        if where in self._holding:  # only its own: never another agent's hold
            self._holding.discard(where)
            self.ctx.tracker.release(where)

    def _in_subtree(self, where: str) -> bool:
        """Whether ``where`` is the lineage of this agent or of one of its subagents."""
        return where == self.lineage or where.startswith(f"{self.lineage}/")

    def _release(self, name: str) -> None:
        if self._held[name] > 0:
            self._held[name] -= 1
            self.ctx.gates.for_name(name).release()

    async def close(self) -> None:
        """Stop answering; give back the gate slots and run claims a dead agent still held.

        Board commits being journaled are let finish: the board holds them already.
        """
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*self._journaling, return_exceptions=True)
        for name, count in self._held.items():
            for _ in range(count):
                self.ctx.gates.for_name(name).release()
        self._held.clear()
        for claim in self._claims.values():
            claim.release()
        self._claims.clear()
        for where in self._streaming:  # replies it never ended (it died): no longer streaming
            self.ctx.tracker.charge_streamed(0, where)
        self._streaming.clear()
        for where in self._holding:  # requests it never ended: what they held goes back
            self.ctx.tracker.release(where)
        self._holding.clear()


def _entry(entry: Any) -> bool:
    """Whether ``entry`` is a ``(run_id, pickled records)`` pair of a ``journal`` message."""
    return (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str)
            and isinstance(entry[1], bytes))


class Mirrored:
    """What agents whose journal is in memory sent one store's process, not loaded yet.

    An agent process (or Ray actor) of a tree whose journal is in memory sends its parent
    each step it finished (:class:`~shoal.agents._process.ParentMirror`): the records of one
    run, pickled. They are kept as they came, and loaded into the store (with the restricted
    loader) only when an agent reads the store through its parent, which is when it runs
    again (a retried agent plan node), or on :func:`load_mirrored`: loading every agent's
    records would cost the parent more than everything else its agents ask of it, and most
    are never read. At most as many runs are kept as the store keeps (``max_runs``), the
    oldest going first, as the store's own do.
    """

    _of: ClassVar[weakref.WeakKeyDictionary[Any, Mirrored]] = weakref.WeakKeyDictionary()

    def __init__(self, limit: int) -> None:
        self._runs: deque[tuple[str, bytes]] = deque(maxlen=limit)
        self._lock = threading.Lock()

    @classmethod
    def of(cls, store: Store) -> Mirrored:
        """The records kept for ``store`` (an empty keeper for one that takes no weak key)."""
        try:
            found = cls._of.get(store)
        except TypeError:  # no weak key: loaded at once instead (see add)
            return cls(DEFAULT_MAX_RUNS)
        if found is None:
            limit = getattr(store, "max_runs", None)
            limit = limit if type(limit) is int and limit > 0 else DEFAULT_MAX_RUNS
            found = cls._of.setdefault(store, cls(limit))
        return found

    def add(self, store: Store, runs: list[tuple[str, bytes]]) -> None:
        """Keep each run's pickled records (loaded at once if ``store`` has no keeper)."""
        with self._lock:
            self._runs.extend(runs)
        try:
            kept = self._of.get(store) is self
        except TypeError:  # no weak key: no keeper
            kept = False
        if not kept:
            self.load_into(store)

    def load_into(self, store: Store) -> None:
        """Load what is kept into ``store``; a run that does not load is left out, logged.

        Only the records of the run each entry names are taken (an agent's runs are its
        own). A store that mirrors to its own parent (an agent in the middle of a chain)
        keeps them without sending them on: they went on as they came.
        """
        write = getattr(store, "keep", store.write)
        with self._lock:  # held while loading: a read waits until everything is there
            while self._runs:
                run_id, blob = self._runs.popleft()
                try:
                    records = load_result(blob, f"the journal records of run {run_id}")
                except SerializationError as exc:
                    records = _loadable_records(blob, exc)
                if not isinstance(records, list):
                    continue
                try:
                    write([r for r in records if getattr(r, "run_id", None) == run_id])
                except Exception:  # a broken record: the journal goes on without that run
                    log.warning("the journal records of run %s could not be stored", run_id,
                                exc_info=True)


def _loadable_records(blob: bytes, refused: SerializationError) -> Any:
    """Journal records the loader refused, less what it refused (see :class:`Mirrored`).

    A call's outcome whose value it refuses is kept ``failed``, saying why (as the agent's
    result reports that call); any other record holding something refused is left out,
    logged: that step of the agent is not replayed.
    """
    from shoal.agents._process import _failed_outcome

    try:
        records = load_salvaging(blob)
    except Exception:
        records = None
    if not isinstance(records, list):
        log.warning("%s: that step of the agent is not replayed", refused)
        return []
    kept = []
    for record in records:
        why = refusal_in(record)
        if why is not None:
            record = _failed_outcome(record, why)
            if record is None or refusal_in(record) is not None:
                log.warning("a journal record of an agent was refused: %s; that step of the "
                            "agent is not replayed", why)
                continue
        kept.append(record)
    return kept


def load_mirrored(store: Store) -> None:
    """Load into ``store`` what the tree's remote agents journaled there (see :class:`Mirrored`).

    For a look at a memory journal after a run: the agents' own reads load it themselves.
    """
    Mirrored.of(store).load_into(store)


def _settle(ruling: asyncio.Future[Any], decision: Any, by: str) -> None:
    """Hand the desk's decision on one request to the review waiting for it."""
    if not ruling.done():
        ruling.set_result(decision)


def _store_of(runtime: Runtime) -> str:
    """Where the agent process journals: in this process's journal, whatever it is.

    A SQLite file it opens itself; any other durable journal (a Ray agent's, which is its
    parent's; a store of your own) through this process (:data:`PARENT_STORE`), so that an
    agent nested in a Ray agent journals in the root's journal too; see :func:`routed_store`
    for the rest.
    """
    store = runtime.store
    path = getattr(store, "path", None)
    if store is not None and store.durable and isinstance(path, str) and path != ":memory:":
        return os.path.abspath(path)
    return routed_store(store)


def routed_store(store: Store | None) -> str:
    """The ``StartSpec.store`` of an agent that journals through its parent, whose is ``store``.

    A durable journal is read and written through the parent (:data:`PARENT_STORE`); an
    in-memory one is kept by the agent and mirrored to the parent's
    (:data:`PARENT_MEMORY`), so an agent run again after its process died replays what it
    finished, as an inline agent does; with no journal at all, a memory store of its own
    (``"memory"``), which ends with it.
    """
    if store is None:
        return "memory"
    events = bool(getattr(store, "keeps_events", False))
    if store.durable:
        return PARENT_EVENTS if events else PARENT_STORE
    return PARENT_MEMORY_EVENTS if events else PARENT_MEMORY


def _runtime_options(runtime: Runtime) -> dict[str, Any]:
    return {"max_concurrency": runtime.max_concurrency, "executor": runtime.executor,
            "thread_workers": runtime.thread_workers,
            "process_workers": runtime.process_workers, "pass_env": runtime.pass_env,
            "process_sandbox": runtime.process_sandbox,
            "resource_limits": runtime.resource_limits,
            "approval_timeout": runtime.approvals.timeout}


def start_spec(run: AgentRun) -> StartSpec:
    """What the process running ``run``'s agent is told."""
    from shoal.agents.context import is_within

    ctx, agent = run.ctx, run.agent
    return StartSpec(
        agent=agent, prompt=run.result.prompt, lineage=run.lineage, depth=run.depth,
        run_id=ctx.run_id, budget=ctx.tracker.budget, origin=ctx.started, observed=ctx.observed,
        wants_text=ctx.wants_text, resuming=ctx.resumes(run.lineage), force=ctx.force,
        override=ctx.model_override, retry=ctx.gates.retry, store=_store_of(ctx.runtime),
        runtime=_runtime_options(ctx.runtime),
        approver=ctx.runtime.approvals.approver is not None,
        limits=parse_process_limits(agent.limits),
        board=None if ctx.board is None else ctx.board.rules,
        allowed=allowed_result_types(),
        settling={lineage: settled for lineage, settled in ctx.settling.items()
                  if is_within(lineage, run.lineage)})


def _check(run: AgentRun) -> None:
    if os.name != "posix":
        raise ConfigError("isolation='process' needs a POSIX system (Linux, macOS)")


async def run_elsewhere(run: AgentRun) -> AgentResult[Any]:
    """Run ``run``'s agent in a process of its own; fill and return ``run.result``.

    The contract of :meth:`AgentRun.run`: never raises, except ``CancelledError`` after the
    result is recorded.
    """
    ctx, result = run.ctx, run.result
    ctx.results[run.lineage] = result
    result.started_at = time.time()  # the agent's own, once it reports
    result.where = driver.HOST  # its process is on this machine (also if it dies)
    result.isolation = run.agent.isolation
    try:
        _check(run)
        spec = start_spec(run)
        channel = await ProcessChannel.start(spec, (*ctx.runtime.pass_env, *run.agent.env),
                                             ctx.agent_processes())
        result.pid = channel.pid  # so also a process that dies says which it was
    except Exception as exc:
        _fail(run, "failed", exc)
        return result
    except asyncio.CancelledError:  # while its process started (which then ended)
        _stopped(run)  # by a budget: budget_exceeded, as once it runs (and as a Ray agent)
        raise
    server = TreeServer(ctx, channel, run.lineage, run.depth)
    serving = asyncio.ensure_future(server.serve())
    deadlines: list[asyncio.TimerHandle] = []
    StopWatch.watch(channel)

    def stop(reason: str, breach: BudgetExceeded | None) -> None:
        channel.send(("cancel", reason, breach))
        if not deadlines:  # an agent that does not end in time (stuck in C code) is killed
            deadlines.append(asyncio.get_running_loop().call_later(
                CANCEL_GRACE, channel.kill))

    ctx.track_remote(run.lineage, stop)
    if (early := ctx.stop_reason(run.lineage)) is not None:  # stopped while it started
        stop(early, ctx.tracker.breach)
    try:
        try:
            _adopt(ctx, result, await asyncio.shield(serving), server.usage)
        except asyncio.CancelledError:
            await _stop(run, channel, serving, server)
            raise
        except _Gone:
            if deadlines:  # killed when it did not stop in time: stopped, not crashed
                _stopped(run, server)
            else:
                await _fail_gone(run, channel, server)
        except Exception as exc:  # it could not load the agent; a reply that does not load
            if deadlines and isinstance(exc, SerializationError):  # cut short by the kill
                _stopped(run, server)
            elif isinstance(exc, CutShort):  # killed, or stopped, as it sent a message?
                await _fail_gone(run, channel, server, exc)
            else:
                _fail(run, "failed", exc, server)
    finally:
        StopWatch.forget(channel)
        for timer in deadlines:
            timer.cancel()
        ctx.untrack_remote(run.lineage)
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        await server.close()
        await channel.close()
    return result


async def _fail_gone(run: AgentRun, channel: ProcessChannel, server: TreeServer,
                     short: CutShort | None = None) -> None:
    """Record the end of an agent whose socket ended, or cut a message ``short``: how it ended.

    Finding that out waits for the process (2 s at most, then it is killed); a cancel then (a
    budget, a person) still finds the end recorded, as a failure, before it goes on.
    """
    lineage = run.lineage
    try:
        if short is not None:
            error = await cause(lineage, channel, short)
        else:
            how = await channel.ended()
            error = AgentError(f"agent {lineage}: {how}" if channel.stalled is not None
                               else f"the process running agent {lineage} died: {how}")
    except asyncio.CancelledError:
        _fail(run, "failed", short or AgentError(
            f"the process running agent {lineage} died (how was still unknown)"), server)
        raise
    _fail(run, "failed", error, server)


async def _stop(run: AgentRun, channel: Channel, serving: asyncio.Future[Any],
                server: TreeServer) -> None:
    """Ask the agent to stop; take its result if it comes within the grace, else record one."""
    ctx = run.ctx
    reason = ctx.stop_reason(run.lineage) or "cancelled"
    channel.send(("cancel", reason, ctx.tracker.breach))
    try:
        _adopt(ctx, run.result, await asyncio.wait_for(asyncio.shield(serving), CANCEL_GRACE),
               server.usage)
    except (TimeoutError, _Gone, asyncio.CancelledError):
        _stopped(run, server)


def _stopped(run: AgentRun, server: TreeServer | None = None) -> None:
    """Record the end of an agent stopped before it could record its own."""
    ctx = run.ctx
    breach = ctx.tracker.breach
    if breach is not None:
        _fail(run, "budget_exceeded", breach, server)
    else:
        reason = ctx.stop_reason(run.lineage) or "cancelled"
        _fail(run, "cancelled", AgentError(f"agent {run.lineage} was {reason}"), server)


def _adopt(ctx: TreeContext, result: AgentResult[Any], remote: AgentResult[Any],
           charged: Usage) -> None:
    """Copy the agent's result into the parent's (the object its parent already holds).

    Who the agent is (name, lineage, run, prompt) stays as the parent started it, and its
    subagents' results are kept only as results of its own subtree, each once (see
    :func:`_own_subtree`): the tree's lookups by lineage and its walks rely on both. A usage
    that is no sum of model replies' (a negative count: its parent's usage, which sums its
    subagents', would be off) is what the agent's subtree was ``charged`` instead.
    """
    for item in fields(remote):
        if item.name not in _IDENTITY:
            setattr(result, item.name, getattr(remote, item.name))
    for name in ("usage", "own_usage"):
        usage = getattr(result, name)
        if not (type(usage) is Usage and _plain(usage)):
            log.warning("agent %s reported its %s as %s: taken as what it was charged",
                        result.lineage, name, _cut(shown(usage)))
            setattr(result, name, charged)
    _own_subtree(result)
    for found in result.walk():
        ctx.results[found.lineage] = found
    if isinstance(result.error, AgentError) and result.error.result is None:
        result.error.result = result


#: What the parent says of an agent it started, whatever the agent's result says.
_IDENTITY = frozenset({"agent", "lineage", "run_id", "prompt"})


def _own_subtree(result: AgentResult[Any]) -> None:
    """Leave out each subagent result below ``result`` that is not its own, or repeats.

    A result among its own subagents (a cycle) made every walk of the tree recurse without
    end; one whose lineage is not below its parent's took another agent's place in the
    tree's results by lineage (the lead's too). Each such one is left out, logged.
    """
    from shoal.agents.result import AgentResult

    seen = {id(result)}
    stack = [result]
    while stack:
        parent = stack.pop()
        kept = []
        for child in parent.children if isinstance(parent.children, list) else ():
            if (isinstance(child, AgentResult) and id(child) not in seen
                    and type(child.lineage) is str
                    and child.lineage.startswith(f"{parent.lineage}/")):
                seen.add(id(child))
                kept.append(child)
                stack.append(child)
            else:
                log.warning("agent %s sent a subagent result that is not one of its own (%s): "
                            "left out", result.lineage,
                            _cut(shown(getattr(child, "lineage", child))))
        parent.children = kept


def _fail(run: AgentRun, status: AgentStatus, error: BaseException,
          server: TreeServer | None = None) -> None:
    """Record an end the agent could not record itself, and say so on the tree's sinks.

    What its tree was charged and the turns it took (``server``) stay on the result: the
    lead's usage still sums what the whole tree spent.
    """
    ctx, result = run.ctx, run.result
    result.status, result.error = status, error
    if server is not None:
        usage = server.usage
        result.usage = replace(usage, requests=max(usage.requests, server.requests))
        result.turns = max(result.turns, server.turns)  # taken, though it could not say so
    if result.started_at:
        result.duration = time.time() - result.started_at
    if isinstance(error, AgentError) and error.result is None:
        error.result = result
    if ctx.observed and (server is None or not server.started):  # ended as it started
        ctx.emit(AgentStarted(run_id=ctx.run_id, time=ctx.now(), lineage=run.lineage,
                              agent=run.agent.name, prompt=result.prompt, depth=run.depth,
                              where=result.where, pid=result.pid,
                              isolation=result.isolation or run.agent.isolation))
    if ctx.observed:
        ctx.emit(AgentFinished(
            run_id=ctx.run_id, time=ctx.now(), lineage=run.lineage, agent=run.agent.name,
            status=status, output="", turns=result.turns,
            total_tokens=result.usage.total_tokens, duration=result.duration,
            error=str(error)))
