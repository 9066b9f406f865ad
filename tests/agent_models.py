"""Scripted models for tests that run agents through the ``shoal`` command (``--model``)."""

from __future__ import annotations

import shoal
from shoal.models.base import ModelRequest, ToolResultMessage, UserMessage
from shoal.testing import ScriptedModel, call

REVIEW_PROMPT = "Review the papers"


def _prompt(request: ModelRequest) -> str:
    return next(m.content for m in request.messages if isinstance(m, UserMessage))


def _results(request: ModelRequest) -> list[str]:
    return [m.content for m in request.messages if isinstance(m, ToolResultMessage)]


def _review(request: ModelRequest) -> str:
    return "Review: " + " | ".join(_results(request))


def _summary(request: ModelRequest) -> str:
    title = _results(request)[-1].splitlines()[0].lstrip("# ")
    return f"{_prompt(request)} is '{title}'"


def review_model() -> ScriptedModel:
    """The lead sends six readers at once, then writes the review."""
    return ScriptedModel.per_prompt({
        REVIEW_PROMPT: [
            [call("reader", task=f"p{i}") for i in range(1, 7)],
            _review,
        ],
        "*": [
            lambda request: [call("read_paper", paper_id=_prompt(request))],
            _summary,
        ],
    }, latency=0.05)


scripted_review = review_model()


@shoal.tool(approval=True)
def pay(to: str, amount: int) -> str:
    """Pay someone (needs a person's approval)."""
    return f"paid {amount} to {to}"


payer = shoal.Agent(name="payer", tools=[pay], model=ScriptedModel.per_prompt({
    "*": [[call("pay", to="ann", amount=5)], lambda request: _results(request)[-1]]}))


# ---- the main job (examples/literature_review/agents.py:review) ----------------------------

MAIN_JOB_FAILS = "Budgets for Agent Trees"  # the paper main_job_failing cannot summarise


def _main_job_answer(request: ModelRequest, fail_on: str = "") -> str:
    """A reader's summary (the first sentence of its paper), or the lead's synthesis."""
    prompt = _prompt(request)
    if prompt.endswith("What is the main finding of this paper?"):
        title, text, _ = prompt.split("\n\n")
        if fail_on and title == fail_on:
            raise RuntimeError(f"the model broke down on {title!r}")
        return f"{text.split('. ')[0]}."
    return f"Synthesis: the {prompt.count('. ')} sentences above agree."


main_job_model = ScriptedModel.per_prompt({"*": [_main_job_answer]}, latency=0.05)
main_job_failing = ScriptedModel.per_prompt(
    {"*": [lambda request: _main_job_answer(request, MAIN_JOB_FAILS)]}, latency=0.05)
