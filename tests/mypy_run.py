"""One strict mypy run for the suite: the repository's files and a typical user's program.

``tests/test_quality.py`` needs mypy clean on the library, tests, benchmarks and examples;
``tests/test_agents_typing.py`` needs a user's program (:data:`USER_PROGRAM` there) to pass
strict mypy with the types it reveals. Both read the same analysis of shoal and its
dependencies, so one run serves both (the second test asks for it, gets it at once).

The run takes half a minute of one core, and the suite mostly keeps one core busy: in a run
of the whole suite, ``tests/conftest.py`` calls :func:`start` once collection is done, so
mypy works beside the tests before them and the first of the two mostly just reads its
report. mypy runs as no child of the test process (as the command line's template in
``tests/cli_process.py``): tests count that process's children.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = "user_program.py"
#: Seconds a run may take, from its start: far above the minute it needs on a busy machine.
TIMEOUT = 580.0

# Run by the launcher: forks, the launcher exits at once (so mypy is no child of the test
# process), and the orphan runs mypy, writing its output to files and its exit code last
# (renamed into place: a reader sees all of it or none). At the priority of the tests: a
# lower one would starve it on a machine kept busy by others, past its timeout.
DETACHED = r'''
import json, os, subprocess, sys
folder, timeout, command = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
if os.fork():
    os._exit(0)
os.setsid()
with open(os.path.join(folder, "stdout"), "w") as out, \
        open(os.path.join(folder, "stderr"), "w") as err:
    try:
        code = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                              cwd=os.getcwd(), timeout=timeout, check=False).returncode
    except subprocess.TimeoutExpired:
        code = None
with open(os.path.join(folder, "code.part"), "w") as done:
    json.dump(code, done)
os.replace(os.path.join(folder, "code.part"), os.path.join(folder, "code"))
'''


#: Set by the main process of a pytest-xdist run (``tests/conftest.py``) for its workers: the
#: folder where the run's one mypy run works, whichever worker starts it.
SHARED_FOLDER = "SHOAL_TEST_MYPY_FOLDER"


def run_folder(program: str) -> tuple[Path, bool]:
    """The folder of the mypy run over ``program``, and whether the caller is to start it.

    In a pytest-xdist run every worker asks: the first to create the program's folder under
    :data:`SHARED_FOLDER` starts mypy there, the others read the same run's report (mypy once
    per test run, not once per worker). The main process removes that folder at the end.
    """
    shared = os.environ.get(SHARED_FOLDER)
    if not shared:
        folder = Path(tempfile.mkdtemp(prefix="shoal-mypy-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        return folder, True
    folder = Path(shared) / hashlib.sha256(program.encode()).hexdigest()[:16]
    try:
        folder.mkdir()
    except FileExistsError:
        return folder, False
    return folder, True


class MypyRun:
    """A strict mypy run under way in a process of its own; :meth:`result` waits for it."""

    def __init__(self, program: str) -> None:
        files = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))[
            "tool"]["mypy"]["files"]
        self.folder, starter = run_folder(program)
        path = self.folder / PROGRAM
        self.command = [sys.executable, "-m", "mypy", *files, str(path)]
        self.deadline = time.monotonic() + TIMEOUT + 10
        if not starter:
            return
        path.write_text(textwrap.dedent(program), encoding="utf-8")
        subprocess.run([sys.executable, "-c", DETACHED, str(self.folder), str(TIMEOUT),
                        *self.command], cwd=ROOT, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                       timeout=60)

    @functools.cache  # noqa: B019 (one run per program for the session: kept on purpose)
    def result(self) -> subprocess.CompletedProcess[str]:
        """Mypy's exit code and output, as :func:`subprocess.run` gives them, once it ends."""
        code_file = self.folder / "code"
        while not code_file.exists():
            if time.monotonic() > self.deadline:
                raise subprocess.TimeoutExpired(self.command, TIMEOUT)
            time.sleep(0.1)
        code = json.loads(code_file.read_text(encoding="utf-8"))
        if code is None:
            raise subprocess.TimeoutExpired(self.command, TIMEOUT)
        return subprocess.CompletedProcess(
            self.command, code, (self.folder / "stdout").read_text(encoding="utf-8"),
            (self.folder / "stderr").read_text(encoding="utf-8"))


@functools.cache
def start(program: str) -> MypyRun:
    """Start ``mypy`` (settings from pyproject: strict) over its files and ``program``.

    ``program`` is written to ``user_program.py`` in a folder of its own: mypy reports its
    lines under that name, and its module is ``user_program``. Started once per program (and
    once per test run under pytest-xdist: see :func:`run_folder`).
    """
    return MypyRun(program)


def strict_mypy(program: str) -> subprocess.CompletedProcess[str]:
    """The strict mypy run over the repository's files and ``program``: started if need be."""
    return start(program).result()


def of_program(lines: list[str]) -> list[str]:
    """The lines of mypy's report that are about the user's program."""
    return [line for line in lines if Path(line.split(":", 1)[0]).name == PROGRAM]
