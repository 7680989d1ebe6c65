"""The project's error types: each names what was wrong, where, and what was expected."""

from __future__ import annotations

from typing import Any


class HybridrecError(Exception):
    """Base class: an error a user can act on (a bad config, a bad file, a failed rank)."""


class ConfigError(HybridrecError):
    """A config value is refused before anything starts."""

    def __init__(self, field: str, value: Any, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"config field '{field}' = {value!r} is not allowed: expected {allowed}")


class DataError(HybridrecError):
    """An input data file is malformed; names the file and, where known, the line."""

    def __init__(self, path: str, message: str, line: int | None = None):
        self.path, self.line = str(path), line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
