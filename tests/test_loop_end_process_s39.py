"""A loop that ends as it cancels a process call: the worker's pipes are closed, not leaked."""

from __future__ import annotations

import asyncio
import gc
import threading
from pathlib import Path

import pytest

from shoal.executors.process import ProcessExecutor
from tests.test_pool_close_process_s39 import _begun, _nap_call

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_child_process_leak")]


@pytest.mark.parametrize("attempt", range(3))
def test_a_loop_ending_as_it_cancels_a_call_leaves_no_pipe_to_the_collector(
        attempt: int, tmp_path: Path) -> None:
    # was, now and then: ResourceWarning "unclosed transport" for the worker's two pipes, at
    # the next collection: the task reaping the killed worker (and closing its pipes) was
    # cancelled by asyncio.run's end before it started, and never ran
    pool = ProcessExecutor(2)
    began = tmp_path / "began"

    async def other() -> None:
        call = asyncio.ensure_future(pool.execute(_nap_call(began)))
        await _begun(began)
        call.cancel()  # and the loop ends: asyncio.run cancels what is left

    thread = threading.Thread(target=lambda: asyncio.run(other()))
    thread.start()
    thread.join(60)
    asyncio.run(pool.close())
    gc.collect()  # (an unclosed transport warns here: an error under filterwarnings=error)
