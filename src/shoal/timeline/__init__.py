"""The timeline: one self-contained HTML page showing a run or an agent tree against time.

Every call and model turn is a bar on its lineage's lane (one lane per agent, or the plan),
coloured by status; hatched parts show waits (a limit, an approval, a retry's backoff), a dotted
lead-in the wait for inputs, and an outline the critical path. Hovering a bar sums it up;
clicking it shows everything: times, attempts, why it waited, its result or error. Below the
chart: the agent tree and the answer.

``RunResult.timeline(path)``, ``AgentResult.timeline(path)`` and ``shoal show RUN --html FILE``
write it; the page loads nothing from anywhere.
"""

from __future__ import annotations

from shoal.timeline.html import embed, render, write
from shoal.timeline.journal import from_journal
from shoal.timeline.model import (
    Attempt,
    Bar,
    Lane,
    Timeline,
    Wait,
    from_agent_result,
    from_run_result,
)

__all__ = ["Attempt", "Bar", "Lane", "Timeline", "Wait", "embed", "from_agent_result",
           "from_journal", "from_run_result", "render", "write"]
