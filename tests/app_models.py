"""Scripted models for the application examples (test_examples_apps).

The notes and drafts are what the examples' agents would write; the models here answer every
agent of an example from one script, so that ``python -m examples.market_research --model
tests.app_models:market`` runs the documented command end to end without a real model.
"""

from __future__ import annotations

import re

from shoal.exceptions import ModelError
from shoal.models.base import ModelRequest, UserMessage
from shoal.testing import ScriptedModel

NOTES = {
    "harbourline": "Harbourline Mobility sells cargo trikes and fleet maintenance to German "
                   "cities and postal services. Revenue fell from 33.2 to 30.1 million euros "
                   "as two city contracts ended; its main risk is that no new tender is won.",
    "larkspur": "Larkspur Cargo sells longtail and front-box family bikes, a fifth through "
                "employer leasing. Revenue grew from 41.0 to 52.5 million euros; every frame "
                "comes from one supplier in Taiwan.",
    "northpedal": "Northpedal is the largest maker, selling front-box bikes through 240 "
                  "partner shops. Revenue rose only from 88.0 to 91.5 million euros while "
                  "cheaper rivals win new buyers.",
    "quillon": "Quillon Bikes sells a folding cargo bike online to young city households. "
               "Revenue grew fast, from 3.8 to 6.1 million euros, but it loses money and its "
               "cash lasts only into late 2026.",
    "voltaic": "Voltaic Freight sells four-wheel cargo bikes to delivery fleets in France. "
               "Revenue rose from 18.4 to 27.9 million euros; three parcel carriers bring 62% "
               "of it.",
}

DRAFT_1 = (
    "Northpedal remains the largest maker with 91.5 million euros of revenue in 2025, but it "
    "grows slowly. Larkspur Cargo (52.5 million euros) and Voltaic Freight (27.9 million "
    "euros) grow fast, on family leasing and delivery fleets.\n\nHarbourline Mobility shrank "
    "to 30.1 million euros as city contracts ended.\n\nThe market is moving from families to "
    "fleets.")
FEEDBACK = "REVISE: Quillon Bikes and its revenue 6.1 are missing."
DRAFT_2 = DRAFT_1.replace(
    "\n\nThe market", "\n\nQuillon Bikes is small at 6.1 million euros and grows fastest, "
    "but its cash runs short in 2026.\n\nThe market")
ACCEPTED = "ACCEPT: every company is named with its revenue."

COMMENTARY = ("From January to August the bakeries sold for 41,024.50 euros. East was the "
              "strongest region and sourdough the best product; May is missing because its "
              "file could not be read.")


def _prompt(request: ModelRequest) -> str:
    return next(m.content for m in request.messages if isinstance(m, UserMessage))


def _market_answer(request: ModelRequest) -> str:
    """What the market research agent behind ``request`` writes (told by its instructions)."""
    prompt = _prompt(request)
    if request.instructions.startswith("You are a market analyst"):
        name = prompt.splitlines()[0].removeprefix("# ")
        return next(note for note in NOTES.values() if note.startswith(name))
    if request.instructions.startswith("You write short market reports"):
        return DRAFT_2 if "\n\nprevious_draft:\n" in prompt else DRAFT_1
    if request.instructions.startswith("You check a draft report"):
        return ACCEPTED if re.search(r"Quillon Bikes is small", prompt) else FEEDBACK
    raise AssertionError(f"no scripted answer for an agent told {request.instructions[:60]!r}")


#: Every agent of the market research example (one turn each), for ``--model``.
market = ScriptedModel.per_prompt({"*": [_market_answer]}, latency=0.05)
#: The data aggregation example's commentator.
commentary = ScriptedModel.per_prompt({"*": [COMMENTARY]})


def _down(request: ModelRequest) -> str:
    raise ModelError("scripted", "the service is down (HTTP 503)")


#: A model that fails every request, as a hosted model does in an outage.
down = ScriptedModel.per_prompt({"*": [_down]})
