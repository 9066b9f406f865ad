"""The SQLite journal: one file (``.shoal/runs.db`` for the CLI) that survives ``kill -9``.

The file is in WAL mode with ``synchronous=FULL``: a committed transaction is on disk before
``commit`` returns, and readers (``shoal runs`` in another terminal) never block the writer.
Each :meth:`SQLiteStore.write` is one transaction, and so is each approval request or
decision, unless made inside :meth:`SQLiteStore.batch` (writes made together: one commit).
The schema has a version (table ``meta``); opening a file written by a newer shoal raises
:class:`~shoal.exceptions.StoreVersionError` naming both versions, rather than misreading it.

Values are stored as described in :mod:`shoal.store.codec` (JSON where exact, else a pickle
plus a JSON view, else the view alone). The connection is shared by the threads of one
process under a lock; other processes use their own (SQLite serialises writers, and waits up
to ``timeout`` seconds for a lock).
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import logging
import math
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from shoal import __version__
from shoal.events import Event
from shoal.exceptions import (
    ConfigError,
    JournalDamagedError,
    RunActiveError,
    RunNotFoundError,
    StoreError,
    StoreVersionError,
)
from shoal.merge import shown
from shoal.outcome import STATUSES, ErrorInfo, Outcome, UndecodedText, id_joined, jsonable
from shoal.store.base import (
    DECISIONS,
    RUN_STATUSES,
    ApprovalRecord,
    AttemptEnded,
    AttemptRecord,
    AttemptStarted,
    CancelRequest,
    Decision,
    EffectRecord,
    EventRecord,
    OutcomeRecord,
    Record,
    RunEnded,
    RunRecord,
    StoredEffect,
    StoredOutcome,
)
from shoal.store.claims import (
    FileClaim,
    LocalClaims,
    RunClaim,
    record_beats,
    write_lock_holder,
)
from shoal.store.codec import (
    DamagedValueError,
    decode_arguments,
    decode_value,
    encode_arguments,
    encode_value,
    view_value,
)

__all__ = ["DEFAULT_PATH", "SCHEMA_VERSION", "SQLiteStore"]

DEFAULT_PATH = Path(".shoal") / "runs.db"
#: seconds SQLite waits for a lock per try: after the first, a wait is said (see _patiently)
LOCK_NOTICE = 1.0
log = logging.getLogger("shoal")
_T = TypeVar("_T")
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL,
    started_at REAL NOT NULL, finished_at REAL, nodes INTEGER NOT NULL,
    fingerprint TEXT NOT NULL, plan TEXT NOT NULL, source TEXT NOT NULL,
    counts TEXT NOT NULL, makespan REAL NOT NULL, sessions INTEGER NOT NULL,
    heartbeat REAL NOT NULL, pid INTEGER NOT NULL, host TEXT NOT NULL,
    pid_start TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS runs_by_start ON runs (started_at);
CREATE TABLE IF NOT EXISTS attempts (
    run_id TEXT NOT NULL, session INTEGER NOT NULL, node_id TEXT NOT NULL,
    attempt INTEGER NOT NULL, tool TEXT NOT NULL, executor TEXT NOT NULL,
    started_at REAL NOT NULL, ended_at REAL, status TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '', held TEXT NOT NULL DEFAULT '',
    ran_on TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, session, node_id, attempt));
CREATE TABLE IF NOT EXISTS outcomes (
    run_id TEXT NOT NULL, node_id TEXT NOT NULL, position INTEGER NOT NULL,
    tool TEXT NOT NULL, status TEXT NOT NULL, encoding TEXT NOT NULL, value BLOB,
    view TEXT, error TEXT, reason TEXT NOT NULL, attempts INTEGER NOT NULL,
    queued_at REAL, started_at REAL, finished_at REAL, executor TEXT NOT NULL,
    abandoned INTEGER NOT NULL, ran_on TEXT NOT NULL DEFAULT '',
    interrupted TEXT NOT NULL DEFAULT '', edited TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, node_id));
CREATE TABLE IF NOT EXISTS approvals (
    id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, node_id TEXT NOT NULL, tool TEXT NOT NULL,
    args_hash TEXT NOT NULL, arguments TEXT NOT NULL, kind TEXT NOT NULL,
    requested_at REAL NOT NULL, decision TEXT NOT NULL, decided_by TEXT NOT NULL,
    decided_at REAL, reason TEXT NOT NULL, used INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS approvals_by_call ON approvals (run_id, node_id, args_hash);
CREATE TABLE IF NOT EXISTS cancels (
    id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, node_ids TEXT NOT NULL,
    reason TEXT NOT NULL, requested_at REAL NOT NULL, taken INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS cancels_by_run ON cancels (run_id, taken);
CREATE TABLE IF NOT EXISTS effects (
    id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, node_id TEXT NOT NULL, kind TEXT NOT NULL,
    encoding TEXT NOT NULL, value BLOB, view TEXT, UNIQUE (run_id, node_id, kind));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_run ON events (run_id);
"""

# the tables every journal has had since version 1 (effects came later: added on opening)
_CORE_TABLES = {"meta", "runs", "attempts", "outcomes", "approvals", "cancels", "events"}

_EFFECTS_TABLE = _SCHEMA[_SCHEMA.index("CREATE TABLE IF NOT EXISTS effects"):].split(";")[0]
# Added to files written before attempts said which limit held them, and before attempts and
# outcomes said where they ran (no version change: an older shoal reads the file as ever,
# ignoring the columns).
# The same for runs' ``pid_start`` (which process their pid was); a run without one is judged
# by its pid alone, as before; and for outcomes' ``interrupted`` ('1' for a call stopped while
# its tool ran, '0' not, see :class:`~shoal.outcome.Outcome`): a stopped call's outcome without
# it (an older shoal's) reads as interrupted if it had started, since it may have run. And
# for outcomes' ``edited`` (the JSON of the arguments an approver's edit ran, see
# :attr:`~shoal.outcome.Outcome.edited_args`; '' for a call run as asked).
_ADDED_COLUMNS = {("attempts", "held"), ("attempts", "ran_on"), ("outcomes", "ran_on"),
                  ("runs", "pid_start"), ("outcomes", "interrupted"), ("outcomes", "edited")}

_STOPPED = ("cancelled", "timed_out")  # the statuses of a call that may have been stopped mid-call
_RUN_COLUMNS = ("run_id, name, status, started_at, finished_at, nodes, fingerprint, plan, "
                "source, counts, makespan, sessions, heartbeat, pid, host, pid_start")
_OUTCOME_COLUMNS = ("node_id, tool, status, encoding, value, view, error, reason, attempts, "
                    "queued_at, started_at, finished_at, executor, abandoned, ran_on, interrupted, "
                    "edited")
#: rows per statement of many (see _Bound.rows), largest first: a batch of rows takes few
#: statements (those of 128 rows, then at most one of each smaller size), and few texts of
#: statements are prepared (SQLite allows 32,766 parameters: 128 rows of 19 are 2,432)
_CHUNKS = (128, 64, 32, 16, 8, 4, 2, 1)
_APPROVAL_COLUMNS = ("run_id, node_id, tool, args_hash, arguments, kind, requested_at, "
                     "decision, decided_by, decided_at, reason, used")


class _Bound:
    """The connection, binding every parameter as SQLite can store it (see :func:`_bind`)."""

    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """``conn.execute`` with bound parameters."""
        return self.conn.execute(sql, _bind(params))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> sqlite3.Cursor:
        """``conn.executemany`` with bound parameters."""
        return self.conn.executemany(sql, map(_bind, rows))

    def rows(self, head: str, width: int, rows: Sequence[Sequence[Any]]) -> None:
        """``head`` (an ``INSERT``), then ``rows`` of ``width`` values as one ``VALUES`` list.

        A statement per chunk of rows (see :func:`_chunks`), not per row: SQLite releases
        the GIL for each step of a statement, and ``executemany`` steps once per row, so the
        journal's writer waited to retake the GIL once per row (up to the interpreter's
        switch interval each, while the loop's thread ran), and a swarm's steps waited for it.
        """
        for chunk in _chunks(rows):
            params = [param for row in chunk for param in _bind(row)]
            self.conn.execute(_values_sql(head, width, len(chunk)), params)


    def updates(self, table: str, columns: tuple[str, ...], keys: tuple[str, ...],
                rows: Sequence[Sequence[Any]]) -> None:
        """``UPDATE table SET columns`` for each row (its ``columns``' values, then its keys).

        As a few statements, not one per row (see :meth:`rows`): the rows go into a temporary
        table keyed as ``table`` is (the last row for a key wins, as it did updated in order),
        then one ``UPDATE ... FROM`` sets them. A row whose key ``table`` lacks sets nothing.
        A swarm of 1,000 agents ended 11,000 attempts a run, one statement each.
        """
        staged = f"temp.shoal_set_{table}_{'_'.join(columns)}"  # one per kind of update
        names = ", ".join((*columns, *keys))
        self.conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {staged.removeprefix('temp.')} "
                          f"({names}, "
                          f"PRIMARY KEY ({', '.join(keys)}))")
        self.conn.execute(f"DELETE FROM {staged}")
        self.rows(f"INSERT OR REPLACE INTO {staged} ({names}) VALUES ", len(columns) + len(keys),
                  rows)
        sets = ", ".join(f"{c} = s.{c}" for c in columns)
        match = " AND ".join(f"{table}.{k} = s.{k}" for k in keys)
        self.conn.execute(f"UPDATE {table} SET {sets} FROM {staged} AS s WHERE {match}")
        self.conn.execute(f"DELETE FROM {staged}")


class SQLiteStore:
    """A :class:`~shoal.store.base.Store` in a SQLite file (WAL, ``synchronous=FULL``).

    Args:
        path: the database file (its directory is created); the text ``":memory:"`` for a
            private, non-persistent database (tests; a path object ``Path(":memory:")`` names
            a file). A name starting ``file:`` is a file of that name, not a URI.
        keep_events: also journal every event of every run. Off by default: attempts and
            outcomes already hold what resume and ``shoal show`` need, and events roughly
            double the journal's cost per call (``shoal run`` turns them on).
        timeout: seconds to wait for another process's lock before failing.
        read_only: only read the file (``shoal runs`` and ``show`` of a journal on a read-only
            file or file system); every write raises :class:`~shoal.exceptions.StoreError`.
    """

    durable = True

    def __init__(self, path: str | Path = DEFAULT_PATH, *, keep_events: bool = False,
                 timeout: float = 30.0, read_only: bool = False) -> None:
        if not isinstance(path, str | os.PathLike):  # str() would make a file of any value
            raise ConfigError(f"a SQLite journal's path is a str or a path, got "
                              f"{type(path).__name__} {shown(path)}")
        # ":memory:" as text is SQLite's private database; a path object names a file
        # (``shoal run --store :memory:`` journals to a file of that name, not nowhere)
        self.path = str(path) if isinstance(path, str) or str(path) != ":memory:" else (
            "./:memory:")
        self.keeps_events = keep_events
        self.read_only = read_only and self.path != ":memory:"
        self._timeout = timeout
        self._lock = threading.RLock()
        self._depth = 0  # transactions and savepoints open (on the thread holding _lock)
        self._said_wait = False  # a wait for a lock held elsewhere was said (_waiting)
        self._claims = LocalClaims()  # for ":memory:", which no other process can open
        # columns of _ADDED_COLUMNS that a file opened read-only lacks (older files: _setup)
        self._lacking: set[tuple[str, str]] = set()
        if self.path != ":memory:":
            self._check_path()
        try:  # a short wait per try: a longer one is said (see _patiently)
            self._conn = self._connect(min(timeout, LOCK_NOTICE))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the journal {self.path!r}: {exc}") from exc
        try:
            self._setup()
        except BaseException:
            self._conn.close()
            raise

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.path!r}>"

    def _check_path(self) -> None:
        """Refuse a path no journal file can be at, saying why (SQLite's own words are vague).

        Also makes the file's folder (for writing), so a folder that cannot be made is a
        :class:`StoreError` too, not an ``OSError`` from deep inside.
        """
        where = Path(self.path)
        try:
            if "\0" in self.path:
                raise ValueError("a path cannot hold a NUL character")
            _check_links(where)
            if where.exists() and not where.is_file():
                kind = ("a folder" if where.is_dir()
                        else "not a regular file (a FIFO, socket or device)")
                raise ValueError(f"it is {kind}; name a file, such as runs.db, instead")
            if not self.read_only:
                try:
                    where.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise ValueError(f"its folder cannot be made ({exc})") from exc
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot open the journal {self.path!r}: {exc}") from exc

    def _connect(self, timeout: float) -> sqlite3.Connection:
        """The connection: read-write, or (``read_only``) as read-only as the file needs."""
        if not self.read_only:
            return sqlite3.connect(_file_name(self.path), timeout=timeout,
                                   isolation_level=None, check_same_thread=False)
        if not Path(self.path).is_file():
            raise sqlite3.OperationalError("no such file")
        uri = Path(self.path).resolve().as_uri()
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=timeout,
                               isolation_level=None, check_same_thread=False)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
        except sqlite3.OperationalError:  # WAL, and its shared memory file cannot be made
            conn.close()  # the folder is read-only: no process can be writing the file
            if unread_wal(self.path):  # opened as immutable, the file would lack its end
                raise StoreError(
                    f"cannot read the journal {self.path!r}: its latest writes are in "
                    f"{self.path + '-wal'!r} (its writer stopped before moving them into the "
                    "file), which SQLite reads only with a -shm file it cannot make in this "
                    "read-only folder: copy both files to a writable folder and read the "
                    "copy, or make this folder writable") from None
            return sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None,
                                   check_same_thread=False)
        return conn

    def _setup(self) -> None:
        if self.read_only:
            self._check_readable()
            return
        try:
            # before WAL mode is set (it stays set in the file): another program's database,
            # or a newer shoal's journal, is refused without being changed at all
            found, outdated = self._patiently(self._prepare)
            if found is not None and not outdated:
                # nothing to write: no write lock is taken, so a journal another process
                # holds locked for a long while (a stopped shoal run, a long commit) still
                # opens at once for shoal runs and shoal show, which only read it
                return
            with self._tx() as db:
                found = self._schema_version(db)
                if found is None:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            db.execute(statement)
                    db.executemany("INSERT INTO meta VALUES (?, ?)", [
                        ("schema_version", str(SCHEMA_VERSION)), ("created_by", __version__)])
                else:
                    self._refuse_newer(found)
                    # a file from before calls had effects (board writes): add their table
                    db.execute(_EFFECTS_TABLE)
                    for table, column in self._lacks(db):  # or before newer columns
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT NOT NULL "
                                   "DEFAULT ''")
        except sqlite3.DatabaseError as exc:
            raise self._unusable(exc) from exc

    def _prepare(self) -> tuple[int | None, bool]:
        """WAL mode on; the journal's schema version and whether it lacks newer tables."""
        found = self._schema_version(_Bound(self._conn))
        self._refuse_newer(found)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        return found, found is not None and self._outdated(_Bound(self._conn))

    def _outdated(self, db: _Bound) -> bool:
        """Whether a journal of this version lacks a table or columns added since it was made."""
        found = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                           "name = 'effects'").fetchone()
        return found is None or bool(self._lacks(db))

    def _unusable(self, exc: sqlite3.DatabaseError) -> StoreError:
        """The error for a file that could not be opened as a journal."""
        if _busy(exc):  # usable, but another process holds it: not the file's fault
            return StoreError(f"cannot open the journal {self.path!r}: {exc}"
                              f"{self._busy_note(exc)}")
        read_only = _read_only_note(self.path)
        if read_only:  # a journal, but this process cannot write it: not the file's fault
            return StoreError(f"cannot write to the journal {self.path!r}: {exc}{read_only}")
        return StoreError(f"{self.path!r} is not a usable shoal journal: {exc}"
                          f"{_damage_note(self.path, exc)}")

    def _busy_note(self, exc: BaseException) -> str:
        """What to do about a lock another process holds ('' for other errors)."""
        if not _busy(exc):
            return ""
        return (f" (another process has held it locked for over {self._timeout:g} s, "
                "longer than this store waits: try again once that process is done with it, "
                "or use another file)")

    def _check_readable(self) -> None:
        """The version check of :meth:`_setup`, for a file this store only reads."""
        try:
            found = self._patiently(lambda: self._schema_version(_Bound(self._conn)))
        except sqlite3.DatabaseError as exc:
            raise self._unusable(exc) from exc
        if found is None:
            raise StoreError(f"{self.path!r} holds no shoal journal yet (it is empty)")
        self._refuse_newer(found)
        self._lacking = self._lacks(_Bound(self._conn))

    def _refuse_newer(self, found: int | None) -> None:
        """Raise :class:`StoreVersionError` for a file a newer shoal wrote."""
        if found is not None and found > SCHEMA_VERSION:
            raise StoreVersionError(self.path, found, SCHEMA_VERSION)

    @staticmethod
    def _lacks(db: _Bound) -> set[tuple[str, str]]:
        """The columns of :data:`_ADDED_COLUMNS` that the file lacks (files from before them)."""
        lacking: set[tuple[str, str]] = set()
        for table in {table for table, _ in _ADDED_COLUMNS}:
            columns = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
            lacking |= {(t, c) for t, c in _ADDED_COLUMNS
                        if t == table and columns and c not in columns}
        return lacking

    def _column(self, table: str, column: str) -> str:
        """``column``, or ``''`` in its place in a read-only file from before it."""
        return "''" if (table, column) in self._lacking else column

    def _run_columns(self) -> str:
        """:data:`_RUN_COLUMNS`, as a read-only file from before ``pid_start`` has them."""
        return _RUN_COLUMNS.replace("pid_start", self._column("runs", "pid_start"))

    def _schema_version(self, db: _Bound) -> int | None:
        """The journal's schema version (1 and up); ``None`` for a file not yet a journal.

        ``None`` only for a file with no tables at all (an empty file, a new one), which
        :meth:`_setup` makes a journal; a version below 1 is damage, never "new".
        """
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            # no tables, but marked by the program that made it (shoal never sets these)
            marks = {name: db.execute(f"PRAGMA {name}").fetchone()[0]
                     for name in ("user_version", "application_id")}
            if any(marks.values()):
                raise StoreError(f"{self.path!r} is a SQLite database of another program, not a "
                                 f"shoal journal (it has no tables, but "
                                 f"{', '.join(f'{k}={v}' for k, v in marks.items() if v)})")
            return None
        if "meta" not in tables:
            raise StoreError(f"{self.path!r} is a SQLite database but not a shoal journal "
                             f"(it has tables {sorted(tables)[:5]})")
        row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            raise StoreError(f"{self.path!r} has no schema version; it is not a shoal journal")
        try:
            version = int(row[0])
        except (TypeError, ValueError):
            raise JournalDamagedError(
                self.path, [f"meta.schema_version: {_shown(row[0])} is not a version number"],
            ) from None
        lacking = sorted(_CORE_TABLES - tables)
        if lacking and version <= SCHEMA_VERSION:  # another program's 'meta', not ours
            raise StoreError(f"{self.path!r} is not a shoal journal, or a damaged one: it has a "
                             f"schema version but lacks the tables {lacking}")
        if version < 1:  # no shoal wrote it; a file not yet made a journal has no tables
            raise JournalDamagedError(self.path, [
                f"meta.schema_version: {version} is no version shoal writes (they start at 1): "
                "restore the journal from a copy, or move it aside and start a new one"])
        return version

    @contextmanager
    def _tx(self) -> Iterator[_Bound]:
        """One write transaction (taking the write lock at once, so it cannot deadlock).

        Inside :meth:`batch` (on the thread that holds it), a savepoint of the batch's
        transaction instead: undone alone if it fails, committed with the batch.
        """
        with self._lock:
            if self._depth:
                yield from self._savepoint()
                return
            self._patiently(self._begin)
            self._depth = 1
            try:
                yield _Bound(self._conn)
            except BaseException:
                self._depth = 0
                self._conn.execute("ROLLBACK")
                raise
            self._depth = 0
            try:  # SQLite keeps the transaction open when COMMIT is busy: tried again
                self._patiently(self._commit)
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _begin(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def _commit(self) -> None:
        self._conn.execute("COMMIT")

    def _patiently(self, step: Callable[[], _T]) -> _T:
        """``step()``, tried again while another process holds the file locked, saying so.

        Each try waits :data:`LOCK_NOTICE` seconds at most (SQLite's busy timeout), so a wait
        longer than that is said on the ``shoal`` logger (stderr in the CLI) rather than
        silent; the tries stop once the store's ``timeout`` has passed. A step that finds no
        lock runs once, with nothing more done.
        """
        try:
            return step()
        except sqlite3.OperationalError as exc:
            if not _held_elsewhere(exc) or self._timeout <= LOCK_NOTICE:
                raise
        return self._waiting(step, time.monotonic() - min(self._timeout, LOCK_NOTICE))

    def _waiting(self, step: Callable[[], _T], started: float) -> _T:
        """The tries of :meth:`_patiently` after its first, until ``timeout`` has passed."""
        if not self._said_wait:  # once until a wait ends well: a stopping run's last
            self._said_wait = True  # records wait again, and need not say it twice
            holder = write_lock_holder(self.path, self.lock_folder)  # read only now
            log.warning("waiting for the journal %s: another process holds it locked%s; "
                        "waiting up to %g s", self.path, f" ({holder})" if holder else "",
                        self._timeout)
        while (left := self._timeout - (time.monotonic() - started)) > LOCK_NOTICE:
            try:
                done = step()
            except sqlite3.OperationalError as exc:
                if not _held_elsewhere(exc):
                    raise
            else:
                self._said_wait = False
                return done
        # the last try waits only what is left, so that the whole wait is the timeout
        self._conn.execute(f"PRAGMA busy_timeout = {max(int(left * 1000), 1)}")
        try:
            done = step()
        finally:
            self._conn.execute(f"PRAGMA busy_timeout = {int(LOCK_NOTICE * 1000)}")
        self._said_wait = False
        return done

    def _savepoint(self) -> Iterator[_Bound]:
        """A savepoint in the transaction of the batch this thread holds (under the lock)."""
        if not self._conn.in_transaction:  # SQLite rolled it back (a full disk, say)
            raise sqlite3.OperationalError("the batch's transaction was rolled back")
        name = f"shoal_{self._depth}"
        self._conn.execute(f"SAVEPOINT {name}")
        self._depth += 1
        try:
            yield _Bound(self._conn)
        except BaseException:
            self._depth -= 1
            if self._conn.in_transaction:
                self._conn.execute(f"ROLLBACK TO {name}")
                self._conn.execute(f"RELEASE {name}")
            raise
        self._depth -= 1
        self._conn.execute(f"RELEASE {name}")

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Make the writes of this thread inside one transaction, committed when it ends.

        For writes made together (the approval requests of one turn, an approval and its
        use): one commit, one sync to disk, instead of one each. A write inside that fails
        is undone alone (a savepoint) and raises as it would outside; an exception leaving
        the block undoes them all. Other threads' writes wait until the block ends, so keep
        it short and never wait inside it. Raises :class:`~shoal.exceptions.StoreError` if
        the transaction cannot begin or commit: then none of the writes inside is stored.
        """
        with self._writing():
            yield

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            with self._lock:
                return self._patiently(lambda: _fetch_all(self._conn, sql, params))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the journal {self.path!r}: {exc}"
                             f"{self._busy_note(exc) or _damage_note(self.path, exc)}"
                             ) from exc

    @contextmanager
    def _writing(self) -> Iterator[_Bound]:
        """A write transaction whose SQLite errors become :class:`StoreError`."""
        try:
            with self._tx() as db:
                yield db
        except (sqlite3.Error, ValueError, OverflowError) as exc:  # a value SQLite cannot hold
            raise StoreError(f"cannot write to the journal {self.path!r}: {exc}"
                             f"{self._write_note(exc)}") from exc

    def _write_note(self, exc: BaseException) -> str:
        """What to do about a failed write: a lock held elsewhere, a read-only file, a full disk."""
        if not isinstance(exc, sqlite3.Error):
            return ""
        return (self._busy_note(exc) or _read_only_note(self.path)
                or (_FULL_NOTE if getattr(exc, "sqlite_errorname", "") in _FULL else "")
                or _damage_note(self.path, exc))

    # ---- writing ------------------------------------------------------------------------

    def write(self, records: Sequence[Record]) -> None:
        """Store ``records`` in one transaction: run rows, attempts, outcomes, events, ends.

        Rows inserted are written by few statements of many rows (see :meth:`_Bound.rows`),
        rows updated (an attempt's or a run's end) one by one; in order within each kind.
        """
        runs, starts, ends, outcomes, events, finished, effects = _split(records)
        with self._writing() as db:
            if runs:
                db.rows(f"INSERT OR REPLACE INTO runs ({_RUN_COLUMNS}) VALUES ", 16,
                        [_run_row(r) for r in runs])
            if starts:
                db.rows("INSERT OR REPLACE INTO attempts (run_id, session, node_id, attempt, "
                        "tool, executor, started_at, held) VALUES ", 8,
                        [(s.run_id, s.session, s.node_id, s.attempt, s.tool, s.executor, s.at,
                          s.held) for s in starts])
            if ends:
                db.updates("attempts", ("ended_at", "status", "error", "ran_on"),
                           ("run_id", "session", "node_id", "attempt"),
                           [(e.at, e.status, e.error, e.where, e.run_id, e.session, e.node_id,
                             e.attempt) for e in ends])
            if outcomes:
                db.rows(f"INSERT OR REPLACE INTO outcomes (run_id, position, {_OUTCOME_COLUMNS})"
                        " VALUES ", 19, [_outcome_row(o) for o in outcomes])
            if effects:
                db.rows("INSERT OR REPLACE INTO effects (run_id, node_id, kind, encoding, value, "
                        "view) VALUES ", 6, [_effect_row(e) for e in effects])
            if events:
                db.rows("INSERT INTO events (run_id, data) VALUES ", 2,
                        [(e.run_id, _event_json(e.event)) for e in events])
            if finished:
                db.updates("runs", ("status", "finished_at", "counts", "makespan"), ("run_id",),
                           [(f.status, f.finished_at, _json_text(dict(f.counts)), f.makespan,
                             f.run_id) for f in finished])

    def claim_run(self, run_id: str) -> RunClaim:
        """Claim ``run_id`` for this process (see :mod:`shoal.store.claims`).

        Raises :class:`~shoal.exceptions.RunActiveError` if a live process holds it: the lock
        is a file in ``<journal>-locks/``, released by the OS when its holder ends.
        """
        if self.path == ":memory:":
            return self._claims.claim(run_id)
        folder = self.lock_folder
        try:
            claim = FileClaim.take(folder, run_id)
        except OSError as exc:
            raise StoreError(f"cannot lock run {run_id!r} in {str(folder)!r}: {exc}") from exc
        try:
            self._refuse_if_beating(run_id)
        except BaseException:
            claim.release()
            raise
        return claim

    @property
    def lock_folder(self) -> Path:
        """Where the runs' lock files are (see :meth:`claim_run`): ``<journal>-locks``."""
        # resolved: two paths to one journal (a symlink, another cwd) must meet at one lock
        return Path(f"{Path(self.path).resolve()}-locks")

    def _refuse_if_beating(self, run_id: str) -> None:
        """Refuse a run whose record shows a live holder although its lock file was free.

        The lock file can be deleted under its holder (someone removed ``<journal>-locks/``),
        and a copy of a journal a running process writes has a lock folder of its own: the
        holder's pid and start (on this machine; elsewhere its fresh heartbeat) still say it
        runs the run, however stale the heartbeat the copy holds.
        """
        record = self.get_run(run_id)
        if record is None or not record_beats(record):
            return
        if record.host == socket.gethostname() and record.pid:
            how = (f"that process is alive, though it holds no lock in {str(self.lock_folder)!r}:"
                   " the lock folder was removed, or this journal is a copy of the one it "
                   "writes")
        else:
            how = "its heartbeat is fresh, though its lock file is gone"
        raise RunActiveError(run_id, record.pid, record.host, how)

    def heartbeat(self, run_id: str, at: float) -> None:
        """Note that a live runtime still runs ``run_id``."""
        self.heartbeat_many((run_id,), at)

    def heartbeat_many(self, run_ids: Sequence[str], at: float) -> None:
        """:meth:`heartbeat` for several runs, in one transaction (the journal's writer's)."""
        with self._writing() as db:
            db.updates("runs", ("heartbeat",), ("run_id",), [(at, run_id) for run_id in run_ids])

    # ---- reading ------------------------------------------------------------------------

    def get_run(self, run_id: str) -> RunRecord | None:
        """One run, or ``None``."""
        rows = self._read(f"SELECT {self._run_columns()} FROM runs WHERE run_id = ?",
                          (run_id,))
        return _run_record(rows[0]) if rows else None

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        """The most recently started runs first (without their plan and source, for speed)."""
        # plan and source are big: each is read only when it is not JSON (so damage shows)
        columns = self._run_columns().replace(
            "plan, source", "CASE WHEN json_valid(plan) THEN '{}' ELSE plan END, "
                            "CASE WHEN json_valid(source) THEN '{}' ELSE source END")
        rows = self._read(f"SELECT {columns} FROM runs ORDER BY started_at DESC LIMIT ?",
                          (min(limit, _MAX_SQL_INT),))  # SQLite's ints stop at 2**63 - 1
        return [_run_record(row) for row in rows]

    def nested_run_ids(self, run_id: str) -> list[str]:
        """The ids of the runs nested in ``run_id`` (starting ``f"{run_id}/"``), in id order.

        Read through the index of run ids (a range: every id starting ``RUN/`` sorts from
        ``RUN/`` up to ``RUN0``), not by listing every run of the journal; ids with lone
        surrogates, kept as BLOBs, sort after all text and are read as a range of their own.
        """
        low = id_joined(run_id, "")
        if type(low) is UndecodedText:  # its bytes: its text would bind a byte as a surrogate
            bounds: Sequence[str | bytes] = [low.raw, low.raw[:-1] + b"0"] * 2
        else:
            low, high = f"{run_id}/", f"{run_id}0"  # '0' is the character after '/'
            as_bytes = [text.encode("utf-8", "surrogatepass") for text in (low, high)]
            as_text = list(_bind((low, high)))
            bounds = [*as_text, *as_bytes] if isinstance(as_text[0], str) else as_bytes * 2
        rows = self._read("SELECT run_id FROM runs WHERE run_id >= ? AND run_id < ? UNION ALL "
                          "SELECT run_id FROM runs WHERE run_id >= ? AND run_id < ?", bounds)
        return sorted({_str(row[0]) for row in rows})

    def outcomes(self, run_id: str, *, decode: bool = True) -> dict[str, StoredOutcome]:
        """Each node's latest outcome, in plan order; ``decode=False`` never unpickles."""
        columns = _OUTCOME_COLUMNS.replace("ran_on", self._column("outcomes", "ran_on")).replace(
            "interrupted", self._column("outcomes", "interrupted")).replace(
            "edited", self._column("outcomes", "edited"))
        rows = self._read(f"SELECT {columns} FROM outcomes WHERE run_id = ? "
                          "ORDER BY position", (run_id,))
        stored = (_stored_outcome(row, decode) for row in rows)
        return {s.outcome.node_id: s for s in stored}

    def attempts(self, run_id: str) -> list[AttemptRecord]:
        """Every attempt of the run, in the order they started."""
        held, ran_on = self._column("attempts", "held"), self._column("attempts", "ran_on")
        rows = self._read(
            "SELECT node_id, session, attempt, tool, executor, started_at, ended_at, status, "
            f"error, {held}, {ran_on} FROM attempts WHERE run_id = ? "
            "ORDER BY session, started_at, node_id",
            (run_id,))
        return [_attempt(row) for row in rows]

    def effects(self, run_id: str, *, nested: bool = False) -> list[StoredEffect]:
        """The latest effect of each of the run's calls (per kind), in the order written.

        ``nested``: those of the runs nested in it too (ids starting ``f"{run_id}/"``).
        """
        # as the cells hold them: text, or the bytes of an id with lone surrogates or
        # undecoded bytes (substr then counts bytes)
        whole, prefix = _bind((run_id, id_joined(run_id, "")))
        try:
            with self._lock:
                rows = self._patiently(lambda: _fetch_all(
                    self._conn,
                    "SELECT run_id, node_id, kind, encoding, value, view FROM effects WHERE "
                    "run_id = ? OR (? AND substr(run_id, 1, ?) = ?) ORDER BY id",
                    (whole, nested, len(prefix), prefix)))
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # a read-only file from before effects existed
                return []
            raise StoreError(f"cannot read the journal {self.path!r}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the journal {self.path!r}: {exc}") from exc
        return [_stored_effect(row) for row in rows]

    def events(self, run_id: str) -> list[dict[str, Any]]:
        """The run's journaled events, in order."""
        rows = self._read("SELECT data FROM events WHERE run_id = ? ORDER BY id", (run_id,))
        return [_event_dict(row[0]) for row in rows]

    # ---- approvals ------------------------------------------------------------------------

    def request_approval(self, record: ApprovalRecord) -> ApprovalRecord:
        """Store a pending request, or return the one already stored for the same call."""
        with self._writing() as db:  # no check that the run exists: its row may be in flight
            known = self._open_request(db, record.run_id, record.node_id, record.args_hash)
            if known is not None:
                return _approval(known[1:])
            row = _approval_row(record)
            if not row[6]:
                row = (*row[:6], time.time(), *row[7:])
            db.execute(f"INSERT INTO approvals ({_APPROVAL_COLUMNS}) VALUES "
                       f"({', '.join('?' * 12)})", row)
            return _approval(row)

    def decide(self, run_id: str, node_id: str, args_hash: str, decision: Decision, *,
               decided_by: str = "", reason: str = "", at: float | None = None) -> None:
        """Record a decision on the open request for this call (creating one if need be)."""
        when = time.time() if at is None else at
        with self._writing() as db:
            known = self._open_request(db, run_id, node_id, args_hash)
            if known is not None:
                db.execute("UPDATE approvals SET decision = ?, decided_by = ?, decided_at = ?, "
                           "reason = ? WHERE id = ?",
                           (decision, decided_by, when, reason, known[0]))
                return
            db.execute(f"INSERT INTO approvals ({_APPROVAL_COLUMNS}) VALUES "
                       f"({', '.join('?' * 12)})",
                       (run_id, node_id, "", args_hash, "null", "approval", when, decision,
                        decided_by, when, reason, 0))

    def use_decision(self, run_id: str, node_id: str, args_hash: str) -> ApprovalRecord | None:
        """The unused decision for exactly this call, now marked used (or ``None``)."""
        with self._writing() as db:
            row = db.execute(
                f"SELECT id, {_APPROVAL_COLUMNS} FROM approvals WHERE run_id = ? AND "
                "node_id = ? AND args_hash = ? AND used = 0 AND decision != 'pending' "
                "ORDER BY id LIMIT 1", (run_id, node_id, args_hash)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE approvals SET used = 1 WHERE id = ?", (row[0],))
            return _approval((*row[1:-1], 1))

    def approvals(self, run_id: str, *, pending_only: bool = False) -> list[ApprovalRecord]:
        """The run's approval requests and decisions, oldest first."""
        where = " AND decision = 'pending'" if pending_only else ""
        rows = self._read(f"SELECT {_APPROVAL_COLUMNS} FROM approvals WHERE run_id = ?{where} "
                          "ORDER BY id", (run_id,))
        return [_approval(row) for row in rows]

    def _open_request(self, db: _Bound, run_id: str, node_id: str,
                      args_hash: str) -> Any:
        return db.execute(
            f"SELECT id, {_APPROVAL_COLUMNS} FROM approvals WHERE run_id = ? AND node_id = ? "
            "AND args_hash = ? AND used = 0 ORDER BY id LIMIT 1",
            (run_id, node_id, args_hash)).fetchone()

    def _need_run(self, db: _Bound, run_id: str) -> None:
        if db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
            raise RunNotFoundError(run_id, f"in {self.path!r}")

    # ---- cancel requests ------------------------------------------------------------------

    def request_cancel(self, run_id: str, node_ids: Sequence[str] = (), *,
                       reason: str = "cancelled by the user") -> None:
        """Queue a cancel request; the process running ``run_id`` picks it up within 0.2 s."""
        with self._writing() as db:
            self._need_run(db, run_id)
            db.execute("INSERT INTO cancels (run_id, node_ids, reason, requested_at) "
                       "VALUES (?, ?, ?, ?)",
                       (run_id, _json_text(list(node_ids)), reason, time.time()))

    def runs_with_cancel_requests(self) -> list[str]:
        """The run ids with a cancel request not taken yet (one look for every run here).

        The journal's writer asks it several times a second, for all the runs it journals.
        """
        return [_str(row[0]) for row in
                self._read("SELECT DISTINCT run_id FROM cancels WHERE taken = 0")]

    def take_cancel_requests(self, run_id: str) -> list[CancelRequest]:
        """Cancel requests not taken yet, now marked taken."""
        # a cheap read first: this runs several times a second for every journaled run
        if not self._read("SELECT 1 FROM cancels WHERE run_id = ? AND taken = 0 LIMIT 1",
                          (run_id,)):
            return []
        with self._writing() as db:
            rows = db.execute("SELECT id, run_id, node_ids, reason, requested_at FROM cancels "
                              "WHERE run_id = ? AND taken = 0 ORDER BY id", (run_id,)).fetchall()
            db.executemany("UPDATE cancels SET taken = 1 WHERE id = ?", [(r[0],) for r in rows])
        return [CancelRequest(r[0], _str(r[1]), tuple(json.loads(_str(r[2]))), _str(r[3]), r[4])
                for r in rows]

    def open_cancel_requests(self, run_id: str) -> int:
        """How many cancel requests for ``run_id`` wait to be taken (``shoal cancel --wait``)."""
        rows = self._read("SELECT count(*) FROM cancels WHERE run_id = ? AND taken = 0",
                          (run_id,))
        return int(rows[0][0])

    # ---- upkeep ---------------------------------------------------------------------------

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check``: ``"ok"`` for a sound file, else SQLite's findings."""
        return "\n".join(str(row[0]) for row in self._read("PRAGMA integrity_check"))

    def close(self) -> None:
        """Close the connection (checkpointing the WAL into the main file)."""
        with self._lock:
            self._conn.close()


_MAX_SQL_INT = 2 ** 63 - 1


def _check_links(where: Path) -> None:
    """Raise ``ValueError`` saying why symbolic links keep a file from being at ``where``."""
    try:
        os.stat(where)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError("symbolic links on it lead round in a loop; name a file, such as "
                             "runs.db, instead") from None
        if where.is_symlink() and not where.parent.joinpath(os.readlink(where)).parent.is_dir():
            raise ValueError(f"it is a symbolic link to {os.readlink(where)!r}, in a folder "
                             "that does not exist") from None


def unread_wal(path: str) -> bool:
    """Whether the journal at ``path`` has writes in its ``-wal`` file but no ``-shm`` file.

    Such writes (of a writer that was killed) are read only through the ``-shm`` file, which a
    read-only folder cannot get.
    """
    try:
        where = Path(path).resolve()  # (a symlink loop: RuntimeError before Python 3.13)
        wal, shm = Path(f"{where}-wal"), Path(f"{where}-shm")
        return wal.stat().st_size > 0 and not shm.exists()
    except (OSError, RuntimeError):
        return False


def _file_name(path: str) -> str:
    """``path`` as SQLite takes it for the file at ``path``.

    SQLite reads a name that starts with ``file:`` as a URI (Python's builds turn URIs on for
    every name): ``file:x.db`` would open ``x.db``, another file than the one the run's lock
    folder (``file:x.db-locks``), ``shoal runs`` and ``shoal show`` look at.
    """
    return f"./{path}" if path.startswith("file:") else path


def _busy(exc: BaseException) -> bool:
    """Whether ``exc`` says another connection holds a lock SQLite waited for in vain."""
    name = getattr(exc, "sqlite_errorname", "")
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "is locked" in str(exc)


def _held_elsewhere(exc: sqlite3.OperationalError) -> bool:
    """Whether SQLite gave up waiting for a lock another connection holds (worth a new try).

    Not ``SQLITE_LOCKED`` (a conflict inside this connection), which no wait ends.
    """
    name = getattr(exc, "sqlite_errorname", "")
    return name.startswith("SQLITE_BUSY") or (not name and str(exc) == "database is locked")


def _read_only_note(path: str) -> str:
    """Why a journal cannot be written, when the reason is that it is read-only."""
    where = Path(path)
    if path == ":memory:" or not where.is_file():
        return ""
    if not os.access(where, os.W_OK) or not os.access(where.resolve().parent, os.W_OK):
        return (" (the file or its folder is read-only: make it writable, or journal to another "
                "file; shoal runs and shoal show can still read this one)")
    return ""


#: SQLite's words for a write that found no room (a write past a file size limit is an I/O error)
_FULL = frozenset({"SQLITE_FULL", "SQLITE_IOERR_WRITE"})
_FULL_NOTE = (" (the disk may be full, or the file over a size limit: free some space, or "
              "journal to another file)")


def _damage_note(path: str, exc: BaseException) -> str:
    """What to do about a file SQLite finds damaged ('' for other errors)."""
    if getattr(exc, "sqlite_errorname", "") != "SQLITE_CORRUPT":
        return ""
    return (f" (the file is damaged, by a disk fault or a copy made while it was written: "
            f"journal to another file; sqlite3 {path!r} .recover may save what it holds)")


def _split(records: Sequence[Record]) -> tuple[list[RunRecord], list[AttemptStarted],
                                                 list[AttemptEnded], list[OutcomeRecord],
                                                 list[EventRecord], list[RunEnded],
                                                 list[EffectRecord]]:
    """Records by kind, so each kind is written together (order within a kind is kept)."""
    runs: list[RunRecord] = []
    starts: list[AttemptStarted] = []
    ends: list[AttemptEnded] = []
    outcomes: list[OutcomeRecord] = []
    events: list[EventRecord] = []
    finished: list[RunEnded] = []
    effects: list[EffectRecord] = []
    sort: dict[type, list[Any]] = {RunRecord: runs, AttemptStarted: starts, AttemptEnded: ends,
                                   OutcomeRecord: outcomes, EventRecord: events,
                                   RunEnded: finished, EffectRecord: effects}
    for record in records:
        sort[type(record)].append(record)
    return runs, starts, ends, outcomes, events, finished, effects


_EVENT_FIELDS: dict[type, tuple[str, ...]] = {}


def _event_json(event: Event) -> str:
    """``event.to_dict()`` as JSON, the quick way for events of plain fields (nearly all)."""
    kind = type(event)
    names = _EVENT_FIELDS.get(kind)
    if names is None:
        names = _EVENT_FIELDS[kind] = tuple(f.name for f in dataclasses.fields(event))
    data = {name: getattr(event, name) for name in names}
    data["kind"] = kind.__name__
    try:
        return _json_text(data)
    except (TypeError, ValueError):  # a field JSON cannot hold as it is
        return _json_text(event.to_dict())


def _event_dict(cell: Any) -> dict[str, Any]:
    try:
        return _json(cell, "data", dict)  # type: ignore[no-any-return]
    except _Damaged as exc:
        return {"kind": "Damaged", "damaged": f"events.{exc}"}


def _run_row(r: RunRecord) -> tuple[Any, ...]:
    return (r.run_id, r.name, r.status, r.started_at, r.finished_at, r.nodes, r.fingerprint,
            _json_text(dict(r.plan)), _json_text(dict(r.source)), _json_text(dict(r.counts)),
            r.makespan, r.sessions, r.heartbeat, r.pid, r.host, r.pid_start)


def _run_record(row: Sequence[Any]) -> RunRecord:
    """The run of ``row``; a damaged row gives a record saying what is damaged."""
    (run_id, name, status, started_at, finished_at, nodes, fingerprint, plan, source, counts,
     makespan, sessions, heartbeat, pid, host, pid_start) = row
    try:
        return RunRecord(
            _text(run_id, "run_id"), _number(started_at, "started_at"), _int(nodes, "nodes"),
            _text(fingerprint, "fingerprint"), _plan(plan),
            _json(source, "source", dict), _text(name, "name"),
            _choice(status, "status", RUN_STATUSES),
            _number(finished_at, "finished_at", optional=True), _counts(counts),
            _length(makespan, "makespan"), _int(sessions, "sessions"),
            _number(heartbeat, "heartbeat"), _pid(pid), _text(host, "host"),
            pid_start=_text(pid_start, "pid_start"))
    except _Damaged as exc:
        return RunRecord(_loose_text(run_id), _loose_number(started_at), 0, "", {}, {},
                         _loose_text(name), damaged=f"runs.{exc}")


def _outcome_row(record: OutcomeRecord) -> tuple[Any, ...]:
    o = record.outcome
    if o.status == "ok":
        encoded = encode_value(o.value)
        encoding, payload, view = encoded.encoding, encoded.payload, encoded.view
    else:
        encoding, payload, view = "json", b"null", None
    error = None if o.error is None else _json_text(
        {"type": o.error.type, "message": o.error.message, "traceback": o.error.traceback})
    return (record.run_id, record.position, o.node_id, o.tool, o.status, encoding, payload,
            view, error, o.reason, o.attempts, o.queued_at, o.started_at, o.finished_at,
            o.executor, int(o.abandoned), o.where, "1" if o.interrupted else "0",
            "" if o.edited_args is None else encode_arguments(o.edited_args))


def _effect_row(record: EffectRecord) -> tuple[Any, ...]:
    encoded = encode_value(record.data)
    return (record.run_id, record.node_id, record.kind, encoded.encoding, encoded.payload,
            encoded.view)


def _stored_effect(row: Sequence[Any]) -> StoredEffect:
    """The effect of ``row``; a damaged row says what is damaged (and is not replayable)."""
    run_id, node_id, kind, encoding, payload, view = row
    try:
        encoding = _choice(encoding, "encoding", ("json", "pickle", "repr"))
        data, real = _value(encoding, payload, view, True)
        record = EffectRecord(_text(run_id, "run_id"), _text(node_id, "node_id"),
                              _text(kind, "kind"), data)
    except _Damaged as exc:
        return StoredEffect(EffectRecord(_loose_text(run_id), _loose_text(node_id),
                                         _loose_text(kind), None),
                            False, damaged=f"effects.{exc}")
    return StoredEffect(record, real)


def _stored_outcome(row: Sequence[Any], decode: bool) -> StoredOutcome:
    """The outcome of ``row``; a damaged row gives an ``in_doubt`` one saying what is damaged."""
    (node_id, tool, status, encoding, payload, view, error, reason, attempts, queued_at,
     started_at, finished_at, executor, abandoned, where, interrupted, edited) = row
    try:
        encoding = _choice(encoding, "encoding", ("json", "pickle", "repr"))
        value, real = _value(encoding, payload, view, decode)
        info = None if error is None else ErrorInfo(**_json(error, "error", dict))
        outcome = Outcome(
            _text(node_id, "node_id"), _text(tool, "tool"), _choice(status, "status", STATUSES),
            value, info, _text(reason, "reason"), _int(attempts, "attempts"),
            _number(queued_at, "queued_at", optional=True),
            _number(started_at, "started_at", optional=True),
            _number(finished_at, "finished_at", optional=True), _text(executor, "executor"),
            bool(_int(abandoned, "abandoned")), _loose_text(where),
            edited_args=_edited_args(edited, decode) if edited else None)
        _check_order(outcome)
        said = _loose_text(interrupted)
        if outcome.status in _STOPPED and said != "0" and (said or outcome.attempts):
            # '1' (or damaged: it may have run); none at all: journaled before outcomes said,
            # a stopped call that had started may have run (resume holds it in doubt)
            outcome = dataclasses.replace(outcome, interrupted=True)
    except (_Damaged, TypeError) as exc:  # TypeError: an error cell with other keys
        what = f"outcomes.{exc}" if isinstance(exc, _Damaged) else f"outcomes.error: {exc}"
        name = _loose_text(node_id)
        return StoredOutcome(Outcome(name, _loose_text(tool), "in_doubt",
                                     reason=f"damaged in the journal: {what}"),
                             False, "repr", damaged=what)
    return StoredOutcome(outcome, real, encoding)


def _edited_args(cell: Any, decode: bool) -> dict[str, Any]:
    """An outcome's ``edited`` cell (see :func:`~shoal.store.codec.encode_arguments`)."""
    text = _str(cell)
    try:
        if not isinstance(text, str):
            raise ValueError("not text")
        args = decode_arguments(text, decode)
    except (ValueError, UnicodeError, DamagedValueError) as exc:
        raise _Damaged(f"edited: not JSON ({_shown(cell)}: {exc})") from None
    if not isinstance(args, dict):
        raise _Damaged(f"edited: {_shown(cell)} is not a mapping of arguments")
    return args


def _check_order(outcome: Outcome) -> None:
    """Refuse a call that finished before it started: shown as taking ``-5.00s`` otherwise.

    Both times come from one clock of one session, and the scheduler keeps the end at or
    after the start, so the other order is damage.
    """
    started, finished = outcome.started_at, outcome.finished_at
    if started is not None and finished is not None and finished < started:
        raise _Damaged(f"finished_at: {finished:g}, before started_at {started:g}")


def _value(encoding: str, payload: Any, view: Any, decode: bool) -> tuple[Any, bool]:
    if not isinstance(payload, bytes | str):
        raise _Damaged(f"value: missing ({payload!r})")
    if view is not None:
        _json(view, "view", object)  # a view that is not JSON is damage, even unread
    try:
        if decode:
            return decode_value(encoding, payload if isinstance(payload, bytes)
                                else payload.encode("utf-8", "surrogatepass"), _str(view))
        if view is not None:
            return view_value(_str(view)), encoding != "repr"
        return json.loads(payload), True
    except DamagedValueError as exc:
        raise _Damaged(f"value: {exc}") from exc
    except (ValueError, UnicodeError) as exc:
        raise _Damaged(f"value: not JSON ({exc})") from exc


def _approval_row(r: ApprovalRecord) -> tuple[Any, ...]:
    return (r.run_id, r.node_id, r.tool, r.args_hash, _json_text(jsonable(r.arguments)), r.kind,
            r.requested_at, r.decision, r.decided_by, r.decided_at, r.reason, int(r.used))


def _approval(row: Sequence[Any]) -> ApprovalRecord:
    (run_id, node_id, tool, args_hash, arguments, kind, requested_at, decision, decided_by,
     decided_at, reason, used) = row
    try:
        shown = _json(arguments, "arguments", object)
    except _Damaged as exc:  # the arguments are for people to read: say they are damaged
        shown = f"<damaged: {exc}>"
    return ApprovalRecord(_loose_text(run_id), _loose_text(node_id), _loose_text(tool),
                          _loose_text(args_hash), shown, _loose_text(kind),
                          _loose_number(requested_at), decision if decision in DECISIONS
                          else "denied", _loose_text(decided_by),
                          None if decided_at is None else _loose_number(decided_at),
                          _loose_text(reason), bool(used))


def _attempt(row: Sequence[Any]) -> AttemptRecord:
    (node_id, session, attempt, tool, executor, started_at, ended_at, status, error, held,
     where) = row
    try:
        return AttemptRecord(_text(node_id, "node_id"), _int(session, "session"),
                             _int(attempt, "attempt"), _text(tool, "tool"),
                             _text(executor, "executor"), _number(started_at, "started_at"),
                             _number(ended_at, "ended_at", optional=True),
                             _text(status, "status"), _text(error, "error"),
                             held=_loose_text(held), where=_loose_text(where))
    except _Damaged as exc:
        return AttemptRecord(_loose_text(node_id), 0, 0, _loose_text(tool), "", 0.0,
                             damaged=f"attempts.{exc}")


# ---- text SQLite can hold, and cells read back with care -----------------------------------


def _bind(params: Sequence[Any]) -> Sequence[Any]:
    r"""``params`` as SQLite can bind them: text with lone surrogates goes as a BLOB.

    SQLite text must be valid UTF-8, and a model or a tool can hand shoal a lone surrogate
    (``"\ud800"`` is valid JSON). Such text is kept exactly, as the bytes of
    ``surrogatepass``; lookups bind the same bytes, so they still match, and reading turns
    them back into the same text (:func:`_str`).

    A row whose text is all ASCII (most rows) is bound as it is: looked over in one loop,
    not rebuilt through a generator and a call per text (the journal's writer binds a few
    dozen rows per agent of a swarm, on the thread that waits for the GIL).
    """
    for param in params:
        if (type(param) is str and not param.isascii()) or type(param) is UndecodedText:
            return tuple(_sql_text(p) if isinstance(p, str) else p for p in params)
    return params


def _json_text(data: Any) -> str:
    r"""``data`` as JSON text that reads back exactly: its text as it is, not escaped.

    JSON's escapes read a high surrogate's followed by a low one's as one character, so the
    two code points ``"\ud83d\ude00"`` (a surrogate pair in an error message, a node id)
    came back as ``"\U0001f600"``: a resumed run's plan then differed from the fresh one,
    and a cancel request named no node. Unescaped, such text is bound as any text is
    (:func:`_bind`: as its ``surrogatepass`` bytes) and :func:`_str` reads it back as written.
    """
    return json.dumps(data, ensure_ascii=False)


def _chunks(rows: Sequence[_T]) -> Iterator[Sequence[_T]]:
    """``rows`` in order, cut into runs of the sizes of :data:`_CHUNKS`."""
    start, count = 0, len(rows)
    for size in _CHUNKS:
        while count - start >= size:
            yield rows[start:start + size]
            start += size


@functools.lru_cache(maxsize=256)
def _values_sql(head: str, width: int, count: int) -> str:
    """The statement of ``head`` and ``count`` rows of ``width`` parameters."""
    row = f"({', '.join('?' * width)})"
    return f"{head}{', '.join([row] * count)}"


def _sql_text(text: str) -> str | bytes:
    if type(text) is UndecodedText:  # the bytes it was read from, as they are
        return text.raw
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")
    return text


def _str(cell: Any) -> Any:
    r"""A text cell as written: bytes (text with lone surrogates) back to text.

    Bytes no shoal wrote (not UTF-8 even with surrogates: a damaged file, another program's
    write) are read as ``surrogateescape`` reads a file name: each byte that is not UTF-8 a
    lone surrogate (0xff as ``"\udcff"``), which every view shows as the escape it is. The
    text is an :class:`~shoal.outcome.UndecodedText`, which keeps the bytes: JSON shows 0xff
    as ``\xff``, apart from a lone surrogate U+DCFF, and a lookup binds them.
    """
    if type(cell) is bytes:
        try:
            return cell.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return UndecodedText(cell)
    return cell


def _fetch_all(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Any]:
    """The rows of a query; text cells that are not UTF-8 read as :func:`_str` reads bytes.

    SQLite text is meant to be UTF-8, but a damaged file or another program can hold other
    bytes in a TEXT cell; Python's ``sqlite3`` then refuses the whole query, so one such
    cell (a run's name) made ``shoal runs`` fail for every run. The query is read again with
    such cells as bytes only then: the usual read keeps the C decoder.
    """
    try:
        return conn.execute(sql, _bind(params)).fetchall()
    except sqlite3.OperationalError as exc:
        if "Could not decode to UTF-8" not in str(exc):
            raise
    conn.text_factory = _text_or_bytes  # the caller holds the store's lock
    try:
        return conn.execute(sql, _bind(params)).fetchall()
    finally:
        conn.text_factory = str


def _text_or_bytes(cell: bytes) -> str | bytes:
    """A TEXT cell's UTF-8 bytes as text; other bytes as they are (see :func:`_str`)."""
    try:
        return cell.decode("utf-8")
    except UnicodeDecodeError:
        return cell


class _Damaged(Exception):
    """A cell does not hold what shoal wrote there; the message names the column and why."""


def _text(cell: Any, column: str) -> str:
    cell = _str(cell)
    if type(cell) is not str and type(cell) is not UndecodedText:
        raise _Damaged(f"{column}: expected text, found {_shown(cell)}")
    return cell


def _number(cell: Any, column: str, *, optional: bool = False) -> Any:
    if cell is None and optional:
        return None
    # every real column is a time or a length of time: shoal writes none infinite, and one
    # would be written out by show --json as Infinity, which JSON readers refuse
    if type(cell) not in (int, float) or not math.isfinite(cell):
        raise _Damaged(f"{column}: expected a finite number, found {_shown(cell)}")
    return float(cell)


def _counts(cell: Any) -> dict[str, int]:
    """A run's outcomes by status: each a whole number, 0 or more.

    Summed and shown as they are (``shoal runs`` raised a TypeError on a count that was
    text, and showed ``-3 ok``, ``inf`` nodes and ``Infinity`` in ``--json``).
    """
    counts: dict[str, Any] = _json(cell, "counts", dict)
    for status, count in counts.items():
        _int(count, f"counts[{_shown(status)}]")
    return counts


def _pid(cell: Any) -> int:
    """A process id: one past what the system's pids hold is damage (os.kill overflowed)."""
    pid = _int(cell, "pid")
    if pid > _PID_MAX:
        raise _Damaged(f"pid: expected a process id, found {_shown(cell)}")
    return pid


_PID_MAX = 2**31 - 1  # pid_t is a signed 32-bit int where shoal runs (Linux, macOS)


def _length(cell: Any, column: str) -> float:
    """A length of time: one below 0 is damage (shown as 'took -5.00s' otherwise)."""
    length: float = _number(cell, column)
    if length < 0:
        raise _Damaged(f"{column}: expected a length of time, 0 or more, found {_shown(cell)}")
    return length


def _int(cell: Any, column: str) -> int:
    # every integer column is a count, a flag or a pid: shown as "tries -5", one below 0 hid
    if type(cell) is not int or cell < 0:
        raise _Damaged(f"{column}: expected a whole number, 0 or more, found {_shown(cell)}")
    return cell


def _json(cell: Any, column: str, kind: type) -> Any:
    try:
        value = json.loads(_str(cell))
    except (TypeError, ValueError) as exc:
        raise _Damaged(f"{column}: not JSON ({_shown(cell)}: {exc})") from None
    if not isinstance(value, kind):
        raise _Damaged(f"{column}: expected a JSON {kind.__name__}, found {_shown(cell)}")
    return value


def _plan(cell: Any) -> dict[str, Any]:
    """The plan description (see :mod:`shoal.store.fingerprint`), its shape checked."""
    plan: dict[str, Any] = _json(cell, "plan", dict)
    nodes, edges = plan.get("nodes", {}), plan.get("edge_list", [])
    if not isinstance(nodes, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and v for k, v in nodes.items()):
        raise _Damaged("plan: its nodes are not a mapping of node ids to lists")
    if not isinstance(edges, list) or not all(
            isinstance(e, list) and len(e) == 4 and all(isinstance(x, str) for x in e)
            for e in edges):
        raise _Damaged("plan: its edge_list is not a list of [source, target, kind, detail]")
    return plan


def _choice(cell: Any, column: str, allowed: Sequence[str]) -> Any:
    if _str(cell) not in allowed:
        raise _Damaged(f"{column}: {_shown(cell)} is none of {', '.join(allowed)}")
    return _str(cell)


def _shown(cell: Any) -> str:
    text = repr(cell)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _loose_text(cell: Any) -> str:
    """Text for a label, whatever the cell holds (a damaged row still needs a name)."""
    cell = _str(cell)
    return cell if isinstance(cell, str) else ("" if cell is None else repr(cell))


def _loose_number(cell: Any) -> float:
    return float(cell) if type(cell) in (int, float) and math.isfinite(cell) else 0.0
