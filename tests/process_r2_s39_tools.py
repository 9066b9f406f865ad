"""Tools for tests/test_*_process_r2_s39.py: they run in agent processes."""

from __future__ import annotations

import gc
import socket
import subprocess
import sys
from pathlib import Path

import shoal


def _agent_socket() -> socket.socket:
    """This agent process's socket to its parent (its ``Link``'s)."""
    from shoal.agents._process import Link

    link = next(o for o in gc.get_objects() if isinstance(o, Link))
    sock: socket.socket = link._sock
    return sock


@shoal.tool
def start_then_shut_socket(pid_file: str, how: str) -> str:
    """Start a long ``sleep`` in this process's group (its pid to ``pid_file``), then end
    the agent's socket: ``shutdown`` (both ways) or ``shut_write`` (its sending side only).
    """
    child = subprocess.Popen(["sleep", "300"])
    Path(pid_file).write_text(str(child.pid))
    sock = _agent_socket()
    sock.shutdown(socket.SHUT_RDWR if how == "shutdown" else socket.SHUT_WR)
    if how == "shut_write":  # the agent goes on (its reads still work): keep it busy
        import time

        time.sleep(30)
    return "socket shut"


@shoal.tool
def spew(stream: str, megabytes: int) -> str:
    """Write ``megabytes`` MiB of text to this process's ``stdout`` or ``stderr``."""
    out = sys.stdout if stream == "stdout" else sys.stderr
    line = "x" * 1023 + "\n"
    for _ in range(megabytes * 1024):
        out.write(line)
    out.flush()
    return f"wrote {megabytes} MiB to {stream}"


@shoal.tool
def die() -> str:
    """Kill this process with SIGKILL, in the middle of its agent's turn."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
    return "unreachable"


@shoal.tool
def fine(x: int) -> int:
    """``x``, as it came."""
    return x


@shoal.tool
def start_tree_then_sleep(pid_file: str) -> str:
    """Start a child in this group and one in a session of its own (their pids, then this
    process's, one a line to ``pid_file``), then sleep a long time.
    """
    import os
    import time

    kept = subprocess.Popen(["sleep", "300"])
    away = subprocess.Popen(["sleep", "301"], start_new_session=True)
    Path(pid_file + ".tmp").write_text(f"{kept.pid}\n{away.pid}\n{os.getpid()}\n")
    os.replace(pid_file + ".tmp", pid_file)
    time.sleep(300)
    return "woke up"


@shoal.tool
def close_socket(how: str) -> str:
    """Close this agent's socket's descriptor: ``close`` it alone, or ``closerange`` all from 3
    (the agent's event loop's too).
    """
    import os

    if how == "closerange":
        os.closerange(3, 4096)
    else:
        os.close(_agent_socket().fileno())
    return "closed"


@shoal.tool
def daemonize(pid_file: str) -> str:
    """Start a double-forked ``sleep`` in a session of its own (its pid to ``pid_file``): its
    parent, a shell, exits at once, so it is no longer below this process.
    """
    out = subprocess.run(["sh", "-c", "setsid sleep 303 >/dev/null 2>&1 </dev/null & echo $!"],
                         capture_output=True, text=True, check=True).stdout
    Path(pid_file).write_text(out.strip())
    return "started"
