"""A Ray agent retried after its actor died replays what it finished, with the memory journal.

The Ray twin of tests/test_remote_agent_retry.py: the agent's actor mirrors its in-memory
journal to the driver over its connection, so the retried agent plan node, in a new actor,
neither asks its model again for a finished turn nor runs a finished call's side effect
again, as an inline agent retried in the same run does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import shoal
from shoal.agents.remote import load_mirrored
from tests.conftest import ONE_AT_A_TIME
from tests.test_remote_agent_retry import retried_helper, run_inline_twin, step_runs, turns_asked

pytest.importorskip("ray")

pytestmark = [pytest.mark.timeout(240),
              ONE_AT_A_TIME]  # the one Ray head



@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize("how", ["sigkill", "exit"])
def test_a_retried_ray_agent_replays_its_finished_turns_from_the_memory_journal(
        tmp_path: Path, how: str) -> None:
    plan, ref, log = retried_helper(tmp_path, "ray", how)
    runtime = shoal.Runtime()  # the default journal: in memory
    result = runtime.run_sync(plan)
    outcome = result[ref]
    assert outcome.status == "ok" and outcome.attempts == 2, outcome
    assert outcome.value == "done"
    assert log.read_text().split() == ["ran"]  # the finished call replayed, not run again
    assert turns_asked(tmp_path / "asked") == [1, 2, 3]  # the retry asked only for turn 3

    inline, inline_ref, inline_turns, inline_store = run_inline_twin(tmp_path)
    assert inline[inline_ref].value == outcome.value and inline_turns == [1, 2, 3]
    assert runtime.store is not None
    load_mirrored(runtime.store)
    assert step_runs(runtime.store, result.run_id) == step_runs(inline_store, inline.run_id)
