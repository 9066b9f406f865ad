"""When a node's call started and finished, for tests that compare times.

An outcome's ``started_at`` / ``finished_at`` are ``None`` for a call that never ran; these
fail the test on that rather than compare ``None`` with a number.
"""

from __future__ import annotations

from shoal.outcome import Outcome


def started(outcome: Outcome) -> float:
    """When the call's first attempt started (seconds on the run's clock)."""
    assert outcome.started_at is not None, f"{outcome.node_id} never started: {outcome}"
    return outcome.started_at


def finished(outcome: Outcome) -> float:
    """When the call finished (seconds on the run's clock)."""
    assert outcome.finished_at is not None, f"{outcome.node_id} never finished: {outcome}"
    return outcome.finished_at
