"""Run the market research example: ``python -m examples.market_research [options]``.

From the repository root, on the local model (the ``local`` extra) or a hosted one::

    python -m examples.market_research
    python -m examples.market_research --companies 2           # a short run: two analysts
    python -m examples.market_research --model openai:gpt-4.1-mini
    python -m examples.market_research --question "Which maker is the safest bet?"

(``shoal run examples/market_research/plan.py:research "QUESTION"`` runs the same plan with
the live tree and the journal.)

Each agent's start and end is printed as it happens (the analysts start together), then the
report's verdict; the report goes to ``market_report.md`` in the current directory. The exit
code is 0 when the report was written, 1 when it was not, and 2 when the model cannot be used
(a missing package or API key: the message says what to install or set).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import shoal
from examples.market_research import agents
from examples.market_research.plan import build_plan
from examples.market_research.tools import DEFAULT_QUESTION, company_ids
from shoal.cli.agents import model_option
from shoal.events import AgentFinished, AgentStarted, Event, ModelServerStarting
from shoal.exceptions import ShoalError
from shoal.models import resolve_model

#: The plan's map nodes (see examples.market_research.plan).
MAPS = ("profiles", "analysts")


def _positive(text: str) -> int:
    """An argument that must be a whole number, 1 or more."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number, 1 or more")
    return int(text)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.market_research",
        description="Analysts study each company at once; a writer and a critic make the "
                    "report.")
    parser.add_argument("--model", default="local", metavar="MODEL",
                        help="the model of every agent: local (default), openai:NAME, "
                             "anthropic:NAME, or module:name of a shoal Model object")
    parser.add_argument("--question", default=DEFAULT_QUESTION, metavar="TEXT",
                        help="what the report answers")
    parser.add_argument("--companies", type=_positive, default=None, metavar="N",
                        help="study only the first N companies (default: all five)")
    parser.add_argument("--rounds", type=_positive, default=2, metavar="N",
                        help="drafts the writer may make (default: 2)")
    parser.add_argument("--out", default="market_report.md", metavar="PATH",
                        help="where to write the report (default: market_report.md)")
    return parser.parse_args(argv)


def show_progress(event: Event) -> None:
    """Print each agent's start and end, and the local model server's start, on stderr."""
    if isinstance(event, AgentStarted):
        print(f"  {event.lineage}: started", file=sys.stderr)
    elif isinstance(event, AgentFinished):
        print(f"  {event.lineage}: {event.status} after {event.duration:.1f} s", file=sys.stderr)
    elif isinstance(event, ModelServerStarting):
        print(f"  {event.detail} ...", file=sys.stderr)


def chosen_model(spec: str) -> str | shoal.Model:
    """The model ``--model`` names: a model string, or ``module:name`` of a model object.

    Made once before the run (and dropped), so that a missing extra or API key is one
    :class:`~shoal.exceptions.ShoalError` saying what to install or set, not one per agent.
    """
    model = model_option(spec)
    resolve_model(model)
    return model


def main(argv: Sequence[str] | None = None) -> int:
    """Run the example with command-line ``argv``; return the exit code."""
    options = _arguments(argv)
    try:
        model = chosen_model(options.model)
    except ShoalError as exc:
        print(f"--model {options.model}: {exc}", file=sys.stderr)
        return 2
    team = {name: dataclasses.replace(getattr(agents, name), model=model)
            for name in ("analyst", "writer", "critic")}
    plan = build_plan(options.companies, options.out, question=options.question,
                      max_rounds=options.rounds, **team)
    # every agent answers in one turn, so this many requests is all the run may make
    requests = len(company_ids(options.companies)) + 2 * options.rounds
    result = shoal.run_sync(plan, on_event=show_progress,
                            budget=shoal.Budget(requests=requests))
    report = result["report"]
    if not report.ok:
        for outcome in result:
            # a map's own error only sums up its items': print the items'
            if outcome.status == "failed" and outcome.node_id not in MAPS:
                why = outcome.error.message if outcome.error else outcome.reason
                print(f"{outcome.node_id}: failed: {why}", file=sys.stderr)
        print(f"no report: {report.reason or report.status}", file=sys.stderr)
        return 1
    review, check = result["review"].value, result["check"].value
    verdict = "accepted" if review.accepted else "not accepted"
    facts = "complete" if check["complete"] else "incomplete"
    print(f"report: {Path(options.out).resolve()} (draft {review.rounds}, {verdict} by the "
          f"critic; fact check {facts})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
