"""The limits a call can wait on besides the run-wide one, and which nodes wait on each.

A *gate* is a per-tool, per-resource-key or per-backend concurrency limit; a rate limiter is a
gate whose room comes back with time. A node that finds a gate full is *parked* on it (in a
heap, best priority first) and returns to the ready queue when the gate frees up, so nothing
polls. Pure bookkeeping, like the state machine that uses it: no I/O, no clock.

The gates themselves live in :class:`SharedLimits`, one per :class:`~shoal.runtime.Runtime`,
so every run of a runtime counts against the same limits: a tool's ``max_concurrency`` of 2
means 2 calls in flight across the lead and all its subagents' tool phases, not 2 per phase.
Parked nodes stay with their own run; when a call of one run frees a gate that nodes of
another run wait on, the freeing run's driver tells the other one (see
:meth:`SharedLimits.freed`), which gives its parked nodes another look.

The runs of one runtime may be on several threads at once (``run_sync`` from each, every one on
a loop of its own), so every read-then-write of the shared gates (a check and a take, a release,
a gate made on first use, the books of who waits) happens under :attr:`SharedLimits.lock`.
Calls with no gate (most) never take it.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable, Mapping
from fnmatch import fnmatchcase
from typing import Any

from shoal.deps import render_key
from shoal.limits import ConcurrencyLimit, RateLimiter
from shoal.tools import Tool

__all__ = ["Gates", "Parked", "SharedLimits"]

Parked = tuple[float, int]  # (priority, node position), as in the ready heap


class SharedLimits:
    """The concurrency gates and rate limiters every run of one runtime counts against."""

    def __init__(self) -> None:
        #: Held around every read-then-write of the gates below, which runs on other threads'
        #: loops change too: a check with its take, a release, a gate made on first use.
        self.lock = threading.Lock()
        self.tool_limits: dict[tuple[str, int], ConcurrencyLimit] = {}
        self.key_limits: dict[str, ConcurrencyLimit] = {}
        self.executor_limits: dict[str, ConcurrencyLimit] = {}
        self.rates: dict[tuple[str, str], RateLimiter] = {}
        # gate -> the runs with nodes parked on it, and how to tell each that it freed up
        self._waiting: dict[object, dict[object, Callable[[object], None]]] = {}

    def executor_gate(self, name: str, cap: int) -> ConcurrencyLimit:
        """The worker-count gate of one backend."""
        gate = self.executor_limits.get(name)  # made once per runtime: no lock to look
        if gate is not None:
            return gate
        with self.lock:
            return self.executor_limits.setdefault(name, ConcurrencyLimit(f"{name} workers", cap))

    def wait_on(self, gate: object, run: object, wake: Callable[[object], None]) -> bool:
        """Remember that ``run`` has nodes parked on ``gate``; ``wake(gate)`` when it frees.

        Returns whether ``gate`` has room already: a run on another thread may have freed it
        between this run's check and now, when nobody knew to tell this run; the caller then
        looks again itself. (A release after this call tells it.)
        """
        waiting = self._waiting.get(gate)
        if waiting is not None and run in waiting:
            return False  # in the books since before: every release since has told it
        with self.lock:
            self._waiting.setdefault(gate, {})[run] = wake
            return isinstance(gate, ConcurrencyLimit) and gate.available()

    def freed(self, gate: object, by: object) -> None:
        """``by`` released ``gate``: tell every other run waiting on it."""
        # A look without the lock may miss a run getting in the books just now; that run
        # checks the gate as it does (see wait_on), after this release, so it misses nothing.
        waiting = self._waiting.get(gate)
        if not waiting or (len(waiting) == 1 and by in waiting):
            return  # nobody else waits: most releases
        with self.lock:
            others = [wake for run, wake in waiting.items() if run is not by]
        for wake in others:  # outside the lock: a wake-up only queues a look on a loop
            wake(gate)

    def forget(self, run: object) -> None:
        """``run`` ended: it waits on nothing any more."""
        if not self._waiting:  # no run ever parked a node here (most runtimes): no lock
            return
        with self.lock:
            for waiting in self._waiting.values():
                waiting.pop(run, None)


class GiveBack:
    """Gives back the ``resource_limits`` slots an abandoned call keeps, once its work ends.

    What a run leaves with such a call as it ends (its ``Call.released``): the slots stay
    taken for the runtime's other runs until the thread returns, without keeping the run.
    Called once on any thread (a pool thread's, when the run's loop is closed); later calls
    do nothing.
    """

    __slots__ = ("_gates", "_shared")
    any_thread = True  # (see shoal.executors.thread._released)

    def __init__(self, gates: tuple[ConcurrencyLimit, ...], shared: SharedLimits) -> None:
        self._gates = gates
        self._shared = shared

    def __call__(self, call: object) -> None:
        """Give the slots back (the first time) and tell the runs waiting on them."""
        with self._shared.lock:
            gates, self._gates = self._gates, ()
            for gate in gates:
                gate.release()
        for gate in gates:
            self._shared.freed(gate, self)


#: The sets of gated backends made so far, by their names in order: every run of a runtime
#: has the same (its thread and process workers), and a swarm keeps a run per agent.
_GATED: dict[tuple[str, ...], frozenset[str]] = {}


def _gated(caps: Mapping[str, int]) -> frozenset[str]:
    """``frozenset(caps)``, one shared set for each set of names (it is never changed)."""
    names = tuple(caps)
    found = _GATED.get(names)
    if found is None:
        found = frozenset(names)
        if len(_GATED) < 64:  # (a few runtimes' settings; a program making more gets its own)
            _GATED[names] = found
    return found


class Gates:
    """Creates gates on first use and keeps the nodes parked on each."""

    def __init__(self, resource_limits: Mapping[str, int] | None = None,
                 executor_limits: Mapping[str, int] | None = None,
                 shared: SharedLimits | None = None) -> None:
        self._resource_limits = dict(resource_limits or {})
        self.shared = shared if shared is not None else SharedLimits()
        # A call waiting for a worker (a pool thread, a process) waits here, in the queue,
        # rather than inside the backend where its timeout would already be running.
        # Each taken from the shared ones on the first call that needs it: most runs make no
        # call on a pool (their calls run inline), and a run per agent turn would make them
        self._executor_caps = dict(executor_limits) if executor_limits else {}
        self._executor_gates: dict[str, ConcurrencyLimit] = {}
        #: The backends with a gate of their own, and whether resource limits apply (they
        #: depend on each call's arguments): without these, a call of a tool without a limit
        #: of its own passes no gate (read by the state machine to skip :meth:`for_call`).
        self.gated_backends = _gated(self._executor_caps)
        self.by_arguments = bool(self._resource_limits)
        self._tool_limits = self.shared.tool_limits
        self._key_limits = self.shared.key_limits
        self._rates = self.shared.rates
        self.lock = self.shared.lock  # held by the state machine to check and take its gates
        self._parked: dict[object, list[Parked]] = {}
        # rate limiters with a wake-up timer set (made on first use: few runs have a rate)
        self._rate_waits: set[RateLimiter] | None = None

    def rate_wait(self, limiter: RateLimiter) -> bool:
        """Note that nodes wait on ``limiter``; whether its wake-up timer is still to be set."""
        if self._rate_waits is None:
            self._rate_waits = set()
        elif limiter in self._rate_waits:  # one timer per limiter
            return False
        self._rate_waits.add(limiter)
        return True

    def for_call(self, tool: Tool[..., Any], executor: str,
                 args: Mapping[str, Any]) -> tuple[ConcurrencyLimit, ...]:
        """The concurrency gates one call must pass (its arguments are resolved by now)."""
        cap = tool.policy.max_concurrency
        if cap is None and not self.by_arguments and executor not in self.gated_backends:
            return ()  # most calls: nothing but the run-wide limit
        gates: list[ConcurrencyLimit] = []
        if cap is not None:
            key = (tool.name, cap)
            gate = self._tool_limits.get(key)
            if gate is None:  # made once per runtime, even by two threads at once
                with self.lock:
                    gate = self._tool_limits.setdefault(
                        key, ConcurrencyLimit(f"tool {tool.name}", cap))
            gates.append(gate)
        if executor in self._executor_caps:
            gates.append(self._executor_gate(executor))
        if self._resource_limits:
            gates += self._key_gates(tool, args)
        return tuple(gates)

    def key_gates(self, gates: tuple[ConcurrencyLimit, ...]) -> tuple[ConcurrencyLimit, ...]:
        """Those of ``gates`` that are ``resource_limits`` slots (of a key, not a tool)."""
        limits = self._key_limits
        return tuple(gate for gate in gates if gate.name.startswith("resource ")
                     and limits.get(gate.name[len("resource "):]) is gate)

    def _executor_gate(self, executor: str) -> ConcurrencyLimit:
        """The worker-count gate of backend ``executor`` (the runtime's, taken on first use)."""
        gate = self._executor_gates.get(executor)
        if gate is None:
            gate = self._executor_gates[executor] = self.shared.executor_gate(
                executor, self._executor_caps[executor])
        return gate

    def _key_gates(self, tool: Tool[..., Any], args: Mapping[str, Any]) -> list[ConcurrencyLimit]:
        gates: list[ConcurrencyLimit] = []
        for template in (*tool.policy.reads, *tool.policy.writes):
            key = str(render_key(template, args, {}))
            for pattern, cap in self._resource_limits.items():
                if fnmatchcase(key, pattern):
                    gate = self._key_limits.get(key)
                    if gate is None:  # made once per runtime, even by two threads at once
                        with self.lock:
                            gate = self._key_limits.setdefault(
                                key, ConcurrencyLimit(f"resource {key}", cap))
                    if gate not in gates:
                        gates.append(gate)
                    break
        return gates

    def rate_for(self, tool: Tool[..., Any]) -> RateLimiter:
        """The token bucket of a tool with a ``rate``."""
        rate = tool.policy.rate
        assert rate is not None
        key = (tool.name, str(rate))
        limiter = self._rates.get(key)
        if limiter is None:  # made once per runtime, even by two threads at once
            with self.lock:
                limiter = self._rates.setdefault(key, RateLimiter(f"tool {tool.name}", rate))
        return limiter

    def park(self, gate: object, item: Parked) -> None:
        """Make ``item`` wait on ``gate``."""
        heapq.heappush(self._parked.setdefault(gate, []), item)

    def pop_live(self, gate: object, is_live: Callable[[int], bool]) -> Parked | None:
        """The best item parked on ``gate`` whose node still waits (dead ones are dropped)."""
        waiting = self._parked.get(gate)
        while waiting:
            item = heapq.heappop(waiting)
            if is_live(item[1]):
                return item
        return None

    def take_rate_waiters(self) -> list[Parked]:
        """Everything parked on rate limiters whose timer fired, for another look."""
        found: list[Parked] = []
        for limiter in self._rate_waits or ():
            found += self._parked.pop(limiter, [])
        self._rate_waits = None
        return found
