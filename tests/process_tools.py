"""Tools for the process backend tests; worker processes import them as ``tests.process_tools``."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import threading
import time
from pathlib import Path
from typing import Any

from shoal.tools import tool


class QuotaError(Exception):
    """A typed error with an extra attribute, to check it comes back as itself."""

    def __init__(self, message: str, quota: int = 0) -> None:
        super().__init__(message)
        self.quota = quota


class LockedError(Exception):
    """An error that cannot be pickled: it holds a lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class PickyError(Exception):
    """An error that pickles but does not unpickle (``args`` do not fit ``__init__``)."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")


@tool(isolation="process")
def noop() -> None:
    """Do nothing (overhead measurements)."""


@tool(isolation="process")
def square(x: int) -> int:
    """Return ``x * x`` and nothing else."""
    return x * x


@tool(isolation="process")
async def async_square(x: int) -> int:
    """Return ``x * x`` after yielding to the worker's own event loop."""
    await asyncio.sleep(0)
    return x * x


@tool(isolation="process")
def pid() -> int:
    """The worker's process id."""
    return os.getpid()


@tool(isolation="process")
def item_pid(item: int) -> int:
    """The worker's process id (one per item of a map)."""
    return os.getpid()


@tool(isolation="process")
def environment() -> dict[str, str]:
    """The worker's whole environment."""
    return dict(os.environ)


@tool(isolation="process")
def exit_now(code: int = 1) -> None:
    """End the worker at once, without cleanup."""
    os._exit(code)


@tool(isolation="process")
def segfault() -> None:
    """Read address 0: the worker dies of SIGSEGV."""
    ctypes.string_at(0)


def write_pid(path: str | Path) -> None:
    """Write this process's id to ``path`` whole: a reader that sees the file reads the id.

    (``write_text`` creates the file before it writes: a test's thread that waited for the
    file read it empty in a CI run, and its SIGSTOP never came.)
    """
    part = Path(f"{path}.{os.getpid()}.part")
    part.write_text(str(os.getpid()))
    os.replace(part, path)


@tool(isolation="process")
def sleep_forever(pid_file: str) -> None:
    """Write the worker's pid to ``pid_file``, then sleep (practically) forever."""
    write_pid(pid_file)
    time.sleep(1000)


@tool(isolation="process")
def busy_forever() -> None:
    """Burn CPU until killed."""
    while True:
        pass


@tool(isolation="process")
def allocate(megabytes: int) -> int:
    """Allocate ``megabytes`` MB at once; return the size."""
    return len(bytearray(megabytes * 2**20))


@tool(isolation="process")
def open_many(count: int) -> int:
    """Open ``count`` files at once; return how many were opened."""
    files = [open(os.devnull) for _ in range(count)]  # noqa: SIM115
    for f in files:
        f.close()
    return len(files)


@tool(isolation="process")
def raise_quota(quota: int) -> None:
    """Raise the typed error."""
    raise QuotaError("over quota", quota=quota)


@tool(isolation="process")
def raise_locked() -> None:
    """Raise the unpicklable error."""
    raise LockedError("cannot travel")


@tool(isolation="process")
def raise_picky() -> None:
    """Raise the error that does not unpickle."""
    raise PickyError(7, "picky")


@tool(isolation="process")
def raise_keyboard_interrupt() -> None:
    """Raise KeyboardInterrupt inside the worker (must not stop the parent's run)."""
    raise KeyboardInterrupt


@tool(isolation="process")
def make_lock() -> Any:
    """Return something that cannot be pickled."""
    return threading.Lock()


@tool(isolation="process")
def identity(value: Any = None) -> Any:
    """Return ``value`` (any picklable value)."""
    return value


@tool(isolation="process")
def blob(data: bytes, size: int) -> bytes:
    """Check ``data`` arrived whole; return ``size`` fresh bytes derived from it."""
    pattern = data[:16] or b"x"
    return (pattern * (size // len(pattern) + 1))[:size]


@tool(isolation="process")
def chatty(lines: int) -> int:
    """Print a lot to stdout and stderr (the protocol has its own pipes)."""
    import sys

    for i in range(lines):
        print(f"line {i} " + "x" * 100)
        print(f"err {i}", file=sys.stderr)
    return lines


@tool(isolation="process")
def nap(seconds: float) -> None:
    """Sleep ``seconds`` (wall-clock time, whatever the machine's load)."""
    time.sleep(seconds)


@tool(isolation="process")
def burn(seconds: float) -> int:
    """Use ``seconds`` of CPU time; return the worker's pid."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    return os.getpid()


@tool(isolation="process")
def spawn_and_sleep(pid_file: str) -> None:
    """Start a long ``sleep`` subprocess, write its pid to ``pid_file``, then wait for it."""
    import subprocess

    child = subprocess.Popen(["sleep", "1000"])
    Path(pid_file).write_text(str(child.pid))
    child.wait()


# ---- isolation and secrets -----------------------------------------------------------------


class Trap:
    """Unpickles into ``os.system(command)``: a result that would run code where it is loaded."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


class TrapError(Exception):
    """An error that unpickles into ``os.system(command)``."""

    def __init__(self, command: str) -> None:
        super().__init__(command)
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


class Plain:
    """A plain class: not of a kind results may hold unless it is allowed."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plain) and other.value == self.value

    __hash__ = None  # type: ignore[assignment]


@tool(isolation="process")
def trap(command: str) -> Any:
    """Return a :class:`Trap` for ``command``."""
    return Trap(command)


@tool(isolation="process")
def trap_error(command: str) -> None:
    """Raise a :class:`TrapError` for ``command``."""
    raise TrapError(command)


class Hoard:
    """Unpickles into ``list(range(10**12))``: a few bytes that would fill the loader's memory."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (range(10**12),))


@tool(isolation="process")
def hoard() -> Any:
    """Return a :class:`Hoard`."""
    return Hoard()


@tool(isolation="process")
def plain(value: int) -> Any:
    """Return a :class:`Plain`."""
    return Plain(value)


@tool(isolation="process")
def make_function(offset: int) -> Any:
    """Return a closure (a function pickled by value)."""
    return lambda x: x + offset


def _start_detached(how: str, seconds: str) -> None:
    """Start ``sleep seconds`` out of the worker's process group, in a session of its own.

    Returns once the sleeps show their command line: ``Popen`` returns as soon as ``exec``
    has closed the child's close-on-exec pipe, and on a loaded machine the kernel may take
    a second more to load the program and set the command line tests find it by.
    """
    _start_sleeps(how, seconds)
    _wait_for_sleeps(seconds, 100 if how == "hundred_deaf" else 1)


def _start_sleeps(how: str, seconds: str) -> None:
    """Start the sleeps of ``how`` (see :func:`_start_detached`), not waiting for them."""
    import subprocess
    import sys

    if how == "session":
        subprocess.Popen(["sleep", seconds], start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return
    if how == "hundred_deaf":  # 100 sessions, each ignoring SIGTERM (kept across exec)
        for _ in range(100):
            subprocess.Popen(["sh", "-c", f"trap '' TERM; exec sleep {seconds}"],
                             start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        return
    if how == "sibling":  # clone(CLONE_PARENT): a child of the worker's parent, in a new session
        _clone_sibling(["sleep", seconds])
        return
    if how == "stopped_group":  # a double fork into a group of its own, deaf, then stopped
        subprocess.run([sys.executable, "-c", (
            "import os, signal, subprocess, sys\n"
            "if os.fork() == 0:\n"
            "    os.setpgrp(); signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "    subprocess.Popen(['sleep', sys.argv[1]])\n"
            "    os.kill(os.getpid(), signal.SIGSTOP)\n"), seconds], check=True)
        return
    # double fork: a middle process starts it in a new session and exits at once
    subprocess.run(
        [sys.executable, "-c", "import subprocess, sys; subprocess.Popen(['sleep', sys.argv[1]], "
         "start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)",
         seconds], check=True)


def _clone_sibling(argv: list[str]) -> None:
    """Start ``argv`` as a sibling of this process (x86-64 Linux ``clone(CLONE_PARENT)``)."""
    clone_parent, sigchld, sys_clone = 0x00008000, 17, 56
    libc = ctypes.CDLL(None, use_errno=True)
    devnull = os.open(os.devnull, os.O_RDWR)
    pid = libc.syscall(sys_clone, clone_parent | sigchld, 0, 0, 0, 0)
    if pid == 0:  # the child: nothing but system calls until exec
        os.setsid()
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.execv("/bin/sleep", argv)
    os.close(devnull)
    if pid < 0:
        raise OSError(ctypes.get_errno(), "clone(CLONE_PARENT) failed")


def _wait_for_sleeps(seconds: str, count: int) -> None:
    """Wait until ``count`` processes ``sleep seconds`` run (seen in this PID namespace)."""
    for _ in range(500):
        found = 0
        for name in os.listdir("/proc"):
            with contextlib.suppress(OSError):
                if name.isdigit() and Path(f"/proc/{name}/cmdline").read_bytes() == (
                        b"sleep\0" + seconds.encode() + b"\0"):
                    found += 1
        if found >= count:
            return
        time.sleep(0.02)


@tool(isolation="process")
def spawn_detached(seconds: str, how: str, ready_file: str, stay: bool) -> None:
    """Start a detached ``sleep seconds`` (``how``: ``session`` or ``double_fork``), then
    create ``ready_file`` and return, or sleep on (``stay``). Tests find the sleep by its
    unique ``seconds``: inside a PID namespace the worker does not know its outside pid."""
    _start_detached(how, seconds)
    Path(ready_file).write_text("started")
    if stay:
        time.sleep(1000)


@tool(isolation="process")
def find_secret(parent: int, secret: str, unmount: bool = False) -> dict[str, Any]:
    """Look for ``secret`` in every ``/proc/*/environ`` this worker can read.

    With ``unmount``, and only as process 1 of a PID namespace (in a sandbox: never the
    machine's own ``/proc``), first try to unmount ``/proc``, as a tool would to uncover the
    host's ``/proc`` below the sandbox's.
    """
    unmounted = False
    if unmount and os.getpid() == 1:
        libc = ctypes.CDLL(None, use_errno=True)
        unmounted = libc.umount2(b"/proc", 2) == 0  # MNT_DETACH
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if secret.encode() in Path(f"/proc/{name}/environ").read_bytes():
                    found.append(int(name))
            except OSError:
                pass
    return {"found": found, "unmounted": unmounted, "sees_parent": Path(f"/proc/{parent}").exists(),
            "pid": os.getpid()}


@tool(isolation="process")
def open_files(parent: int) -> dict[str, Any]:
    """What this worker has open, and what it can see open in ``parent`` (via ``/proc``)."""

    def targets(pid: str) -> list[str]:
        found = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):  # the directory's own descriptor, gone by now
                found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        return found

    try:
        parents: list[str] | None = targets(str(parent))
    except OSError:
        parents = None
    return {"own": targets("self"), "parent": parents}


@tool(isolation="process")
def detach_then_crash(seconds: str, how: str) -> None:
    """Start a detached ``sleep seconds`` (see :func:`spawn_detached`), then end the worker."""
    _start_detached(how, seconds)
    os._exit(3)


@tool(isolation="process")
def spawn_then_crash(pid_file: str) -> None:
    """Start a long ``sleep`` in the worker's process group, then end the worker at once."""
    import subprocess

    child = subprocess.Popen(["sleep", "1000"])
    Path(pid_file).write_text(str(child.pid))
    os._exit(3)
