"""Helpers for tests that make the kernel give a dead process's pid to another, for real.

Where this process may set the next pid (``/proc/sys/kernel/ns_last_pid``, root in its PID
namespace), :func:`take_pid` starts an unrelated process, in a session of its own, on the very
pid (and so the very process group id) a dead process had; a test then drives a kill path and
checks that the newcomer lives on. Shared by the tests of tool workers, agent processes and
runs' records.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from shoal.executors._process_ref import pidfds_work
from tests.conftest import wait_until

__all__ = ["NEXT_PID", "a_zombie", "alive", "can_choose_pids", "free", "needs_pid_choice",
           "needs_pidfds", "newcomers", "take_pid"]

NEXT_PID = Path("/proc/sys/kernel/ns_last_pid")


def can_choose_pids() -> bool:
    """Whether this process may set the pid the next process gets."""
    try:
        with NEXT_PID.open("w") as f:
            f.write(NEXT_PID.read_text())
    except OSError:
        return False
    return True


needs_pid_choice = pytest.mark.skipif(
    not can_choose_pids(), reason="setting the next pid (ns_last_pid) needs CAP_SYS_ADMIN")
needs_pidfds = pytest.mark.skipif(not pidfds_work(), reason="no pidfds here (Linux 5.3+)")


def take_pid(pid: int) -> subprocess.Popen[bytes]:
    """Start ``sleep`` as process ``pid`` (free by now), leading a session and group of its own.

    Other processes on the machine may take the pid first: then try again. A pid is free once
    no process holds it, nor a process group of that id (members of a dead worker's group may
    take a moment to end).
    """
    assert wait_until(lambda: free(pid), timeout=10.0), f"pid {pid} still held"
    for _ in range(200):
        with NEXT_PID.open("w") as f:
            f.write(str(pid - 1))
        newcomer = subprocess.Popen(["sleep", "60"], start_new_session=True)
        if newcomer.pid == pid:
            return newcomer
        newcomer.kill()
        newcomer.wait()
    pytest.skip(f"pid {pid} kept being taken by other processes")


def free(pid: int) -> bool:
    """Whether no process holds ``pid``, as its pid or as its process group's id."""
    if psutil.pid_exists(pid):
        return False
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def alive(proc: subprocess.Popen[bytes]) -> bool:
    """Whether ``proc`` (a child of this process) has not ended."""
    return proc.poll() is None


@pytest.fixture
def newcomers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started on reused pids: killed and reaped after the test, whatever happened."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def a_zombie(pid: int) -> bool:
    """Whether ``pid`` has ended and not been reaped yet."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
