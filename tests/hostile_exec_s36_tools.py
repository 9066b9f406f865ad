"""Tools for :mod:`tests.test_hostile_exec_s36`; worker processes import them from here."""

from __future__ import annotations

import io
import os
import signal
import sys
import time
from typing import Any

from shoal.tools import tool

# set when a worker imports this module: it stays for every call of its tools there, as for a
# library that sets a variable of its own when imported
os.environ.setdefault("SHOAL_S36_SET_ON_IMPORT", "yes")


@tool(isolation="process")
def change_the_worker(directory: str) -> int:
    """Change what a process keeps between calls, and put none of it back; the worker's pid."""
    os.chdir(directory)
    os.environ["SHOAL_S36_LEFT"] = "by an earlier call"
    os.environ.pop("PATH", None)
    os.umask(0o077)
    sys.stdout = io.StringIO()
    return os.getpid()


@tool(isolation="process")
def worker_state() -> dict[str, Any]:
    """What a call finds: directory, environment, mask, whether print reaches the real stdout."""
    mask = os.umask(0o022)
    os.umask(mask)
    return {"cwd": os.getcwd(), "left": os.environ.get("SHOAL_S36_LEFT"),
            "on_import": os.environ.get("SHOAL_S36_SET_ON_IMPORT"),
            "path": "PATH" in os.environ, "umask": mask,
            "stdout": sys.stdout is sys.__stdout__, "pid": os.getpid()}


@tool(isolation="process", limits={"cpu_seconds": 1})
def ignore_cpu_limit_signal() -> int:
    """Ignore ``SIGXCPU`` (the signal of the CPU limit) and return; the worker's pid."""
    signal.signal(signal.SIGXCPU, signal.SIG_IGN)
    return os.getpid()


@tool(isolation="process", limits={"cpu_seconds": 1})
def spin(seconds: float) -> int:
    """Use ``seconds`` of CPU time; the worker's pid."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    return os.getpid()


@tool(isolation="process")
def work_in_a_removed_directory() -> int:
    """Move into a temporary directory, then remove it (and stay there); the worker's pid."""
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        os.chdir(directory)
    return os.getpid()


@tool(isolation="process")
def close_stdout() -> int:
    """Close descriptor 1, then open a file that takes its number; the worker's pid."""
    sys.stdout.flush()
    os.close(1)
    global _KEPT
    _KEPT = open(os.devnull, "rb")  # noqa: SIM115  # takes number 1, kept open
    return os.getpid()


_KEPT: Any = None


@tool(isolation="process")
def print_line(text: str) -> int:
    """Print ``text`` (and flush it); the worker's pid."""
    print(text, flush=True)
    return os.getpid()


@tool(env=["SHOAL_S36_ASKED"])  # no isolation named: env= only a process worker applies
def environment_seen() -> dict[str, Any]:
    """The process the call ran in, and the two variables it could see."""
    return {"pid": os.getpid(), "asked": os.environ.get("SHOAL_S36_ASKED"),
            "secret": os.environ.get("SHOAL_S36_SECRET")}


@tool
def raise_huge(size: int) -> int:
    """Raise a ValueError whose message is ``size`` characters long."""
    raise ValueError("x" * (size - 3) + "end")
