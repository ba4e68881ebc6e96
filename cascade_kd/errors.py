"""User-facing errors.

Everything a user can fix (a recipe key, a data row, a path) raises a `UserError`. The CLI prints
it as one line and exits with code 2, without a traceback; library users can catch it.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in the user's input: says what is wrong, where, and how to fix it."""

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f" ({self.hint})"
        # One line on any terminal, whatever the message quotes (a codec's message, a key, a path):
        # a newline or other control character is shown escaped, as repr() would show it.
        return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class RecipeError(UserError):
    """A recipe key is missing, unknown, mistyped or inconsistent."""


class DataError(UserError):
    """A data file is missing, empty or has a malformed row."""


class OutputError(UserError):
    """An output path cannot be written: not a directory, not ours to replace, read-only, full."""
