"""Pytest fixtures for the wire servers.

Load them in a test module with ``pytest_plugins = ["tests.wire.fixtures"]`` (or use the
servers as context managers). Each fixture yields a started server answering ``"ok"``; set
``server.responder`` in the test to script it. The server is closed after the test.
"""

from collections.abc import Iterator

import pytest

from tests.wire.anthropic_server import AnthropicWireServer
from tests.wire.openai_server import OpenAIWireServer


@pytest.fixture
def openai_server() -> Iterator[OpenAIWireServer]:
    with OpenAIWireServer() as server:
        yield server


@pytest.fixture
def anthropic_server() -> Iterator[AnthropicWireServer]:
    with AnthropicWireServer() as server:
        yield server
