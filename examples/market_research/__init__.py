"""Market research: analysts study companies side by side; a writer and a critic report.

Five made-up makers of electric cargo bikes ship as markdown profiles in ``companies/``. The
plan (:mod:`examples.market_research.plan`) starts one analyst agent per company at once,
collects their notes, and runs the writer and the critic in a reflect loop
(:func:`shoal.patterns.reflect`); the final draft is checked against the figures without a
model and written to a markdown report. Run it from the repository root, on the local model
(the ``local`` extra) or another (``--model``)::

    shoal run examples/market_research/plan.py:research "Which maker is the safest bet?"
    python -m examples.market_research --companies 2
"""
