"""Data aggregation: map a summary over CSV shards side by side, then reduce.

Eight months of a bakery chain's sales ship as one CSV file per month in ``shards/``. The plan
(:mod:`examples.data_aggregation.plan`) summarises every shard at once with ``plan.map``,
merges the summaries, and writes a markdown report; optionally an agent adds a paragraph
about the figures. Run it from the repository root::

    python -m examples.data_aggregation                  # numbers only, no model
    python -m examples.data_aggregation --model local    # and a paragraph
    shoal run examples/data_aggregation/plan.py:aggregate "Which region sells most?"
    shoal run examples/data_aggregation/plan.yaml        # the plan file: numbers only

The shipped May shard has a mistyped row on purpose: that shard fails on its own and the report
keeps the seven others. ``shoal run`` therefore exits 1 (a node did not succeed); the module
exits 0 once the report is written.
"""
