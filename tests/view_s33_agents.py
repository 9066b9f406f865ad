"""Agents for tests/test_hostile_view_s33.py, loaded by ``shoal run`` in a fresh process."""

from __future__ import annotations

import shoal
from shoal.exceptions import ModelError
from shoal.models.base import Model, ModelRequest, ModelResponse


class UnprintableModelError(ModelError):
    """A model's own error whose message cannot be written out."""

    def __str__(self) -> str:
        raise RuntimeError("this error has no words")


class FailingModel(Model):
    """A model whose every request fails with an :class:`UnprintableModelError`."""

    name = "failing"

    async def request(self, request: ModelRequest) -> ModelResponse:
        """Fail."""
        raise UnprintableModelError("failing", "down")


unprintable_error_agent = shoal.Agent(name="lead", model=FailingModel())
