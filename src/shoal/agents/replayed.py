"""The result of a subagent that had ended before a resume, read back from the journal.

A resumed tree replays a finished subagent call's journaled answer: the subagent never runs
again, so nothing would put its result in its parent's ``children``. This rebuilds that
result read-only from the journal (its steps run: each model turn's reply, each call's
outcome), as the live run had it: its answer, status, turns, usage, messages, calls and,
below it, its own subagents. Nothing is asked of a model and no tool runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from shoal.agents.result import AgentResult
from shoal.agents.toolcalls import CallRecord, result_text
from shoal.models.base import ModelResponse, ToolResultMessage, Usage, UserMessage
from shoal.outcome import Outcome

if TYPE_CHECKING:
    from shoal.agents.agent import Agent
    from shoal.store.base import Store

_TURN_PREFIX = "model-"


def replayed_child(store: Store, run_id: str, agent: Agent[Any], record: CallRecord,
                   prompt: str) -> AgentResult[Any]:
    """The result of subagent ``agent`` whose call ``record`` replayed an ``ok`` answer."""
    lineage = record.lineage
    result: AgentResult[Any] = AgentResult(agent.name, lineage, run_id, prompt)
    outcome = record.outcome
    if outcome is not None:
        result.where, result.duration = outcome.where, outcome.duration
    result.isolation = agent.isolation
    steps = f"{run_id}/{lineage}/steps"
    stored = {node: kept.outcome for node, kept in store.outcomes(steps).items()}
    turns = _turns(stored)
    result.messages.append(UserMessage(prompt))
    own = Usage()
    counts: dict[str, int] = {}
    for number, response in enumerate(turns, 1):
        usage = response.usage
        own = own + (usage if usage.requests else replace(usage, requests=1))
        result.messages.append(response.as_message())
        for call in response.tool_calls:
            n = counts[call.name] = counts.get(call.name, 0) + 1
            node = f"{call.name}#{n}"
            kept = stored.get(node)
            where = f"{lineage}/{node}"
            if kept is None:  # never ran (rejected): its reason is not journaled
                message = ToolResultMessage(call.id, call.name, "rejected", True)
                result.calls.append(CallRecord(call, where, "rejected", message, turn=number))
                result.messages.append(message)
                continue
            text, is_error = result_text(kept, call.name)
            message = ToolResultMessage(call.id, call.name, text, is_error)
            done = CallRecord(call, where, kept.status, message, kept, 0.0, number)
            result.calls.append(done)
            result.messages.append(message)
            child = agent.subagents_by_name.get(call.name)
            if child is not None and kept.status == "ok":
                result.children.append(
                    replayed_child(store, run_id, child, done, task_of(call.arguments)))
    result.turns = len(turns)
    result.own_usage = own
    total = own
    for child_result in result.children:
        total = total + child_result.usage
    result.usage = total
    result.status = "ok"
    result.output = _output(agent, turns, record)
    return result


def _turns(stored: Mapping[str, Outcome]) -> list[ModelResponse]:
    """Each model turn's journaled reply, in turn order (``model-N:<digest>`` nodes)."""
    found: dict[int, ModelResponse] = {}
    for node, outcome in stored.items():
        number, _, _ = node.removeprefix(_TURN_PREFIX).partition(":")
        if (node.startswith(_TURN_PREFIX) and number.isdigit() and outcome.status == "ok"
                and isinstance(outcome.value, ModelResponse)):
            found[int(number)] = outcome.value
    return [found[n] for n in sorted(found)]


def _output(agent: Agent[Any], turns: list[ModelResponse], record: CallRecord) -> Any:
    """The answer as the live run had it: the last reply, read by the agent's output type."""
    text = turns[-1].text if turns else record.message.content
    spec = agent.output_spec
    if spec is None:
        return text
    try:
        return spec.parse(text)
    except ValueError:  # (a retried answer's last reply is the one that parsed)
        return text


def task_of(arguments: str) -> str:
    """A subagent call's ``task`` argument (its prompt)."""
    try:
        args = json.loads(arguments)
    except ValueError:
        return arguments
    task = args.get("task") if isinstance(args, dict) else None
    return task if isinstance(task, str) else arguments
