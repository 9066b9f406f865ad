"""An agent run of ``shoal run module:agent`` in the journal: listed, shown, resumable.

The agent's steps (each model turn and tool phase, ``<run id>/lead/model-1``, ...) journal
themselves as runs of their own. This adds the *root* record: which agent, which prompt and
model, so ``shoal resume RUN_ID`` can load the agent again and replay what the steps finished;
a heartbeat while the tree runs (so a killed run reads as ``interrupted``); and how it ended.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from shoal.agents.result import AgentResult
from shoal.store.base import RunEnded, RunRecord, RunStatus, Store

__all__ = ["HEARTBEAT_SECONDS", "AgentJournal", "is_agent_record"]

HEARTBEAT_SECONDS = 1.0
KIND = "agent"


def is_agent_record(record: RunRecord) -> bool:
    """Whether ``record`` is the root of an agent run started by ``shoal run``."""
    return record.source.get("kind") == KIND


class AgentJournal:
    """The root record of one agent run in a durable store."""

    def __init__(self, store: Store, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self._began = time.time()

    def begin(self, target: str, prompt: str, model: str | None) -> None:
        """Record a new agent run (for a resume, the record exists already)."""
        source: Mapping[str, Any] = {"kind": KIND, "target": target, "prompt": prompt,
                                     "model": model, "cwd": os.getcwd()}
        self.store.write([RunRecord(self.run_id, self._began, 0, "", {}, source,
                                    f"agent {target}", pid=os.getpid(),
                                    host=socket.gethostname(), heartbeat=self._began)])

    async def beat(self) -> None:
        """Say the run is alive, every second, until cancelled."""
        while True:
            await asyncio.to_thread(self.store.heartbeat, self.run_id, time.time())
            await asyncio.sleep(HEARTBEAT_SECONDS)

    def end(self, result: AgentResult[Any] | None, interrupted: bool) -> None:
        """Record how the run ended, with the lead's calls counted by status."""
        counts: dict[str, int] = {}
        for record in result.calls if result is not None else ():
            counts[record.status] = counts.get(record.status, 0) + 1
        status: RunStatus = "cancelled" if interrupted else "finished"
        self.store.write([RunEnded(self.run_id, status, time.time(), counts,
                                   time.time() - self._began)])
