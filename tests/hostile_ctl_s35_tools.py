"""Models and tools for tests/test_hostile_ctl_s35.py that must be importable in a process."""

from __future__ import annotations

import socket

from shoal import tool
from shoal.exceptions import ModelError
from shoal.models.base import Model, ModelRequest, ModelResponse


class SocketHungryModel(Model):
    """Opens ``sockets`` sockets for each turn (a client's connections), as a pool could."""

    name = "socket-hungry"

    def __init__(self, sockets: int) -> None:
        self.sockets = sockets

    async def request(self, request: ModelRequest) -> ModelResponse:
        held: list[socket.socket] = []
        try:
            for _ in range(self.sockets):
                held.append(socket.socket())
        except OSError as exc:  # as an HTTP client wraps a connection's error in its own
            raise ModelError(self.name, f"cannot connect: {exc}") from exc
        finally:
            for each in held:
                each.close()
        return ModelResponse(text="connected")


@tool(isolation="process")
def read_missing() -> str:
    """Read a file that is not there: the tool's own OSError."""
    with open("/nonexistent/shoal-s35") as handle:
        return handle.read()
