"""Swarm of process agents: 300 subagents in processes of their own, with exact budgets.

See :mod:`bench.swarm` (points 4 to 6 of its docstring); the workload is the same swarm,
its agents forked from the tree's template.
"""

from __future__ import annotations

from bench.common import cli
from bench.swarm import process_main as main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(cli(main, __doc__ or ""))
