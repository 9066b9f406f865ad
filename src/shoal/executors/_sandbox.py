"""The namespace sandbox of process workers (``Runtime(process_sandbox="namespace")``, Linux).

A worker runs as the same user as the application, so by default a tool can read the
application's ``/proc/<pid>/environ`` (the secrets scrubbed from its own environment) and
``/proc/<pid>/mem``. In the sandbox the worker enters new user, PID and mount namespaces
(:func:`enter`), where:

* it is process 1 of a PID namespace of its own, with its own ``/proc``: no process outside
  it (the application included) has a pid there, so none can be read, traced or signalled;
* that ``/proc`` is mounted over the host's and then locked (a second user namespace is
  entered, which makes every inherited mount permanent), so it cannot be unmounted to
  uncover the host's; mounting another procfs needs privileges the worker does not have;
* when it ends, the kernel kills everything left in its PID namespace: whatever tools
  started dies with it, even after a crash.

The tool keeps its user id and file access; the network and the file system are shared as
before. Entering needs unprivileged user namespaces (or root); where the kernel refuses,
the worker fails to start, saying why, and :func:`problem` says so beforehand.

The worker that the application started stays outside, as a small stand-in: it waits for
process 1 of the namespace and ends the same way (the same exit code, or the same signal).
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import subprocess
import sys

__all__ = ["SandboxError", "enter", "problem", "split"]

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REC, _MS_PRIVATE = 2, 4, 8, 1 << 14, 1 << 18
_PR_SET_PDEATHSIG = 1

_HINT = ("unprivileged user namespaces may be disabled here (see the sysctls "
         "user.max_user_namespaces, kernel.unprivileged_userns_clone and "
         "kernel.apparmor_restrict_unprivileged_userns, or a container's seccomp profile); "
         "use process_sandbox='none' instead")


class SandboxError(OSError):
    """The namespace sandbox could not be entered; the message says which step failed."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise SandboxError(f"process_sandbox='namespace' is not available here: {what} failed: "
                           f"{os.strerror(errno)}; {_HINT}")


def _unshare(flags: int, what: str) -> None:
    _check(_libc().unshare(flags), what)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, what: str) -> None:
    def encode(text: str | None) -> bytes | None:
        return None if text is None else text.encode()

    _check(_libc().mount(encode(source), target.encode(), encode(fstype), flags, None), what)


def _map_ids(inside_uid: int, outside_uid: int, inside_gid: int, outside_gid: int) -> None:
    """Map one user and one group into the user namespace just entered."""
    try:
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"{inside_uid} {outside_uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"{inside_gid} {outside_gid} 1")
    except OSError as exc:
        raise SandboxError(f"process_sandbox='namespace' is not available here: mapping the "
                           f"user id failed: {exc}; {_HINT}") from exc


def split(close_in_stand_in: tuple[int, ...]) -> None:
    """Fork: the original process stays as the stand-in (never returns), the child returns.

    The stand-in (a subreaper, as the caller made it) closes ``close_in_stand_in``, waits for
    the child, kills whatever is left below it, then ends as the child ended. So even a process
    a tool started as the *worker's sibling* (``clone(CLONE_PARENT)``, then ``setsid``) is in
    the tree the application kills: the stand-in, not the application, is its parent.
    """
    os.close(_split(close_in_stand_in))


def _split(close_in_stand_in: tuple[int, ...]) -> int:
    """:func:`split`; in the child, returns its end of a pipe only the stand-in writes to.

    The stand-in holds the pipe's other end until it dies, so the child can check again after
    a later change of credentials that its stand-in still lives (see :func:`_die_with`).
    """
    alive, held = os.pipe()
    child = os.fork()
    if child:
        for fd in (*close_in_stand_in, alive):
            os.close(fd)
        _stand_in(child)  # holding ``held`` open until it ends
    os.close(held)
    # The child dies with its stand-in, whoever kills that (the template process that forked
    # the stand-in included: see shoal.executors._template).
    _die_with(alive)
    return alive


def _die_with(alive: int) -> None:
    """Be killed when the stand-in ends; exit now if it is ending already.

    ``PR_SET_PDEATHSIG`` acts only on a death after it is set: a stand-in killed between the
    fork and here (the ``SIGTERM`` of a template that died, before the stand-in's handler is
    in place) sent nothing, and its child would live on with the worker's pipes, a worker
    nobody ends. Hence the check after it: ``alive``, the read end of a pipe that only the
    stand-in holds open, at its end. A dying process closes its files before its children are
    given a new parent (when their death signals go out), so either the pipe has ended by the
    time of the check, or the signal is still to come.
    """
    import select

    _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    poller = select.poll()
    poller.register(alive, select.POLLIN)
    if poller.poll(0):  # ended (POLLHUP): exit, as process 1 of a PID namespace must
        os._exit(1)  # (it ignores a SIGKILL of its own)


def _stand_in(child: int) -> None:
    """Wait for the child, end what is left below this process, then end as it ended.

    What else ends below it meanwhile is reaped as it ends.

    A ``SIGTERM`` (also the death signal of a worker forked by a template, when the template
    dies) kills the child and everything below first; this process then ends by it.
    """
    from shoal.executors._reaper import kill_tree

    terminated: list[int] = []

    def terminate(number: int, _: object) -> None:
        terminated.append(number)
        kill_tree(os.getpid(), include_root=False)

    signal.signal(signal.SIGTERM, terminate)
    while True:  # reaping whatever ends below it (a sibling a tool cloned, an orphan given
        try:  # to this subreaper), not leaving it a zombie until the child ends
            pid, status = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        if pid == child:
            break
    kill_tree(os.getpid(), include_root=False)
    if terminated or os.WIFSIGNALED(status):
        number = terminated[0] if terminated else os.WTERMSIG(status)
        if number != signal.SIGKILL:  # (whose action cannot be set, nor needs to be: an OOM
            signal.signal(number, signal.SIG_DFL)  # kill must read as one, not as exit 1)
        os.kill(os.getpid(), number)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def enter(close_in_stand_in: tuple[int, ...]) -> None:
    """Move the rest of this worker's life into the sandbox; returns in process 1 there.

    Call while the process has a single thread. The stand-in left outside closes
    ``close_in_stand_in`` (the worker's pipe ends, which only the sandboxed side may hold) and
    never returns. Raises :class:`SandboxError` (nothing changed yet) if the kernel refuses.
    """
    uid, gid = os.getuid(), os.getgid()
    _unshare(_CLONE_NEWUSER | _CLONE_NEWPID | _CLONE_NEWNS,
             "unshare(CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS)")
    _map_ids(0, uid, 0, gid)  # root of this namespace: it may mount
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE, "making mounts private")
    alive = _split(close_in_stand_in)
    # process 1 of the new PID namespace
    _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, "mounting /proc")
    # Mounts copied into a less privileged mount namespace are locked together: the new
    # /proc can no longer be unmounted to uncover the host's. The tool gets its own ids back.
    _unshare(_CLONE_NEWUSER | _CLONE_NEWNS, "unshare(CLONE_NEWUSER | CLONE_NEWNS), again")
    _map_ids(uid, 0, gid, 0)
    # it dies with its stand-in, whoever kills that (set last: new credentials clear it, and
    # the stand-in may have died since the first one)
    _die_with(alive)
    os.close(alive)


@functools.cache
def problem() -> str | None:
    """Why the namespace sandbox cannot work on this machine, or ``None`` if it can.

    Tries it in a short-lived subprocess (once per process; about 50 ms).
    """
    if not sys.platform.startswith("linux"):
        return "process_sandbox='namespace' needs Linux (user, PID and mount namespaces)"
    done = subprocess.run([sys.executable, "-P", "-m", "shoal.executors._sandbox"],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": os.environ.get("PATH", ""),
                               "PYTHONPATH": os.pathsep.join(sys.path)})
    if done.returncode == 0 and done.stdout.strip() == "ok":
        return None
    return (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]


def _probe() -> int:
    try:
        enter(())
    except SandboxError as exc:
        print(exc, file=sys.stderr)
        return 1
    print("ok" if os.getpid() == 1 else "not process 1 of a new PID namespace")
    return 0


if __name__ == "__main__":
    sys.exit(_probe())
