"""Reaping the orphans a subreaper is given, without taking its own children's statuses.

A child subreaper (see :mod:`shoal.executors._reaper`) is given every orphan below it: a
process a tool double-forked becomes its child when its parent ends, and once it ends it stays
a zombie (a slot in the process table, its pid taken) until this process waits for it, which
nothing here would: no code of this process started it. :func:`start_orphan_reaper` runs a
small thread that reaps them.

Its own children are left to their owners: a zombie is reaped only if it stayed one across two
looks (an owner that waits for its child reaps it at once) and no ``Popen`` of this process
(:mod:`subprocess`, :mod:`asyncio`'s subprocesses and shoal's pools hold one; so does
:mod:`multiprocessing`) holds its pid unreaped: a tool that waits for its process later still
reads its exit status. Linux only (``/proc``).

Only the standard library is imported here.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from contextlib import suppress

__all__ = ["start_orphan_reaper"]

#: seconds between two looks at this process's children
INTERVAL = 0.5

_started = False


def start_orphan_reaper(interval: float = INTERVAL) -> bool:
    """Start the thread that reaps orphans given to this process (Linux); whether it runs.

    Started once per process: a second call does nothing.
    """
    global _started
    if _started or not sys.platform.startswith("linux"):
        return _started
    _started = True
    # it only looks and waits: a small stack, as under a process worker's memory limit
    previous = threading.stack_size(256 * 1024)
    try:
        threading.Thread(target=_reap_forever, args=(interval,), name="shoal-orphans",
                         daemon=True).start()
    finally:
        threading.stack_size(previous)
    return True


def _reap_forever(interval: float) -> None:
    seen: dict[int, bytes] = {}
    wait = threading.Event().wait
    while True:
        wait(interval)
        seen = reap_orphans(seen)


def reap_orphans(seen: dict[int, bytes]) -> dict[int, bytes]:
    """Reap each zombie child in ``seen`` (pid -> start time) still one and not owned.

    Returns the zombies found now, for the next look.
    """
    now = _zombie_children()
    lingering = [pid for pid, start in now.items() if seen.get(pid) == start]
    if lingering:
        owned = _owned_pids()
        for pid in lingering:
            if pid not in owned:
                with suppress(ChildProcessError):  # reaped by its owner meanwhile
                    os.waitpid(pid, os.WNOHANG)
                now.pop(pid, None)
    return now


def _zombie_children() -> dict[int, bytes]:
    """The children of this process that have ended, not reaped: pid -> start time."""
    children: set[int] = set()
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return {}
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/children", "rb") as f:
                children.update(int(pid) for pid in f.read().split())
        except OSError:  # a thread that ended meanwhile
            continue
    zombies: dict[int, bytes] = {}
    for pid in children:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ... starttime": comm may hold spaces and parentheses
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 19 and fields[0] == b"Z":
            zombies[pid] = fields[19]
    return zombies


def _owned_pids() -> set[int]:
    """The pids that a ``Popen`` object of this process holds and has not reaped."""
    kinds: list[type] = []
    for name in ("subprocess", "multiprocessing.popen_fork"):
        module = sys.modules.get(name)
        if module is not None:
            kinds.append(module.Popen)
    found = tuple(kinds)
    owned: set[int] = set()
    for obj in gc.get_objects():
        if isinstance(obj, found) and getattr(obj, "returncode", None) is None:
            pid = getattr(obj, "pid", None)
            if isinstance(pid, int):
                owned.add(pid)
    return owned
