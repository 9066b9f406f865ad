"""AsyncHow: 1598 how-to plans as DAGs of timed steps; does shoal reach the optimal makespan?

Each step is a call of one async tool ``step(seconds)`` that sleeps its scaled duration (one
day of the step's ``duration_seconds[step][0]`` = 1 ms); ``step_deps`` become ``after=`` edges.
The optimal makespan is the critical path of the DAG with those durations (unlimited
parallelism), computed here and cross-checked with the dataset's ``optimal_makespan_seconds``.

Two modes, because most scaled plans are far shorter than the event loop's timer resolution
(median optimal ~0.03 ms, while epoll waits in whole milliseconds):

(a) virtual clock (``shoal.testing.clock``), all plans: code costs no time, so makespan /
    optimal isolates scheduling quality: 1.0 exactly iff every step starts the moment its
    last dependency finishes.
(b) real time, one plan at a time: shoal (plan built and run, end to end) against a floor
    measured in the same run on the same plan, a minimal hand-written asyncio DAG executor
    (a task per step awaiting its predecessors' events, then sleeping). By default only plans
    whose scaled optimal is >= 20 ms; ``--all`` runs every plan. Each plan is run
    ``TRIALS`` times each by three sides: the floor, shoal, and the floor again (the
    control), in rotating order (each side takes each place once), and the best time of
    each is compared with the floor's best: shoal / floor is the figure judged, and the
    control / floor, measured the same way in the same run, is what noise alone makes of
    a side as fast as the floor: shoal's p95 can be judged against 1.02 only as far as the
    control's p95 is below it. A plan where either ratio is over 1.02 after ``TRIALS`` gets
    ``EXTRA_TRIALS`` more of all three sides (decided on either ratio, so both get the same
    treatment). A 20-30 ms plan's makespan moves by a few percent from one run to the next
    with the timers' and the machine's jitter, which a single trial would charge to
    whichever side drew it. The first trial's ratios are printed beside them.

What the real-time p95 measures (measured, issue 14's notes): run against itself the same
way, the floor's p95 was 1.003 on a quiet machine and 1.12-1.13 on a loaded one (hence the
control, measured in every run); on a quiet machine what moves a plan's ratio is epoll's
whole milliseconds. A step that sleeps less than a millisecond (many plans' first
step: 0.02 ms) costs a whole millisecond when the loop has nothing else to do while it
waits, and no time when something else keeps the loop busy past its timer: the floor starts
every step's task at once, so on a plan whose first step is that short its other tasks keep
the loop busy, while shoal starts only the ready step and the loop sleeps 1 ms (plan 157:
the floor's first step ends 0.05-0.13 ms after it starts, shoal's 1.25 ms). A 20-30 ms plan
moves 3-5 % with that millisecond. ``--select-loop`` runs the real-time mode on an event loop
on ``select()``, whose timers wait microseconds, to tell that apart from shoal's own cost.

Targets: makespan / optimal median <= 1.05 and p95 <= 1.10; in real time, shoal / the
hand-written executor p95 <= 1.02.
"""

from __future__ import annotations

import asyncio
import json
import math
import selectors
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import shoal
from bench.common import BenchResult, Target, cli, dataset_file, median, percentile
from shoal.testing import run_virtual

NAME = "asynchow"
SCALE = 1e-3 / 86400  # one day of plan time = one millisecond of run time
REAL_MIN_OPTIMAL = 0.020
TRIALS = 3  # real time: runs of each side per plan, rotating; the best of each is judged
EXTRA_TRIALS = 3  # real time: more trials of every side for a plan whose ratios disagree
MEDIAN_TARGET = Target("value", "<=", 1.05)
P95_TARGET = Target("value", "<=", 1.10)
#: real time, against the hand-written executor on the same plan (issue 14)
FLOOR_P95_TARGET = Target("value", "<=", 1.02)


@shoal.tool
async def step(seconds: float) -> float:
    """Carry out one how-to step: wait its scaled duration."""
    await asyncio.sleep(seconds)
    return seconds


@dataclass
class HowPlan:
    idx: int
    order: list[str]  # step ids, each after its predecessors
    preds: dict[str, list[str]]
    seconds: dict[str, float]  # scaled durations
    optimal: float  # critical path of the scaled DAG
    listed: float  # the dataset's optimal_makespan_seconds[0], scaled


def load(path: Path) -> list[HowPlan]:
    plans = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        ids = [str(i) for i in range(1, record["step_nums"] + 1)]
        preds: dict[str, list[str]] = {i: [] for i in ids}
        for before, after in record["step_deps"]:
            preds[after].append(before)
        seconds = {i: record["duration_seconds"][i][0] * SCALE for i in ids}
        order = topological(preds)
        plans.append(HowPlan(record["idx"], order, preds, seconds,
                             critical_path(order, preds, seconds),
                             record["optimal_makespan_seconds"][0] * SCALE))
    return plans


def topological(preds: dict[str, list[str]]) -> list[str]:
    order: list[str] = []
    placed: set[str] = set()
    while len(order) < len(preds):  # plans have at most 17 steps: quadratic is fine
        ready = [s for s in preds if s not in placed and all(p in placed for p in preds[s])]
        if not ready:
            raise ValueError("cycle in step_deps")
        order += ready
        placed.update(ready)
    return order


def critical_path(order: list[str], preds: dict[str, list[str]],
                  seconds: dict[str, float]) -> float:
    finish: dict[str, float] = {}
    for s in order:
        finish[s] = max((finish[p] for p in preds[s]), default=0.0) + seconds[s]
    return max(finish.values(), default=0.0)


def build(plan_spec: HowPlan) -> shoal.Plan:
    plan = shoal.Plan(f"asynchow-{plan_spec.idx}")
    refs: dict[str, shoal.Ref] = {}
    for s in plan_spec.order:
        refs[s] = plan.call(step, seconds=plan_spec.seconds[s],
                            after=[refs[p] for p in plan_spec.preds[s]], node_id=s)
    return plan


def start_lag(plan_spec: HowPlan, result: shoal.RunResult) -> float:
    """The longest wait between a step's last dependency finishing and the step starting."""
    worst = 0.0
    for s in plan_spec.order:
        ready = max((result[p].finished_at or 0.0 for p in plan_spec.preds[s]), default=0.0)
        started = result[s].started_at
        worst = max(worst, math.inf if started is None else started - ready)
    return worst


# ---- (a) virtual clock ---------------------------------------------------------------------


def virtual_mode(plans: list[HowPlan], result: BenchResult) -> None:
    result.header(f"(a) virtual clock, {len(plans)} plans: makespan / optimal")

    async def run_all() -> tuple[list[float], float, float, int]:
        ratios, worst_lag, worst_gap, bad = [], 0.0, 0.0, 0
        for spec in plans:
            run = await shoal.run(build(spec))
            bad += not run.ok
            if spec.optimal > 0:
                ratios.append(run.makespan / spec.optimal)
            worst_lag = max(worst_lag, start_lag(spec, run))
            worst_gap = max(worst_gap, abs(run.makespan - spec.optimal))
        return ratios, worst_lag, worst_gap, bad

    wall = time.perf_counter()
    ratios, worst_lag, worst_gap, bad = run_virtual(run_all())
    wall = time.perf_counter() - wall
    result.add("virtual makespan / optimal, median", median(ratios), target=MEDIAN_TARGET)
    result.add("virtual makespan / optimal, p95", percentile(ratios, 0.95), target=P95_TARGET)
    result.add("virtual makespan / optimal, max", max(ratios))
    result.add("worst |makespan - optimal|", worst_gap, "s")
    result.add("worst start lag after last dependency", worst_lag, "s")
    result.add("real time for the virtual runs", wall, "s")
    result.check("virtual: every step ok", bad == 0, f"{bad} plans with failures")
    # Absolute tolerance: the virtual clock keeps growing across plans, so float rounding of
    # (clock - run start) is ~1e-14 s, which is a large *relative* error on a 2e-8 s plan.
    result.check("virtual: |makespan - optimal| <= 1 ns", worst_gap <= 1e-9)


# ---- (b) real time -------------------------------------------------------------------------


async def floor_once(spec: HowPlan) -> float:
    """A minimal asyncio DAG executor: each step a task awaiting its predecessors' events."""
    done = {s: asyncio.Event() for s in spec.order}

    async def run_step(s: str) -> None:
        for p in spec.preds[s]:
            await done[p].wait()
        await step.fn(spec.seconds[s])
        done[s].set()

    start = time.perf_counter()
    await asyncio.gather(*(run_step(s) for s in spec.order))
    return time.perf_counter() - start


async def shoal_once(spec: HowPlan) -> tuple[float, shoal.RunResult]:
    start = time.perf_counter()
    run = await shoal.run(build(spec))
    return time.perf_counter() - start, run


@dataclass
class RealRow:
    optimal: float
    floor: float  # the best of the plan's trials of the floor (the denominator)
    shoal: float  # the best of the plan's trials
    again: float  # the best of the plan's trials of the floor's second copy (the control)
    first_floor: float  # the first trial alone
    first_shoal: float
    first_again: float
    trials: int  # trials of each side (TRIALS, or TRIALS + EXTRA_TRIALS if the sides disagreed)
    makespan: float  # shoal's own makespan (run start to last finish), in its best trial
    measured_cp: float  # critical path of the durations shoal measured, in its best trial
    ok: bool  # every trial's every step


def real_mode(plans: list[HowPlan], result: BenchResult, all_plans: bool, quick: bool,
              select_loop: bool = False) -> None:
    chosen = plans if all_plans else [p for p in plans if p.optimal >= REAL_MIN_OPTIMAL]
    if quick:
        chosen = sorted(chosen, key=lambda p: p.optimal)[:2]
    which = ("all plans" if all_plans
             else f"plans with scaled optimal >= {REAL_MIN_OPTIMAL * 1e3:g} ms")
    trials, extra = (1, 0) if quick else (TRIALS, EXTRA_TRIALS)
    expected = 3 * trials * sum(p.optimal for p in chosen)
    loop_kind = "select()" if select_loop else "the default selector (epoll: whole ms)"
    result.header(f"(b) real time, {which}: {len(chosen)} of {len(plans)} plans, one at a time, "
                  f"the floor, shoal and the floor again (the control), {trials} trial(s) "
                  f"each in rotating order, {extra} more where a ratio is over "
                  f"{FLOOR_P95_TARGET.bound:g} (best of each judged), an event loop on "
                  f"{loop_kind}; expect ~{expected:.3g} s of sleeping")
    if select_loop:
        with asyncio.Runner(loop_factory=_select_loop) as runner:
            rows = runner.run(run_real(chosen, trials, extra))
    else:
        rows = asyncio.run(run_real(chosen, trials, extra))
    report_real(rows, result)


def _select_loop() -> asyncio.AbstractEventLoop:
    """An event loop on ``select()``: its timers wait microseconds (epoll: whole milliseconds)."""
    return asyncio.SelectorEventLoop(selectors.SelectSelector())


async def run_real(chosen: list[HowPlan], trials: int, extra: int = 0) -> list[RealRow]:
    await shoal_once(chosen[0])  # warm-up, untimed
    await floor_once(chosen[0])
    return [await real_row(spec, trials, extra) for spec in chosen]


#: The order of the three sides in trial ``k``: ``ROTATION[k % 3]`` (0 the floor, 1 shoal,
#: 2 the floor's second copy): each side takes each place equally often, so none gains from
#: the loop state or the machine's load that a place brings.
ROTATION = ((0, 1, 2), (1, 2, 0), (2, 0, 1))


async def real_row(spec: HowPlan, trials: int, extra: int = 0) -> RealRow:
    """Run ``spec`` ``trials`` times each way, rotating floor, shoal and the floor's copy.

    If shoal / floor or the control (floor copy / floor) is over the 1.02 target after
    ``trials``, ``extra`` more trials of all three sides: the same treatment for both
    ratios, decided on either, so the control's spread shows what the extra trials leave.
    """
    times: tuple[list[float], list[float], list[float]] = ([], [], [])
    runs: list[tuple[float, shoal.RunResult]] = []

    async def trial(k: int) -> None:
        for side in ROTATION[k % len(ROTATION)]:
            if side == 1:
                runs.append(await shoal_once(spec))
                times[1].append(runs[-1][0])
            else:
                times[side].append(await floor_once(spec))

    for k in range(trials):
        await trial(k)
    bound = FLOOR_P95_TARGET.bound
    if max(min(times[1]), min(times[2])) > bound * min(times[0]):
        for k in range(trials, trials + extra):
            await trial(k)
    best, run = min(runs, key=lambda timed: timed[0])
    return RealRow(spec.optimal, min(times[0]), best, min(times[2]), times[0][0], times[1][0],
                   times[2][0], len(times[0]), run.makespan, run.critical_path_time,
                   all(r.ok for _, r in runs))


def report_real(rows: list[RealRow], result: BenchResult) -> None:
    series: dict[str, Callable[[RealRow], float]] = {
        "shoal / floor": lambda r: r.shoal / r.floor,
        "control: floor again / floor": lambda r: r.again / r.floor,
        "shoal / floor, first trial only": lambda r: r.first_shoal / r.first_floor,
        "control, first trial only": lambda r: r.first_again / r.first_floor,
        "shoal / optimal": lambda r: r.shoal / r.optimal,
        "floor / optimal": lambda r: r.floor / r.optimal,
        "shoal makespan / measured critical path": lambda r: r.makespan / r.measured_cp,
        # what shoal itself costs a plan, without the steps' own timer jitter: its wall time
        # (plan built, run, result) less the critical path of the durations its steps took
        "shoal's own time / optimal":
            lambda r: (r.shoal - r.measured_cp) / r.optimal,
    }
    for label, ratio in series.items():
        values = [ratio(r) for r in rows if r.optimal > 0]
        targeted = label.startswith("shoal /") and "first trial" not in label
        result.add(f"{label}, median", median(values),
                   target=MEDIAN_TARGET if targeted else None)
        p95_target = FLOOR_P95_TARGET if label == "shoal / floor" else P95_TARGET
        result.add(f"{label}, p95", percentile(values, 0.95),
                   target=p95_target if targeted else None)
    result.add("plans given extra trials", sum(r.trials > min(x.trials for x in rows)
                                               for r in rows))
    result.add("total shoal time / total floor time", sum(r.shoal for r in rows),
               "s", floor=sum(r.floor for r in rows))
    result.add("total control time / total floor time", sum(r.again for r in rows),
               "s", floor=sum(r.floor for r in rows))
    result.check("real: every step ok", all(r.ok for r in rows))


def main(quick: bool = False, all_plans: bool = False, select_loop: bool = False) -> BenchResult:
    path = dataset_file(NAME, "asynchow", "asynchow_async.jsonl")
    if path is None:
        return BenchResult(NAME, skipped="dataset not found", echo=False)
    plans = load(path)
    result = BenchResult(NAME)
    differ = [p.idx for p in plans if not math.isclose(p.optimal, p.listed, rel_tol=1e-9)]
    result.header(f"{len(plans)} plans from {path.name}; 1 day = 1 ms; optimal = critical path")
    result.note(f"computed critical path agrees with optimal_makespan_seconds for "
                f"{len(plans) - len(differ)}/"
                f"{len(plans)} plans (differ: idx {differ}); the computed one is used")
    optimal = sorted(p.optimal for p in plans)
    result.note(f"scaled optimal makespan: median {median(optimal) * 1e3:.4g} ms, "
                f"p95 {percentile(optimal, 0.95) * 1e3:.4g} ms, max {optimal[-1]:.4g} s")
    virtual_mode(plans[:20] if quick else plans, result)
    real_mode(plans, result, all_plans, quick, select_loop)
    return result


if __name__ == "__main__":
    raise SystemExit(cli(main, __doc__ or "", all_flag=True, select_flag=True))
