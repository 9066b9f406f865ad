"""A raw MCP server over stdio (JSON-RPC by hand, no SDK) for session 37's tests.

Raw, so that it can break the protocol as no SDK lets a server: ``python
mcp_hostile_s37_server.py [MODE ...]``. Its tools (each takes ``text`` and ``n``):

- ``echo`` answers ``echo: TEXT`` after ``n`` seconds (a thread of its own: calls overlap),
  first adding a line ``TEXT`` to the file its argument ``mark`` names, if given;
- ``batched`` answers in a JSON-RPC batch (an array), with a log notification before the
  answer;
- ``batched_bad`` answers in a batch whose answer is no MCP result (its content no list);
- ``misnumbered`` answers a request it was never sent (its call's id plus 1000),
  ``batched_stray`` so in a batch after a notification, and ``unnamed`` with a parse error
  naming no request (``id: null``), each once an ``echo`` call has come (or after 30 s);
- ``media`` answers an image whose data is not base64, audio whose base64 is, a resource
  link whose name holds a line break, a bracket and an escape sequence, and a file whose data
  is not base64 and whose media type holds an escape sequence;
- ``big`` answers a text of ``n`` characters (``x``), on one line.

MODEs: ``ref_loop`` lists a tool ``looped`` whose input schema loops through ``$ref``
(``$defs`` ``a`` -> ``b`` -> ``a`` through ``allOf``), ``output_loop`` a tool ``looped_out``
whose output schema loops (``y`` -> ``not`` -> ``y``); ``ref_tree`` a tool ``tree`` whose
schema refers to itself through a property (a tree: no loop).
"""

import json
import sys
import threading
import time
from typing import Any

MODES = set(sys.argv[1:])
ECHOING = threading.Event()  # set once an echo call has come
_LOCK = threading.Lock()
ARGS = {"type": "object", "properties": {"text": {"type": "string"}, "n": {"type": "number"}}}
READ_ONLY = {"readOnlyHint": True}


def send(message: Any) -> None:
    """Write one line of JSON to the protocol's pipe (stdout)."""
    with _LOCK:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def listed() -> list[dict[str, Any]]:
    """What ``tools/list`` answers."""
    tools = [{"name": name, "inputSchema": ARGS, "annotations": READ_ONLY}
             for name in ("echo", "batched", "batched_bad", "misnumbered", "unnamed", "media",
                           "batched_stray", "big")]
    if "ref_loop" in MODES:
        tools.append({"name": "looped", "annotations": READ_ONLY, "inputSchema": {
            "type": "object", "properties": {"x": {"$ref": "#/$defs/a"}},
            "$defs": {"a": {"allOf": [{"$ref": "#/$defs/b"}]},
                      "b": {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/a"}]}}}})
    if "output_loop" in MODES:
        tools.append({"name": "looped_out", "annotations": READ_ONLY, "inputSchema": ARGS,
                      "outputSchema": {"type": "object", "properties": {
                          "x": {"$ref": "#"}, "y": {"not": {"$ref": "#/properties/y"}}}}})
    if "ref_tree" in MODES:
        tools.append({"name": "tree", "annotations": READ_ONLY, "inputSchema": {
            "type": "object", "properties": {"root": {"$ref": "#/$defs/node"}},
            "$defs": {"node": {"type": "object", "properties": {
                "kid": {"$ref": "#/$defs/node"}}}}}})
    return tools


def answer(request: Any, text: str) -> dict[str, Any]:
    """A JSON-RPC answer to ``request`` of one text block."""
    return {"jsonrpc": "2.0", "id": request,
            "result": {"content": [{"type": "text", "text": text}]}}


def call(request: Any, name: str, arguments: dict[str, Any]) -> None:
    """Answer a ``tools/call`` as its tool does."""
    text = str(arguments.get("text", ""))
    if name == "batched":
        send([{"jsonrpc": "2.0", "method": "notifications/message",
               "params": {"level": "info", "data": "about to answer"}},
              answer(request, f"batched: {text}")])
    elif name == "media":
        send({"jsonrpc": "2.0", "id": request, "result": {"content": [
            {"type": "image", "data": "!!not base64**", "mimeType": "image/png"},
            {"type": "audio", "data": "UklG\nRg==", "mimeType": "audio/wav"},
            {"type": "resource_link", "uri": "file:///z", "name": "z]\n[image: a\x1b]0;x\x07"},
            {"type": "resource", "resource": {"uri": "file:///y", "blob": "@@@",
                                              "mimeType": "application/pdf\x1b[2J"}}]}})
    elif name in ("misnumbered", "unnamed", "batched_stray"):
        def stray() -> None:
            ECHOING.wait(30)
            send({"misnumbered": answer(request + 1000, "lost"),
                  "batched_stray": [{"jsonrpc": "2.0", "method": "notifications/message",
                                     "params": {"level": "info", "data": "hi"}},
                                    answer(request + 1000, "lost")],
                  "unnamed": {"jsonrpc": "2.0", "id": None, "error": {
                      "code": -32700, "message": "Parse error\x1b[2J: bad request"}}}[name])

        threading.Thread(target=stray, daemon=True).start()
    elif name == "big":  # one answer of n characters, in one write (a line of n bytes)
        send(answer(request, "x" * int(arguments.get("n") or 0)))
    elif name == "batched_bad":
        send([{"jsonrpc": "2.0", "id": request, "result": {"content": "not a list"}}])
    else:
        if arguments.get("mark"):  # the call arrived: a line in the file it names
            with open(str(arguments["mark"]), "a", encoding="utf-8") as marks:
                marks.write(text + "\n")

        ECHOING.set()

        def later() -> None:
            time.sleep(float(arguments.get("n") or 0))
            send(answer(request, f"echo: {text}"))

        threading.Thread(target=later, daemon=True).start()


def main() -> None:
    """Serve until stdin ends."""
    for line in sys.stdin:
        message = json.loads(line)
        method, request = message.get("method"), message.get("id")
        if method is None or request is None:  # an answer, or a notification
            continue
        if method == "initialize":
            send({"jsonrpc": "2.0", "id": request, "result": {
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "raw37", "version": "1"}}})
        elif method == "tools/list":
            send({"jsonrpc": "2.0", "id": request, "result": {"tools": listed()}})
        elif method == "tools/call":
            call(request, message["params"]["name"], message["params"].get("arguments") or {})
        else:
            send({"jsonrpc": "2.0", "id": request,
                  "error": {"code": -32601, "message": f"no method {method}"}})


if __name__ == "__main__":
    main()
