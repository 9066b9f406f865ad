"""A swarm's CPU per subagent, counted in bytecodes (``bench/swarm_ops.py``): a guard.

Timings on a shared two-core machine vary by tens of percent, so a slower per-subagent path
went unseen until someone profiled. A count of the bytecodes Python executes per subagent
does not vary with load (nor, but for a few, with the hash seed), so it is pinned here,
against the same workload on bare asyncio counted in the same run: a change that adds work to
every subagent (a layer per node, an object per step) fails this test, with the counts.
"""

from __future__ import annotations

import sys

from bench.swarm_ops import profile

#: shoal's bytecodes per subagent over bare asyncio's, with about 10 % room: 5.23 for
#: ``profile(2, 6)`` on Python 3.11 when this was written (48,700 against 9,300)
MOST_OVER_FLOOR = 5.75


def test_a_subagent_executes_at_most_its_pinned_bytecodes_over_bare_asyncio() -> None:
    tracer = sys.gettrace()
    found = profile(2, 6)
    assert sys.gettrace() is tracer  # the counting tracer is gone, whatever was there before
    ratio = found.per_subagent / found.floor
    top = sorted(found.by_function.items(), key=lambda item: -item[1])[:8]
    assert ratio <= MOST_OVER_FLOOR, (
        f"{found.per_subagent:,.0f} bytecodes per subagent, {ratio:.2f}x bare asyncio's "
        f"{found.floor:,.0f} (at most {MOST_OVER_FLOOR}x): the most were {top}")
    # the self counts add up to the total, and name where they run
    assert abs(sum(found.by_function.values()) - found.per_subagent) < 1
    modules = found.by_module()
    assert modules["shoal/scheduler/state.py"] > 0 and modules["asyncio/events.py"] > 0


def test_the_count_is_the_same_in_two_runs() -> None:
    first, second = profile(2, 4), profile(2, 4)
    assert abs(first.per_subagent - second.per_subagent) <= 0.01 * first.per_subagent
    assert first.floor == second.floor
