"""A check every backend's result passes: a tool must return its value, not work to await.

Used where results come back (the driver, for inline and thread calls) and where they are sent
back from another process (the process and Ray workers, before pickling, since a coroutine
does not pickle). Only the standard library and shoal's exceptions: workers import it cheaply.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import io
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import Any

from shoal.exceptions import ShoalError, ToolDefinitionError

__all__ = [
    "LEFT_TASKS_GRACE", "PLAIN_RESULTS", "call_on_thread", "finished_result_type",
    "run_coroutine", "stop_iteration_error",
    "unasked_cancel_error", "unawaited_result",
]

#: Result types that are certainly not awaitables: checked by exact type first, as most are
#: these (the driver checks them itself, saving a call per attempt). Grown only by
#: :func:`finished_result_type`.
PLAIN_RESULTS: set[type] = {str, int, float, bool, bytes, type(None), dict, list, tuple}
_PLAIN = PLAIN_RESULTS


def finished_result_type(kind: type) -> None:
    """Note that a value of exactly type ``kind`` is a finished result, never work to await.

    For shoal's own result types that many calls return (a model turn's reply): their ends
    take the driver's plain path, as a ``str``'s do, instead of :func:`unawaited_result`'s
    checks and a result object each. ``kind`` must define neither ``__await__`` nor
    ``__next__``; its subclasses are checked as any other value is.
    """
    if _unawaited_kind(kind):
        raise TypeError(f"{kind.__qualname__} is no finished result: its values are awaited "
                        "or iterated")
    _PLAIN.add(kind)


def _unawaited_kind(kind: type) -> bool:
    """Whether values of ``kind`` may be work to await or an iterator (see _unawaited)."""
    return (issubclass(kind, (Iterator, asyncio.Future, concurrent.futures.Future))
            or hasattr(kind, "__await__") or hasattr(kind, "__anext__"))


def unawaited_result(tool: str, value: Any) -> ToolDefinitionError | None:
    """The error for a result that is work still to be done, or ``None`` for a real result.

    A tool that forgets an ``await`` returns a coroutine (or a task, a future, an async
    generator) instead of its value: recorded as ``ok``, a model would be sent ``<coroutine
    object ...>``. A generator or another one-shot iterator would be read by the first of its
    dependents only. Such a call fails instead, with a message that says what went wrong. A
    coroutine or generator is closed (so Python does not warn that it was never awaited) and
    a task or future is cancelled.
    """
    if type(value) in _PLAIN:
        return None
    what = _unawaited(value)
    if what is None:
        return None
    return ToolDefinitionError(f"tool {tool!r} returned {what}")


# A generator (or a map, zip, iter(...)) is read once: a second call given it as an argument
# would get nothing, silently, and it cannot be journaled. A file object is left alone.
_ONCE = "{}; return a list instead (e.g. list(...)): it can be read only once"


def _unawaited(value: Any) -> str | None:
    """What kind of unfinished work ``value`` is (closing or cancelling it), or ``None``."""
    if inspect.iscoroutine(value):
        value.close()
        return "a coroutine; did you forget 'await'?"
    if isinstance(value, asyncio.Future | concurrent.futures.Future):
        with suppress(RuntimeError):  # a future of a loop that is closed by now
            value.cancel()
        kind = "an asyncio task" if isinstance(value, asyncio.Task) else "a future"
        return f"{kind}; did you forget 'await'?"
    if inspect.isasyncgen(value):
        return ("an async generator; return a list instead (e.g. "
                "[item async for item in ...])")
    if inspect.isgenerator(value):
        value.close()
        return _ONCE.format("a generator")
    if isinstance(value, Iterator) and not isinstance(value, io.IOBase):
        return _ONCE.format(f"a one-shot iterator ({type(value).__qualname__})")
    if inspect.isawaitable(value):
        return f"an awaitable ({type(value).__qualname__}); did you forget 'await'?"
    return None


def unasked_cancel_error(tool: str, exc: BaseException) -> ToolDefinitionError:
    """The error a call fails with when its tool raised ``CancelledError`` nobody asked for.

    Raised by the tool itself, or from a task or future something else cancelled: not a
    cancellation of the call, which would end it ``cancelled`` (and never retried). The same
    on every backend: the driver decides it for calls on its loop and threads, a worker
    process for its own (where nothing cancels a call: stopping one kills the process).
    ``exc`` is kept as the cause, so the traceback shows where it came from.
    """
    error = ToolDefinitionError(
        f"tool {tool!r} raised CancelledError, but nothing cancelled its call (it raised one "
        "itself, or awaited a task or future that something else cancelled); catch it in the "
        "tool, or raise an ordinary exception to fail the call")
    error.__cause__ = exc
    return error


def tool_interrupt_error(tool: str, exc: BaseException) -> ToolDefinitionError:
    """The error a call fails with when its tool raised ``KeyboardInterrupt`` off the main thread.

    Python delivers Ctrl-C to the main thread alone, where shoal stops the run for it: one
    raised on a worker thread, in a worker process, on a Ray worker or on a run's loop off
    the main thread (see ``Driver._start``) is the tool's own raise
    (or a library's it called), not a person's interrupt. It fails that call, the same on
    every backend, and the run goes on; retries apply as to any failure. ``exc`` is kept as
    the cause, so the traceback shows where it came from.
    """
    error = ToolDefinitionError(
        f"tool {tool!r} raised KeyboardInterrupt away from the main thread (on a worker thread "
        "or process), where no Ctrl-C reaches it, so it is the tool's own raise and fails the "
        "call; raise an ordinary exception to fail a call (a Ctrl-C still stops the run)")
    error.__cause__ = exc
    return error


def value_interrupt_error(what: str, exc: BaseException) -> ShoalError:
    """The error a call fails with when ``what`` raised ``KeyboardInterrupt`` off the main thread.

    ``what`` is user code run by shoal itself, not by a tool: a board's merge function, a
    value's own ``__deepcopy__``. On a run's loop off the main thread no Ctrl-C reaches it
    (see :func:`tool_interrupt_error`), so the raise is that code's own: it fails the call
    concerned, recorded, and the run goes on. ``exc`` is kept as the cause.
    """
    error = ShoalError(
        f"{what} raised KeyboardInterrupt on a run's loop away from the main thread, where no "
        "Ctrl-C reaches it, so it is that code's own raise and fails the call; raise an "
        "ordinary exception there instead (a Ctrl-C still stops the run)")
    error.__cause__ = exc
    return error


def call_on_thread(fn: Callable[..., Any], args: dict[str, Any]) -> Any:
    """``fn(**args)`` for a thread whose result an asyncio future will carry.

    A future refuses ``StopIteration`` (it "interacts badly with generators"): set on one, it
    is lost and the awaiting call waits forever. A tool that raises it fails instead, with the
    ``RuntimeError`` Python itself gives a coroutine that raises it, chained to the original.
    """
    try:
        return fn(**args)
    except StopIteration as exc:
        raise stop_iteration_error(exc) from exc


def stop_iteration_error(exc: StopIteration) -> RuntimeError:
    """The error a tool that raised ``exc`` fails with (see :func:`call_on_thread`), chained."""
    try:
        raise RuntimeError(f"the tool raised StopIteration({exc.value!r})") from exc
    except RuntimeError as error:  # raised, so that it has a traceback as call_on_thread's
        return error


#: Seconds an async tool's event loop in a worker process waits, once the tool has ended, for
#: the tasks it left behind to end after their cancellation (and for its default executor's
#: threads): as long as a run's loop waits for its own (``ABANDON_GRACE``).
LEFT_TASKS_GRACE = 5.0


def run_coroutine(coroutine: Any) -> Any:
    """``asyncio.run(coroutine)`` for an async tool in a worker, less two ways to hang.

    Less its Ctrl-C handler: on its way out, ``asyncio.run`` looks its handler up with
    ``signal.getsignal``, which on Python 3.11 formats it with ``repr``: that reprs the task,
    so the tool's exception, and an exception whose ``__repr__`` raises was replaced by that
    error. A Ctrl-C here raises ``KeyboardInterrupt`` as it does in a sync tool.

    And with a bound on its cleanup: ``asyncio.run`` waits for every task the tool left to
    end after their cancellation, and for every thread of the default executor, for ever. A
    task that ignores its cancellation (``except CancelledError: pass`` in a loop) would hold
    a call whose tool had returned until it timed out (failed: ``timed_out``, its value lost)
    or for ever. They get :data:`LEFT_TASKS_GRACE` seconds; the loop is closed without those
    that go on.
    """
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # as asyncio.run's runner does
    try:
        return loop.run_until_complete(coroutine)
    finally:
        try:  # what asyncio.run does after the main task: end what the tool left running
            _end_left_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            shutting = loop.create_task(loop.shutdown_default_executor())
            loop.run_until_complete(asyncio.wait([shutting], timeout=LEFT_TASKS_GRACE))
            if not shutting.done():  # a thread that does not end: it is not waited for
                shutting.cancel()
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _end_left_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the tasks left on ``loop``; wait for them, :data:`LEFT_TASKS_GRACE` at most."""
    left = asyncio.all_tasks(loop)
    if not left:
        return
    for task in left:
        task.cancel()
    loop.run_until_complete(asyncio.wait(left, timeout=LEFT_TASKS_GRACE))
    for task in left:  # their errors are the tool's leftovers: retrieved, as gather() would
        if task.done() and not task.cancelled():
            task.exception()
