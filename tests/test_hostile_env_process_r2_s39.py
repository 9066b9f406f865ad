"""Environment variables passed by name to process agents (``env=[...]``), with hostile values.

A value too large to start a process with fails the agent with the variable named and what to
do instead, whether its process is forked from the tree's template or started afresh (macOS,
Linux before 5.3): the latter said "Argument list too long: '.../python'".
"""

from __future__ import annotations

import os
from typing import Any

import pytest

import shoal
from shoal.agents import _launch
from shoal.testing import ScriptedModel, call

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_child_process_leak")]

NAME = "SHOAL_TEST_R2_HOSTILE"


@shoal.tool
def env_value() -> str:
    """The value this process sees for :data:`NAME` (its length, and an escaped head)."""
    value = os.environ.get(NAME)
    return "unset" if value is None else f"{len(value)}:{value[:40]!a}"


def _run(value: str) -> shoal.AgentResult[Any]:
    """Run a lead whose process subagent reads :data:`NAME`, set to ``value``."""
    os.environ[NAME] = value
    try:
        model = ScriptedModel.per_prompt({"go": [[call("reader", task="t")], "done"],
                                          "t": [[call("env_value")], "seen"]})
        reader = shoal.Agent(name="reader", model=model, tools=[env_value],
                             isolation="process", env=[NAME])
        return shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync("go")
    finally:
        del os.environ[NAME]


@pytest.fixture(params=["forked", "spawned"])
def launch(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Agent processes forked from a template (where it can be), or started afresh."""
    if request.param == "spawned":
        made = _launch.AgentLauncher.__init__

        def afresh(self: _launch.AgentLauncher, *, fork: bool | None = None) -> None:
            made(self, fork=False)

        monkeypatch.setattr(_launch.AgentLauncher, "__init__", afresh)
    return str(request.param)


@pytest.mark.parametrize("size", [300_000, 2_000_000])
def test_a_value_too_large_to_start_an_agent_process_names_the_variable(
        launch: str, size: int) -> None:
    del launch  # either way
    # (over exec's 128 KiB for one variable, and over what one message to the template holds)
    result = _run("v" * size)
    reader = result.children[0]
    assert reader.status == "failed" and isinstance(reader.error, shoal.ConfigError), \
        reader.error
    message = str(reader.error)
    assert "Argument list too long" not in message, message
    assert f"the largest variable is '{NAME}', {size:,} characters" in message, message
    assert "environment of an agent process is too large" in message, message
    assert result.output == "done"


@pytest.mark.parametrize("value", [
    "a\nb=c\0".replace("\0", ""), "\x1b[31mred\x1b[0m", "\udcff\udcfe", "=" * 100, " ", "",
])
def test_hostile_values_reach_the_agent_process_as_they_are(launch: str, value: str) -> None:
    result = _run(value)
    assert result.children[0].status == "ok", result.children[0].error
    assert result.children[0].calls[0].message.content == f"{len(value)}:{value[:40]!a}"
