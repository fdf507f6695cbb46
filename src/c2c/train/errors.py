"""The errors of ``c2c.train``: each names the problem and the fix, and ``c2c train`` prints them as one
``error:`` line (no traceback)."""

from __future__ import annotations

from c2c import cache

__all__ = ["CheckpointError", "ConfigError", "DataError", "UnsupportedModelError"]


class ConfigError(ValueError):
    """A training configuration value or file is invalid."""


class UnsupportedModelError(ConfigError, cache.UnsupportedModelError):
    """A receiver or sharer that this trainer cannot train correctly (the reason is measured, not guessed).

    A :class:`c2c.cache.UnsupportedModelError` too, so one ``except`` catches every model c2c refuses."""


class DataError(ValueError):
    """Training data that cannot be used; the message names the file or row and the fix."""


class CheckpointError(RuntimeError):
    """A run folder or checkpoint that cannot be used as asked; the message says why and what to do."""
