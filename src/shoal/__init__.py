"""shoal: run LLM agents whose tool calls and subagents execute side by side.

The public namespace. Everything a user needs is importable from here::

    import shoal

    @shoal.tool(timeout=5.0, retries=2)
    async def search(query: str) -> list[str]: ...

    plan = shoal.Plan()
    a = plan.call(search, query="ray actors")
    result = shoal.run_sync(plan)
    result[a].status, result[a].value
"""

from typing import TYPE_CHECKING

from shoal import _lazy

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time names load on first use
    from shoal import merge, patterns
    from shoal.agents.agent import Agent, AgentHandle
    from shoal.agents.budget import Budget
    from shoal.agents.raw import (
        anthropic_tool_results,
        anthropic_tool_results_sync,
        openai_tool_messages,
        openai_tool_messages_sync,
    )
    from shoal.agents.result import AgentResult
    from shoal.agents.toolcalls import CallRecord, execute_calls
    from shoal.approvals import (
        ApprovalRequest,
        Approver,
        CallbackApprover,
        ConsoleApprover,
        Decision,
        Rule,
        RulesApprover,
    )
    from shoal.board import Board, BoardConflict, BoardHandle
    from shoal.clock import Clock
    from shoal.deps import Edge, Graph, analyze
    from shoal.events import (
        AgentFinished,
        AgentStarted,
        ApprovalDecided,
        ApprovalRequested,
        Event,
        EventsDropped,
        EventSink,
        JsonlSink,
        ModelResponded,
        ModelRetrying,
        ModelServerStarted,
        ModelServerStarting,
        NodeCancelled,
        NodeFinished,
        NodeQueued,
        NodeRetrying,
        NodeSkipped,
        NodeStarted,
        PlanCallParsed,
        RunFinished,
        RunStarted,
        TextDelta,
        ToolCallRejected,
    )
    from shoal.exceptions import (
        AgentError,
        ArgumentTypeError,
        AsyncOnlyError,
        BoardError,
        BoardKeyError,
        BoardValueError,
        BudgetExceeded,
        ConfigError,
        ExecutorError,
        JournalDamagedError,
        JournalWriteError,
        MaxReplansExceeded,
        MaxTurnsExceeded,
        MCPServerError,
        MCPToolError,
        MissingAPIKeyError,
        MissingDependencyError,
        ModelConnectionError,
        ModelError,
        ModelHTTPError,
        NoEventLoopError,
        NoThreadError,
        OutputValidationError,
        PlanChangedError,
        PlanError,
        PlanProblem,
        RemoteToolError,
        RunActiveError,
        RunClosedError,
        RunNotEndedError,
        RunNotFoundError,
        ScriptError,
        SelfWaitError,
        SerializationError,
        ShoalError,
        StoreError,
        StoreVersionError,
        ToolArgumentError,
        ToolDefinitionError,
        ToolQuarantinedError,
        ToolTimeoutError,
        UpstreamFailedError,
        WorkerCrashedError,
    )
    from shoal.integrations import mcp as mcp  # shoal.mcp, which __all__ leaves out
    from shoal.integrations import otel
    from shoal.limits import Rate, parse_rate
    from shoal.models.base import Model, ModelRequest, ModelResponse, ModelSettings, ToolCall, Usage
    from shoal.outcome import ErrorInfo, Outcome, RunResult, Status
    from shoal.plan import Node, Plan, Ref
    from shoal.runtime import RunHandle, Runtime, run, run_sync, stream
    from shoal.scheduler.driver import Snapshot
    from shoal.schema import IdempotencyKey
    from shoal.store.base import Store
    from shoal.store.memory import MemoryStore
    from shoal.store.sqlite import SQLiteStore
    from shoal.streaming import EventStream
    from shoal.tools import RetryPolicy, Tool, ToolPolicy, tool

__version__ = "0.1.0"

# Each public name and the module that defines it. Loading modules on first use (PEP 562) keeps
# `import shoal` cheap for the CLI and for worker processes that need only part of the package.
_EXPORTS = {
    "openai_tool_messages": "shoal.agents.raw",
    "openai_tool_messages_sync": "shoal.agents.raw",
    "anthropic_tool_results": "shoal.agents.raw",
    "anthropic_tool_results_sync": "shoal.agents.raw",
    "Agent": "shoal.agents.agent",
    "AgentHandle": "shoal.agents.agent",
    "AgentResult": "shoal.agents.result",
    "Budget": "shoal.agents.budget",
    "execute_calls": "shoal.agents.toolcalls",
    "CallRecord": "shoal.agents.toolcalls",
    "AgentError": "shoal.exceptions",
    "BudgetExceeded": "shoal.exceptions",
    "MaxTurnsExceeded": "shoal.exceptions",
    "MaxReplansExceeded": "shoal.exceptions",
    "MCPServerError": "shoal.exceptions",
    "MCPToolError": "shoal.exceptions",
    "ModelError": "shoal.exceptions",
    "ModelHTTPError": "shoal.exceptions",
    "ModelConnectionError": "shoal.exceptions",
    "MissingAPIKeyError": "shoal.exceptions",
    "OutputValidationError": "shoal.exceptions",
    "ScriptError": "shoal.exceptions",
    "AgentStarted": "shoal.events",
    "AgentFinished": "shoal.events",
    "ModelRetrying": "shoal.events",
    "ModelServerStarting": "shoal.events",
    "ModelServerStarted": "shoal.events",
    "ModelResponded": "shoal.events",
    "ToolCallRejected": "shoal.events",
    "PlanCallParsed": "shoal.events",
    # streaming a run to its caller
    "EventStream": "shoal.streaming",
    "EventsDropped": "shoal.events",
    "stream": "shoal.runtime",
    "TextDelta": "shoal.events",
    "Model": "shoal.models.base",
    "ModelRequest": "shoal.models.base",
    "ModelResponse": "shoal.models.base",
    "ModelSettings": "shoal.models.base",
    "ToolCall": "shoal.models.base",
    "Usage": "shoal.models.base",
    "analyze": "shoal.deps",
    # the shared board
    "Board": "shoal.board",
    "BoardConflict": "shoal.board",
    "BoardHandle": "shoal.board",
    "BoardError": "shoal.exceptions",
    "BoardKeyError": "shoal.exceptions",
    "BoardValueError": "shoal.exceptions",
    "merge": "shoal.board",
    "ApprovalRequest": "shoal.approvals",
    "Approver": "shoal.approvals",
    "CallbackApprover": "shoal.approvals",
    "ConsoleApprover": "shoal.approvals",
    "Decision": "shoal.approvals",
    "Rule": "shoal.approvals",
    "RulesApprover": "shoal.approvals",
    "ApprovalDecided": "shoal.events",
    "ApprovalRequested": "shoal.events",
    "Clock": "shoal.clock",
    "ConfigError": "shoal.exceptions",
    "Edge": "shoal.deps",
    "ErrorInfo": "shoal.outcome",
    "Event": "shoal.events",
    "EventSink": "shoal.events",
    "ExecutorError": "shoal.exceptions",
    "Graph": "shoal.deps",
    "JsonlSink": "shoal.events",
    "MissingDependencyError": "shoal.exceptions",
    "NoThreadError": "shoal.exceptions",
    "Node": "shoal.plan",
    "NodeCancelled": "shoal.events",
    "NodeFinished": "shoal.events",
    "NodeQueued": "shoal.events",
    "NodeRetrying": "shoal.events",
    "NodeSkipped": "shoal.events",
    "NodeStarted": "shoal.events",
    "Outcome": "shoal.outcome",
    "parse_rate": "shoal.limits",
    "Plan": "shoal.plan",
    "PlanError": "shoal.exceptions",
    "PlanProblem": "shoal.exceptions",
    "Rate": "shoal.limits",
    "Ref": "shoal.plan",
    "RemoteToolError": "shoal.exceptions",
    "RetryPolicy": "shoal.tools",
    "run": "shoal.runtime",
    "run_sync": "shoal.runtime",
    "RunFinished": "shoal.events",
    "RunHandle": "shoal.runtime",
    "RunResult": "shoal.outcome",
    "RunStarted": "shoal.events",
    "Runtime": "shoal.runtime",
    "SerializationError": "shoal.exceptions",
    "ShoalError": "shoal.exceptions",
    "Snapshot": "shoal.scheduler.driver",
    "Status": "shoal.outcome",
    "Tool": "shoal.tools",
    "tool": "shoal.tools",
    "ToolArgumentError": "shoal.exceptions",
    "ToolDefinitionError": "shoal.exceptions",
    "ToolPolicy": "shoal.tools",
    "ToolQuarantinedError": "shoal.exceptions",
    "ToolTimeoutError": "shoal.exceptions",
    "UpstreamFailedError": "shoal.exceptions",
    "WorkerCrashedError": "shoal.exceptions",
    # the journal and resume
    "IdempotencyKey": "shoal.schema",
    "MemoryStore": "shoal.store.memory",
    "JournalDamagedError": "shoal.exceptions",
    "JournalWriteError": "shoal.exceptions",
    "PlanChangedError": "shoal.exceptions",
    "RunActiveError": "shoal.exceptions",
    "RunClosedError": "shoal.exceptions",
    "RunNotEndedError": "shoal.exceptions",
    "SelfWaitError": "shoal.exceptions",
    "NoEventLoopError": "shoal.exceptions",
    "AsyncOnlyError": "shoal.exceptions",
    "ArgumentTypeError": "shoal.exceptions",
    "RunNotFoundError": "shoal.exceptions",
    "SQLiteStore": "shoal.store.sqlite",
    "Store": "shoal.store.base",
    "StoreError": "shoal.exceptions",
    "StoreVersionError": "shoal.exceptions",
}


# Submodules reachable as attributes of ``shoal`` without importing them first.
# ``mcp`` and ``otel`` need the extras of those names: without one, using it raises
# MissingDependencyError.
_SUBMODULES = {"patterns": "shoal.patterns", "otel": "shoal.integrations.otel",
               "mcp": "shoal.integrations.mcp"}


# Never raised, so no longer exported (see shoal.exceptions); kept for one release.
_DEPRECATED = {
    name: _lazy.Deprecated("shoal.exceptions", f"_{name}",
                           f"shoal.{name} is deprecated and will be removed in the next "
                           f"release: nothing raises it (a {what})")
    for name, what in (("CallCancelledError", "cancelled call's outcome is 'cancelled'"),
                       ("DeadlineExceededError", "call running at the deadline ends "
                                                 "'timed_out'"))
}

__getattr__, __dir__ = _lazy.lazy_attributes(__name__, globals(), _EXPORTS,
                                             submodules=_SUBMODULES, deprecated=_DEPRECATED)


__all__ = [
    "openai_tool_messages",
    "openai_tool_messages_sync",
    "anthropic_tool_results",
    "anthropic_tool_results_sync",
    "ApprovalRequest",
    "Approver",
    "Board",
    "BoardConflict",
    "BoardError",
    "BoardHandle",
    "BoardKeyError",
    "BoardValueError",
    "merge",
    "CallbackApprover",
    "ConsoleApprover",
    "Decision",
    "Rule",
    "RulesApprover",
    "ApprovalDecided",
    "ApprovalRequested",
    "Agent",
    "AgentHandle",
    "AgentResult",
    "Budget",
    "execute_calls",
    "CallRecord",
    "AgentError",
    "BudgetExceeded",
    "MaxTurnsExceeded",
    "MaxReplansExceeded",
    "MCPServerError",
    "MCPToolError",
    "ModelError",
    "ModelHTTPError",
    "ModelConnectionError",
    "MissingAPIKeyError",
    "OutputValidationError",
    "ScriptError",
    "AgentStarted",
    "AgentFinished",
    "ModelResponded",
    "ModelRetrying",
    "ModelServerStarting",
    "ModelServerStarted",
    "ToolCallRejected",
    "PlanCallParsed",
    "EventStream",
    "EventsDropped",
    "TextDelta",
    "Model",
    "ModelRequest",
    "ModelResponse",
    "ModelSettings",
    "ToolCall",
    "Usage",
    "Clock",
    "ConfigError",
    "Edge",
    "ErrorInfo",
    "Event",
    "EventSink",
    "ExecutorError",
    "Graph",
    "JsonlSink",
    "MissingDependencyError",
    "NoThreadError",
    "Node",
    "NodeCancelled",
    "NodeFinished",
    "NodeQueued",
    "NodeRetrying",
    "NodeSkipped",
    "NodeStarted",
    "Outcome",
    "Plan",
    "PlanError",
    "PlanProblem",
    "Rate",
    "Ref",
    "RemoteToolError",
    "RetryPolicy",
    "RunFinished",
    "RunHandle",
    "RunResult",
    "RunStarted",
    "Runtime",
    "SerializationError",
    "ShoalError",
    "Snapshot",
    "Status",
    "Tool",
    "ToolArgumentError",
    "ToolDefinitionError",
    "ToolPolicy",
    "ToolQuarantinedError",
    "ToolTimeoutError",
    "UpstreamFailedError",
    "WorkerCrashedError",
    "IdempotencyKey",
    "MemoryStore",
    "PlanChangedError",
    "RunNotFoundError",
    "SQLiteStore",
    "Store",
    "StoreError",
    "StoreVersionError",
    "JournalDamagedError",
    "JournalWriteError",
    "RunActiveError",
    "RunClosedError",
    "RunNotEndedError",
    "SelfWaitError",
    "NoEventLoopError",
    "AsyncOnlyError",
    "ArgumentTypeError",
    "__version__",
    "analyze",
    "otel",
    "parse_rate",
    "patterns",
    "run",
    "run_sync",
    "stream",
    "tool",
]
