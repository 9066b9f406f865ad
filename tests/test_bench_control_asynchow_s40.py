"""bench.asynchow's real-time mode judges shoal beside a control measured the same way.

The control is the hand-written floor run again as a third side: what noise alone makes of a
side as fast as the floor, printed beside shoal's figure in the same run. These tests check
the method (same treatment for every side), not the timings.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from bench import asynchow
from bench.common import dataset_file


def test_each_side_takes_each_place_equally_often() -> None:
    """The rotation gives no side the first or last place (a loop state, a load) for free."""
    places = Counter((side, place) for order in asynchow.ROTATION
                     for place, side in enumerate(order))
    assert sorted(places) == [(side, place) for side in range(3) for place in range(3)]
    assert set(places.values()) == {1}


def test_the_quick_run_reports_the_control_and_shoals_own_time() -> None:
    result = asynchow.main(quick=True)
    names = {m.name: m for m in result.metrics}
    if not result.checks:  # (the dataset is not here: the smoke test says so too)
        pytest.skip("asynchow dataset not found")
    for name in ("control: floor again / floor, p95", "control: floor again / floor, median",
                 "shoal's own time / optimal, p95", "plans given extra trials"):
        assert name in names, sorted(names)
    # the control is not judged: it is what the judged figure is read against
    assert names["control: floor again / floor, p95"].target is None
    assert names["shoal / floor, p95"].target == asynchow.FLOOR_P95_TARGET
    assert names["shoal's own time / optimal, median"].value > 0  # shoal costs something
    assert all(result.checks.values())


def test_extra_trials_go_to_every_side_or_none() -> None:
    """A plan run ``trials`` times each way gets ``trials`` or ``trials + extra``, never other."""
    path = dataset_file("asynchow", "asynchow", "asynchow_async.jsonl")
    if path is None:
        pytest.skip("asynchow dataset not found")
    spec = min(asynchow.load(path), key=lambda p: abs(p.optimal - 0.002))  # a 2 ms plan
    rows = asyncio.run(asynchow.run_real([spec] * 4, 1, 2))
    for row in rows:
        assert row.trials in (1, 3)
        assert row.ok
        # the best of each side is no worse than its first trial
        assert row.floor <= row.first_floor and row.shoal <= row.first_shoal
        assert row.again <= row.first_again
