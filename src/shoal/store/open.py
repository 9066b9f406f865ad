"""Turning what a user passes as ``Runtime(store=...)`` into a store."""

from __future__ import annotations

from pathlib import Path

from shoal.exceptions import ConfigError
from shoal.merge import shown
from shoal.store.base import Store

__all__ = ["StoreLike", "open_store"]

StoreLike = Store | str | Path


def open_store(store: StoreLike) -> Store:
    """A store from a :class:`Store`, a URL or a path.

    ``"memory"`` (or ``"memory://"``) is a new :class:`~shoal.store.memory.MemoryStore`;
    ``"sqlite:///runs.db"`` (relative), ``"sqlite:////abs/runs.db"`` (absolute) or a path
    (``Path`` or a string ending in ``.db``, ``.sqlite`` or ``.sqlite3``) is a
    :class:`~shoal.store.sqlite.SQLiteStore`.
    """
    if isinstance(store, Path):
        return _sqlite(str(store))
    if not isinstance(store, str):
        if isinstance(store, Store):
            return store
        raise ConfigError(f"store must be a Store, a URL or a path, got {shown(store)}")
    if store in ("memory", "memory://", "memory:"):
        from shoal.store.memory import MemoryStore

        return MemoryStore()
    if store.startswith("sqlite://"):
        path = store.removeprefix("sqlite://")
        if not path.startswith("/") or path == "/":
            raise ConfigError(f"a SQLite URL is 'sqlite:///relative/path.db' or "
                              f"'sqlite:////absolute/path.db', got {shown(store)}")
        return _sqlite(path[1:])
    if store.endswith((".db", ".sqlite", ".sqlite3")) or store == ":memory:":
        return _sqlite(store)
    raise ConfigError(f"unknown store {store!r}: use 'memory', 'sqlite:///path.db', a path "
                      f"ending in .db, or a Store")


def _sqlite(path: str) -> Store:
    from shoal.store.sqlite import SQLiteStore  # sqlite3 loads only when a file is used

    return SQLiteStore(path)
