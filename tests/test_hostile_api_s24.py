"""Wrong arguments to the public API, the way a new user writes them: each gets a typed error
naming the argument and what it takes, before anything runs.
"""

from __future__ import annotations

import math
import os
import random
import textwrap
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.exceptions import ConfigError
from shoal.runtime import new_run_id
from shoal.testing import ScriptedModel
from tests.cli_process import run_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("limits", "said"), [
    ({"requests": 1.5}, "requests must be a positive whole number; got float 1.5"),
    ({"subagents": True}, "subagents must be a positive whole number; got bool True"),
    ({"fan_out": "3"}, "fan_out must be a positive whole number; got str '3'"),
    ({"tokens": 0}, "tokens must be a positive whole number; got int 0"),
    ({"depth": -1}, "depth must be a whole number, 0 or more; got int -1"),
    ({"depth": 0.5}, "depth must be a whole number, 0 or more; got float 0.5"),
    ({"cost": math.nan}, "cost must be a positive number"),
    ({"cost": "0.5"}, "cost must be a positive number (None for no limit); got str"),
    ({"wall_clock": -math.inf}, "wall_clock must be a positive number"),
    ({"wall_clock": False}, "wall_clock must be a positive number"),
])
def test_a_budget_takes_whole_counts_and_finite_amounts(limits: dict[str, Any], said: str
                                                         ) -> None:
    # 1.5 and True passed before, and a count compared with >= would read them as 2 and 1;
    # '3' failed with a TypeError from the comparison
    with pytest.raises(ConfigError, match=f"budget {said}".replace("(", r"\(")
                       .replace(")", r"\)")):
        shoal.Budget(**limits)


def test_a_budget_of_good_limits_is_kept_as_given() -> None:
    budget = shoal.Budget(tokens=10**12, cost=0.5, requests=3, subagents=1, depth=0, fan_out=2,
                          wall_clock=2)
    assert (budget.tokens, budget.cost, budget.depth, budget.wall_clock) == (10**12, 0.5, 0, 2)
    assert shoal.Budget(wall_clock=math.inf).wall_clock == math.inf  # as a deadline: no limit


@pytest.mark.parametrize("prompt", [5, None, ["hello"], b"hello"])
def test_a_prompt_that_is_not_text_is_refused_before_the_run(prompt: Any) -> None:
    # an int ran, and the run failed in its first turn with "object of type 'int' has no
    # len()"; None reached the model as a message without content
    model = ScriptedModel(["never asked"])
    agent = shoal.Agent(name="a", model=model)
    with pytest.raises(ConfigError, match=r"agent 'a': the prompt must be a str, got"):
        agent.run_sync(prompt)
    with pytest.raises(ConfigError, match="the prompt must be a str"):
        agent.stream(prompt)  # at the call, not when the stream is first read
    assert model.requests == []


@pytest.mark.parametrize("field", ["instructions", "description"])
def test_instructions_and_description_must_be_text(field: str) -> None:
    options: dict[str, Any] = {field: 5}
    with pytest.raises(ConfigError, match=f"agent 'a': {field} must be a str, got int 5"):
        shoal.Agent(name="a", model=ScriptedModel(["x"]), **options)


def test_a_seeded_runtime_keeps_its_own_jitter_and_unseeded_ones_share_one() -> None:
    # unseeded runtimes share one generator (a fresh one reads the OS's entropy per runtime)
    first, second = shoal.Runtime(seed=7), shoal.Runtime(seed=7)
    assert first._rng is not second._rng
    assert [first._rng.random() for _ in range(3)] == [second._rng.random() for _ in range(3)]
    assert shoal.Runtime()._rng is shoal.Runtime()._rng
    assert isinstance(shoal.Runtime()._rng, random.Random)


def test_run_ids_made_in_one_second_differ_and_sort_by_time() -> None:
    ids = [new_run_id() for _ in range(200)]
    assert len(set(ids)) == 200
    stamps = [i.rsplit("-", 1)[0] for i in ids]
    assert stamps == sorted(stamps) and all(len(s) == 15 and s[8] == "-" for s in stamps)


@pytest.mark.parametrize(("deadline", "ok"), [("0", False), ("nan", False), ("-1", False),
                                              ("inf", True), ("5", True)])
def test_an_agent_s_deadline_on_the_command_line_is_checked_as_a_plan_s(
        tmp_path: Path, deadline: str, ok: bool) -> None:
    # 0 was read as "no deadline", and nan or -1 were refused as a "budget wall_clock", a name
    # the command line never shows; a plan's --deadline said "deadline must be positive"
    (tmp_path / "agent.py").write_text(textwrap.dedent('''
        import shoal
        from shoal.testing import ScriptedModel

        lead = shoal.Agent(name="lead", model=ScriptedModel(["hi"]))
    '''), encoding="utf-8")
    done = run_cli(["run", "agent.py:lead", "go", "--deadline", deadline, "--store", "runs.db"],
                   cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    if ok:
        assert done.returncode == 0, done.stderr
        return
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        "error: deadline must be positive (a number of seconds)"), done.stderr
    assert not (tmp_path / "runs.db").exists()  # refused before anything was made
