"""The Ray backend: calls run on a Ray cluster, local or remote (``isolation="ray"``).

**Connecting.** :meth:`RayExecutor.start` connects to ``address`` (``Runtime(ray_address=...)``),
else to ``$RAY_ADDRESS``, else starts a private single-node Ray on this machine, bound to the
loopback interface (as is this driver when the address given is a loopback one: at the head's
own loopback address, so that nodes on 127.0.0.2, 127.0.0.3... of one machine form a cluster).
If Ray is already initialised in this process (``ray.init`` by the user), that connection is
used as it is. Starting a local Ray blocks the event loop for a few seconds, once: ``ray.init``
must run on a thread that outlives it (Ray's processes die with the thread that started them).
One connection serves every executor of the process (Ray allows one per process); it is counted,
and the last executor to close shuts Ray down, but only if shoal started or connected it: an
external cluster, and a Ray the user initialised, are left running. ``ray`` is imported here,
on first use (``pip install 'shoal[ray]'``).

**Imports in workers.** A tool travels to the cluster as a reference (module and name, see
:mod:`shoal.executors._shipping`), which a worker imports. When shoal starts or connects Ray,
it sets the job's ``runtime_env`` so that workers see the driver's own source directories:
``PYTHONPATH`` is the driver's ``sys.path`` without the interpreter's standard library and
site-packages (the workers' Python has its own). A Ray that shoal starts gets that
``PYTHONPATH`` in its processes' environment instead: the workers Ray starts ahead of the
first call are then of the job's environment, not two that a ``runtime_env`` of the job's
would leave idle while two more start. That serves nodes that see the driver's
paths; on other machines shoal, the tools' dependencies and the tools' modules must be
installed there (or shipped with a ``runtime_env`` of the user's own ``ray.init``).

**Two routes.** A call's ``ToolPolicy.resources`` decide where it runs:

* *A Ray task per call* when the call reserves something: ``num_cpus`` (default 1, as in Ray),
  ``num_gpus``, ``memory`` or a custom resource (``{"GPU": 1}``, ``{"accelerator": 1}``). Ray
  places it on a node with those resources free; with the default of one CPU, at most as many
  calls run at once as the cluster has CPUs. A call's timeout counts from its submission, so
  it includes waiting for a free CPU and a worker. Timeouts and cancellation stop it: first
  ``ray.cancel`` (a ``KeyboardInterrupt`` in the tool, which a blocking call such as
  ``time.sleep`` only sees when it returns), then, after :data:`CANCEL_GRACE` seconds (at once
  when the executor closes), ``ray.cancel(force=True)``, which kills the worker process,
  repeated until Ray reports the task ended (see :func:`_kill`). The call's outcome is
  recorded once it has ended, so what the call holds (resource keys, an exclusive tool's
  turn) is held until its work is stopped, as on the process backend.
* *shoal's actor pool* when the call reserves nothing (``resources={"num_cpus": 0}``): I/O-bound
  tools. Ray runs each task in a worker process of its own, so 1000 concurrent sleeping tasks
  need 1000 processes, which Ray starts a few at a time: 1000 x 50 ms tasks take several
  seconds even with ``num_cpus=0``. Instead, one long-lived async actor per node (reserving no
  CPU) runs such calls side by side: async tools on its event loop, sync tools on its thread
  pool. That is as fast as a hand-written async actor. The price: calls share a process, so a
  tool that kills it (``os._exit``) fails the other calls on that node too (each with
  :class:`~shoal.exceptions.WorkerCrashedError`, which shoal's retry policy retries; Ray
  restarts the actor), and a sync tool cannot be stopped: cancelled, it is left to finish on
  its thread and its outcome says ``abandoned``. Async tools are cancelled at their next
  ``await``; one that ignores its cancellation for :data:`CANCEL_GRACE` seconds is abandoned
  too. An abandoned call holds what it holds until its work really ends: the actor's task
  for it ends only then, and the driver reports that end through ``Call.released``.

**Where.** Workers send back, with each reply, the node they ran on (its address and Ray node
id), which becomes the outcome's ``where``; a ``NodeDiedError`` names the node that died.

**Errors.** Ray's own retries are off (``max_retries=0``): shoal's retry policy decides. A
tool's exception comes back as itself, its traceback in the worker attached as the cause; one
that cannot be pickled becomes a :class:`~shoal.exceptions.RemoteToolError` naming it.
Arguments or results that cannot be pickled fail the call with
:class:`~shoal.exceptions.SerializationError`. A worker, actor or node that dies during a call
fails it with :class:`~shoal.exceptions.WorkerCrashedError` (retried like any error when the
tool has ``retries``); other failures of Ray itself raise
:class:`~shoal.exceptions.ExecutorError`.

Arguments and results are pickled by shoal (into bytes that Ray passes on), not by Ray, so that
a pickling failure is told apart from the tool's own ``TypeError``. Calls are submitted without
blocking (``.remote()`` only queues them) and awaited as Ray futures on the event loop, so a
large fan-out costs one submission per call, never one round trip.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import pickle
import queue
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from shoal.exceptions import (
    ConfigError,
    ExecutorError,
    MissingDependencyError,
    SerializationError,
    WorkerCrashedError,
    bounded_text,
    describe_exception,
)
from shoal.executors._errors import error_reply, rebuild_error
from shoal.executors._results import (
    call_on_thread,
    run_coroutine,
    stop_iteration_error,
    tool_interrupt_error,
    unasked_cancel_error,
    unawaited_result,
)
from shoal.executors._shipping import dumps, dumps_callable, loads, loads_callable
from shoal.executors._tracing import joined
from shoal.executors.base import Call, Executor
from shoal.executors.results import load_result
from shoal.policy import RAY_OPTIONS
from shoal.tools import Tool

__all__ = ["CANCEL_GRACE", "POOL_CONCURRENCY", "RayExecutor", "ray_options", "worker_path"]

#: Seconds between the polite ``ray.cancel`` of a timed-out task and killing its worker (and
#: that a pooled async call has to end after its cancel before it is abandoned).
CANCEL_GRACE = 1.0
#: Seconds a cancelled sync call on the actor pool has to end before it is abandoned: enough for
#: Ray to drop one the actor had not started (its thread, once started, cannot be stopped).
UNSTARTED_GRACE = 0.25
#: Seconds that killing a cancelled task may take before shoal gives up on it (and logs it).
KILL_TIMEOUT = 10.0
#: Seconds between checks (and repeats of the forced cancel) while a task is being killed.
KILL_POLL = 0.05
#: Calls one pool actor runs at once (the run's ``max_concurrency`` is usually the real bound).
POOL_CONCURRENCY = 10_000
#: Threads a pool actor may start for sync tools (started only as calls need them).
POOL_THREADS = 1_000

# Ray exceptions meaning the process that ran the call is gone, not that the tool failed.
_CRASHES = ("WorkerCrashedError", "RayActorError", "NodeDiedError", "LocalRayletDiedError",
            "OutOfMemoryError", "ObjectLostError")
# How Ray names the node in NodeDiedError's message ("... Node IP: 10.0.0.7, node ID: 4f1c...").
_DIED_ON = re.compile(r"Node IP: ([^\s,]+), node ID: ([0-9a-fA-F]+)")

log = logging.getLogger("shoal")


# ---- worker side: runs inside Ray workers, which import this module ------------------------


@functools.lru_cache(maxsize=1024)
def _function(blob: bytes) -> Callable[..., Any]:
    """The tool function shipped as ``blob``, loaded once per worker process."""
    return loads_callable(blob)


def _unpack(call: bytes) -> tuple[str, bool, Callable[..., Any], Any, dict[str, str] | None]:
    """A call's tool name, kind, function, arguments and trace context (see :func:`_pack`).

    Raises SerializationError if they won't load.
    """
    name, is_async, fn_blob, args_blob, *traced = pickle.loads(call)
    try:
        return name, is_async, _function(fn_blob), loads(args_blob), traced[0] if traced else None
    except Exception as exc:
        raise SerializationError(
            f"tool {name!r} could not be loaded in the Ray worker: {type(exc).__name__}: {exc} "
            "(is its module importable there? see shoal.executors.ray on PYTHONPATH)") from exc


@functools.lru_cache(maxsize=1)
def _here() -> str:
    """The node running this worker: its address and Ray node id (``"10.0.0.7 node 4f1c..."``)."""
    try:
        import ray

        util: Any = ray.util  # untyped here
        return f"{util.get_node_ip_address()} node {ray.get_runtime_context().get_node_id()}"
    except Exception:  # not in a Ray worker: nowhere to name
        return ""


def _ok_reply(name: str, value: Any) -> bytes:
    unawaited = unawaited_result(name, value)  # a coroutine would not even pickle
    if unawaited is not None:
        return error_reply(unawaited)
    try:
        return _dumps(("ok", value), f"the result of tool {name!r}")
    except SerializationError as exc:
        return error_reply(exc)


def _dumps(value: Any, what: str) -> bytes:
    """Plain pickle where it does the job alone, else cloudpickle (SerializationError if neither).

    For small values pickle is several times faster, and this runs twice per call. Pickle
    refers to classes and functions by module and name, which fails for those of ``__main__``
    (a worker's ``__main__`` is not the driver's): values that mention it go to cloudpickle,
    which sends such things by value.
    """
    try:
        blob = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    except KeyboardInterrupt:
        raise
    except BaseException:  # closures, lambdas, local classes: cloudpickle's job (and a
        return dumps(value, what)  # __reduce__ raising SystemExit: SerializationError there)
    return dumps(value, what) if b"__main__" in blob else blob


def _take_sigint() -> None:
    """Let ``ray.cancel`` interrupt this worker even if it was started with SIGINT ignored.

    Ray's polite cancel raises ``KeyboardInterrupt`` through ``_thread.interrupt_main()``,
    which does nothing while SIGINT is ignored; and a Python process that starts with SIGINT
    ignored keeps it so. Ray workers inherit that from a head started in the background by a
    script (``ray start --head ... &``: a shell without job control ignores SIGINT there) or by
    any process that ignores it, and there the polite cancel never arrives. Tasks run on the
    worker's main thread, where the handler can be set.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        with suppress(ValueError):  # not the main thread: nothing to do from here
            signal.signal(signal.SIGINT, signal.default_int_handler)


def run_task(call: bytes) -> tuple[bytes, str]:
    """One call (from :func:`_pack`) as a Ray task: its reply (bytes) and the node it ran on.

    Every outcome becomes a reply, a ``KeyboardInterrupt`` the tool raised too (the same
    error as on the other backends: ``ray.cancel`` raises one as well, but only once shoal
    stopped waiting for the reply). A ``CancelledError`` is the tool's own: ``ray.cancel``
    never raises one here (its interrupt is a ``KeyboardInterrupt`` in an async tool too), so
    it fails the call as on the other backends. An async tool runs as in a process worker (see
    :func:`~shoal.executors._results.run_coroutine`): tasks it leaves that ignore their
    cancellation do not hold its reply.
    """
    _take_sigint()
    try:
        name, is_async, fn, args, trace = _unpack(call)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit too (from the tool's module, say)
        return error_reply(exc), _here()
    try:
        with joined(trace):
            value = run_coroutine(fn(**args)) if is_async else fn(**args)
    except KeyboardInterrupt as exc:  # the tool's, or ray.cancel's: shoal's own cancel ended
        # the call's wait first (its reply goes unread), so it is the tool's, as elsewhere
        return error_reply(tool_interrupt_error(name, exc)), _here()
    except asyncio.CancelledError as exc:
        return error_reply(unasked_cancel_error(name, exc)), _here()
    except StopIteration as exc:  # a sync tool's (Python turns a coroutine's into RuntimeError)
        return error_reply(stop_iteration_error(exc)), _here()  # the error threads give
    except BaseException as exc:  # SystemExit too: the tool failed, the worker lives on
        return error_reply(exc), _here()
    return _ok_reply(name, value), _here()


def _cancel_asked() -> bool:
    """Whether ``ray.cancel`` cancelled the running call (its actor task), not the tool."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class _Raised:
    """An exception that is no ``Exception`` a sync tool raised on a pool thread, as a value."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _on_pool_thread(fn: Callable[..., Any], args: dict[str, Any]) -> Any:
    """:func:`call_on_thread` for the actor pool: a ``BaseException`` comes back as a value.

    Set on the future the actor awaits, a ``GeneratorExit`` escapes the actor's coroutine
    uncaught (Ray drives it), and the call failed with Ray's ``RayTaskError(GeneratorExit)``.
    """
    try:
        return call_on_thread(fn, args)
    except (Exception, asyncio.CancelledError):  # (a CancelledError: said so as it comes)
        raise
    except BaseException as exc:  # SystemExit, KeyboardInterrupt too: the tool's own
        return _Raised(exc)


def _tool_raised(tool: str, exc: BaseException) -> BaseException:
    """The error a call fails with when its tool raised ``exc``.

    A ``KeyboardInterrupt`` is the tool's own (see
    :func:`~shoal.executors._results.tool_interrupt_error`).
    """
    return tool_interrupt_error(tool, exc) if isinstance(exc, KeyboardInterrupt) else exc


async def _thread_end(work: Future[Any]) -> Any:
    """The value of a sync tool's ``work`` on a pool thread; a cancel waits for its end.

    ``ray.cancel`` cannot stop the thread: it runs on, and the task raises its
    ``CancelledError`` only once the thread returns, so that the call's reference (which the
    driver watches, see ``RayExecutor._watch``) resolves when the work really ends: what the
    call holds (resource keys, an exclusive tool's turn) is held until then.
    """
    try:
        return await asyncio.wrap_future(work)
    except asyncio.CancelledError:
        if not _cancel_asked():  # the tool's own CancelledError (see PoolWorker.run)
            raise
        ended = asyncio.wrap_future(work)
        while not ended.done():
            with suppress(asyncio.CancelledError):  # Ray may repeat its cancel: still waits
                await asyncio.wait([ended])
        if not ended.cancelled():
            ended.exception()  # nobody reads it: retrieved, so asyncio does not log it
        raise


class PoolWorker:
    """shoal's long-lived async actor: runs calls that reserve no resources, many at once."""

    def __init__(self) -> None:
        self._threads = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="shoal-ray")

    async def run(self, call: bytes) -> tuple[bytes, str]:
        """One call (from :func:`_pack`): async tools on this loop, sync tools on threads.

        Returns the reply and the node this actor runs on. ``ray.cancel`` of the call cancels
        this task, which propagates; a ``CancelledError`` nobody asked for is the tool's own,
        and fails the call as on the other backends.
        """
        try:
            name, is_async, fn, args, trace = _unpack(call)
        except BaseException as exc:
            return error_reply(exc), _here()
        try:
            with joined(trace):  # this task's context; a thread gets a copy of it
                if is_async:
                    value = await fn(**args)
                else:
                    value = await _thread_end(self._threads.submit(
                        contextvars.copy_context().run, _on_pool_thread, fn, args))
                    if type(value) is _Raised:
                        return error_reply(_tool_raised(name, value.error)), _here()
        except asyncio.CancelledError as exc:
            if _cancel_asked():
                raise
            return error_reply(unasked_cancel_error(name, exc)), _here()
        except BaseException as exc:
            return error_reply(_tool_raised(name, exc)), _here()
        try:
            return _ok_reply(name, value), _here()
        except BaseException as exc:  # pickling the value raised KeyboardInterrupt (its
            # __reduce__: ray.cancel cancels this task instead); out of here it would end the
            # actor's event loop, and every later call on the actor would wait for ever
            return error_reply(exc), _here()


# ---- driver side --------------------------------------------------------------------------


def ray_options(resources: tuple[tuple[str, float], ...],
                labels: tuple[tuple[str, str], ...] = ()) -> tuple[dict[str, Any], bool]:
    """Ray task options for a tool's ``resources`` and ``labels``, and whether it is pooled.

    ``num_cpus`` (default 1), ``num_gpus`` and ``memory`` (bytes) are Ray's own options, also
    accepted as ``CPU`` / ``GPU``; any other name is a custom resource. ``labels`` become
    Ray's ``label_selector``. Ray's retries are off. A call that reserves nothing and needs no
    labels runs on shoal's actor pool (whose actors are placed without regard to labels).
    """
    options: dict[str, Any] = {"num_cpus": 1.0, "max_retries": 0, "retry_exceptions": False}
    custom: dict[str, float] = {}
    for name, amount in resources:
        key = RAY_OPTIONS.get(name.lower())
        if key is None:
            custom[name] = amount
        else:
            options[key] = int(amount) if key == "memory" else amount
    if custom:
        options["resources"] = custom
    if labels:
        options["label_selector"] = dict(labels)
    reserves = any(options.get(k) for k in ("num_cpus", "num_gpus", "memory"))
    return options, not (reserves or any(custom.values()) or labels)


def worker_path() -> str:
    """``PYTHONPATH`` for workers: the driver's ``sys.path`` less the interpreter's own dirs.

    The standard library and site-packages are left out: a worker's Python has its own (on
    another machine, possibly another version), and mixing them in would break it.
    """
    own = {Path(p).resolve() for p in {sys.prefix, sys.base_prefix, sys.exec_prefix}}
    kept: list[str] = []
    for entry in sys.path:
        path = Path(entry or os.getcwd()).resolve()
        if any(path == root or root in path.parents for root in own):
            continue
        if str(path) not in kept and path.exists() and _is_utf8(str(path)):
            kept.append(str(path))
    return os.pathsep.join(kept)


def _is_utf8(text: str) -> bool:
    """Whether ``text`` has no surrogates (a path's bytes that are not UTF-8).

    Ray parses a ``runtime_env`` as JSON in C++, and aborts the whole process on one: such a
    directory is left out of the workers' ``PYTHONPATH`` (they could not be told it anyway).
    """
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError("ray", "ray") from exc
    return ray


@contextmanager
def _loopback_only(ray: Any) -> Iterator[None]:
    """While Ray starts or connects, take 127.0.0.1 as this node's address.

    By default Ray binds to the machine's network address so that other nodes can join; a Ray
    that shoal starts for itself is single-node, and nothing outside needs to reach it. And a
    driver connecting to a head on loopback must register on loopback too, or Ray finds no
    local node for it. Ray reads this switch (the constant behind the environment variable
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``) when it looks up the node's address; it is put back
    once Ray is up.
    """
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    if constants is None or not hasattr(constants, "ENABLE_RAY_CLUSTER"):
        yield  # another Ray version: keep its default
        return
    before = constants.ENABLE_RAY_CLUSTER
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = before


class _Pool:
    """shoal's actors for calls that reserve nothing: one per node, made on first use.

    Ray restarts an actor whose process died, and calls sent while it restarts fail at once
    (``ActorUnavailableError``, since Ray's retries are off). So after a crash, calls for that
    actor first wait until it answers again (a retry comes right after the crash it retries).
    Runtimes on several threads share the pool: its actors are made under a lock, once.
    """

    def __init__(self, ray: Any) -> None:
        self.ray = ray
        self._lock = threading.Lock()
        self.actors: list[Any] = []
        self.nodes: list[str | None] = []
        self.pending: list[int] = []  # calls in flight per actor
        self.restarting: set[int] = set()

    def pick(self) -> int:
        """The actor with the fewest calls in flight (the actors are made on first use)."""
        if not self.actors:
            with self._lock:  # another thread's first call may be making them right now
                if not self.actors:
                    self._populate()
        return min(range(len(self.actors)), key=self.pending.__getitem__)

    def _populate(self) -> None:
        """One actor per alive node, appended whole: ``pick`` on another thread reads them."""
        alive = [n["NodeID"] for n in self.ray.nodes() if n.get("Alive")]
        nodes: list[str | None] = list(alive) or [None]
        actors = [self._make(node) for node in nodes]
        self.nodes.extend(nodes)
        self.pending.extend([0] * len(actors))
        self.actors.extend(actors)  # last: a reader that sees actors sees their counts

    def _make(self, node: str | None) -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        placement = NodeAffinitySchedulingStrategy(node, soft=True) if node else "DEFAULT"
        return self.ray.remote(PoolWorker).options(
            num_cpus=0, max_concurrency=POOL_CONCURRENCY, max_restarts=-1, max_task_retries=0,
            scheduling_strategy=placement).remote()

    async def ready(self, index: int) -> None:
        """Return once actor ``index`` answers, if it crashed (replace it if Ray gave up)."""
        errors = self.ray.exceptions
        unavailable = getattr(errors, "ActorUnavailableError", ())  # Ray >= 2.10; () = none
        while index in self.restarting:
            try:
                await self.actors[index].__ray_ready__.remote()
            except unavailable:  # still restarting
                await asyncio.sleep(0.05)
                continue
            except errors.RayActorError:  # dead for good: start another in its place
                self.actors[index] = self._make(self.nodes[index])
            self.restarting.discard(index)

    def kill(self) -> None:
        for actor in self.actors:
            with suppress(Exception):
                self.ray.kill(actor)
        self.actors.clear()
        self.pending.clear()


class _Session:
    """The process's Ray connection as shoal uses it: counted users, remote functions, pool."""

    def __init__(self, ray: Any, owned: bool) -> None:
        self.ray = ray
        self.owned = owned  # shoal called ray.init, so shoal calls ray.shutdown
        self.users = 0
        self.task = ray.remote(run_task)
        self.pool = _Pool(ray)
        self._options: dict[tuple[Any, ...], tuple[Any, bool]] = {}  # (resources, labels, name)

    def route(self, tool: Tool[..., Any]) -> tuple[Any, bool]:
        """The remote function for ``tool``'s calls (options applied), and whether pooled."""
        key = (tool.policy.resources, tool.policy.labels, tool.name)
        found = self._options.get(key)
        if found is None:  # .options() builds a new wrapper: once per tool and resources
            options, pooled = ray_options(tool.policy.resources, tool.policy.labels)
            try:
                task = None if pooled else self.task.options(name=_task_name(tool.name),
                                                             **options)
            except (ValueError, TypeError) as exc:  # Ray checks a label selector's syntax here
                raise ConfigError(f"tool {tool.name!r}: Ray refused its task's options (from "
                                  f"its resources= and labels=): {exc}") from None
            found = self._options[key] = (task, pooled)
            if not pooled:
                _warn_if_unplaceable(self.ray, f"tool {tool.name!r}", options)
        return found

    def release(self) -> None:
        """Kill the pool; shut Ray down if shoal started or connected it."""
        self.pool.kill()
        if self.owned and self.ray.is_initialized():
            self.ray.shutdown()


#: Ray's names, in a node's resources, for the task options that reserve something.
_NODE_RESOURCE = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}


def _warn_if_unplaceable(ray: Any, what: str, options: dict[str, Any],
                         waits: str = "its calls wait") -> None:
    """Log a warning if no node of the cluster has what ``what`` (``"tool 'x'"``) asks for.

    Ray keeps such a task (or actor) waiting, silently (its own warning goes to the driver's
    log, which shoal does not show), until a node that has it joins (an autoscaler may add
    one): without a timeout, for ever. Labels (``label_selector``) are checked first: one
    warning names the labels no node carries, else the resources no node with them has.
    """
    needs = {_NODE_RESOURCE[k]: float(v) for k, v in options.items() if k in _NODE_RESOURCE}
    needs.update(options.get("resources", {}))
    needs = {name: amount for name, amount in needs.items() if amount > 0}
    labels: dict[str, str] = options.get("label_selector") or {}
    if not needs and not labels:
        return
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
    except Exception:  # Ray cannot tell now: nothing to say
        return
    if labels and all("Labels" in n for n in nodes):  # (a Ray that tells no labels: no word)
        nodes = [n for n in nodes if _selects(labels, n.get("Labels") or {})]
        if not nodes:
            log.warning("no node of the Ray cluster carries the labels %s asks for (%s): %s "
                        "until such a node joins, for ever without a timeout",
                        what, _selector_text(labels), waits)
            return
    have = [n.get("Resources", {}) for n in nodes]
    if any(all(node.get(k, 0.0) >= v for k, v in needs.items()) for node in have):
        return
    most = {name: max((node.get(name, 0.0) for node in have), default=0.0) for name in needs}
    log.warning("no node of the Ray cluster has what %s reserves (%s; the most a node %shas: "
                "%s): %s until such a node joins, for ever without a timeout",
                what, _amounts(needs), "with its labels " if labels else "", _amounts(most),
                waits)


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Whether a node with ``labels`` matches Ray's ``label_selector``.

    A value is ``v`` (the label equals it), ``in(a, b)`` (one of them), each possibly negated
    with ``!`` (which a node without the label matches). A form this does not know counts as
    a match: better no warning than a wrong one.
    """
    for key, value in selector.items():
        negated = value.startswith("!")
        body = value[1:] if negated else value
        if body.startswith("in(") and body.endswith(")"):
            wanted = {part.strip() for part in body[3:-1].split(",")}
        elif body and "(" not in body:
            wanted = {body}
        else:
            continue
        if (labels.get(key) in wanted) == negated:
            return False
    return True


def _selector_text(selector: dict[str, str]) -> str:
    """``key=value, ...`` of a label selector, what cannot be printed escaped."""
    return ", ".join(f"{_printable(key)}={_printable(value)}"
                     for key, value in sorted(selector.items()))


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode()
                   for ch in text)


def _amounts(resources: dict[str, float]) -> str:
    return ", ".join(f"{name}={amount:g}" for name, amount in sorted(resources.items()))


def _task_name(tool: str) -> str:
    """The name of a tool's Ray tasks: ``shoal:<tool>``, what cannot be printed escaped.

    Ray sends the name as UTF-8 (a lone surrogate, which a tool's name may hold, failed every
    call of the tool) and shows it in its dashboard, logs and ``ray list tasks``, where a
    terminal escape or a newline in it would be taken for their own.
    """
    return "shoal:" + _printable(tool)


_SESSION: _Session | None = None


def _connect(ray: Any, address: str | None) -> bool:
    """``ray.init`` unless Ray is up already; return whether this call initialised it.

    A cluster that cannot be reached (or a Ray that cannot start) is an
    :class:`~shoal.exceptions.ExecutorError`, an address Ray cannot read a
    :class:`~shoal.exceptions.ConfigError`: each names the address and where it came from.
    """
    if ray.is_initialized():
        return False
    target = address or os.environ.get("RAY_ADDRESS") or "local"
    try:
        _probe(target)
        _init(ray, target)
    except Exception as exc:
        with suppress(Exception):  # half connected: let go, so that a later try starts clean
            if ray.is_initialized():
                ray.shutdown()
        raise _not_connected(target, address, exc) from exc
    return True


#: Seconds the plain TCP connect to a cluster's address may take before shoal gives up on it.
PROBE_TIMEOUT = 5.0


class _Unreachable(ConnectionError):
    """Nothing answers at a cluster's address (see :func:`_probe`)."""


def _probe(target: str) -> None:
    """Raise :class:`_Unreachable` if nothing accepts a TCP connection at ``target``'s port.

    Ray itself retries an address where nothing listens for about 40 s before it gives up;
    one plain connect tells at once (within :data:`PROBE_TIMEOUT` when the host drops it).
    Only ``host:port`` and ``ray://host:port`` are probed: ``"local"``, ``"auto"`` and what
    does not parse are left to Ray (which reads and reports them itself).
    """
    host, sep, port = target.split("://", 1)[-1].rpartition(":")
    host = host.strip("[]")
    if (target == "local" or not sep or not host or not (port.isascii() and port.isdigit())
            or int(port) > 65535):
        return
    where = f"{_printable(host)}:{port}"  # (the address itself may hold a newline, an escape)
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT).close()
    except TimeoutError:
        raise _Unreachable(f"nothing answered at {where} within {PROBE_TIMEOUT:g} s "
                           "(a TCP connect)") from None
    except OSError as exc:  # refused, no route, unknown host: Ray would retry for ~40 s
        why = exc.strerror or describe_exception(exc)
        raise _Unreachable(f"nothing accepts connections at {where} ({why})") from None


def _not_connected(target: str, address: str | None, exc: Exception) -> ExecutorError | ConfigError:
    """The error for a ``ray.init`` that failed with ``exc`` (see :func:`_connect`)."""
    said = str(exc) if isinstance(exc, _Unreachable) else describe_exception(exc)
    why = bounded_text((said.strip().splitlines() or [""])[0], 300)
    if target == "local":
        return ExecutorError(f"shoal could not start a local Ray (RAY_ADDRESS is not set): {why}")
    source = "Runtime(ray_address=...)" if address else "the RAY_ADDRESS environment variable"
    if isinstance(exc, ValueError):
        return ConfigError(f"{source} gives {target!r}, which Ray cannot read as a cluster "
                           f"address (host:port, or ray://host:port): {why}")
    return ExecutorError(
        f"shoal could not connect to the Ray cluster at {target!r}, which {source} gives: "
        f"{why}. Is a Ray head running there (ray start --head)? Fix the address, or unset it "
        "for a private local Ray")


def _init(ray: Any, target: str) -> None:
    """``ray.init`` at ``target`` (``"local"``: a Ray of our own), as :func:`_connect` says."""
    options: dict[str, Any] = {
        "address": target, "logging_level": logging.WARNING, "log_to_driver": False,
        "ignore_reinit_error": True,
    }
    if target == "local":  # a new Ray of our own ("local": never one found in /tmp/ray)
        options["include_dashboard"] = False
        with _environment(PYTHONPATH=worker_path()), _loopback_only(ray):
            ray.init(**options)
        return
    options["runtime_env"] = {"env_vars": {"PYTHONPATH": worker_path()}}
    if _is_loopback(target):
        host = _host(target)
        if host.startswith("127.") and host != "127.0.0.1":  # a head on another loopback IP
            options["_node_ip_address"] = host  # (nodes on one machine): join it there
        with _loopback_only(ray):  # a cluster on loopback sees this driver there, too
            ray.init(**options)
    else:
        ray.init(**options)


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    """``os.environ`` with ``values`` while Ray starts its processes (which inherit it).

    Run under ``_SESSION_LOCK``, on the one thread that starts Ray (see
    :func:`_on_lasting_thread`).
    """
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _host(address: str) -> str:
    """The host of ``host:port`` (``ray://`` or not)."""
    return address.split("://")[-1].rsplit(":", 1)[0].strip("[]")


def _is_loopback(address: str) -> bool:
    """Whether ``host:port`` (``ray://`` or not) names this machine's loopback interface."""
    host = _host(address)
    return host == "localhost" or host == "::1" or host.startswith("127.")


#: Runtimes on several threads (each with its loop) share the session: one connects Ray,
#: the others wait for it (``ray.init`` twice at once fails), and the last one out ends it.
_SESSION_LOCK = threading.Lock()


_LASTING: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] | None = None


def _on_lasting_thread(fn: Callable[[], Any]) -> Any:
    """``fn()``, run on a thread that lasts as long as the process: the main one, or shoal's.

    Ray starts its GCS, raylet and helper processes with ``PR_SET_PDEATHSIG`` (SIGKILL),
    which Linux fires when the *thread* that started them exits, not the process. A runtime
    on a short-lived thread (``run_sync`` on a worker thread, a web handler's) that happened
    to start Ray would take it down for every other runtime of the process as its thread
    ended: their calls then waited 60 s for a GCS that was gone. Called under
    ``_SESSION_LOCK``.
    """
    global _LASTING
    if threading.current_thread() is threading.main_thread():
        return fn()
    if _LASTING is None:
        _LASTING = queue.SimpleQueue()
        threading.Thread(target=_serve, args=(_LASTING,), name="shoal-ray-start",
                         daemon=True).start()  # a daemon: it ends with the process only
    done: Future[Any] = Future()
    _LASTING.put((fn, done))
    return done.result()


def _serve(jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]]) -> None:
    """Run the jobs :func:`_on_lasting_thread` hands over, for ever."""
    while True:
        fn, done = jobs.get()
        try:
            done.set_result(fn())
        except BaseException as exc:  # handed back to the caller, who raises it
            done.set_exception(exc)


def _acquire(address: str | None) -> _Session:
    global _SESSION
    ray = _import_ray()
    with _SESSION_LOCK:
        if _SESSION is None or not ray.is_initialized():  # first use, or Ray shut down since
            owned = _on_lasting_thread(functools.partial(_connect, ray, address))
            _SESSION = _Session(ray, owned)
        _SESSION.users += 1
        return _SESSION


def _release(session: _Session) -> None:
    global _SESSION
    with _SESSION_LOCK:
        session.users -= 1
        if session.users <= 0 and session is _SESSION:
            _SESSION = None
            session.release()


class RayExecutor(Executor):
    """Runs calls on a Ray cluster: one Ray task per call, or shoal's actors (see module doc)."""

    name = "ray"
    reports_end = True  # of a sync call abandoned on a pool actor's thread (see _watch)

    def __init__(self, *, address: str | None = None) -> None:
        self.address = address
        self._session: _Session | None = None
        self._reapers: dict[asyncio.Task[bool], Any] = {}  # tasks stopping, by their ref

    async def start(self) -> None:
        """Connect to Ray, or start a local one (this blocks the loop for a few seconds, once)."""
        if self._session is None:
            self._session = _acquire(self.address)

    async def execute(self, call: Call) -> Any:
        """Submit the call, await its reply without blocking the loop, and unpack it."""
        if self._session is None:
            await self.start()
        session = self._session
        assert session is not None
        payload = _pack(call)
        task, pooled = session.route(call.tool)
        if pooled:
            return await self._on_pool(session, call, payload)
        ref = task.remote(payload)  # one bytes argument: each argument costs the worker time
        return _unpack_reply(call.tool.name, await self._reply(session, ref, call, pooled=False))

    async def _reply(self, session: _Session, ref: Any, call: Call, pooled: bool) -> bytes:
        """Await a submitted call's reply; stop its work if cancelled; translate Ray's errors."""
        call.began_at = time.monotonic()  # submitted: Ray queues and starts it from here
        try:
            got = await ref
        except asyncio.CancelledError:
            await self._stop(session, ref, call, pooled=pooled)
            raise
        except Exception as exc:
            call.where = _died_on(exc)
            raise _ray_failure(session.ray, call.tool.name, exc) from None
        return _landed(call, got)

    async def _on_pool(self, session: _Session, call: Call, payload: bytes) -> Any:
        """:meth:`execute` for a call on the actor pool."""
        pool = session.pool
        index = pool.pick()
        if index in pool.restarting:
            await pool.ready(index)
        ref = pool.actors[index].run.remote(payload)
        pool.pending[index] += 1
        try:
            reply = await self._reply(session, ref, call, pooled=True)
        except WorkerCrashedError:
            pool.restarting.add(index)  # later calls wait until Ray has restarted the actor
            raise
        finally:
            if index < len(pool.pending):
                pool.pending[index] -= 1
        return _unpack_reply(call.tool.name, reply)

    async def _stop(self, session: _Session, ref: Any, call: Call, pooled: bool) -> None:
        """Cancel the call's Ray work and wait for it to end, as far as it can be ended.

        What a call holds (resource keys, an exclusive tool's turn) is let go once its outcome
        is recorded, which is when this returns: so not while its work still runs. A task
        gets the polite ``ray.cancel`` and :data:`CANCEL_GRACE` seconds, then its worker is
        killed (as a process worker is, before its outcome); an async tool on the pool has the
        grace to end after its cancel; a sync one, whose thread cannot be stopped, has
        :data:`UNSTARTED_GRACE`, in which Ray drops a call the actor had not started yet (it
        never ran: not abandoned). A sync tool on the pool that runs, and work that outlasts
        all this (an async tool ignoring its cancellation, a
        kill with no effect, a second cancel of this wait) are *abandoned*: the outcome says
        so, and the scheduler holds what they hold until Ray reports their end (see
        :func:`_watch`).
        """
        with suppress(Exception):  # already finished, or Ray going down: nothing to stop
            session.ray.cancel(ref)
        if pooled:  # a sync tool's thread cannot be stopped: only one not started yet ends
            grace = CANCEL_GRACE if call.tool.is_async else UNSTARTED_GRACE
            stopping = asyncio.ensure_future(_ended_within(ref, grace))
        else:
            stopping = self._reaper(session, ref)
        try:
            ended = await asyncio.shield(stopping)
        except asyncio.CancelledError:  # cancelled again (its run stops): it may still run
            ended = False
        if not ended:
            self._abandon(ref, call)

    @staticmethod
    def _abandon(ref: Any, call: Call) -> None:
        call.abandoned = True
        _watch(ref, call)

    def _reaper(self, session: _Session, ref: Any) -> asyncio.Task[bool]:
        """A task that stops the task behind ``ref``: whether it ended (see :meth:`_stop`)."""
        reaper = asyncio.get_running_loop().create_task(self._force_cancel(session, ref))
        self._reapers[reaper] = ref
        reaper.add_done_callback(self._reaped)
        return reaper

    def _reaped(self, reaper: asyncio.Task[bool]) -> None:
        self._reapers.pop(reaper, None)

    @staticmethod
    async def _force_cancel(session: _Session, ref: Any) -> bool:
        if await _ended_within(ref, CANCEL_GRACE):  # the polite cancel did it
            return True
        return await _kill(session, ref)

    async def close(self) -> None:
        """Kill cancelled tasks that still run (without their grace); release the connection."""
        reapers, self._reapers = self._reapers, {}
        for reaper in reapers:
            reaper.cancel()
        if reapers:
            await asyncio.gather(*reapers, return_exceptions=True)
            if self._session is not None:
                session = self._session
                await asyncio.gather(*(_kill(session, ref) for ref in reapers.values()))
        if self._session is not None:
            session, self._session = self._session, None
            _release(session)


def _watch(ref: Any, call: Call) -> None:
    """Report the end of abandoned ``call``'s thread in its pool actor through ``call.released``.

    The actor's task ends only once that thread returns (see :func:`_thread_end`), or the
    actor dies: either ends the work. Heard on a Ray thread, the end is handed to the loop that
    ran the call, where ``call.ended_at`` is stamped before ``call.released`` is read, so the
    scheduler either sees the end when it records the outcome or has set the hook by then.
    """
    loop = asyncio.get_running_loop()
    try:
        reply = ref.future()
    except Exception:  # Ray going down: nothing left to run the thread
        call.ended_at = time.monotonic()
        return
    reply.add_done_callback(functools.partial(_thread_returned, loop, call))


def _thread_returned(loop: asyncio.AbstractEventLoop, call: Call, _: object) -> None:
    """The abandoned ``call``'s actor task ended (on a Ray thread): tell ``loop``."""
    try:
        loop.call_soon_threadsafe(_released, call)
    except RuntimeError:  # a closed loop: its run is over; what it left may still be held
        hook = call.released
        if hook is not None and getattr(hook, "any_thread", False):
            call.ended_at = time.monotonic()
            hook(call)


def _released(call: Call) -> None:
    """On the call's loop: stamp the end of its abandoned work; call its hook, if set."""
    call.ended_at = time.monotonic()
    hook = call.released
    if hook is not None:
        hook(call)


async def _ended_within(ref: Any, seconds: float) -> bool:
    """Whether the work behind ``ref`` ends (or Ray can no longer tell) within ``seconds``."""
    try:
        reply = asyncio.wrap_future(ref.future())
    except Exception:  # Ray going down: nothing left to run it
        return True
    done, _ = await asyncio.wait([reply], timeout=seconds)
    if not done:
        reply.cancel()
        return False
    if not reply.cancelled():
        reply.exception()  # retrieved: its error (a cancelled task's) is no news
    return True


async def _kill(session: _Session, ref: Any) -> bool:
    """``ray.cancel(force=True)`` until the task has ended (which kills its worker).

    One forced cancel is not enough: while an earlier cancel request for the same task is in
    flight (the polite one, sent moments before when the executor closes right after a
    timeout), Ray drops the new one without a word, and the task runs to its end. So the
    request is repeated until Ray reports the task ended, for :data:`KILL_TIMEOUT` seconds at
    most. Returns whether it ended.
    """
    deadline = time.monotonic() + KILL_TIMEOUT
    while not _ended(session.ray, ref):
        if time.monotonic() >= deadline:
            log.warning("a cancelled Ray task still runs %.0f s after shoal began killing it "
                        "(ray.cancel(force=True) had no effect): %s", KILL_TIMEOUT, ref)
            return False
        with suppress(Exception):  # Ray going down: _ended says so next
            session.ray.cancel(ref, force=True)
        await asyncio.sleep(KILL_POLL)
    return True


def _ended(ray: Any, ref: Any) -> bool:
    """Whether the task behind ``ref`` has ended (or Ray can no longer tell: nothing to stop)."""
    try:
        done, _ = ray.wait([ref], timeout=0, fetch_local=False)
    except Exception:
        return True
    return bool(done)


_BLOBS: dict[Callable[..., Any], bytes] = {}


def _blob(tool: Tool[..., Any]) -> bytes:
    """:func:`dumps_callable` of the tool, computed once per function."""
    try:
        return _BLOBS[tool.fn]
    except (KeyError, TypeError):  # TypeError: an unhashable callable, not cached
        blob = dumps_callable(tool)
    with suppress(TypeError):
        if len(_BLOBS) >= 4096:
            _BLOBS.clear()
        _BLOBS[tool.fn] = blob
    return blob


def _pack(call: Call) -> bytes:
    """The call as one bytes object: tool name, kind, function reference, pickled arguments.

    When shoal is instrumented, the call's trace context follows them (workers of a version
    that does not know it are sent the four fields they expect otherwise).
    """
    tool = call.tool
    args = _dumps(call.args, f"the arguments of tool {tool.name!r}")
    fields: tuple[Any, ...] = (tool.name, tool.is_async, _blob(tool), args)
    if call.trace:
        fields += (call.trace,)
    return pickle.dumps(fields, pickle.HIGHEST_PROTOCOL)


def _landed(call: Call, got: Any) -> bytes:
    """A worker's reply; the node it names goes on ``call`` (an older shoal sends no node)."""
    if isinstance(got, tuple) and len(got) == 2:
        got, where = got
        call.where = str(where)
    return got if isinstance(got, bytes) else bytes(got)  # no copy of a large reply


def _died_on(exc: Exception) -> str:
    """The node that Ray says died under the call (``NodeDiedError``), else ``""``."""
    found = _DIED_ON.search(str(exc))
    return f"{found[1]} node {found[2]}" if found else ""


def _unpack_reply(name: str, reply: bytes | tuple[bytes, str]) -> Any:
    """The tool's value, or raise its error (rebuilt here, with the worker's traceback).

    ``reply`` is a worker's reply, or what :func:`run_task` returns (reply and node).
    """
    if isinstance(reply, tuple):
        reply = reply[0]
    try:
        kind, *rest = load_result(reply, "the reply")
    except Exception as exc:
        raise SerializationError(f"the result of tool {name!r} could not be unpickled here: "
                                 f"{type(exc).__name__}: {exc}") from exc
    if kind == "ok":
        return rest[0]
    raise rebuild_error(*rest)


def _ray_failure(ray: Any, tool: str, exc: Exception) -> ExecutorError:
    """The shoal error for a failure of Ray itself (tools' own errors arrive as replies)."""
    summary = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
    crashes = tuple(getattr(ray.exceptions, n) for n in _CRASHES
                    if hasattr(ray.exceptions, n))
    if isinstance(exc, crashes):
        return WorkerCrashedError(tool, f"Ray reported {summary}")
    cancelled = getattr(ray.exceptions, "TaskCancelledError", None)
    if cancelled is not None and isinstance(exc, cancelled):
        # shoal's own cancel of a call ends its wait first (cancelled or timed out): this one
        # is the tool's KeyboardInterrupt (how ray.cancel stops a task), or an outside cancel
        return ExecutorError(
            f"tool {tool!r} raised KeyboardInterrupt, or something outside shoal cancelled its "
            f"Ray task (ray.cancel); its worker did not die (Ray reported {summary})")
    return ExecutorError(f"Ray could not run tool {tool!r}: {summary}")
