"""The local model server's process group is signalled only while the server is unreaped.

Its keeper thread waits for the server to end without reaping it, then reaps it holding a
lock; a stop (or the collector's finalizer) signals the group only holding that lock and
before the server was reaped. So no signal reaches a process that took the server's pid.
"""

import os
import signal
import subprocess
import threading

from shoal.models.local import _keep, _kill_group
from tests.conftest import ONE_AT_A_TIME, wait_until
from tests.conftest import pid_gone as gone

pytestmark = ONE_AT_A_TIME  # the local model


def a_server() -> tuple[subprocess.Popen[bytes], int]:
    """A stand-in server leading a group of its own, with a member; both pids."""
    leader = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; wait"], start_new_session=True,
                              stdout=subprocess.PIPE)
    assert leader.stdout is not None
    member = int(leader.stdout.readline())
    leader.stdout.close()
    return leader, member


def test_a_running_server_s_group_is_killed_and_then_reaped_by_its_keeper() -> None:
    leader, member = a_server()
    exited, reaping = threading.Event(), threading.Lock()
    keeper = threading.Thread(target=_keep, args=(leader, exited, reaping), daemon=True)
    keeper.start()
    _kill_group(leader.pid, exited, os.getpid(), reaping, signal.SIGTERM)
    assert exited.wait(10.0)
    keeper.join(5.0)
    assert leader.returncode == -signal.SIGTERM
    assert wait_until(lambda: gone(member))


def test_a_server_being_reaped_or_reaped_is_never_signalled() -> None:
    leader, member = a_server()
    exited, reaping = threading.Event(), threading.Lock()
    try:
        with reaping:  # its keeper is reaping it: the pid may be free the next moment
            _kill_group(leader.pid, exited, os.getpid(), reaping)
        assert leader.poll() is None
        exited.set()  # reaped
        _kill_group(leader.pid, exited, os.getpid(), reaping)
        assert leader.poll() is None
        _kill_group(leader.pid, threading.Event(), os.getpid() + 1, reaping)  # a forked copy
        assert leader.poll() is None
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()
    assert wait_until(lambda: gone(member))
