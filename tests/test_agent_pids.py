"""Agent processes are never signalled by a pid that another process may have taken.

As tests/test_process_pids.py does for tool workers: where this process may choose the next
pid (``/proc/sys/kernel/ns_last_pid``), an unrelated process is started, in a session of its
own, on the very pid (and process group id) a dead agent process had, and the agent's channel
is then killed and closed: the newcomer must live on. Also the actor side of Ray agents, which
kills what its agent left below it without freezing it first.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import psutil
import pytest

from shoal.agents import ray_agent
from shoal.agents._launch import AgentLauncher
from shoal.agents.remote import ProcessChannel
from shoal.executors import process
from shoal.executors._template import fork_supported
from shoal.executors.process import worker_env
from tests._pids import (
    a_zombie,
    alive,
    free,
    needs_pid_choice,
    newcomers,
    take_pid,
)
from tests.conftest import arun, until, wait_until
from tests.conftest import pid_gone as gone

__all__ = ["newcomers"]  # the fixture, for the tests below

pytestmark = pytest.mark.usefixtures("no_child_process_leak")

ROOT = Path(__file__).resolve().parents[1]
SLOW = 60.0

needs_pidfds = pytest.mark.skipif(not process._PIDFDS, reason="no pidfds here (Linux 5.3+)")


async def a_channel(launcher: AgentLauncher) -> ProcessChannel:
    """An agent process waiting for its first message, and the parent's channel to it."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        proc = await launcher.launch(theirs.fileno(), worker_env(()))
    finally:
        theirs.close()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    return ProcessChannel(proc, reader, writer)


@needs_pidfds
def test_a_spawned_agent_process_that_died_stays_unreaped_until_its_channel_closes() -> None:
    """Its pid, its group's id, cannot pass to another process while the channel may signal
    them (asyncio's child watcher used to reap it the moment it ended)."""

    async def main() -> None:
        launcher = AgentLauncher(fork=False)
        channel = await a_channel(launcher)
        pid = channel.pid
        try:
            os.kill(pid, signal.SIGKILL)
            await until(lambda: a_zombie(pid))
            await asyncio.sleep(0.3)  # the loop runs: nothing reaps it behind the channel
            assert a_zombie(pid)
            assert (await channel.ended()).startswith("killed by signal SIGKILL")
            assert a_zombie(pid)
        finally:
            await channel.close()
            launcher.close()
        await until(lambda: not psutil.pid_exists(pid), within=10.0)

    arun(main(), timeout=SLOW)


@needs_pid_choice
def test_killing_an_agent_process_reaped_before_its_exit_was_seen_spares_the_pids_new_owner(
        monkeypatch: pytest.MonkeyPatch, newcomers: list[subprocess.Popen[bytes]]) -> None:
    """Where there are no pidfds asyncio's child watcher reaps the agent process in a thread
    of its own and only then has the loop set its ``returncode``: a kill in between, and the
    group kill of close(), used to go to whoever had its pid."""
    monkeypatch.setattr(process, "_PIDFDS", False)  # as where there are no pidfds

    async def main() -> None:
        launcher = AgentLauncher(fork=False)
        channel = await a_channel(launcher)
        try:
            assert isinstance(channel.proc, asyncio.subprocess.Process)
            os.kill(channel.pid, signal.SIGKILL)
            # No await from here on: the watcher's thread reaps it, the loop cannot yet
            # record it, and the pid goes to a newcomer.
            newcomers.append(take_pid(channel.pid))
            assert channel.proc.returncode is None
            channel.kill()
            await asyncio.sleep(0.1)
            assert alive(newcomers[0])
        finally:
            await channel.close()
            launcher.close()
        assert alive(newcomers[0])

    arun(main(), timeout=SLOW)


@needs_pid_choice
@pytest.mark.skipif(not fork_supported(), reason="agent processes are forked on Linux only")
def test_closing_the_channel_of_an_agent_that_died_with_its_template_spares_the_pids_new_owner(
        newcomers: list[subprocess.Popen[bytes]]) -> None:
    """The template died: its agent processes end too, and are reaped by whoever inherits
    them; close() used to kill the process group of the pid then, whoever led it."""

    async def main() -> None:
        launcher = AgentLauncher(fork=True)
        channel = await a_channel(launcher)
        pid = channel.pid
        try:
            template = launcher.template_pid
            assert template is not None
            os.kill(template, signal.SIGKILL)  # its agent processes die with it
            if not wait_until(lambda: free(pid), timeout=10.0):
                pytest.skip("nothing reaps orphaned processes here")
            newcomers.append(take_pid(pid))
            assert "template" in await channel.ended()
            channel.kill()
        finally:
            await channel.close()
            launcher.close()
        await asyncio.sleep(0.1)
        assert alive(newcomers[0])

    arun(main(), timeout=SLOW)


# ---- a Ray agent's actor ending what its agent left ------------------------------------------


@needs_pid_choice
def test_an_actor_kills_a_listed_process_only_if_its_pid_is_still_that_ones(
        newcomers: list[subprocess.Popen[bytes]]) -> None:
    """A process listed below the actor may end and its pid pass to another before the kill."""
    listed_one = subprocess.Popen(["sleep", "60"])
    listed = psutil.Process(listed_one.pid)
    listed_one.kill()
    listed_one.wait()
    # start times are in clock ticks (10 ms on Linux): a newcomer in the same tick would pass
    time.sleep(0.05)  # for the listed one (pid reuse takes far longer in practice)
    newcomers.append(take_pid(listed.pid))
    ray_agent._kill_listed(listed)
    time.sleep(0.1)
    assert alive(newcomers[0])
    ray_agent._kill_listed(psutil.Process(newcomers[0].pid))  # the one holding it now: killed
    assert wait_until(lambda: newcomers[0].poll() is not None)


TREE = """
import os, subprocess, sys
from shoal.agents import ray_agent
child = subprocess.Popen(["sleep", "60"])
away = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; wait"], start_new_session=True,
                        stdout=subprocess.PIPE)
grandchild = int(away.stdout.readline())
print(child.pid, away.pid, grandchild, flush=True)
ray_agent._kill_descendants()
for proc in (child, away):
    proc.wait()
print("done", flush=True)
"""


def test_an_actor_kills_every_process_below_it() -> None:
    actor = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True,
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert actor.stdout is not None
    try:
        pids = [int(p) for p in actor.stdout.readline().split()]
        assert len(pids) == 3
        assert actor.stdout.readline() == "done\n"
        assert actor.wait(timeout=SLOW) == 0
        for pid in pids:
            assert wait_until(partial(gone, pid), timeout=5.0), pid
    finally:
        actor.kill()
        actor.wait()
        actor.stdout.close()
