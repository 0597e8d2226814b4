"""comptlib's own errors: each is a message for the user, naming what is wrong, not a traceback."""

from __future__ import annotations


class ComptError(Exception):
    """Base of the errors comptlib raises on purpose (catch this to catch them all)."""


class ConfigError(ComptError, ValueError):
    """A setting that is wrong, naming the field (``lr``, ``budgets[1]``...).

    ``field``, ``expected`` and ``value`` are kept apart so the Python API
    (``"lr must be positive, got 0.0"``) and the command line
    (``"lr: must be positive, got 0.0"``) say the same thing in their own style.
    """

    def __init__(self, field: str, expected: str | None = None, value: object = None) -> None:
        self.field, self.expected, self.value = field, expected, value
        super().__init__(field if expected is None else f"{field} must be {expected}, got {value!r}")

    def for_cli(self) -> str:
        """The message as the CLI prints it: ``field: ...``."""
        if self.expected is None:
            return str(self)
        if self.expected.startswith("one of"):
            return f"{self.field}: {self.value!r} is not {self.expected}"
        return f"{self.field}: must be {self.expected}, got {self.value!r}"


class DivergenceError(ComptError, RuntimeError):
    """A stage's loss or gradient became non-finite (NaN or infinite): training stopped, nothing NaN was saved."""
