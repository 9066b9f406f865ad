"""Budgets shared by a whole agent tree, and the tracker that enforces them.

A :class:`Budget` states limits; one :class:`BudgetTracker` per root run counts what every
agent of the tree uses. All agents of a tree run on one event loop, so the counts need no
locks: each check-and-charge happens without an ``await`` in between, which is what makes
the limits exact under bursts (ten subagent calls in one turn with a limit of three: exactly
three get a slot, whatever order the loop runs them in).

Two kinds of breach:

* **Per call** (``subagents``, ``depth``, ``fan_out``): the call over the limit is refused and
  the model gets an error result naming the limit; the rest of the tree goes on.
* **Tree-wide** (``tokens``, ``cost``, ``requests``, ``wall_clock``): the tree stops at once:
  no new model request or tool call starts, calls in flight are cancelled, and the root raises
  :class:`~shoal.exceptions.BudgetExceeded` carrying every outcome recorded so far.
"""

from __future__ import annotations

import asyncio
import math
import numbers
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from shoal.exceptions import BudgetExceeded, ConfigError
from shoal.limits import decimal_as_float, fits_a_float
from shoal.merge import shown
from shoal.models.base import Usage

__all__ = ["HELD_BY_DEFAULT", "Budget", "BudgetTracker"]


@dataclass(frozen=True, slots=True)
class Budget:
    """Limits for a whole agent tree (``None``: no limit).

    ``tokens``, ``cost`` and ``requests`` limit what :class:`~shoal.models.base.Usage`
    counts under the same names, summed over the whole tree.

    Args:
        tokens: input plus output tokens of every model request in the tree (each reply
            still streaming counts a token per 16 characters at least, all of them together,
            so one that never ends is stopped too, and replies streaming at once in several
            agents cannot pass it together; each request holds the output it asks for, the
            lesser of its ``max_tokens`` (its model's own, else :data:`HELD_BY_DEFAULT`, when
            none is set) and what neither the tree spent nor other requests in flight hold,
            so replies not streamed and running at once cannot pass it together either (see
            :meth:`BudgetTracker.reserve`); agents in processes and on Ray are charged, and
            hold their caps, in the root's tracker as inline ones do).
        cost: US dollars. Every model of the tree must have a known price: a reply whose
            cost is unknown (``Usage.cost`` is ``None``) stops the tree as a breach does,
            with a :class:`~shoal.exceptions.BudgetExceeded` saying the limit cannot be held
            (counted as nothing, it would never be reached).
        requests: model requests across the tree (each agent turn is one request; an agent's
            own ``max_turns`` bounds its requests alone).
        subagents: subagent runs across the tree.
        depth: how deep subagents may nest (the lead is depth 0; ``depth=1`` allows
            subagents but not sub-subagents).
        fan_out: tool calls (subagents included) one model turn may start; calls beyond it get
            an error result.
        wall_clock: seconds from the root's start until the tree stops.
        turns: the old name of ``requests`` (deprecated: it warns, and sets ``requests``).
    """

    tokens: int | None = None
    cost: float | None = None
    requests: int | None = None
    subagents: int | None = None
    depth: int | None = None
    fan_out: int | None = None
    wall_clock: float | None = None
    turns: int | None = None

    def __post_init__(self) -> None:
        if self.turns is not None:
            warnings.warn("Budget(turns=) is now Budget(requests=): it counts model requests "
                          "across the tree, as Usage.requests does", DeprecationWarning,
                          stacklevel=3)
            if self.requests is not None and self.requests != self.turns:
                raise ConfigError(f"budget requests={self.requests} and turns={self.turns} "
                                  "disagree; give only requests")
            object.__setattr__(self, "requests", self.turns)
        for name in ("tokens", "requests", "subagents", "fan_out", "depth"):
            _check_whole(name, getattr(self, name), least=0 if name == "depth" else 1)
        for name in ("cost", "wall_clock"):
            value = decimal_as_float(getattr(self, name))
            _check_amount(name, value)
            if type(value) is float:  # (a Decimal given, say: dollars and seconds as floats)
                object.__setattr__(self, name, value)


def _check_whole(name: str, value: object, *, least: int) -> None:
    """Refuse a count that is not a whole number of at least ``least`` (``None`` passes).

    ``True`` and ``1.5`` are refused too: a count compared with ``>=`` would take them, and
    ``subagents=1.5`` would quietly mean 2.
    """
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)
                              or value < least):
        what = "a positive whole number" if least == 1 else f"a whole number, {least} or more"
        raise ConfigError(f"budget {name} must be {what}; got "
                          f"{type(value).__name__} {shown(value)}")


def _check_amount(name: str, value: object) -> None:
    """Refuse an amount (dollars, seconds) that is not a positive number (``None`` passes).

    Infinity passes, as a runtime's ``deadline`` does: no limit, as ``None`` is. An int too
    large for a float does not: ``wall_clock=10**400`` is a timer no loop can set (the run
    failed with an ``OverflowError`` as it started); ``math.inf`` says "no limit".
    """
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"budget {name} must be a positive number (None for no limit); "
                          f"got {type(value).__name__} {shown(value)}")  # NaN compares false
    if not fits_a_float(value):
        raise ConfigError(f"budget {name} must be a number a float can hold (None or "
                          f"math.inf for no limit); got int {shown(value)}")


#: The most characters a token of a model's reply holds on average, to bound a reply still
#: streaming (see :meth:`BudgetTracker.check_streamed`): tokenizers average about 4.
MOST_CHARS_PER_TOKEN = 16


#: The most output tokens a request holds of ``Budget(tokens=)`` when its settings give no
#: ``max_tokens`` (see :meth:`BudgetTracker.reserve`); it is then the reply's cap too.
HELD_BY_DEFAULT = 4_096


_UNPRICED = ("a model reply came with no cost (its model's price is unknown); give the model "
             "its price (prices={'model-id': shoal.models.Price(input=..., output=...)}, "
             "Price(0, 0) for a free one) or set no cost budget")


class BudgetTracker:
    """Counts a tree's usage against its :class:`Budget`; the first tree-wide breach sticks."""

    def __init__(self, budget: Budget | None, on_breach: Callable[[BudgetExceeded], None]) -> None:
        self.budget = budget or Budget()
        self.usage = Usage()
        self.requests = 0
        self.subagents = 0
        #: the tokens each reply still streaming has surely spent (its characters / 16), by
        #: the lineage of the agent asking; settled by its usage (see :meth:`add_usage`)
        self.streaming: dict[str, int] = {}
        self.streamed = 0  # their sum
        #: the output tokens each request in flight was promised (its cap), by the lineage of
        #: the agent asking: what is left for another request is what none of them holds
        self.held: dict[str, int] = {}
        self.held_out = 0  # what they hold beyond what their replies streamed so far, summed
        self._waiting: list[asyncio.Future[None]] = []  # requests waiting for tokens held
        self.breach: BudgetExceeded | None = None
        self._on_breach = on_breach

    def check_tree(self) -> None:
        """Raise the tree's breach if there is one (every agent checks before it acts)."""
        if self.breach is not None:
            raise self.breach

    def start_request(self, where: str) -> None:
        """Charge one model request; breaching the ``requests`` limit stops the tree."""
        if self.breach is not None:  # check_tree, inline: every turn of every agent asks
            raise self.breach
        limit = self.budget.requests
        if limit is not None and self.requests >= limit:
            self.stop(BudgetExceeded("requests", self.requests, limit, where))
        self.requests += 1

    def refund_request(self, where: str) -> None:
        """Take back a request charged by :meth:`start_request` that was never sent.

        A turn stopped before its model was asked (its journal failed, a resume refused it)
        spent nothing: counted, it would take a request from the rest of the tree.
        """
        del where  # named as start_request's, for a tree whose root charges it elsewhere
        if self.requests > 0:
            self.requests -= 1

    @property
    def turns(self) -> int:
        """The old name of :attr:`requests` (deprecated)."""
        warnings.warn("BudgetTracker.turns is now BudgetTracker.requests", DeprecationWarning,
                      stacklevel=2)
        return self.requests

    def start_turn(self, where: str) -> None:
        """The old name of :meth:`start_request` (deprecated)."""
        warnings.warn("BudgetTracker.start_turn is now BudgetTracker.start_request",
                      DeprecationWarning, stacklevel=2)
        self.start_request(where)

    def add_usage(self, usage: Usage, where: str) -> None:
        """Record a response's usage; going over ``tokens`` or ``cost`` stops the tree.

        It settles what the reply counted while it streamed (see :meth:`check_streamed`).
        """
        if self.held:  # the reply's usage replaces what its request held (and streamed)
            self.release(where)
        if self.streaming:
            self.streamed -= self.streaming.pop(where, 0)
        self.usage = self.usage + usage
        tokens, cost = self.budget.tokens, self.budget.cost
        if tokens is not None and self.usage.total_tokens > tokens:
            self.stop(BudgetExceeded("tokens", self.usage.total_tokens, tokens, where))
        if cost is not None and cost != math.inf:  # infinity is no limit, as None is
            if usage.cost is None:  # counted as nothing, the limit would never be reached
                self.stop(BudgetExceeded("cost", self.usage.cost or 0.0, cost, where,
                                         unheld=_UNPRICED))
            if (self.usage.cost or 0.0) > cost:
                self.stop(BudgetExceeded("cost", self.usage.cost or 0.0, cost, where))

    def tokens_left(self) -> int | None:
        """The tokens the tree may still spend (at least 1), ``None`` without ``tokens``.

        A request is made with it as its output cap, lowered to what the request holds
        when it is sent (see :meth:`reserve`).
        """
        tokens = self.budget.tokens
        return None if tokens is None else max(tokens - self.spent(), 1)

    async def reserve(self, where: str, most: int) -> int | None:
        """Hold output tokens for the request ``where`` sends; its cap (``None``: no ``tokens``).

        The cap is the lesser of ``most`` and what the tree has left that no other request
        in flight holds, so requests running at once never promise more output than is left.
        With nothing left unheld, the request waits until a request in flight gives back
        what its reply did not use (:meth:`release`); with nothing held either, the tree is
        at its limit and the request asks for one token (its usage then stops the tree).
        """
        limit = self.budget.tokens
        if limit is None:
            return None
        self.release(where)  # a request asked again holds anew
        while True:
            self.check_tree()
            free = limit - self.committed()
            if free >= 1 or not self.held:
                cap = max(min(most, free), 1)
                self.held[where] = cap
                self.held_out += self._beyond(where, cap)
                return cap
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiting:  # cancelled while it waited
                    self._waiting.remove(waiter)

    def release(self, where: str) -> None:
        """Give back what the request ``where`` held (its reply came, or it ended without).

        Every request waiting for tokens looks again.
        """
        cap = self.held.pop(where, None)
        if cap is None:
            return
        self.held_out -= self._beyond(where, cap)
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            if not waiter.done():
                waiter.set_result(None)

    def committed(self) -> int:
        """The tokens spent, streaming, or held by requests in flight beyond what they streamed.

        A request's reply streams within its cap: what it streamed counts once, not twice.
        """
        return self.usage.total_tokens + self.streamed + self.held_out

    def _beyond(self, where: str, cap: int) -> int:
        """What the request ``where`` holds beyond what its reply streamed so far."""
        return max(cap - self.streaming.get(where, 0), 0)

    def spent(self) -> int:
        """The tokens the tree surely spent: its replies' usage, and what is still streaming."""
        return self.usage.total_tokens + self.streamed

    def check_streamed(self, chars: int, where: str) -> None:
        """Charge a reply still streaming; stop the tree once it has surely gone over ``tokens``.

        A reply's usage is known only when it ends, which an endless stream never does; its
        ``chars`` so far count as at least one token per :data:`MOST_CHARS_PER_TOKEN` (a
        generous bound: no reply within the budget is stopped for it), until its usage
        settles them. Every reply of the tree streaming at once counts, so several agents
        cannot pass the budget together before any of their replies ends.
        """
        self.charge_streamed(chars // MOST_CHARS_PER_TOKEN, where)

    def charge_streamed(self, tokens: int, where: str) -> None:
        """Count ``tokens`` as spent so far by the reply ``where`` is streaming.

        ``0`` forgets it (a reply that ended with no usage to settle it: it failed, or was
        cancelled), and never stops the tree.
        """
        limit = self.budget.tokens
        if limit is None:
            return
        before = self.streaming.get(where, 0)
        self.streamed += tokens - before
        cap = self.held.get(where) if self.held else None
        if cap is not None:  # its hold counts only beyond what it streamed
            self.held_out += max(cap - tokens, 0) - max(cap - before, 0)
        if not tokens:
            self.streaming.pop(where, None)
            return
        self.streaming[where] = tokens
        spent = self.usage.total_tokens + self.streamed
        if spent > limit:
            self.stop(BudgetExceeded("tokens", spent, limit, where))

    def fan_out_refusal(self, index: int, where: str) -> BudgetExceeded | None:
        """The error for the ``index``-th call (0-based) of one turn, if over ``fan_out``."""
        limit = self.budget.fan_out
        if limit is not None and index >= limit:
            return BudgetExceeded("fan_out", index + 1, limit, where)
        return None

    def take_subagent(self, depth: int, where: str) -> BudgetExceeded | None:
        """Reserve one subagent run at ``depth``; return the refusal instead if over a limit."""
        if self.budget.depth is not None and depth > self.budget.depth:
            return BudgetExceeded("depth", depth, self.budget.depth, where)
        limit = self.budget.subagents
        if limit is not None and self.subagents >= limit:
            return BudgetExceeded("subagents", self.subagents, limit, where)
        self.subagents += 1
        return None

    def stop(self, breach: BudgetExceeded) -> None:
        """Record a tree-wide breach (the first one wins), tell the tree, and raise it."""
        if self.breach is None:
            self.breach = breach
            self._on_breach(breach)
        raise self.breach
