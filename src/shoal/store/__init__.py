"""The journal: where runs, attempts, outcomes, approvals and events are kept.

:class:`~shoal.store.base.Store` is the contract; :class:`~shoal.store.memory.MemoryStore`
(the library's default) and :class:`~shoal.store.sqlite.SQLiteStore` (the CLI's default,
``.shoal/runs.db``) implement it. :func:`open_store` turns a URL into a store.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shoal.store.base import (
    ApprovalRecord,
    AttemptRecord,
    CancelRequest,
    RunRecord,
    Store,
    StoredOutcome,
    canonical_json,
)
from shoal.store.open import open_store

__all__ = [
    "ApprovalRecord",
    "AttemptRecord",
    "CancelRequest",
    "RunRecord",
    "Store",
    "StoredOutcome",
    "approval_hash",
    "canonical_json",
    "open_store",
]


def approval_hash(tool: str, arguments: Mapping[str, Any]) -> str:
    """:func:`shoal.approvals.approval_hash`, by its former address (the ledger keeps it now).

    A function rather than a re-export: the ledger imports this package's records, so this
    package must not import the ledger when it loads.
    """
    from shoal.approvals.ledger import approval_hash as ledger_hash

    return ledger_hash(tool, arguments)
