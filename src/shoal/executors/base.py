"""The executor contract: every backend (inline, thread, process, Ray) implements :class:`Executor`.

An executor runs one :class:`Call` and returns the tool's value or raises the tool's exception.
Timeouts and cancellation arrive as cancellation of the awaiting task; an executor then stops the
work where its backend can (cancel a task, kill a process, ``ray.cancel``) and re-raises. Where
the work cannot be stopped (a thread), it sets ``call.abandoned`` so the outcome says so.
The scheduler never learns how a backend works, only this contract.
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from shoal._deprecation import renamed
from shoal.exceptions import ConfigError
from shoal.merge import shown
from shoal.tools import Isolation, Tool

__all__ = ["Call", "Executor", "check_count", "new_call"]


@dataclass(slots=True, init=False)
class Call:
    """One attempt of one node: what to run, with which (already private) arguments.

    ``isolation`` names the backend the attempt runs on (``"inline"``, ``"thread"``,
    ``"process"`` or ``"ray"``). Its former name ``executor`` is still accepted as a keyword
    and readable as an attribute for one release, with a :class:`DeprecationWarning`.
    """

    pos: int
    node_id: str
    tool: Tool[..., Any]
    args: dict[str, Any]
    attempt: int
    isolation: Isolation
    timeout: float | None
    run_id: str
    abandoned: bool
    began_at: float | None
    lease: Any  # what prepare() reserved for this attempt (a worker, ...)
    #: W3C trace context (``traceparent``...) for a worker in another process to join the
    #: caller's trace; set only when shoal is instrumented (see :mod:`shoal.instrumentation`)
    trace: dict[str, str] | None
    held: str  # the limit that held the attempt back once it was ready, if one did
    #: where the attempt ran, when the backend knows it per call (a Ray node); see
    #: :attr:`Executor.runs_here` for backends whose calls all run on this machine
    where: str
    #: when the work really ended (``time.monotonic()``), for a backend that stamps it where the
    #: work ran (a pool thread): the outcome's end, not when the event loop got round to it
    ended_at: float | None
    #: called on the loop that ran the call, with the call, once its work really ended after
    #: it was abandoned (a pool thread returned): set by the scheduler, which holds the calls
    #: that share its resource keys until then; ``None``: nobody waits for that
    released: Callable[[Call], None] | None

    # Written out (not generated) for the deprecated ``executor=`` keyword; a test checks that
    # it sets every field. The scheduler creates one per attempt: keep it plain assignments.
    def __init__(self, pos: int, node_id: str, tool: Tool[..., Any], args: dict[str, Any],
                 attempt: int, isolation: Isolation | None = None,
                 timeout: float | None = None, run_id: str = "", abandoned: bool = False,
                 began_at: float | None = None, lease: Any = None,
                 trace: dict[str, str] | None = None, held: str = "", where: str = "",
                 ended_at: float | None = None, *, executor: Isolation | None = None,
                 released: Callable[[Call], None] | None = None) -> None:
        if executor is not None:
            isolation = _isolation_from_executor(isolation, executor)
        if isolation is None:
            raise TypeError("Call() needs isolation: the backend the attempt runs on "
                            "('inline', 'thread', 'process' or 'ray')")
        self.pos = pos
        self.node_id = node_id
        self.tool = tool
        self.args = args
        self.attempt = attempt
        self.isolation = isolation
        self.timeout = timeout
        self.run_id = run_id
        self.abandoned = abandoned
        self.began_at = began_at
        self.ended_at = ended_at
        self.lease = lease
        self.trace = trace
        self.held = held
        self.where = where
        self.released = released

    @property
    def executor(self) -> Isolation:
        """Deprecated: the former name of :attr:`isolation`."""
        renamed("Call.executor", "Call.isolation")
        return self.isolation


_new = object.__new__


def new_call(pos: int, node_id: str, tool: Tool[..., Any], args: dict[str, Any], attempt: int,
             isolation: Isolation, timeout: float | None, run_id: str, held: str) -> Call:
    """A :class:`Call` as the scheduler makes one per attempt: :meth:`Call.__init__`'s result.

    Built field by field, without ``__init__``'s defaults and its check of the deprecated
    keyword: less than half its cost, paid by every attempt of every run.
    """
    call = _new(Call)
    call.pos = pos
    call.node_id = node_id
    call.tool = tool
    call.args = args
    call.attempt = attempt
    call.isolation = isolation
    call.timeout = timeout
    call.run_id = run_id
    call.abandoned = False
    call.began_at = None
    call.ended_at = None
    call.lease = None
    call.trace = None
    call.held = held
    call.where = ""
    call.released = None
    return call


def _isolation_from_executor(isolation: Isolation | None, executor: Isolation) -> Isolation:
    """``isolation`` given by its former keyword, ``executor=``."""
    if isolation is not None:
        raise TypeError("Call() got both isolation and executor=; give isolation only "
                        "(executor is its former name)")
    renamed("Call(executor=...)", "Call(isolation=...)", stacklevel=4)
    return executor


class Executor(ABC):
    """A backend that runs calls. Create, ``await start()``, ``execute`` many, ``await close()``."""

    name: ClassVar[str]
    #: Whether :meth:`prepare` does anything (the driver skips the await when it does not).
    prepares: ClassVar[bool] = False
    #: Whether every call runs on this machine (its outcome's ``where`` is then this host's
    #: name); a backend that runs calls elsewhere sets ``call.where`` itself, or says nothing.
    runs_here: ClassVar[bool] = False
    #: Whether the backend calls ``call.released`` once the work of a call it abandoned
    #: (``call.abandoned``) really ends, stamping ``call.ended_at`` first. The scheduler holds
    #: what such a call holds (resource keys, an exclusive tool's turn, ``resource_limits``
    #: slots) until then; a backend that does not tell has its abandoned calls hold nothing.
    reports_end: ClassVar[bool] = False

    async def start(self) -> None:
        """Acquire resources (pools, connections). Called once before the first call."""
        return None

    async def prepare(self, call: Call) -> None:
        """Get ready to run ``call`` (e.g. reserve or start a worker) before its timeout starts.

        Waiting for a worker is not the call's own time, so the driver awaits this outside the
        timeout. A backend that reserves something here keeps it in ``call.lease`` and must
        release it in :meth:`execute`, whatever happens there.
        """
        return None

    @abstractmethod
    def execute(self, call: Call) -> Awaitable[Any]:
        """An awaitable that runs ``call`` and returns its value, raising what the tool raised.

        On cancellation, stop the work if the backend can, otherwise set
        ``call.abandoned = True``; then re-raise the cancellation. Backends that know when the
        work really began (a pool thread picking it up) set ``call.began_at``
        (``time.monotonic()``), so reported timings exclude time spent waiting for a worker;
        those that know when it ended set ``call.ended_at`` too, so they exclude the time the
        end waited for the event loop.
        (Plain ``async def`` implementations fit this signature.)
        """

    async def close(self) -> None:
        """Release resources; never waits for abandoned work."""
        return None

    async def leave(self) -> None:
        """Release what the running event loop holds, which is about to end; not the rest.

        For a backend shared by several event loops at once (threads, each running runs on
        one runtime): the loop leaving is done with it, the others go on.
        """
        return None


def check_count(name: str, count: object) -> None:
    """Refuse a count (of workers, of calls at once) that is not a whole number of at least 1.

    ``None`` passes (the caller's default). ``0`` is refused too, never read as "the
    default": it would run nothing, or everything.
    """
    if count is not None and (isinstance(count, bool) or not isinstance(count, numbers.Integral)
                              or count < 1):
        raise ConfigError(f"{name} must be a whole number, at least 1, got {shown(count)}")
