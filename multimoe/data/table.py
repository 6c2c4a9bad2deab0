"""A multimodal table: one row per sample, columns grouped into modalities, one label column.

Every dataset, built-in or the user's own, becomes a ``Table`` before splitting and preprocessing. A user brings a
CSV or Parquet file plus a small YAML spec, or a pandas DataFrame from Python:

    path: patients.csv          # relative to the YAML file
    label: outcome
    modalities:
      demographics: [age, sex]
      labs: [alb, bili, crea]
    categorical: [sex]          # optional
    group: user                 # optional: a column whose groups (people) a split keeps whole (data.split)

A modality is a list of columns (tabular) or a mapping with a ``kind`` (series, image, text, embedding:
``multimoe.data.kinds``), which becomes a source in ``Table.sources``; ``Table.order`` keeps the spec's order of
all modalities.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from multimoe.config import DataConfig, load_yaml
from multimoe.data.frames import TABLE_SUFFIXES, check_unique_header, read_frame
from multimoe.errors import DataError
from multimoe.registry import DATASETS

__all__ = ["Table", "load_spec", "build_table", "read_frame", "check_unique_header", "TABLE_SUFFIXES"]


@dataclass
class Table:
    name: str  # shown in results
    frame: pd.DataFrame  # one row per sample; holds the label and every modality column
    label: str  # label column
    modalities: dict[str, list[str]]  # modality name -> its columns, in order
    categorical: list[str] = field(default_factory=list)  # columns to one-hot encode (others must be numeric)
    source: str = ""  # where the data came from, for messages
    synthetic: bool = False  # generated data: always labelled as such in reports
    # modality -> a source of kind series, image, text or embedding (multimoe.data.kinds), one row per frame row
    sources: dict = field(default_factory=dict)
    # every modality (tabular and sources) in the model's order; default (and for modalities it does not list): the
    # tabular ones, then the sources
    order: list[str] = field(default_factory=list)
    group: str | None = None  # a column whose groups (e.g. people) a split by group keeps whole (data.split)

    def __post_init__(self) -> None:
        self.modalities = {str(k): [str(c) for c in v] for k, v in self.modalities.items()}
        self.sources = {str(k): v for k, v in self.sources.items()}
        self.categorical = [str(c) for c in self.categorical]
        self.order = [str(m) for m in self.order] or [*self.modalities, *self.sources]
        self.group = None if self.group is None else str(self.group)
        self.validate()

    def kind(self, modality: str) -> str:
        """A modality's kind: ``table`` for columns, else its source's (series, image, text, embedding)."""
        return self.sources[modality].kind if modality in self.sources else "table"

    def subset(self, rows) -> Table:
        """The table restricted to ``rows`` (positions), sources included; the frame's index keeps naming rows."""
        rows = np.asarray(rows, dtype=np.int64)
        return dataclasses.replace(
            self, frame=self.frame.iloc[rows], sources={m: s.subset(rows) for m, s in self.sources.items()}
        )

    @property
    def where(self) -> str:
        return f" in {self.source}" if self.source else ""

    def row_name(self, pos: int) -> str:
        """A row as the user finds it: its index label (for a file, rows count from 0 after the header)."""
        return f"row {self.frame.index[pos]}"

    def validate(self) -> None:
        cols = set(map(str, self.frame.columns))
        dup = pd.Index(map(str, self.frame.columns))
        dup = dup[dup.duplicated()].unique().tolist()
        if dup:
            raise DataError(
                f"column name '{dup[0]}' appears {int((self.frame.columns == dup[0]).sum())} times{self.where}; "
                "give every column a unique name"
            )
        if not self.modalities and not self.sources:
            raise DataError(f"no modalities given{self.where}: map at least one modality name to a list of columns")
        for mod, source in self.sources.items():
            if mod in self.modalities:
                article = "an" if source.kind[0] in "aeiou" else "a"
                raise DataError(
                    f"modality '{mod}'{self.where} is given twice: as columns and as {article} {source.kind}"
                )
            if len(source) != len(self.frame):
                raise DataError(
                    f"modality '{mod}' ({source.kind}){self.where} has {len(source)} rows, the table {len(self.frame)}"
                )
        names = [*self.modalities, *self.sources]
        if len(set(self.order)) != len(self.order):
            raise DataError(f"the modality order {self.order}{self.where} names a modality twice")
        # modalities added or removed since ``order`` was set keep their place: listed ones in order, new ones after
        self.order = [m for m in self.order if m in names] + [m for m in names if m not in self.order]
        if self.label not in cols:
            raise DataError(
                f"label column '{self.label}' is not in the table{self.where}; columns are: {_preview(self.frame)}"
            )
        if self.group is not None and self.group not in cols:
            raise DataError(
                f"group column '{self.group}' is not in the table{self.where}; columns are: {_preview(self.frame)}"
            )
        owner: dict[str, str] = {}
        for mod, columns in self.modalities.items():
            if not columns:
                raise DataError(f"modality '{mod}'{self.where} has no columns; list at least one column")
            for c in columns:
                if c not in cols:
                    raise DataError(
                        f"modality '{mod}' names column '{c}', which is not in the table{self.where}; "
                        f"columns are: {_preview(self.frame)}"
                    )
                if c == self.label:
                    raise DataError(
                        f"the label column '{c}' is listed in modality '{mod}'{self.where}; "
                        "a label cannot also be a feature: remove it from the modality"
                    )
                if owner.get(c) == mod:
                    raise DataError(f"column '{c}' is listed twice in modality '{mod}'{self.where}; list it once")
                if c in owner:
                    raise DataError(
                        f"column '{c}' is listed in two modalities, '{owner[c]}' and '{mod}'{self.where}; "
                        "each column belongs to one modality"
                    )
                owner[c] = mod
        for c in self.categorical:
            if c not in owner:
                raise DataError(f"categorical column '{c}'{self.where} is not in any modality")

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        label: str,
        modalities: dict[str, list[str] | dict],
        categorical: list[str] | None = None,
        name: str = "table",
        group: str | None = None,
        base_dir: str | Path | None = None,
    ) -> Table:
        """A table from a pandas DataFrame (the Python route for users' own data). A modality is a list of columns,
        or a spec mapping with a ``kind`` (``{"kind": "image", "column": "path"}``: ``multimoe.data.kinds``) whose
        relative paths are relative to ``base_dir`` (default: the working folder), or a source built in Python on
        arrays row-aligned with ``frame`` (``SeriesSource.from_array``, ``ImageSource(name, array=)``,
        ``EmbeddingSource``)."""
        if not isinstance(frame, pd.DataFrame):
            raise DataError(f"expected a pandas DataFrame, got {type(frame).__name__}")
        frame = frame.copy()
        frame.columns = [str(c) for c in frame.columns]
        base = None if base_dir is None else Path(base_dir)
        columns, sources = _split_modalities(modalities, frame, base, "")
        return cls(name=name, frame=frame, label=label, modalities=columns, categorical=categorical or [],
                   sources=sources, order=[str(m) for m in modalities], group=group)  # fmt: skip


def _split_modalities(modalities: dict, frame: pd.DataFrame, base_dir: Path | None, where: str) -> tuple[dict, dict]:
    """Tabular modalities (lists of columns) and sources (mappings with a kind, built on ``frame``)."""
    from multimoe.data.kinds import build_source  # loads torch: only for tables that have sources

    columns, sources = {}, {}
    for mod, entry in modalities.items():
        if isinstance(entry, (list, tuple)):
            columns[str(mod)] = list(entry)
        elif isinstance(entry, dict):
            sources[str(mod)] = build_source(str(mod), entry, frame, base_dir, where)
        else:
            sources[str(mod)] = _given_source(str(mod), entry, frame)
    return columns, sources


def _given_source(name: str, source, frame: pd.DataFrame):
    """A source built in Python (``Table.from_frame``: e.g. ``SeriesSource.from_array``, ``ImageSource(array=)``,
    ``EmbeddingSource``), row-aligned with ``frame``: renamed to its modality, its rows labelled as the frame's."""
    from multimoe.data.kinds import KINDS, ModalitySource

    if not isinstance(source, ModalitySource):
        raise DataError(
            f"modality '{name}': expected a list of columns, a mapping with 'kind' ({', '.join(KINDS)}) or a "
            f"modality source (multimoe.data.kinds), got {type(source).__name__}"
        )
    if len(source) != len(frame):
        raise DataError(f"modality '{name}' ({source.kind}) has {len(source)} rows but the table has {len(frame)}")
    source = source.subset(np.arange(len(frame)))  # a copy: the caller's object stays as it was
    source.name, source.index = name, frame.index.to_numpy()
    return source


def _preview(frame: pd.DataFrame, n: int = 20) -> str:
    cols = [str(c) for c in frame.columns]
    return ", ".join(cols[:n]) + (f", ... ({len(cols)} in all)" if len(cols) > n else "")


SPEC_KEYS = ("path", "label", "modalities", "categorical", "name", "group")


def load_spec(spec_path: str | Path) -> Table:
    """A table described by a YAML spec file (keys: path, label, modalities, optional categorical, name and group)."""
    spec, frame, data_path = read_spec(spec_path)
    columns, sources = _split_modalities(
        spec["modalities"], frame, Path(spec_path).parent, f" in {Path(spec_path).name}"
    )
    return Table(
        name=str(spec.get("name") or Path(spec_path).stem),
        frame=frame,
        label=str(spec["label"]),
        modalities=columns,
        categorical=spec.get("categorical") or [],
        source=str(data_path.name),
        sources=sources,
        order=[str(m) for m in spec["modalities"]],
        group=spec.get("group"),
    )


def read_spec(spec_path: str | Path, need_label: bool = True) -> tuple[dict, pd.DataFrame, Path]:
    """A spec file read and checked: the spec, its table and the table's path (sources are not built yet: their
    entries are in ``spec["modalities"]``). ``need_label=False`` (new rows to predict) accepts a spec without a
    label."""
    spec_path = Path(spec_path)
    if not spec_path.is_file():
        raise DataError(f"table spec {spec_path} does not exist" + (" (it is a folder)" if spec_path.is_dir() else ""))
    if spec_path.suffix.lower() in TABLE_SUFFIXES:
        raise DataError(
            f"data.spec={spec_path} is a table file; data.spec takes a YAML spec naming it, e.g. "
            f"path: {spec_path.name}, label: <column>, modalities: {{name: [columns]}}"
        )
    try:
        spec = load_yaml(spec_path.read_text())
    except yaml.YAMLError as e:
        raise DataError(f"table spec {spec_path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(spec, dict):
        raise DataError(f"table spec {spec_path} must be a mapping with keys {', '.join(SPEC_KEYS)}")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise DataError(f"table spec {spec_path}: unknown key '{unknown[0]}'; valid keys: {', '.join(SPEC_KEYS)}")
    for key in ("path", "label", "modalities") if need_label else ("path", "modalities"):
        if key not in spec:
            raise DataError(f"table spec {spec_path} lacks the key '{key}'")
    mods = spec["modalities"]
    if not isinstance(mods, dict) or not all(isinstance(v, (list, dict)) for v in mods.values()):
        raise DataError(
            f"table spec {spec_path}: 'modalities' must map each modality name to a list of columns or to a mapping "
            "with a 'kind' (series, image, text, embedding)"
        )
    if not isinstance(spec.get("categorical") or [], list):
        raise DataError(f"table spec {spec_path}: 'categorical' must be a list of columns")
    if spec.get("group") is not None and not isinstance(spec["group"], str):
        raise DataError(f"table spec {spec_path}: 'group' must name one column, got {spec['group']!r}")
    data_path = (spec_path.parent / str(spec["path"])).resolve()
    return spec, read_frame(data_path), data_path


def build_table(cfg: DataConfig) -> Table:
    """The Table a data config names: the user's spec when ``spec`` is set, else the built-in dataset ``name``."""
    if cfg.spec:
        return load_spec(cfg.spec)
    return DATASETS.get(cfg.name).load(cfg)
