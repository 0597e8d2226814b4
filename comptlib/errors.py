"""comptlib's error types: each names what the user got wrong (a field, a model, a file), so one line says it all.

Every error comptlib raises about its inputs derives from :class:`ComptlibError`
and from the builtin a caller would expect (``ValueError``, ``TypeError``), so
``except ValueError`` keeps working. The CLI turns them into one message and
exit code 2.
"""

from __future__ import annotations


class ComptlibError(Exception):
    """Something the user can fix: the message names the field, model, dimension, file or path."""


class ConfigError(ComptlibError, ValueError):
    """A configuration value that is wrong, naming the field."""


class DataError(ComptlibError, ValueError):
    """A data file or folder that cannot be trained on: it names the file."""


class MissingDataError(DataError, FileNotFoundError):
    """A data path that does not exist."""
