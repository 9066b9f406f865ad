"""Shoal tools that tests/test_mcp.py serves with ``shoal mcp serve tests.mcp_tools:tools``."""

import asyncio
import time

import shoal


@shoal.tool(reads="numbers")
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@shoal.tool(max_concurrency=1)
async def one_at_a_time(seconds: float) -> dict[str, float]:
    """Sleep; only one call runs at a time (the tool's limit)."""
    began = time.time()
    await asyncio.sleep(seconds)
    return {"began": began, "ended": time.time()}


@shoal.tool
async def side_by_side(seconds: float) -> dict[str, float]:
    """Sleep; calls overlap."""
    began = time.time()
    await asyncio.sleep(seconds)
    return {"began": began, "ended": time.time()}


@shoal.tool(approval=True)
def launch(target: str) -> str:
    """Needs approval before it runs."""
    return f"launched {target}"


@shoal.tool(timeout=0.3)
async def too_slow() -> str:
    """Runs past its timeout."""
    await asyncio.sleep(30)
    return "never"


def shout(text: str) -> str:
    """A plain function: upper-case the text."""
    return text.upper()


tools = [add, one_at_a_time, side_by_side, launch, too_slow, shout]
