"""A Ray that shoal starts outlives the thread that happened to start it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ONE_AT_A_TIME

pytestmark = ONE_AT_A_TIME  # a Ray head of its own, in a fresh driver

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
                          capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "dead: [] of ['gcs_server', 'raylet']", (
        done.stdout[-2000:], done.stderr[-2000:])
