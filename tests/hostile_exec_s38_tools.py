"""Tools for :mod:`tests.test_hostile_exec_s38`; worker and agent processes import them here."""

from __future__ import annotations

import gc
import os
import resource
import signal

from shoal.tools import tool


@tool(isolation="process")
def lower_limits(hard: bool) -> int:
    """Lower this process's file limit (its hard one too, for good, if ``hard``); its pid."""
    _, top = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16 if hard else top))
    return os.getpid()


@tool(isolation="process")
def lower_priority() -> int:
    """Lower this process's scheduling priority (no process may raise its own back); its pid."""
    os.nice(5)
    return os.getpid()


@tool(isolation="process")
def open_files_and_priority(count: int) -> dict[str, int]:
    """Open ``count`` files at once; this process's id and niceness."""
    files = [open(os.devnull, "rb") for _ in range(count)]  # noqa: SIM115
    try:
        return {"pid": os.getpid(), "opened": len(files), "nice": os.nice(0)}
    finally:
        for file in files:
            file.close()


@tool(isolation="process")
def stop_myself() -> int:
    """Stop this process (``SIGSTOP``), as ``kill -STOP`` would; its pid, should it go on."""
    os.kill(os.getpid(), signal.SIGSTOP)
    return os.getpid()


@tool(isolation="process")
def change_the_interpreter() -> int:
    """Lower the recursion limit, set trace and profile hooks, turn the collector off; pid."""
    import sys
    import threading

    sys.setrecursionlimit(40)
    sys.settrace(lambda *args: None)
    sys.setprofile(lambda *args: None)
    threading.settrace(lambda *args: None)
    gc.disable()
    return os.getpid()


@tool(isolation="process")
def interpreter_state() -> dict[str, object]:
    """What a call finds of the interpreter, and a result nested 60 lists deep; the pid."""
    import sys
    import threading

    nested: list[object] = []
    for _ in range(60):
        nested = [nested]
    return {"pid": os.getpid(), "trace": sys.gettrace() is None,
            "profile": sys.getprofile() is None, "threads": threading.gettrace() is None,
            "gc": gc.isenabled(), "limit": sys.getrecursionlimit(), "nested": nested}
