"""One exception type for mistakes a user can fix; the CLI prints it as one line, exit code 2."""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A problem with the user's input (config, data, checkpoint), not a bug.

    ``path`` and ``key`` say where the problem is, so the one-line message can name them.
    """

    def __init__(self, message: str, *, path: Path | str | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = Path(path) if path is not None else None
        self.key = key

    def __str__(self) -> str:
        parts = []
        if self.path is not None:
            parts.append(str(self.path))
        if self.key is not None:
            parts.append(self.key)
        parts.append(self.message)
        return ": ".join(parts)


class ConfigError(UserError):
    """An invalid or unknown configuration key or value."""


class DataError(UserError):
    """A raw input or prepared dataset that cannot be used."""


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupted, unsafe or incompatible."""


class TrainingDivergedError(UserError):
    """The loss became NaN or infinite."""
