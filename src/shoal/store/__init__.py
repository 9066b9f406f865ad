"""The journal: where runs, attempts, outcomes, approvals and events are kept.

:class:`~shoal.store.base.Store` is the contract; :class:`~shoal.store.memory.MemoryStore`
(the library's default) and :class:`~shoal.store.sqlite.SQLiteStore` (the CLI's default,
``.shoal/runs.db``) implement it. :func:`open_store` turns a URL into a store.
"""

from __future__ import annotations

from shoal.store.base import (
    ApprovalRecord,
    AttemptRecord,
    CancelRequest,
    RunRecord,
    Store,
    StoredOutcome,
    approval_hash,
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
