"""``import shoal`` and every public name, in fresh interpreters: what a program pays to start.

Each trial is a new interpreter (``sys.executable -c ...``) that runs ``import shoal`` and then
``getattr(shoal, name)`` for every name in ``shoal.__all__`` (each loads its module). Measured
in the same run, interleaved with it, the floors: the bare interpreter (``-c pass``), the
third-party modules shoal imports, imported alone (typing_extensions: pydantic loads on first
use, not at import), and every module shoal imports except its own (stdlib and third-party, in
the order shoal loads them): what is left above that last floor is shoal's own code. Per
trial: the CPU and wall time of the imports themselves, measured by the child around them
(``time.process_time`` and ``perf_counter``), and, beside them, the whole child's CPU time
(user + system, from the OS's accounting of the finished child: the interpreter's start and
exit too) and its wall time from start to exit.

Target (issue 14): the median < 0.3 s for the imports. Judged on CPU time, which another
process hogging the cores cannot inflate the way it does wall time (the wall-time median and
max are printed beside it). Byte code: the children share a cache of compiled modules in a
temporary directory (``PYTHONPYCACHEPREFIX``), filled by an untimed run of each program, so
that no trial compiles source, as with an installed package (``PYTHONDONTWRITEBYTECODE``
would otherwise make every trial compile all of shoal). Last, untimed: shoal's modules by
self import time (``-X importtime``, median of a few runs), to show where the time goes.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench.common import BenchResult, Target, cli, median

NAME = "import_time"
TARGET = Target("value", "<=", 0.3)
#: The program measured: the whole public namespace, what a real program may use.
SHOAL = ("import shoal\n"
         "for name in shoal.__all__:\n"
         "    getattr(shoal, name)\n"
         "print(len(shoal.__all__))")
#: Lists, one name a line, what ``SHOAL`` imports: ``third-party`` or ``other`` (stdlib) module.
PROBE = ("import sys, sysconfig\n"
         "before = set(sys.modules)\n"
         "import shoal\n"
         "for name in shoal.__all__:\n"
         "    getattr(shoal, name)\n"
         "sites = {sysconfig.get_paths()[k] for k in ('purelib', 'platlib')}\n"
         "for name, module in list(sys.modules.items()):\n"
         "    if name in before or name.partition('.')[0] == 'shoal':\n"
         "        continue\n"
         "    path = getattr(module, '__file__', None) or ''\n"
         "    print('third-party' if path.startswith(tuple(sites)) else 'other', name)")


#: Wraps a program: the child times what it runs, and prints it on a line of its own.
TIMED = ("import time as _time\n"
         "_cpu, _wall = _time.process_time(), _time.perf_counter()\n"
         "{code}\n"
         "print('@timed', _time.process_time() - _cpu, _time.perf_counter() - _wall)")


@dataclass(frozen=True)
class Trial:
    """One finished child: its CPU time (user + system) and its wall time, in seconds.

    ``own_cpu`` and ``own_wall``: what the program itself took, timed by the child (the
    interpreter's start and exit left out); ``out`` what it printed besides.
    """

    cpu: float
    wall: float
    out: str
    own_cpu: float = 0.0
    own_wall: float = 0.0


def imports(modules: Sequence[str]) -> str:
    """A program importing ``modules`` in order (one that cannot be imported alone is passed)."""
    return ("import importlib\n"
            f"for name in {list(modules)!r}:\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except ImportError:\n"
            "        pass")


def child_env(cache: str) -> dict[str, str]:
    """This environment, with compiled modules kept in ``cache`` (see the module docstring)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = cache
    return env


def run_child(code: str, env: Mapping[str, str], *flags: str) -> Trial:
    """Run ``code`` in a fresh interpreter; a failure is an error naming the program.

    Without ``flags``, the child also times ``code`` itself (see :data:`TIMED`).
    """
    timed = not flags
    program = TIMED.replace("{code}", code) if timed else code
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *flags, "-c", program], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"the child failed ({done.returncode}) running:\n{code}\n"
                           f"{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if not timed:
        return Trial(cpu, wall, done.stderr)
    *printed, timing = done.stdout.splitlines()  # the timing line comes last
    _, own_cpu, own_wall = timing.split(" ")
    return Trial(cpu, wall, "\n".join(printed), float(own_cpu), float(own_wall))


def self_times(env: Mapping[str, str], runs: int) -> dict[str, float]:
    """Each module's median self import time in seconds (``-X importtime``) over ``runs``."""
    seen: dict[str, list[float]] = {}
    for _ in range(runs):
        report = run_child(SHOAL, env, "-X", "importtime").out
        for line in report.splitlines():
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            own, _, name = line.removeprefix("import time:").split("|")
            seen.setdefault(name.strip(), []).append(int(own) / 1e6)
    # a module missing from a run was not imported there: it counts as no time
    return {name: statistics.median(times + [0.0] * (runs - len(times)))
            for name, times in seen.items()}


def measure(programs: Mapping[str, str], env: Mapping[str, str],
            rounds: int) -> dict[str, list[Trial]]:
    """Every program once untimed (fills the byte-code cache), then ``rounds`` interleaved."""
    for code in programs.values():
        run_child(code, env)
    trials: dict[str, list[Trial]] = {name: [] for name in programs}
    for _ in range(rounds):
        for name, code in programs.items():
            trials[name].append(run_child(code, env))
    return trials


def report(result: BenchResult, trials: dict[str, list[Trial]], third_party: list[str]) -> None:
    """The shoal figures against each floor, CPU and wall time."""
    cpu = {name: [t.own_cpu for t in ts] for name, ts in trials.items()}
    wall = {name: [t.own_wall for t in ts] for name, ts in trials.items()}
    child = {name: [t.cpu for t in ts] for name, ts in trials.items()}
    rounds = len(cpu["shoal"])
    shown = ", ".join(sorted({m.partition(".")[0] for m in third_party}))
    result.add(f"shoal + every public name: CPU, median of {rounds}", median(cpu["shoal"]), "s",
               floor=median(cpu["others"]), target=TARGET)
    result.add("  the whole interpreter (start, imports, exit) against a bare one: CPU, median",
               median(child["shoal"]), "s", floor=median(child["bare"]))
    result.add("shoal + every public name: CPU, max", max(cpu["shoal"]), "s",
               floor=max(cpu["others"]))
    result.add("shoal + every public name: wall, median", median(wall["shoal"]), "s",
               floor=median(wall["others"]))
    result.add("shoal + every public name: wall, max", max(wall["shoal"]), "s",
               floor=max(wall["others"]))
    result.add("floor: every module shoal imports but its own, CPU", median(cpu["others"]), "s")
    result.add("floor: third-party modules alone, CPU", median(cpu["third"]), "s")
    result.add("floor: bare interpreter (-c pass, start to exit), CPU", median(child["bare"]),
               "s")
    result.add("shoal against the third-party floor, CPU", median(cpu["shoal"]), "s",
               floor=median(cpu["third"]))
    result.add("shoal's own share (shoal - every other module), CPU",
               median(cpu["shoal"]) - median(cpu["others"]), "s")
    result.note(f"third-party packages shoal imports: {shown}")


def main(quick: bool = False) -> BenchResult:
    # quick (the suite's smoke test) checks that every trial loads every name: one round does
    rounds, profiles = (1, 1) if quick else (15, 5)
    result = BenchResult(NAME)
    result.header(f"'import shoal' + every public name in fresh interpreters; floors: the bare "
                  f"interpreter, the modules shoal imports (interleaved, {rounds} rounds)")
    with tempfile.TemporaryDirectory(prefix="shoal-bench-pycache-") as cache:
        env = child_env(cache)
        listed = [line.split(" ", 1) for line in run_child(PROBE, env).out.splitlines()]
        third_party = [name for kind, name in listed if kind == "third-party"]
        programs = {"bare": "pass", "third": imports(third_party),
                    "others": imports([name for _, name in listed]), "shoal": SHOAL}
        trials = measure(programs, env, rounds)
        report(result, trials, third_party)
        own = self_times(env, profiles)
    names = {int(t.out.strip() or -1) for t in trials["shoal"]}
    result.check("every public name loads in every trial", names == {len(_public_names())},
                 f"loaded {sorted(names)}")
    # pydantic (and pydantic_core) load where a tool's model, a schema or a JSON value is made
    result.check("loading every public name imports no pydantic",
                 not any(m.partition(".")[0] in ("pydantic", "pydantic_core") for m in third_party),
                 f"imported {sorted({m.partition('.')[0] for m in third_party})}")
    ranked = sorted(((t, n) for n, t in own.items() if n.partition(".")[0] == "shoal"),
                    reverse=True)
    result.note(f"self import time (-X importtime, median of {profiles}): shoal's modules "
                f"{sum(t for t, _ in ranked) * 1e3:.1f} ms of "
                f"{sum(own.values()) * 1e3:.1f} ms; the top 10:")
    for seconds, name in ranked[:10]:
        result.add(f"  self: {name}", seconds, "s")
    return result


def _public_names() -> list[str]:
    import shoal

    return list(shoal.__all__)


if __name__ == "__main__":
    raise SystemExit(cli(main, __doc__ or ""))
