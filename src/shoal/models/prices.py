"""What model tokens cost, so an agent run can report (and budget) dollars, not only tokens.

Prices come from `genai-prices <https://github.com/pydantic/genai-prices>`_, the table Pydantic
AI uses: kept current by its maintainers and shipped inside the package, so a lookup works
offline. shoal reads only that shipped copy; it never starts the package's price updater, so
pricing a request never touches the network. Upgrade the package for newer prices.

Cached input is priced as the provider bills it: ``cache_read_tokens`` (prompt-cache hits) at
the provider's cache-read rate, ``cache_write_tokens`` (Anthropic's cache creation) at its
cache-write rate, and long-context tiers where a provider has them.

Your own prices take precedence: pass a table to the adapters
(``OpenAIModel(..., prices={"my-model": Price(0.5, 1.5)})``) or to :func:`cost`. A model found
in neither gets ``Usage.cost = None``, never a guess.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from typing import TYPE_CHECKING, Any

from shoal.exceptions import ConfigError, bounded_text
from shoal.limits import finite
from shoal.merge import shown

if TYPE_CHECKING:
    from genai_prices.data_snapshot import DataSnapshot

__all__ = ["Price", "catalog_loading", "cost", "lookup", "provider_for_url"]

log = logging.getLogger(__name__)

_MILLION = 1_000_000
# No provider names a model in more characters. genai-prices keeps every id it is asked about
# in a lookup cache, and a server's answer names the model: a longer one is not looked up.
_LONGEST_ID = 256


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens.

    ``input`` (prompt) and ``output`` (completion); ``cache_read`` and ``cache_write`` price
    input tokens read from or written to the provider's prompt cache (``None``: as ``input``).
    """

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None

    def __post_init__(self) -> None:
        for name in ("input", "output", "cache_read", "cache_write"):
            value = getattr(self, name)
            if value is None and name.startswith("cache"):
                continue
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not finite(value) or value < 0):
                raise ConfigError(f"Price.{name} must be a finite number of US dollars per "
                                  f"million tokens, 0 or more; got {shown(value)}")

    def cost(self, input_tokens: int, output_tokens: int, cache_read_tokens: int = 0,
             cache_write_tokens: int = 0) -> float:
        """USD for these counts; ``input_tokens`` includes the cached ones.

        Counts whose cost is past a float's range (a broken server's usage) cost ``inf``, as
        genai-prices' table prices them: an ``OverflowError`` failed the request.
        """
        fresh = input_tokens - cache_read_tokens - cache_write_tokens
        read = self.input if self.cache_read is None else self.cache_read
        write = self.input if self.cache_write is None else self.cache_write
        try:  # a free kind of token costs nothing however many (0.0 * 10**400 overflows)
            return sum(count * rate for count, rate in (
                (fresh, self.input), (cache_read_tokens, read), (cache_write_tokens, write),
                (output_tokens, self.output)) if rate) / _MILLION
        except OverflowError:
            return math.inf


# Providers answer with dated snapshots ("gpt-4.1-mini-2025-04-14", "claude-sonnet-4-5-20250929")
# and the "-latest" alias; in a table of your own, both are priced like the model they name.
_SNAPSHOT = re.compile(r"(-\d{4}-\d{2}-\d{2}|-\d{8}|-latest)$")


def _from_table(model_id: str, table: Mapping[str, Price]) -> Price | None:
    """``model_id``'s entry in ``table``: as given, without a ``provider:`` prefix, undated."""
    bare = model_id.split(":", 1)[1] if ":" in model_id else model_id
    for key in (model_id, bare, _SNAPSHOT.sub("", bare)):
        if key in table:
            return table[key]
    return None


class _Unavailable(LookupError):
    """genai-prices' data could not be loaded: every price is unknown (``None``) for now."""


def _snapshot() -> DataSnapshot:
    """The price data genai-prices ships (or one its user installed); imported on first use.

    Raises ``_Unavailable`` (a ``LookupError``: the price is unknown) when it cannot be loaded
    now, saying why in one warning line, once a process: a process out of file descriptors
    (its ``open_files`` limit) failed to import the package, which logged a traceback and
    then failed the model call being priced with ``OSError``. A later call tries again.
    """
    try:
        from genai_prices.data_snapshot import get_snapshot

        return get_snapshot()
    except Exception as exc:  # costs are a report, never a reason for a call to fail
        _say_unavailable(exc)
        raise _Unavailable(str(exc)) from None


_load_lock = threading.Lock()
_loaded: concurrent.futures.Future[None] | None = None
_said_unavailable = False


def _say_unavailable(exc: Exception) -> None:
    global _said_unavailable
    with _load_lock:
        if _said_unavailable:
            return
        _said_unavailable = True
    log.warning("genai-prices' price data could not be loaded (%s: %s); model costs are "
                "unknown until it can be", type(exc).__name__, bounded_text(str(exc), 300))


def catalog_loading() -> asyncio.Future[None] | None:
    """Load genai-prices' data in a thread, once per process; ``None`` once it is loaded.

    Importing the package and reading its data takes a few tenths of a second: done on the
    event loop at a run's first priced response, it would hold up every other call of the
    run. The adapters call this when a request starts and await the result before they price
    the response, so the load overlaps the request and never blocks the loop. Must be called
    from a running event loop.
    """
    global _loaded
    if _loaded is not None and _loaded.done():
        return None
    with _load_lock:
        if _loaded is None:
            _loaded = concurrent.futures.Future()
            # running from now on, so it cannot be cancelled: each caller's wrapper passed a
            # cancel of its own on to it (a model request cancelled while the data loaded),
            # which cancelled every other caller's wait, and the loader died setting it
            _loaded.set_running_or_notify_cancel()
            threading.Thread(target=_load, args=(_loaded,), name="shoal-prices",
                             daemon=True).start()
    return asyncio.wrap_future(_loaded)


def _load(done: concurrent.futures.Future[None]) -> None:
    with contextlib.suppress(_Unavailable):  # said; the prices are unknown meanwhile
        _snapshot()
    done.set_result(None)


def _catalog_ref(model_id: str, provider: str | None) -> tuple[str, str | None]:
    """(model reference, provider id) to look ``model_id`` up with in genai-prices.

    A ``provider:`` prefix that names a provider genai-prices knows picks that provider;
    any other colon belongs to the model's name (``llama3:8b``). ``LookupError`` for an id
    too long to be one.
    """
    if len(model_id) > _LONGEST_ID:
        raise LookupError(f"no model id is {len(model_id)} characters long")
    providers = _snapshot().providers  # imports the package: first
    from genai_prices.data_snapshot import find_provider_by_id

    head, colon, rest = model_id.partition(":")
    if colon and find_provider_by_id(providers, head) is not None:
        return rest, head
    return model_id, provider


def provider_for_url(base_url: str | None, default: str) -> str:
    """The provider serving the API at ``base_url``, as genai-prices names it.

    ``default`` (the adapter's own provider) for no URL and for a URL no provider claims: a
    local server or a proxy in front of the provider; also while genai-prices' data cannot be
    loaded (its prices are unknown then anyway).
    """
    try:
        return _provider_for_url(base_url, default)
    except _Unavailable:  # not cached: the next call looks again
        return default


@cache
def _provider_for_url(base_url: str | None, default: str) -> str:
    if base_url:
        for provider in _snapshot().providers:
            if re.match(provider.api_pattern, base_url):
                return provider.id
    return default


def _rate(value: Any) -> float | None:
    """A genai-prices rate as a float: a tiered rate's base, ``None`` when there is none."""
    value = getattr(value, "base", value)
    return float(value) if isinstance(value, Decimal | int | float) else None


def _catalog_price(model_id: str, provider: str | None) -> Price | None:
    try:
        ref, provider = _catalog_ref(model_id, provider)
        _, model = _snapshot().find_provider_model(ref, None, provider, None)
    except LookupError:
        return None
    rates = model.get_prices(datetime.now(UTC))
    given = {name: _rate(getattr(rates, f"{name}_mtok", None))
             for name in ("input", "output", "cache_read", "cache_write")}
    if given["input"] is None or given["output"] is None:  # not priced by the token
        return None
    return Price(given["input"], given["output"], given["cache_read"], given["cache_write"])


def lookup(model_id: str, table: Mapping[str, Price] | None = None, *,
           provider: str | None = None) -> Price | None:
    """The price of ``model_id``: its entry in ``table`` if any, else genai-prices', else ``None``.

    In ``table``, a ``provider:`` prefix and a snapshot date or ``-latest`` suffix are
    ignored, and matching is otherwise exact. genai-prices matches ids by its own rules
    (dated snapshots and aliases included), within ``provider`` (a genai-prices provider id
    such as ``"openai"``) when given. A long-context tier is not shown: this is the base rate;
    :func:`cost` applies the tiers.
    """
    if table is not None and (price := _from_table(model_id, table)) is not None:
        return price
    return _catalog_price(model_id, provider)


def _check_counts(counts: Mapping[str, int]) -> None:
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a whole number of tokens, 0 or more; "
                             f"got {shown(value)}")
    cached = counts["cache_read_tokens"] + counts["cache_write_tokens"]
    if cached > counts["input_tokens"]:
        raise ValueError(f"{cached} cached input tokens but input_tokens is "
                         f"{counts['input_tokens']}: input_tokens counts every input token, "
                         "cached ones included")


def _catalog_cost(model_id: str, provider: str | None, input_tokens: int, output_tokens: int,
                  cache_read_tokens: int, cache_write_tokens: int) -> float | None:
    try:
        ref, provider = _catalog_ref(model_id, provider)  # loads the package first
    except LookupError:  # unknown here, or genai-prices cannot be loaded
        return None
    import genai_prices

    usage = genai_prices.Usage(input_tokens=input_tokens, output_tokens=output_tokens,
                               cache_read_tokens=cache_read_tokens,
                               cache_write_tokens=cache_write_tokens)
    try:
        return float(genai_prices.calc_price(usage, ref, provider_id=provider).total_price)
    except (LookupError, ValueError):  # unknown here, or not priced by the token
        return None


def cost(model_id: str, input_tokens: int, output_tokens: int,
         table: Mapping[str, Price] | None = None, *, cache_read_tokens: int = 0,
         cache_write_tokens: int = 0, provider: str | None = None) -> float | None:
    """USD for one request's tokens of ``model_id``; ``None`` when its price is unknown.

    ``input_tokens`` counts every input token; ``cache_read_tokens`` and
    ``cache_write_tokens`` say how many of them were read from or written to the provider's
    prompt cache. ``table`` and ``provider`` are as in :func:`lookup`.

    Raises:
        ValueError: a count is not a whole number 0 or more, or the cached tokens outnumber
            ``input_tokens``.
    """
    _check_counts({"input_tokens": input_tokens, "output_tokens": output_tokens,
                   "cache_read_tokens": cache_read_tokens,
                   "cache_write_tokens": cache_write_tokens})
    if table is not None and (price := _from_table(model_id, table)) is not None:
        return price.cost(input_tokens, output_tokens, cache_read_tokens, cache_write_tokens)
    return _catalog_cost(model_id, provider, input_tokens, output_tokens, cache_read_tokens,
                         cache_write_tokens)
