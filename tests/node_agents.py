"""Agents and a pattern for plan files that name them by import path (test_agent_nodes)."""

import shoal
from shoal.patterns import reflect
from shoal.testing import ScriptedModel

reader = shoal.Agent(name="reader", model=ScriptedModel.per_prompt({"*": ["summary"]}))
writer = shoal.Agent(name="writer", model=ScriptedModel.per_prompt({"*": ["review"]}))
critic = shoal.Agent(name="critic", model=ScriptedModel.per_prompt({"*": ["ACCEPT: good"]}))
review = reflect(writer, critic)
