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
"""

from __future__ import annotations

import heapq
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
        self.tool_limits: dict[tuple[str, int], ConcurrencyLimit] = {}
        self.key_limits: dict[str, ConcurrencyLimit] = {}
        self.executor_limits: dict[str, ConcurrencyLimit] = {}
        self.rates: dict[tuple[str, str], RateLimiter] = {}
        # gate -> the runs with nodes parked on it, and how to tell each that it freed up
        self._waiting: dict[object, dict[object, Callable[[object], None]]] = {}

    def executor_gate(self, name: str, cap: int) -> ConcurrencyLimit:
        """The worker-count gate of one backend."""
        gate = self.executor_limits.get(name)
        if gate is None:
            gate = self.executor_limits[name] = ConcurrencyLimit(f"{name} workers", cap)
        return gate

    def wait_on(self, gate: object, run: object, wake: Callable[[object], None]) -> None:
        """Remember that ``run`` has nodes parked on ``gate``; ``wake(gate)`` when it frees."""
        self._waiting.setdefault(gate, {})[run] = wake

    def freed(self, gate: object, by: object) -> None:
        """``by`` released ``gate``: tell every other run waiting on it."""
        waiting = self._waiting.get(gate)
        if waiting:
            for run, wake in list(waiting.items()):
                if run is not by:
                    wake(gate)

    def forget(self, run: object) -> None:
        """``run`` ended: it waits on nothing any more."""
        for waiting in self._waiting.values():
            waiting.pop(run, None)


class Gates:
    """Creates gates on first use and keeps the nodes parked on each."""

    def __init__(self, resource_limits: Mapping[str, int] | None = None,
                 executor_limits: Mapping[str, int] | None = None,
                 shared: SharedLimits | None = None) -> None:
        self._resource_limits = dict(resource_limits or {})
        self.shared = shared if shared is not None else SharedLimits()
        # A call waiting for a worker (a pool thread, a process) waits here, in the queue,
        # rather than inside the backend where its timeout would already be running.
        self._executor_gates = {name: self.shared.executor_gate(name, cap)
                                for name, cap in (executor_limits or {}).items()}
        self._tool_limits = self.shared.tool_limits
        self._key_limits = self.shared.key_limits
        self._rates = self.shared.rates
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
        if cap is None and not self._resource_limits and executor not in self._executor_gates:
            return ()  # most calls: nothing but the run-wide limit
        gates: list[ConcurrencyLimit] = []
        if cap is not None:
            key = (tool.name, cap)
            if key not in self._tool_limits:
                self._tool_limits[key] = ConcurrencyLimit(f"tool {tool.name}", cap)
            gates.append(self._tool_limits[key])
        if executor in self._executor_gates:
            gates.append(self._executor_gates[executor])
        if self._resource_limits:
            gates += self._key_gates(tool, args)
        return tuple(gates)

    def _key_gates(self, tool: Tool[..., Any], args: Mapping[str, Any]) -> list[ConcurrencyLimit]:
        gates: list[ConcurrencyLimit] = []
        for template in (*tool.policy.reads, *tool.policy.writes):
            key = str(render_key(template, args, {}))
            for pattern, cap in self._resource_limits.items():
                if fnmatchcase(key, pattern):
                    if key not in self._key_limits:
                        self._key_limits[key] = ConcurrencyLimit(f"resource {key}", cap)
                    if self._key_limits[key] not in gates:
                        gates.append(self._key_limits[key])
                    break
        return gates

    def rate_for(self, tool: Tool[..., Any]) -> RateLimiter:
        """The token bucket of a tool with a ``rate``."""
        rate = tool.policy.rate
        assert rate is not None
        key = (tool.name, str(rate))
        if key not in self._rates:
            self._rates[key] = RateLimiter(f"tool {tool.name}", rate)
        return self._rates[key]

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
