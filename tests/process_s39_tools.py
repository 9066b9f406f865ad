"""Tools for tests/test_*_process_s39.py: run in agent processes and process workers."""

from __future__ import annotations

import gc
import os
import signal

import shoal


@shoal.tool
def half_send_then(signal_name: str) -> str:
    """In an agent's process: send part of a message to the parent, then take a signal.

    ``SIGKILL``: as the kernel's OOM killer ends a process that is sending a large message
    (its result, a long event): the parent sees its socket end in the middle of one.
    ``SIGSTOP``: as ``kill -STOP`` stops it there: the rest never comes.
    """
    from shoal.agents._process import Link
    from shoal.agents.remote import HEADER

    link = next(o for o in gc.get_objects() if isinstance(o, Link))
    with link._send_lock:  # no other message of the agent's between the two parts
        link._sock.sendall(HEADER.pack(10_000) + b"\x80" * 100)
        os.kill(os.getpid(), getattr(signal, signal_name))
    return "unreachable"


@shoal.tool
async def sibling_work(y: int) -> int:
    """A sibling's plain work: ``y + 1``."""
    return y + 1


@shoal.tool(isolation="process")
def nap(seconds: float) -> float:
    """Sleep ``seconds`` in a worker; return them."""
    import time

    time.sleep(seconds)
    return seconds


@shoal.tool(isolation="process")
def nap_marked(path: str, seconds: float) -> float:
    """Create ``path`` (the call has begun in its worker), then sleep ``seconds``."""
    import time
    from pathlib import Path

    Path(path).touch()
    time.sleep(seconds)
    return seconds


@shoal.tool(isolation="process")
def echo(value: object) -> object:
    """Return ``value`` as it came (across the worker's pipes, both ways)."""
    return value


@shoal.tool(isolation="process")
def blob(size: int) -> bytes:
    """``size`` bytes."""
    return b"x" * size
