"""comptlib's own errors: each is a message for the user, naming what is wrong, not a traceback.

Every error comptlib raises on purpose derives from :class:`ComptError` and
from the builtin a caller would expect (``ValueError``, ``RuntimeError``...),
so ``except ValueError`` keeps working. The CLI prints them as one message:
exit code 2 for a wrong input, 1 for a run that failed.
"""

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


class DataError(ComptError, ValueError):
    """A data file or folder that cannot be trained on: it names the file."""


class MissingDataError(DataError, FileNotFoundError):
    """A data path that does not exist."""


class DivergenceError(ComptError, RuntimeError):
    """A stage's loss or gradient became non-finite (NaN or infinite): training stopped, nothing NaN was saved."""
