"""Scripted models for tests that run agents through the ``shoal`` command (``--model``)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import shoal
from shoal.models.base import (
    ModelRequest,
    ModelResponse,
    ToolResultMessage,
    Usage,
    UserMessage,
)
from shoal.testing import ScriptedModel, call, pause

REVIEW_PROMPT = "Review the papers"
PAPERS = Path(__file__).resolve().parent.parent / "examples" / "literature_review" / "papers"


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

#: Seconds each reader of main_job_paced takes, by paper (p1 ... p6), and the lead's: the
#: shape of a run on the local model (readers side by side, p4 the slowest), a hundred times
#: faster; p4 leads the next slowest by 90 ms, so that a loaded machine keeps that order.
PACED_READERS, PACED_LEAD = (0.22, 0.40, 0.31, 0.52, 0.43, 0.37), 0.19


def _main_job_paced(request: ModelRequest) -> list[object]:
    """main_job_model's answer, streamed after a pause of the paper's PACED_READERS time."""
    prompt = _prompt(request)
    if not prompt.endswith("What is the main finding of this paper?"):
        return [pause(PACED_LEAD), _main_job_answer(request)]
    title = prompt.split("\n\n")[0]
    titles = [path.read_text(encoding="utf-8").splitlines()[0].lstrip("# ")
              for path in sorted(PAPERS.glob("*.md"))]
    return [pause(PACED_READERS[titles.index(title)]), _main_job_answer(request)]


#: The main job at a pace like the local model's (tests/test_timeline.py: the README's picture).
main_job_paced = ScriptedModel.per_prompt({"*": [_main_job_paced]})


# ---- the main job, held up on one paper (tests/test_compose_cli.py) ------------------------

#: Environment: a file to append each request's first line to, and how long the paper
#: MAIN_JOB_FAILS and the lead's synthesis take (seconds).
REQUEST_LOG, HOLD_SECONDS = "SHOAL_TEST_REQUEST_LOG", "SHOAL_TEST_HOLD"


def _append(path: str, line: str) -> None:
    # in place, not on a thread: these models also run on the virtual clock, which cannot see
    # a thread's work; one short line to a local file
    with open(path, "a", encoding="utf-8") as out:
        out.write(line)


class _Held(ScriptedModel):
    """Answers as main_job_model does, but waits (without blocking) on one paper and the lead.

    Each answered request is a line in the file ``$SHOAL_TEST_REQUEST_LOG``, so a test can
    count what a resumed run asked again.
    """

    async def request(self, request: ModelRequest) -> ModelResponse:
        prompt = _prompt(request)
        if prompt.startswith(MAIN_JOB_FAILS) or not prompt.endswith("paper?"):
            await asyncio.sleep(float(os.environ.get(HOLD_SECONDS, "0")))
        response = await super().request(request)
        log = os.environ.get(REQUEST_LOG)
        if log:
            _append(log, prompt.splitlines()[0] + "\n")
        return response


main_job_held = _Held.per_prompt({"*": [_main_job_answer]}, latency=0.02)


def slow_review_model() -> ScriptedModel:
    """review_model at two seconds a request: a run that lasts long enough to be cancelled."""
    model = review_model()
    model.latency = 2.0
    return model


def odd_usage_model() -> ScriptedModel:
    """A model reporting a cost that is not a number and more tokens than can be written out."""
    return ScriptedModel([ModelResponse("done", (), Usage(10**5000, 5, 1, float("nan")),
                                        "odd", "stop")])


odd_usage_agent = shoal.Agent(name="odd", model=odd_usage_model())  # no budget to check

#: an agent whose answer stops at the model's output cap (``shoal run`` must say so)
cut_off_agent = shoal.Agent(name="cut", model=ScriptedModel(
    [ModelResponse(text="The causes are: first, the", stop_reason="length")]))
