"""What an agent run gives back: the answer, and everything that happened on the way."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal

from typing_extensions import TypeVar

from shoal.agents.toolcalls import CallRecord
from shoal.exceptions import describe_exception
from shoal.models.base import Message, Usage
from shoal.outcome import jsonable

if TYPE_CHECKING:
    from shoal.board import BoardConflict
    from shoal.store.base import Store

__all__ = ["AgentResult", "AgentStatus"]

T = TypeVar("T", default=str)  # the answer's type: str unless the agent has an output_type

AgentStatus = Literal["ok", "failed", "cancelled", "max_turns", "budget_exceeded", "running"]


#: The usage of a result with none yet: immutable, so one serves every result (not two each).
_NOTHING_YET = Usage()


@dataclass(slots=True)
class AgentResult(Generic[T]):
    """One agent's run: its answer, usage, messages, every tool call's outcome, its subagents.

    ``output`` is the answer: an ``output_type`` instance, or the text. ``Agent.run`` returns
    a result only when there is one (it raises otherwise), so its ``output`` is typed ``T``;
    a result without an answer (``status`` other than ``ok``: the ``.result`` of an error, a
    handle's result while running) has ``output`` ``None``.

    ``usage`` covers this agent and every subagent below it (for the lead: the whole tree);
    ``own_usage`` only this agent's own model requests; ``turns`` counts those requests.
    ``messages`` is the conversation (immutable messages, oldest first). ``calls`` holds
    every tool call the agent's model asked for, in order, each a
    :class:`~shoal.agents.toolcalls.CallRecord` with its outcome; ``children`` the results
    of its subagents in the order they were started. A run stopped early (budget,
    cancellation, ``max_turns``) still holds everything recorded until then; ``error`` says
    why it stopped. A run given a board has, on the lead's result, ``board`` (each key's
    merged value at the end) and ``conflicts`` (as on :class:`~shoal.outcome.RunResult`).
    A planner (``mode="plan"``) has in ``plans`` each plan its model wrote, in order (more
    than one when it replanned); its ``calls`` are the plans' calls, each with its number in
    the plan as ``call.id``.
    ``started_at`` is when the agent started (epoch seconds; 0 until it does). ``where`` names
    the machine its turn loop ran on, as :attr:`Outcome.where <shoal.outcome.Outcome.where>`
    names a call's: the host name for inline and process agents; for a Ray agent
    (``isolation="ray"``) its actor's node address and Ray node id (``"10.0.0.7 node
    4f1c..."``), known from the moment the actor connects, so also for an actor that died;
    empty until it starts. The call that ran a subagent (in its parent's ``calls``) and an
    agent's plan node record the same ``where`` on their outcome. ``isolation`` says how its
    turn loop ran (``"inline"``, ``"process"``, ``"ray"``) and ``pid`` the id of the process
    that ran it (on that machine; 0 until it starts), as its
    :class:`~shoal.events.AgentStarted` event says.
    ``cut_off`` is empty unless the final answer stopped at the model's output cap (stop
    reason ``length`` / ``max_tokens``): a text answer is kept, cut short, and this says so
    and how to raise the cap (structured output cut so raises
    :class:`~shoal.exceptions.OutputCutOffError`).
    """

    agent: str
    lineage: str
    run_id: str
    prompt: str
    output: T = None  # type: ignore[assignment]  # None only until (and unless) there is an answer
    status: AgentStatus = "running"
    error: BaseException | None = None
    usage: Usage = _NOTHING_YET
    own_usage: Usage = _NOTHING_YET
    turns: int = 0
    messages: list[Message] = field(default_factory=list)
    calls: list[CallRecord] = field(default_factory=list)
    children: list[AgentResult[Any]] = field(default_factory=list)
    duration: float = 0.0
    board: dict[str, Any] | None = None
    conflicts: list[BoardConflict] = field(default_factory=list)
    plans: list[str] = field(default_factory=list)
    started_at: float = 0.0
    where: str = ""
    pid: int = 0
    isolation: str = ""
    cut_off: str = ""

    @property
    def ok(self) -> bool:
        """Whether the agent gave a final answer."""
        return self.status == "ok"

    @property
    def failed_calls(self) -> int:
        """How many of this agent's own tool calls did not succeed (failed, rejected, ...).

        An agent can answer ``ok`` although every call it made failed; this says so.
        """
        return sum(1 for call in self.calls if not call.ok)

    def walk(self) -> list[AgentResult[Any]]:
        """Every result of the subtree, depth first, starting with this one."""
        found: list[AgentResult[Any]] = [self]
        for child in self.children:
            found += child.walk()
        return found

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data (the tree of subagents included)."""
        return {
            "agent": self.agent, "lineage": self.lineage, "run_id": self.run_id,
            "prompt": self.prompt, "status": self.status, "output": jsonable(self.output),
            "error": None if self.error is None else describe_exception(self.error),
            "turns": self.turns, "duration": self.duration, "where": self.where,
            "pid": self.pid, "isolation": self.isolation,
            "usage": _usage(self.usage), "own_usage": _usage(self.own_usage),
            "calls": [{"lineage": c.lineage, "tool": c.call.name, "status": c.status,
                       "arguments": c.call.arguments, "result": c.message.content}
                      for c in self.calls],
            "children": [c.to_dict() for c in self.children],
            **({"plans": list(self.plans)} if self.plans else {}),
            **({"cut_off": self.cut_off} if self.cut_off else {}),
            **({} if self.board is None else {
                "board": jsonable(self.board),
                "conflicts": [jsonable(c.to_dict()) for c in self.conflicts]}),
        }  # fmt: skip

    def timeline(self, path: str | os.PathLike[str] | None = None, *,
                 store: Store | None = None) -> str:
        """The agent tree as a self-contained HTML timeline (see :mod:`shoal.timeline`).

        With the ``store`` the run was journaled in, the page also has every model turn (read
        from the journal); without, it has what the result holds: the agents and their calls.
        Returns the page, and writes it to ``path`` when one is given.
        """
        from shoal.timeline import from_agent_result, from_journal
        from shoal.timeline.model import agent_tree, answer_text

        if store is None:
            view = from_agent_result(self)
        else:
            view = from_journal(store, self.run_id, status=self.status, tree=agent_tree(self))
            view.answer = answer_text(self.output) if self.ok else view.answer
        return view.html() if path is None else view.write(path)

    def __repr__(self) -> str:
        return (f"<AgentResult {self.lineage} {self.status} turns={self.turns} "
                f"tokens={self.usage.total_tokens} output={str(self.output)[:40]!r}>")


def _usage(usage: Usage) -> dict[str, Any]:
    return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
            "requests": usage.requests, "cost": usage.cost,
            "cache_read_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens}
