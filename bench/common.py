"""Shared benchmark helpers: dataset paths, timing, and the printed result lines.

Every benchmark's ``main(quick=...)`` returns a :class:`BenchResult`. Each :class:`Metric` is
printed the moment it is measured, with the floor measured in the same run, the ratio, and
whether it meets its target. Correctness checks (every node ok, refs resolved, ...) are kept
apart from timing targets, so a smoke test can assert the first without the second.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

DATASETS_ENV = "SHOAL_DATASETS"
#: Whether timing targets are judged: full runs only. A quick run's trials are too small and
#: too few for a target to mean anything (one busy moment on the machine misses it), so it
#: prints its ratios and judges correctness alone. Set by :func:`judge_targets`.
JUDGED = True


def judge_targets(judged: bool) -> None:
    """Judge timing targets (full runs) or only show them (quick runs)."""
    global JUDGED
    JUDGED = judged


def passed(result: BenchResult) -> bool:
    """Whether a run of this benchmark succeeded: skipped, or correct and (if judged) on target."""
    return bool(result.skipped) or (result.correct and (result.targets_met or not JUDGED))


def datasets_dir() -> Path:
    """``$SHOAL_DATASETS``, else ``../shared/datasets`` relative to the repository root."""
    env = os.environ.get(DATASETS_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "datasets"


def dataset_file(bench: str, *parts: str) -> Path | None:
    """The dataset file, or ``None`` after printing why the benchmark is skipped."""
    path = datasets_dir().joinpath(*parts)
    if path.is_file():
        return path
    print(f"[{bench}] SKIPPED: dataset file {path} not found. Place the datasets in "
          f"../shared/datasets next to the repository, or set {DATASETS_ENV}=/path/to/datasets.")
    return None


# ---- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A bound on a metric's ``ratio`` (to its floor) or on its raw ``value``."""

    on: Literal["ratio", "value"]
    op: Literal["<=", ">=", "==", ">"]
    bound: float

    def met(self, value: float) -> bool:
        if self.op == "<=":
            return value <= self.bound
        if self.op == ">=":
            return value >= self.bound
        if self.op == ">":
            return value > self.bound
        return value == self.bound

    def __str__(self) -> str:
        return f"{self.on} {self.op} {self.bound:g}"


@dataclass
class Metric:
    """One measured figure, the floor it is compared with, and its target (if any)."""

    name: str
    value: float
    unit: str = ""
    floor: float | None = None
    target: Target | None = None

    @property
    def ratio(self) -> float | None:
        if self.floor is None or self.floor == 0:
            return None
        return self.value / self.floor

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        measured = self.ratio if self.target.on == "ratio" else self.value
        return None if measured is None else self.target.met(measured)

    def line(self) -> str:
        parts = [f"  {self.name:<50} {fmt(self.value, self.unit):>14}"]
        if self.floor is not None:
            parts.append(f"floor {fmt(self.floor, self.unit):>11}")
            parts.append(f"ratio {self.ratio:7.3f}" if self.ratio is not None else "ratio     n/a")
        if self.target is not None:
            target = self.target
            # a bound on the value reads in the value's own unit (2 ms, not 0.002)
            shown = (f"{target.on} {target.op} {fmt(target.bound, self.unit)}"
                     if target.on == "value" else str(target))
            verdict = "not judged (quick run)" if not JUDGED else (
                "PASS" if self.passed else "FAIL")
            parts.append(f"target {shown}: {verdict}")
        return " | ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "unit": self.unit, "floor": self.floor,
                "ratio": self.ratio, "target": str(self.target) if self.target else None,
                "passed": self.passed}


@dataclass
class BenchResult:
    """A benchmark's metrics (printed as they are added), correctness checks and notes."""

    name: str
    metrics: list[Metric] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: str = ""
    echo: bool = True

    def header(self, text: str) -> None:
        if self.echo:
            print(f"\n== {self.name}: {text}", flush=True)

    def add(self, name: str, value: float, unit: str = "", *, floor: float | None = None,
            target: Target | None = None) -> Metric:
        metric = Metric(name, value, unit, floor, target)
        self.metrics.append(metric)
        if self.echo:
            print(metric.line(), flush=True)
        return metric

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks[name] = ok
        if self.echo:
            print(f"  check {name:<44} {'ok' if ok else 'FAILED'}{'  ' + detail if detail else ''}",
                  flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        if self.echo:
            print(f"  note: {text}", flush=True)

    @property
    def correct(self) -> bool:
        """Whether every correctness check passed (timing targets aside)."""
        return all(self.checks.values())

    @property
    def targets_met(self) -> bool:
        return all(m.passed is not False for m in self.metrics)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "skipped": self.skipped, "correct": self.correct,
                "targets_met": self.targets_met, "checks": self.checks, "notes": self.notes,
                "metrics": [m.to_dict() for m in self.metrics]}


def fmt(value: float, unit: str) -> str:
    """A number with about four significant digits, seconds shown in ms below one second."""
    if isinstance(value, int):
        return f"{value:,} {unit}".strip()
    if unit == "s" and abs(value) < 1:
        return f"{value * 1e3:.4g} ms"
    if unit in ("", "/s", "nodes/s") and abs(value) >= 1e4:
        return f"{value:,.0f} {unit}".strip()
    if unit == "" and abs(value) < 10:
        return f"{value:.4f}"  # ratios: keep the digits that tell 1.0 from 1.04
    return f"{value:.4g} {unit}".strip()


# ---- statistics and timing ------------------------------------------------------------------


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def percentile(xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 1]): a value that was actually measured."""
    ordered = sorted(xs)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def interleave(reps: int, trials: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    """Run each trial ``reps`` times, alternating between them, so drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in trials}
    for _ in range(reps):
        for name, trial in trials.items():
            gc.collect()  # garbage from the previous trial must not be collected inside this one
            times[name].append(trial())
    return times


async def interleave_async(
    reps: int, trials: dict[str, Callable[[], Awaitable[float]]]
) -> dict[str, list[float]]:
    """:func:`interleave` for trials that are coroutines on the running loop."""
    times: dict[str, list[float]] = {name: [] for name in trials}
    for _ in range(reps):
        for name, trial in trials.items():
            gc.collect()
            times[name].append(await trial())
    return times


def settle_threads(baseline: int, timeout: float = 10.0) -> None:
    """Wait (untimed) until idle pool threads from the last trial have exited."""
    stop = time.monotonic() + timeout
    while threading.active_count() > baseline and time.monotonic() < stop:
        time.sleep(0.005)


# ---- command line ----------------------------------------------------------------------------


def cli(main: Callable[..., BenchResult], description: str, *, all_flag: bool = False,
        nodes_flag: bool = False, select_flag: bool = False) -> int:
    """Run one benchmark from the command line; exit status 1 if a check (or, in a full run, a
    target) failed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a tiny configuration (smoke test)")
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    if all_flag:
        parser.add_argument("--all", action="store_true", dest="all_plans",
                            help="real-time mode: run every plan, not only the long ones")
    if nodes_flag:
        parser.add_argument("--nodes", type=int, help="plan size (default: the full one)")
    if select_flag:
        parser.add_argument("--select-loop", action="store_true", dest="select_loop",
                            help="real-time mode: an event loop on select(), whose timers wait "
                                 "microseconds, not epoll's whole milliseconds")
    args = parser.parse_args()
    options: dict[str, Any] = {"all_plans": args.all_plans} if all_flag else {}
    if select_flag:
        options["select_loop"] = args.select_loop
    if nodes_flag and args.nodes is not None:
        options["nodes"] = args.nodes
    judge_targets(not args.quick)
    result = main(quick=args.quick, **options)
    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=2))
    return 0 if passed(result) else 1
