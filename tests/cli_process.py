"""Run ``python -m shoal.cli.app ARGS`` as a process of its own, without paying its imports.

Most command-line tests are about what a command does, not about how the interpreter starts:
each fresh interpreter spends most of its second importing typer, rich and shoal. Here one
template interpreter imports the command line once; each run is a fork of it that then takes
the run's working directory, environment, ``sys.path`` (the working directory, then
``PYTHONPATH``), ``sys.argv``, and standard streams (files), calls :func:`shoal.cli.app.main`,
and exits as an interpreter does (non-daemon threads joined, ``atexit`` run, streams flushed).
Its exit code, standard output and standard error come back as :func:`subprocess.run` gives
them. The template is no child of the test process (tests count that process's children); it
ends when the test process does (its stdin closes). Tests of the interpreter's own start (the
console script, Ctrl-C while the command line loads) start real interpreters instead.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import locale
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The template: imports the command line, then forks once per request (a JSON line on its
# stdin) and answers each with the child's pid, then its exit code (JSON lines on its stdout).
TEMPLATE = r'''
import json, os, sys, threading
if os.fork():  # the template lives on as an orphan: tests count the test process's children
    os._exit(0)
import shoal.cli.app
assert threading.active_count() == 1, "the template must not fork with threads running"
base_path = sys.path[1:]


def read_line():
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(0, 1)
        if not chunk:
            return None
        data += chunk
    return json.loads(data)


def child(request):
    for fd, (path, flags) in enumerate([(request["stdin"], os.O_RDONLY),
                                        (request["stdout"], os.O_WRONLY),
                                        (request["stderr"], os.O_WRONLY)]):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [request["cwd"], *extra, *base_path]
    # as `python -m shoal.cli.app` would have them: click names the program from these
    sys.argv[:] = [shoal.cli.app.__file__, *request["args"]]
    sys.modules["__main__"].__package__ = "shoal.cli"
    shoal.cli.app.main()


while (request := read_line()) is not None:
    pid = os.fork()
    if pid == 0:
        child(request)  # raises SystemExit: the interpreter ends as after any command
        raise SystemExit(0)  # never a second template, whatever main() did
    os.write(1, (json.dumps({"pid": pid}) + "\n").encode())
    _, status = os.waitpid(pid, 0)
    os.write(1, (json.dumps({"code": os.waitstatus_to_exitcode(status)}) + "\n").encode())
'''


class _Template:
    """The template process and the one request it serves at a time."""

    def __init__(self) -> None:
        # this process's environment: shoal is imported from where this process has it
        self.proc = subprocess.Popen([sys.executable, "-c", TEMPLATE], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     start_new_session=True)
        self.proc.wait(30)  # it forked the template and left: the pipes reach the template
        self.pending = b""
        self.ended = False

    def alive(self) -> bool:
        return not self.ended

    def send(self, request: Mapping[str, object]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.ended = True
            raise RuntimeError("the command-line template ended") from None

    def receive(self, timeout: float | None) -> dict[str, int] | None:
        """The template's next answer; None if none came within ``timeout`` seconds."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.pending:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                self.ended = True
                raise RuntimeError("the command-line template ended")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        answer: dict[str, int] = json.loads(line)
        return answer

    def close(self) -> None:
        """Close its stdin: the template ends when it reads that end."""
        self.ended = True
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


_lock = threading.Lock()
_template: _Template | None = None


def _the_template() -> _Template:
    global _template
    if _template is None or not _template.alive():
        _template = _Template()
        atexit.register(_template.close)
    return _template


def run_cli(args: list[str] | tuple[str, ...], *, cwd: Path | str, env: Mapping[str, str],
            timeout: float = 60, input: str | None = None, errors: str = "strict",
            ) -> subprocess.CompletedProcess[str]:
    """``subprocess.run([python, "-m", "shoal.cli.app", *args], capture_output=True,
    text=True, stdin=DEVNULL or input)``, in a fork of a template that has the imports done.

    Raises :class:`subprocess.TimeoutExpired` (the process killed) as ``subprocess.run`` does.
    """
    argv = [sys.executable, "-m", "shoal.cli.app", *args]
    with _lock, tempfile.TemporaryDirectory(prefix="shoal-cli-") as folder:
        streams = Path(folder)
        stdin = os.devnull
        if input is not None:
            stdin = str(streams / "stdin")
            Path(stdin).write_text(input, encoding=locale.getpreferredencoding(False))
        for name in ("stdout", "stderr"):
            (streams / name).touch()
        template = _the_template()
        started: dict[str, int] | None = None
        try:
            template.send({"args": list(args), "cwd": str(Path(cwd).resolve()),
                           "env": dict(env), "stdin": stdin, "stdout": str(streams / "stdout"),
                           "stderr": str(streams / "stderr")})
            started = template.receive(30)
            if started is None:
                raise RuntimeError("the command-line template did not fork")
            done = template.receive(timeout)
        except BaseException:
            # interrupted (the test's own timeout, say): this template may still be waiting
            # for that run, and its answers would go to the next; a new one serves the next
            if started is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(started["pid"], signal.SIGKILL)
            template.close()
            raise
        if done is None:
            os.kill(started["pid"], signal.SIGKILL)
            template.receive(None)
            raise subprocess.TimeoutExpired(argv, timeout, *read(streams, errors))
        out, err = read(streams, errors)
        return subprocess.CompletedProcess(argv, done["code"], out, err)


def read(streams: Path, errors: str) -> tuple[str, str]:
    """What the run wrote, decoded as ``subprocess.run(text=True)`` does."""
    texts = []
    for name in ("stdout", "stderr"):
        with open(streams / name, encoding=locale.getpreferredencoding(False),
                  errors=errors) as file:  # universal newlines, as text=True reads them
            texts.append(file.read())
    return texts[0], texts[1]


def ctrl_c_once(args: Sequence[str], *, marker: Path, cwd: Path,
                env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m shoal.cli.app ARGS`` in a real interpreter, sent Ctrl-C once ``marker`` exists.

    Its exit code, standard output and standard error, as :func:`subprocess.run` gives them
    (a tool of the run writes ``marker`` when it is where the test wants the press).
    """
    proc = subprocess.Popen([sys.executable, "-m", "shoal.cli.app", *args], cwd=cwd,
                            env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert marker.exists(), proc.communicate(timeout=30)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
