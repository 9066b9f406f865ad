"""What model tokens cost, so an agent run can report (and budget) dollars, not only tokens.

:data:`PRICES` holds USD per million input and output tokens for a few well-known models.
Prices change and this table is not kept current: pass your own table to the adapters
(``OpenAIModel(..., prices={"my-model": Price(0.5, 1.5)})``) or to :func:`cost`. A model
without a price gets ``Usage.cost = None``, never a guess.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["PRICES", "Price", "cost", "lookup"]


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens: ``input`` (prompt) and ``output`` (completion)."""

    input: float
    output: float


#: List prices (USD per million tokens) as published by the providers in 2025. They change;
#: check the provider's page and pass your own table where accuracy matters. Cached-input
#: discounts and cache-write surcharges are not modelled: every input token counts in full.
PRICES: Mapping[str, Price] = {
    # OpenAI
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-5": Price(1.25, 10.00),
    "gpt-5-mini": Price(0.25, 2.00),
    "gpt-5-nano": Price(0.05, 0.40),
    "o3": Price(2.00, 8.00),
    "o4-mini": Price(1.10, 4.40),
    # Anthropic
    "claude-opus-4-5": Price(5.00, 25.00),
    "claude-opus-4-1": Price(15.00, 75.00),
    "claude-opus-4-0": Price(15.00, 75.00),
    "claude-sonnet-4-5": Price(3.00, 15.00),
    "claude-sonnet-4-0": Price(3.00, 15.00),
    "claude-3-7-sonnet": Price(3.00, 15.00),
    "claude-haiku-4-5": Price(1.00, 5.00),
    "claude-3-5-haiku": Price(0.80, 4.00),
}

# Providers answer with dated snapshots ("gpt-4.1-mini-2025-04-14", "claude-sonnet-4-5-20250929")
# and the "-latest" alias; both are priced like the model they name.
_SNAPSHOT = re.compile(r"(-\d{4}-\d{2}-\d{2}|-\d{8}|-latest)$")


def lookup(model_id: str, table: Mapping[str, Price] | None = None) -> Price | None:
    """The price of ``model_id`` in ``table`` (default :data:`PRICES`), or ``None``.

    A ``provider:`` prefix and a snapshot date or ``-latest`` suffix are ignored, so
    ``"openai:gpt-4.1-mini-2025-04-14"`` finds ``"gpt-4.1-mini"``. Matching is otherwise
    exact: ``"gpt-4.1-nano"`` never gets the price of ``"gpt-4.1"``.
    """
    prices = PRICES if table is None else table
    bare = model_id.split(":", 1)[1] if ":" in model_id else model_id
    for key in (model_id, bare, _SNAPSHOT.sub("", bare)):
        if key in prices:
            return prices[key]
    return None


def cost(model_id: str, input_tokens: int, output_tokens: int,
         table: Mapping[str, Price] | None = None) -> float | None:
    """USD for ``input_tokens`` and ``output_tokens`` of ``model_id``; ``None`` when unpriced."""
    price = lookup(model_id, table)
    if price is None:
        return None
    return (input_tokens * price.input + output_tokens * price.output) / 1_000_000
