"""The market research plan: analysts in parallel, then a writer and a critic in a loop.

::

    companies ──> profiles[0..4] ──> analysts[0..4] ──┐
        │                                             ├──> notes ──┐
        └──> facts ───────────────────────────────────┘            ├──> review ──> check ──> report
               └──> brief ─────────────────────────────────────────┘

``profiles`` and ``analysts`` are map nodes: one ``read_company`` and one analyst per company
``companies`` found, side by side. ``review`` is :func:`shoal.patterns.reflect`: the writer
drafts from the brief and the notes, the critic answers ``ACCEPT`` or what is missing, and the
writer revises with that feedback, at most ``max_rounds`` drafts. The brief is the task of both
(the critic sees the task and the draft), so it carries the checklist. ``check`` then checks
the final draft against the figures without a model, and ``report`` writes everything.
"""

from __future__ import annotations

import shoal
from examples.market_research.agents import analyst, critic, writer
from examples.market_research.tools import (
    DEFAULT_QUESTION,
    check_report,
    collect_notes,
    key_facts,
    list_companies,
    read_company,
    save_report,
    writing_brief,
)
from shoal.patterns import reflect

__all__ = ["build_plan", "research"]


def build_plan(limit: int | None = None, report_path: str = "market_report.md", *,
               question: str = DEFAULT_QUESTION, max_rounds: int = 2,
               analyst: shoal.Agent[str] = analyst,
               writer: shoal.Agent[str] = writer,
               critic: shoal.Agent[str] = critic) -> shoal.Plan:
    """The plan of the market research (see the module docstring).

    Args:
        limit: study only the first this many companies (default: all of them).
        report_path: where the markdown report goes.
        question: what the report answers (the writer's and the critic's task begins with it).
        max_rounds: how many drafts the writer may make.
        analyst: the agent that writes one company's note (default: this example's).
        writer: the agent that drafts the report.
        critic: the agent that accepts a draft or says what is missing.
    """
    plan = shoal.Plan(name="market_research")
    companies = plan.call(list_companies, limit=limit, node_id="companies")
    profiles = plan.map(read_company, over=companies, node_id="profiles")
    notes = plan.map(analyst, over=profiles, node_id="analysts")
    facts = plan.call(key_facts, companies=companies, node_id="facts")
    brief = plan.call(writing_brief, facts=facts, question=question, node_id="brief")
    notes_text = plan.call(collect_notes, facts=facts, notes=notes, node_id="notes")
    loop = reflect(writer, critic, max_rounds=max_rounds, name="review")
    review = plan.call(loop, task=brief, notes=notes_text, node_id="review")
    check = plan.call(check_report, report=review["output"], facts=facts, node_id="check")
    plan.call(save_report, report=review["output"], accepted=review["accepted"],
              rounds=review["rounds"], check=check, facts=facts, notes=notes_text,
              path=report_path, node_id="report")
    return plan


def research(question: str) -> shoal.Plan:
    """The plan as ``shoal run`` takes it: every company, the report answering ``question``.

    ``shoal run examples/market_research/plan.py:research "Which maker is the safest bet?"``
    writes ``market_report.md`` in the current directory and prints it; the agents run on their
    own model (``local``) unless ``--model`` names another.
    """
    return build_plan(question=question or DEFAULT_QUESTION)
