"""The site report example: fetch a small website in parallel and write a markdown report.

Run it from the repository root::

    shoal run examples/site_report/plan.yaml
"""
