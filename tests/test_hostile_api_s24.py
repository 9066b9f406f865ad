"""Wrong arguments to the public API, the way a new user writes them: each gets a typed error
naming the argument and what it takes, before anything runs.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

import shoal
from shoal.exceptions import ConfigError
from shoal.runtime import new_run_id
from shoal.testing import ScriptedModel


@pytest.mark.parametrize(("limits", "said"), [
    ({"requests": 1.5}, "requests must be a positive whole number; got float 1.5"),
    ({"subagents": True}, "subagents must be a positive whole number; got bool True"),
    ({"fan_out": "3"}, "fan_out must be a positive whole number; got str '3'"),
    ({"tokens": 0}, "tokens must be a positive whole number; got int 0"),
    ({"depth": -1}, "depth must be a whole number, 0 or more; got int -1"),
    ({"depth": 0.5}, "depth must be a whole number, 0 or more; got float 0.5"),
    ({"cost": math.nan}, "cost must be a positive, finite number"),
    ({"cost": "0.5"}, "cost must be a positive, finite number (None for no limit); got str"),
    ({"wall_clock": math.inf}, "wall_clock must be a positive, finite number"),
    ({"wall_clock": False}, "wall_clock must be a positive, finite number"),
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
    with pytest.raises(ConfigError, match=f"agent 'a': {field} must be a str, got int 5"):
        shoal.Agent(name="a", model=ScriptedModel(["x"]), **{field: 5})


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
