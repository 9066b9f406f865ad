"""A hostile user of timeouts, retries, deadlines, limits and budgets (sweep 36).

Each test here failed before the fix it names; time runs on the virtual clock of
:mod:`shoal.testing` wherever it matters.
"""

from __future__ import annotations

import pytest

import shoal
from shoal import ConfigError
from shoal.testing import ScriptedModel, run_virtual


@pytest.mark.parametrize("limit", ["wall_clock", "cost"])
def test_a_budget_amount_too_large_for_a_float_is_refused_when_made(limit: str) -> None:
    # was: Budget(wall_clock=10**400) was taken, and the run failed as it started with an
    # OverflowError ("int too large to convert to float") from setting its timer
    with pytest.raises(ConfigError, match=f"budget {limit} must be a number a float can hold"):
        shoal.Budget(**{limit: 10**400})


def test_a_wall_clock_that_fits_a_float_still_runs() -> None:
    lead = shoal.Agent(name="lead", model=ScriptedModel(["hi"]),
                       budget=shoal.Budget(wall_clock=10**300, cost=10**300))
    assert run_virtual(lead.run("go")).output == "hi"
