"""Who is running a run right now: a claim, held by the process that runs (or resumes) it.

Resuming a run that another process is still running would treat its calls in flight as
crashed and run them again: a payment made twice. So every journaled run, and every resume,
first *claims* its run id, and holds the claim until its session's journal is closed:

* :class:`~shoal.store.sqlite.SQLiteStore` claims with an OS file lock (``flock``) on a small
  file per run beside the journal (``runs.db-locks/``). The operating system releases it
  when the process ends in any way, ``kill -9`` included, so a crashed run is never mistaken
  for a live one, and a live one never for a crashed one, however loaded the machine (unlike a
  heartbeat). A SQLite journal is on one machine anyway (WAL needs shared memory), so one
  machine's locks are all there is to ask. The lock file holds the holder's pid and host, for
  the message.
* :class:`~shoal.store.memory.MemoryStore` claims in the store itself (it lives in one
  process).
* A store of your own may offer ``claim_run(run_id) -> RunClaim``; without it, a run whose
  record says ``running`` with a live process (by pid on this machine, else by heartbeat)
  counts as claimed.

A pid alone does not name a process for long: after a reboot, or once the pids have wrapped
around, an unrelated process may hold a dead run's pid. So a run's record holds with its pid
the process's start (:func:`process_start`: the boot, and the start time since it), and a
process holding that pid with another start is not the run's (records from before this say
nothing of it: their pid alone decides, as it did).

A second claim of a claimed run raises :class:`~shoal.exceptions.RunActiveError`, naming the
process. ``force=True`` (``shoal resume RUN --force``) goes on without the claim: for a person
who knows that process can no longer run anything.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import socket
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Protocol

from shoal.exceptions import RunActiveError
from shoal.executors._process_ref import start_ticks as _start_ticks
from shoal.store.base import RunRecord, Store

try:  # POSIX; elsewhere the record's pid and heartbeat are the only signs of life
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["HEARTBEAT_STALE", "FileClaim", "LocalClaims", "RunClaim", "claim_run",
           "claim_run_nothing", "lock_names", "lock_path", "process_alive", "process_start",
           "record_beats", "record_is_live", "this_process_start", "write_lock_holder"]

log = logging.getLogger("shoal")

HEARTBEAT_STALE = 5.0  # seconds without a heartbeat after which a run's process is taken as gone


class RunClaim(Protocol):
    """A held claim on a run; :meth:`release` lets it go (calling it twice is harmless)."""

    def release(self) -> None:
        """Let the claim go."""
        ...


class _NoClaim:
    """Stands for a claim that was not needed or not possible (``force``)."""

    __slots__ = ()

    def release(self) -> None:
        """Nothing to let go."""


#: The claim that holds nothing: it keeps no state, so every run that needs none shares it
#: (each nested run, an agent's steps, would otherwise make one and hold it to its end).
NO_CLAIM: RunClaim = _NoClaim()


def claim_run_nothing() -> RunClaim:
    """A claim that holds nothing (a run without a journal)."""
    return NO_CLAIM


def claim_run(store: Store, run_id: str, *, force: bool = False) -> RunClaim:
    """Claim ``run_id`` in ``store`` for this process; raises :class:`RunActiveError` if taken.

    With ``force`` a run claimed by another process is not refused: a warning is logged and
    the caller goes on without the claim.
    """
    claim = getattr(store, "claim_run", None)
    try:
        if callable(claim):
            held: RunClaim = claim(run_id)
            return held
        _check_record(store, run_id)
    except RunActiveError as exc:
        if not force:
            raise
        log.warning("resuming run %s by force, although %s", run_id, exc)
    return _NoClaim()


def _check_record(store: Store, run_id: str) -> None:
    record = store.get_run(run_id)
    if record is not None and record_is_live(record):
        raise RunActiveError(run_id, record.pid, record.host, "its record says it is running")


def record_is_live(record: RunRecord, now: float | None = None) -> bool:
    """Whether ``record`` says a live process runs it (pid on this machine, else heartbeat)."""
    if record.status != "running" or record.damaged:
        return False
    if record.host == socket.gethostname() and record.pid:
        return process_alive(record.pid, record.pid_start)
    now = time.time() if now is None else now
    return now - max(record.heartbeat, record.started_at) <= HEARTBEAT_STALE


def record_beats(record: RunRecord, now: float | None = None) -> bool:
    """Whether ``record`` says another live process runs it: the sign of life beside a lock.

    Should the run's lock file not be there (its folder deleted under its holder, or this
    journal a *copy* of one a running process writes, with a lock folder of its own), the
    holder is still known by its record: on this machine by its pid and start, whatever its
    heartbeat (a busy or stopped process beats late, and a copy's heartbeat never moves);
    elsewhere by a fresh heartbeat (see :func:`record_is_live`).
    """
    if record.pid == os.getpid() and record.host == socket.gethostname():
        return False  # this process: its own claims say whether it runs the run
    return record_is_live(record, now)


def process_alive(pid: int, started: str = "") -> bool:
    """Whether process ``pid`` runs on this machine (under any user); a zombie does not.

    ``started``: the process's :func:`process_start` when it was recorded; a process that
    holds ``pid`` now but started otherwise (another boot, another time) is another process,
    and ``pid``'s is gone. Where the start cannot be read now, the pid alone decides.
    """
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    if _zombie(pid):
        return False
    if not started:
        return True
    now = process_start(pid)
    return not now or now == started


def process_start(pid: int) -> str:
    """Which process ``pid`` is, of all that ever held its pid: its boot and its start time.

    On Linux the boot id (``/proc/sys/kernel/random/boot_id``) and the start in clock ticks
    since boot (``/proc/PID/stat``), both exact. Elsewhere the start time psutil reads (the
    wall clock when the process started, which the kernel keeps), alone: it tells boots apart
    too, whereas a boot time read afresh moves with the clock (a clock set forward would make
    a live run's process look like another). ``""`` where it cannot be read (no such process,
    ``/proc`` hidden).
    """
    boot = _boot_id()
    if boot:
        ticks = _start_ticks(pid)
        return "" if ticks is None else f"{boot}:{ticks}"
    import psutil

    try:
        return f"{psutil.Process(pid).create_time():.6f}"
    except (psutil.Error, OSError):
        return ""


_OWN_START: dict[int, str] = {}  # this process's start, by pid (a fork has a start of its own)


def this_process_start() -> str:
    """:func:`process_start` of this process (read once: every run's record holds it)."""
    pid = os.getpid()
    start = _OWN_START.get(pid)
    if start is None:
        start = _OWN_START[pid] = process_start(pid)
    return start


#: This process's pid, its machine's name and its start (see :func:`this_process`); ``None``
#: until first asked, and again in a forked child (it is another process).
_IDENTITY: tuple[int, str, str] | None = None


def this_process() -> tuple[int, str, str]:
    """The pid of this process, the name of its machine and its start, read once.

    The start is :func:`process_start`'s. Every run's journal record holds them, and a swarm
    opens a run per agent: three system calls each (the pid, the host name, the start's
    lookup) for what a process never changes. A forked child forgets them (see
    ``os.register_at_fork`` below).
    """
    global _IDENTITY
    known = _IDENTITY
    if known is None:
        known = _IDENTITY = (os.getpid(), socket.gethostname(), this_process_start())
    return known


def _forget_identity() -> None:
    global _IDENTITY
    _IDENTITY = None


if hasattr(os, "register_at_fork"):  # (not on Windows, which does not fork)
    os.register_at_fork(after_in_child=_forget_identity)


@functools.cache
def _boot_id() -> str:
    """The id of the boot this runs in (Linux), or ``""`` (read once: no process outlives it)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return ""


def _zombie(pid: int) -> bool:
    """Whether ``pid`` has ended but not been reaped yet (Linux; elsewhere: not known)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    # "pid (command) state ...": the command may hold spaces and parentheses
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


class LocalClaims:
    """Claims kept in this process (a memory store, a private SQLite database)."""

    def __init__(self) -> None:
        self._held: set[str] = set()
        # reentrant: a claim dropped unreleased is let go by the collector, which may run in
        # this very thread while it holds the lock (claiming another run)
        self._lock = threading.RLock()

    def claim(self, run_id: str) -> RunClaim:
        """Claim ``run_id``; raises :class:`RunActiveError` if this process holds it already."""
        with self._lock:
            if run_id in self._held:
                raise RunActiveError(run_id, os.getpid(), socket.gethostname(),
                                     "this very process is running it")
            self._held.add(run_id)
        return _LocalClaim(self, run_id)

    def held(self, run_id: str) -> bool:
        """Whether ``run_id`` is claimed here."""
        return run_id in self._held

    def _release(self, claim: _LocalClaim) -> None:
        with self._lock:  # once: a claim released twice must not free a later claim's run
            if claim.run_id is not None:
                self._held.discard(claim.run_id)
                claim.run_id = None


class _LocalClaim:
    """A claim of :class:`LocalClaims`; let go by :meth:`release`, else when collected.

    ``__del__`` rather than ``weakref.finalize``: a swarm claims a run per agent turn, and a
    finalizer costs five objects and a global registry entry each.
    """

    __slots__ = ("claims", "run_id")

    def __init__(self, claims: LocalClaims, run_id: str) -> None:
        self.claims = claims
        self.run_id: str | None = run_id

    def release(self) -> None:
        """Let the claim go."""
        self.claims._release(self)

    def __del__(self) -> None:  # a run's task dropped unawaited: the claim goes with it
        if self.run_id is not None:
            self.claims._release(self)


class FileClaim:
    """A claim held as an exclusive ``flock`` on the run's lock file in ``folder``.

    The file is removed when the claim is released; a claimant that opened it just before
    checks, once it holds the lock, that the file it locked is still the one at the path.
    Should the claim never be released (a run's task dropped unawaited), the lock goes with
    the object, or at the latest with the process.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._closer = weakref.finalize(self, _unlock, str(path), fd)

    @classmethod
    def take(cls, folder: Path, run_id: str) -> RunClaim:
        """Claim ``run_id``; raises :class:`RunActiveError` if another claimant holds it."""
        if fcntl is None:  # pragma: no cover - Windows
            return _NoClaim()
        folder.mkdir(parents=True, exist_ok=True)
        path = lock_path(folder, run_id)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by children
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = _written_holder(path)
                pid, host = holder.get("pid"), holder.get("host")
                raise RunActiveError(run_id, pid if type(pid) is int else 0,  # a file
                                     host if isinstance(host, str) else "",  # written over
                                     "it holds the run's lock") from None
            if _same_file(fd, path):
                break
            os.close(fd)  # the holder before us removed it meanwhile: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"run_id": run_id, "pid": os.getpid(),
                                 "host": socket.gethostname(), "since": time.time()},
                                ensure_ascii=True).encode("ascii"))
        return cls(path, fd)

    def release(self) -> None:
        """Remove the lock file and let the lock go."""
        self._closer()


def lock_path(folder: Path, run_id: str) -> Path:
    """The lock file of ``run_id`` in ``folder`` (run ids hold slashes and any other text)."""
    digest = hashlib.sha256(run_id.encode("utf-8", "surrogatepass")).hexdigest()
    return folder / f"{digest[:32]}.lock"


def lock_names(folder: Path, run_id: str, pid: int) -> bool:
    """Whether ``run_id``'s lock file in ``folder`` is there and names process ``pid``.

    Its holder removes it when it lets the claim go, and a later claimant writes its own pid:
    a file that names a live process, the one that runs the run, is that process's claim.
    """
    return _holder(lock_path(folder, run_id)).get("pid") == pid


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _unlock(path: str, fd: int) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)  # while still holding it: see FileClaim
    with contextlib.suppress(OSError):
        os.close(fd)


def _written_holder(path: Path, wait: float = 0.5) -> dict[str, Any]:
    """:func:`_holder`, given a moment to write itself: it locks the file, then writes."""
    deadline = time.monotonic() + wait
    holder = _holder(path)
    while not holder and time.monotonic() < deadline:
        time.sleep(0.01)
        holder = _holder(path)
    return holder


def _holder(path: Path) -> dict[str, Any]:
    """Who holds the lock, as its file says (empty if it has not written it yet)."""
    try:
        data = json.loads(path.read_text(encoding="ascii") or "{}")
    except (OSError, ValueError, RecursionError):  # a lock file someone wrote over
        return {}
    return data if isinstance(data, dict) else {}


#: The byte of a WAL journal's shared-memory file (``<journal>-shm``) that a writer locks for
#: its whole transaction (SQLite's ``WAL_WRITE_LOCK``, the first lock at offset 120).
WAL_WRITE_BYTE = 120
#: Lock files read at most to name the runs of the process holding a journal's write lock.
MAX_LOCK_FILES_READ = 1000


def write_lock_holder(journal: str, folder: Path) -> str:
    """Who holds ``journal``'s write lock, for a person: ``''`` where that cannot be read.

    Nothing is written to know it (no record per node or per commit): Linux lists every POSIX
    lock in ``/proc/locks`` with its holder's pid, and the one on the write byte of
    ``<journal>-shm`` is the writer's. Its runs on this journal are those whose lock files in
    ``folder`` name that pid. Asked only while a write waits for the lock, to say so.
    """
    pid = _wal_writer(journal)
    if pid is None:
        return ""
    runs = _runs_of(folder, pid)
    doing = (f", running run {runs[0]}" if len(runs) == 1 else
             f", running runs {', '.join(runs[:3])}{' ...' if len(runs) > 3 else ''}" if runs
             else ", running no run of this journal")
    return f"pid {pid}{doing}; it is {'alive' if process_alive(pid) else 'dead'}"


def _wal_writer(journal: str) -> int | None:
    """The pid holding the write byte of ``<journal>-shm``, from ``/proc/locks`` (Linux)."""
    try:
        info = os.stat(f"{journal}-shm")
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            lines = locks.read().splitlines()
    except OSError:  # not Linux, no shared-memory file: nobody to name
        return None
    where = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    for line in lines:
        # "1: POSIX  ADVISORY  WRITE 1234 fe:00:6392206 120 120"; "1: -> POSIX ..." waits
        fields = line.split()
        if len(fields) < 8 or fields[1] == "->" or fields[-3] != where:
            continue
        start, end = fields[-2], fields[-1]
        try:
            covers = int(start) <= WAL_WRITE_BYTE and (
                end == "EOF" or int(end) >= WAL_WRITE_BYTE)
            pid = int(fields[-4])
        except ValueError:
            continue
        if covers and fields[-5] == "WRITE" and pid > 0:
            return pid
    return None


def _runs_of(folder: Path, pid: int) -> list[str]:
    """The runs whose lock files in ``folder`` name process ``pid`` on this host."""
    host = socket.gethostname()
    runs: list[str] = []
    try:
        with os.scandir(folder) as entries:
            for count, entry in enumerate(entries):
                if count >= MAX_LOCK_FILES_READ:
                    break
                held = _holder(Path(entry.path))
                if held.get("pid") == pid and held.get("host") == host:
                    runs.append(str(held.get("run_id")))
    except OSError:  # no runs claimed yet
        return []
    return sorted(runs)
