"""The template process of the process backend (Linux): each new worker is a fork of it.

A worker started as a fresh interpreter spends about 0.2 s importing (shoal, cloudpickle,
asyncio...) before it can answer. The template is started once per pool, as ``python -m
shoal.executors._template SOCKET_FD [MODULE ...]``, imports all of that (and the modules
named) once, and then only waits. For each worker the parent sends one request on the socket
(``AF_UNIX``, ``SOCK_SEQPACKET``): the program to run, the worker's environment and working
directory, with the program's file descriptors attached. The template forks; the child takes
its settings, runs the program and is ready in milliseconds. Two programs (:data:`PROGRAMS`):

* ``"worker"``, a tool worker of the process backend (:func:`shoal.executors._worker.main`:
  the same handshake, the same limits and sandbox as a worker started from scratch), given its
  command and reply pipe ends and a status pipe;
* ``"agent"``, an agent in a process of its own (:func:`shoal.agents._process.main`, the same
  program as ``python -m shoal.agents._process``), given its socket to the parent and a status
  pipe; its template is started with the agent modules to preload
  (:data:`shoal.agents._launch.PRELOAD`).

Messages, one packet each:

* template -> parent, once: ``b"ready"`` (its imports are done);
* parent -> template: a pickled ``(program, env, cwd)`` with the program's descriptors:
  ``CMD_FD``, ``REPLY_FD``, ``STATUS_FD`` for a worker, ``SOCKET_FD``, ``STATUS_FD`` for an
  agent;
* template -> parent: ``b"ok"`` and the worker's pid (8 bytes, big-endian), or ``b"no"`` and
  a message saying why no worker was made.

**Forking safely.** The template runs no tool code and never starts a thread (it checks
before each fork, and refuses if one appeared): a fork of a threaded process can inherit a
lock some other thread held. Its environment is the worker allow-list, never the parent's
full environment; each child replaces it with its own profile's before any tool runs.

**Exits.** The template learns that a worker ended through a pidfd, writes its exit code
(``>i``: the code, or minus the signal that killed it) to the worker's status pipe, and keeps
the zombie until the parent closes that pipe: until then the pid, and the worker's process
group id, cannot be reused, just as for a child of the parent's own. A worker dies with the
template (``PR_SET_PDEATHSIG``: a ``SIGTERM`` on which the worker's stand-in kills everything
below it), so none outlives the process that would report its end. When its socket hangs up
(the parent died) the template kills every worker's tree, reaps them, and exits. It also dies
with its parent by a death signal of its own (``SIGTERM``, which does the same once it serves):
at once, even while it is still importing, and even if a process it forked holds the socket.

Why not :mod:`multiprocessing.forkserver`: it is one server per interpreter, started with the
parent's whole environment (secrets included, readable in every child's
``/proc/<pid>/environ``), its children run multiprocessing's own bootstrap rather than a
worker given its pipes, and it reaps each child at once, so the parent could signal a reused
pid. The design is the same: a single-threaded server forking on request.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import socket
import struct
import sys

PID = struct.Struct(">q")
#: The programs a template forks, and how many file descriptors each one's request carries
#: (the status pipe last).
PROGRAMS = {"worker": 3, "agent": 2}
STATUS = struct.Struct(">i")
MAX_REQUEST = 1 << 20  # bytes of one request (an environment and a path)
_PR_SET_PDEATHSIG = 1


def fork_supported() -> bool:
    """Whether workers can be forked from a template here (Linux 5.3+: pidfds)."""
    return sys.platform.startswith("linux") and hasattr(os, "pidfd_open")


def exit_code(pid: int) -> int:
    """How child ``pid`` ended, without reaping it: its exit code, or minus its signal."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    if info is None:  # cannot happen without WNOHANG
        return -signal.SIGKILL
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


class Template:
    """The template's side: a single-threaded loop that forks workers and reports their ends."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pid = os.getpid()
        self.poller = select.poll()
        self.poller.register(sock.fileno(), select.POLLIN)
        self.running: dict[int, tuple[int, int]] = {}  # pidfd -> (pid, status fd)
        self.ended: dict[int, int] = {}  # status fd -> pid of a zombie kept for the parent

    def serve(self) -> None:
        """Fork workers on request until the socket hangs up."""
        self.sock.send(b"ready")
        while True:
            for fd, _ in self.poller.poll():
                if fd == self.sock.fileno():
                    if not self.request():
                        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # ending already
                        self.end_workers()
                        return
                elif fd in self.running:
                    self.child_ended(fd)
                elif fd in self.ended:  # the parent closed the status pipe: reap
                    self.poller.unregister(fd)
                    os.close(fd)
                    os.waitpid(self.ended.pop(fd), 0)

    def request(self) -> bool:
        """Answer one request; ``False`` when the socket hung up."""
        try:
            data, fds, _, _ = socket.recv_fds(self.sock, MAX_REQUEST, max(PROGRAMS.values()))
        except ConnectionError:
            return False
        if not data:
            return False
        try:
            program, env, cwd = pickle.loads(data)
            wanted = PROGRAMS.get(program)
            if wanted is None:
                raise ValueError(f"no program {program!r}; one of {sorted(PROGRAMS)}")
            if len(fds) != wanted:
                raise ValueError(f"a request for a {program} came with {len(fds)} file "
                                 f"descriptors, not {wanted}")
        except Exception as exc:
            for fd in fds:
                os.close(fd)
            return self.refuse(exc)
        try:
            pid = self.fork(program, fds, env, cwd)  # it closes the descriptors, whatever
        except Exception as exc:
            return self.refuse(exc)
        self.sock.send(b"ok" + PID.pack(pid))
        return True

    def refuse(self, exc: Exception) -> bool:
        """Tell the parent why no worker was made (the template itself goes on)."""
        self.sock.send(b"no" + f"{type(exc).__name__}: {exc}".encode())
        return True

    def fork(self, program: str, fds: list[int], env: dict[str, str], cwd: str | None) -> int:
        """Fork a child running ``program`` on ``fds``; the template keeps only its status pipe."""
        *given, status_fd = fds
        # SIGTERM held back across the fork: the child must not run the template's handler
        # (it would end its siblings), only its own or none
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        pid = -1
        try:
            threads = len(os.listdir("/proc/self/task"))
            if threads != 1:  # a fork would copy locks other threads may hold
                raise RuntimeError(f"the template process has {threads} threads, not one")
            pid = os.fork()
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        finally:
            if pid != 0:  # the child unblocks once its handler is the default again
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            self.become_worker(program, given, status_fd, env, cwd)
        for fd in given:
            os.close(fd)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(status_fd)
            raise
        self.running[pidfd] = (pid, status_fd)
        self.poller.register(pidfd, select.POLLIN)
        return pid

    def end_workers(self) -> None:
        """The parent is gone: kill every worker with all it started, and reap them.

        A worker would end so by itself (its command pipe hangs up too); doing it here, where
        each worker's process is a child not yet reaped, also ends the trees of workers that
        are stopped, or slow to notice.
        """
        from shoal.executors._reaper import kill_children

        kill_children([pid for pid, _ in self.running.values()])  # one look at /proc, not one each
        for pid in (*(p for p, _ in self.running.values()), *self.ended.values()):
            with contextlib.suppress(ChildProcessError):  # reaped as it reported its end
                os.waitpid(pid, 0)

    def terminated(self, number: int, _: object) -> None:
        """The parent died (the death signal, ``SIGTERM``): end every worker's tree, then exit.

        What the socket's hang-up does too, but at once: a template that is busy (forking) or
        slow to be scheduled on a loaded machine could leave its workers running meanwhile.
        """
        signal.signal(number, signal.SIG_IGN)  # once
        self.end_workers()
        os._exit(0)

    def child_ended(self, pidfd: int) -> None:
        """Report a worker's end on its status pipe; keep the zombie until the pipe closes."""
        pid, status_fd = self.running.pop(pidfd)
        self.poller.unregister(pidfd)
        os.close(pidfd)
        try:
            os.write(status_fd, STATUS.pack(exit_code(pid)))
        except OSError:  # the parent no longer listens: nobody will signal this pid
            os.close(status_fd)
            os.waitpid(pid, 0)
            return
        self.ended[status_fd] = pid
        self.poller.register(status_fd, 0)  # POLLERR comes when the parent closes its end

    def become_worker(self, program: str, given: list[int], status_fd: int,
                      env: dict[str, str], cwd: str | None) -> None:
        """In the child: drop the template's files, take the child's settings, run; exit."""
        code = 1
        template = self.pid
        try:
            # SIGTERM, not SIGKILL: the worker's stand-in ends what the tools started first
            # (see shoal.executors._sandbox.split); before that, it is as deadly.
            set_parent_death_signal(signal.SIGTERM)
            if os.getppid() != template:  # the template died before the line above
                os._exit(1)
            os.close(status_fd)
            self.sock.close()
            for fd in (*self.running, *(s for _, s in self.running.values()), *self.ended):
                os.close(fd)
            os.setsid()  # as start_new_session: out of a terminal's reach, a group of its own
            if cwd is not None:
                os.chdir(cwd)
            os.environ.clear()
            os.environ.update(env)
            if program == "agent":
                from shoal.agents._process import main as agent_main

                code = agent_main(["", *map(str, given)])
            else:
                from shoal.executors._worker import main

                code = main(["", *map(str, given)])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):  # a tool closed it: nothing to save
                    stream.flush()
            os._exit(code)


def set_parent_death_signal(number: int) -> None:
    """Have signal ``number`` sent to this process when its parent (the template) ends.

    The kernel ties it to the thread that forked this process: the template's only one.
    """
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, number, 0, 0, 0)


#: What every worker needs, imported once by the template so that its forks start with it:
#: shoal and cloudpickle (through the worker), asyncio (async tools), the limits and sandbox.
PRELOAD = ("asyncio", "faulthandler", "resource", "traceback", "shoal.executors._reaper",
           "shoal.executors._sandbox", "shoal.executors._worker")


def preload(extra: list[str] | None = None) -> None:
    """Import :data:`PRELOAD` and the modules ``extra`` names."""
    import importlib

    for name in (*PRELOAD, *(extra or ())):
        importlib.import_module(name)


def main(argv: list[str]) -> int:
    """Serve one pool: ``python -m shoal.executors._template SOCKET_FD [MODULE ...]``."""
    sock = socket.socket(fileno=int(argv[1]))
    # Dies with its parent even while it imports (its socket is read only once it serves):
    # a SIGTERM, which kills it outright until serve() has workers to end first.
    set_parent_death_signal(signal.SIGTERM)
    if hung_up(sock):  # the parent died before the line above: no signal will come
        return 0
    preload(argv[2:])
    import gc

    gc.freeze()  # what is loaded now stays shared: a fork's collections do not copy it
    template = Template(sock)
    signal.signal(signal.SIGTERM, template.terminated)
    with contextlib.suppress(ConnectionError):  # the parent went away mid-reply
        template.serve()
    return 0


def hung_up(sock: socket.socket) -> bool:
    """Whether the other end of ``sock`` has closed (a parent that closed it or died).

    A dying process closes its files before its children get their death signals: a parent
    whose death came too early for the signal has closed its end by the time of this check.
    """
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return any(events & select.POLLHUP for _, events in poller.poll(0))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
