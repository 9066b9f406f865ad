"""Ending a worker together with every process its tools started, wherever they went.

A tool may start processes that leave the worker's process group (``start_new_session=True``,
``setsid``, a double fork), so killing the group misses them. On Linux a worker is therefore a
*child subreaper* (:func:`become_subreaper`): orphans among its descendants are reparented to
it rather than to init, so its descendants stay findable as a tree below it.
:func:`kill_tree` freezes that tree top-down with ``SIGSTOP`` (a stopped process cannot fork,
exit or reap a child, so no pid in the tree can change owner meanwhile), walks it again until a
pass finds nothing new, then ``SIGKILL``s every process in it, children before their parents
(see :func:`_kill_below`). Elsewhere (macOS) only the process group is killed.

Only the standard library is imported here: the worker imports this module too.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import suppress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from shoal.executors._process_ref import ProcessRef

__all__ = [
    "become_subreaper", "descendants", "kill_children", "kill_group_but_me", "kill_tree",
    "kill_trees",
]

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


def _stats() -> Iterator[tuple[int, list[bytes]]]:
    """Each process this one can see (Linux ``/proc``): its pid and its stat fields.

    The fields are those after the process's name: "state ppid pgrp ...".
    """
    try:
        names = os.listdir("/proc")
    except OSError:
        return
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        yield int(name), stat[stat.rfind(b")") + 2:].split()


def _parents() -> dict[int, int]:
    """Each process this one can see (Linux ``/proc``), mapped to its parent's pid."""
    return {pid: int(fields[1]) for pid, fields in _stats() if len(fields) > 1}


def kill_group_but_me() -> set[int]:
    """SIGKILL every other process of the caller's process group (Linux ``/proc``); those.

    For a group leader about to exit with a status its parent reads: ``killpg`` would end it
    too, by the signal. Members are frozen first, so that none forks meanwhile.
    """
    me, group = os.getpid(), os.getpgrp()
    frozen: dict[int, None] = {}
    for _ in range(_MAX_PASSES if sys.platform.startswith("linux") else 0):
        new = [pid for pid in _group_members(group) if pid != me and pid not in frozen]
        if not new:
            break
        for pid in new:
            _signal(pid, signal.SIGSTOP)
            frozen[pid] = None
    for pid in frozen:
        _signal(pid, signal.SIGKILL)
    return set(frozen)


def _group_members(group: int) -> list[int]:
    """The pids of process group ``group``'s members, as ``/proc`` shows them now."""
    return [pid for pid, fields in _stats() if len(fields) > 2 and int(fields[2]) == group]


def descendants(root: int) -> set[int]:
    """The pids of every process below ``root`` (not ``root`` itself), as seen right now."""
    return descendants_of({root})


def descendants_of(roots: set[int]) -> set[int]:
    """The pids of every process below any of ``roots`` (not the roots), from one look."""
    return set(_below(roots))


def _below(roots: set[int]) -> list[int]:
    """:func:`descendants_of`, each process listed after its parent."""
    children: dict[int, list[int]] = {}
    for pid, parent in _parents().items():
        children.setdefault(parent, []).append(pid)
    found: dict[int, None] = {}  # in the order found: breadth first
    frontier = list(roots)
    for parent in frontier:  # grows as it goes
        for child in children.get(parent, ()):
            if child not in found and child not in roots:
                found[child] = None
                frontier.append(child)
    return list(found)


def _signal(pid: int, sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def kill_tree(root: int | ProcessRef, *, include_root: bool = True) -> set[int]:
    """SIGKILL ``root``'s process group and every descendant of ``root``; return those killed.

    ``root`` is a :class:`~shoal.executors._process_ref.ProcessRef` (a process that someone
    else may reap meanwhile: nothing is killed once it has been, since its pid, group id and
    children's parent id may belong to other processes by then); or the pid of a child of the
    caller not yet reaped; or the caller itself with ``include_root=False`` (a worker ending
    what it started). Descendants are frozen first, top-down, so that none can fork or
    reparent while the tree is walked.
    """
    if not isinstance(root, int):
        return kill_trees([root])
    if include_root:
        _signal(root, signal.SIGSTOP)  # it can no longer reap: its children's pids stay put
    return _kill_below({root: None}, include_root=include_root)


def kill_trees(refs: Iterable[ProcessRef]) -> set[int]:
    """:func:`kill_tree` for many processes at once; return every pid killed.

    One walk of ``/proc`` per pass serves all the trees, however many there are: ending a
    pool of fifty workers costs two looks at the process table, not a hundred (each a read of
    every process's ``stat``), and no worker keeps running (starting, competing for the
    cores) while the ones before it are killed.
    """
    stopped: dict[int, ProcessRef | None] = {}
    for ref in refs:
        # Delivered: it had not been reaped. Stopped, it can no longer reap its children nor
        # exit by itself until the SIGKILL below: their pids and its own stay what we saw.
        if ref.signal(signal.SIGSTOP):
            stopped[ref.pid] = ref
    if not stopped:
        return set()
    return _kill_below(stopped)


def kill_children(pids: Iterable[int]) -> set[int]:
    """:func:`kill_tree` for many children of the caller not yet reaped; return those killed.

    As :func:`kill_trees` does for references, one walk of ``/proc`` per pass serves every
    tree: a template ending fifty workers looks at the process table twice, not a hundred
    times, and no worker goes on running while the ones before it are killed.
    """
    roots: dict[int, ProcessRef | None] = {}
    for pid in pids:
        _signal(pid, signal.SIGSTOP)  # unreaped: its pid, and its children's, stay put
        roots[pid] = None
    return _kill_below(roots) if roots else set()


def _kill_below(roots: dict[int, ProcessRef | None], *, include_root: bool = True) -> set[int]:
    """Freeze the roots' descendants; kill them (children first), each root's group, the roots.

    A root given with its :class:`ProcessRef` is signalled only through it; one given as a
    plain pid (``None``) is a child of ours not yet reaped, or (``include_root=False``) the
    caller itself, which is spared.

    Children before their parents: a frozen process whose parent is killed first is given to
    init (or to a subreaper above), out of the roots' tree; were this process killed then
    (the caller may be a process agent that its own parent's kill reaches), it would stay
    frozen for good, out of reach of whoever kills the tree next, holding whatever it holds
    (the output pipes of the program that started the tree). Killed from the bottom up, each
    process not killed yet still has its parent, frozen, in the tree.
    """
    frozen: dict[int, None] = {}  # parents before their children
    if sys.platform.startswith("linux"):
        for _ in range(_MAX_PASSES):
            new = [pid for pid in _below(set(roots)) if pid not in frozen]
            if not new:
                break
            for pid in new:
                _signal(pid, signal.SIGSTOP)
                frozen[pid] = None
    for pid in reversed(frozen):
        _signal(pid, signal.SIGKILL)
    for root, ref in roots.items():
        if ref is not None:
            ref.kill_group(signal.SIGKILL)  # only while the leader is still there
        elif include_root:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(root, signal.SIGKILL)
    for root, ref in roots.items():
        if ref is not None:
            ref.signal(signal.SIGKILL)
        elif include_root:
            _signal(root, signal.SIGKILL)
    killed = set(frozen)
    if include_root:
        killed |= set(roots)
    return killed
