"""Model providers over real HTTP against a hostile server (session 40 sweep).

Over the real SDKs and the strict wire servers of :mod:`tests.wire`: what a provider's
server answers must end in a typed error or a whole reply, never a raw Python error.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from shoal.exceptions import ModelHTTPError
from tests.test_models_hostile_http import SERVERS, ask
from tests.wire import ErrorReply


@pytest.mark.parametrize("server_class", SERVERS)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("year", ["99999", "10000000000"])
def test_a_retry_after_date_past_year_9999_is_a_wait_longer_than_any(
        server_class: type[Any], stream: bool, year: str) -> None:
    # a year past datetime's was an OverflowError raised out of the request (the larger) or
    # read as no header at all (the smaller), so the request was tried again at once
    date = f"Wed, 21 Oct {year} 07:28:00 GMT"
    refusal: Any = ErrorReply(429, "slow down", headers={"retry-after": date})  # ask's RawReply
    error = ask(server_class, refusal, stream=stream)
    assert type(error) is ModelHTTPError, repr(error)
    assert error.status == 429
    assert error.retry_after == math.inf
