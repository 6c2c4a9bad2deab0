"""The errors a user can fix: each message names the key, file, column, row or step and what to do.

The command line turns these into one ``error:`` line and exit status 2; anything else is a bug. They live here,
importing no torch, so that the command line can catch them before it loads anything heavy.
"""

from __future__ import annotations

import importlib

from multimoe.config import ConfigError


class DataError(ValueError):
    """Input data that cannot be used as given; the message names the file, column or row and what to do."""


class DataPackageMissing(RuntimeError):
    """A built-in dataset's package is not installed; the message gives the install command."""


class CheckpointError(RuntimeError):
    """A checkpoint or run folder that cannot be used: truncated, not a checkpoint, or from another configuration."""


class NonFiniteError(RuntimeError):
    """Training produced a NaN or infinite loss or gradient; the message names the epoch and step."""


class DistributedError(RuntimeError):
    """A process of a distributed run failed or stopped answering; the message names the rank that saw it."""


def optional_import(module: str, extra: str, what: str):
    """An optional dependency, or a ConfigError saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"{what} needs the package {module}, which is not installed: pip install 'multimoe[{extra}]' "
            "(weights are read from local files only; nothing is downloaded)"
        ) from None


USER_ERRORS = (ConfigError, DataError, DataPackageMissing, CheckpointError, NonFiniteError, DistributedError)
