"""A Ray cluster that cannot be reached, or an address Ray cannot read: a typed error naming it.

Each case runs in a subprocess of its own: it must be the first ``ray.init`` of its process
(in this one Ray may be up already, for the other Ray tests). Ray's wait for an unreachable
head (about 40 s) is cut to a few seconds through Ray's own settings.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")

from tests.conftest import ONE_AT_A_TIME

pytestmark = [ONE_AT_A_TIME, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[1]
PROGRAM = """
import json, sys
import shoal
from tests import ray_tools as rt

plan = shoal.Plan()
plan.call(rt.echo.options(isolation="ray"), value=1)
runtime = shoal.Runtime(**json.loads(sys.argv[1]))
try:
    runtime.run_sync(plan)
except Exception as exc:  # the backend starts before the run: the run raises
    kind = type(exc)
    print(json.dumps([f"{kind.__module__}.{kind.__qualname__}", str(exc)]))
"""


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run(env_address: str | None, **runtime: str) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(ROOT), RAY_gcs_server_port_wait_time_s="1",
               RAY_gcs_rpc_server_connect_timeout_s="1", RAY_py_gcs_connect_timeout_s="1")
    if env_address is not None:
        env["RAY_ADDRESS"] = env_address
    done = subprocess.run([sys.executable, "-c", PROGRAM, json.dumps(runtime)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    kind, message = json.loads(done.stdout.splitlines()[-1])
    return kind, message


def test_an_unreachable_ray_address_is_an_executor_error_naming_it() -> None:
    # was: ConnectionError 'Failed to connect to Ray cluster at 127.0.0.1:...', which
    # named neither the setting it came from nor what to do
    address = f"127.0.0.1:{_unused_port()}"
    kind, message = _run(address)
    assert kind == "shoal.exceptions.ExecutorError", message
    assert f"could not connect to the Ray cluster at {address!r}" in message
    assert "RAY_ADDRESS environment variable" in message and "Traceback" not in message


def test_an_unreachable_ray_address_given_to_the_runtime_names_the_runtime_option() -> None:
    address = f"127.0.0.1:{_unused_port()}"
    kind, message = _run(None, ray_address=address)
    assert kind == "shoal.exceptions.ExecutorError", message
    assert f"{address!r}, which Runtime(ray_address=...) gives" in message


def test_a_ray_address_ray_cannot_read_is_a_config_error_naming_it() -> None:
    # was: ValueError 'Invalid address format: no port here', naming no setting
    kind, message = _run("no port here")
    assert kind == "shoal.exceptions.ConfigError", message
    assert "the RAY_ADDRESS environment variable gives 'no port here'" in message
