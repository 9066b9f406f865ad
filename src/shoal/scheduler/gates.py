"""The limits a call can wait on besides the run-wide one, and which nodes wait on each.

A *gate* is a per-tool, per-resource-key or per-backend concurrency limit; a rate limiter is a
gate whose room comes back with time. A node that finds a gate full is *parked* on it (in a
heap, best priority first) and returns to the ready queue when the gate frees up, so nothing
polls. Pure bookkeeping, like the state machine that uses it: no I/O, no clock.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from fnmatch import fnmatchcase
from typing import Any

from shoal.deps import render_key
from shoal.limits import ConcurrencyLimit, RateLimiter
from shoal.tools import Tool

__all__ = ["Gates", "Parked"]

Parked = tuple[float, int]  # (priority, node position), as in the ready heap


class Gates:
    """Creates gates on first use and keeps the nodes parked on each."""

    def __init__(self, resource_limits: Mapping[str, int] | None = None,
                 executor_limits: Mapping[str, int] | None = None) -> None:
        self._resource_limits = dict(resource_limits or {})
        # A call waiting for a worker (a pool thread, a process) waits here, in the queue,
        # rather than inside the backend where its timeout would already be running.
        self._executor_gates = {name: ConcurrencyLimit(f"{name} workers", cap)
                                for name, cap in (executor_limits or {}).items()}
        self._tool_limits: dict[tuple[str, int], ConcurrencyLimit] = {}
        self._key_limits: dict[str, ConcurrencyLimit] = {}
        self._rates: dict[tuple[str, str], RateLimiter] = {}
        self._parked: dict[object, list[Parked]] = {}
        self.rate_waits: set[RateLimiter] = set()  # rate limiters with a wake-up timer set

    def for_call(self, tool: Tool[..., Any], executor: str,
                 args: Mapping[str, Any]) -> tuple[ConcurrencyLimit, ...]:
        """The concurrency gates one call must pass (its arguments are resolved by now)."""
        gates: list[ConcurrencyLimit] = []
        cap = tool.policy.max_concurrency
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
        for limiter in self.rate_waits:
            found += self._parked.pop(limiter, [])
        self.rate_waits.clear()
        return found
