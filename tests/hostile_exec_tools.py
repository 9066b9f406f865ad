"""Tools for :mod:`tests.test_hostile_exec_s34`; worker processes import them from here."""

from __future__ import annotations

import time
from pathlib import Path

from shoal.tools import tool


@tool(isolation="process")
def wait_to_be_killed(marker: str) -> int:
    """Create ``marker``, then wait (for the test to kill this worker, as an OOM killer would)."""
    Path(marker).touch()
    time.sleep(60)
    return 0


@tool(isolation="process")
def square(x: int) -> int:
    """``x * x``: a sibling that must keep its result."""
    return x * x
