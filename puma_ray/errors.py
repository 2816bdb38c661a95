"""Errors a user can act on. The CLI prints them as one line, without a traceback."""


class PumaError(Exception):
    """An expected failure (bad input, bad config, missing file): message says what to do."""


class ConfigError(PumaError):
    """A configuration key, value or file is invalid; the message names the key."""
