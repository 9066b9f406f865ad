"""A process known by more than its pid, so that a signal never reaches another process.

A pid names whichever process holds it *now*: once a process shoal started has ended and been
reaped, the kernel may give its pid to an unrelated process, and a kill by pid would hit that
one. A :class:`ProcessRef` holds a *pidfd* (Linux 5.3+), which refers to that exact process for
as long as it is open, whoever takes its pid later: a signal sent through it reaches the
process while it runs or is a zombie, and fails once it has been reaped. Where there are no
pidfds (macOS, older kernels) it records the process's start time when made, and
signals only while the process holding the pid started then (to the resolution of that time:
a clock tick, 10 ms, on Linux; a pid is seldom reused so soon). On Linux that start is the
kernel's count of clock ticks since boot (``/proc/PID/stat``), which a step of the system
clock cannot change; psutil's ``create_time()`` adds the boot time, which the kernel works
out again from the wall clock at each read, so a clock stepped between the two reads would
make the same process look like another, and a kill be withheld. Elsewhere it is psutil's
``create_time()``. Not through
:meth:`psutil.Process.send_signal`: once that object has seen its process gone, it signals
the pid without checking again.

**Process groups.** ``killpg`` cannot go through a pidfd. A group's id is its leader's pid,
and a pid is not given to a new process while any process (a zombie included) holds it as its
pid or its group's id. So :meth:`ProcessRef.kill_group` signals the group only while its
leader, reached through the pidfd, has not been reaped: no other process can have made a group
of that id meanwhile. That is exact when whoever reaps the leader waits for the kill (shoal's
workers stay zombies until their group has been killed). Without pidfds it signals the group
while the pid is held by the leader (same start time) or by no process at all (a group of
that id can then only be the leader's, its members keeping the id reserved); a window of
microseconds remains there between the check and the signal.

Only the standard library is imported up front (psutil lazily, where there are no pidfds).
"""

from __future__ import annotations

import os
import signal
from contextlib import suppress

__all__ = ["ProcessRef", "pidfds_work", "start_ticks"]


def pidfds_work() -> bool:
    """Whether this system has pidfds (Linux 5.3+ and a Python that exposes them)."""
    if not hasattr(os, "pidfd_open") or not hasattr(signal, "pidfd_send_signal"):
        return False
    try:
        fd = os.pidfd_open(os.getpid())
    except OSError:  # ENOSYS: an older kernel
        return False
    os.close(fd)
    return True


class ProcessRef:
    """One process, for signalling it (and the group it leads) without ever reaching another.

    Make it while the process cannot have been reaped yet (a child not waited for, or one the
    caller knows is held as a zombie), or confirm it afterwards and call :meth:`forget` if
    that fails. :meth:`close` releases the pidfd once nobody will signal the process again.
    """

    def __init__(self, pid: int, *, pidfd: bool = True) -> None:
        """Refer to process ``pid``; ``pidfd=False``: by its start time, even with pidfds."""
        self.pid = pid
        self.fd = -1  # the pidfd, or -1 (none here, forgotten or closed)
        self._started: float | None = None  # the start (see _start_of), where no pidfds
        self._gone = False  # forgotten or closed: no signal goes out any more
        if pidfd and hasattr(os, "pidfd_open"):
            try:
                self.fd = os.pidfd_open(pid)
                return
            except ProcessLookupError:  # reaped already: nothing of ours holds the pid
                self._gone = True
                return
            except OSError:  # ENOSYS (a kernel before 5.3): fall back to the start time
                pass
        self._started = _start_of(pid)
        if self._started is None:
            self._gone = True

    @property
    def gone(self) -> bool:
        """Whether this reference no longer reaches the process (forgotten or closed)."""
        return self._gone

    def signal(self, number: int) -> bool:
        """Send signal ``number`` (0: only check); whether it reached the process.

        ``False`` when the process has been reaped (its pid may belong to another process by
        now: nothing is sent to that one), or this reference was forgotten or closed.
        """
        if self._gone:
            return False
        if self.fd >= 0:
            try:
                signal.pidfd_send_signal(self.fd, number)
            except (ProcessLookupError, PermissionError):
                return False
            return True
        if not self._same_start():
            return False
        try:
            os.kill(self.pid, number)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def _same_start(self) -> bool:
        """Whether the process holding the pid now started when this one did."""
        started = _start_of(self.pid)
        return started is not None and started == self._started

    def unreaped(self) -> bool:
        """Whether the process still exists, running or a zombie (its pid is still its own)."""
        return self.signal(0)

    def kill_group(self, number: int) -> bool:
        """Send ``number`` to the process group this process leads; whether it was sent.

        Only while the leader is unreaped (see the module's docstring): a group whose leader
        is gone is left alone rather than risking a group of the same id made since.
        """
        if not self._group_is_ours():
            return False
        try:
            os.killpg(self.pid, number)
        except (ProcessLookupError, PermissionError):  # no such group (any more)
            return False
        return True

    def _group_is_ours(self) -> bool:
        if self.fd >= 0 or self._gone:
            return self.unreaped()
        if self._same_start():  # the pid is held by the leader still
            return True
        import psutil

        return not psutil.pid_exists(self.pid)  # by none: a group of its id is the leader's

    def forget(self) -> None:
        """Stop signalling the process: it may have been reaped before this was made."""
        self.close()

    def close(self) -> None:
        """Release the pidfd; no signal goes out through this reference afterwards."""
        self._gone = True
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with suppress(OSError):
                os.close(fd)



def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (Linux ``/proc``), or ``None``.

    Field 22 of ``/proc/PID/stat`` (a zombie's too): fixed for the process's life, whatever
    the system clock does. ``None``: no such process, or no such file (not Linux).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return None
    # "pid (command) state ppid ...": the command may hold spaces and ')' itself; the start
    # is field 22, the 20th after the command
    fields = stat.rpartition(b")")[2].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _start_of(pid: int) -> float | None:
    """When process ``pid`` started, in a unit only compared with itself; ``None``: no such.

    On Linux :func:`start_ticks`; elsewhere psutil's ``create_time()`` (seconds since the
    epoch, as the kernel keeps it).
    """
    if _PROCFS:
        ticks = start_ticks(pid)
        return None if ticks is None else float(ticks)
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:  # no such process (or a zombie psutil cannot read)
        return None


#: Whether processes' starts are read from a Linux ``/proc`` (``/proc/self/stat`` is there).
_PROCFS = start_ticks(os.getpid()) is not None
