"""Run the market research example: ``python -m examples.market_research [options]``.

From the repository root, on the local model (the ``local`` extra) or a hosted one::

    python -m examples.market_research
    python -m examples.market_research --companies 2           # a short run: two analysts
    python -m examples.market_research --model openai:gpt-4.1-mini

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

import shoal
from examples.market_research import agents
from examples.market_research.plan import build_plan
from shoal.events import AgentFinished, AgentStarted, Event, ModelServerStarting
from shoal.exceptions import ShoalError
from shoal.models import resolve_model


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.market_research",
        description="Analysts study each company at once; a writer and a critic make the "
                    "report.")
    parser.add_argument("--model", default="local", metavar="MODEL",
                        help="the model of every agent: local (default), openai:NAME, "
                             "anthropic:NAME")
    parser.add_argument("--companies", type=int, default=None, metavar="N",
                        help="study only the first N companies (default: all five)")
    parser.add_argument("--rounds", type=int, default=2, metavar="N",
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


def model_problem(spec: str | None) -> str | None:
    """Why the model ``spec`` names cannot be used (a missing package, key ...), or ``None``.

    Checked before the run, so that a missing extra is one message, not one per agent.
    """
    if spec is None:
        return None
    try:
        resolve_model(spec)
    except ShoalError as exc:
        return f"--model {spec}: {exc}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the example with command-line ``argv``; return the exit code."""
    options = _arguments(argv)
    problem = model_problem(options.model)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    team = {name: dataclasses.replace(getattr(agents, name), model=options.model)
            for name in ("analyst", "writer", "critic")}
    plan = build_plan(options.companies, options.out, max_rounds=options.rounds, **team)
    result = shoal.run_sync(plan, on_event=show_progress)
    report = result["report"]
    if not report.ok:
        for outcome in result:
            if outcome.status == "failed":
                why = outcome.error.message if outcome.error else outcome.reason
                print(f"{outcome.node_id}: failed: {why}", file=sys.stderr)
        return 1
    value = report.value
    verdict = "accepted" if value["accepted"] else "not accepted"
    facts = "complete" if value["complete"] else "incomplete"
    print(f"report: {value['path']} (draft {value['rounds']}, {verdict} by the critic; "
          f"fact check {facts})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
