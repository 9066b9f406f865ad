"""The process backend never signals a pid that another process may have taken.

A worker's pid is reused by the kernel once the worker has been reaped. These tests make that
happen for real: where this process may set the next pid (``/proc/sys/kernel/ns_last_pid``,
root in its PID namespace), :func:`take_pid` starts an unrelated process, in a session of its
own, on the very pid (and so the very process group id) a dead worker had, then drives the
pool's kill paths and checks that the newcomer lives on.
"""

import asyncio
import gc
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from shoal import WorkerCrashedError, tool
from shoal.executors import process
from shoal.executors._process_ref import ProcessRef, pidfds_work
from shoal.executors._reaper import kill_tree
from shoal.executors.base import Call
from shoal.executors.process import ProcessExecutor
from tests import process_tools as pt
from tests._pids import (
    a_zombie,
    alive,
    free,
    needs_pid_choice,
    needs_pidfds,
    newcomers,
    take_pid,
)
from tests.conftest import arun, until, wait_until
from tests.conftest import pid_gone as gone

pytestmark = pytest.mark.usefixtures("no_child_process_leak")

SLOW = 60.0

__all__ = ["newcomers"]  # the fixture, for the tests below


def a_call(target: Any, run_id: str = "run", **args: Any) -> Call:
    return Call(0, "node", target, args, 1, "process", None, run_id)


# ---- the reference itself -------------------------------------------------------------------


@needs_pid_choice
@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "start-time"])
def test_a_process_ref_never_reaches_the_process_that_took_its_pid(
        pidfd: bool, newcomers: list[subprocess.Popen[bytes]]) -> None:
    if pidfd and not pidfds_work():
        pytest.skip("no pidfds here")
    ours = subprocess.Popen(["sleep", "60"], start_new_session=True)
    ref = ProcessRef(ours.pid, pidfd=pidfd)
    assert (ref.fd >= 0) is pidfd
    assert ref.unreaped()
    ours.kill()
    assert wait_until(lambda: a_zombie(ours.pid))
    assert ref.unreaped()  # a zombie still holds its pid: it is still ours
    ours.wait()
    assert not ref.unreaped()
    if not pidfd:  # start times are in clock ticks (10 ms on Linux): a newcomer in the same
        time.sleep(0.05)  # tick would pass for ours (pid reuse takes far longer in practice)
    newcomer = take_pid(ours.pid)
    newcomers.append(newcomer)
    assert os.getpgid(newcomer.pid) == ours.pid  # the same pid, and the same group id
    assert not ref.signal(signal.SIGKILL)
    assert not ref.kill_group(signal.SIGKILL)
    assert kill_tree(ref) == set()
    time.sleep(0.1)
    assert alive(newcomer)
    ref.close()


needs_linux_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                                      reason="starts in clock ticks come from Linux's /proc")


@needs_linux_proc
def test_a_start_time_ref_knows_its_process_by_clock_ticks_since_boot() -> None:
    ours = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        first, second = ProcessRef(ours.pid, pidfd=False), ProcessRef(ours.pid, pidfd=False)
        ticks = int(Path(f"/proc/{ours.pid}/stat").read_text().rpartition(")")[2].split()[19])
        assert first._started == second._started == ticks  # read twice: the same, exactly
        assert first.unreaped() and second.unreaped()
    finally:
        ours.kill()
        ours.wait()
    assert not first.unreaped()


@needs_linux_proc
def test_a_stepped_system_clock_does_not_make_a_start_time_ref_withhold_its_kill(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """psutil's create_time() adds the boot time, which Linux works out again from the wall
    clock at each read: a clock stepped after the ref was made moved it, and the ref took its
    own process for another (a kill withheld, a worker left running)."""
    ours = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        ref = ProcessRef(ours.pid, pidfd=False)
        stepped = psutil.boot_time() + 3600.0  # the clock set an hour forward since
        monkeypatch.setattr(psutil, "boot_time", lambda: stepped)
        linux = getattr(psutil, "_pslinux", None)
        if linux is not None:
            monkeypatch.setattr(linux, "boot_time", lambda: stepped)
        assert ref.unreaped()
        assert ref.kill_group(signal.SIGKILL)
        assert ours.wait(timeout=10.0) == -signal.SIGKILL
    finally:
        if ours.poll() is None:
            ours.kill()
            ours.wait()


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "start-time"])
def test_a_process_ref_kills_the_group_of_a_leader_not_yet_reaped(pidfd: bool) -> None:
    if pidfd and not pidfds_work():
        pytest.skip("no pidfds here")
    leader = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; wait"], start_new_session=True,
                              stdout=subprocess.PIPE)
    assert leader.stdout is not None
    member = int(leader.stdout.readline())
    ref = ProcessRef(leader.pid, pidfd=pidfd)
    try:
        os.kill(leader.pid, signal.SIGKILL)
        assert wait_until(lambda: a_zombie(leader.pid))
        assert ref.kill_group(signal.SIGKILL)  # the leader is a zombie: the group is its own
        assert wait_until(lambda: gone(member))
    finally:
        ref.close()
        leader.wait()
        leader.stdout.close()
    assert not ref.signal(0) and ref.gone  # closed: nothing goes out any more


# ---- the pool's kill paths ------------------------------------------------------------------


@needs_pid_choice
def test_killing_a_worker_reaped_before_its_exit_was_seen_spares_the_pids_new_owner(
        monkeypatch: pytest.MonkeyPatch, newcomers: list[subprocess.Popen[bytes]]) -> None:
    """asyncio's child watcher reaps a spawned worker in a thread of its own and only then has
    the loop set its ``returncode``: a kill in between used to go to whoever had its pid."""
    monkeypatch.setattr(process, "_PIDFDS", False)  # as where there are no pidfds

    async def main() -> None:
        executor = ProcessExecutor(1, start_method="spawn")
        try:
            await executor.execute(a_call(pt.pid))
            (worker,) = [w for lane in executor._lanes.values() for w in lane.live]
            assert isinstance(worker.proc, asyncio.subprocess.Process)
            os.kill(worker.pid, signal.SIGKILL)
            # No await from here on: the watcher's thread reaps the worker, the loop cannot
            # yet record it, and the pid goes to a newcomer.
            newcomers.append(take_pid(worker.pid))
            assert worker.proc.returncode is None
            worker.kill()
            await asyncio.sleep(0.1)
            assert alive(newcomers[0])
        finally:
            await executor.close()
        assert alive(newcomers[0])

    arun(main(), timeout=SLOW)


@needs_pidfds
def test_a_spawned_worker_that_died_stays_unreaped_until_the_pool_lets_it_go() -> None:
    """Reaped only by the pool, its pid (its group's id) cannot pass to another process while
    the pool may still signal it or its group."""

    async def main() -> None:
        executor = ProcessExecutor(1, start_method="spawn")
        try:
            await executor.execute(a_call(pt.pid))
            (pid,) = executor.worker_pids
            os.kill(pid, signal.SIGKILL)
            await until(lambda: a_zombie(pid))
            await asyncio.sleep(0.3)  # the loop runs: nothing reaps it behind the pool's back
            assert a_zombie(pid)
            assert await executor.execute(a_call(pt.pid)) != pid  # dropped and replaced
            await until(lambda: not psutil.pid_exists(pid), within=10.0)
        finally:
            await executor.close()

    arun(main(), timeout=SLOW)


# Never closed, the pool leaves its worker's pipes to the collector (asyncio then warns about
# them as unclosed transports): the warnings are expected.
@needs_pid_choice
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_the_finalizer_of_a_pool_whose_template_died_spares_the_pids_new_owners(
        newcomers: list[subprocess.Popen[bytes]]) -> None:
    async def main() -> None:
        executor = ProcessExecutor(1)
        await executor.execute(a_call(pt.pid))
        (pid,) = executor.worker_pids
        template = executor.template_pid
        assert template is not None
        os.kill(template, signal.SIGKILL)  # its workers die with it; others reap them
        if not wait_until(lambda: free(pid), timeout=10.0):
            pytest.skip("nothing reaps orphaned processes here")
        newcomers.append(take_pid(pid))
        del executor
        gc.collect()  # the finalizer: it kills the workers it knows of, the template too

    arun(main(), timeout=SLOW)
    gc.collect()
    time.sleep(0.1)
    assert alive(newcomers[0])


@tool(isolation="process")
def crash_leaving_a_group_member(pid_file: str) -> None:
    """Start ``sleep`` in the worker's process group, then kill the worker from within.

    The worker's stand-in (the process the pool started, this one's parent) is killed first,
    so it cannot end the ``sleep`` itself: only the pool's kill of the group can.
    """
    member = subprocess.Popen(["sleep", "60"])
    Path(pid_file).write_text(str(member.pid))
    stand_in = os.getppid()
    if "shoal.executors" in " ".join(psutil.Process(stand_in).cmdline()):
        os.kill(stand_in, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("method", ["template", "spawn"])
def test_a_crashed_workers_group_is_killed_before_the_worker_is_reaped(
        method: str, tmp_path: Path) -> None:
    pid_file = tmp_path / "member.pid"

    async def main() -> None:
        executor = ProcessExecutor(1, start_method=method)
        try:
            with pytest.raises(WorkerCrashedError):
                await executor.execute(a_call(crash_leaving_a_group_member,
                                              pid_file=str(pid_file)))
        finally:
            await executor.close()

    arun(main(), timeout=SLOW)
    member = int(pid_file.read_text())
    assert wait_until(lambda: gone(member), timeout=5.0)


# ---- no descriptor leaks --------------------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
@pytest.mark.parametrize("method", ["template", "spawn"])
def test_starting_and_ending_workers_leaves_no_descriptor_open(method: str,
                                                               tmp_path: Path) -> None:
    """Every worker's pidfd and pipes are closed when it ends: crashed, cancelled, closed."""
    count = 8

    async def main() -> None:
        executor = ProcessExecutor(2, start_method=method)
        await executor.start()
        await asyncio.sleep(0)
        before = open_fds()
        try:
            for i in range(count // 2):
                with pytest.raises(WorkerCrashedError):  # a run each: no quarantine
                    await executor.execute(a_call(pt.exit_now, run_id=f"run-{i}"))
                started = tmp_path / f"{i}.pid"
                task = asyncio.ensure_future(executor.execute(
                    a_call(pt.sleep_forever, pid_file=str(started))))
                await until(started.exists)  # running in its worker: the cancel kills that
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            await executor.execute(a_call(pt.pid))  # one left idle for close() to end
            assert executor.workers_started == count + 1
        finally:
            await executor.close()
        await until(lambda: open_fds() == before, within=5.0)

    arun(main(), timeout=SLOW)
