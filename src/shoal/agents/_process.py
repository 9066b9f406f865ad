"""The program of an agent in its own process: ``python -m shoal.agents._process FD``.

``FD`` is a socket to the parent (see :mod:`shoal.agents.remote` for the messages). The agent
runs on this process's event loop against :func:`remote_context`: a
:class:`~shoal.agents.context.TreeContext` whose budget tracker, model gates, event sinks,
approver and board ask the parent's tree over the socket. A thread reads the socket: it
hands replies to the requests waiting for them and a ``cancel`` to the loop, and ends the
process (with its whole process group) when the socket closes, so a parent that dies leaves
nothing behind.

Budget charges are synchronous in the turn loop (a check-and-charge has no ``await``), so they
block this loop for one round trip; the parent answers them at once.

The agent's journal is the tree's: the root's SQLite file, which this process opens; any other
durable journal through the parent (:class:`ParentStore`); the in-memory journal in this
process's memory, each finished step sent on to the parent's (:class:`ParentMirror`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import pickle
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from shoal.agents.remote import HEADER, _plain_message, _plain_tool_call
from shoal.agents.run import _model_turn_tool
from shoal.clock import running_loop
from shoal.exceptions import MissingAPIKeyError, describe_exception
from shoal.executors._shipping import dumps, loads
from shoal.limits import lowest_free_descriptor, note_files_limit, within_files_limit

log = logging.getLogger("shoal")

# Every agent process asks its model first: the model turn's tool is made as this module is
# imported, which the template that forks agent processes does once, rather than on each
# fork's first turn (the first pydantic validator a process builds makes pydantic look up
# its plugins: ~45 ms of every process agent's start; see run._model_turn_tool).
_model_turn_tool()

if TYPE_CHECKING:
    from shoal.agents.budget import BudgetTracker
    from shoal.agents.context import TreeContext
    from shoal.agents.remote import StartSpec
    from shoal.agents.result import AgentResult
    from shoal.agents.toolcalls import CallRecord
    from shoal.approvals import Approver
    from shoal.board import Board
    from shoal.exceptions import BudgetExceeded
    from shoal.models.retry import ModelGate, ModelGates
    from shoal.store.base import Store
    from shoal.store.claims import RunClaim


def _descriptor_closed(exc: OSError) -> None:
    """End this process as its socket's end does, if ``exc`` says a tool closed a descriptor.

    ``EBADF``: closed (``os.close``, ``os.closerange``); ``ENOTSOCK``: closed, and its number
    taken since by a file. The reader thread, blocked on the socket, may never see its end.
    """
    import errno

    if exc.errno in (errno.EBADF, errno.ENOTSOCK):
        from shoal.executors._worker import AGENT_SOCKET_ENDED_EXIT, exit_with_group

        exit_with_group(AGENT_SOCKET_ENDED_EXIT)


#: Seconds between two checks that the agent's socket is still open (see Link.start_reading)
SOCKET_CHECK = 0.25


def _watch_descriptor(fd: int) -> None:
    """Exit as :func:`_descriptor_closed` does once ``fd`` is closed, or another file's."""
    import errno

    first = os.fstat(fd)
    while True:
        time.sleep(SOCKET_CHECK)
        try:
            now = os.fstat(fd)
        except OSError as exc:
            _descriptor_closed(exc)
            raise
        if (now.st_ino, now.st_dev) != (first.st_ino, first.st_dev):  # its number taken since
            _descriptor_closed(OSError(errno.EBADF, "closed, and its number taken since"))


class Link:
    """The agent's side of the socket: requests with replies, one-way messages, and the reader."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._file = sock.makefile("rb")
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._waiting: dict[int, concurrent.futures.Future[Any]] = {}
        self._on_cancel: Callable[[str, Any], None] | None = None
        self._early: tuple[str, Any] | None = None  # a cancel that came before the handler
        self._cancel_lock = threading.Lock()

    def read(self) -> Any:
        """The next message (``None`` at the end of the socket)."""
        header = self._file.read(HEADER.size)
        if len(header) < HEADER.size:
            return None
        body = self._file.read(HEADER.unpack(header)[0])
        return loads(body)

    def send(self, message: tuple[Any, ...]) -> None:
        """Send one message (from any thread)."""
        self._send(dumps(message, "a message from an agent process"))

    def send_done(self, body: bytes) -> None:
        """Send the ``done`` message, pickled already (see :func:`done_message`)."""
        self._send(body)

    def _send(self, body: bytes) -> None:
        # a parent that is gone raises OSError here: the reader thread ends this process
        with self._send_lock:
            try:
                self._sock.sendall(HEADER.pack(len(body)) + body)
            except OSError as exc:
                _descriptor_closed(exc)  # a tool closed it: the reader may never wake

    def request(self, op: str, *args: Any) -> concurrent.futures.Future[Any]:
        """Ask the parent; the future holds its answer (or its error).

        Raises :class:`~shoal.exceptions.SerializationError` here, in the asking call, for a
        request the parent's restricted loader would refuse (a board write of an instance of
        the tool's own class): the parent could only end this whole process for it.
        """
        from shoal.executors.results import load_result

        call_id = next(self._ids)
        what = f"what an agent process asked of its tree ({op.replace('_', ' ')})"
        body = dumps(("call", call_id, op, args), what)
        load_result(body, what)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._waiting[call_id] = future
        self._send(body)
        return future

    def ask(self, op: str, *args: Any) -> Any:
        """Ask the parent and wait for the answer here (a budget charge: one round trip)."""
        return self.request(op, *args).result()

    def on_cancel(self, handler: Callable[[str, Any], None]) -> None:
        """Call ``handler(reason, breach)`` on a ``cancel``; at once for one that came already."""
        with self._cancel_lock:
            self._on_cancel, early = handler, self._early
        if early is not None:
            handler(*early)

    def _cancelled(self, reason: str, breach: Any) -> None:
        with self._cancel_lock:
            handler = self._on_cancel
            if handler is None:  # the agent is still starting: it stops once it can
                self._early = self._early or (reason, breach)
                return
        handler(reason, breach)

    def start_reading(self) -> None:
        """Read the parent's messages on a daemon thread until the socket closes.

        Another daemon thread checks, every :data:`SOCKET_CHECK` s, that the socket's
        descriptor is still the socket: a tool that closes it (``os.closerange``) leaves the
        reader blocked on it for good, and the event loop too when its own descriptors went
        with it (its wake-up pipe closed, nothing wakes it).
        """
        threading.Thread(target=self._read_all, name="shoal-agent-link", daemon=True).start()
        threading.Thread(target=_watch_descriptor, args=(self._sock.fileno(),),
                         name="shoal-agent-socket-watch", daemon=True).start()

    def _read_all(self) -> None:
        from shoal.executors._worker import AGENT_SOCKET_ENDED_EXIT, exit_with_group

        try:
            self._take_all()
        finally:
            # The parent is gone (or sent garbage), or a tool ended the socket (shut it
            # down, closed it): nothing here may outlive it; a parent still there reads why.
            exit_with_group(AGENT_SOCKET_ENDED_EXIT)

    def _take_all(self) -> None:
        """Hand each reply to its request and each ``cancel`` on, until the socket ends."""
        while (message := self.read()) is not None:
            if message[0] == "reply":
                _, call_id, ok, value = message
                future = self._waiting.pop(call_id, None)
                # a request given up meanwhile (a review withdrawn, say) has no taker
                if future is None or not future.set_running_or_notify_cancel():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
            elif message[0] == "cancel":
                self._cancelled(message[1], message[2])


def remote_tracker(link: Link, ctx: TreeContext) -> BudgetTracker:
    """A budget tracker whose charges the root's tracker answers (limits stay exact)."""
    from shoal.agents.budget import BudgetTracker
    from shoal.agents.context import breach_stopper
    from shoal.exceptions import BudgetExceeded
    from shoal.models.base import Usage

    class RemoteTracker(BudgetTracker):
        #: the tokens the whole tree had spent at the last charge (see tokens_left)
        tree_spent = 0

        def _asked(self, op: str, *args: Any) -> Any:
            try:
                return link.ask(op, *args)
            except BudgetExceeded as exc:  # the tree broke its budget: stop here too
                self.stop(exc)

        def start_request(self, where: str) -> None:
            self.check_tree()
            # the root answers with what the whole tree spent: the request's output cap
            # (tokens_left, asked next) is what the tree left, not what this agent did
            self.tree_spent = int(self._asked("start_request", where) or 0)
            self.requests += 1

        def tokens_left(self) -> int | None:
            tokens = self.budget.tokens
            return None if tokens is None else max(tokens - self.tree_spent, 1)

        async def reserve(self, where: str, most: int) -> int | None:
            # held in the root's tracker, with every request of the tree: a hold granted
            # after this request was cancelled goes straight back
            if self.budget.tokens is None:
                return None
            self.check_tree()
            future = link.request("reserve", where, most)
            try:
                cap: int = await asyncio.shield(asyncio.wrap_future(future))
            except asyncio.CancelledError:
                future.add_done_callback(partial(_give_back, link, where))
                raise
            except BudgetExceeded as exc:  # the tree broke its budget: stop here too
                self.stop(exc)
            self.held[where] = cap
            return cap

        def release(self, where: str) -> None:
            if self.held.pop(where, None) is not None:
                link.send(("release", where))

        def charge_streamed(self, tokens: int, where: str) -> None:
            # each new token of a reply streaming goes to the root's budget, one way (no
            # round trip per piece): it stops the whole tree there, this agent with it,
            # once the replies streaming anywhere in the tree surely pass the budget
            if self.budget.tokens is not None and self.streaming.get(where, 0) != tokens:
                if tokens:
                    self.streaming[where] = tokens
                else:
                    del self.streaming[where]
                link.send(("streamed", where, tokens))

        def refund_request(self, where: str) -> None:
            self._asked("refund_request", where)  # the root's count, which the tree shares
            super().refund_request(where)

        def add_usage(self, usage: Any, where: str) -> None:
            # its plain counts: a model's Usage of a class (or with fields) of its own may be
            # one the root's loader refuses, which would fail the agent's turn
            usage = Usage(int(usage.input_tokens), int(usage.output_tokens),
                          int(usage.requests), None if usage.cost is None else float(usage.cost),
                          int(usage.cache_read_tokens), int(usage.cache_write_tokens))
            self.usage = self.usage + usage
            self.streaming.pop(where, None)  # the root settles what it streamed
            self.held.pop(where, None)  # and what its request held
            self._asked("add_usage", usage, where)

        def take_subagent(self, depth: int, where: str) -> BudgetExceeded | None:
            refusal: BudgetExceeded | None = self._asked("take_subagent", depth, where)
            if refusal is None:
                self.subagents += 1
            return refusal

    return RemoteTracker(ctx.tracker.budget, breach_stopper(ctx))  # not a cycle with ctx


def _give_back(link: Link, where: str, future: concurrent.futures.Future[Any]) -> None:
    """Give back the tokens a request held that was cancelled before the hold came."""
    if not future.cancelled() and future.exception() is None:
        link.send(("release", where))


def remote_gates(link: Link, retry: Any) -> ModelGates:
    """Model gates whose slots and pauses are the root's gates' (one per model, tree-wide)."""
    from shoal.models.retry import ModelGate, ModelGates

    class RemoteGate(ModelGate):
        async def acquire(self) -> None:
            future = link.request("gate_enter", self.name)
            try:
                await asyncio.shield(asyncio.wrap_future(future))
            except asyncio.CancelledError:  # a slot granted later goes straight back
                future.add_done_callback(self._give_back)
                raise

        def _give_back(self, future: concurrent.futures.Future[Any]) -> None:
            if not future.cancelled() and future.exception() is None:
                link.send(("gate_exit", self.name))

        def release(self) -> None:
            link.send(("gate_exit", self.name))

        def pause(self, seconds: float) -> None:
            link.send(("gate_pause", self.name, seconds))

    class RemoteGates(ModelGates):
        def _new_gate(self, name: str) -> ModelGate:
            return RemoteGate(name, retry=self._retry, rng=self._rng)

    return RemoteGates(retry=retry)


def remote_approver(link: Link) -> Approver:
    """An approver that asks the root's approver."""
    from shoal.approvals import ApprovalRequest, Approver, Decision, answer_now

    def _answered(request: ApprovalRequest, answer: asyncio.Future[Any]) -> None:
        """Hand the root's decision on at once (see :func:`~shoal.approvals.answer_now`)."""
        if not answer.cancelled() and answer.exception() is None:
            answer_now(request, answer.result()[0])

    class RemoteApprover(Approver):
        @property
        def serial(self) -> bool:
            return False  # the root's desk asks its approver one batch at a time if it must

        async def review(self, batch: Sequence[ApprovalRequest]) -> Sequence[Decision]:
            # one request each: each decision comes back, and its call starts, as the root
            # makes it (the root's desk batches them again); one asked of the whole batch
            # held every answer back until the last (or the approval timeout) came
            asking = [asyncio.wrap_future(link.request("review", [request]))
                      for request in batch]
            for request, answer in zip(batch, asking, strict=True):
                answer.add_done_callback(partial(_answered, request))
            answers = await asyncio.gather(*asking)
            return [decisions[0] for decisions in answers]

        def withdrawn(self, requests: Sequence[ApprovalRequest]) -> None:
            # the root's desk stops asking about them (its approver is told in turn)
            link.send(("withdraw", [r.id for r in requests]))

    return RemoteApprover()


def remote_board(link: Link, rules: Mapping[str, Any]) -> Board:
    """The tree's board, which the root keeps: every read and commit is answered there.

    Its keys and rules are the root board's, so a write to an unknown key or of a value its
    rule refuses fails here at once, as inline; reads see the root's values and versions, and
    a call's writes are merged there when it succeeds (one round trip), so conflicts are found
    across the whole tree. With a durable journal the root journals the commit as it applies
    it, before it answers (:meth:`TreeServer.commit_call
    <shoal.agents.remote.TreeServer.commit_call>`): the board and the journal agree whenever
    this process is killed, and a call run again finds its commit and makes none. Without
    one, the record comes back and is journaled here with the call's outcome.
    """
    from shoal.board import Board, BoardConflict
    from shoal.store.base import EffectRecord

    class RemoteBoard(Board):
        local = False

        def __getitem__(self, key: str) -> Any:
            self._slot(key)
            return link.ask("board_get", key)

        def snapshot(self) -> dict[str, Any]:
            found: dict[str, Any] = link.ask("board_snapshot")
            return found

        @property
        def conflicts(self) -> list[BoardConflict]:
            found: list[BoardConflict] = link.ask("board_conflicts")
            return found

        def _read(self, key: str) -> tuple[Any, int]:
            self._slot(key)
            value, version = link.ask("board_read", key)
            return value, version

        def _commit(self, writer: str, writes: list[tuple[str, Any]], seen: Mapping[str, int],
                    *, call: tuple[str, str] | None = None,
                    recorded: Iterable[BoardConflict] | None = None,
                    number: int | None = None, args: str = "") -> tuple[list[BoardConflict], int]:
            conflicts, committed = link.ask(
                "board_commit", writer, list(writes), dict(seen), call,
                None if recorded is None else list(recorded), number, args)
            return conflicts, committed

        def _commit_call(self, writer: str, writes: list[tuple[str, Any]],
                         seen: Mapping[str, int], call: tuple[str, str],
                         args: str = "") -> EffectRecord | None:
            # the root applies and journals it in one step (see TreeServer.commit_call)
            record: EffectRecord | None = link.ask(
                "board_commit_call", writer, list(writes), dict(seen), call, args)
            return record

        def _replay(self, record: EffectRecord) -> None:
            link.ask("board_replay", record)

    return RemoteBoard(rules)


class ParentStore:
    """The agent's journal: its parent's store, read and written through the parent.

    Implements :class:`~shoal.store.base.Store` (and ``claim_run``, ``effects``) by asking the
    parent, one round trip per call; the parent answers from its own store (for runs of the
    agent's own subtree only), which is the root's, or asks its own parent in turn. So an
    agent anywhere in the tree (a Ray actor on another machine, a process agent nested in
    one) journals in the root's journal, and resume needs no shared file system. It is
    durable: the parent's store is (an in-memory one is mirrored instead, see
    :class:`ParentMirror`), so the agent's runtime journals from writer threads of its own.
    """

    durable = True

    def __init__(self, link: Link, keeps_events: bool) -> None:
        self._link = link
        self.keeps_events = keeps_events

    def _ask(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._link.ask("store", name, args, kwargs)

    def write(self, records: Sequence[Any]) -> None:
        """Store ``records`` in one transaction of the root's store.

        A record the parent would refuse, or that cannot be pickled (a tool value of a class
        it does not allow, holding a lock), must not stop the agent's journal: the records
        are then sent one by one, and a call's outcome that cannot go is journaled ``failed``
        with a :class:`~shoal.exceptions.SerializationError` saying why, as the agent's
        result reports that call (see :func:`shoal.agents.remote.without_refused`); any
        other such record is left out, with a warning (that step is not replayed).
        """
        from shoal.exceptions import SerializationError

        records = list(records)
        try:
            self._ask("write", records)
        except SerializationError:
            for record in records:
                self._write_one(record)

    def _write_one(self, record: Any) -> None:
        from shoal.exceptions import SerializationError

        try:
            self._ask("write", [record])
            return
        except SerializationError as exc:
            why = str(exc)
        failed = _failed_outcome(record, why)
        if failed is not None:
            with contextlib.suppress(SerializationError):
                self._ask("write", [failed])
                return
        log.warning("a journal record of an agent (%s) cannot go to its parent: %s; that step "
                    "is not replayed if the agent is retried", type(record).__name__, why)

    def get_run(self, run_id: str) -> Any:
        """One run, or ``None``."""
        return self._ask("get_run", run_id)

    def list_runs(self, limit: int = 50) -> list[Any]:
        """Not offered to an agent: it sees only its own runs."""
        from shoal.exceptions import ShoalError

        raise ShoalError("an agent journaling through its parent cannot list the journal's "
                         "runs")

    def outcomes(self, run_id: str, *, decode: bool = True) -> dict[str, Any]:
        """Each node's latest outcome, by node id."""
        found: dict[str, Any] = self._ask("outcomes", run_id, decode=decode)
        return found

    def attempts(self, run_id: str) -> list[Any]:
        """Every attempt of the run."""
        found: list[Any] = self._ask("attempts", run_id)
        return found

    def effects(self, run_id: str, *, nested: bool = False) -> list[Any]:
        """The run's journaled effects."""
        found: list[Any] = self._ask("effects", run_id, nested=nested)
        return found

    def events(self, run_id: str) -> list[dict[str, Any]]:
        """The run's journaled events."""
        found: list[dict[str, Any]] = self._ask("events", run_id)
        return found

    def request_approval(self, record: Any) -> Any:
        """Store a pending approval request."""
        return self._ask("request_approval", record)

    def decide(self, run_id: str, node_id: str, args_hash: str, decision: Any, *,
               decided_by: str = "", reason: str = "", at: float | None = None) -> None:
        """Record a decision."""
        self._ask("decide", run_id, node_id, args_hash, decision, decided_by=decided_by,
                  reason=reason, at=at)

    def use_decision(self, run_id: str, node_id: str, args_hash: str) -> Any:
        """The unused decision for exactly this call, marked used."""
        return self._ask("use_decision", run_id, node_id, args_hash)

    def approvals(self, run_id: str, *, pending_only: bool = False) -> list[Any]:
        """The run's approval requests and decisions."""
        found: list[Any] = self._ask("approvals", run_id, pending_only=pending_only)
        return found

    def request_cancel(self, run_id: str, node_ids: Sequence[str] = (), *,
                       reason: str = "cancelled by the user") -> None:
        """Not offered to an agent: its parent cancels it."""
        from shoal.exceptions import ShoalError

        raise ShoalError("an agent journaling through its parent cannot ask the journal to "
                         "cancel runs")

    def take_cancel_requests(self, run_id: str) -> list[Any]:
        """Cancel requests for the run not taken yet."""
        found: list[Any] = self._ask("take_cancel_requests", run_id)
        return found

    def heartbeat(self, run_id: str, at: float) -> None:
        """Say that the run is still running."""
        self._ask("heartbeat", run_id, at)

    def claim_run(self, run_id: str) -> RunClaim:
        """Claim ``run_id`` in the root's store; the parent holds the claim for the agent."""
        return _ParentClaim(self._link, self._link.ask("store_claim", run_id))

    def close(self) -> None:
        """Nothing to release here: the store is the parent's."""


class ParentMirror(ParentStore):
    """The agent's journal when its parent's is in memory: kept here, and mirrored there.

    A memory store of this process holds what the agent's runtime writes (read at once, as
    an in-memory journal is), and the parent is sent every record too, one way (no answer
    awaited), so that an agent retried in a new process after this one died (``resuming``)
    finds in the parent's journal every step this one finished, and replays it instead of
    asking its model or running its calls again, as an inline agent retried in the same run
    does. Each step's outcome is journaled as the step ends (``journals_ends``: a memory
    journal otherwise gets a run's outcomes when the run ends, see
    :mod:`shoal.scheduler.driver`); a run's start is held back until its first outcome and
    goes with it; a step still going when the process dies runs again.

    The parent keeps what it is sent as it came, and loads it into its store only when it
    is read (see :class:`~shoal.agents.remote.Mirrored`): most agents are never retried, and
    loading the records (with the restricted loader) would cost the parent more than
    everything else the agent asks of it. Writes made on the loop in one iteration go in one
    message once the loop is free; a write from another thread, and any read, sends what
    waits first, so the parent has them in order.
    """

    durable = False
    #: the driver journals each node's outcome as it ends, not all at the session's end: an
    #: agent's steps are nodes of one run, which a process that dies never ends
    journals_ends = True

    def __init__(self, link: Link, keeps_events: bool, *, resuming: bool) -> None:
        from shoal.store.memory import MemoryStore

        super().__init__(link, keeps_events)
        self._local = MemoryStore(keep_events=keeps_events)
        #: read the parent's journal (an agent run again: its earlier steps are there)
        self.resuming = resuming
        self._starts: dict[str, Any] = {}  # runs begun, held until their first other record
        self._pending: list[Any] = []
        self._lock = threading.Lock()
        self._flushing = False

    def write(self, records: Sequence[Any]) -> None:
        """Store ``records`` here, and send them to the parent (soon, in order)."""
        from shoal.store.base import RunRecord

        self._local.write(records)
        loop = running_loop()
        with self._lock:
            for record in records:
                if type(record) is RunRecord and record.status == "running":
                    self._starts[record.run_id] = record
                    continue
                start = self._starts.pop(getattr(record, "run_id", ""), None)
                if start is not None:
                    self._pending.append(start)
                self._pending.append(record)
            if loop is not None and self._pending and not self._flushing:
                self._flushing = True
                loop.call_soon(self.flush)
        if loop is None:  # another thread: no loop turn to wait for
            self.flush()

    def keep(self, records: Sequence[Any]) -> None:
        """Store ``records`` here only (its parent has them already)."""
        self._local.write(records)

    def flush(self) -> None:
        """Send the parent every record not sent yet, in one message."""
        with self._lock:
            self._flushing = False
            self._send_pending()

    def _send_pending(self) -> None:
        records, self._pending = self._pending, []
        if not records:
            return
        try:
            entries = journal_entries(records)
        except Exception:  # a plan that cannot be described: the journal here goes on
            log.warning("journal records of an agent could not be sent to its parent: those "
                        "steps are not replayed if it is retried", exc_info=True)
            return
        self._link.send(("journal", entries))

    def forward(self, entries: list[tuple[str, bytes]]) -> None:
        """Pass on what an agent below this one journaled (see :func:`journal_entries`)."""
        with self._lock:
            self._send_pending()  # in order: what this agent wrote before goes first
            self._link.send(("journal", entries))

    def _ask(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self.flush()  # the parent has them before it answers
        return super()._ask(name, *args, **kwargs)

    def get_run(self, run_id: str) -> Any:
        """One run, or ``None`` (the parent's knowledge when the agent runs again)."""
        return super().get_run(run_id) if self.resuming else self._local.get_run(run_id)

    def outcomes(self, run_id: str, *, decode: bool = True) -> dict[str, Any]:
        """Each node's latest outcome, by node id."""
        if self.resuming:
            return super().outcomes(run_id, decode=decode)
        return self._local.outcomes(run_id, decode=decode)

    def attempts(self, run_id: str) -> list[Any]:
        """Every attempt of the run (a memory journal keeps none)."""
        return super().attempts(run_id) if self.resuming else self._local.attempts(run_id)

    def effects(self, run_id: str, *, nested: bool = False) -> list[Any]:
        """The run's journaled effects."""
        if self.resuming:
            return super().effects(run_id, nested=nested)
        return self._local.effects(run_id, nested=nested)

    def events(self, run_id: str) -> list[dict[str, Any]]:
        """The run's journaled events."""
        return super().events(run_id) if self.resuming else self._local.events(run_id)

    def claim_run(self, run_id: str) -> RunClaim:
        """Claim ``run_id`` in this process (the run's journal is in memory: nobody else's)."""
        return self._local.claim_run(run_id)

    def close(self) -> None:
        """Send what is left."""
        self.flush()


def journal_entries(records: list[Any]) -> list[tuple[str, bytes]]:
    """``records`` as the ``journal`` message holds them: ``(run_id, pickled records)``.

    One entry per run, its records pickled on their own, so the parent loads only the run
    ids (plain data: nothing to check) and keeps the rest as it came until it is read; and a
    run whose records it cannot load then is the only one lost. A run's plan description,
    worked out only when needed in memory, is worked out now: the run may be resumed in
    another process. A call's outcome whose value does not pickle is sent ``failed``, saying
    why (as the agent's result reports that call); any other record that does not pickle is
    left out, logged: that step of the agent runs again if it is retried.
    """
    from shoal.exceptions import SerializationError

    runs: dict[str, list[Any]] = {}
    for record in records:
        runs.setdefault(getattr(record, "run_id", ""), []).append(_described(record))
    entries = []
    for run_id, kept in runs.items():
        try:  # plain pickle first: records of shoal's classes and plain values, twice as fast
            entries.append((run_id, pickle.dumps(kept, protocol=pickle.HIGHEST_PROTOCOL)))
            continue
        except Exception:  # a value that only cloudpickle takes (or nothing does)
            pass
        try:
            entries.append((run_id, dumps(kept, f"the journal records of run {run_id}")))
            continue
        except SerializationError:  # one record's value, most likely: the others go
            pass
        sendable = [found for found in map(_sendable_record, kept) if found is not None]
        with contextlib.suppress(SerializationError):  # logged for each record left out
            entries.append((run_id, dumps(sendable, f"the journal records of run {run_id}")))
    return entries


def _sendable_record(record: Any) -> Any:
    """``record`` if it pickles; a call's outcome that does not, ``failed`` saying why."""
    from shoal.exceptions import SerializationError

    try:
        dumps(record, "it")
        return record
    except SerializationError as exc:
        why = str(exc)
    failed = _failed_outcome(record, why)
    if failed is None:
        log.warning("a journal record of an agent (%s) cannot go to its parent: %s; that step "
                    "cannot be replayed if the agent is retried", type(record).__name__, why)
    return failed


def _described(record: Any) -> Any:
    """``record``, with a plan description worked out on first use made plain data."""
    from shoal.store.base import RunRecord, run_record_with
    from shoal.store.fingerprint import LazyDescription

    if isinstance(record, RunRecord) and isinstance(record.plan, LazyDescription):
        return run_record_with(record, plan=dict(record.plan))
    return record


class _ParentClaim:
    """A run claim the parent holds for the agent; released by asking it."""

    def __init__(self, link: Link, claim_id: int) -> None:
        self._link = link
        self._id: int | None = claim_id

    def release(self) -> None:
        """Let the claim go (once)."""
        claim_id, self._id = self._id, None
        if claim_id is not None:
            self._link.ask("store_release", claim_id)


def remote_context(spec: StartSpec, link: Link, *, store: Store | str | None = None,
                   elsewhere: bool = False) -> TreeContext:
    """The agent's :class:`TreeContext`, whose shared parts ask the parent's tree.

    Args:
        spec: what the parent sent.
        link: the connection to the parent.
        store: the agent's journal (default: ``spec.store``, which this process opens, or
            a :class:`ParentStore` when the journal is reached through the parent).
        elsewhere: the agent may run on another machine (a Ray actor), whose monotonic clock
            is not the parent's: the events' origin crosses as epoch time (clocks kept in
            step by NTP) and is placed on this machine's loop clock.
    """
    from shoal.agents.context import TreeContext
    from shoal.agents.remote import (
        PARENT_EVENTS,
        PARENT_MEMORY,
        PARENT_MEMORY_EVENTS,
        PARENT_STORE,
    )
    from shoal.runtime import Runtime

    approver = remote_approver(link) if spec.approver else None
    if store is None:
        store = spec.store
        if spec.store in (PARENT_STORE, PARENT_EVENTS):
            store = ParentStore(link, keeps_events=spec.store == PARENT_EVENTS)
        elif spec.store in (PARENT_MEMORY, PARENT_MEMORY_EVENTS):
            store = ParentMirror(link, keeps_events=spec.store == PARENT_MEMORY_EVENTS,
                                 resuming=spec.resuming)
    runtime = Runtime(store=store, approver=approver, **spec.runtime)
    sinks = [_Forward(link, spec.wants_text)] if spec.observed else []
    # the tree's one board stays with the root: its reads and commits go over the link
    board = None if spec.board is None else remote_board(link, spec.board)
    ctx = TreeContext(run_id=spec.run_id, runtime=runtime, budget=spec.budget, sinks=sinks,
                      gates=remote_gates(link, spec.retry), model_override=spec.override,
                      resuming=spec.resuming, force=spec.force, board=board,
                      settling=spec.settling)
    ctx.tracker = remote_tracker(link, ctx)
    if elsewhere:
        _, epoch = spec.origin
        ctx.adopt_origin(time.monotonic() - (time.time() - epoch), epoch)
    else:
        ctx.adopt_origin(*spec.origin)
    return ctx


class _Forward:
    """The agent's one event sink: every event goes to the parent's sinks."""

    def __init__(self, link: Link, wants_text: bool) -> None:
        self._link = link
        self.wants_text = wants_text

    def __call__(self, event: Any) -> None:
        self._link.send(("event", event))


async def run(spec: StartSpec, link: Link,
              ctx: TreeContext | None = None) -> AgentResult[Any] | None:
    """Run the agent of ``spec``; the result whatever happens (a cancelled run's too).

    ``ctx``: the agent's tree context (default: :func:`remote_context`'s). ``None`` when the
    agent cannot start here (its model cannot be made: a key not passed in ``env=``, an
    ``open_files`` limit its client's import reaches): the parent is told why.
    """
    from shoal.agents.run import AgentRun

    ctx = remote_context(spec, link) if ctx is None else ctx
    loop = asyncio.get_running_loop()

    def cancel(reason: str, breach: BudgetExceeded | None) -> None:
        loop.call_soon_threadsafe(_stop, ctx, spec.lineage, reason, breach)

    link.on_cancel(cancel)
    try:
        agent_run = AgentRun(spec.agent, ctx, lineage=spec.lineage, depth=spec.depth,
                             prompt=spec.prompt, here=True)
    except Exception as exc:  # was: a traceback on stderr, and "died: exit code 1"
        await ctx.close_models()
        await ctx.runtime.aclose()
        failed = within_files_limit(exc)
        said = describe_exception(failed)
        if isinstance(exc, MissingAPIKeyError) and exc.env_var not in spec.agent.env:
            said += (f" (an agent in a process of its own sees only the environment variables "
                     f"its env= names: give env=[{exc.env_var!r}] to pass the key by name)")
        link.send(("unstartable", said))
        return None
    try:
        with contextlib.suppress(asyncio.CancelledError):  # recorded on the result
            await agent_run.run()
    finally:
        await ctx.close_models()
        await ctx.runtime.aclose()
    if agent_run.result.error is not None:  # a model's connection the limit refused, say
        agent_run.result.error = within_files_limit(agent_run.result.error)
    if isinstance(ctx.runtime.store, ParentMirror):  # the journal first: the parent stops
        ctx.runtime.store.flush()  # reading once the result is in
    # sent from here: a thread abandoned by a cancelled call would hold up the loop's end
    link.send_done(done_message(agent_run.result))
    return agent_run.result


def _stop(ctx: TreeContext, lineage: str, reason: str, breach: BudgetExceeded | None) -> None:
    """Stop as the parent says: cancelled, or the tree broke its budget (stopped as inline)."""
    if breach is None:
        ctx.cancel(lineage, reason)
    elif ctx.tracker.breach is None:
        ctx.tracker.breach = breach
        ctx._stop_everything(breach)


def done_message(result: AgentResult[Any]) -> bytes:
    """The ``done`` message, pickled: once, for a result that pickles whole (most do)."""
    from shoal.exceptions import SerializationError

    what = f"the result of agent {result.lineage}"
    try:
        return dumps(("done", result), what)
    except SerializationError:
        return dumps(_shippable(result), what)


def _shippable(result: AgentResult[Any]) -> tuple[str, Any]:
    """The ``done`` message: the result, less only what cannot be pickled, saying what.

    A tool that ran here may return a value pickle cannot take (nested too deeply, say): the
    agent used it, but it cannot go back, so its call's outcome says so (``failed``, with a
    :class:`~shoal.exceptions.SerializationError`) and the rest of the result goes back as
    it is. Only what still cannot be pickled after that costs the answer and the records.
    """
    from dataclasses import replace

    from shoal.exceptions import SerializationError

    if _unpicklable(result) is None:
        return ("done", result)
    kept = _picklable_part(result)
    problem = _unpicklable(kept)
    if problem is None:
        return ("done", kept)
    kept = _picklable_fields(kept)
    problem = _unpicklable(kept)
    if problem is None:
        return ("done", kept)
    return ("done", replace(
        result, status="failed", output=None, messages=[], calls=[], children=[], board=None,
        conflicts=[], plans=[], error=SerializationError(
            f"agent {result.lineage}'s result cannot go back to its parent: {problem}")))


def _unpicklable(value: object) -> str | None:
    """Why ``value`` cannot be pickled, or ``None`` when it can."""
    from shoal.exceptions import SerializationError

    try:
        dumps(value, "it")
    except SerializationError as exc:
        return str(exc)
    return None


def _picklable_part(result: AgentResult[Any]) -> AgentResult[Any]:
    """``result`` with what cannot be pickled (call values, answer, error) failed, saying so."""
    from dataclasses import replace

    from shoal.exceptions import SerializationError

    calls = [_picklable_call(record) for record in result.calls]
    children = [child if _unpicklable(child) is None else _picklable_part(child)
                for child in result.children]
    kept = replace(result, calls=calls, children=children)
    problem = _unpicklable(result.output)
    if problem is not None:
        kept = replace(kept, status="failed", output=None, error=SerializationError(
            f"agent {result.lineage}'s answer cannot go back to its parent: {problem}"))
    elif result.error is not None and _unpicklable(result.error) is not None:
        kept = replace(kept, error=SerializationError(
            f"agent {result.lineage} ended with an error that cannot go back to its parent: "
            f"{describe_exception(result.error)}"))
    return kept


def _picklable_fields(result: AgentResult[Any]) -> AgentResult[Any]:
    """``result``, each other field that does not pickle replaced (see :func:`_shippable`).

    A message of the conversation (a model's reply with a field of its own that does not
    pickle, say): one of its role whose text says why; a call's record: its call and message
    made plain; any other field: its default, logged. The answer, the calls' outcomes and
    the children are :func:`_picklable_part`'s.
    """
    from dataclasses import MISSING, fields, replace

    changes: dict[str, Any] = {}
    for item in fields(result):
        value = getattr(result, item.name)
        if item.name in ("output", "error", "children") or _unpicklable(value) is None:
            continue
        if item.name == "messages" and isinstance(value, list):
            changes["messages"] = [
                message if (why := _unpicklable(message)) is None else _plain_message(
                    message, f"message {index} of agent {result.lineage}", why, _unpicklable)
                for index, message in enumerate(value, 1)]
        elif item.name == "calls" and isinstance(value, list):
            changes["calls"] = [_picklable_record(record) for record in value]
        else:
            log.warning("agent %s's %s cannot go back to its parent and was left out: %s",
                        result.lineage, item.name, _unpicklable(value))
            changes[item.name] = (item.default_factory() if item.default is MISSING
                                  and item.default_factory is not MISSING else item.default)
    return replace(result, **changes)


def _picklable_record(record: Any) -> Any:
    """A call's record whose call or message does not pickle, with them made plain."""
    from dataclasses import replace

    from shoal.agents.toolcalls import CallRecord

    if _unpicklable(record) is None or not isinstance(record, CallRecord):
        return record
    changes: dict[str, Any] = {"call": _plain_tool_call(record.call, _unpicklable)}
    if (why := _unpicklable(record.message)) is not None:
        changes["message"] = _plain_message(
            record.message, f"the result its model read for {record.lineage}", why,
            _unpicklable)
    return replace(record, **changes)


def _failed_outcome(record: Any, why: str) -> Any:
    """An outcome record whose value cannot go to the parent, ``failed`` saying why."""
    from dataclasses import replace

    from shoal.exceptions import SerializationError
    from shoal.outcome import ErrorInfo, Outcome
    from shoal.store.base import OutcomeRecord

    if not (isinstance(record, OutcomeRecord) and isinstance(record.outcome, Outcome)
            and record.outcome.status == "ok"):
        return None
    outcome = record.outcome
    error = SerializationError(f"{outcome.node_id} ran and returned a value that cannot go to "
                               f"the agent's parent: {why}")
    return record._replace(outcome=replace(
        outcome, status="failed", value=None,
        error=ErrorInfo.from_exception(error, with_traceback=False)))


def _picklable_call(record: CallRecord) -> CallRecord:
    """``record``, or, when its value cannot be pickled, the same call ``failed`` saying why."""
    from dataclasses import replace

    from shoal.exceptions import SerializationError
    from shoal.outcome import ErrorInfo

    outcome = record.outcome
    problem = None if outcome is None else _unpicklable(outcome.value)
    if outcome is None or problem is None:
        return record
    error = SerializationError(
        f"{record.lineage} ran and returned a value that cannot go back to the agent's "
        f"parent: {problem}")
    failed = replace(outcome, status="failed", value=None,
                     error=ErrorInfo.from_exception(error, with_traceback=False))
    return replace(record, status="failed", outcome=failed)


def _end_descendants() -> None:
    """Kill every process below this one: what the agent's tools started ends with it.

    Those in a session of their own too, which the parent's kill of this process group
    misses; once this process has exited, they are no longer its descendants, and nothing
    could find them.
    """
    from shoal.executors._reaper import kill_tree

    kill_tree(os.getpid(), include_root=False)


def _terminated(number: int, _: object) -> None:
    """End what the tools started, then end by signal ``number`` as without this handler.

    For a ``SIGTERM``: the death signal of an agent forked by its template, when the template
    dies.
    """
    _end_descendants()
    signal.signal(number, signal.SIG_DFL)
    os.kill(os.getpid(), number)


def main(argv: list[str]) -> int:
    """Run one agent for the parent at the other end of socket ``argv[1]``.

    A child subreaper (Linux), as a process worker is: a process its tools start and orphan (a
    double-forked daemon) stays below this one, and ends with it; one that ends first is
    reaped (:mod:`shoal.executors._orphans`), not left a zombie until the agent ends.
    """
    from shoal.executors._orphans import start_orphan_reaper
    from shoal.executors._reaper import become_subreaper

    if become_subreaper():
        start_orphan_reaper()
    signal.signal(signal.SIGTERM, _terminated)
    try:
        return _serve(argv)
    except OSError as exc:  # a tool closed descriptors it did not open (its event loop's)
        _descriptor_closed(exc)
        raise
    finally:  # a tool's thread may still run (abandoned by a cancel): its children go now
        _end_descendants()


def _serve(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[1]))
    link = Link(sock)
    header = link._file.read(HEADER.size)
    if len(header) < HEADER.size:
        return 0
    sys.path[:] = pickle.loads(link._file.read(HEADER.unpack(header)[0]))
    try:
        message = link.read()
    except Exception as exc:  # the agent's definition needs what cannot be imported here
        link.send(("error", describe_exception(exc)))
        return 1
    if message is None:
        return 0
    spec: StartSpec = message[1]
    if spec.allowed:  # the parent's loader allows them: this process's checks do too
        from shoal.executors.results import allow_result_types

        allow_result_types(*spec.allowed)
    if spec.limits is not None:
        from shoal.executors._worker import apply_limits, cpu_budget

        if spec.limits.open_files is not None:  # before anything of the agent's opens one
            note_files_limit(spec.limits.open_files, lowest_free_descriptor(),
                             f"the process of agent {spec.lineage}", "its model's "
                             "connections, its tools' files and the modules they import", 256)
        apply_limits(spec.limits.memory, spec.limits.open_files)
        cpu_budget(spec.limits.cpu_seconds)
    link.start_reading()
    runner = asyncio.Runner()
    try:
        # its selector and wake-up pipe: the first descriptors it opens; asked for ahead, as
        # a loop whose wake-up pipe cannot be made is left half built, and its __del__ then
        # prints an AttributeError on stderr
        _room_for(_LOOP_DESCRIPTORS)
        runner.get_loop()
    except OSError as exc:
        starved = _starved(spec, exc)
        if starved is None:
            raise
        link.send(("unstartable", starved))
        return 1
    run_to_end(run(spec, link), runner)
    return 0


#: the descriptors an event loop opens as it is made: its selector and its wake-up pipe's two
_LOOP_DESCRIPTORS = 3

def _room_for(count: int) -> None:
    """Raise the ``OSError`` that opening ``count`` descriptors at once would; open none."""
    taken: list[int] = []
    try:
        for _ in range(count):
            taken.append(os.open(os.devnull, os.O_RDONLY))
    finally:
        for number in taken:
            os.close(number)


def _starved(spec: StartSpec, exc: OSError) -> str | None:
    """What to change, if ``exc`` is the ``open_files`` limit leaving the process none."""
    import errno

    limits = spec.limits
    if exc.errno != errno.EMFILE or limits is None or limits.open_files is None:
        return None
    return (f"limits open_files={limits.open_files} leaves the agent's process too few file "
            f"descriptors to start ({type(exc).__name__}: {exc}): the limit counts the "
            "process's own (its standard streams, its socket to shoal, its event loop's), "
            "besides its model's connections and its tools' files; give a larger open_files "
            "(256 leaves room for them), or none")


def run_to_end(main: Coroutine[Any, Any, object], runner: asyncio.Runner | None = None) -> None:
    """Run ``main`` on a fresh event loop (``runner``'s), then close the loop without waiting.

    As ``asyncio.run``, but the tasks left get the abandon grace and no more, as a
    ``*_sync`` call's do (:func:`shoal.runtime.close_runner`): a tool's task that ignores its
    cancellation (abandoned by its call's timeout) would keep this process, and the agent,
    from ever ending.
    """
    from shoal.runtime import close_runner

    runner = runner or asyncio.Runner()
    loop = runner.get_loop()
    try:
        runner.run(main)
    finally:
        close_runner(runner, loop)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
