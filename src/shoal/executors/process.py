"""The process backend: each call runs in a worker process from a pool that shoal manages itself.

Why not :class:`concurrent.futures.ProcessPoolExecutor`: when one of its workers dies (a
segfault, ``os._exit``, the kernel's OOM killer) the whole pool is marked broken and every call
in it fails, and there is no way to kill the single worker running a call that timed out. Here
every worker is a subprocess of its own, so one can be killed, or die, without touching the rest.

**Workers.** On Linux (5.3 or later) a worker is a fork of the pool's *template*: a process
started once, lazily with the pool's first worker, as a fresh interpreter (never a fork of this
threaded parent), that has imported what workers need and never starts a thread; a new worker
is ready in milliseconds instead of the ~0.2 s a fresh interpreter spends importing. See
:mod:`shoal.executors._template` (a template that dies is started again; killing it kills its
workers). Elsewhere, or with ``start_method="spawn"``, a worker is ``python -m
shoal.executors._worker``, started with :class:`subprocess.Popen` and watched through a pidfd
(:func:`asyncio.create_subprocess_exec` where there are no pidfds). Either way it
starts lazily when a call needs one, runs one call at a time and is reused; idle workers are
kept until :meth:`ProcessExecutor.close`, which stops the template too. Calls travel over two
pipes of their own (never stdin/stdout, so a tool's prints cannot corrupt them) as
length-prefixed pickles; see :mod:`shoal.executors._worker` for the messages. The parent reads
and writes them through asyncio pipe transports, never blocking the event loop. Sync and async
tools both run there (async ones under ``asyncio.run``); module state a tool keeps lasts as
long as its worker.

**Profiles.** Limits lowered in a process cannot be raised again, so workers are pooled by
*profile*: the tool's :class:`~shoal.limits.ProcessLimits` and the environment variable names it
may see. At most ``max_workers`` workers live at once across all profiles; when a profile needs
one and the cap is reached, an idle worker of another profile is stopped to make room.

**Environment.** A worker sees only an allow-list of the parent's environment,
:data:`ALLOWED_ENV` (``PATH``, ``HOME``, ``USER``, ``LOGNAME``, ``LANG``, ``LANGUAGE``, ``LC_*``,
``TZ``, ``TMPDIR``, ``TEMP``, ``TMP``, ``PYTHONPATH``, ``PYTHONHASHSEED``, ``VIRTUAL_ENV``,
``SYSTEMROOT``), plus the names the runtime passes (``Runtime(pass_env=[...])``) and those the
tool asks for (``@tool(env=[...])``). Everything else, API keys and cloud credentials included,
is absent. Workers import from the parent's ``sys.path``. The template starts with the
allow-list and ``pass_env`` alone, and each fork takes its own profile's environment before
any tool runs. Forks share the template's hash seed and memory layout, as in any fork server.

**Limits.** ``memory`` is ``RLIMIT_AS`` (address space: an allocation past it raises
``MemoryError`` in the tool; an idle worker already takes about 100 MB of it, so leave room),
``open_files`` is ``RLIMIT_NOFILE``; both are set once, when the worker starts.
``cpu_seconds`` (``RLIMIT_CPU``) is granted afresh to each call, since the kernel counts a
process's whole life: a call past it is killed by ``SIGXCPU`` (a soft limit, so that it can be
moved per call: it guards against runaway code, not against a tool that catches the signal).

**Crashes.** A worker that dies during a call fails that call with
:class:`~shoal.exceptions.WorkerCrashedError` naming the cause (``exit code 1``, ``killed by
signal SIGSEGV (segmentation fault)``...) and is replaced on demand. A tool whose calls killed
their worker :data:`QUARANTINE_AFTER` times in one run is quarantined: its further calls in that
run fail at once with :class:`~shoal.exceptions.ToolQuarantinedError`.

**Timeouts and cancellation** kill the worker (``SIGKILL`` to its process group, so processes
the tool started go too), reap it and re-raise. Workers run in sessions of their own, out of
reach of a terminal's Ctrl-C, which is the parent's to handle. Workers also
exit on their own when their command pipe closes, killing their process group as they go, so a
parent that dies (``kill -9``, a forced exit) leaves no orphans, not even processes a tool
started; a finalizer kills the workers of a pool that was never closed. Workers start one at a
time (a spawn blocks the event loop until the child has exec'd; the template forks one at a
time), so a Ctrl-C or a cancellation is handled between starts rather than after all of them.
A template exits when its socket to the parent hangs up, so it is no orphan either. POSIX only.

**Event loops.** A worker's pipes and the template's socket are served by the event loop that
opened them, so a pool used by several loops at once (threads, each running runs on one
runtime) keeps a *lane* per loop: its workers, its template, what its callers wait on. Each
call runs in a worker of its own loop and its result comes back there; ``max_workers`` counts
the workers of every loop, and a loop that needs room has another loop stop one of its idle
workers (on that loop; from here if it has stopped). :meth:`ProcessExecutor.leave` ends a
loop's lane as the loop ends, :meth:`ProcessExecutor.close` every lane (each on its own loop
while it runs), and the lane of a loop that closed without either is ended from the next loop
to use the pool.

**Pids.** A worker is signalled through a :class:`~shoal.executors._process_ref.ProcessRef`
(a pidfd, or its start time where there are none), never by its bare pid: a pid that was
reaped may belong to another process by then. A worker that has ended stays unreaped (a
zombie: the template keeps a forked one, this module a spawned one) until the pool is done
with it, so that its process group, whose id is its pid, is still its own when it is killed.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import pickle
import select
import signal
import site
import socket
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

from shoal.clock import clock_of, running_loop
from shoal.exceptions import (
    ConfigError,
    ExecutorError,
    SerializationError,
    ToolQuarantinedError,
    WorkerCrashedError,
)
from shoal.executors._errors import rebuild_error
from shoal.executors._process_ref import ProcessRef, pidfds_work
from shoal.executors._reaper import kill_trees
from shoal.executors._sandbox import problem as sandbox_problem
from shoal.executors._shipping import dumps, dumps_callable
from shoal.executors._template import PID, STATUS, exit_code, fork_supported
from shoal.executors._worker import (
    CHANNEL_CLOSED_EXIT,
    ENDED,
    LAST_REPLY_MARK,
    REPLY_HEADER,
    REPLY_MARK,
)
from shoal.executors.base import Call, Executor, check_count
from shoal.executors.results import load_result
from shoal.limits import ProcessLimits
from shoal.merge import shown

__all__ = ["ALLOWED_ENV", "QUARANTINE_AFTER", "SANDBOXES", "START_METHODS", "ProcessExecutor",
           "check_sandbox", "describe_exit", "sandbox_problem", "worker_env"]

#: Environment variables a worker inherits without being asked (plus every ``LC_*``).
ALLOWED_ENV: frozenset[str] = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP",
    "PYTHONPATH", "PYTHONHASHSEED", "VIRTUAL_ENV", "SYSTEMROOT",
})  # fmt: skip

#: Crashes of one tool's workers within one run after which the tool is quarantined.
QUARANTINE_AFTER = 3
#: The most (run, tool) crash counts a pool keeps: past it, those of the runs that crashed
#: longest ago are dropped (a long-lived pool serving a run per request, a tool crashing now
#: and then, would otherwise keep one for every such run, for as long as it lives).
CRASH_BOOKS = 1024

_HEADER = struct.Struct(">Q")
_PIPE_SIZE = 1 << 20  # bytes of pipe buffer asked for (Linux's default maximum)
_PREALLOCATE = 1 << 26  # bytes of a message allocated before they arrive, at most
#: Bytes read from a reply pipe at once (asyncio's 256 KiB, less): under glibc's mmap
#: threshold (128 KiB), with the bytes object's and malloc's own headers (see _Worker.connect)
_READ_SIZE = 127 << 10
_REAP_GRACE = 2.0  # seconds a worker whose pipe closed gets to exit before it is killed
_SHOAL_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding the package
_TEMPLATE_WAIT = 120.0  # seconds the template gets to import (a loaded machine) or to answer
_REPORT_WAIT = 10.0  # seconds a forked worker's report may come after its end (else: lost)
_FROZEN_CHECK = 1.0  # seconds between looks at whether a template that does not answer is stopped
_GONE_WAIT = 1.0  # seconds a template whose socket hung up gets to end by itself
#: Seconds a worker's import of a tool's module may take outside the call's timeout (see
#: ``ProcessExecutor._load``; the call's timeout instead, if longer)
_IMPORT_WAIT = 60.0
#: Seconds a worker may stay stopped (``SIGSTOP``, ``SIGTSTP``) during a call before it is
#: killed and the call fails (as an agent's process, see ``agents.remote.STOPPED_GRACE``):
#: stopped, it answers nothing, and a call with no timeout waited for good. Only its state
#: counts, so a call busy for hours is never ended for it.
_STOPPED_GRACE = 30.0
_STOPPED_CHECK = 1.0  # seconds between looks at the state of a worker whose call goes on
_OTHER_LOOP_CLOSE = 5.0  # seconds another thread's loop gets to close its pool (close())
_CLOSED_POLL = 0.01  # seconds between looks at another thread's loop that is ending
_EVICT_RETRY = 0.05  # seconds between looks at the pool while another loop is to make room
_PIDFDS = pidfds_work()  # spawned workers are then reaped here, not by asyncio's watcher

#: The values of ``ProcessExecutor(start_method=...)``.
START_METHODS = ("template", "spawn")

#: What a worker is pooled by: its limits and the extra environment variable names it sees.
Profile = tuple[ProcessLimits | None, tuple[str, ...]]

_SIGNAL_CAUSES = {
    "SIGSEGV": "segmentation fault", "SIGKILL": "killed; out of memory?",
    "SIGXCPU": "CPU time limit exceeded", "SIGABRT": "aborted", "SIGBUS": "bus error",
    "SIGFPE": "floating-point exception", "SIGILL": "illegal instruction",
    "SIGTERM": "terminated",
}  # fmt: skip


@functools.cache
def _is_site_dir(path: str) -> bool:
    dirs = {*site.getsitepackages(), site.getusersitepackages()}
    return path in {str(Path(d).resolve()) for d in dirs}


def worker_env(names: Iterable[str] = ()) -> dict[str, str]:
    """The environment a worker starts with: :data:`ALLOWED_ENV`, ``LC_*`` and ``names``.

    ``PYTHONPATH`` also gets the directory shoal was imported from, so that ``python -m
    shoal.executors._worker`` finds it, unless that is a site-packages directory (putting one
    ahead of the standard library could shadow it with backports).
    """
    wanted = ALLOWED_ENV | set(names)
    env = {k: v for k, v in os.environ.items() if k in wanted or k.startswith("LC_")}
    if not _is_site_dir(_SHOAL_ROOT):
        paths = [_SHOAL_ROOT, *env.get("PYTHONPATH", "").split(os.pathsep)]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if p))
    return env


def python_module(module: str, *args: str) -> list[str]:
    """The command that runs ``python -m module args`` for one of shoal's own processes.

    With ``-P``: ``-m`` would put the working directory first on ``sys.path``, so that a
    project's own ``calendar.py`` or ``email/`` would shadow the standard library's while
    shoal imports, and the process would die before it could say why. The program sets the
    parent's ``sys.path`` itself before it imports anything of the application's.
    """
    return [sys.executable, "-P", "-m", module, *args]


def process_state(pid: int) -> bytes | None:
    """The state letter of process ``pid``; ``None`` if it cannot be read (gone, no ``/proc``).

    ``b"T"``: stopped, ``b"t"``: stopped by a tracer, ``b"Z"``: ended, not reaped... For a
    child of ours not reaped yet: its pid is still its own. One read of ``/proc``, cheap
    enough to check many processes every second.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except OSError:  # gone meanwhile, or no /proc (macOS)
        return _psutil_state(pid) if sys.platform == "darwin" else None
    return text[text.rfind(b")") + 2:][:1] or None


def _psutil_state(pid: int) -> bytes | None:
    """:func:`process_state` where there is no ``/proc``: only stopped (``T``) or not."""
    import psutil

    try:
        status = psutil.Process(pid).status()
    except psutil.Error:
        return None
    return b"T" if status == psutil.STATUS_STOPPED else b"R"


def describe_exit(returncode: int, limits: ProcessLimits | None = None) -> str:
    """How a worker ended, for an error message: ``exit code 1``, ``killed by signal ...``."""
    if returncode == CHANNEL_CLOSED_EXIT:
        return (f"exit code {returncode}: the tool closed the worker's pipes to shoal (file "
                "descriptors it did not open: os.closerange(3, ...), say); close only the "
                "descriptors the tool opened itself")
    if returncode >= 0:
        return f"exit code {returncode}"
    number = -returncode
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    what = _SIGNAL_CAUSES.get(name) or (signal.strsignal(number) or "unknown").lower()
    if name == "SIGXCPU" and limits is not None and limits.cpu_seconds is not None:
        what += f": over its limit of cpu_seconds={limits.cpu_seconds}"
    return f"killed by signal {name} ({what})"


class _WorkerDied(Exception):
    """The reply pipe ended before a reply came: the worker is gone (or must be)."""


class _MessageReader(asyncio.Protocol):
    """Assembles length-prefixed messages from a worker's reply pipe, as data arrives.

    Each body is filled in place into a buffer of its announced size, allocated up front (one
    copy, however large) up to :data:`_PREALLOCATE`; past that it grows as data arrives, so
    that a worker announcing a terabyte costs only what it actually sends.
    """

    def __init__(self) -> None:
        self._header = bytearray()
        self._body: bytearray | None = None
        self._size = 0  # the announced size of the body being filled
        self._filled = 0
        self._messages: deque[bytearray] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.eof = False
        #: Bytes read where a reply's header was due that are none (written by the tool), if any
        self.garbled: bytes | None = None
        #: Whether the worker marked a reply as its last (see ``_worker.LAST_REPLY_MARK``)
        self.last = False

    def data_received(self, data: bytes) -> None:
        if self.garbled is not None:  # nothing more is read as replies
            return
        view = memoryview(data)
        while view:
            if self._body is None:
                need = REPLY_HEADER.size - len(self._header)
                self._header += view[:need]
                view = view[need:]
                if len(self._header) == REPLY_HEADER.size:
                    mark, self._size = REPLY_HEADER.unpack(self._header)
                    if mark not in (REPLY_MARK, LAST_REPLY_MARK):
                        self._garble()
                        return
                    self.last = self.last or mark == LAST_REPLY_MARK
                    self._body = bytearray(min(self._size, _PREALLOCATE))
                    self._header.clear()
                    self._filled = 0
            else:
                take = min(len(view), self._size - self._filled)
                # in place within the buffer; past its end, the assignment appends
                self._body[self._filled:self._filled + take] = view[:take]
                self._filled += take
                view = view[take:]
            if self._body is not None and self._filled == self._size:
                self._messages.append(self._body)
                self._body = None
                self._wake()

    def _garble(self) -> None:
        """Bytes that are no reply's header came: the pipe is read no more (as at its end)."""
        self.garbled = bytes(self._header)
        self._header.clear()
        self.eof = True
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def has_message(self) -> bool:
        """Whether a whole message is there to take."""
        return bool(self._messages)

    async def arrived(self) -> None:
        """Wait until a message, or the pipe's end, is there; take nothing (cancel-safe)."""
        while not self._messages and not self.eof:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    async def receive(self) -> bytearray:
        """The next message's body; :class:`_WorkerDied` if the pipe ends first."""
        while not self._messages:
            if self.eof:
                raise _WorkerDied
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._messages.popleft()


def _too_large(env: dict[str, str], program: str = "worker") -> ConfigError:
    """The error for the environment of a ``program`` process too large to start it with."""
    size = sum(len(name) + len(value) + 2 for name, value in env.items())
    largest = max(env, key=lambda name: len(env[name]), default="")
    article = "an" if program[:1] in "aeiou" else "a"
    return ConfigError(
        f"the environment of {article} {program} process is too large to start it ({size:,} "
        f"bytes; the "
        f"largest variable is {largest!r}, {len(env.get(largest, '')):,} characters): pass "
        "large values to tools as arguments or in files, not through pass_env= or env=")


class _TemplateGone(Exception):
    """The template process ended (or never got ready): start it again."""

    code: int | None = None  # how it ended, once it is reaped


class _ForkedProcess:
    """A worker the template forked: its pid, and its end as the template reports it.

    The template holds the worker's zombie until :meth:`close`, so its pid stays reserved
    for as long as this object may signal it. Its pidfd (:attr:`ref`) tells when the worker
    has ended even if the template dies first (the worker then ends too, after killing what is
    below it), and signals it only while it is that process.
    """

    def __init__(self, pid: int, status_fd: int,
                 template: subprocess.Popen[bytes] | None = None) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.lost: str | None = None  # why the exit code is unknown, if it is
        self._status_fd = status_fd
        self._template = template  # the process that forked it (and reports its end)
        self.ref = ProcessRef(pid)
        # The status pipe still open at its far end: the template, which keeps the worker
        # unreaped until that pipe closes, was alive after the ref was made, so the ref is the
        # worker. Hung up: the template died, and the worker may have been reaped by whoever
        # inherited it, its pid taken since.
        if _hung_up(status_fd):
            self.ref.forget()

    async def wait(self) -> int:
        """Wait for the template's report of this worker's end; return its exit code.

        A worker that has ended (its pidfd says so) whose report does not come within
        :data:`_REPORT_WAIT` seconds, or whose template is found stopped meanwhile (a tool of
        one of its agents can ``SIGSTOP`` it), is taken as ended, how unknown: a stopped or
        hung template would keep the wait going for good.
        """
        if self.returncode is None:
            if self.ref.fd >= 0 and not await _report_or_end(self._status_fd, self.ref.fd,
                                                             self._template_stopped):
                self.lost = ("it ended, but the template process that started it did not say "
                             "how (the template is stopped or hung)")
                self.returncode = -signal.SIGKILL
                return self.returncode
            await _readable(self._status_fd)
            data = os.read(self._status_fd, STATUS.size)
            if len(data) < STATUS.size:  # the template died; the worker dies with it
                if self.ref.fd >= 0:
                    await _readable(self.ref.fd)
                self.lost = "killed with the template process that started it"
                data = STATUS.pack(-signal.SIGKILL)
            self.returncode = STATUS.unpack(data)[0]
        return self.returncode

    def _template_stopped(self) -> bool:
        """Whether the template that forked this worker is stopped: it reports nothing."""
        template = self._template
        # not reaped yet (ours to reap), so its pid is still its own
        return (template is not None and template.returncode is None
                and process_state(template.pid) in (b"T", b"t"))

    def close(self) -> None:
        """Let the template reap the worker (it may already be dead and reported)."""
        if self._status_fd >= 0:
            os.close(self._status_fd)
            self._status_fd = -1
        self.ref.close()


class _SpawnedProcess:
    """A worker started here as a fresh interpreter (where there are pidfds), reaped by us.

    Not left to asyncio's child watcher, which reaps a child the moment it ends: this one
    stays a zombie until :meth:`close`, so that its pid, which is also its process group's
    id, cannot be taken by another process while the pool may still signal the group.
    """

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.returncode: int | None = None
        self.lost: str | None = None
        self.ref = ProcessRef(popen.pid)  # a child that nothing reaps before close(): it

    @classmethod
    def start(cls, command: list[str], env: dict[str, str],
              fds: tuple[int, ...]) -> _SpawnedProcess:
        """Start ``command`` with ``fds`` in a session of its own.

        Blocks until the child has exec'd, as :func:`asyncio.create_subprocess_exec` does.
        """
        return cls(subprocess.Popen(command, stdin=subprocess.DEVNULL, env=env, pass_fds=fds,
                                    start_new_session=True))

    async def wait(self) -> int:
        """Wait until the worker has ended (without reaping it); return its exit code."""
        if self.returncode is None:
            await _readable(self.ref.fd)
            self.returncode = exit_code(self.pid)
        return self.returncode

    def close(self) -> None:
        """Reap the worker (or have a thread reap it once it ends); release its pidfd."""
        self.ref.close()
        if self._popen.poll() is None:  # killed, not ended yet: it will be within moments
            threading.Thread(target=self._popen.wait, name="shoal-reap", daemon=True).start()


def _hung_up(fd: int) -> bool:
    """Whether the far end of pipe ``fd`` is closed."""
    poller = select.poll()
    poller.register(fd, 0)
    return any(events & select.POLLHUP for _, events in poller.poll(0))


def _is_child(pid: int) -> bool:
    """Whether ``pid`` is a child of this process not yet reaped (it may have ended)."""
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


async def _report_or_end(status_fd: int, pidfd: int,
                         template_stopped: Callable[[], bool]) -> bool:
    """Wait for a forked worker's status report, or its end and then the report a while.

    ``False``: the worker ended and no report came within :data:`_REPORT_WAIT` seconds, or
    ``template_stopped()`` said, at one of its looks every :data:`_FROZEN_CHECK` seconds, that
    none can come (the whole wait, 10 s, held up the end of an agent whose tool stopped it).
    """
    report = asyncio.ensure_future(_readable(status_fd))
    try:
        ended = asyncio.ensure_future(_readable(pidfd))
        try:
            await asyncio.wait([report, ended], return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
        loop = asyncio.get_running_loop()
        end = loop.time() + _REPORT_WAIT
        while not report.done() and loop.time() < end:
            await asyncio.wait([report], timeout=min(_FROZEN_CHECK, end - loop.time()))
            if not report.done() and template_stopped():
                break
        return report.done()
    finally:
        report.cancel()


async def _readable(fd: int) -> None:
    """Wait until ``fd`` is readable (or at its end)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


class _TemplateHandle:
    """The parent's side of the template process: start it, ask it for workers, stop it."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.ready = False
        self.owed = 0  # replies to requests whose callers were cancelled meanwhile
        self.reading: asyncio.Task[bytes] | None = None  # the read of the next reply

    @property
    def pid(self) -> int | None:
        """The template's process id while it runs."""
        return None if self.proc is None else self.proc.pid

    def start(self, env: dict[str, str], preload: Sequence[str] = ()) -> None:
        """Start the template (it imports, ``preload`` too, while the caller goes on).

        Call it on the thread of the event loop that serves the template: the template dies
        with the thread that started it (its death signal, ``PR_SET_PDEATHSIG``, follows the
        forking thread, not the process), and it is of no use once that loop has ended.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                python_module("shoal.executors._template", str(theirs.fileno()), *preload),
                pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL,
                start_new_session=True)  # like a worker: out of a terminal's Ctrl-C
        except BaseException as exc:
            ours.close()
            if isinstance(exc, OSError) and exc.errno == errno.E2BIG:  # pass_env= of the
                raise _too_large(env) from None  # runtime: a variable over 128 KiB
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self.sock, self.ready, self.owed = ours, False, 0

    async def fork(self, env: dict[str, str], fds: tuple[int, ...],
                   program: str = "worker") -> int:
        """A new child running ``program`` on ``fds``; its pid.

        A worker's descriptors are its command, reply and status pipes; an agent's, its
        socket and status pipe.
        """
        assert self.sock is not None
        try:
            if not self.ready:
                if await self._receive() != b"ready":
                    raise _TemplateGone
                self.ready = True
            while self.owed:  # a worker nobody waits for: it ends, seeing its pipes closed
                await self._receive()
                self.owed -= 1
            try:
                cwd: str | None = os.getcwd()
            except OSError:  # deleted: the worker keeps the template's
                cwd = None
            request = pickle.dumps((program, env, cwd))
            try:
                socket.send_fds(self.sock, [request], list(fds))
            except (BrokenPipeError, ConnectionError):
                raise _TemplateGone from None
            except OSError as exc:
                if exc.errno != errno.EMSGSIZE:
                    raise
                raise _too_large(env, program) from None
            self.owed += 1
            reply = await self._receive()
            self.owed -= 1
        except (_TemplateGone, asyncio.CancelledError, ConfigError):  # (ConfigError: unsent)
            # gone: the caller stops it and says how it ended; cancelled: the reply stays
            # owed and the next request skips it (the template and its workers live on)
            raise
        except BaseException:  # no answer in time: a template that hangs is no use
            self.stop()
            raise
        if reply[:2] == b"ok" and len(reply) == 2 + PID.size:
            return int(PID.unpack(reply[2:])[0])
        if reply[:2] == b"no":
            raise ExecutorError("the template process could not start a worker: "
                                f"{reply[2:].decode(errors='replace')}")
        raise _TemplateGone

    async def _receive(self) -> bytes:
        assert self.sock is not None
        loop = asyncio.get_running_loop()
        # One read at a time, in a task of its own that a cancel of the caller leaves going:
        # a reply read as the cancel came (both at once after a tool blocked the loop) is
        # kept for the next caller, who owes it, never dropped. And asyncio.timeout, not
        # wait_for: Python 3.11's wait_for returns such a reply and drops the cancel, so the
        # call that a Ctrl-C cancelled went on to run in full.
        if self.reading is None:
            self.reading = loop.create_task(loop.sock_recv(self.sock, 4096))
        try:
            async with asyncio.timeout(_TEMPLATE_WAIT):
                # asyncio.wait, as shield: a cancel of the caller leaves the read going
                while not self.reading.done():
                    await asyncio.wait([self.reading], timeout=_FROZEN_CHECK)
                    if not self.reading.done() and self._frozen():
                        # stopped (SIGSTOP: a tool of one of its agents can): it would not
                        # answer until the wait ran out; gone, it is started again
                        raise _TemplateGone
            reading, self.reading = self.reading, None
            data = reading.result()
        except TimeoutError:
            raise ExecutorError(f"the template process that starts workers did not answer "
                                f"within {_TEMPLATE_WAIT:.0f} s") from None
        except OSError:
            raise _TemplateGone from None
        if not data:
            raise _TemplateGone
        return data

    def _frozen(self) -> bool:
        """Whether the template is stopped (``SIGSTOP``, ``SIGTSTP``): it answers nothing."""
        proc = self.proc
        # not reaped yet (ours to reap), so its pid is still its own
        return proc is not None and process_state(proc.pid) in (b"T", b"t")

    def stop(self, *, gone: bool = False) -> int | None:
        """Kill the template and reap it (its workers die with it); how it ended.

        ``gone``: its socket hung up (it is ending by itself, an import that failed, say):
        it gets a moment to end, so that the code returned is its own, not our ``SIGKILL``.
        """
        proc, self.proc = self.proc, None
        if gone and proc is not None:
            with suppress(subprocess.TimeoutExpired):
                proc.wait(_GONE_WAIT)
        # Killed before its socket closes: a template that saw the socket hang up would start
        # killing its workers, and stopping it halfway could leave some of them frozen.
        if proc is not None and proc.poll() is None:
            proc.kill()
        if self.reading is not None:
            self.reading.cancel()
            self.reading = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        return None if proc is None else proc.wait()  # at once: killed, or ended already


#: How the parent sees a worker process: started by itself, or forked by the template.
_Process = asyncio.subprocess.Process | _SpawnedProcess | _ForkedProcess


def _ref_of(proc: _Process) -> ProcessRef:
    """How to signal ``proc`` without reaching another process that took its pid."""
    if not isinstance(proc, asyncio.subprocess.Process):
        return proc.ref
    # asyncio's child watcher may have reaped it already: made first, the ref is confirmed by
    # the process still being a child of ours afterwards.
    ref = ProcessRef(proc.pid)
    if not _is_child(proc.pid):
        ref.forget()
    return ref


class _Worker:
    """One worker process and the parent's ends of its two pipes."""

    def __init__(self, proc: _Process, profile: Profile, lane: _Lane) -> None:
        self.proc = proc
        self.ref = _ref_of(proc)
        self.profile = profile
        self.lane = lane  # the event loop's share of the pool it belongs to
        self.reader = _MessageReader()
        self._read_pipe: asyncio.ReadTransport | None = None
        self._write_pipe: asyncio.WriteTransport | None = None
        self.retired = False  # stopped by the pool itself (close), not by a crash
        self.loaded: set[bytes] = set()  # tool functions this worker has imported already
        self.loading: bytes | None = None  # the tool function it is importing (see _load)
        #: the pid of the process that runs its calls (under the stand-in that ``proc`` may
        #: be: see ``_sandbox.split``), where it is known in this process's PID namespace
        self.serving_pid: int | None = None
        #: why the pool killed it, when it was found stopped (see :meth:`reply`)
        self.stalled: str | None = None
        self.stopped_since: float | None = None  # when its lane first found it stopped
        self.kill_queued: _KillBatch | None = None  # to be killed on the loop's next turn
        self._reaping: asyncio.Future[int] | None = None  # see reap()
        self.dropped = False  # ended by drop(), its pipes closed: nothing left to reap here
        self._kill_group = False

    async def connect(self, cmd_fd: int, reply_fd: int) -> None:
        """Attach the parent's pipe ends to the event loop; the transports own them from here."""
        loop = asyncio.get_running_loop()
        # pipe ends already open (no disk, nothing that blocks): only wrapped as file objects
        files: list[IO[bytes]] = [open(reply_fd, "rb", buffering=0)]  # noqa: SIM115, ASYNC230
        try:
            files.append(open(cmd_fd, "wb", buffering=0))  # noqa: SIM115, ASYNC230
            self._read_pipe, _ = await loop.connect_read_pipe(lambda: self.reader, files[0])
            # asyncio reads a pipe 256 KiB at a time: a buffer past glibc's mmap threshold
            # (128 KiB, until a large free happens to raise it), so each reply cost an mmap,
            # an mremap (to the reply's size) and a munmap; this stays on the heap
            # (_UnixReadPipeTransport reads self.max_size)
            transport: Any = self._read_pipe
            transport.max_size = _READ_SIZE
            self._write_pipe, _ = await loop.connect_write_pipe(asyncio.Protocol, files[1])
        except BaseException:
            # only the pipes: the process is still to be killed and reaped (closing its
            # handle here left the reaping a closed descriptor, and a cancelled start failed)
            self.close_transports()  # a transport made already closes its own file
            owned = {t.get_extra_info("pipe") for t in (self._read_pipe, self._write_pipe) if t}
            for file in files:
                if file not in owned:
                    file.close()
            if len(files) < 2:
                os.close(cmd_fd)
            raise

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.proc.pid

    def alive(self) -> bool:
        """Whether the worker still runs, as far as the event loop has seen."""
        return self.proc.returncode is None and not self.reader.eof

    def send(self, body: bytes) -> None:
        """Queue one message; the transport writes it as the pipe drains (never blocking)."""
        assert self._write_pipe is not None
        self._write_pipe.write(_HEADER.pack(len(body)))
        self._write_pipe.write(body)

    async def reply(self) -> bytearray:
        """The next reply's body; :class:`_WorkerDied` at the pipe's end.

        A worker found stopped (state ``T``) for :data:`_STOPPED_GRACE` s meanwhile is
        killed, saying so in :attr:`stalled`; one stopped by a debugger (``t``) is left
        alone. One timer per loop looks at all its workers waited for, every
        :data:`_STOPPED_CHECK` s (see :meth:`_Lane.look`): a call costs only joining and
        leaving its set (a timer per call cost ~20 % more instructions a call).
        """
        reader = self.reader
        if self.serving_pid is None or reader.has_message():
            return await reader.receive()
        lane = self.lane
        lane.awaited.add(self)
        if lane.watch is None:
            lane.watch = lane.loop.call_later(_STOPPED_CHECK, lane.look)
        try:
            return await reader.receive()
        finally:
            lane.awaited.discard(self)
            self.stopped_since = None

    def look(self, now: float) -> None:
        """Look at the worker's state; kill it once stopped for :data:`_STOPPED_GRACE` s."""
        assert self.serving_pid is not None
        if process_state(self.serving_pid) != b"T":
            self.stopped_since = None
            return
        since = self.stopped_since = now if self.stopped_since is None else self.stopped_since
        if now - since >= _STOPPED_GRACE and self.stalled is None:
            self.stalled = (f"it was stopped (SIGSTOP or SIGTSTP) and did not answer for "
                            f"{_STOPPED_GRACE:g} s: shoal killed it")
            self.kill()

    async def receive(self) -> Any:
        """The next reply, loaded with the restricted loader; :class:`_WorkerDied` at its end."""
        return load_result(await self.reader.receive(), "a reply from a worker process")

    def kill(self) -> None:
        """SIGKILL the worker and whatever it started (all its descendants), unless reaped.

        Through its :class:`ProcessRef`: a worker reaped meanwhile (by asyncio's child watcher,
        before its ``returncode`` is set) is left alone, whoever holds its pid now.
        """
        if self.proc.returncode is None:
            kill_trees([self.ref])

    async def reap(self, *, group: bool = False) -> int:
        """Wait for the process to end (killing it if it lingers); close the pipes.

        ``group``: SIGKILL its process group too, once it has ended and before it is reaped
        (processes its tool left there would outlive it), while the group's id is still its.
        Reaped once: a second caller (a lane closed by its own loop's ``leave()`` and, on that
        loop, by another thread's ``close()`` at once) waits for the first's reaping. Two
        waits would put two readers on one status pipe (the second takes the first's place)
        and read it after the first had closed it. A worker :meth:`drop` ended already has
        no pipes left to wait on: it is reaped elsewhere, and its code returned at once.
        """
        self._kill_group = self._kill_group or group
        if self._reaping is None and self.dropped:
            code = self.proc.returncode
            return -signal.SIGKILL if code is None else code  # drop() killed it
        if self._reaping is None:
            self._reaping = asyncio.ensure_future(self._reap_once())
        return await asyncio.shield(self._reaping)

    async def _reap_once(self) -> int:
        try:
            if self.kill_queued is not None:  # its batch has not been killed yet: now
                self.kill_queued.kill()
            try:
                code = await asyncio.wait_for(self.proc.wait(), _REAP_GRACE)
            except TimeoutError:  # closed its reply pipe yet lives on: not ours to wait for
                self.kill()
                code = await self.proc.wait()
            if self._kill_group:
                self.ref.kill_group(signal.SIGKILL)
            return code
        finally:
            self.close_pipes()

    def drop(self) -> None:
        """Kill the worker without waiting for its end; its template, or a thread, reaps it.

        A later :meth:`reap` (the worker's lane closing as another loop evicts it) returns
        at once: the pipes it would wait on are closed here.
        """
        self.kill()
        self.dropped = True
        self.close_pipes()

    def close_pipes(self) -> None:
        """Close the parent's ends of both pipes (the worker sees end of file).

        A forked worker is reaped by its template from here on, a spawned one by us: its
        pidfd is closed, and no signal goes to its pid any more.
        """
        if not isinstance(self.proc, asyncio.subprocess.Process):
            self.proc.close()
        self.ref.close()
        self.close_transports()

    def close_transports(self) -> None:
        """Close the parent's ends of both pipes, leaving the process handle open."""
        for transport in (self._write_pipe, self._read_pipe):
            if transport is None:
                continue
            try:
                transport.close()
            except RuntimeError:  # its event loop is closed already: close the file itself
                pipe = transport.get_extra_info("pipe")
                if pipe is not None:
                    pipe.close()


def _widen(*fds: int) -> None:
    """Enlarge pipe buffers where the OS allows (Linux): big messages need fewer wake-ups."""
    import fcntl  # POSIX only, like the rest of this module

    size = getattr(fcntl, "F_SETPIPE_SZ", None)
    for fd in fds:
        if size is not None:
            with suppress(OSError):  # above the system's maximum: keep the default
                fcntl.fcntl(fd, size, _PIPE_SIZE)


def _kill_pids(refs: set[ProcessRef], templates: list[_TemplateHandle]) -> None:
    """The safety net of an unclosed pool: kill its workers and templates (collection, exit).

    Through each worker's :class:`ProcessRef`: a worker that died with its template was reaped
    by whoever inherited it, and its pid may belong to another process by now.
    """
    kill_trees(list(refs))
    for ref in list(refs):
        ref.close()
    refs.clear()
    for template in list(templates):
        template.stop()


class _KillBatch:
    """Workers to kill together, on the next turn of the event loop that queued them.

    Stopping a run cancels each of its calls in a task of its own, and each one's worker is
    killed as its task handles the cancel. Killed one at a time, each kill walked ``/proc``
    twice (the worker's tree, then a pass that finds nothing new) while the workers not yet
    killed, many still starting, kept the cores busy: with fifty of them, most of a second
    (seconds on a loaded machine) between Ctrl-C and exit. Queued here instead, the workers
    that one turn stops are killed by one :func:`kill_trees`.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.workers: list[_Worker] = []

    def add(self, worker: _Worker) -> None:
        """Queue ``worker``; the first one queued has the batch killed on the next turn."""
        worker.kill_queued = self
        self.workers.append(worker)
        if len(self.workers) == 1:
            self.loop.call_soon(self.kill)

    def kill(self) -> None:
        """Kill every queued worker not reaped yet, with all they started (idempotent)."""
        workers, self.workers = self.workers, []
        for worker in workers:
            worker.kill_queued = None
        kill_trees([w.ref for w in workers if w.proc.returncode is None])


class _Lane:
    """One event loop's share of a pool: its workers, its template, what its callers wait on.

    A worker's pipes and a template's socket are served by the loop that opened them, so each
    loop using the pool (threads, each running a run) has workers and a template of its own;
    the cap on workers is the pool's, across loops.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, template: _TemplateHandle | None) -> None:
        self.loop = loop
        self.template = template
        self.idle: dict[Profile, list[_Worker]] = {}
        self.live: set[_Worker] = set()  # idle and busy
        self.freed = asyncio.Event()  # a worker became idle or went away (any loop's)
        self.spawning = asyncio.Lock()  # one fork/exec at a time: see _spawn_once
        self.waiting = 0  # callers of this loop waiting for room in the pool
        self.kills = _KillBatch(loop)  # workers this loop stopped, killed on its next turn
        self.awaited: set[_Worker] = set()  # workers whose reply this loop awaits
        self.watch: asyncio.TimerHandle | None = None  # the next look at their state

    def look(self) -> None:
        """Look at the state of the workers awaited (see :meth:`_Worker.reply`); again later."""
        self.watch = None
        if not self.awaited or _virtual_clock():  # (its seconds pass at once: looking at
            return  # every one of them would spin the loop; the next reply looks again)
        now = time.monotonic()
        for worker in list(self.awaited):
            worker.look(now)
        self.watch = self.loop.call_later(_STOPPED_CHECK, self.look)

    def wake(self) -> None:
        """Wake this loop's callers waiting for room; from any thread."""
        if running_loop() is self.loop:
            self.freed.set()
        elif self.waiting:
            with suppress(RuntimeError):  # closed: nobody waits there any more
                self.loop.call_soon_threadsafe(self.freed.set)

    def victim(self) -> _Worker | None:
        """The longest-idle worker of any profile, if any."""
        for workers in self.idle.values():
            if workers:
                return workers[0]
        return None


def _check_real_time(loop: asyncio.AbstractEventLoop) -> None:
    """Refuse to start workers on :class:`shoal.testing.VirtualClockLoop`.

    A worker process answers in real time, which the virtual clock does not wait for: it
    leapt past the 120 s a worker's start may take at once, and the call failed saying the
    template process "did not answer within 120 s".
    """
    from shoal.testing.clock import VirtualClockLoop

    if isinstance(loop, VirtualClockLoop):
        raise ExecutorError(
            "isolation='process' cannot run on shoal.testing's virtual clock: a worker process "
            "answers in real time, which that clock does not wait for (it leaps past every "
            "wait at once); run process tools on a real event loop (asyncio.run), or test "
            "the tool with isolation='thread' or 'inline' there")


class ProcessExecutor(Executor):
    """Runs each call in a worker process: crash-safe, killable, with limits and a clean env.

    One pool may serve several event loops at once (threads, each running runs on a runtime):
    each loop gets workers (and a template) of its own, since their pipes are that loop's;
    ``max_workers`` counts them all, an idle worker of one loop making room for another's.

    Args:
        max_workers: the most worker processes alive at once, across all profiles and loops.
        pass_env: environment variable names every worker may see besides :data:`ALLOWED_ENV`.
        sandbox: ``"none"``, or ``"namespace"`` to run each worker in user, PID and mount
            namespaces of its own (Linux): see :mod:`shoal.executors._sandbox`.
        start_method: ``"template"`` (the default) forks each worker from a template process
            that has done the imports already (milliseconds; Linux 5.3+, elsewhere the same
            as ``"spawn"``); ``"spawn"`` starts each one as a fresh interpreter (~0.2 s).
    """

    name = "process"
    runs_here = True

    def __init__(self, max_workers: int, *, pass_env: Sequence[str] = (),
                 sandbox: str = "none", start_method: str = "template") -> None:
        if os.name != "posix":
            raise ConfigError("isolation='process' needs a POSIX system (Linux, macOS); "
                              "use 'thread' or 'ray' here")
        if start_method not in START_METHODS:
            raise ConfigError(f"start_method must be one of {START_METHODS}, got "
                              f"{start_method!r}")
        self.sandbox = check_sandbox(sandbox)
        #: How workers start here: ``"template"`` only where forking one is supported.
        self.start_method = (start_method if start_method == "spawn" or fork_supported()
                             else "spawn")
        check_count("max_workers", max_workers)
        self.max_workers = max_workers
        self.pass_env = tuple(pass_env)
        self._lanes: dict[asyncio.AbstractEventLoop, _Lane] = {}
        # The books (lanes, their idle and live workers, _starting) are shared by the threads
        # of every loop: changed only under this lock, never across an await.
        self._books = threading.RLock()
        self._starting = 0  # workers being started (they count against max_workers)
        self._crashes: dict[tuple[str, str], int] = {}  # (run id, tool name) -> crashes
        self._pids: set[ProcessRef] = set()  # every worker not yet reaped, for the finalizer
        self._templates: list[_TemplateHandle] = []  # every lane's, for the finalizer
        self.workers_started = 0
        self.workers_crashed = 0
        weakref.finalize(self, _kill_pids, self._pids, self._templates)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live workers, idle or busy, of every event loop."""
        with self._books:
            return sorted(w.pid for lane in self._lanes.values() for w in lane.live)

    @property
    def template_pid(self) -> int | None:
        """The process id of the template workers are forked from, while it runs.

        The running event loop's template; outside one (or before it has one), the first
        template that runs.
        """
        loop = running_loop()
        with self._books:
            lanes = list(self._lanes.values())
        here = [lane for lane in lanes if lane.loop is loop]
        for lane in here + lanes:
            if lane.template is not None and lane.template.pid is not None:
                return lane.template.pid
        return None

    async def start(self) -> None:
        """Bind to the running event loop (workers themselves start when calls need them)."""
        self._lane()

    prepares = True

    async def prepare(self, call: Call) -> None:
        """Reserve a worker of the call's profile.

        Starting one may take a fraction of a second, which must not count against the call's
        timeout; the driver awaits this before the timeout starts.
        """
        lane = self._lane()
        _check_real_time(lane.loop)
        self._check_quarantine(call)
        worker = await self._acquire(lane, _profile(call))
        fn_blob = dumps_callable(call.tool)
        if fn_blob not in worker.loaded:  # importing the tool's module is warm-up, not the call
            await self._load(call, worker, fn_blob)
        call.lease = worker

    async def _load(self, call: Call, worker: _Worker, fn_blob: bytes) -> None:
        """Have ``worker`` import the tool's module, waiting :data:`_IMPORT_WAIT` s at most.

        The import is warm-up, not the call (a heavy one, on a loaded machine, takes seconds):
        it gets :data:`_IMPORT_WAIT` seconds of its own, or the call's timeout if longer. One
        still going then (a module that connects somewhere as it is imported, and hangs) is
        waited for by :meth:`execute`, under the call's own timeout: a call with a timeout
        ends by it, whatever its module does.
        """
        worker.send(pickle.dumps(("load", fn_blob), pickle.HIGHEST_PROTOCOL))
        worker.loading = fn_blob
        if call.timeout is not None:
            try:
                async with asyncio.timeout(max(call.timeout, _IMPORT_WAIT)):
                    await worker.reader.arrived()
            except TimeoutError:
                return  # see execute()
            except BaseException:
                await self._discard(worker)
                raise
        await self._loaded(call, worker)

    async def _loaded(self, call: Call, worker: _Worker) -> None:
        """Take the reply to the load :meth:`_load` sent: raise the module's import error."""
        fn_blob, worker.loading = worker.loading, None
        assert fn_blob is not None
        try:
            body = await worker.reply()
        except _WorkerDied:
            raise await self._crash_error(call, worker) from None
        except BaseException:
            await self._discard(worker)
            raise
        try:
            _unstamped(call, body)  # a load is no part of the call: its end stamp is not kept
            _unwrap(call, body)  # raises the import error, if the module failed to load
        except BaseException:
            self._release(worker)
            raise
        worker.loaded.add(fn_blob)

    async def execute(self, call: Call) -> Any:
        """Run ``call`` in its reserved worker; on cancellation kill the worker, re-raise."""
        if call.lease is None:  # a caller that skipped prepare()
            await self.prepare(call)
        worker: _Worker = call.lease
        call.lease = None
        if worker.loading is not None:  # its module still imports: now in the call's timeout
            await self._loaded(call, worker)
        try:
            message = _call_message(call)
        except BaseException:
            self._release(worker)  # nothing was sent: the worker is still clean
            raise
        try:
            call.began_at = time.monotonic()
            worker.send(message)
            body = await worker.reply()
        except _WorkerDied:
            raise await self._crash_error(call, worker) from None
        except BaseException:  # cancelled (a timeout too): the worker still runs the call
            await self._discard(worker)
            raise
        if worker.reader.last:  # the call lowered its limits or priority for good
            self._drop(worker)
        else:
            self._release(worker)
        call.ended_at = _unstamped(call, body)
        return _unwrap(call, body)

    async def close(self) -> None:
        """Kill every worker of every event loop and reap it; the pool can start afresh.

        Workers of another thread's event loop, still running, are closed on that loop (their
        pipes are its own); one that does not get to it within :data:`_OTHER_LOOP_CLOSE`
        seconds (blocked), or has stopped, has them closed from here.
        """
        here = asyncio.get_running_loop()
        with self._books:
            lanes = list(self._lanes.values())
        for lane in lanes:
            if lane.loop is here:
                await self._close_lane(lane)
            elif not await self._close_on_own_loop(lane):
                self._abandon(lane)
        self._prune()

    async def _close_lane(self, lane: _Lane) -> None:
        """Kill and reap a lane's workers, stop its template (on the lane's own loop)."""
        with self._books:
            workers = list(lane.live)
        for worker in workers:
            worker.retired = True
        await asyncio.gather(*(self._discard(w) for w in workers))
        if lane.template is not None:
            async with lane.spawning:  # not while a worker is being forked
                lane.template.stop()

    async def _close_on_own_loop(self, lane: _Lane) -> bool:
        """Have the loop a lane belongs to (another thread's) close it; whether it did."""
        loop = lane.loop
        if loop.is_closed() or not loop.is_running():
            return False
        try:
            closing = asyncio.run_coroutine_threadsafe(self._close_lane(lane), loop)
        except RuntimeError:  # closed meanwhile
            return False
        try:
            await asyncio.wait_for(asyncio.wrap_future(closing), _OTHER_LOOP_CLOSE)
        except TimeoutError:
            return False
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is None or current.cancelling():  # this caller's own cancel
                raise
            # That loop cancelled it: it is ending (its run cancels the tasks left, this
            # close among them). Not this caller's cancel, which must not see one: what is
            # left of the lane is ended from here once that loop has closed
            for _ in range(round(_OTHER_LOOP_CLOSE / _CLOSED_POLL)):
                if loop.is_closed():
                    break
                await asyncio.sleep(_CLOSED_POLL)
            return False
        return True

    def _abandon(self, lane: _Lane) -> None:
        """End a lane's workers and template from here: its loop is closed, stopped or stuck."""
        with self._books:
            workers = list(lane.live)
        for worker in workers:
            worker.retired = True
            self._drop(worker)  # the loop's child watcher, a thread or the template reaps it
        if lane.template is not None:
            lane.template.stop()

    async def leave(self) -> None:
        """Kill and reap the running event loop's workers (it is ending); other loops' stay.

        A loop that closes with workers of its own leaves them to be ended from another loop
        (at the next call or :meth:`close`), their pipes unclosed until then.
        """
        lane = self._lanes.get(asyncio.get_running_loop())
        if lane is None:
            return
        await self._close_lane(lane)
        with self._books:
            self._lanes.pop(lane.loop, None)
            if lane.template in self._templates:
                self._templates.remove(lane.template)
        self._wake_all()

    # ---- the pool ------------------------------------------------------------------------

    def _lane(self) -> _Lane:
        """The running loop's lane, made on its first use there."""
        loop = asyncio.get_running_loop()
        lane = self._lanes.get(loop)
        if lane is not None:
            return lane
        self._prune()
        template = _TemplateHandle() if self.start_method == "template" else None
        lane = _Lane(loop, template)
        with self._books:
            self._lanes[loop] = lane
            if template is not None:
                self._templates.append(template)
        return lane

    def _prune(self) -> None:
        """Forget the lanes of loops that are closed, ending what is left of them."""
        with self._books:
            dead = [lane for lane in self._lanes.values() if lane.loop.is_closed()]
        for lane in dead:
            self._abandon(lane)
            with self._books:
                self._lanes.pop(lane.loop, None)
                if lane.template in self._templates:
                    self._templates.remove(lane.template)

    def _count_crash(self, key: tuple[str, str]) -> None:
        """Count a crash of ``key`` (run id, tool name); keep :data:`CRASH_BOOKS` counts at most.

        The count moves to the end (the books are in order of last crash), so the bound drops
        those of the runs that crashed longest ago, not that of a run crashing now.
        """
        with self._books:
            self._crashes[key] = self._crashes.pop(key, 0) + 1
            while len(self._crashes) > CRASH_BOOKS:
                del self._crashes[next(iter(self._crashes))]

    def _check_quarantine(self, call: Call) -> None:
        crashes = self._crashes.get((call.run_id, call.tool.name), 0)
        if crashes >= QUARANTINE_AFTER:
            raise ToolQuarantinedError(call.tool.name, crashes)

    async def _acquire(self, lane: _Lane, profile: Profile) -> _Worker:
        """An idle worker of ``profile``, or a new one when the cap allows (evicting if need be)."""
        # Counted as waiting from before the first look at the books: room made by another
        # loop's thread at any point after it wakes this loop (a call_soon_threadsafe, which
        # runs only once this task awaits, so after the clear() below).
        lane.waiting += 1
        try:
            while True:
                worker = self._take_idle(lane, profile)
                if worker is not None:
                    return worker
                placed, victim = self._reserve(lane)
                if placed:
                    return await self._start_worker(lane, profile, victim)
                # Every worker of this loop is busy: the scheduler's limit makes this rare
                # (the pool is shared with callers outside it, or with other loops), so
                # waking every waiter to retry is good enough.
                lane.freed.clear()
                if not self._evict_elsewhere(lane):
                    await lane.freed.wait()
                    continue
                # Asked of another loop, which may stop before it gets to it (its callback
                # queue is then dropped): looked at again every moment meanwhile.
                with suppress(TimeoutError):  # (not wait_for, which may drop a cancel)
                    async with asyncio.timeout(_EVICT_RETRY):
                        await lane.freed.wait()
        finally:
            lane.waiting -= 1

    def _reserve(self, lane: _Lane) -> tuple[bool, _Worker | None]:
        """Take a place for a new worker, if there is one; and the idle worker to stop for it.

        Room under the cap: ``(True, None)``; none, but this loop has an idle worker:
        ``(True, worker)``; neither: ``(False, None)``.
        """
        with self._books:
            victim = None
            if self._count() >= self.max_workers:
                victim = lane.victim()
                if victim is None:
                    return False, None
                self._forget(victim)  # its place is the new worker's
            self._starting += 1  # before any await: concurrent callers see the cap
            return True, victim

    def _count(self) -> int:
        """Workers alive or starting, across every loop (under the books' lock)."""
        return self._starting + sum(len(lane.live) for lane in self._lanes.values())

    def _take_idle(self, lane: _Lane, profile: Profile) -> _Worker | None:
        while True:
            with self._books:
                idle = lane.idle.get(profile)
                if not idle:
                    return None
                worker = idle.pop()  # the most recently used one: its caches are warm
            if worker.alive():
                return worker
            self._drop(worker)  # died while idle (killed from outside)

    def _evict_elsewhere(self, lane: _Lane) -> bool:
        """Have another loop stop an idle worker of its own, to make room for ``lane``'s.

        Whether that loop was asked (and may not get to it); a loop that has stopped has its
        worker stopped from here, and one that has closed all of them.
        """
        self._prune()
        with self._books:
            others = [o for o in self._lanes.values() if o is not lane and o.victim()]
        for other in others:
            if other.loop.is_running():
                with suppress(RuntimeError):  # closed meanwhile: pruned next time
                    other.loop.call_soon_threadsafe(self._evict, other)
                    return True
            else:  # stopped: nothing serves its pipes, which are closed from here
                self._evict(other)
                return False
        return False

    def _evict(self, lane: _Lane) -> None:
        """Stop ``lane``'s longest-idle worker, if it has one (on its loop, or it is stopped)."""
        with self._books:
            victim = lane.victim()
            if victim is not None:
                self._forget(victim)
        if victim is not None:
            self._drop(victim)

    async def _start_worker(self, lane: _Lane, profile: Profile,
                            victim: _Worker | None) -> _Worker:
        """Start a worker in the place :meth:`_acquire` reserved (``_starting``)."""
        try:
            if victim is not None:
                await self._discard(victim)
            worker = await self._spawn(lane, profile)
        except BaseException:
            with self._books:
                self._starting -= 1
            self._wake_all()
            raise
        with self._books:
            self._starting -= 1
            # The loop's lane, made again if leave() ended it while this worker started: the
            # worker stays in the books, for close() to end (its pipes are this loop's still)
            current = self._lanes.setdefault(lane.loop, lane)
            if current is lane and lane.template is not None and (
                    lane.template not in self._templates):
                self._templates.append(lane.template)
            worker.lane = current
            current.live.add(worker)
        self.workers_started += 1
        return worker

    async def _spawn(self, lane: _Lane, profile: Profile) -> _Worker:
        """Start a worker; a template that died is started again, once."""
        for attempt in range(2):
            try:
                return await self._spawn_once(lane, profile)
            except _TemplateGone as gone:
                if attempt:
                    ended = "" if gone.code is None else f" ({describe_exit(gone.code)})"
                    raise ExecutorError(
                        f"the template process that starts workers ended twice in a row"
                        f"{ended}; its error output says why, or pass "
                        "start_method='spawn' to start each worker afresh") from None
        raise AssertionError("unreachable")

    async def _spawn_once(self, lane: _Lane, profile: Profile) -> _Worker:
        """Start a worker, hand it the import path and limits, and wait until it is ready."""
        limits, env_names = profile
        cmd_read, cmd_write = os.pipe()
        reply_read, reply_write = os.pipe()
        _widen(cmd_write, reply_write)
        try:
            # One start at a time: a fork/exec blocks the loop until the child has exec'd
            # (slow when many workers start on few cores), and the template answers one
            # request at a time. The loop runs in between, so a Ctrl-C or a cancel is handled
            # at once instead of after every pending start.
            async with lane.spawning:
                proc = await self._launch(lane, worker_env((*self.pass_env, *env_names)),
                                          cmd_read, reply_write)
        except BaseException:
            os.close(cmd_write)
            os.close(reply_read)
            raise
        finally:  # only the worker may hold these: end of file must mean it is gone
            os.close(cmd_read)
            os.close(reply_write)
        worker = _Worker(proc, profile, lane)
        self._pids.add(worker.ref)
        try:
            await worker.connect(cmd_write, reply_read)
            await self._handshake(worker, limits)
        except BaseException:
            await self._discard(worker)
            raise
        return worker

    async def _launch(self, lane: _Lane, env: dict[str, str], cmd_read: int,
                      reply_write: int) -> _Process:
        """A new worker process holding ``cmd_read`` and ``reply_write``."""
        if lane.template is None:
            command = python_module("shoal.executors._worker", str(cmd_read), str(reply_write))
            # A session of its own: a terminal's Ctrl-C reaches the parent only (which
            # decides what stops), and killing the group stops what a tool started too.
            try:
                if _PIDFDS:
                    return _SpawnedProcess.start(command, env, (cmd_read, reply_write))
                return await asyncio.create_subprocess_exec(
                    *command, stdin=asyncio.subprocess.DEVNULL, env=env,
                    pass_fds=(cmd_read, reply_write), start_new_session=True)
            except OSError as exc:
                if exc.errno != errno.E2BIG:  # (a variable over 128 KiB, on Linux)
                    raise
                raise _too_large(env) from None
        template = lane.template
        if template.proc is None or template.proc.poll() is not None:  # none yet, or it died
            template.stop()
            template.start(worker_env(self.pass_env))
        status_read, status_write = os.pipe()
        try:
            pid = await template.fork(env, (cmd_read, reply_write, status_write))
        except _TemplateGone as gone:  # stopped here, under the lock: no start is under way
            os.close(status_read)
            gone.code = template.stop(gone=True)
            raise
        except BaseException:
            os.close(status_read)
            raise
        finally:
            os.close(status_write)
        return _ForkedProcess(pid, status_read, template.proc)

    async def _handshake(self, worker: _Worker, limits: ProcessLimits | None) -> None:
        given = limits or ProcessLimits()
        worker.send(pickle.dumps(("config", list(sys.path),
                                  (given.memory, given.cpu_seconds, given.open_files),
                                  self.sandbox)))
        try:
            reply = await worker.receive()
        except _WorkerDied:
            code = await worker.reap()
            raise ExecutorError(f"a worker process failed to start ({describe_exit(code)}); "
                                "its error output says why") from None
        if not (isinstance(reply, tuple) and reply[:1] == ("ready",)):
            if isinstance(reply, tuple) and len(reply) == 5 and reply[2].endswith(
                    "SandboxError"):
                raise ExecutorError(f"a worker process could not start: {reply[3]}")
            detail = (f"{reply[2]}: {reply[3]}" if isinstance(reply, tuple) and len(reply) == 5
                      else "it sent a malformed reply")
            raise ExecutorError(f"a worker process could not apply its limits {limits}: "
                                f"{detail}")
        if self.sandbox == "none" and len(reply) == 2 and type(reply[1]) is int:
            worker.serving_pid = reply[1]  # (in a sandbox, its pid in a namespace of its own)

    def _release(self, worker: _Worker) -> None:
        with self._books:
            lane = worker.lane
            if worker not in lane.live:  # retired by close() meanwhile
                return
            lane.idle.setdefault(worker.profile, []).append(worker)
        self._wake_all()

    def _forget(self, worker: _Worker) -> None:
        """Take a worker out of the pool's books (it is about to be killed or is dead)."""
        with self._books:
            lane = worker.lane
            lane.live.discard(worker)
            idle = lane.idle.get(worker.profile)
            if idle is not None and worker in idle:
                idle.remove(worker)
        self._wake_all()

    def _wake_all(self) -> None:
        """Room was made in the pool: wake the callers waiting for it, on every loop."""
        with self._books:
            lanes = list(self._lanes.values())
        for lane in lanes:
            lane.wake()

    def _drop(self, worker: _Worker) -> None:
        """Kill a worker without waiting for it (the event loop's child watcher reaps it)."""
        self._forget(worker)
        worker.drop()
        self._pids.discard(worker.ref)

    async def _discard(self, worker: _Worker) -> None:
        """Kill and reap a worker; a second cancellation cannot stop the reaping."""
        self._forget(worker)
        self._kill_soon(worker)
        # its pipes are of no more use: closed now, not by the reaping task, which the
        # loop's end may cancel before it starts (a run ending as it cancels this worker's
        # call): they were left to the collector ("unclosed transport")
        worker.close_transports()
        await asyncio.shield(self._reap(worker))

    @staticmethod
    def _kill_soon(worker: _Worker) -> None:
        """Kill ``worker`` on this loop's next turn, with the others stopped in this one.

        Whatever happens to the caller's task, the process stops then: the loop runs the
        batch's callback before the reaping task this caller starts (queued after it), and
        the reaping kills the batch itself should it come first. Off the worker's own loop
        (it is not running here), it is killed at once.
        """
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if worker.lane.loop is here and not here.is_closed():
            worker.lane.kills.add(worker)
        else:
            worker.kill()

    async def _reap(self, worker: _Worker, *, group: bool = False) -> int:
        try:
            return await worker.reap(group=group)
        finally:
            self._pids.discard(worker.ref)

    async def _crash_error(self, call: Call, worker: _Worker) -> ExecutorError:
        """Reap a worker that died during ``call``; count the crash against the tool."""
        retired = worker.retired
        self._forget(worker)
        garbled = worker.reader.garbled
        if garbled is not None:  # alive, but its replies cannot be read any more
            worker.kill()
        # It reports how it ended; what its tool started in the worker's group would outlive
        # it: that group is killed too, before the worker is reaped (its id is then still its)
        code = await asyncio.shield(self._reap(worker, group=True))
        if retired:
            return ExecutorError(
                f"the process pool was closed while tool {call.tool.name!r} was running (by "
                "ProcessExecutor.close(): a call of your own, or the runtime it was given to "
                "closing; one given to several runtimes is closed by the last to close)")
        self._count_crash((call.run_id, call.tool.name))
        self.workers_crashed += 1
        cause = (worker.stalled or getattr(worker.proc, "lost", None)
                 or describe_exit(code, worker.profile[0]))
        if garbled is not None:
            cause = (f"killed by shoal, as its reply pipe carried bytes that are no reply "
                     f"({shown(garbled)}); the tool wrote to a file descriptor it did not open")
        return WorkerCrashedError(call.tool.name, cause, code)


#: The values of ``Runtime(process_sandbox=...)``.
SANDBOXES = ("none", "namespace")


def check_sandbox(sandbox: str) -> str:
    """``sandbox`` if this platform can have it; else :class:`ConfigError` saying why not."""
    if sandbox not in SANDBOXES:
        raise ConfigError(f"process_sandbox must be one of {SANDBOXES}, got {shown(sandbox)}")
    if sandbox == "namespace" and not sys.platform.startswith("linux"):
        raise ConfigError("process_sandbox='namespace' needs Linux (user, PID and mount "
                          "namespaces); use process_sandbox='none' here")
    return sandbox


def _virtual_clock() -> bool:
    """Whether the running loop's time is not the real one (``shoal.testing``'s clock).

    There, a timer of a second fires at once while a worker works: looking at the worker
    every second of it would spin the loop.
    """
    return clock_of().from_monotonic(0.0) is None


def _profile(call: Call) -> Profile:
    policy = call.tool.policy
    return (policy.limits, tuple(sorted(set(policy.env))))


def _call_message(call: Call) -> bytes:
    """The call as a message; :class:`SerializationError` names what could not be pickled."""
    name = call.tool.name
    fn_blob = dumps_callable(call.tool)
    try:
        message: tuple[Any, ...] = ("call", name, call.tool.is_async, fn_blob, call.args)
        if call.trace:  # instrumented: the worker joins the call span's trace
            message += (call.trace,)
        return dumps(message, f"the arguments of tool {name!r}")
    except SerializationError:
        for key, value in call.args.items():  # say which argument, when one alone fails
            dumps(value, f"argument {key!r} of tool {name!r}")
        raise


def _unstamped(call: Call, body: bytearray) -> float | None:
    """Take the worker's end stamp off the front of ``body``; when the work ended, if it can tell.

    The worker runs the tool's code, which could change the stamp: it is kept only within
    when the call was sent and now (``call.began_at`` and ``time.monotonic()``, the same clock
    as the worker's on one machine).
    """
    if len(body) < ENDED.size:
        raise SerializationError(f"the worker process running tool {call.tool.name!r} sent a "
                                 "malformed reply")
    ended: float = ENDED.unpack_from(body)[0]
    del body[:ENDED.size]  # in place: a bytearray drops its first bytes without a copy
    began = call.began_at
    if began is None or not began <= ended:  # NaN fails this too
        return None
    return min(ended, time.monotonic())


def _unwrap(call: Call, body: bytearray) -> Any:
    """The value of an ``ok`` reply; raise the error of an ``error`` reply.

    The worker runs the tool's code, so its reply is untrusted: it is loaded with
    :func:`~shoal.executors.results.load_result` (allowed types only, nothing runs here),
    unless the tool is marked ``trust_results``.
    """
    name = call.tool.name
    trusted = call.tool.policy.trust_results
    if trusted:
        try:
            # pickle reads the bytearray in place (cloudpickle output is plain pickle): no copy
            reply = pickle.loads(body)
        except Exception as exc:  # only an ``ok`` reply holds objects of the tool's making
            raise SerializationError(f"the result of tool {name!r} cannot be unpickled here: "
                                     f"{type(exc).__name__}: {exc}") from exc
    else:
        reply = load_result(body, f"the result of tool {name!r}")
    if isinstance(reply, tuple) and len(reply) == 2 and reply[0] == "ok":
        return reply[1]
    if isinstance(reply, tuple) and len(reply) == 5 and reply[0] == "error":
        _, blob, type_name, message, text = reply
        raise rebuild_error(blob, type_name, message, text, trusted=trusted)
    raise SerializationError(f"the worker process running tool {name!r} sent a malformed "
                             "reply")
