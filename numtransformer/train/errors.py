"""The two ways a run stops short of a result, told apart for the command line.

``UserError``: a mistake in what was asked (a setting out of range, an unknown
choice, a task or file that does not exist, a run directory that holds another
run).  It is raised where the input is checked, and the CLI prints it as one
line with exit status 2.  It is a ``ValueError``, so library callers catch it
as before.  Any other exception is a failure inside the library (a model, a
kernel, numpy) and the CLI lets its traceback show.

``TrainingError``: a run that cannot go on (non-finite loss, a busy output
directory); also one line on the command line.
"""

from __future__ import annotations

__all__ = ["UserError", "ConfigError", "TrainingError"]


class UserError(ValueError):
    """A mistake in what the user asked for: reported in one line, exit status 2."""


class ConfigError(UserError):
    """A run's settings are out of range, or name an unknown choice."""


class TrainingError(RuntimeError):
    """A run that cannot go on (non-finite loss, a busy output directory, ...)."""
