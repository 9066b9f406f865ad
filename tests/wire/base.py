"""The HTTP plumbing shared by the wire servers: threads, recording, failures, delays.

A :class:`WireServer` is a real HTTP/1.1 server (``ThreadingHTTPServer``) on 127.0.0.1 with a
free port, serving on a background thread, so the SDKs under test do real HTTP whatever event
loop the test runs. Subclasses supply the protocol: the endpoint path, how a reply is rendered
(JSON and SSE), the error body, and the checks a real provider would make on a request.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self

from tests.wire.replies import ErrorReply, RawReply, Reply, Responder, text_reply

__all__ = ["Recorded", "WireServer", "closed_port_url"]

Answer = Reply | ErrorReply | RawReply | dict[str, Any]


@dataclass
class Recorded:
    """One request the server received: its 1-based arrival ``index``, ``path``, lower-cased
    ``headers``, parsed JSON ``body`` (``None`` if it was not JSON), whether it asked to
    ``stream``, the ``status`` it was answered with (0 while in progress), and when it
    arrived (``at``, ``time.monotonic()``)."""

    index: int
    path: str
    headers: dict[str, str]
    body: Any
    stream: bool
    status: int = 0
    at: float = 0.0


@dataclass
class _Failure:
    status: int
    retry_after: float | None
    message: str
    every: int = 0  # fail every n-th request (by arrival index) when set
    remaining: int = 0  # else fail this many more requests


class WireServer:
    """A fake provider speaking a real wire protocol; see :mod:`tests.wire` for the tour.

    ``responder`` decides each answer: a callable taking the parsed request body, a single
    :class:`Reply` (always answered), or a sequence of answers used one per request in order
    (a request past the end gets a 400 naming the problem). ``strict`` answers 400 to requests
    a real provider would reject, and lists the problems in :attr:`errors`.
    """

    #: The endpoint, e.g. ``"/v1/chat/completions"``.
    path: ClassVar[str] = ""
    #: What follows ``http://host:port`` in the base URL the SDK wants.
    url_suffix: ClassVar[str] = ""
    #: Prefix of the tool call ids this server makes up.
    call_id_prefix: ClassVar[str] = "call_"

    def __init__(self, responder: Responder | Answer | Sequence[Answer] | None = None, *,
                 strict: bool = True) -> None:
        self.strict = strict
        self._lock = threading.Lock()
        self._requests: list[Recorded] = []
        self._errors: list[str] = []
        self._failures: list[_Failure] = []
        self._delay = 0.0
        self._ids = itertools.count(1)
        self._in_flight = 0
        self.max_in_flight = 0
        self.responder = responder
        self._connections: set[socket.socket] = set()
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.wire = self
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.01},
                                        name=f"{type(self).__name__}", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- public API

    @property
    def port(self) -> int:
        """The TCP port the server listens on (127.0.0.1)."""
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The base URL to give the SDK (``base_url=server.url``)."""
        return f"http://127.0.0.1:{self.port}{self.url_suffix}"

    @property
    def responder(self) -> Responder:
        """What answers each request (set it any time; see the class docstring)."""
        return self._responder

    @responder.setter
    def responder(self, value: Responder | Answer | Sequence[Answer] | None) -> None:
        self._responder = _as_responder(value)

    @property
    def requests(self) -> list[Recorded]:
        """Every request received so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def bodies(self) -> list[Any]:
        """The JSON bodies of every request received, in arrival order."""
        return [r.body for r in self.requests]

    @property
    def answered(self) -> list[Recorded]:
        """The requests answered with 200."""
        return [r for r in self.requests if r.status == 200]

    @property
    def errors(self) -> list[str]:
        """Protocol problems found in requests (strict mode) and responder exceptions."""
        with self._lock:
            return list(self._errors)

    def fail_every(self, n: int, status: int = 429, retry_after: float | None = 0.05,
                   message: str = "injected failure") -> Self:
        """Answer every ``n``-th request (by arrival: n, 2n, ...) with ``status``."""
        with self._lock:
            self._failures.append(_Failure(status, retry_after, message, every=n))
        return self

    def fail_next(self, times: int = 1, status: int = 500, retry_after: float | None = None,
                  message: str = "injected failure") -> Self:
        """Answer the next ``times`` requests with ``status``."""
        with self._lock:
            self._failures.append(_Failure(status, retry_after, message, remaining=times))
        return self

    def clear_failures(self) -> Self:
        """Stop injecting failures."""
        with self._lock:
            self._failures.clear()
        return self

    def delay(self, seconds: float) -> Self:
        """Wait ``seconds`` before every successful answer (on the request's own thread)."""
        self._delay = seconds
        return self

    def close(self) -> None:
        """Stop serving and drop open connections."""
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} requests={len(self._requests)}>"

    # ------------------------------------------------------- for the protocol classes

    def new_call_id(self) -> str:
        """A fresh tool call id, unique on this server."""
        return self.new_id(self.call_id_prefix)

    def new_id(self, prefix: str) -> str:
        """A fresh id with ``prefix``, unique on this server."""
        return f"{prefix}{next(self._ids):04d}"

    def validate(self, body: dict[str, Any], headers: dict[str, str]) -> list[str]:
        """Problems a real provider would answer 400 to (override)."""
        return []

    def render_json(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        """The whole JSON answer for ``reply`` (override)."""
        raise NotImplementedError

    def render_events(self, body: dict[str, Any], reply: Reply) -> Iterator[str]:
        """The SSE events (each a complete ``...\\n\\n`` string) for ``reply`` (override)."""
        raise NotImplementedError

    def render_stream_error(self, body: dict[str, Any], error: ErrorReply) -> Iterator[str]:
        """A stream that starts, then reports ``error`` as an event (override)."""
        raise NotImplementedError

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        """The provider's JSON error body (override)."""
        return {"error": {"message": message}}

    # ------------------------------------------------------------------- handling

    def _handle(self, handler: _Handler) -> None:
        raw = handler.rfile.read(int(handler.headers.get("content-length") or 0))
        body = _json_or_none(raw)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        stream = isinstance(body, dict) and body.get("stream") is True
        with self._lock:
            record = Recorded(len(self._requests) + 1, handler.path, headers, body, stream,
                              at=time.monotonic())
            self._requests.append(record)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            if handler.path.split("?", 1)[0] != self.path:
                answer: Answer = ErrorReply(404, f"no endpoint {handler.path}")
            else:
                answer = self._decide(record.index, body, headers)
            record.status = self._send(handler, body, answer, stream)
        except (BrokenPipeError, ConnectionResetError):
            record.status = record.status or 499  # the client went away mid-answer
        finally:
            with self._lock:
                self._in_flight -= 1

    def _decide(self, index: int, body: Any, headers: dict[str, str]) -> Answer:
        if (injected := self._injected(index)) is not None:
            return injected
        if not isinstance(body, dict):
            return ErrorReply(400, "the request body is not a JSON object")
        if self.strict and (problems := self.validate(body, headers)):
            self._note(f"request #{index}: " + "; ".join(problems))
            return ErrorReply(400, "; ".join(problems))
        if self._delay:
            time.sleep(self._delay)
        try:
            return self._responder(body)
        except Exception as exc:  # a bug in the test's responder: fail fast, not retried
            self._note(f"request #{index}: responder raised {exc!r}")
            return ErrorReply(400, f"wire server: the responder raised {exc!r}")

    def _injected(self, index: int) -> ErrorReply | None:
        with self._lock:
            for failure in self._failures:
                hit = (index % failure.every == 0) if failure.every else failure.remaining > 0
                if hit:
                    failure.remaining = max(0, failure.remaining - 1)
                    return ErrorReply(failure.status, failure.message, failure.retry_after)
        return None

    def _note(self, problem: str) -> None:
        with self._lock:
            self._errors.append(problem)

    def _send(self, handler: _Handler, body: Any, answer: Answer, stream: bool) -> int:
        if isinstance(answer, dict):
            return _send_json(handler, 200, answer)
        if isinstance(answer, RawReply):
            return _send_raw(handler, answer)
        if isinstance(answer, ErrorReply):
            if answer.mid_stream and stream:
                return _send_events(handler, self.render_stream_error(body, answer), 0.0)
            headers = dict(answer.headers)
            if answer.retry_after is not None:
                headers["retry-after"] = f"{answer.retry_after:g}"
            return _send_json(handler, answer.status,
                              self.error_body(answer.status, answer.message), headers)
        if answer.delay:
            time.sleep(answer.delay)
        try:  # render all before the status line goes out, so a bad reply becomes a 400
            events = list(self.render_events(body, answer)) if stream else []
            payload = {} if stream else self.render_json(body, answer)
        except Exception as exc:
            self._note(f"could not render {answer!r}: {exc!r}")
            return _send_json(handler, 400, self.error_body(
                400, f"wire server: the reply cannot be rendered: {exc!r}"))
        if stream:
            return _send_events(handler, iter(events), answer.chunk_delay)
        return _send_json(handler, 200, payload)


def _as_responder(value: Responder | Answer | Sequence[Answer] | None) -> Responder:
    if value is None:
        value = text_reply("ok")
    if isinstance(value, Reply | ErrorReply | RawReply | dict):
        fixed = value
        return lambda body: fixed
    if callable(value):
        return value
    return _Script(list(value))


class _Script:
    """Answers from a list, one per request, in arrival order."""

    def __init__(self, answers: list[Answer]) -> None:
        self._answers = answers
        self._lock = threading.Lock()
        self._used = 0

    def __call__(self, body: dict[str, Any]) -> Answer:
        with self._lock:
            if self._used >= len(self._answers):
                return ErrorReply(400, f"wire server: the script has only {len(self._answers)} "
                                       "replies and another request came")
            self._used += 1
            return self._answers[self._used - 1]


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _send_json(handler: _Handler, status: int, payload: dict[str, Any],
               headers: dict[str, str] | None = None) -> int:
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(data)))
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(data)
    handler.wfile.flush()
    return status


def _send_raw(handler: _Handler, answer: RawReply) -> int:
    """Send ``answer``'s head and body as they are, a byte at a time when it pauses."""
    length = len(answer.body) + (1000 if answer.reset else 0)
    head = (f"HTTP/1.1 {answer.status} Whatever\r\ncontent-type: {answer.content_type}\r\n"
            f"content-length: {length}\r\n\r\n").encode()
    handler.close_connection = True  # what follows on this connection is not to be trusted
    for data, pause in ((head, answer.head_pause), (answer.body, answer.pause)):
        if not pause:
            handler.wfile.write(data)
            handler.wfile.flush()
            continue
        for at in range(len(data)):
            handler.wfile.write(data[at:at + 1])
            handler.wfile.flush()
            time.sleep(pause)
    if answer.reset:
        time.sleep(0.05)  # the client reads what came before the reset
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                      struct.pack("ii", 1, 0))
        handler.connection.close()
    return answer.status


def _send_events(handler: _Handler, events: Iterator[str], pause: float) -> int:
    """Send SSE events with chunked transfer encoding, as the providers do."""
    handler.send_response(200)
    handler.send_header("content-type", "text/event-stream; charset=utf-8")
    handler.send_header("cache-control", "no-cache")
    handler.send_header("transfer-encoding", "chunked")
    handler.end_headers()
    for event in events:
        data = event.encode()
        handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        handler.wfile.flush()
        if pause:
            time.sleep(pause)
    handler.wfile.write(b"0\r\n\r\n")
    handler.wfile.flush()
    return 200


def sse(data: Any, event: str | None = None) -> str:
    """One server-sent event: optional ``event:`` line, a JSON (or raw string) ``data:`` line."""
    text = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n"


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # a burst of concurrent clients must not hit SYN retries
    wire: WireServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs' connection pools expect
    disable_nagle_algorithm = True  # else small writes wait ~40 ms for delayed ACKs
    timeout = 30  # an idle kept-alive connection frees its thread eventually
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        with self.server.wire._lock:
            self.server.wire._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.wire._lock:
            self.server.wire._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def do_POST(self) -> None:
        self.server.wire._handle(self)

    def do_GET(self) -> None:
        _send_json(self, 404, self.server.wire.error_body(404, f"no endpoint {self.path}"))

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean; the server records what matters


def closed_port_url(suffix: str = "") -> str:
    """A URL on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{suffix}"
