"""Runnable examples; each sub-package holds its tools, plan files and data."""
