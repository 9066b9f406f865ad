"""Ctrl-C of a driver whose calls run on Ray: it ends promptly, and its Ray work with it.

The driver is a subprocess with a private local Ray of its own (no ``RAY_ADDRESS``), sent
``SIGINT`` once its calls run: a Ray task, and a sync and an async call on shoal's actor pool.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from tests.conftest import ONE_AT_A_TIME, pid_gone, wait_until  # noqa: E402

pytestmark = [ONE_AT_A_TIME, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[1]
SECONDS = 12.0  # each call's work, were it not stopped
PROGRAM = """
import signal, sys
import shoal
# Ctrl-C as in a terminal: a job started in the background (pytest under `cmd &`, say)
# inherits SIGINT ignored, and the driver ran its calls to their end (exit 0)
signal.signal(signal.SIGINT, signal.default_int_handler)
from tests import ray_tools as rt

d = sys.argv[1]
pool = {"isolation": "ray", "resources": {"num_cpus": 0}}
plan = shoal.Plan()
plan.call(rt.slow_then_mark.options(isolation="ray"), directory=d, name="task", seconds=SECONDS)
plan.call(rt.slow_then_mark_async.options(**pool), directory=d, name="pool-async",
          seconds=SECONDS)
plan.call(rt.slow_then_mark.options(**pool), directory=d, name="pool-sync", seconds=SECONDS)
shoal.run_sync(plan)
""".replace("SECONDS", repr(SECONDS))
NAMES = ("task", "pool-async", "pool-sync")


def _command(process: Any) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:  # ended meanwhile (an idle worker, say)
        return ""


def test_ctrl_c_ends_a_driver_with_ray_calls_promptly_and_stops_their_work(
        tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT)
    driver = subprocess.Popen([sys.executable, "-c", PROGRAM, str(tmp_path)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: all((tmp_path / f"{n}.started").exists() for n in NAMES),
                          timeout=90), f"not all started: {sorted(os.listdir(tmp_path))}"
        # the driver's Ray (its raylet, the workers running the calls): its descendants
        ray_processes = psutil.Process(driver.pid).children(recursive=True)
        workers = [p for p in ray_processes if _command(p).startswith("ray::")]
        assert len(workers) >= 2, f"the calls' workers are not among {ray_processes}"
        started = time.monotonic()
        driver.send_signal(signal.SIGINT)
        _, err = driver.communicate(timeout=60)
        took = time.monotonic() - started
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    assert driver.returncode in (130, -signal.SIGINT), err[-3000:]
    assert took < 10.0, f"Ctrl-C took {took:.1f} s to end the driver"
    # once every process of the driver's Ray is gone, no call can still finish its work (a
    # fixed wait past the calls' natural end took 13 s)
    if not wait_until(lambda: all(pid_gone(p.pid) for p in ray_processes), SECONDS + 5.0):
        time.sleep(max(0.0, started + SECONDS + 1.0 - time.monotonic()))  # the old wait
    assert sorted(p.stem for p in tmp_path.glob("*.done")) == [], "stopped work finished anyway"
