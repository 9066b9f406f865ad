"""The ``shoal`` command line (``shoal run PLAN_FILE``).

Kept apart from the core: nothing in :mod:`shoal` imports this package, so ``import shoal``
never pays for typer or rich. The console approver (:mod:`shoal.cli.approver`) lives here too;
``shoal.ConsoleApprover`` loads it, and rich only when it first prompts. The entry point is
:func:`shoal.cli.main`, which loads :func:`shoal.cli.app.main`.
"""

import sys

__all__ = ["main"]

# 128 + SIGINT, as shoal.cli.interrupt says; not imported from there: this module stays light
_EXIT_INTERRUPTED = 130


def main() -> None:
    """Entry point of the ``shoal`` console script: :func:`shoal.cli.app.main`, once loaded.

    Loading the command line (typer, rich, the commands) takes a moment: a Ctrl-C meanwhile
    ends the command with exit code 130 and one line, not a traceback of the import.
    """
    try:
        from shoal.cli.app import main as run_command_line
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(_EXIT_INTERRUPTED)
    run_command_line()
