"""The one exception type that reaches the user as a one-line message.

Every stage raises ``ReidcamError`` (or a subclass) for bad input: a missing file, a malformed
config, an unknown dataset layout. The CLI turns it into one line on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""


class ReidcamError(Exception):
    """Bad input or environment, explained in one line."""


class ConfigError(ReidcamError):
    """A configuration file (cams.yaml, a training recipe) is missing or invalid."""


class DataError(ReidcamError):
    """A dataset, video or image is missing or not in the expected layout."""


class WorkerError(ReidcamError):
    """A worker process of the run (a tracker process) died, hung or failed: the run cannot go on without it."""


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when it has none), for a one-line error."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
