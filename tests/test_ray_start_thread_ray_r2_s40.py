"""A Ray that shoal starts outlives the thread that happened to start it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ONE_AT_A_TIME

pytestmark = ONE_AT_A_TIME  # a Ray head of its own, in a fresh driver


def _own_ray_env() -> dict[str, str]:
    """This process's environment without RAY_ADDRESS: the driver starts a Ray of its own.

    (CI points the tests at its Ray head with RAY_ADDRESS; a driver that joined that head would
    have no Ray processes of its own to look at.)
    """
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}

# Ray starts its GCS, raylet and helpers with PR_SET_PDEATHSIG=SIGKILL, which Linux fires when
# the *thread* that forked them exits, not the process: a runtime on a short-lived thread that
# started Ray took it down for every other runtime of the process when its thread ended.
STARTED_ON_A_THREAD = """
import asyncio, threading, time
import psutil
from shoal.executors.ray import RayExecutor

holder = RayExecutor()  # a runtime's connection, made on a thread that then ends
first = threading.Thread(target=lambda: asyncio.run(holder.start()))
first.start()
first.join()
time.sleep(1.0)  # (a SIGKILL is delivered at once; let the exits show)
ray_children = [p for p in psutil.Process().children()
                if p.name() in ("gcs_server", "raylet")]
dead = [p.name() for p in ray_children if p.status() == psutil.STATUS_ZOMBIE]
print("dead:", dead, "of", sorted(p.name() for p in ray_children))
asyncio.run(holder.close())
"""


def test_a_ray_started_on_a_thread_that_ends_lives_on() -> None:
    pytest.importorskip("ray")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", STARTED_ON_A_THREAD], cwd=root,
                          env=_own_ray_env(), capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "dead: [] of ['gcs_server', 'raylet']", (
        done.stdout[-2000:], done.stderr[-2000:])


# A job-wide runtime_env (shoal's PYTHONPATH for the workers) made the workers Ray starts when
# the driver connects unusable for the job's tasks: they sat idle while the first calls waited
# for two more to start (on a loaded machine, 8-10 s each start).
FIRST_CALLS = """
import asyncio, time
import psutil
import shoal
from shoal.executors.ray import RayExecutor
from tests import ray_tools

holder = RayExecutor()
asyncio.run(holder.start())
raylet = next(p for p in psutil.Process().children() if p.name() == "raylet")

def workers():  # the raylet's worker processes (not its agents)
    return {p.pid for p in raylet.children()
            if "default_worker" in " ".join(p.cmdline()) or p.cmdline()[0].startswith("ray::")}

deadline = time.monotonic() + 30
while not workers() and time.monotonic() < deadline:
    time.sleep(0.1)
time.sleep(0.5)  # (all of them: Ray starts them together)
started = workers()  # the workers Ray started as the driver joined
plan = shoal.Plan()
refs = [plan.call(ray_tools.where.options(isolation="ray")) for _ in range(2)]
result = shoal.run_sync(plan)
print("on workers started at connect:", {result.value(r) for r in refs} <= started, started)
asyncio.run(holder.close())
"""


def test_the_first_calls_run_on_the_workers_ray_started_ahead() -> None:
    pytest.importorskip("ray")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", FIRST_CALLS], cwd=root, env=_own_ray_env(),
                          capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on workers started at connect: True" in done.stdout, (done.stdout[-2000:],
                                                                  done.stderr[-2000:])
