"""Lint, strict typing and import time, checked as part of the suite."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ONE_AT_A_TIME
from tests.mypy_run import strict_mypy
from tests.test_agents_typing import USER_PROGRAM

pytestmark = ONE_AT_A_TIME  # the suite's one mypy run

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_ruff_is_clean() -> None:
    targets = [p for p in ("src", "tests", "bench", "examples") if (ROOT / p).exists()]
    done = run("-m", "ruff", "check", *targets)
    print(done.stdout, done.stderr)
    assert done.returncode == 0, f"ruff found problems:\n{done.stdout}{done.stderr}"


@pytest.mark.slow
def test_mypy_strict_is_clean() -> None:
    # settings (strict; the library, its tests, benchmarks and examples) come from pyproject
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mypy"]
    assert config["strict"] is True
    assert {"src/shoal", "tests", "bench", "examples"} <= set(config["files"])
    # one run with tests/test_agents_typing.py's user program (its lines are that test's)
    done = strict_mypy(USER_PROGRAM)
    print(done.stdout, done.stderr)
    assert done.returncode == 0, f"mypy found problems:\n{done.stdout}{done.stderr}"
    assert "Success" in done.stdout


def test_import_is_quick() -> None:
    # the whole public namespace, not just the lazy package: what a real program pays
    # CPU time, not wall time: another process hogging the cores must not fail this test
    probe = ("import time; t = time.process_time(); import shoal; "
             "[getattr(shoal, name) for name in shoal.__all__]; "
             "print(time.process_time() - t)")
    # the floor, measured in the same run: what shoal cannot do without (asyncio and pydantic
    # are most of its import); CPU time of one import varies by half on a busy machine
    floor = ("import time; t = time.process_time(); import asyncio, concurrent.futures, "
             "dataclasses, inspect, json; from pydantic import BaseModel, TypeAdapter; "
             "print(time.process_time() - t)")
    times: list[float] = []
    floors: list[float] = []
    for _ in range(5):
        for into, code in ((times, probe), (floors, floor)):
            done = run("-c", code, timeout=60)
            assert done.returncode == 0, done.stderr
            into.append(float(done.stdout.strip()))
    # 0.2 s before agents, models, approvals and the journal joined the namespace; asyncio and
    # pydantic are most of it (``import shoal`` alone, lazily, takes about 0.02 s); about 2x
    # the floor (1.8-2.4x measured on a quiet machine)
    best, least = min(times), min(floors)
    assert best < 0.45 or best < 3 * least, (
        f"'import shoal' took {best:.3f} s at best (of {times}); its floor {least:.3f} s")


def test_import_does_not_pull_in_heavy_optional_modules() -> None:
    probe = ("import sys, shoal; [getattr(shoal, name) for name in shoal.__all__]; "
             "heavy = [m for m in ('ray', 'numpy', 'pandas', 'rich', "
             "'typer', 'hypothesis', 'opentelemetry') if m in sys.modules]; print(','.join(heavy))")
    done = run("-c", probe, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
