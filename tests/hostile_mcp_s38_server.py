"""A raw MCP server over stdio (JSON-RPC by hand, no SDK) for session 38's tests.

``python hostile_mcp_s38_server.py [MODE ...]``. Its tools change while it runs, and it tells
the client (``notifications/tools/list_changed``), as MCP lets a server:

- ``echo`` answers ``echo: TEXT`` after ``n`` seconds (a thread of its own: calls overlap);
- ``shape`` answers structured content ``{"a": 1}``, which its output schema asks for, or,
  once ``reshape`` has been called, ``{"b": "x"}``, which its output schema then asks for;
- ``reshape`` changes ``shape``'s output schema, says the tools changed, then answers;
- ``shrink`` stops listing ``gone``, says so, then answers; a call of ``gone`` after that is
  never answered (a server that no longer knows a tool need not answer);
- ``grow`` lists ``fresh`` from then on, says so, then answers; ``fresh`` answers ``fresh``
  and has an output schema (so the client needs its listing to check the answer);
- ``deep`` answers structured content nested ``n`` levels deep (``{"a": {"a": ... 1}}``), in
  a JSON-RPC batch when its ``text`` is ``batch``;
- ``refuse`` answers with a JSON-RPC error whose message holds escape sequences and a CR;
- ``batch_changed`` answers in a JSON-RPC batch whose notification that the tools changed
  (``gone`` removed) comes after the answer.

MODEs: ``fresh`` lists ``fresh`` from the start; ``restless`` says its tools changed each
time it lists them (before the listing); ``reargue`` lists ``reargue`` too, which makes
``echo``'s ``text`` at most 3 characters long (``reargue_bad``: its schema invalid), says
so, then answers; ``log=PATH`` appends
each notification the client sends (its method and params, as JSON) to the file PATH.
"""

import json
import sys
import threading
import time
from typing import Any

MODES = sys.argv[1:]
LOG = next((m[4:] for m in MODES if m.startswith("log=")), None)
_LOCK = threading.Lock()
ARGS = {"type": "object", "properties": {"text": {"type": "string"}, "n": {"type": "number"}}}
SHAPES = [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
          {"type": "object", "properties": {"b": {"type": "string"}}, "required": ["b"]}]
SHORT = {"type": "object", "properties": {"text": {"type": "string", "maxLength": 3},
                                          "n": {"type": "number"}}}
BAD = {"type": "object", "properties": {"text": {"type": "strin"}}}  # no valid schema
STATE: dict[str, Any] = {"shape": 0, "gone": True, "fresh": "fresh" in MODES, "short": False}


def send(message: Any) -> None:
    """Write one line of JSON to the protocol's pipe (stdout)."""
    with _LOCK:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


CHANGED = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}


def listed() -> list[dict[str, Any]]:
    """What ``tools/list`` answers now."""
    names = ["echo", "reshape", "shrink", "grow", "batch_changed", "deep", "refuse"]
    names += ["gone"] if STATE["gone"] else []
    names += ["reargue"] if {"reargue", "reargue_bad"} & set(MODES) else []
    short = BAD if "reargue_bad" in MODES else SHORT
    tools: list[dict[str, Any]] = [
        {"name": name, "inputSchema": short if name == "echo" and STATE["short"] else ARGS}
        for name in names]
    tools.append({"name": "shape", "inputSchema": ARGS, "outputSchema": SHAPES[STATE["shape"]]})
    if STATE["fresh"]:
        tools.append({"name": "fresh", "inputSchema": ARGS, "outputSchema": SHAPES[1]})
    return tools


def answer(request: Any, text: str) -> dict[str, Any]:
    """A JSON-RPC answer to ``request`` of one text block."""
    return {"jsonrpc": "2.0", "id": request,
            "result": {"content": [{"type": "text", "text": text}]}}


def structured(request: Any, value: dict[str, Any]) -> dict[str, Any]:
    """A JSON-RPC answer to ``request`` of structured content ``value``."""
    return {"jsonrpc": "2.0", "id": request, "result": {
        "content": [{"type": "text", "text": json.dumps(value)}], "structuredContent": value}}


def call(request: Any, name: str, arguments: dict[str, Any]) -> None:
    """Answer a ``tools/call`` as its tool does."""
    text = str(arguments.get("text", ""))
    if name == "shape":
        send(structured(request, {"b": "x"} if STATE["shape"] else {"a": 1}))
    elif name == "fresh":
        send(structured(request, {"b": "fresh"}))
    elif name in ("reshape", "shrink", "grow", "reargue"):
        changes: dict[str, dict[str, Any]] = {
            "reshape": {"shape": 1}, "shrink": {"gone": False}, "grow": {"fresh": True},
            "reargue": {"short": True}}
        STATE.update(changes[name])
        send(CHANGED)
        send(answer(request, f"{name}: done"))
    elif name == "batch_changed":
        STATE["gone"] = False
        send([answer(request, "batch_changed: done"), CHANGED])
    elif name == "deep":  # structured content nested n levels deep, written by hand
        depth = int(arguments.get("n") or 0)
        nested = '{"a": ' * depth + "1" + "}" * depth
        line = (f'{{"jsonrpc": "2.0", "result": {{"content": [], '
                f'"structuredContent": {nested}}}, "id": {json.dumps(request)}}}')
        if text == "batch":  # in a JSON-RPC batch
            line = f"[{line}]"
        with _LOCK:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
    elif name == "refuse":  # an error answer whose message holds control characters
        send({"jsonrpc": "2.0", "id": request, "error": {
            "code": -32602, "message": "no\x1b[2J\rway\x9b31m, \x1b]0;title\x07really\nnot"}})
    elif name == "gone":
        if STATE["gone"]:
            send(answer(request, "gone: here"))
    else:
        def later() -> None:
            time.sleep(float(arguments.get("n") or 0))
            send(answer(request, f"echo: {text}"))

        threading.Thread(target=later, daemon=True).start()


def main() -> None:
    """Serve until stdin ends."""
    for line in sys.stdin:
        message = json.loads(line)
        method, request = message.get("method"), message.get("id")
        if method is not None and request is None and LOG:  # a notification
            with open(LOG, "a", encoding="utf-8") as log:
                log.write(json.dumps({"method": method, "params": message.get("params")}) + "\n")
        if method is None or request is None:
            continue
        if method == "initialize":
            send({"jsonrpc": "2.0", "id": request, "result": {
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {"listChanged": True}},
                "serverInfo": {"name": "raw38", "version": "1"}}})
        elif method == "tools/list":
            if "restless" in MODES:  # its tools change while it lists them, every time
                send(CHANGED)
            send({"jsonrpc": "2.0", "id": request, "result": {"tools": listed()}})
        elif method == "tools/call":
            call(request, message["params"]["name"], message["params"].get("arguments") or {})
        else:
            send({"jsonrpc": "2.0", "id": request,
                  "error": {"code": -32601, "message": f"no method {method}"}})


if __name__ == "__main__":
    main()
