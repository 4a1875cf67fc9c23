"""Errors a user can cause and fix: the CLI prints them as one line, the app as a message."""

from __future__ import annotations


class MedSynthError(Exception):
    """Base class of every error that names a user-fixable problem."""


class InputError(MedSynthError, ValueError):
    """Bad input: a file, a CSV row, a config value. The message names the file and line."""

    def __init__(self, message: str, *, path: object | None = None, line: int | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f", line {line}"
            where += ": "
        super().__init__(where + message)
        self.path = path
        self.line = line


class NotFoundError(MedSynthError, LookupError):
    """A named dataset, study, model or rater does not exist."""


class ConflictError(MedSynthError):
    """The action would duplicate something that exists (a dataset name, a study name)."""


class AccessDenied(MedSynthError, PermissionError):
    """The caller lacks the rights for this action."""


class DatabaseUnavailable(MedSynthError):
    """The database cannot be opened or reached (a malformed URL, a missing driver, a server that is down)."""


class NetworkError(MedSynthError, ConnectionError):
    """Something had to be downloaded but the network (or the hub) is unreachable or switched off."""


class DependencyError(MedSynthError, ImportError):
    """An optional package this feature needs is not installed; the message says how to install it."""
