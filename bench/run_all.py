"""Run shoal's benchmarks and print each metric against its floor and target.

Usage: ``python bench/run_all.py [--quick] [--only NAME ...] [--json out.json] [--all]``
(``--all``: asynchow's real-time mode runs every plan). Exit status 1 if any correctness check
failed, or in a full run any timing target; 0 otherwise (skipped benchmarks do not fail the
run). A ``--quick`` run prints its ratios but judges no target: its trials are too small for
that, and a busy machine would fail it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from pathlib import Path

BENCHMARKS = ("fanout_async", "fanout_sync", "trivial", "large_plan", "asynchow", "nestools",
              "ray_overhead", "agents", "plan_parsing", "composition", "latency", "process_start",
              "otel_overhead", "swarm", "swarm_process", "import_time")
#: Left out of a ``--quick`` run unless named with ``--only``: starting Ray alone takes several
#: seconds, more than the rest of the quick run together.
SLOW_TO_START = ("ray_overhead",)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny configurations (smoke run)")
    parser.add_argument("--only", action="append", choices=BENCHMARKS, metavar="NAME",
                        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")
    parser.add_argument("--json", type=Path, help="write all results to this JSON file")
    parser.add_argument("--all", action="store_true", dest="all_plans",
                        help="asynchow: run every plan in real-time mode, not only long ones")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # Run as a script, so the repository root (holding the ``bench`` package) may not be on
    # the path yet; modules are imported after this, by name.
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    import shoal
    from bench.common import judge_targets, passed

    judge_targets(not args.quick)
    print(f"shoal {shoal.__version__} | Python {platform.python_version()} | "
          f"{platform.platform()} | {'quick' if args.quick else 'full'} run")
    results = []
    started = time.perf_counter()
    names = args.only or [n for n in BENCHMARKS if not (args.quick and n in SLOW_TO_START)]
    if args.quick and not args.only:
        print(f"quick run: {', '.join(SLOW_TO_START)} left out (starting Ray takes seconds); "
              f"add --only ray_overhead to run it")
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        options = {"all_plans": args.all_plans} if name == "asynchow" else {}
        results.append(module.main(quick=args.quick, **options))
    print(f"\n== summary ({time.perf_counter() - started:.1f} s)")
    for result in results:
        if result.skipped:
            status = f"SKIPPED ({result.skipped})"
        else:
            failed = [m.name for m in result.metrics if m.passed is False]
            status = ("correct" if result.correct else "INCORRECT") + (
                ", targets not judged (quick run)" if args.quick
                else f", targets missed: {failed}" if failed else ", all targets met")
        print(f"  {result.name:<14} {status}")
    if args.json:
        args.json.write_text(json.dumps([r.to_dict() for r in results], indent=2))
        print(f"results written to {args.json}")
    if args.quick:
        print("quick run: ratios only; timing targets are judged in full runs")
    return 0 if all(passed(r) for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
