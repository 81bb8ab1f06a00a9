"""The errors an experiment reports to its user as one message, without a traceback.

Each message says what is wrong and what to do about it, so a command line prints
``error: <message>`` and exits; a traceback would only hide it. Every other exception is a bug
and keeps its traceback.
"""

__all__ = ["USER_ERRORS", "CheckpointError", "ConfigError", "DataError"]


class ConfigError(ValueError):
    """A config field out of its range or choices; the message names the field."""


class DataError(RuntimeError):
    """A data set that is missing, cannot be prepared here, or is corrupt on disk.

    The message names the data set, the file or directory, and the command that prepares or
    rebuilds it.
    """


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, was altered after saving, or does not fit the model."""


# What `except USER_ERRORS` in a command line prints as "error: <message>".
USER_ERRORS = (ConfigError, DataError, CheckpointError)
