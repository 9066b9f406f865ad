"""Agents on a Ray cluster: ``Agent(isolation="ray")``.

An agent whose ``isolation`` is ``"ray"`` runs its whole turn loop (its model requests, its
tools, and its own subagents unless they say otherwise) in a Ray actor of its own, on any node
of the cluster that has what ``Agent(resources=, labels=)`` asks for (the vocabulary of
``@tool(resources=, labels=)``). It is a process agent (:mod:`shoal.agents.remote`) with
another transport: the same messages, the same :class:`~shoal.agents.remote.TreeServer`
answering budgets, model gates, events, approvals and cancellation from the root's tree, and
the same child program (:mod:`shoal.agents._process`'s pieces) on the other end.

**The connection.** For each agent the parent listens on a TCP port of its own, bound to the
address the cluster's nodes reach the driver at (its Ray node's address: ``127.0.0.1`` for the
private local Ray shoal starts, the driver node's address on a real cluster), and makes a
one-time secret (:func:`secrets.token_bytes`, 32 bytes). The actor is handed the address and
the secret (through Ray), connects back and sends the secret first; a connection whose first
32 bytes are not the secret is closed before anything of it is read further, so nothing else on
the network can talk to the agent's parent. Once the agent's actor is connected, the port is
closed. The parent then sends the agent's definition (cloudpickled, as to a process agent);
what the actor sends is loaded with the restricted loader of :mod:`shoal.executors.results`.

**The journal** goes through the parent too: with a durable journal (a SQLite file) the
agent's runtime writes to a :class:`ParentStore`, whose every read and write is an RPC that
the parent answers from its own store, on a thread: the root's own, or (for an agent nested
in another remote agent) its parent's in turn. So resume of Ray agents needs no shared file
system: the agent's model turns and tool phases are journaled runs of the root's journal under
the agent's lineage, wherever the actor runs, and so are those of the agents it starts (a
process agent nested in it journals through it). The parent answers only for runs of that
agent's own subtree (``RUN/LINEAGE/...``). With the in-memory journal the actor keeps its
journal in memory and sends each step it finishes to the parent
(:class:`~shoal.agents._process.ParentMirror`), as a process agent does: an agent whose
actor died and whose plan node is retried replays, in its new actor, what the first finished.

**Ending it.** A cancel (a person, a timeout, a breached budget) is sent to the agent, which
records its end; one that has not ended :data:`~shoal.agents.remote.CANCEL_GRACE` seconds
later is killed with ``ray.kill``. Every agent's actor is killed once its result is in. When
its socket closes (the parent died, or killed it) the actor kills what its tools started and
exits. An actor that dies (killed, out of memory, its node lost) gives its parent's call an
:class:`~shoal.exceptions.AgentError` with Ray's account of the death; its siblings go on.

**Ray.** The actor is started through the runtime's Ray connection
(:mod:`shoal.executors.ray`: ``Runtime(ray_address=)``, ``RAY_ADDRESS``, else a private local
Ray), so the workers import the agent's tools and model as Ray tools' are imported (the
driver's source directories on ``PYTHONPATH``). It reserves no CPU unless ``resources`` says
so (its turn loop mostly waits for its model). ``Agent(env=[...])`` names environment
variables whose values the actor gets (through Ray's ``runtime_env``, so they travel to the
node with the actor's definition); the node's own environment is the rest of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import secrets
import signal
import socket
import time
from collections.abc import Coroutine
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from shoal.agents._process import Link, ParentStore, remote_context
from shoal.agents._process import run as run_remote
from shoal.agents.remote import (
    CANCEL_GRACE,
    HEADER,
    Channel,
    StartSpec,
    StopWatch,
    TreeServer,
    _adopt,
    _by_value,
    _fail,
    _Gone,
    _stopped,
    _unimportable,
    checked,
    load_message,
    read_body,
    routed_store,
    start_spec,
)
from shoal.exceptions import AgentError, ConfigError, describe_exception
from shoal.executors._shipping import dumps
from shoal.executors.ray import _here, _is_utf8, _warn_if_unplaceable
from shoal.scheduler import driver

if TYPE_CHECKING:
    import psutil

    from shoal.agents.agent import Agent
    from shoal.agents.context import TreeContext
    from shoal.agents.result import AgentResult
    from shoal.agents.run import AgentRun
    from shoal.exceptions import BudgetExceeded

__all__ = ["HANDSHAKE_TIMEOUT", "TOKEN_BYTES", "AgentActor", "ParentStore", "RayChannel",
           "RayTreeServer", "run_on_ray"]

#: Length of the one-time secret an agent's actor sends first when it connects back.
TOKEN_BYTES = 32
#: Seconds a connection to an agent's port has to send the secret before it is dropped.
HANDSHAKE_TIMEOUT = 10.0
#: Connections to an agent's port that may wait to be checked at once; past that the oldest
#: is dropped (the actor sends its secret at once, so only a stranger waits that long).
MAX_UNCHECKED = 32
#: Seconds an actor that sent its agent's result gets to return before it is killed.
FINISH_GRACE = 1.0
#: Seconds the parent waits for Ray's account of an actor whose socket closed.
DEATH_TIMEOUT = 10.0
#: Seconds the parent waits for Ray to say why an actor it can no longer reach is gone: a
#: lost node is declared dead by Ray's health checks of its raylet, after several missed
#: beats (about 15 to 30 s with Ray's defaults).
UNREACHABLE_TIMEOUT = 45.0
#: The line of Ray's account of an actor's death that says why it died.
_CAUSE = re.compile(r"The actor (is dead|died) because")
# ---- the parent's side --------------------------------------------------------------------


class RayChannel(Channel):
    """The parent's end of one agent's actor: its TCP connection, and the actor itself."""

    def __init__(self, ray: Any, actor: Any, ref: Any, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, lineage: str) -> None:
        self.ray = ray
        self.actor = actor
        self.ref = ref  # the actor's ``run``: ends when the agent does, or raises its death
        self.lineage = lineage
        #: set once the agent's result is in: its actor is then let return before it is killed
        self.finished = False
        #: the actor's node (``"10.0.0.7 node 4f1c..."``), as it said when it connected
        self.where = ""
        #: the actor's process id (on its node), as it said when it connected
        self.pid = 0
        #: why its parent killed it, when it was found stopped (see ``StopWatch``)
        self.stalled: str | None = None
        self._reader = reader
        self._writer = writer

    @classmethod
    async def start(cls, ray: Any, spec: StartSpec, options: dict[str, Any],
                    host: str) -> RayChannel:
        """Listen, start the agent's actor, take its connection and send it its spec."""
        # pickled first: a definition that does not pickle starts no actor, and the actor
        # is sent it the moment it connects
        with _by_value(_unimportable(spec.agent)):
            body = dumps(("start", spec), f"agent {spec.lineage!r} (to run it on Ray, its "
                         "definition is pickled)")
        token = secrets.token_bytes(TOKEN_BYTES)
        listener = _Listener(host, token)
        try:
            actor = _new_actor(ray, options, spec.lineage)
            try:
                ref = actor.run.remote(listener.host, listener.port, token)
                reader, writer = await listener.accept(ref, spec.lineage)
            except BaseException:
                with contextlib.suppress(Exception):
                    ray.kill(actor, no_restart=True)
                raise
        finally:
            listener.close()
        channel = cls(ray, actor, ref, reader, writer, spec.lineage)
        try:
            channel.where, channel.pid = await channel._node()
            channel._write(body)
        except BaseException:
            await channel.close()
            raise
        return channel

    async def _node(self) -> tuple[str, int]:
        """The actor's first message: its node and process (``("here", where, pid)``)."""
        message = await asyncio.wait_for(self.receive(), HANDSHAKE_TIMEOUT)
        if (message is None or len(message) != 3 or message[0] != "here"
                or not isinstance(message[1], str) or type(message[2]) is not int):
            raise AgentError(f"the Ray actor for agent {self.lineage} did not say where it "
                             "runs")
        return message[1], message[2]

    def _write(self, body: bytes) -> None:
        self._writer.write(HEADER.pack(len(body)) + body)

    def send(self, message: tuple[Any, ...]) -> None:
        """Queue one message (a closed connection drops it: the actor is gone)."""
        if not self._writer.is_closing():
            self._write(dumps(message, "a message to an agent's Ray actor"))

    async def receive(self) -> tuple[Any, ...] | None:
        """The next message, or ``None`` once the connection ends."""
        what = f"a message from the Ray actor running agent {self.lineage}"
        body = await read_body(self._reader, what)
        return None if body is None else checked(load_message(body, what), what)

    def kill(self) -> None:
        """``ray.kill`` the actor and drop its connection (it kills what it started)."""
        with contextlib.suppress(Exception):  # dead already, or Ray going down
            self.ray.kill(self.actor, no_restart=True)
        self._writer.close()

    async def ended(self) -> str:
        """Ray's account of how the actor ended (its connection closed before its result)."""
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self.ref.future())),
                                   DEATH_TIMEOUT)
        except TimeoutError:
            return "its connection closed, and Ray did not report the actor ended"
        except Exception as exc:
            if type(exc).__name__ == "ActorUnavailableError":
                exc = await self._settled(exc)
            return describe_death(exc)
        return "it closed its connection without sending a result"

    async def _settled(self, unavailable: Exception) -> Exception:
        """What Ray says of the actor once it knows more than "unavailable".

        An actor whose node is lost is first only *unavailable* to its caller (the
        connection to its worker broke); Ray declares it dead, naming the node's death, once
        its control store sees the node gone. Asking the actor again (a no-op method) gets
        that account; an actor still unreachable after :data:`UNREACHABLE_TIMEOUT` (or one
        that answers) keeps the first one.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + UNREACHABLE_TIMEOUT
        while (left := deadline - loop.time()) > 0:
            ping = self.actor.__ray_ready__.remote()
            try:
                await asyncio.wait_for(asyncio.wrap_future(ping.future()), left)
            except TimeoutError:
                break
            except Exception as exc:
                if type(exc).__name__ != "ActorUnavailableError":
                    return exc
                await asyncio.sleep(0.2)
                continue
            break  # it answered: alive after all, unreachable for its caller
        return unavailable

    async def close(self) -> None:
        """Kill the actor (its work is done or abandoned) and close the connection.

        An actor that sent its result is given a moment to return first: Ray reports the
        death of an actor's worker in the middle of a call as a crash, on the driver's log.
        """
        if self.finished:
            returned = asyncio.ensure_future(asyncio.wrap_future(self.ref.future()))
            await asyncio.wait({returned}, timeout=FINISH_GRACE)
            returned.cancel()
            with contextlib.suppress(BaseException):
                await returned
        self.kill()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()


@functools.cache
def _actor_class(ray: Any) -> Any:
    """``ray.remote(AgentActor)``, made once, not once per agent.

    Ray exports an actor class to each job (connection) it is first used in, so one class
    serves a Ray that was shut down and started again too.
    """
    return ray.remote(AgentActor)


def _new_actor(ray: Any, options: dict[str, Any], lineage: str) -> Any:
    """The agent's actor; a :class:`ConfigError` if Ray refuses its options.

    Ray checks some of what ``Agent(resources=, labels=)`` gives only here: the syntax of a
    label selector, say.
    """
    try:
        return _actor_class(ray).options(**options).remote()
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"agent {lineage}: Ray refused its actor's options (from its "
                          f"resources= and labels=): {exc}") from None


class _Listener:
    """A TCP port that takes the first connection presenting ``token``, and no other."""

    def __init__(self, host: str, token: bytes) -> None:
        self._token = token
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            self._sock.bind((host, 0))
            self._sock.listen(16)
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        #: connections not checked yet, oldest first, with the task checking each
        self._checking: dict[asyncio.Task[Any], socket.socket] = {}
        self._begun: set[asyncio.Task[Any]] = set()  # those tasks that started
        self._won: asyncio.Future[socket.socket] | None = None

    async def accept(self, ref: Any, lineage: str,
                     ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The actor's connection; an :class:`AgentError` if the actor ends before it comes."""
        loop = asyncio.get_running_loop()
        self._won = loop.create_future()
        accepting = asyncio.ensure_future(self._accept_all())
        actor = asyncio.ensure_future(asyncio.wrap_future(ref.future()))
        try:
            await asyncio.wait({self._won, actor}, return_when=asyncio.FIRST_COMPLETED)
            if not self._won.done():
                try:
                    actor.result()
                except Exception as exc:
                    raise AgentError(f"the Ray actor for agent {lineage} could not start: "
                                     f"{describe_death(exc)}") from None
                raise AgentError(f"the Ray actor for agent {lineage} ended before it "
                                 "connected to its parent")
            conn = self._won.result()
        finally:
            accepting.cancel()
            actor.cancel()
            checking = list(self._checking)
            for task in checking:
                self._drop(task)
            await asyncio.gather(accepting, actor, *checking, return_exceptions=True)
        try:
            return await asyncio.open_connection(sock=conn)
        except BaseException:
            conn.close()
            raise

    async def _accept_all(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self._sock)
            if len(self._checking) >= MAX_UNCHECKED:  # a flood holds no more than this open
                self._drop(next(iter(self._checking)))
            task = asyncio.ensure_future(self._check(conn))
            self._checking[task] = conn
            task.add_done_callback(self._checked)

    def _drop(self, task: asyncio.Task[Any]) -> None:
        """Stop checking one connection, and close it.

        A check that started closes its socket itself once cancelled (after the loop stopped
        watching it: a socket closed while watched can leave the loop watching its number,
        which the next socket gets); one that never started cannot, so it is closed here.
        """
        conn = self._checking.pop(task, None)
        task.cancel()
        if conn is not None and task not in self._begun:
            conn.close()

    def _checked(self, task: asyncio.Task[Any]) -> None:
        self._checking.pop(task, None)
        self._begun.discard(task)

    async def _check(self, conn: socket.socket) -> None:
        """Keep ``conn`` if its first bytes are the secret (compared in constant time)."""
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        if me is not None:
            self._begun.add(me)
        got = b""
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                while len(got) < TOKEN_BYTES:
                    chunk = await loop.sock_recv(conn, TOKEN_BYTES - len(got))
                    if not chunk:
                        break
                    got += chunk
        except (TimeoutError, OSError):
            pass
        except BaseException:
            conn.close()
            raise
        won = self._won
        if (len(got) == TOKEN_BYTES and secrets.compare_digest(got, self._token)
                and won is not None and not won.done()):
            if me is not None:
                self._checking.pop(me, None)  # ours now, not to be closed
            won.set_result(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Stop listening."""
        self._sock.close()


def describe_death(exc: BaseException) -> str:
    """Ray's account of an actor's death, in one line (what killed it, and where).

    Ray's cause (``The actor is dead because it was killed by `ray.kill`.``, ``The actor
    died because its node has died. Node Id: ...``, and how the node ended) rather than its
    generic first line.
    """
    text = str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    found = {key: line.split(":", 1)[1].strip() for line in lines
             for key in ("pid", "ip") if line.startswith(f"{key}:")}
    at = next((i for i, line in enumerate(lines) if _CAUSE.match(line)), None)
    if at is None:
        why = lines[0] if lines else type(exc).__name__
    else:
        why = lines[at]
        if at + 1 < len(lines) and lines[at + 1].startswith("the actor's node"):
            why += f" ({lines[at + 1]})"
    why = why.split(" Some common causes", 1)[0]
    where = f" (pid {found['pid']} on {found['ip']})" if found.keys() == {"pid", "ip"} else ""
    return f"{type(exc).__name__}{where}: {why}"


class RayTreeServer(TreeServer):
    """The :class:`TreeServer` of an agent's actor.

    It answers the agent's journal too, as any :class:`TreeServer` does for an agent that
    journals through its parent (:class:`ParentStore`).
    """


def actor_options(agent: Agent[Any]) -> dict[str, Any]:
    """Ray options for the agent's actor: its resources and labels, no restarts, no retries."""
    from shoal.executors.ray import ray_options

    # Agent() keeps both as sorted pairs, as a tool's policy does
    resources = tuple(sorted(dict(agent.resources).items()))
    labels = tuple(sorted(dict(agent.labels).items()))
    options, _ = ray_options(resources, labels)
    for task_only in ("max_retries", "retry_exceptions"):
        options.pop(task_only, None)
    if not any(name.lower() in ("num_cpus", "cpu") for name, _ in resources):
        options["num_cpus"] = 0  # its turn loop waits on its model: no CPU held by default
    options.update(max_restarts=0, max_task_retries=0, max_concurrency=1)
    values = {name: os.environ[name] for name in agent.env if name in os.environ}
    for name, value in values.items():
        if not _is_utf8(value):
            raise ConfigError(
                f"agent {agent.name!r}: the environment variable {name!r} (given in env=) holds "
                "bytes that are not UTF-8 text, which Ray cannot send to the actor's node (given, "
                "it would end this process); set it to UTF-8 text, or leave it out of env=")
    if values:
        options["runtime_env"] = {"env_vars": values}  # merged into the job's by Ray
    return options


async def _ray_for(ctx: TreeContext) -> Any:
    """The ``ray`` module, connected as the runtime's Ray tools are (started on first use)."""
    executor = ctx.runtime.executor_for("ray")
    await executor.start()
    from shoal.executors.ray import _import_ray

    ray = _import_ray()
    if not ray.is_initialized():
        raise ConfigError("isolation='ray' for agents needs shoal's Ray backend connected; "
                          "the runtime's 'ray' executor is one of your own that did not "
                          "connect Ray")
    return ray


def _driver_host(ray: Any) -> str:
    """The address the cluster's nodes reach this process at: its Ray node's address."""
    host: str = ray.util.get_node_ip_address()
    return host


def ray_spec(run: AgentRun) -> StartSpec:
    """:func:`start_spec` with the journal routed through the parent (see :func:`routed_store`).

    Never a SQLite file's path: the actor may run on a machine without it.
    """
    return replace(start_spec(run), store=routed_store(run.ctx.runtime.store), limits=None)


async def run_on_ray(run: AgentRun) -> AgentResult[Any]:
    """Run ``run``'s agent in a Ray actor of its own; fill and return ``run.result``.

    The contract of :meth:`AgentRun.run` (and of :func:`~shoal.agents.remote.run_elsewhere`,
    whose steps this follows): never raises, except ``CancelledError`` after the result is
    recorded.
    """
    ctx, result = run.ctx, run.result
    ctx.results[run.lineage] = result
    result.started_at = time.time()
    result.isolation = run.agent.isolation
    starting = asyncio.ensure_future(_start(run))

    def stop_starting(reason: str, breach: BudgetExceeded | None) -> None:
        starting.cancel()  # an actor may wait long for a node with its resources

    ctx.track_remote(run.lineage, stop_starting)
    try:
        channel = await starting
        # so also an actor that dies says where it was
        result.where, result.pid = channel.where, channel.pid
    except Exception as exc:
        _fail(run, "failed", exc)
        return result
    except asyncio.CancelledError:  # while its actor started (which is killed then)
        _stopped_starting(run)
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
        return result  # the tree stopped it (its parent's task goes on)
    finally:
        ctx.untrack_remote(run.lineage)
    server = RayTreeServer(ctx, channel, run.lineage, run.depth)
    serving = asyncio.ensure_future(server.serve())
    deadlines: list[asyncio.TimerHandle] = []
    watched = bool(channel.where) and channel.where == _here()  # its state can be read here
    if watched:
        StopWatch.watch(channel)

    def stop(reason: str, breach: BudgetExceeded | None) -> None:
        channel.send(("cancel", reason, breach))
        if not deadlines:  # an agent that does not end in time is killed
            deadlines.append(asyncio.get_running_loop().call_later(
                CANCEL_GRACE, channel.kill))

    ctx.track_remote(run.lineage, stop)
    if (early := ctx.stop_reason(run.lineage)) is not None:
        stop(early, ctx.tracker.breach)
    try:
        await _serve(run, channel, serving, server, deadlines)
    finally:
        if watched:
            StopWatch.forget(channel)
        for timer in deadlines:
            timer.cancel()
        ctx.untrack_remote(run.lineage)
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        await server.close()
        await channel.close()
    return result


def _stopped_starting(run: AgentRun) -> None:
    """Record the end of an agent stopped while its actor started."""
    ctx = run.ctx
    if ctx.tracker.breach is not None:
        _fail(run, "budget_exceeded", ctx.tracker.breach)
    else:
        reason = ctx.stop_reason(run.lineage) or "cancelled"
        _fail(run, "cancelled", AgentError(f"agent {run.lineage} was {reason}"))


async def _start(run: AgentRun) -> RayChannel:
    """Connect to Ray, start the agent's actor and take its connection."""
    spec = ray_spec(run)
    ray = await _ray_for(run.ctx)
    options = actor_options(run.agent)
    _warn_if_unplaceable(ray, f"agent {run.lineage}", options, "its actor waits")
    return await RayChannel.start(ray, spec, options, _driver_host(ray))


async def _serve(run: AgentRun, channel: RayChannel, serving: asyncio.Future[Any],
                 server: TreeServer, deadlines: list[asyncio.TimerHandle]) -> None:
    """Wait for the agent's result and record its end, whichever way it comes."""
    try:
        _adopt(run.ctx, run.result, await asyncio.shield(serving), server.usage)
        channel.finished = True
    except asyncio.CancelledError:
        await _stop_now(run, channel, serving, server)
        raise
    except _Gone:
        if deadlines:  # killed when it did not stop in time: stopped, not crashed
            _stopped(run, server)
        else:
            cause = channel.stalled or await channel.ended()
            _fail(run, "failed", AgentError(
                f"agent {run.lineage}: {cause}" if channel.stalled is not None
                else f"the Ray actor running agent {run.lineage} died: {cause}"), server)
    except Exception as exc:  # it could not load the agent; a reply that does not load
        _fail(run, "failed", exc, server)


async def _stop_now(run: AgentRun, channel: Channel, serving: asyncio.Future[Any],
                    server: TreeServer) -> None:
    """Ask the agent to stop; take its result if it comes within the grace, else record one."""
    ctx = run.ctx
    reason = ctx.stop_reason(run.lineage) or "cancelled"
    channel.send(("cancel", reason, ctx.tracker.breach))
    try:
        _adopt(ctx, run.result, await asyncio.wait_for(asyncio.shield(serving), CANCEL_GRACE),
               server.usage)
    except (TimeoutError, _Gone, asyncio.CancelledError):
        _stopped(run, server)


# ---- the actor's side ---------------------------------------------------------------------


class _ActorLink(Link):
    """:class:`~shoal.agents._process.Link` for an actor: a closed socket ends the actor.

    When the parent's socket closes (it has the result, it killed the agent, or it died), the
    actor kills what its tools started. An agent still running exits at once: it must not go
    on without its parent. One whose result is sent leaves its exit to ``ray.kill``, which the
    parent sends (Ray takes an exit of its own for a crash, and says so on the driver's log),
    and exits by itself only if that does not come within :data:`FINISH_GRACE` seconds. Its
    process is Ray's worker, which leads no process group of its own, so no group is killed.
    """

    #: set once the agent's result is sent
    finished = False

    def send(self, message: tuple[Any, ...]) -> None:
        """Send one message; the result (``done``) marks the agent finished first."""
        if message[0] == "done":
            self.finished = True
        super().send(message)

    def send_done(self, body: bytes) -> None:
        """Send the result, marking the agent finished first."""
        self.finished = True
        super().send_done(body)

    def _read_all(self) -> None:
        try:
            self._take_all()
        finally:
            _kill_descendants()
            if self.finished:
                time.sleep(FINISH_GRACE)
            os._exit(0)


def _kill_descendants() -> None:
    """SIGKILL every process below this actor's, without freezing them first.

    Not :func:`~shoal.executors._reaper.kill_tree`, which stops the whole tree with SIGSTOP
    before it kills it: when the parent is gone because the driver died, Ray kills the
    driver's actors at about the moment their connections close, and a tree frozen by an actor
    killed before it could finish would stay stopped for good (an agent process nested in
    this one among them). Unfrozen, a process this misses goes on and ends by itself: an agent
    process when its connection to this actor closes, what the tree's template forked when the
    template dies. This process becomes a subreaper first, so the children of the processes a
    pass kills stay below it, and the next pass finds them.

    Unfrozen, a process listed may also end and be reaped before its kill, its pid passing to
    another process: each is therefore killed through a pidfd, and only if the process it
    reaches started when the one listed did (see :func:`_kill_listed`).
    """
    import psutil

    from shoal.executors._reaper import become_subreaper

    become_subreaper()
    here = psutil.Process()
    killed: set[psutil.Process] = set()  # a process: its pid and start time (psutil's identity)
    for _ in range(100):  # a tree still growing after this many passes is left to itself
        try:
            new = set(here.children(recursive=True)) - killed
        except psutil.Error:
            return
        if not new:
            return
        for child in new:
            _kill_listed(child)
        killed |= new


def _kill_listed(listed: psutil.Process) -> None:
    """SIGKILL the process ``listed`` names, if it is still that one (started then).

    The pidfd opened first refers to whichever process holds the pid at that moment, for good:
    if that one started when the listed one did, it is the listed one, and the signal through
    the pidfd reaches it or nothing (once it is reaped). Where there are no pidfds the start
    time is compared again just before the signal (see
    :class:`~shoal.executors._process_ref.ProcessRef`).
    """
    import psutil

    from shoal.executors._process_ref import ProcessRef

    ref = ProcessRef(listed.pid)
    try:
        try:  # equal: the same pid and start time (psutil's identity of a process)
            same = psutil.Process(listed.pid) == listed
        except psutil.Error:  # gone meanwhile
            return
        if same:
            ref.signal(signal.SIGKILL)
    finally:
        ref.close()


def actor_context(spec: StartSpec, link: Link) -> TreeContext:
    """The agent's :class:`TreeContext`, whose shared parts (journal too) ask the parent."""
    return remote_context(spec, link, elsewhere=True)


async def _run_agent(spec: StartSpec, link: Link) -> None:
    """Run the agent of ``spec``; send its result whatever happens."""
    await run_remote(spec, link, actor_context(spec, link))


class AgentActor:
    """The Ray actor that runs one agent for the parent whose port it is given."""

    def run(self, host: str, port: int, token: bytes) -> str:
        """Connect back, present ``token``, run the agent the parent sends; say how it went."""
        sock = socket.create_connection((host, port), timeout=30.0)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(token)
        link = _ActorLink(sock)
        where = _here()
        if where:  # what ran in this process ran on this Ray node: outcomes and result say so
            driver.HOST = where
        link.send(("here", where or driver.HOST, os.getpid()))
        try:
            message = link.read()
        except Exception as exc:  # the agent's definition needs what cannot be imported here
            link.send(("error", describe_exception(exc)))
            return "could not load the agent"
        if message is None:
            return "the parent went away"
        link.start_reading()
        with contextlib.suppress(ValueError):  # not the main thread: Ray's handler stays
            signal.signal(signal.SIGTERM, _terminated)
        _run_loop(_run_agent(message[1], link))
        return "done"


def _terminated(number: int, _: object) -> None:
    """End what the tools started, then end by signal ``number`` as without a handler.

    Ray's own handler raises ``SystemExit`` wherever the actor's thread stands: in a tool
    that ran there, the call failed and the agent went on, a ``SIGTERM`` unheeded. As an
    agent process does (:func:`shoal.agents._process._terminated`), the actor ends instead,
    and its parent says how.
    """
    _kill_descendants()
    signal.signal(number, signal.SIG_DFL)
    os.kill(os.getpid(), number)


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run(main)``, except that it does not wait for the loop's default executor.

    A sync tool that was cancelled is abandoned on its thread, which may run on for a long
    time; the result is sent by then, and the actor must be free for ``ray.kill`` at once.
    """
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main)
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
