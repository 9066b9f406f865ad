"""Targets for ``shoal run FILE.py:NAME "task"`` that are not what it takes, and a few that are.

Used by tests/test_compose_cli.py: each bad one must end in a clear error and exit code 2.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import shoal


@shoal.tool
def echo(text: str) -> str:
    """Give the text back."""
    return text


def echoes(task: str) -> shoal.Plan:
    """A plan whose answer is the task itself (for hostile task strings)."""
    plan = shoal.Plan("echo")
    plan.call(echo, text=task, node_id="answer")
    return plan


def no_nodes(task: str) -> shoal.Plan:
    """A plan with nothing in it."""
    return shoal.Plan("empty")


nameless = lambda task: echoes(task)  # noqa: E731 (a lambda on purpose)


def many_problems(task: str) -> shoal.Plan:
    """A plan with two bad nodes: both must be reported."""
    plan = shoal.Plan("bad")
    plan.add(echo, {"text": 1, "extra": 2}, node_id="first")
    plan.add(echo, {}, node_id="second")
    return plan


def raises(task: str) -> shoal.Plan:
    """Fails while making the plan."""
    raise ValueError("no plan today")


class Unprintable(Exception):
    """An error whose message cannot be made (its own ``__str__`` raises)."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ of a hostile error")


def raises_unprintable(task: str) -> shoal.Plan:
    """Fails while making the plan, with an error whose message cannot be shown."""
    raise Unprintable


def exits(task: str) -> shoal.Plan:
    """Ends the process while making the plan (it must not end the command)."""
    sys.exit(3)


def gives_none(task: str) -> None:
    """Returns nothing."""


def gives_dict(task: str) -> dict[str, Any]:
    """Returns something else."""
    return {"plan": task}


def takes_nothing() -> shoal.Plan:
    """Cannot be given the task."""
    return shoal.Plan("p")


def takes_two(task: str, other: str) -> shoal.Plan:
    """Needs more than the task."""
    return shoal.Plan("p")


async def is_async(task: str) -> shoal.Plan:
    """A coroutine function: shoal run does not await it."""
    return shoal.Plan("p")


class NotAPlan:
    """A class, not a function."""


class Unshowable:
    """A value whose text cannot be made."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ of a hostile answer")

    def __repr__(self) -> str:
        raise SystemExit(3)


@shoal.tool
def unshowable() -> Unshowable:
    """An answer whose text cannot be made."""
    return Unshowable()


@shoal.tool
def huge_number() -> int:
    """An answer too long to write out as text."""
    return 10**5000


def answers_unshowable(task: str) -> shoal.Plan:
    """A plan whose answer's ``__str__`` raises."""
    plan = shoal.Plan()
    plan.call(echo, text=task)
    plan.call(unshowable, node_id="answer")
    return plan


def answers_huge(task: str) -> shoal.Plan:
    """A plan whose answer is an int of 5,001 digits."""
    plan = shoal.Plan()
    plan.call(echo, text=task)
    plan.call(huge_number, node_id="answer")
    return plan


#: The file whose appearance lets :func:`held` end (its path, in the environment).
RELEASE = "SHOAL_TEST_RELEASE"


@shoal.tool
def wait_for_release(text: str) -> str:
    """Wait (at most a minute) until the file named by ``$SHOAL_TEST_RELEASE`` exists."""
    release = Path(os.environ[RELEASE])
    deadline = time.monotonic() + 60
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return text


def held(task: str) -> shoal.Plan:
    """A plan that runs until it is released."""
    plan = shoal.Plan()
    plan.call(wait_for_release, text=task, node_id="answer")
    return plan
