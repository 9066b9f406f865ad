"""A literature review by a lead agent and parallel reader subagents."""
