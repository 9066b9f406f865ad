"""Data aggregation: map a summary over CSV shards side by side, then reduce.

Eight months of a bakery chain's sales ship as one CSV file per month in ``shards/``. The plan
(:mod:`examples.data_aggregation.plan`) summarises every shard at once with ``plan.map``,
merges the summaries, and writes a markdown report; optionally an agent adds a paragraph
about the figures. Run it from the repository root::

    python -m examples.data_aggregation
    python -m examples.data_aggregation --model local
"""
