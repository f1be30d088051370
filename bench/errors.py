"""Errors that reach the user as one line and a non-zero exit code."""


class BenchError(Exception):
    """A failure caused by input the user can fix: the CLI prints the message on one line."""

    exit_code = 2


class DatasetError(BenchError):
    """A dataset root or category that is missing, incomplete or inconsistent."""


class WeightsError(BenchError):
    """Weights that cannot be found, verified or loaded into the requested architecture."""


class ConfigError(BenchError):
    """An invalid run option or combination of options."""
