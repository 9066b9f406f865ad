"""Bytes that are not UTF-8 on their way into Ray's ``runtime_env``: refused before Ray sees them.

Ray parses a ``runtime_env`` as JSON in C++ and aborts the whole process on a surrogate (how
Python holds bytes of the environment, or of a path, that are not UTF-8): a Ray agent given
such a variable in ``env=`` ended its driver with SIGABRT, every other result of the run lost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")

from shoal.executors.ray import worker_path
from tests.conftest import ONE_AT_A_TIME

pytestmark = [ONE_AT_A_TIME, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[1]
PROGRAM = """
import json, os
import shoal
from shoal.testing import ScriptedModel, call

model = ScriptedModel.per_prompt({"go": [[call("reader", task="t")], "done"],
                                  "t": ["read"]})
reader = shoal.Agent(name="reader", model=model, isolation="ray", env=["S39_NOT_UTF8"])
result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync("go")
child = result.children[0]
print(json.dumps([result.output, child.status, type(child.error).__name__, str(child.error)]))
"""


def test_a_ray_agent_given_a_variable_that_is_not_utf8_fails_alone_with_a_config_error() -> None:
    # was: the driver died of SIGABRT (nlohmann::json parse_error in Ray's CoreWorker)
    env = dict(os.environ, PYTHONPATH=str(ROOT), S39_NOT_UTF8=os.fsdecode(b"a\xffb"))
    done = subprocess.run([sys.executable, "-c", PROGRAM], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]
    output, status, kind, message = json.loads(done.stdout.splitlines()[-1])
    assert (output, status, kind) == ("done", "failed", "ConfigError"), message
    assert "the environment variable 'S39_NOT_UTF8' (given in env=) holds bytes that are not " \
           "UTF-8 text" in message


def test_a_source_directory_whose_name_is_not_utf8_is_left_out_of_the_workers_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    odd = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"src\xff"))
    plain = tmp_path / "src"
    os.mkdir(odd)
    plain.mkdir()
    monkeypatch.setattr(sys, "path", [odd, str(plain)])
    assert worker_path() == str(plain.resolve())
