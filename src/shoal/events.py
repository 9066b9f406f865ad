"""Typed events: everything the runtime does, as small immutable records.

Times are seconds since the run started (the run's own monotonic clock); :class:`RunStarted`
carries the wall-clock start so a reader can place them in real time. A sink is any callable
taking an :class:`Event`; it runs on the event loop, so it must be quick (queue work elsewhere).
Events are only built when a run has at least one sink, which keeps runs without observers fast.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from pydantic_core import to_jsonable_python

__all__ = [
    "Event",
    "EventSink",
    "JsonlSink",
    "NodeCancelled",
    "NodeFinished",
    "NodeQueued",
    "NodeRetrying",
    "NodeSkipped",
    "NodeStarted",
    "RunFinished",
    "RunStarted",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of all events: which run, and when (seconds since the run started)."""

    run_id: str
    time: float

    @property
    def kind(self) -> str:
        """The event's type name, e.g. ``"NodeStarted"``."""
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-ready data, with its ``kind``."""
        data: dict[str, Any] = to_jsonable_python(asdict(self), fallback=repr)
        data["kind"] = self.kind
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStarted(Event):
    """A run began with ``nodes`` nodes; ``epoch`` is the wall-clock start time."""

    nodes: int
    epoch: float


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeQueued(Event):
    """A node's dependencies are done; it waits for a free slot."""

    node_id: str
    tool: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeStarted(Event):
    """An attempt of a node started on ``executor``."""

    node_id: str
    tool: str
    attempt: int
    executor: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRetrying(Event):
    """An attempt failed and another follows after ``delay`` seconds."""

    node_id: str
    tool: str
    attempt: int
    delay: float
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeFinished(Event):
    """A node ran and ended (``ok``, ``failed``, ``timed_out`` or ``cancelled``)."""

    node_id: str
    tool: str
    status: str
    attempts: int
    duration: float
    error: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSkipped(Event):
    """A node will not run because a node it needs did not succeed."""

    node_id: str
    tool: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeCancelled(Event):
    """A node that had not started was cancelled."""

    node_id: str
    tool: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFinished(Event):
    """The run ended; ``counts`` maps each status to how many nodes ended in it."""

    counts: dict[str, int]
    makespan: float


EventSink = Callable[[Event], None]


class JsonlSink:
    """Writes each event as one JSON line to a file (opened on creation, closed by ``close``)."""

    def __init__(self, path: str | Path) -> None:
        # held open for the run's lifetime; closed by close()
        self._file: IO[str] = Path(path).open("a", encoding="utf-8")  # noqa: SIM115

    def __call__(self, event: Event) -> None:
        """Append ``event`` as one line."""
        self._file.write(json.dumps(event.to_dict()) + "\n")

    def close(self) -> None:
        """Flush and close the file."""
        self._file.close()
