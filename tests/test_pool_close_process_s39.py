"""ProcessExecutor.close() from one thread while another thread's loop, using the pool, ends."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from shoal.executors.base import Call
from shoal.executors.process import ProcessExecutor
from tests import process_s39_tools as st
from tests.conftest import until

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_child_process_leak")]


def _nap_call(began: Path) -> Call:
    """A call of 30 s that creates ``began`` as it begins in its worker."""
    return Call(1, "n1", st.nap_marked, {"path": str(began), "seconds": 30.0}, 1, "process",
                None, "run")


async def _begun(began: Path) -> None:
    await until(began.exists)


def test_close_is_not_cancelled_by_another_loop_that_ends_as_it_cancels_its_call(
        tmp_path: Path) -> None:
    # was: close() raised CancelledError in a caller nobody cancelled: it asks the loop that
    # owns a lane (another thread's) to close it, and that loop, ending (its run cancels
    # its call and then the tasks left, the close among them), cancelled that close
    pool = ProcessExecutor(2)
    began = tmp_path / "began"
    running, queued = threading.Event(), threading.Event()
    ended: list[str] = []

    async def other() -> None:
        call = asyncio.ensure_future(pool.execute(_nap_call(began)))
        await _begun(began)
        running.set()
        queued.wait(30)  # the close of this loop's lane is queued on it by now
        call.cancel()  # and the loop ends: asyncio.run cancels what is left

    def other_thread() -> None:
        asyncio.run(other())
        ended.append("ended")

    async def closer() -> None:
        assert await asyncio.to_thread(running.wait, 30)
        closing = asyncio.ensure_future(pool.close())
        await asyncio.sleep(0.05)  # (close() has asked the other loop by now)
        queued.set()
        await closing  # raised CancelledError

    thread = threading.Thread(target=other_thread)
    thread.start()
    try:
        asyncio.run(closer())
    finally:
        queued.set()
        thread.join(60)
    assert ended == ["ended"]



def test_close_cancelled_by_its_own_caller_still_raises_cancelled_error(tmp_path: Path) -> None:
    pool = ProcessExecutor(2)
    began = tmp_path / "began"
    running, done = threading.Event(), threading.Event()

    async def other() -> None:  # a loop that holds a lane, then is stuck a while
        call = asyncio.ensure_future(pool.execute(_nap_call(began)))
        await _begun(began)
        running.set()
        done.wait(60)  # blocks this loop: the close asked of it waits
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
        await pool.leave()

    async def closer() -> None:
        assert await asyncio.to_thread(running.wait, 30)
        closing = asyncio.ensure_future(pool.close())
        await asyncio.sleep(0.05)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing

    thread = threading.Thread(target=lambda: asyncio.run(other()))
    thread.start()
    try:
        asyncio.run(closer())
    finally:
        done.set()
        thread.join(60)
