"""The limits a call can wait on besides the run-wide one, and which nodes wait on each.

A *gate* is a per-tool, per-resource-key or per-backend concurrency limit; a rate limiter is a
gate whose room comes back with time. A node that finds a gate full is *parked* on it (in a
heap, best priority first) and returns to the ready queue when the gate frees up, so nothing
polls. Pure bookkeeping, like the state machine that uses it: no I/O, no clock.

The gates themselves live in :class:`SharedLimits`, one per :class:`~shoal.runtime.Runtime`,
so every run of a runtime counts against the same limits: a tool's ``max_concurrency`` of 2
means 2 calls in flight across the lead and all its subagents' tool phases, not 2 per phase.
Parked nodes stay with their own run, and the runs wait in line per gate; when a call of one
run frees a gate that other runs wait on, the freeing run's driver tells the run first in line
(see :meth:`SharedLimits.freed`: one run per free slot), which gives its best parked node
another look and answers (:meth:`SharedLimits.answered`), so a slot it did not take goes on.

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
        self._waiting: dict[object, _Line] = {}

    def executor_gate(self, name: str, cap: int) -> ConcurrencyLimit:
        """The worker-count gate of one backend."""
        gate = self.executor_limits.get(name)  # made once per runtime: no lock to look
        if gate is not None:
            return gate
        with self.lock:
            return self.executor_limits.setdefault(name, ConcurrencyLimit(f"{name} workers", cap))

    def wait_on(self, gate: object, run: object, wake: Wake) -> bool:
        """Put ``run`` in line for ``gate``, which it has nodes parked on; ``wake(gate)`` in turn.

        Returns whether ``run`` should look again at once: ``gate`` has a slot that no run has
        been told of (a run on another thread may have freed it between this run's check and
        now, when nobody knew to tell this run). The run is then counted as told, and answers
        (:meth:`answered`) like a run woken by a release. A run already in line, or told and
        yet to answer, stays where it is.
        """
        line = self._waiting.get(gate)
        if line is not None and (run in line.queue or run in line.told):
            return False  # in line since before (a look without the lock: most parks)
        with self.lock:
            line = self._waiting.get(gate)
            if line is None:
                line = self._waiting[gate] = _Line()
            if run in line.told:
                return False
            if isinstance(gate, ConcurrencyLimit) and _room(gate, line) > 0:
                line.told[run] = wake
                return True
            line.queue[run] = wake
            return False

    def freed(self, gate: object) -> None:
        """A run released ``gate`` (and has given its own parked nodes a look if it may).

        Tells as many runs in line as ``gate`` has slots that no run has been told of yet,
        longest waiting first (the run that released it too, if it is in line). Each answers
        once it looked.
        """
        # Looks without the lock: whoever adds room later (a release, an answer, a run's end)
        # hands it out in turn, and a run getting in line checks the room itself (wait_on).
        line = self._waiting.get(gate)
        if line is None or not line.queue or not isinstance(gate, ConcurrencyLimit) or (
                _room(gate, line) <= 0):
            return  # nobody waits, or the room went to a run at once: most releases
        self._hand_out(gate, line)

    def others_in_line(self, gate: object, run: object) -> bool:
        """Whether runs other than ``run`` wait in line for ``gate``.

        A slot ``run`` frees is then theirs first (the longest waiting), not its own parked
        nodes'.
        """
        line = self._waiting.get(gate)  # a look without the lock: see freed
        if line is None:
            return False
        queue = line.queue
        return len(queue) > 1 or (len(queue) == 1 and run not in queue)

    def answered(self, gate: object, run: object, still_waiting: bool) -> None:
        """``run``, told of a slot of ``gate``, has looked; it has nodes parked on it still or not.

        Whether it took the slot or not (its node was cancelled, or waits for something else),
        a slot nobody has been told of goes to the next run in line, so none idles.
        ``run`` goes to the back of the line if it still waits.
        """
        line = self._waiting.get(gate)
        if line is None:
            return
        with self.lock:
            wake = line.told.pop(run, None)
            if wake is not None and still_waiting:
                line.queue[run] = wake
        self._hand_out(gate, line)

    def _hand_out(self, gate: object, line: _Line) -> None:
        """Tell runs in line of the slots of ``gate`` that no run has been told of yet."""
        while True:
            with self.lock:
                if not isinstance(gate, ConcurrencyLimit) or _room(gate, line) <= 0:
                    return
                if not line.queue:
                    return
                run = next(iter(line.queue))
                wake = line.queue.pop(run)
                line.told[run] = wake
            # outside the lock: a wake-up only queues a look on a loop; one that cannot be
            # delivered (its run's loop is closed, the run ended) counts as a look that took
            # nothing, and the slot goes on to the next run
            if not wake(gate):
                with self.lock:
                    line.told.pop(run, None)

    def forget(self, run: object) -> None:
        """``run`` ended: it waits on nothing any more (a slot it was told of goes on)."""
        if not self._waiting:  # no run ever parked a node here (most runtimes): no lock
            return
        told: list[tuple[object, _Line]] = []
        with self.lock:
            for gate, line in self._waiting.items():
                line.queue.pop(run, None)
                if line.told.pop(run, None) is not None:
                    told.append((gate, line))
        for gate, line in told:
            self._hand_out(gate, line)


Wake = Callable[[object], bool]
"""Tells a run that a gate it waits on has a slot for it; False if it cannot be told."""


class _Line:
    """The runs waiting on one gate: in line (longest waiting first), and told of a slot."""

    __slots__ = ("queue", "told")

    def __init__(self) -> None:
        self.queue: dict[object, Wake] = {}  # in the order they got in line
        self.told: dict[object, Wake] = {}  # told of a slot, yet to look (see answered)


def _room(gate: ConcurrencyLimit, line: _Line) -> int:
    """The free slots of ``gate`` that no run has been told of (call under the lock)."""
    if gate.capacity is None:
        return len(line.queue)
    return gate.capacity - gate.in_use - len(line.told)


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
            self._shared.freed(gate)


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

    def has_parked(self, gate: object) -> bool:
        """Whether items are parked on ``gate`` (some may have been cancelled since)."""
        return bool(self._parked.get(gate))

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
