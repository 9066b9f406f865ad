"""A hostile user of tool calls and the backends that run them (sweep 34).

Each test here failed before the fix it names.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

import shoal
from shoal import Plan
from shoal.executors._sandbox import problem
from tests import hostile_exec_tools as ht

SANDBOXES = ["none", pytest.param("namespace", marks=pytest.mark.skipif(
    problem() is not None, reason=f"namespace sandbox unavailable: {problem()}"))]


# ---- a worker killed by SIGKILL says so -------------------------------------------------------


def _kill_workers_once(marker: Path, number: int) -> threading.Thread:
    """A thread that sends ``number`` to every worker of this process once ``marker`` exists.

    The workers are the leaves of this process's tree (a template and a stand-in each have a
    child), as the kernel's OOM killer picks the process that holds the memory.
    """
    def kill() -> None:
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        for child in psutil.Process().children(recursive=True):
            if not child.children():
                child.send_signal(number)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


@pytest.mark.usefixtures("no_child_process_leak")
@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_a_worker_killed_by_sigkill_is_reported_killed_not_exit_code_1(
        sandbox: str, tmp_path: Path) -> None:
    # was: "died: exit code 1" (and a traceback of OSError: [Errno 22] on stderr): the
    # worker's stand-in re-raised the signal its worker died of, but cannot set SIGKILL's
    # handler, so it failed and exited 1; an OOM kill read as the tool's own exit
    marker = tmp_path / "running"
    plan = Plan()
    crash = plan.call(ht.wait_to_be_killed, marker=str(marker))
    fine = plan.call(ht.square, x=4)
    killer = _kill_workers_once(marker, signal.SIGKILL)
    result = shoal.run_sync(plan, process_workers=1, process_sandbox=sandbox)
    killer.join()
    error = result[crash].error
    assert error is not None and error.type == "shoal.exceptions.WorkerCrashedError"
    assert "killed by signal SIGKILL (killed; out of memory?)" in error.message, error.message
    assert result[fine].value == 16
