"""Ending a worker together with every process its tools started, wherever they went.

A tool may start processes that leave the worker's process group (``start_new_session=True``,
``setsid``, a double fork), so killing the group misses them. On Linux a worker is therefore a
*child subreaper* (:func:`become_subreaper`): orphans among its descendants are reparented to
it rather than to init, so its descendants stay findable as a tree below it.
:func:`kill_tree` freezes that tree top-down with ``SIGSTOP`` (a stopped process cannot fork,
exit or reap a child, so no pid in the tree can change owner meanwhile), walks it again until a
pass finds nothing new, then ``SIGKILL``s every process in it. Elsewhere (macOS) only the
process group is killed.

Only the standard library is imported here: the worker imports this module too.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import suppress

__all__ = ["become_subreaper", "descendants", "kill_tree"]

_PR_SET_CHILD_SUBREAPER = 36
_MAX_PASSES = 100  # a tree that keeps changing after this many passes is killed as it stands


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux); whether it worked."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _parents() -> dict[int, int]:
    """Each process this one can see (Linux ``/proc``), mapped to its parent's pid."""
    found: dict[int, int] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1:
            found[int(name)] = int(fields[1])
    return found


def descendants(root: int) -> set[int]:
    """The pids of every process below ``root`` (not ``root`` itself), as seen right now."""
    children: dict[int, list[int]] = {}
    for pid, parent in _parents().items():
        children.setdefault(parent, []).append(pid)
    found: set[int] = set()
    frontier = [root]
    while frontier:
        for child in children.get(frontier.pop(), ()):
            if child not in found:
                found.add(child)
                frontier.append(child)
    return found


def _signal(pid: int, sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def kill_tree(root: int, *, include_root: bool = True) -> set[int]:
    """SIGKILL ``root``'s process group and every descendant of ``root``; return those killed.

    ``root`` must be a child of the caller not yet reaped, or the caller itself with
    ``include_root=False`` (a worker ending what it started). Descendants are frozen first,
    top-down, so that none can fork or reparent while the tree is walked.
    """
    if include_root:
        _signal(root, signal.SIGSTOP)  # it can no longer reap: its children's pids stay put
    frozen: set[int] = set()
    if sys.platform.startswith("linux"):
        for _ in range(_MAX_PASSES):
            new = descendants(root) - frozen
            if not new:
                break
            for pid in new:
                _signal(pid, signal.SIGSTOP)
            frozen |= new
    if include_root:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(root, signal.SIGKILL)
    for pid in frozen:
        _signal(pid, signal.SIGKILL)
    if include_root:
        _signal(root, signal.SIGKILL)
        frozen.add(root)
    return frozen
