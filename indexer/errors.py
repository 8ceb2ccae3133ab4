"""Exception types shared by every layer.

Every error a user can meet derives from :class:`DegsearchError`; the CLI prints its message on
one line and exits with its ``exit_code``; the API maps it to a JSON error with ``code``.
"""

from __future__ import annotations


class DegsearchError(Exception):
    """Base class: ``message`` says what is wrong, ``fix`` what the user can do about it."""

    code = "error"
    exit_code = 1

    def __init__(self, message: str, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(f"{message} (fix: {fix})" if fix else message)


class ConfigError(DegsearchError):
    """A setting, flag or URL is invalid."""

    code = "config_error"
    exit_code = 2


class StoreError(DegsearchError):
    """The store (database or vector index) cannot be opened or used."""

    code = "store_error"
    exit_code = 3


class AudioDecodeError(DegsearchError):
    """An audio file cannot be decoded or is unusable; always names the file."""

    code = "unsupported_audio"
    exit_code = 4

    def __init__(self, path: object, reason: str, fix: str | None = None) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}", fix)


class ModelError(DegsearchError):
    """A model checkpoint or encoder cannot be loaded or does not fit the input."""

    code = "model_error"
    exit_code = 5


class NotFoundError(DegsearchError):
    """A segment, recording, prototype or enrollment id/name does not exist."""

    code = "not_found"
    exit_code = 6
