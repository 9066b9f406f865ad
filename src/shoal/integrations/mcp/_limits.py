"""The bounds and names the MCP integration works with (timeouts, pages, depths)."""

from __future__ import annotations

import re

CONNECT_TIMEOUT = 30.0  # seconds for a server to start and answer the handshake
#: seconds a call whose tool has no timeout of its own waits for its answer (MCPServerError)
ANSWER_TIMEOUT = 600.0
CLOSE_TIMEOUT = 10.0  # seconds for a session to close before its task is cancelled
CANCEL_POST_WAIT = 2.0  # seconds a closing HTTP session waits for its cancels to be posted
STDERR_TAIL = 2000  # characters of a server's stderr quoted when it fails
MAX_ARGUMENT_DEPTH = 250  # levels of nesting of an argument's value a call can send
MAX_PAGES = 1000  # tools/list pages read from one server (one that pages on: MCPServerError)
MAX_RELISTINGS = 5  # listings in a row while a server says its tools changed during each
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what model APIs accept as tool names
_SESSIONS = "shoal.mcp.sessions"  # the key of a run's sessions in RunScope.shared
_SCOPE_PARAM = "_shoal_mcp_scope"  # the injected parameter that brings a call its run's scope
