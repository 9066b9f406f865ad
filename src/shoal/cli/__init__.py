"""The ``shoal`` command line (``shoal run PLAN_FILE``).

Kept apart from the core: nothing in :mod:`shoal` imports this package, so ``import shoal``
never pays for typer or rich. (``ConsoleApprover`` imports :mod:`shoal.cli.safe`, the
escaping of untrusted text, when it first prompts.) The entry point is :func:`shoal.cli.app.main`.
"""
