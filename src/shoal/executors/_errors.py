"""A tool's exception on its way back from another process (a worker, a Ray task).

The far side sends the exception pickled when it can be, and always its type name, message and
traceback text (:func:`error_reply`); this side raises the tool's own exception when it
unpickles, else a :class:`~shoal.exceptions.RemoteToolError` naming the original type
(:func:`rebuild_error`). Both process backends share this, so errors read the same on each.
"""

from __future__ import annotations

import pickle
import traceback

from shoal.exceptions import RemoteToolError, SerializationError
from shoal.executors._shipping import dumps, loads
from shoal.executors.results import load_result

__all__ = ["RemoteTraceback", "error_reply", "rebuild_error", "type_name"]


def type_name(exc: BaseException) -> str:
    """``module.QualName`` of the exception's type (just the name for builtins)."""
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else (
        f"{kind.__module__}.{kind.__qualname__}")


def error_reply(exc: BaseException) -> bytes:
    """``("error", pickled exception or None, type name, message, traceback)``, pickled."""
    try:
        message = str(exc)
    except BaseException:  # a broken __str__ (SystemExit too) must not lose the error
        message = f"<unprintable {type(exc).__qualname__}>"
    try:
        text = "".join(traceback.format_exception(exc))
    except BaseException as failed:  # the error's own code (a __getattr__ raising, looked up
        # for __notes__) must not end the worker: the call fails with the error all the same
        text = (f"{type_name(exc)}: {message}\n(its traceback could not be written out: "
                f"{type(failed).__name__} from the exception's own code)\n")
    try:
        blob: bytes | None = dumps(exc, "the exception")
    except BaseException:  # the other side raises a RemoteToolError naming the type instead
        blob = None
    return pickle.dumps(("error", blob, type_name(exc), message, text), pickle.HIGHEST_PROTOCOL)


class RemoteTraceback(Exception):
    """Carries the far side's traceback, shown as the cause of the error raised here."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"traceback in the worker process:\n{self.text}"


def rebuild_error(blob: bytes | None, name: str, message: str, text: str, *,
                  trusted: bool = False) -> BaseException:
    """The tool's own exception when it unpickles here, else a :class:`RemoteToolError`.

    The far side is untrusted: the exception is loaded with
    :func:`~shoal.executors.results.load_result` (allowed types only) unless ``trusted``; one
    it refuses comes back as a :class:`RemoteToolError` naming the type, like one that cannot
    be pickled at all.
    Exceptions that are not errors of the call (``KeyboardInterrupt``, ``CancelledError``
    raised inside the tool) are substituted too: raised here they would stop the run, or look
    like the cancellation of the awaiting task.
    """
    name, message, text = str(name), str(message), str(text)  # whatever the far side sent
    error: BaseException | None = None
    if isinstance(blob, bytes | bytearray):
        try:
            error = loads(blob) if trusted else load_result(blob, "the exception")
        except SerializationError as exc:  # say why the tool's own type did not come back
            text = f"{text.rstrip()}\n({exc})\n"
        except Exception:
            error = None
    if not isinstance(error, Exception | SystemExit):
        error = RemoteToolError(name, message, text)
    if error.__cause__ is None:
        error.__cause__ = RemoteTraceback(text)
    return error
