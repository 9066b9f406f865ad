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

from shoal.deps import Edge, Graph, analyze
from shoal.events import (
    Event,
    EventSink,
    JsonlSink,
    NodeCancelled,
    NodeFinished,
    NodeQueued,
    NodeRetrying,
    NodeSkipped,
    NodeStarted,
    RunFinished,
    RunStarted,
)
from shoal.exceptions import (
    CallCancelledError,
    ConfigError,
    DeadlineExceededError,
    ExecutorError,
    MissingDependencyError,
    PlanError,
    PlanProblem,
    RemoteToolError,
    SerializationError,
    ShoalError,
    ToolArgumentError,
    ToolDefinitionError,
    ToolQuarantinedError,
    ToolTimeoutError,
    UpstreamFailedError,
    WorkerCrashedError,
)
from shoal.limits import Rate, parse_rate
from shoal.outcome import ErrorInfo, Outcome, RunResult, Status
from shoal.plan import Node, Plan, Ref
from shoal.runtime import RunHandle, Runtime, run, run_sync
from shoal.scheduler.driver import Snapshot
from shoal.tools import RetryPolicy, Tool, ToolPolicy, tool

__version__ = "0.1.0"

__all__ = [
    "CallCancelledError",
    "ConfigError",
    "DeadlineExceededError",
    "Edge",
    "ErrorInfo",
    "Event",
    "EventSink",
    "ExecutorError",
    "Graph",
    "JsonlSink",
    "MissingDependencyError",
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
    "__version__",
    "analyze",
    "parse_rate",
    "run",
    "run_sync",
    "tool",
]
