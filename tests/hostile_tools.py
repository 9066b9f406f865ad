"""Tools whose errors and values run code of their own that raises ``SystemExit``.

In a module of their own so that worker processes can import them (tests/test_hostile_s23.py).
"""

from __future__ import annotations

from typing import Any, NoReturn

from shoal import tool


class StrExits(Exception):
    """An error whose ``__str__`` raises ``SystemExit``."""

    def __str__(self) -> str:
        raise SystemExit(6)

    def __repr__(self) -> str:  # (pytest's own report of a failure would exit too)
        return "StrExits()"


class ReprExits:
    """A value whose ``__repr__`` raises ``SystemExit``."""

    def __repr__(self) -> str:
        raise SystemExit(4)


class PickleExits:
    """A value whose ``__reduce__`` raises ``SystemExit`` (it cannot be pickled)."""

    def __reduce__(self) -> Any:
        raise SystemExit(5)

    def __repr__(self) -> str:
        return "PickleExits()"


def raise_str_exits() -> NoReturn:
    """Raise an error whose message cannot be made."""
    raise StrExits()


@tool(isolation="process")
def raise_str_exits_in_a_process() -> NoReturn:
    """The same, in a worker process."""
    raise StrExits()


def return_repr_exits() -> ReprExits:
    """Return a value that cannot be shown."""
    return ReprExits()


@tool(isolation="process", trust_results=True)
def return_pickle_exits_from_a_process() -> PickleExits:
    """Return, from a worker process, a value that cannot be pickled."""
    return PickleExits()


@tool(isolation="process")
def worker_pid() -> int:
    """The worker's process id."""
    import os

    return os.getpid()


def pass_on(value: Any = None) -> Any:
    """Return ``value`` as it came."""
    return value


async def raise_str_exits_on_the_loop() -> NoReturn:
    """Raise an error whose message cannot be made, on the event loop."""
    raise StrExits()
