"""The data aggregation plan: map ``summarise_shard`` over the shards, reduce, report.

::

    shards ──> summaries[0] ─┐
           ├─> summaries[1] ─┤
           ├─> ...           ├─> totals ──> figures ──> commentary ──> report
           └─> summaries[7] ─┘       └──────────────────────────────────┘

``summaries`` is a map node: its items are added while the plan runs, one per shard that
``shards`` found, and run side by side. It is ``partial``: a shard that cannot be read fails
on its own (its outcome names the line) and the reduce goes on with every other shard, naming
the one that is missing. The commentary (an agent writing a paragraph from the figures) is
there only when :func:`build_plan` gets a model (:func:`aggregate`, for ``shoal run``, always
has one); the numbers never come from a model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import shoal
from examples.data_aggregation.tools import (
    describe_figures,
    list_shards,
    merge_summaries,
    summarise_shard,
    write_report,
)
from shoal.models.base import Model

__all__ = ["DEFAULT_QUESTION", "aggregate", "build_plan", "commentator", "failed_shards"]

#: The commentary's task when no question is given.
DEFAULT_QUESTION = "Write one paragraph about these sales figures."

commentator = shoal.Agent(
    name="commentator",
    model="local",
    description="writes one paragraph about sales figures it is given",
    instructions=("You write one short paragraph for a shop manager about the sales figures "
                  "you are given. Use only the numbers given; do not make up any. Name the "
                  "best region and the best product. No lists, no headings."),
    max_turns=1,
    settings=shoal.ModelSettings(temperature=0.2, max_tokens=200),
)


def build_plan(folder: str = "", report_path: str = "sales_report.md",
               model: str | Model | None = None, question: str = DEFAULT_QUESTION
               ) -> shoal.Plan:
    """The plan: list the shards, summarise each, merge, and write the report.

    Args:
        folder: a directory of CSV shards (empty: the shipped ones).
        report_path: where the markdown report goes.
        model: a model for the commentary paragraph (``"local"``, ``"openai:..."`` or a
            :class:`~shoal.models.base.Model`); ``None`` leaves the commentary out.
        question: the commentary's task: what its paragraph is about.
    """
    plan = shoal.Plan(name="data_aggregation")
    shards = plan.call(list_shards, folder=folder, node_id="shards")
    summaries = plan.map(summarise_shard, over=shards, partial=True, node_id="summaries")
    totals = plan.call(merge_summaries, parts=summaries, shards=shards, node_id="totals")
    extra: dict[str, Any] = {}
    if model is not None:
        figures = plan.call(describe_figures, totals=totals, node_id="figures")
        agent = dataclasses.replace(commentator, model=model)
        extra["commentary"] = plan.call(agent, task=question, figures=figures,
                                        node_id="commentary")
    plan.call(write_report, totals=totals, path=report_path, node_id="report", **extra)
    return plan


def aggregate(question: str) -> shoal.Plan:
    """The plan as ``shoal run`` takes it, the commentary answering ``question``.

    ``shoal run examples/data_aggregation/plan.py:aggregate "Which region sells most?"``
    writes ``sales_report.md`` in the current directory and prints it; the commentator runs
    on its own model (``local``) unless ``--model`` names another.
    """
    return build_plan(model=commentator.model, question=question or DEFAULT_QUESTION)


def failed_shards(result: shoal.RunResult) -> dict[str, str]:
    """The shards whose summary failed, each with its error message, from a run's result."""
    shards: list[str] = result["shards"].value if result["shards"].ok else []
    failed: dict[str, str] = {}
    for index, path in enumerate(shards):
        outcome = result[f"summaries[{index}]"]
        if not outcome.ok:
            failed[path] = outcome.error.message if outcome.error else str(outcome.reason)
    return failed
