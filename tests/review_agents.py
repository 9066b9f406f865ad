"""A hierarchical literature review for the CLI's tests: a lead and reader subagents.

The lead's model chooses the fan-out (one reader subagent per paper, all in one turn), which a
hosted model does well and a 135M local model does not: the main job
(``examples/literature_review/agents.py:review``) keeps that structure in the program instead.
The tests drive this one with a scripted model, over the example's papers.
"""

from __future__ import annotations

from examples.literature_review.agents import PAPERS, read_paper, search_papers

import shoal

__all__ = ["PAPERS", "lead", "reader", "search_papers"]  # PAPERS: a name that is no agent


reader = shoal.Agent(
    name="reader",
    model="local",
    description="reads one paper (give its id, e.g. 'p3') and summarises its findings",
    instructions=("You summarise one research paper. Call read_paper with the paper id from "
                  "the task, then answer with two sentences: the paper's main finding and "
                  "its key number."),
    tools=[read_paper],
    max_turns=3,
    settings=shoal.ModelSettings(temperature=0.2, max_tokens=150),
)

lead = shoal.Agent(
    name="lead",
    model="local",
    instructions=("You write short literature reviews. The papers are p1, p2, p3, p4, p5 and p6. "
                  "Call the reader tool once for every paper, all in one reply, with the paper "
                  "id as the task. Then write a review of one paragraph that cites the papers "
                  "by id."),
    subagents=[reader],
    max_turns=4,
    settings=shoal.ModelSettings(temperature=0.2, max_tokens=400, parallel_tool_calls=True),
    budget=shoal.Budget(subagents=8, depth=1, fan_out=8, tokens=200_000, wall_clock=600),
)
