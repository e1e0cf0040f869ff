"""The one root of every error a user can cause, and its four families.

The CLI catches `MaasError` once (maas/cli) and prints it as one or two lines; anything
else is a bug and keeps its traceback. Each family's own errors live beside the code that
raises them and subclass one of these.
"""
from __future__ import annotations


class MaasError(Exception):
    """An error a user can cause and fix: printed as one line, never a traceback (`-v` shows it).

    `show_type` prefixes the class name (`TokenRefused: ...`) where the name tells the user
    something; `hint` is an optional second line saying what to do."""

    show_type = True
    hint = ""

    def __init__(self, message: str = "", hint: str = "") -> None:
        super().__init__(message)
        if hint:
            self.hint = hint

    def user_message(self) -> str:
        text = f"{type(self).__name__}: {self}" if self.show_type else str(self)
        return f"{text}\n  {self.hint}" if self.hint else text


class SpecError(MaasError, ValueError):
    """A model spec (file or flags) that cannot be used; lists every problem found."""

    show_type = False


class ExportError(MaasError):
    """A model that must not be packaged, or a build step that failed."""


class ServeError(MaasError):
    """Talking to TorchServe (or a store, key file or helper process it needs) failed."""


class LoadTestError(MaasError):
    """A load test cannot run as asked (a bad SLO file, say)."""


class UnknownModel(MaasError, KeyError):
    """A model name that is neither in the zoo nor in the model store."""

    show_type = False

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
