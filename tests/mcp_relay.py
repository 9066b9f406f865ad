"""A stdio pipe between an MCP client and a server, as a slow network would be.

``python tests/mcp_relay.py LOG DELAY PROGRAM [ARGS...]`` starts ``PROGRAM``, passes the
client's messages to it at once and its answers to ``tools/call`` requests back ``DELAY``
seconds after the server wrote them (so a tool that answers in a millisecond answers like a
remote one), its other messages (the handshake, listings) at once but never ahead of an answer
written before them, and appends one JSON line per JSON-RPC message to ``LOG``: its
direction (``request`` as the server got it, ``response`` as the client got it), the time
(``time.time()``), this relay's pid (one relay, one server process: ids are unique within
it), its ``id`` and ``method``.
tests/test_mcp.py reads from it how many calls were on the wire at once.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from typing import IO


def _parse(line: bytes) -> dict[str, object] | None:
    """The JSON-RPC message on ``line`` (None if it is not one)."""
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def _delay_of(line: bytes, calls: set[object], delay: float) -> float:
    """``delay`` for the server's answer to a ``tools/call`` request, 0 for anything else.

    A message with 0 still waits in the one queue behind the answers written before it, so
    the client gets the server's messages in the order the server wrote them.
    """
    message = _parse(line)
    if message is None or "method" in message:  # the server's own requests, notifications
        return 0.0
    return delay if message.get("id") in calls else 0.0


def main() -> int:
    log_path, delay, *command = sys.argv[1:]
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    lock = threading.Lock()
    due: queue.Queue[tuple[float, bytes] | None] = queue.Queue()
    # the ids of the client's tools/call requests: only their answers are held back. Only
    # the calls' overlap is measured here; holding the handshake and the listings back as well
    # only made each session start seconds late.
    calls: set[object] = set()

    with open(log_path, "a", encoding="utf-8") as log:

        def note(direction: str, line: bytes) -> None:
            message = _parse(line)
            if message is None:
                return
            with lock:
                log.write(json.dumps({"dir": direction, "time": time.time(),
                                      "relay": os.getpid(), "id": message.get("id"),
                                      "method": message.get("method")}) + "\n")
                log.flush()

        def upstream(into: IO[bytes]) -> None:  # client -> server, at once
            for line in iter(sys.stdin.buffer.readline, b""):
                note("request", line)
                message = _parse(line)
                if message is not None and message.get("method") == "tools/call":
                    calls.add(message.get("id"))  # before the server can have answered it
                into.write(line)
                into.flush()
            into.close()  # the client is gone: the server reads its end of input and exits

        def downstream(out: IO[bytes]) -> None:  # server -> the delivery queue, timed
            for line in iter(out.readline, b""):
                due.put((time.monotonic() + _delay_of(line, calls, float(delay)), line))
            due.put(None)

        threading.Thread(target=upstream, args=(child.stdin,), daemon=True).start()
        threading.Thread(target=downstream, args=(child.stdout,), daemon=True).start()
        while (item := due.get()) is not None:
            time.sleep(max(0.0, item[0] - time.monotonic()))
            note("response", item[1])
            sys.stdout.buffer.write(item[1])
            sys.stdout.buffer.flush()
    return child.wait()


if __name__ == "__main__":
    raise SystemExit(main())
