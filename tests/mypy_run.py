"""One strict mypy run for the suite: the repository's files and a typical user's program.

``tests/test_quality.py`` needs mypy clean on the library, tests, benchmarks and examples;
``tests/test_agents_typing.py`` needs a user's program (:data:`USER_PROGRAM` there) to pass
strict mypy with the types it reveals. Both read the same analysis of shoal and its
dependencies, so one run serves both (the second test asks for it, gets it at once).
"""

from __future__ import annotations

import functools
import subprocess
import sys
import tempfile
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = "user_program.py"


@functools.cache
def strict_mypy(program: str) -> subprocess.CompletedProcess[str]:
    """``mypy`` (settings from pyproject: strict) over its files and ``program``.

    ``program`` is written to ``user_program.py`` in a folder of its own: mypy reports its
    lines under that name, and its module is ``user_program``.
    """
    files = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))[
        "tool"]["mypy"]["files"]
    with tempfile.TemporaryDirectory(prefix="shoal-mypy-") as name:
        path = Path(name) / PROGRAM
        path.write_text(textwrap.dedent(program), encoding="utf-8")
        return subprocess.run([sys.executable, "-m", "mypy", *files, str(path)], cwd=ROOT,
                              capture_output=True, text=True, timeout=580, check=False)


def of_program(lines: list[str]) -> list[str]:
    """The lines of mypy's report that are about the user's program."""
    return [line for line in lines if Path(line.split(":", 1)[0]).name == PROGRAM]
