"""Run shoal's benchmarks and print each metric against its floor and target.

Usage: ``python bench/run_all.py [--quick] [--only NAME ...] [--json out.json] [--all]``
(``--all``: asynchow's real-time mode runs every plan). Exit status 1 if any correctness check
or timing target failed, 0 otherwise (skipped benchmarks do not fail the run).
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
              "ray_overhead", "agents", "plan_parsing")


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

    print(f"shoal {shoal.__version__} | Python {platform.python_version()} | "
          f"{platform.platform()} | {'quick' if args.quick else 'full'} run")
    results = []
    started = time.perf_counter()
    for name in args.only or BENCHMARKS:
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
                f", targets missed: {failed}" if failed else ", all targets met")
        print(f"  {result.name:<14} {status}")
    if args.json:
        args.json.write_text(json.dumps([r.to_dict() for r in results], indent=2))
        print(f"results written to {args.json}")
    bad = [r for r in results if not r.skipped and not (r.correct and r.targets_met)]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
