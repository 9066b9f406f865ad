"""What the SDK adapters share: credentials, local-server detection and error translation.

Both SDKs raise the same shapes of error (a status error carrying the ``httpx`` response, a
connection error, a timeout); this module turns them into shoal's
:class:`~shoal.exceptions.ModelError` family without importing either SDK.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import os
import time
import weakref
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

from shoal.exceptions import ModelConnectionError, ModelError, ModelHTTPError
from shoal.models.base import Usage
from shoal.models.prices import Price, cost

__all__ = [
    "LOCAL_API_KEY",
    "PerLoop",
    "describe_cause",
    "http_error",
    "is_local_url",
    "parse_retry_after",
    "priced_usage",
    "resolve_credentials",
    "transport_error",
]

T = TypeVar("T")

#: Sent to local servers (llama.cpp, vLLM, Ollama) that need no key: the SDKs insist on one.
LOCAL_API_KEY = "shoal-local-no-key"

_LOCAL_NAMES = {"localhost", "host.docker.internal"}


def is_local_url(url: str | None) -> bool:
    """Whether ``url`` points at this machine or a private network (where keys are optional)."""
    if not url:
        return False
    host = (urlsplit(url).hostname or "").lower()
    if host in _LOCAL_NAMES or host.endswith((".localhost", ".local")):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_unspecified


def resolve_credentials(name: str, *, api_key: str | None, base_url: str | None,
                        key_env: str, url_env: str) -> tuple[str, str | None]:
    """The API key and base URL to use: arguments first, then the environment.

    A local server with no key gets :data:`LOCAL_API_KEY`; anywhere else a missing key is a
    :class:`ModelError` that says which variable to set.
    """
    url = base_url or os.environ.get(url_env) or None
    key = api_key or os.environ.get(key_env) or None
    if key is None:
        if not is_local_url(url):
            raise ModelError(name, f"no API key: set the {key_env} environment variable or "
                                   "pass api_key=...")
        key = LOCAL_API_KEY
    return key, url


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds a response asks us to wait: ``retry-after-ms``, else ``retry-after``.

    ``retry-after`` may be seconds (``"2"``, ``"0.5"``) or an HTTP date. ``None`` when neither
    header is there or readable; never negative.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    if (millis := _number(lowered.get("retry-after-ms"))) is not None:
        return max(0.0, millis / 1000)
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    if (seconds := _number(raw)) is not None:
        return max(0.0, seconds)
    try:
        moment = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def http_error(name: str, status: int, headers: Mapping[str, str], body: object,
               fallback: str) -> ModelHTTPError:
    """A :class:`ModelHTTPError` for an SDK status error, with the provider's own message."""
    return ModelHTTPError(name, _error_message(body) or fallback, status,
                          parse_retry_after(headers))


def _error_message(body: object) -> str:
    # OpenAI's SDK hands over the inner ``error`` object, Anthropic's the whole body.
    if not isinstance(body, Mapping):
        return body if isinstance(body, str) else ""
    message: Any = body.get("message")
    if isinstance(message, str) and message:
        return message
    inner = body.get("error")
    return _error_message(inner) if isinstance(inner, Mapping) else ""


def transport_error(name: str, exc: BaseException) -> ModelConnectionError | None:
    """A :class:`ModelConnectionError` for a raw transport error, else ``None``.

    A connection that drops while a stream is read surfaces as the HTTP library's own error,
    not the SDK's; the SDKs ship ``httpx`` (or its successor ``httpx2``) under different
    names across versions, so the error is recognised by its ``TransportError`` base.
    """
    for cls in type(exc).__mro__:
        if cls.__name__ == "TransportError" and cls.__module__.startswith("httpx"):
            return ModelConnectionError(name, f"connection lost: {exc or type(exc).__name__}")
    return None


def describe_cause(exc: BaseException) -> str:
    """What lies under an SDK's generic "Connection error.": the transport's own error."""
    cause = exc.__cause__ or exc.__context__
    return f"{type(cause).__name__}: {cause}" if cause is not None else "no detail"


class PerLoop(Generic[T]):
    """One value (an SDK client) per running event loop, made on first use.

    An HTTP client's pooled connections belong to the loop that opened them: a model reused by
    a second ``asyncio.run`` (``agent.run_sync`` twice) must not touch the first loop's
    connections. Entries go when their loop is garbage collected.
    """

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._values: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = (
            weakref.WeakKeyDictionary())

    def get(self) -> T:
        """The value for the running loop."""
        loop = asyncio.get_running_loop()
        value = self._values.get(loop)
        if value is None:
            value = self._values[loop] = self._make()
        return value

    def pop(self) -> T | None:
        """Forget the running loop's value and return it (``None`` if there was none)."""
        return self._values.pop(asyncio.get_running_loop(), None)


def priced_usage(model: str, served_by: str, tokens_in: int | None, tokens_out: int | None,
                 prices: Mapping[str, Price] | None) -> Usage:
    """One request's usage, with its cost where the model (or the id that served it) is known.

    Some compatible servers report no usage, or nulls: the request still counts.
    """
    tokens_in, tokens_out = tokens_in or 0, tokens_out or 0
    price = cost(model, tokens_in, tokens_out, prices)
    if price is None and served_by:
        price = cost(served_by, tokens_in, tokens_out, prices)
    return Usage(tokens_in, tokens_out, 1, price)
