"""Run the data aggregation example: ``python -m examples.data_aggregation [options]``.

From the repository root::

    python -m examples.data_aggregation                  # numbers only, no model
    python -m examples.data_aggregation --model local    # and a paragraph by the local model
    python -m examples.data_aggregation --shards my/csvs --out my_report.md

It prints what each shard gave and the totals, and writes the report (``sales_report.md`` in
the current directory by default). The exit code is 0 when the report was written, also when
a shard could not be read (the shipped May shard has a bad row on purpose: the report names it
and keeps every other month), 1 when there is no report, and 2 when the ``--model`` cannot be
used (a missing package or API key: the message says what to install or set).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import shoal
from examples.data_aggregation.plan import DEFAULT_QUESTION, build_plan, failed_shards
from examples.data_aggregation.tools import euros
from shoal.cli.agents import model_option
from shoal.exceptions import ShoalError
from shoal.models import resolve_model


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.data_aggregation",
        description="Summarise CSV shards side by side, merge the totals, write a report.")
    parser.add_argument("--shards", default="", metavar="DIR",
                        help="a folder of CSV shards (default: the shipped sales shards)")
    parser.add_argument("--out", default="sales_report.md", metavar="PATH",
                        help="where to write the report (default: sales_report.md)")
    parser.add_argument("--question", default=DEFAULT_QUESTION, metavar="TEXT",
                        help="what the paragraph is about (with --model)")
    parser.add_argument("--model", default=None, metavar="MODEL",
                        help="a model to write a paragraph about the figures: local, "
                             "openai:NAME, anthropic:NAME, or module:name of a shoal Model "
                             "object (default: none, numbers only)")
    return parser.parse_args(argv)


def _print_result(result: shoal.RunResult, out: str) -> int:
    failed = failed_shards(result)
    totals = result["totals"]
    if totals.ok:
        done = totals.value["shards_summarised"]
        print(f"{len(done) + len(failed)} shards: {len(done)} summarised, {len(failed)} failed")
    for message in failed.values():
        print(f"  failed: {message}", file=sys.stderr)
    report = result["report"]
    if not report.ok:
        broken = [o for o in result if o.status == "failed" and "[" not in o.node_id]
        for outcome in broken or [report]:
            why = outcome.error.message if outcome.error else outcome.reason
            print(f"{outcome.node_id}: {outcome.status}: {why}", file=sys.stderr)
        return 1
    value = totals.value
    print(f"totals: {value['rows']} sales, {value['units']} items, "
          f"{euros(value['revenue_cents'])} EUR ({value['first_day']} to {value['last_day']})")
    print(f"report: {Path(out).resolve()}")
    return 0


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
    model = None
    if options.model is not None:
        try:
            model = chosen_model(options.model)
        except ShoalError as exc:
            print(f"--model {options.model}: {exc}", file=sys.stderr)
            return 2
    plan = build_plan(options.shards, options.out, model, options.question)
    return _print_result(shoal.run_sync(plan), options.out)


if __name__ == "__main__":
    raise SystemExit(main())
