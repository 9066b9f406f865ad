"""Starting agent processes: forked from a template that has done the imports, or afresh.

An agent process started as a fresh interpreter (``python -m shoal.agents._process FD``)
spends about 0.2 s importing shoal, its agents, runtime and scheduler before it can ask its
model anything. On Linux (5.3+) a tree therefore starts one *template* process, as the
process backend does for its workers (:mod:`shoal.executors._template`): a fresh interpreter,
started with the worker environment's allow-list only, that imports :data:`PRELOAD` once and
then forks each agent process on request, ready in milliseconds. The forked process gets
exactly what a fresh one gets: its socket to the parent, its own scrubbed environment
(:func:`~shoal.executors.process.worker_env` of the names it may see), the parent's working
directory, a session and process group of its own, and then runs the same program
(:func:`shoal.agents._process.main`: the parent's ``sys.path``, the agent's OS limits, the
restricted loader on the parent's side). Only shoal's own modules are preloaded: the modules
that define the tree's tools and models are imported by each agent process, as before, so a
module that opens a connection when imported never shares it between agents.

The template belongs to one tree (:meth:`TreeContext.agent_processes
<shoal.agents.context.TreeContext.agent_processes>`): it is started when the tree starts,
if any of its agents runs in a process, so that its imports overlap the lead's first model
request, and stopped when the tree ends. Elsewhere (macOS) every agent process starts afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os

from shoal.exceptions import ExecutorError
from shoal.executors import process
from shoal.executors._template import fork_supported
from shoal.executors.process import (
    _ForkedProcess,
    _Process,
    _SpawnedProcess,
    _TemplateGone,
    _TemplateHandle,
    _too_large,
    describe_exit,
    python_module,
    worker_env,
)

__all__ = ["PRELOAD", "AgentLauncher"]

#: What the template imports for the agent processes it forks (their turn loop, runtime,
#: scheduler, journal and messages), besides what every worker needs.
PRELOAD = ("shoal", "shoal.agents._process", "shoal.agents.agent", "shoal.agents.run",
           "shoal.agents.toolcalls", "shoal.testing", "shoal.testing.scripted",
           "shoal.agents.remote", "shoal.runtime", "shoal.store.memory", "shoal.store.sqlite",
           "shoal.executors.results", "shoal.models.retry", "shoal.approvals")


class AgentLauncher:
    """Starts the agent processes of one tree (see the module docstring)."""

    def __init__(self, *, fork: bool | None = None) -> None:
        #: whether agent processes are forked from a template here (else started afresh)
        self.forks = fork_supported() if fork is None else fork and fork_supported()
        self._template = _TemplateHandle() if self.forks else None
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started = 0  # agent processes started, for tests and benchmarks

    @property
    def template_pid(self) -> int | None:
        """The template's process id while it runs."""
        return None if self._template is None else self._template.pid

    def prestart(self) -> None:
        """Start the template now (it imports while the tree goes on), if there is one.

        A head start only: if the template cannot start (no process can be made now), the
        tree starts anyway, and each agent process that is then needed says why it failed.
        """
        with contextlib.suppress(OSError):
            self._start_template()

    def _start_template(self) -> None:
        template = self._template
        if template is not None and (template.proc is None or template.proc.poll() is not None):
            template.stop()
            template.start(worker_env(()), PRELOAD)

    async def launch(self, sock_fd: int, env: dict[str, str]) -> _Process:
        """A new agent process running on socket ``sock_fd`` with environment ``env``.

        Raises :class:`~shoal.exceptions.ExecutorError` if no process can be started.
        """
        self.started += 1
        try:
            if self._template is None:
                command = python_module("shoal.agents._process", str(sock_fd))
                if process._PIDFDS:  # reaped by its channel, not by asyncio's watcher (see close())
                    return _SpawnedProcess.start(command, env, (sock_fd,))
                return await asyncio.create_subprocess_exec(
                    *command, pass_fds=(sock_fd,), env=env, stdin=asyncio.subprocess.DEVNULL,
                    # a session of its own: out of a terminal's Ctrl-C (the parent's to
                    # handle), and killing its group ends what its tools started too
                    start_new_session=True)
            loop = asyncio.get_running_loop()
            if self._lock is None or self._loop is not loop:
                self._lock, self._loop = asyncio.Lock(), loop
            async with self._lock:  # the template answers one request at a time
                return await self._fork(sock_fd, env)
        except OSError as exc:  # the interpreter is gone, the system is out of processes...
            if exc.errno == errno.E2BIG:  # env= of the agent: a variable over 128 KiB
                raise _too_large(env, "agent") from None
            raise ExecutorError(f"no process could be started for an agent: "
                                f"{type(exc).__name__}: {exc}") from exc

    async def _fork(self, sock_fd: int, env: dict[str, str]) -> _Process:
        """Fork from the template; one that died is started again, once."""
        template = self._template
        assert template is not None
        for attempt in range(2):
            self._start_template()  # none yet, or it died
            status_read, status_write = os.pipe()
            try:
                pid = await template.fork(env, (sock_fd, status_write), "agent")
            except _TemplateGone:
                os.close(status_read)
                code = template.stop(gone=True)
                if attempt:
                    ended = "" if code is None else f" ({describe_exit(code)})"
                    raise ExecutorError(
                        "the template process that starts agent processes ended twice in a "
                        f"row{ended}; its error output says why") from None
                continue
            except BaseException:
                os.close(status_read)
                raise
            finally:
                os.close(status_write)
            return _ForkedProcess(pid, status_read, template.proc)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Stop the template (the tree has ended: none of its agent processes runs)."""
        if self._template is not None:
            self._template.stop()
