"""Tools for :mod:`tests.test_hostile_exec2_s38`; worker processes import them here."""

from __future__ import annotations

import os
import time

from shoal.tools import tool


@tool(isolation="process")
def nap(seconds: float) -> int:
    """Sleep ``seconds`` in the worker; its pid."""
    time.sleep(seconds)
    return os.getpid()


@tool(isolation="process")
def close_every_fd() -> str:
    """Close every file descriptor from 3 up, as a tool that "cleans up" before exec does."""
    os.closerange(3, 65536)
    return "unreachable?"


@tool(isolation="process")
def die_hard() -> str:
    """End the worker at once with ``os._exit(3)``: a crash, as a C extension's abort is."""
    os._exit(3)



@tool(isolation="thread")
def thread_nap(seconds: float) -> float:
    """Sleep ``seconds`` on a pool thread; how long that was."""
    time.sleep(seconds)
    return seconds
