"""Tools for :mod:`tests.test_found_s37`; worker processes import them from here."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

from shoal.tools import tool


def _on_term(signum: int, frame: object) -> None:  # pragma: no cover - never delivered
    """A handler a tool installs and leaves behind."""


@tool(isolation="process")
def change_imports_and_signals() -> int:
    """Leave signal handlers, a mask, an alarm, ``sys.path`` and ``json`` changed; the pid."""
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    signal.setitimer(signal.ITIMER_REAL, 3600)
    sys.path.append("/nonexistent/left-by-a-tool")
    sys.modules["json"] = type(sys)("json")  # a module of the same name, empty
    return os.getpid()


@tool(isolation="process")
def imports_and_signals() -> dict[str, Any]:
    """What a call finds of the worker's signal handlers, mask, alarm, path and modules."""
    return {"term": str(signal.getsignal(signal.SIGTERM)),
            "int": str(signal.getsignal(signal.SIGINT)),
            "blocked": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, ())),
            "alarm": signal.getitimer(signal.ITIMER_REAL)[0] > 0,
            "path": list(sys.path), "json": sys.modules["json"] is json,
            "pid": os.getpid()}


@tool(isolation="process")
def raise_keyboard_interrupt() -> int:
    """Raise ``KeyboardInterrupt`` from the tool's own code (no Ctrl-C was pressed)."""
    raise KeyboardInterrupt("raised by the tool")


@tool(isolation="process")
async def raise_keyboard_interrupt_async() -> int:
    """Raise ``KeyboardInterrupt`` from an async tool's own code."""
    raise KeyboardInterrupt("raised by the tool")


@tool(isolation="process")
def echo(value: str) -> str:
    """Return ``value``."""
    return value


@tool(isolation="inline")
async def raise_keyboard_interrupt_after_waiting() -> int:
    """Wait a loop turn (so the call has a task of its own), then raise ``KeyboardInterrupt``."""
    await asyncio.sleep(0)
    raise KeyboardInterrupt("raised by the tool")
