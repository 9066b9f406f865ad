"""A Ray address where nothing listens fails the run within seconds, not after Ray's retries.

Ray retried such an address for about 40 s (8.7 s with its own timeouts cut to 1 s) before
``ray.init`` gave up; shoal now tries one plain TCP connect first. Each case runs in a
subprocess of its own, without Ray's timeout settings: it must be the first ``ray.init`` of
its process (in this one Ray may be up already, for the other Ray tests). No Ray starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")

from tests.test_connect_ray_s39 import _unused_port

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
PROGRAM = """
import json, sys, time
import ray  # imported before the clock starts: its import is not the connect
import shoal
from tests import ray_tools as rt

plan = shoal.Plan()
plan.call(rt.echo.options(isolation="ray"), value=1)
runtime = shoal.Runtime(**json.loads(sys.argv[1]))
began = time.monotonic()
try:
    runtime.run_sync(plan)
except Exception as exc:
    kind = type(exc)
    print(json.dumps([f"{kind.__module__}.{kind.__qualname__}", str(exc),
                      time.monotonic() - began]))
"""


def _run(env_address: str | None, **runtime: str) -> tuple[str, str, float]:
    env = {k: v for k, v in os.environ.items()
           if k != "RAY_ADDRESS" and not k.startswith("RAY_gcs") and not k.startswith("RAY_py")}
    env["PYTHONPATH"] = str(ROOT)
    if env_address is not None:
        env["RAY_ADDRESS"] = env_address
    done = subprocess.run([sys.executable, "-c", PROGRAM, json.dumps(runtime)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stderr[-3000:]
    kind, message, seconds = json.loads(done.stdout.splitlines()[-1])
    return kind, message, seconds


def test_a_runtime_address_where_nothing_listens_fails_within_seconds() -> None:
    # was: about 38 s of Ray's retries before the ExecutorError
    address = f"127.0.0.1:{_unused_port()}"
    kind, message, seconds = _run(None, ray_address=address)
    assert kind == "shoal.exceptions.ExecutorError", message
    assert seconds < 5.0, (seconds, message)
    assert message.startswith(
        f"shoal could not connect to the Ray cluster at {address!r}, which "
        f"Runtime(ray_address=...) gives: nothing accepts connections at {address} "
        "(Connection refused). Is a Ray head running there (ray start --head)?"), message


def test_a_ray_client_address_where_nothing_listens_fails_within_seconds() -> None:
    address = f"ray://127.0.0.1:{_unused_port()}"
    kind, message, seconds = _run(address)
    assert kind == "shoal.exceptions.ExecutorError", message
    assert seconds < 5.0, (seconds, message)
    assert f"{address!r}, which the RAY_ADDRESS environment variable gives" in message
    assert "nothing accepts connections at 127.0.0.1:" in message


def test_an_address_ray_cannot_read_is_still_left_to_ray() -> None:
    kind, message, _ = _run("127.0.0.1:not-a-port")
    assert kind == "shoal.exceptions.ConfigError", message
    assert "the RAY_ADDRESS environment variable gives '127.0.0.1:not-a-port'" in message


def test_a_hostile_host_in_the_address_is_shown_escaped_on_one_line() -> None:
    # the address's own text must not break the message (a newline cut it at the first line)
    from shoal.exceptions import ExecutorError
    from shoal.executors.ray import _not_connected, _probe

    address = "no-such-host\x1b[31m\nforged.invalid:6379"
    with pytest.raises(ConnectionError) as caught:
        _probe(address)
    error = _not_connected(address, address, caught.value)
    assert isinstance(error, ExecutorError)
    message = str(error)
    assert "\n" not in message and "\x1b" not in message, message
    assert "nothing accepts connections at no-such-host\\x1b[31m\\nforged.invalid:6379 (" in (
        message), message
