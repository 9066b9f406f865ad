"""The worker program of the process backend: ``python -m shoal.executors._worker CMD_FD REPLY_FD``.

The parent (:mod:`shoal.executors.process`) starts it with two pipes of its own (on Linux the
pool's template process forks it and calls :func:`main`, see :mod:`shoal.executors._template`;
elsewhere it runs as this command): commands arrive on ``CMD_FD`` and replies leave on
``REPLY_FD``, so whatever a tool prints to stdout or stderr cannot corrupt the protocol. Every
message is an 8-byte big-endian length followed by that many bytes of a pickled tuple (a
reply's length comes after a 4-byte mark, :data:`REPLY_MARK`: bytes a tool writes to the reply
pipe itself are told apart, and the worker is killed, rather than read as a length):

* parent -> worker, once: ``("config", sys_path, (memory, cpu_seconds, open_files),
  sandbox)``, where ``sandbox`` is ``"none"`` or ``"namespace"`` (see
  :mod:`shoal.executors._sandbox`); the worker answers ``("ready", pid)`` or ``("error",
  None, type, message, traceback)``;
* parent -> worker, per call: ``("call", tool_name, is_async, function_blob, args)``, where
  ``function_blob`` comes from :func:`~shoal.executors._shipping.dumps_callable`; when shoal
  is instrumented, a sixth field holds the call's W3C trace context (see
  :mod:`shoal.executors._tracing`);
* worker -> parent, per call: ``("ok", value)`` or ``("error", exception_blob | None, type,
  message, traceback)`` (the blob is ``None`` when the exception cannot be pickled), after an
  8-byte big-endian double, :data:`ENDED`: ``time.monotonic()`` here when the call's work
  ended (the parent's event loop may read the reply later, busy with other calls; a call's
  recorded end is when its work ended). The reply to a ``load`` command starts with one too.

Calls and ``ok`` replies are cloudpickled whole rather than holding separately pickled blobs:
with tens of megabytes of arguments or results, every copy counts.

The worker runs one call at a time, for as long as the parent keeps its end of the command pipe
open: end of file there (the parent closed the pool, or died) ends the worker, even mid-call,
and with it every process its tools started (it is their subreaper, see
:mod:`shoal.executors._reaper`).

The parent loads the replies with :func:`shoal.executors.results.load_result`: this side runs
the tools' code and is not trusted to run code there.

Imports stay few on purpose: starting a worker is paid for by the call that needs one.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no stubs: signal.py wraps it
import contextlib
import errno
import faulthandler
import gc
import os
import pickle
import resource
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

# Importing the package runs shoal/__init__; tools import it anyway, and paying for it here,
# before "ready", keeps it out of the first call's measured time.
# (imported here, not when the worker starts serving: by then the call's limits hold, and an
# open-files limit of 1 left no descriptor to read the module with)
from shoal.cli.pipes import Unbroken
from shoal.exceptions import ConfigError, SerializationError
from shoal.executors._errors import error_reply
from shoal.executors._orphans import start_orphan_reaper
from shoal.executors._results import (
    run_coroutine,
    stop_iteration_error,
    tool_interrupt_error,
    unasked_cancel_error,
    unawaited_result,
)
from shoal.executors._shipping import dumps, loads, loads_callable
from shoal.executors._tracing import joined

HEADER = struct.Struct(">Q")
#: A reply's header: :data:`REPLY_MARK`, then its length. A tool runs in this process and can
#: write to the reply pipe's descriptor too; the mark tells its bytes from a reply's.
REPLY_HEADER = struct.Struct(">4sQ")
REPLY_MARK = b"shR\x01"
#: The mark of a worker's last reply: its call lowered what no process raises again (a hard
#: limit, its priority), so the parent replaces it rather than give it another call.
LAST_REPLY_MARK = b"shR\x02"
ENDED = struct.Struct(">d")  # before a reply to a command: when its work ended, see above
#: The worker's exit status when a tool closed its pipes to the parent (``os.closerange``):
#: reserved, so that the parent can say so rather than "exit code 1".
CHANNEL_CLOSED_EXIT = 117
#: An agent process's exit status when its socket to the parent ended while the parent may
#: still be there (a tool shut the socket down or closed it): reserved, so that the parent
#: can say so rather than report the SIGKILL of the group it would otherwise end with.
AGENT_SOCKET_ENDED_EXIT = 118


def _channel_closed(exc: OSError) -> None:
    """Exit with :data:`CHANNEL_CLOSED_EXIT` if ``exc`` says a tool closed a pipe's descriptor."""
    if exc.errno == errno.EBADF:
        os._exit(CHANNEL_CLOSED_EXIT)


def read_message(stream: IO[bytes]) -> bytes | None:
    """The next message's bytes, or ``None`` at end of file (the parent is gone)."""
    try:
        header = stream.read(HEADER.size)
        if len(header) < HEADER.size:
            return None
        (size,) = HEADER.unpack(header)
        body = stream.read(size)
    except OSError as exc:
        _channel_closed(exc)
        raise
    return body if len(body) == size else None


def write_message(stream: IO[bytes], body: bytes, *, ended: float | None = None,
                  last: bool = False) -> None:
    """Send one message, after ``ended`` if given; exit quietly if the parent stopped listening.

    ``last``: marked as this worker's last reply (see :data:`LAST_REPLY_MARK`). The stamp is
    written on its own, not joined to ``body``: a reply may be many megabytes.
    """
    mark = LAST_REPLY_MARK if last else REPLY_MARK
    try:
        if ended is None:
            stream.write(REPLY_HEADER.pack(mark, len(body)))
        else:
            stream.write(REPLY_HEADER.pack(mark, ENDED.size + len(body)))
            stream.write(ENDED.pack(ended))
        stream.write(body)
        stream.flush()
    except BrokenPipeError:
        os._exit(0)
    except OSError as exc:
        _channel_closed(exc)
        raise


def apply_limits(memory: int | None, open_files: int | None) -> None:
    """Lower this process's memory and file limits (soft = hard, so a tool cannot lift them)."""
    for which, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_NOFILE, open_files)):
        if value is not None:
            _, hard = resource.getrlimit(which)
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)  # a hard limit can be lowered, never raised
            resource.setrlimit(which, (value, value))


def cpu_budget(seconds: int | None) -> None:
    """Let the next call use ``seconds`` of CPU time from now (``None``: no limit).

    ``RLIMIT_CPU`` counts the process's whole life, and a worker serves many calls, so the
    limit is a soft one moved forward per call: past it the kernel sends SIGXCPU, whose default
    action ends the process. The hard limit stays open so that it can be moved again.
    """
    if seconds is None:
        return
    # SIGXCPU's default action is the limit: an earlier call's handler for it (or its
    # SIG_IGN) would let this one run on past its limit
    signal.signal(signal.SIGXCPU, signal.SIG_DFL)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = int(usage.ru_utime + usage.ru_stime) + 1
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (used + seconds, hard))


MAX_FUNCTIONS = 256  # loaded tool functions kept per worker (they are few in practice)
_functions: dict[bytes, Callable[..., Any]] = {}


def function_for(fn_blob: bytes) -> Callable[..., Any]:
    """The tool function behind ``fn_blob``, loaded (importing its module) once per worker."""
    fn = _functions.get(fn_blob)
    if fn is None:
        if len(_functions) >= MAX_FUNCTIONS:
            _functions.clear()
        try:
            fn = _functions[fn_blob] = loads_callable(fn_blob)
        except OSError as exc:
            raise short_of_files(exc) from None
        if _start_state is not None:  # what importing the tool's module set up (an
            note_state()  # os.environ.setdefault at its top) stays for the calls that follow
    return fn


#: ``(open_files, descriptors held)`` when the worker has an ``open_files`` limit: the limit
#: given, and how many descriptors (the lowest numbers) the worker held when it was set.
_files_limit: tuple[int, int] | None = None


def short_of_files(exc: OSError) -> BaseException:
    """``exc``, or what to change if it is the ``open_files`` limit stopping the tool's load.

    ``RLIMIT_NOFILE`` caps the worker's descriptors, its own included: a value that leaves
    the import of the tool's module none to open fails it with ``EMFILE``, which, as it is,
    reads as the tool's own error.
    """
    import errno

    if _files_limit is None or exc.errno != errno.EMFILE:
        return exc
    limit, held = _files_limit
    return ConfigError(
        f"limits open_files={limit} leaves the worker process too few file descriptors to "
        f"load the tool ({type(exc).__name__}: {exc}): the limit counts the worker's own, "
        f"{held} held before the tool's module is imported (its standard streams and pipes "
        "to shoal), and the files the import opens; give a larger open_files (64 leaves "
        "room for both), or none")


def handle(body: bytes, cpu_seconds: int | None) -> bytes:
    """Answer one message: ``("load", fn_blob)`` ahead of calls, or ``("call", ...)``."""
    try:
        message = loads(body)
    except BaseException as exc:
        return error_reply(SerializationError(
            f"a call could not be unpickled in the worker process: {type(exc).__name__}: {exc}"))
    if message[0] == "load":
        try:
            function_for(message[1])
        except BaseException as exc:  # the tool's module failed to import here
            return error_reply(exc)
        return pickle.dumps(("ok", None), pickle.HIGHEST_PROTOCOL)
    return run_call(message, cpu_seconds)


def run_call(message: tuple[Any, ...], cpu_seconds: int | None) -> bytes:
    """Run one call; every outcome, including an unpicklable result, becomes a reply."""
    _, name, is_async, fn_blob, args, *traced = message
    del message  # the args are referenced once, so they can be freed before the reply
    try:
        fn = function_for(fn_blob)
        cpu_budget(cpu_seconds)
        with joined(traced[0] if traced else None):  # the caller's trace, when instrumented
            value = run_coroutine(fn(**args)) if is_async else fn(**args)
    except BaseException as exc:  # SystemExit too: the tool failed, the worker lives on
        if isinstance(exc, MemoryError):  # what the tool holds still fills the memory limit:
            import traceback  # its frames' locals go (their lines stay), or the reply fails

            traceback.clear_frames(exc.__traceback__)
        if _cancelled(exc):  # nothing cancels a call here (a stop kills the worker): the
            return error_reply(unasked_cancel_error(name, exc))  # tool's own doing
        if isinstance(exc, StopIteration):  # a sync tool's: the error threads give it
            return error_reply(stop_iteration_error(exc))
        if isinstance(exc, KeyboardInterrupt):  # the tool's: no Ctrl-C reaches a worker (it
            return error_reply(tool_interrupt_error(name, exc))  # has a session of its own)
        if _files_limit is not None:  # the tool's files reached the limit: say what to give
            from shoal.limits import files_limit_error

            limit, own = _files_limit
            reached = files_limit_error(exc, limit, own, f"the worker process running tool "
                                        f"{name!r}", "the files its tools open", 64)
            if reached is not None:
                return error_reply(reached)
        return error_reply(exc)
    del args  # free large arguments before the result is pickled
    unawaited = unawaited_result(name, value)  # a coroutine would not even pickle
    if unawaited is not None:
        return error_reply(unawaited)
    try:
        return dumps(("ok", value), f"the result of tool {name!r}")
    except BaseException as exc:  # a __reduce__ raising SystemExit too: the worker lives on
        return error_reply(exc)


def _cancelled(exc: BaseException) -> bool:
    """Whether ``exc`` is asyncio's ``CancelledError`` (asyncio is imported only if a tool did).

    Without asyncio loaded, nothing could have raised one; a worker for sync tools never
    pays for the import.
    """
    asyncio = sys.modules.get("asyncio")
    return asyncio is not None and isinstance(exc, asyncio.CancelledError)


def flush_output() -> None:
    """Flush what the tool printed: a worker killed later would lose buffered output."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a tool closed or replaced it: nothing to save
            stream.flush()


def watch_parent(cmd_fd: int) -> None:
    """Exit as soon as the command pipe hangs up, even while a tool is running.

    Polling for POLLHUP alone (no POLLIN) leaves the data for the main thread to read.
    """
    import select

    poller = select.poll()
    poller.register(cmd_fd, 0)
    while True:
        for _, events in poller.poll():
            if events & select.POLLNVAL:  # a tool closed the descriptor: the parent is here
                os._exit(CHANNEL_CLOSED_EXIT)
            if events & (select.POLLHUP | select.POLLERR):
                exit_with_group()


def exit_with_group(code: int | None = None) -> None:
    """Exit now, taking along whatever the running tool started.

    The parent is gone (a forced exit, ``kill -9``): nobody else will kill this worker's
    process group, so processes a tool started would otherwise outlive it. Only a worker that
    leads its own group (the parent starts it in a session of its own) may kill the group.
    ``code``: kill the rest of the group and exit with it (a parent still there reads it),
    rather than end by the group's ``SIGKILL``.
    """
    from shoal.executors._reaper import kill_group_but_me, kill_tree

    kill_tree(os.getpid(), include_root=False)  # those that left the group too
    if os.getpgrp() == os.getpid():
        if code is not None:
            kill_group_but_me()
            os._exit(code)
        with contextlib.suppress(OSError):
            os.killpg(os.getpid(), signal.SIGKILL)  # this process included: the exit
    os._exit(code or 0)


def start_watchdog(cmd_fd: int) -> None:
    """Run :func:`watch_parent` on a small daemon thread (started after the limits apply)."""
    previous = threading.stack_size(256 * 1024)  # it only waits: keep its address space small
    try:
        threading.Thread(target=watch_parent, args=(cmd_fd,), name="shoal-watchdog",
                         daemon=True).start()
    finally:
        threading.stack_size(previous)


def configure(body: bytes, pipes: tuple[int, int]) -> int | None:
    """Enter the sandbox if asked, adopt the parent's import path and apply the limits.

    Returns the per-call CPU budget. Runs while the worker has a single thread (entering a
    user namespace requires it).
    """
    from shoal.executors._reaper import become_subreaper
    from shoal.executors._sandbox import enter, split

    _, parent_path, (memory, cpu_seconds, open_files), sandbox = pickle.loads(body)
    if sandbox == "namespace":
        enter(pipes)  # from here on, this is process 1 of the sandbox's PID namespace
    elif become_subreaper():
        split(pipes)  # the parent's child stays as a stand-in: tools cannot start its siblings
    become_subreaper()  # orphans of the tools' processes stay below this worker
    sys.path[:] = parent_path  # import exactly what the parent would
    if open_files is not None:
        global _files_limit  # set once per worker, before any call
        from shoal.limits import lowest_free_descriptor

        _files_limit = (open_files, lowest_free_descriptor())  # those below: the worker's
    apply_limits(memory, open_files)
    return cpu_seconds  # type: ignore[no-any-return]


#: What every call starts with, as the worker was when it said "ready" or last imported a
#: tool's module: its working directory, file mode mask and environment (see
#: :func:`restore_state`).
_start_state: tuple[str, int, Any, dict[bytes, bytes]] | None = None

#: The rest of that state, for :func:`restore_imports` and :func:`restore_signals`: the
#: ``sys.path`` list and a copy of its entries, a copy of ``sys.modules``, the signal numbers
#: and their handlers (as ``_signal`` gives them: its ``getsignal`` takes a microsecond for
#: them all, ``signal.getsignal`` fifty, turning each into an enum) and the blocked signals.
_start_path: tuple[list[str], list[str]] = ([], [])
_start_modules: dict[str, Any] = {}
_signals: list[int] = []
_start_handlers: list[Any] = []
_start_mask: set[Any] = set()


def note_state() -> None:
    """Note the state :func:`restore_state` gives each call back (once, before "ready")."""
    global _start_state
    mask = os.umask(0o022)  # reading the mask means setting it: set it back at once
    os.umask(mask)
    try:
        cwd = os.getcwd()
    except OSError:  # an import removed it: keep the one noted before
        cwd = _start_state[0] if _start_state is not None else "/"
    _start_state = (cwd, mask, os.environ, dict(_environ_data()))
    global _streams
    _streams = tuple(_file_of(fd) for fd in (0, 1, 2))
    note_imports_and_signals()


def note_imports_and_signals() -> None:
    """Note what :func:`restore_imports`, :func:`restore_signals` and the limits give back."""
    global _start_path, _start_modules, _signals, _start_handlers, _start_mask
    global _start_limits, _start_priority
    _start_path = (sys.path, list(sys.path))
    _start_modules = dict(sys.modules)
    _signals = [int(number) for number in signal.valid_signals()]
    _start_handlers = list(map(_signal.getsignal, _signals))
    _start_mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    _start_limits = list(map(resource.getrlimit, _RESOURCES))
    _start_priority = os.getpriority(os.PRIO_PROCESS, 0)
    global _start_interpreter
    _start_interpreter = _interpreter()


def _interpreter() -> tuple[Any, ...]:
    """The interpreter's settings a call may change: see :func:`restore_interpreter`."""
    return (sys.getrecursionlimit(), sys.gettrace(), sys.getprofile(), threading.gettrace(),
            threading.getprofile(), gc.isenabled())


#: :func:`_interpreter` when :func:`note_state` last ran
_start_interpreter: tuple[Any, ...] = ()


def restore_interpreter() -> None:
    """Give the next call the worker's recursion limit, trace and profile hooks and collector.

    A tool that lowers ``sys.setrecursionlimit`` would fail a later call's reply (a result
    nested deeper cannot be pickled); one that sets a trace or profile hook (``sys.settrace``,
    a coverage or profiling tool left running) would have it called on every line of later
    calls; one that turns the garbage collector off would leave later calls' cycles unfreed.
    """
    now = _interpreter()
    if now == _start_interpreter:
        return
    limit, trace, profile, thread_trace, thread_profile, collecting = _start_interpreter
    with contextlib.suppress(RecursionError, ValueError):
        sys.setrecursionlimit(limit)
    sys.settrace(trace)
    sys.setprofile(profile)
    threading.settrace(thread_trace)
    threading.setprofile(thread_profile)
    if collecting != gc.isenabled():
        (gc.enable if collecting else gc.disable)()


#: The resource limits a later call would meet (its files, memory, stack, file sizes,
#: processes and CPU time), and their values and the process's priority (its niceness) when
#: :func:`note_state` last ran. Not every limit: each look is a system call, on every call's
#: way to its reply (these seven and the priority: a few microseconds).
_RESOURCES = [getattr(resource, f"RLIMIT_{name}")
              for name in ("NOFILE", "AS", "DATA", "STACK", "FSIZE", "NPROC", "CPU")
              if hasattr(resource, f"RLIMIT_{name}")]
_start_limits: list[tuple[int, int]] = []
_start_priority = 0


def restore_limits(cpu_seconds: int | None) -> bool:
    """Give the next call the worker's resource limits and priority; ``False`` if it cannot.

    A tool that lowers its process's limit on open files (``resource.setrlimit``), its memory
    or its priority (``os.nice``) would otherwise leave them to whichever call the worker
    runs next: that call ran out of files at the earlier tool's 16, or ran slow. A soft
    limit is put back; a hard limit or a priority lowered are lowered for good (only
    privileged processes raise them), and the worker then serves no more calls.

    The soft CPU limit of a worker with ``cpu_seconds`` is the next call's to set (see
    :func:`cpu_budget`): put back, it could fall below the CPU time used since.
    """
    kept = True
    now = list(map(resource.getrlimit, _RESOURCES))
    if now != _start_limits:
        for which, was, is_ in zip(_RESOURCES, _start_limits, now, strict=True):
            if which == resource.RLIMIT_CPU and cpu_seconds is not None:
                was = (is_[0], was[1])
            if is_ != was:
                try:
                    resource.setrlimit(which, was)
                except (ValueError, OSError):  # a hard limit lowered: it stays so
                    kept = False
    if os.getpriority(os.PRIO_PROCESS, 0) != _start_priority:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, _start_priority)
        except OSError:  # lowered (niced): only a privileged process raises it again
            kept = False
    return kept


#: What the standard descriptors 0, 1 and 2 named when :func:`note_state` last ran (the
#: device and inode of each, ``None`` if it was closed).
_streams: tuple[tuple[int, int] | None, ...] = ()


def _file_of(fd: int) -> tuple[int, int] | None:
    """The device and inode descriptor ``fd`` names, or ``None`` when it is closed."""
    try:
        info = os.fstat(fd)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _restore_streams() -> None:
    """Point a standard descriptor a call closed or replaced at ``/dev/null``.

    What it named is gone (a tool's ``os.close(1)``; or a file the tool opened took its
    number): later calls' prints would fail with ``EBADF``, or write into that file.
    """
    for fd, was in enumerate(_streams):
        if was is not None and _file_of(fd) != was:
            with contextlib.suppress(OSError):
                null = os.open(os.devnull, os.O_RDWR)
                if null != fd:
                    os.dup2(null, fd)
                    os.close(null)


def _environ_data() -> dict[bytes, bytes]:
    """``os.environ``'s own bytes: comparing them takes a microsecond, its text 70 times that."""
    return os.environ._data  # type: ignore[attr-defined,no-any-return]


def restore_state() -> None:
    """Give the next call the worker's state as it was noted (see :func:`note_state`).

    That is its directory, mask, environment, standard streams, import path and modules,
    signal handlers and interpreter settings (see :func:`restore_imports`,
    :func:`restore_signals` and :func:`restore_interpreter`).

    A standard descriptor a call closed or replaced (``os.close(1)``) names ``/dev/null``
    from then on: what it named is gone.

    A worker serves many calls: a tool's ``os.chdir`` (a build tool's, say, or into a
    temporary directory it then removed), its ``os.environ`` or ``os.umask`` changes, or a
    ``sys.stdout`` it replaced and never put back would otherwise meet whichever call the
    worker runs next, so that a relative path named another file, ``os.getcwd()`` failed or
    a print went nowhere, depending on which worker a call got.
    """
    assert _start_state is not None
    cwd, mask, environ, data = _start_state
    os.umask(mask)
    try:
        here: str | None = os.getcwd()
    except OSError:  # the tool removed the directory it moved to
        here = None
    if here != cwd:
        with contextlib.suppress(OSError):  # a tool removed it: nothing to go back to
            os.chdir(cwd)
    if os.environ is not environ:  # a tool replaced the mapping itself: its own again (the
        os.environ = environ  # noqa: B003  C level is put back from it just below)
    if _environ_data() != data:
        os.environ.clear()  # through os.environ: putenv/unsetenv keep the C level in step
        os.environ.update({os.fsdecode(k): os.fsdecode(v) for k, v in data.items()})
    for name in ("stdin", "stdout", "stderr"):
        if getattr(sys, name) is not getattr(sys, f"__{name}__"):
            setattr(sys, name, getattr(sys, f"__{name}__"))
    _restore_streams()
    restore_imports()
    restore_signals()
    restore_interpreter()


def restore_imports() -> None:
    """Give the next call the worker's ``sys.path``, and the modules a call replaced or removed.

    A tool that appends to ``sys.path`` (or replaces it) would change what every later call on
    the worker imports; one that puts its own object in ``sys.modules`` (a fake ``json``, say)
    or removes an entry would change what their imports find. A module a call imported for
    the first time stays: keeping imports between calls is what a worker is for, and nothing
    that was there before changed.
    """
    path, entries = _start_path
    if sys.path is not path:
        sys.path = path
    if path != entries:
        path[:] = entries
    try:
        same = _start_modules.items() <= sys.modules.items()  # 4 us for 250 modules
    except Exception:  # an entry whose == raises: put every one back
        same = False
    if not same:
        for name, module in _start_modules.items():
            if sys.modules.get(name) is not module:
                sys.modules[name] = module


def restore_signals() -> None:
    """Give the next call the worker's signal handlers and mask, and no alarm set.

    A tool that installs a ``SIGTERM`` or ``SIGINT`` handler (or ignores one), blocks a
    signal or sets an alarm would otherwise change how the worker meets a later call's
    stop, interrupt or timer: an alarm left by one call kills the worker during another,
    which then fails as a crash of a tool that did nothing wrong.
    """
    if list(map(_signal.getsignal, _signals)) != _start_handlers:
        for number, handler in zip(_signals, _start_handlers, strict=True):
            if handler is not None and _signal.getsignal(number) != handler:
                with contextlib.suppress(OSError, ValueError):  # SIGKILL, SIGSTOP: never set
                    signal.signal(number, handler)
    if signal.pthread_sigmask(signal.SIG_BLOCK, ()) != _start_mask:
        signal.pthread_sigmask(signal.SIG_SETMASK, _start_mask)
    if signal.getitimer(signal.ITIMER_REAL) != (0.0, 0.0):
        signal.setitimer(signal.ITIMER_REAL, 0)


def guard_streams() -> None:
    """Put :class:`~shoal.cli.pipes.Unbroken` in front of ``sys.stdout`` and ``sys.stderr``.

    A worker writes to the parent's standard output and error, often a pipe whose reader may
    leave while it serves (``shoal run plan | head -1``): a tool's print then raised
    ``BrokenPipeError``, failing its call (and its retries ran it again), where the parent
    drops its own writes. The wrappers are ``sys.__stdout__`` and ``sys.__stderr__`` too:
    :func:`restore_state` gives a call those back.
    """
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, Unbroken):
            setattr(sys, name, Unbroken(stream))
            setattr(sys, f"__{name}__", getattr(sys, name))


def main(argv: list[str]) -> int:
    """Serve calls until the parent closes the command pipe."""
    faulthandler.enable()  # a crash prints the Python stack to stderr before the worker dies
    cmd_fd, reply_fd = int(argv[1]), int(argv[2])
    commands = os.fdopen(cmd_fd, "rb")
    replies = os.fdopen(reply_fd, "wb")
    config = read_message(commands)
    if config is None:
        return 0
    try:
        cpu_seconds = configure(config, (cmd_fd, reply_fd))
    except Exception as exc:
        write_message(replies, error_reply(exc))
        return 1
    start_watchdog(cmd_fd)
    start_orphan_reaper()  # a subreaper: orphans its tools leave would stay zombies below it
    guard_streams()
    note_state()
    me = os.getpid()
    write_message(replies, pickle.dumps(("ready", me)))
    while (body := read_message(commands)) is not None:
        reply = handle(body, cpu_seconds)
        if os.getpid() != me:  # a fork the tool made (os.fork(), no exec) returned, or raised
            flush_output()  # SystemExit, into this loop: its reply and its reading the next
            os._exit(0)  # command would be taken for the worker's (another call's result)
        ended = time.monotonic()  # not after flushing what the tool printed: the parent's work
        del body  # free a large call before sending a large reply
        flush_output()
        last = not restore_limits(cpu_seconds)  # before the reply, which says if it is the last
        write_message(replies, reply, ended=ended, last=last)
        del reply
        if last:  # the parent replaces this worker: nothing more to serve
            return 0
        restore_state()  # after the reply: the caller need not wait for it
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
