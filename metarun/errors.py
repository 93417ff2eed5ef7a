"""Errors that end a run with a one-line message instead of a traceback."""


class RunError(RuntimeError):
    """A run cannot go on (bad data, a non-finite loss, a missing device); the message says what to do."""
