"""Retries for model requests, and one shared gate per model so a fan-out stays polite.

Every agent of one run tree reaches a model through the same :class:`ModelGate` (one per
model name, kept in :class:`ModelGates`). The gate caps requests in flight, and when the
provider answers 429 (or 503) with ``Retry-After`` it *closes for everyone* until that time
has passed: fifty subagents that share a model then wait once, together, instead of each
hammering the provider and turning one 429 into fifty. Transient errors (429, 5xx,
connection errors and timeouts) are retried with jittered exponential backoff, never less
than what ``Retry-After`` asked for (exactly that, when it is given); other errors are raised
at once.

The SDK adapters are created with their own retries off, so this is the only retry layer.
Each retry is announced before its wait: a :class:`~shoal.events.ModelRetrying` event to the
caller's ``on_event`` (an agent puts it on its tree's sinks, where the live view shows it) and
a line on the ``shoal`` logger at INFO. ``on_event`` also receives what the model itself
reports while it works, such as a local model's server starting.
"""

from __future__ import annotations

import asyncio
import logging
import math
import numbers
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, cast

from shoal._deprecation import renamed
from shoal.events import Event, ModelRetrying, deliver
from shoal.exceptions import ConfigError, ModelConnectionError, ModelError, ModelHTTPError
from shoal.limits import finite, seeded
from shoal.merge import shown
from shoal.models._common import _notices, notices_to
from shoal.models.base import (
    Model,
    ModelRequest,
    ModelResponse,
    ResponseDone,
    StreamEvent,
    TextDelta,
    Usage,
)

__all__ = ["EventCallback", "ModelGate", "ModelGates", "ModelRetry"]

log = logging.getLogger("shoal")

#: Receives the events of one request (retries, a server starting); their ``run_id`` and
#: ``time`` are left empty for the receiver to fill in.
EventCallback = Callable[[Event], None]


_RETRIES = 7  # eight tries in all: about a minute of waits at the default backoff

#: The most one reply may report of each count in its usage (tokens, requests, US dollars):
#: more is a broken report, not usage (no context holds 10**15 tokens), and a count of
#: thousands of digits breaks what is done with it (float budget sums, the journal's text).
MAX_REPORTED = 10**15
_COUNTS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
           "requests")


def _whole(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _seconds(value: object) -> bool:
    """A finite real number, 0 or more (``bool`` is not taken for one)."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and finite(value) and float(value) >= 0)


def _from_attempts(attempts: int, retries: int) -> int:
    """``retries`` from the deprecated ``attempts=`` (every try counted)."""
    if retries != _RETRIES:
        raise ConfigError("ModelRetry got both attempts= and retries=; give retries= only "
                          "(attempts= counted every try: retries = attempts - 1)")
    if not _whole(attempts) or attempts < 1:
        raise ConfigError(f"ModelRetry: attempts (deprecated: use retries, one less) must be "
                          f"a whole number, 1 or more, got {shown(attempts)}")
    renamed("ModelRetry(attempts=...)", "ModelRetry(retries=...), one less", stacklevel=4)
    return attempts - 1


@dataclass(frozen=True, slots=True, init=False)
class ModelRetry:
    """How transient model errors are retried.

    ``retries`` extra tries follow the first (0: no retry), as ``@tool(retries=...)`` counts
    them; waits grow from ``backoff`` doubling up to ``max_backoff`` seconds, each multiplied by
    a random factor in ``1 ± jitter``. When the provider sent ``Retry-After`` (up to
    ``max_backoff``), that is the wait instead, stretched by up to ``jitter`` (one of no wait,
    ``0`` or less, backs off as if none was sent); a longer
    ``Retry-After`` is still honoured, never shortened, up to ``max_retry_after`` seconds: a
    provider (or a proxy) that asks for more (a day, say, for a spent daily quota) is not
    waited for, silently, with every agent on that model: the request fails at once with
    the provider's error, saying how long it asked for. A ``backoff`` above ``max_backoff`` is
    a :class:`~shoal.exceptions.ConfigError`: its waits would all be ``max_backoff``.

    ``attempts``, the former setting that counted every try (``attempts=8`` is ``retries=7``),
    is still accepted and readable for one release, with a :class:`DeprecationWarning`.
    """

    retries: int
    backoff: float
    max_backoff: float
    jitter: float
    max_retry_after: float

    def __init__(self, retries: int = _RETRIES, backoff: float = 0.5,
                 max_backoff: float = 30.0, jitter: float = 0.25, *,
                 max_retry_after: float = 600.0, attempts: int | None = None) -> None:
        if attempts is not None:
            retries = _from_attempts(attempts, retries)
        if not _whole(retries) or retries < 0:
            raise ConfigError(f"ModelRetry: retries must be a whole number, 0 or more, "
                              f"got {shown(retries)}")
        for what, value in (("backoff", backoff), ("max_backoff", max_backoff),
                            ("max_retry_after", max_retry_after)):
            if not _seconds(value):
                raise ConfigError(f"ModelRetry: {what} must be a finite number of seconds, 0 "
                                  f"or more, got {shown(value)}")
        if backoff > max_backoff:  # min(max_backoff, ...) would take the smaller, silently
            raise ConfigError(f"ModelRetry: backoff={float(backoff):g} is more than "
                              f"max_backoff={float(max_backoff):g} (the longest wait, 30 s "
                              f"unless given): every wait would be {float(max_backoff):g} s; "
                              f"give max_backoff={float(backoff):g} or more too")
        if not _seconds(jitter) or jitter > 1:
            raise ConfigError(f"ModelRetry: jitter must be a number within [0, 1], "
                              f"got {shown(jitter)}")
        for name, value in (("retries", retries), ("backoff", backoff),
                            ("max_backoff", max_backoff), ("jitter", jitter),
                            ("max_retry_after", max_retry_after)):
            object.__setattr__(self, name, value)  # frozen: the dataclass way in __init__

    @property
    def attempts(self) -> int:
        """Deprecated: every try, the first included (``retries + 1``)."""
        renamed("ModelRetry.attempts", "ModelRetry.retries (attempts - 1)")
        return self.retries + 1

    def delay(self, failures: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait after the ``failures``-th failed try."""
        if retry_after is not None and 0 < retry_after <= self.max_backoff:
            # The provider said when to come back: do that (a little later, spread out so
            # the callers it paused do not all return in the same millisecond). One that
            # asks for no wait (0, a negative, a date past) backs off, as the SDKs do: taken
            # as it was, a proxy answering each 429 so had every retry spent in milliseconds.
            return float(retry_after * rng.uniform(1.0, 1.0 + self.jitter))
        base = min(self.max_backoff, self.backoff * 2 ** (failures - 1))
        wait = base * rng.uniform(1 - self.jitter, 1 + self.jitter)
        return float(max(wait, retry_after or 0.0))


def checked_usage(model: Model, response: ModelResponse) -> ModelResponse:
    """``response``, unless its usage reports a count no reply can have: a ModelError then.

    Each count must be a number from 0 to :data:`MAX_REPORTED` (``cost``: or ``None``).
    Checked where every reply comes in (the gate), so that nothing downstream (a budget,
    the journal, a result's sums) meets it.
    """
    usage = response.usage
    if not (type(usage) is Usage and _plain(usage)):  # the common case at a glance, else
        _check_counts(model, usage)  # each field, to name the one that is wrong
    return response


def _plain_reply(response: ModelResponse) -> bool:
    """Whether :func:`checked_usage` takes ``response`` at a glance (every count plain)."""
    usage = response.usage
    return type(usage) is Usage and _plain(usage)


def _plain(usage: Usage) -> bool:
    """Whether every count of ``usage`` is a plain ``int`` (cost a ``float``) within bounds."""
    cost = usage.cost
    return (type(usage.input_tokens) is int and type(usage.output_tokens) is int
            and type(usage.requests) is int and type(usage.cache_read_tokens) is int
            and type(usage.cache_write_tokens) is int
            and 0 <= usage.input_tokens <= MAX_REPORTED
            and 0 <= usage.output_tokens <= MAX_REPORTED
            and 0 <= usage.requests <= MAX_REPORTED
            and 0 <= usage.cache_read_tokens <= MAX_REPORTED
            and 0 <= usage.cache_write_tokens <= MAX_REPORTED
            and (cost is None or (type(cost) is float and 0 <= cost <= MAX_REPORTED)))


async def _checked_done(model: Model, done: ResponseDone, stream: AsyncIterator[Any]) -> None:
    """:func:`checked_usage` of a stream's reply; a refused one closes the stream first."""
    try:
        checked_usage(model, done.response)
    except ModelError:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:  # not left to the loop's finalizer, as a task of its own
            await aclose()
        raise


def _check_counts(model: Model, usage: object) -> None:
    """Raise a :class:`ModelError` naming the first field of ``usage`` that is not a count."""
    if not isinstance(usage, Usage):
        raise ModelError(model.name, f"its reply's usage is {_shown(usage)}, not a Usage")
    for name in _COUNTS:
        _check_count(model, name, getattr(usage, name))
    if usage.cost is not None:
        _check_count(model, "cost", usage.cost)


def _check_count(model: Model, name: str, value: object) -> None:
    # any real number (numpy's too), compared as it is: float() of a huge int overflows
    if (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and 0 <= cast(float, value) <= MAX_REPORTED):  # NaN is neither: refused
        return
    raise ModelError(model.name, f"its reply reports usage {name}={_shown(value)}, not a "
                     f"number from 0 to {MAX_REPORTED:,}: no reply uses more, so "
                     f"{_whose_report(model)}")


def _whose_report(model: Model) -> str:
    """Who broke a usage report: a provider's server, or a custom model's own code."""
    from shoal.models.anthropic import AnthropicModel
    from shoal.models.openai import OpenAIModel

    if isinstance(model, OpenAIModel | AnthropicModel):  # counts as its server sent them
        return (f"the server of {model.name} reported a broken usage (its provider, or a "
                "proxy or compatible server in front of it, miscounts): not a count shoal "
                "can charge")
    return ("the model's usage report is broken (a custom model's Usage must count what the "
            "request used)")


def _shown(value: object) -> str:
    """``value`` quoted in an error: a huge whole number by its size (its text may not exist)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**100:
        digits = int(value.bit_length() * math.log10(2)) + 1
        return f"{'-' if value < 0 else ''}a number of about {digits:,} digits"
    shown = repr(value) if isinstance(value, int | float | type(None)) else type(value).__name__
    return shown[:100]


def _check_gate(where: str, retry: object, max_concurrency: object) -> None:
    """Refuse a gate's ``retry`` or ``max_concurrency`` of the wrong kind, when it is made.

    Not when the first request meets them: a wrong one failed every agent of the tree
    (``-1``, ``"2"``), or quietly meant something else (``0``: no cap at all).
    """
    if retry is not None and not isinstance(retry, ModelRetry):
        raise ConfigError(f"{where}: retry= takes a ModelRetry(retries=..., backoff=...), "
                          f"got {shown(retry)}")
    if max_concurrency is not None and not (_whole(max_concurrency)
                                            and cast(int, max_concurrency) >= 1):
        raise ConfigError(f"{where}: max_concurrency must be at least 1: a whole number, or "
                          f"None for no cap; got {shown(max_concurrency)}")


def _transient(exc: ModelError) -> bool:
    if isinstance(exc, ModelHTTPError):
        return exc.transient
    return isinstance(exc, ModelConnectionError)


class ModelGate:
    """The one way into a model for every agent in a run tree: a cap and a shared pause."""

    def __init__(self, name: str, *, max_concurrency: int | None = None,
                 retry: ModelRetry | None = None, rng: random.Random | None = None) -> None:
        _check_gate("ModelGate", retry, max_concurrency)
        self.name = name
        self.retry = retry or ModelRetry()
        self._slots = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        self._open_at = 0.0  # loop time before which nobody sends (set by Retry-After)
        # a gate whose slots are kept elsewhere (a process agent's, by its tree's root) is
        # entered and left for every request, whatever it holds here
        self._slots_here = (type(self).acquire is ModelGate.acquire
                            and type(self).release is ModelGate.release)
        self._rng = rng or random.Random()
        self.retries = 0  # transient failures retried so far, for reports and tests

    async def request(self, model: Model, request: ModelRequest, *,
                      on_event: EventCallback | None = None) -> ModelResponse:
        """Send ``request``, retrying transient errors; raise the last error when spent.

        ``on_event`` gets a :class:`~shoal.events.ModelRetrying` before each retry's wait, and
        what the model reports while it works.
        """
        failures = 0
        while True:
            try:
                with notices_to(on_event):
                    if self._gated():
                        await self.acquire()
                    try:
                        return checked_usage(model, await model.request(request))
                    finally:
                        self.release()
            except ModelError as exc:
                failures += 1
                if not _transient(exc) or failures > self.retry.retries:
                    raise
                await asyncio.sleep(self._back_off(model, exc, failures, on_event))

    async def stream(self, model: Model, request: ModelRequest, *,
                     on_event: EventCallback | None = None,
                     retry_after_text: bool = False) -> AsyncIterator[StreamEvent]:
        """Stream ``request``; a transient error before any text arrived is retried.

        ``retry_after_text``: retry after text too, for a consumer that only keeps the
        :class:`~shoal.models.base.ResponseDone` (the retry sends the text again from the
        start).

        Tool calls do not count as text: a stream that fails after some
        :class:`~shoal.models.base.ToolCallDone` events is retried, and the retry sends its
        calls again from the first, so the consumer must match them by position (the agent
        keeps the calls it already started; see :class:`~shoal.agents.toolcalls.CallStream`).
        """
        failures = 0
        while True:
            sent_text = False
            try:
                if self._gated():  # not an async context manager: one object less per reply
                    await self.acquire()
                try:
                    # the model's stream read here, not through a generator of its own: each
                    # layer of ``async for`` costs every event of every reply a step more
                    stream = aiter(model.stream(request))
                    notices = notices_to(on_event)  # one for the reply, entered per step
                    while True:
                        # set around each step only: a generator's context must not stay
                        # changed for its consumer while it is suspended
                        with notices:
                            try:
                                event = await anext(stream)
                            except StopAsyncIteration:
                                break
                        sent_text = sent_text or (isinstance(event, TextDelta)
                                                  and not retry_after_text)
                        if type(event) is ResponseDone:
                            await _checked_done(model, event, stream)
                        yield event
                finally:
                    self.release()
                return
            except ModelError as exc:
                failures += 1
                if sent_text or not _transient(exc) or failures > self.retry.retries:
                    raise
                await asyncio.sleep(self._back_off(model, exc, failures, on_event))

    async def stream_to(self, model: Model, request: ModelRequest,
                        take: Callable[[StreamEvent], object], *,
                        on_event: EventCallback | None = None,
                        retry_after_text: bool = False,
                        restart: Callable[[], object] | None = None) -> None:
        """:meth:`stream`, handing each event to ``take`` instead of yielding it.

        The same retries, for a consumer that acts on each event at once (an agent's turn):
        one generator less between the model and it, which every event of every reply
        crossed. An error ``take`` raises is the caller's, never retried. ``restart`` is
        called as an attempt that failed is to be retried: the next attempt streams the
        reply from its start, so what the failed one streamed is to be forgotten.
        """
        failures = 0
        while True:
            sent_text = False
            failed: ModelError | None = None
            if self._gated():
                await self.acquire()
            try:
                notices: notices_to | None = None  # made when the sink is not in force yet
                in_force = _notices.get  # the sink the model's notices go to now
                try:
                    stream = aiter(model.stream(request))
                except ModelError as exc:
                    failed = exc
                while failed is None:
                    try:
                        if in_force() is on_event:  # what the block would set: nothing to do
                            event = await anext(stream)
                        else:
                            if notices is None:
                                notices = notices_to(on_event)
                            with notices:  # around each step only, as in :meth:`stream`
                                event = await anext(stream)
                    except StopAsyncIteration:
                        return
                    except ModelError as exc:
                        failed = exc
                        break
                    if not (sent_text or retry_after_text):
                        sent_text = isinstance(event, TextDelta)
                    if type(event) is ResponseDone and not _plain_reply(event.response):
                        await _checked_done(model, event, stream)  # refused: raises
                    take(event)
            finally:
                self.release()
            assert failed is not None  # the stream ended otherwise: returned above
            failures += 1
            if sent_text or not _transient(failed) or failures > self.retry.retries:
                raise failed
            delay = self._back_off(model, failed, failures, on_event)
            if restart is not None:
                restart()
            await asyncio.sleep(delay)

    def _gated(self) -> bool:
        """Whether a request may have to wait: a cap, a pause met once, or slots elsewhere.

        Otherwise :meth:`acquire` has nothing to wait for, and its two coroutines per request
        (a swarm sends thousands) are not made.
        """
        return not self._slots_here or self._slots is not None or self._open_at != 0.0

    async def acquire(self) -> None:
        """Take a slot and wait until the gate is open: a request may go out now.

        For a request sent from elsewhere (an agent in its own process asks its tree's gate
        here, then sends the request itself); :meth:`release` gives the slot back.
        """
        if self._slots is not None:
            await self._slots.acquire()
        try:
            # Checked after the slot is ours: a caller that queued for it while another one
            # drew a 429 must not go out during the pause that 429 started.
            await self._wait_open()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Give back the slot :meth:`acquire` took."""
        if self._slots is not None:
            self._slots.release()

    def pause(self, seconds: float) -> None:
        """Close the gate for everyone for ``seconds`` (the provider's ``Retry-After``)."""
        loop = asyncio.get_running_loop()
        self._open_at = max(self._open_at, loop.time() + seconds)

    def _back_off(self, model: Model, exc: ModelError, failures: int,
                  on_event: EventCallback | None) -> float:
        """Record a transient failure, say so; return this caller's wait before trying again.

        Raises a :class:`ModelHTTPError` instead when the provider asked for a wait longer
        than ``max_retry_after``.
        """
        retry_after = exc.retry_after if isinstance(exc, ModelHTTPError) else None
        if retry_after is not None and retry_after > self.retry.max_retry_after:
            assert isinstance(exc, ModelHTTPError)
            asked = (f"{retry_after:g} s" if math.isfinite(retry_after)
                     else "longer than a number can say")  # Retry-After: 1e309
            raise ModelHTTPError(
                exc.model, f"{exc.detail} (the provider asked to wait {asked} before "
                f"trying again, more than ModelRetry(max_retry_after="
                f"{self.retry.max_retry_after:g}) waits: not retried)",
                exc.status, retry_after) from exc
        self.retries += 1
        if retry_after is not None:  # the provider spoke for the whole model: pause everyone
            self.pause(retry_after)
        delay = self.retry.delay(failures, retry_after, self._rng)
        error = (f"HTTP {exc.status}: {exc.detail}" if isinstance(exc, ModelHTTPError)
                 else exc.detail)
        event = ModelRetrying(run_id="", time=0.0, model=model.name, attempt=failures,
                              attempts=self.retry.retries + 1, delay=delay, error=error)
        log.info("model %s: %s", model.name, event.describe())
        if on_event is not None:  # an observer's bug must not stop the retries
            deliver(on_event, event, "a model event sink")
        return delay

    async def _wait_open(self) -> None:
        loop = asyncio.get_running_loop()
        # not a busy wait: each sleep lasts until the opening time, which a 429 met meanwhile
        # by another caller may have moved later (then the caller sleeps again)
        while (wait := self._open_at - loop.time()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(wait)



class ModelGates:
    """One :class:`ModelGate` per model name, shared by every agent of a run tree."""

    def __init__(self, *, retry: ModelRetry | None = None,
                 max_concurrency: int | None = None, seed: int | None = None) -> None:
        _check_gate("ModelGates", retry, max_concurrency)
        self._retry = retry
        self._max_concurrency = max_concurrency
        self._rng = seeded("ModelGates", seed)
        self._gates: dict[str, ModelGate] = {}

    def for_model(self, model: Model) -> ModelGate:
        """The gate for ``model`` (by name), created on first use."""
        return self.for_name(model.name)

    def for_name(self, name: str) -> ModelGate:
        """The gate of the model named ``name``, created on first use."""
        gate = self._gates.get(name)
        if gate is None:
            gate = self._new_gate(name)
            self._gates[name] = gate
        return gate

    def _new_gate(self, name: str) -> ModelGate:
        return ModelGate(name, max_concurrency=self._max_concurrency, retry=self._retry,
                         rng=self._rng)

    @property
    def retry(self) -> ModelRetry | None:
        """How the gates retry (``None``: :class:`ModelRetry`'s defaults)."""
        return self._retry

    @property
    def retries(self) -> int:
        """Transient failures retried so far across every model."""
        return sum(g.retries for g in self._gates.values())
