"""A message an agent process began on its socket and did not finish: what it says of the agent.

The parent reads each message whole (see :func:`shoal.agents.remote.read_body`); one cut
short raises :class:`CutShort`. Then how the process fares tells why: killed as it sent
(the kernel's OOM killer ends the process that holds the memory: one sending a large result),
stopped there (``kill -STOP``), or neither (a tool wrote part of a message to the socket).
:func:`cause` turns that into the agent's error; it never waits on a process that still runs
and is not stopped, and waits on one at a time only (two waits on one process put two
readers on one descriptor, the second silently taking the first's place).
"""

from __future__ import annotations

from typing import Protocol

from shoal.exceptions import AgentError, SerializationError
from shoal.executors.process import process_state


class CutShort(SerializationError):
    """A message whose body stopped coming, or whose socket ended, before all of it came."""

    def __init__(self, what: str, size: int, came: int, why: str, *,
                 ended: bool) -> None:
        super().__init__(
            f"{what} announced {size:,} bytes, but {why}: a short read (something wrote part "
            f"of a message to its socket, or its process died while writing one)")
        #: the announced length, and the bytes of it that came
        self.size, self.came = size, came
        #: whether the socket ended (else it is open, and the rest did not come in time)
        self.ended = ended

    def part(self) -> str:
        """What came of the message: ``100 of its 10,000 bytes``."""
        return f"{self.came:,} of its {self.size:,} bytes"


class Sender(Protocol):
    """The channel of the agent process that sent the message (a ``ProcessChannel``)."""

    stalled: str | None  # why its parent killed it, when it was found stopped

    @property
    def pid(self) -> int:
        """The agent's process."""

    async def ended(self) -> str:
        """Wait until the process is gone (killing it if it lingers); how it ended."""


async def cause(lineage: str, channel: Sender, short: CutShort) -> Exception:
    """The error of agent ``lineage`` whose process cut a message short on its socket.

    Socket open (the rest did not come in time): a process stopped there (state ``T``) says
    so; any other keeps ``short``, at once (its channel is closed, and the process killed,
    by the caller). Socket ended: how the process ended, waited for as
    :class:`~shoal.agents.remote.ProcessChannel` waits for one whose socket closed; killed by
    a signal is the cause; exited by itself, ``short`` says how.
    """
    if not short.ended:
        if process_state(channel.pid) != b"T":
            return short
        return AgentError(
            f"agent {lineage}: its process was stopped (SIGSTOP or SIGTSTP) in the middle of "
            f"a message ({short.part()} came, then nothing): it was killed")
    how = await channel.ended()
    if channel.stalled is not None:  # found stopped and killed for it: that is the cause
        return AgentError(f"agent {lineage}: {how} (in the middle of a message: "
                          f"{short.part()} came)")
    if how.startswith("exit code"):  # it ended by itself, after part of a message
        return SerializationError(f"{short} (its process then ended: {how})")
    return AgentError(f"the process running agent {lineage} died while it sent a message "
                      f"({short.part()} came): {how}")
