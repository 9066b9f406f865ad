"""Approvals: a person (or a rule, or your code) decides whether a call may run.

A tool needs approval with ``@tool(approval=True)``, or ``approval=predicate`` to ask only for
some arguments (``approval=lambda args: args["amount"] > 100``). When such a call's inputs are
ready, the runtime resolves its arguments and sends an :class:`ApprovalRequest` to the run's
:class:`Approver`; the call waits without holding any limit, so calls that need no approval go
on running. Requests that become pending together (in one turn of the event loop, from any run
of the same :class:`~shoal.runtime.Runtime`, subagents' included) reach the approver as one
**batch**, and it answers each with a :class:`Decision`: approve, deny with a reason, or edit
the arguments (the edited call is what gets approved and run).

Built in: :class:`ConsoleApprover` (asks on the terminal, pausing a live view meanwhile; it is
part of the command line, :mod:`shoal.cli.approver`, and loads from here on first use),
:class:`RulesApprover` (allow / deny patterns over tool names, arguments and lineage, with a
fallback approver for the rest) and :class:`CallbackApprover` (your function, sync or async).
A plain callable passed as ``Runtime(approver=fn)`` becomes a :class:`CallbackApprover`.

Guarantees: a decision is bound to :func:`approval_hash` of the exact tool and canonical
arguments, stored, and used once, by one call (its automatic retries included); a denied call
ends ``denied`` with the reason and never runs; no approver, an approver error, a timeout, or
an exhausted approval budget all count as a denial.

The package, by part:

- :mod:`shoal.approvals.policy`: who must approve what (:func:`approval_reason`), the
  request and decision types, and the approvers that decide without a person.
- :mod:`shoal.approvals.ledger`: decisions bound to their arguments (:func:`approval_hash`),
  kept in the run's store or in memory, replayed on resume, used once.
- :mod:`shoal.approvals.desk`: the runtime's desk, which batches, paces and times out
  requests, and each run's place at it, which turns answers into the state machine's inputs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shoal.approvals.ledger import ApprovalLedger, MemoryLedger, approval_hash
from shoal.approvals.policy import (
    ApprovalRequest,
    Approver,
    Callback,
    CallbackApprover,
    Decision,
    Rule,
    RulesApprover,
    Verdict,
    answer_now,
    approval_reason,
    as_approver,
    request_id,
)

if TYPE_CHECKING:
    from shoal.cli.approver import ConsoleApprover

__all__ = [
    "ApprovalLedger",
    "ApprovalRequest",
    "Approver",
    "Callback",
    "CallbackApprover",
    "ConsoleApprover",
    "Decision",
    "MemoryLedger",
    "Rule",
    "RulesApprover",
    "Verdict",
    "answer_now",
    "approval_hash",
    "approval_reason",
    "as_approver",
    "request_id",
]


def __getattr__(name: str) -> Any:
    """``ConsoleApprover``, from the command line's package, on first use.

    It lives with the CLI (a rich UI, a thread reading standard input); importing it from
    here, as before it moved, keeps working without making every program load it.
    """
    if name == "ConsoleApprover":
        from shoal.cli.approver import ConsoleApprover

        globals()[name] = ConsoleApprover  # found directly from now on
        return ConsoleApprover
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
