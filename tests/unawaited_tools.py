"""Tools that hand back work still to be awaited; worker processes import them from here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any


async def fetch(url: str) -> str:
    """The coroutine the tools below forget to await."""
    await asyncio.sleep(0)
    return f"page {url}"


async def forgot_await(url: str) -> str:
    """An async tool that returns ``fetch(url)`` instead of ``await fetch(url)``."""
    return fetch(url)  # type: ignore[return-value]


def sync_returns_coroutine(url: str) -> Coroutine[Any, Any, str]:
    """A sync tool that calls an async function and returns what it gave."""
    return fetch(url)


async def returns_task(url: str) -> asyncio.Task[str]:
    """An async tool that starts a task and returns it, unawaited."""
    return asyncio.get_running_loop().create_task(fetch(url))


async def returns_future(url: str) -> asyncio.Future[str]:
    """An async tool that returns a future nobody will resolve."""
    del url
    return asyncio.get_running_loop().create_future()


class Pending:
    """An awaitable that is neither a coroutine nor a future."""

    def __await__(self) -> Iterator[None]:
        yield None


def returns_awaitable(url: str) -> Pending:
    """A sync tool that returns an awaitable object."""
    del url
    return Pending()


async def stream(url: str) -> AsyncIterator[str]:
    """An async generator function used as a tool: its call gives an async generator."""
    yield url


def pages(url: str) -> Iterator[str]:
    """A generator function used as a tool: its call gives a generator, read only once."""
    yield url


async def pages_later(url: str) -> Iterator[str]:
    """An async tool that returns a generator."""
    return pages(url)


def count(items: list[str]) -> int:
    """How many items it was given."""
    return len(items)


def stops(url: str) -> str:
    """Raises ``StopIteration``, which an asyncio future refuses to carry."""
    raise StopIteration(url)
