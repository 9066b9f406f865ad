"""Agents: a model, instructions, tools and subagents, with every tool call of a turn in parallel.

See :class:`~shoal.agents.agent.Agent` (the definition), :mod:`shoal.agents.run` (the turn
loop), :mod:`shoal.agents.budget` (budgets for a whole tree) and
:func:`~shoal.agents.toolcalls.execute_calls` (one turn's tool calls as one plan).
"""
