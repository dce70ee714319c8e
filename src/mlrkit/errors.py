"""Exceptions that the CLI turns into a one-line message and a non-zero exit."""


class MlrkitError(Exception):
    """A user-facing error: bad input, a missing file, an unknown name. Printed without a traceback."""


class DataError(MlrkitError):
    """Malformed or inconsistent data: names the file, line and value where it can."""


class ConfigError(MlrkitError):
    """An invalid configuration key or value."""
