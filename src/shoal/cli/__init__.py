"""The ``shoal`` command line (``shoal run PLAN_FILE``).

Kept apart from the core: nothing in :mod:`shoal` imports this package, so ``import shoal``
never pays for typer or rich. The console approver (:mod:`shoal.cli.approver`) lives here too;
``shoal.ConsoleApprover`` loads it, and rich only when it first prompts. The entry point is
:func:`shoal.cli.app.main`.
"""
