"""A tool inside a process agent that prints megabytes to stdout and stderr.

The agent's messages to its parent go on its own socket: the prints cannot corrupt them, and
the agent (and its sibling) finish with their results, whatever reads the prints.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import shoal
from shoal.testing import ScriptedModel, call
from tests import process_r2_s39_tools as rt

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_child_process_leak")]

MEGABYTES = 8


def _lead() -> shoal.Agent[str]:
    """A lead with two process helpers spewing on stdout and stderr."""
    model = ScriptedModel.per_prompt({
        "go": [[call("helper", task="out"), call("helper", task="err")], "lead done"],
        "out": [[call("spew", stream="stdout", megabytes=MEGABYTES)], "out done"],
        "err": [[call("spew", stream="stderr", megabytes=MEGABYTES)], "err done"],
    })
    helper = shoal.Agent(name="helper", model=model, tools=[rt.spew], isolation="process")
    return shoal.Agent(name="lead", model=model, subagents=[helper])


def _check(result: shoal.AgentResult[str]) -> None:
    out, err = result.children
    assert (out.status, out.output, err.status, err.output) == (
        "ok", "out done", "ok", "err done"), (out.error, err.error)
    assert [c.message.content for c in out.calls] == [f"wrote {MEGABYTES} MiB to stdout"]
    assert result.output == "lead done"


def test_megabytes_printed_by_process_agents_tools_leave_their_results_whole(
        capfd: pytest.CaptureFixture[str]) -> None:
    _check(_lead().run_sync("go"))
    out, err = capfd.readouterr()
    assert out.count("x" * 1023 + "\n") == MEGABYTES * 1024
    assert err.count("x" * 1023 + "\n") == MEGABYTES * 1024


def test_a_program_whose_stdout_and_stderr_are_pipes_finishes() -> None:
    code = ("import sys; sys.path[:0] = ['src', '.']\n"
            "from tests.test_spew_process_r2_s39 import _lead, _check\n"
            "_check(_lead().run_sync('go')); print('RESULT OK')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          timeout=100)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.endswith(b"RESULT OK\n")
    assert len(done.stdout) >= MEGABYTES << 20 and len(done.stderr) >= MEGABYTES << 20
