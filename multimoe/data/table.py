"""A multimodal table: one row per sample, columns grouped into modalities, one label column.

Every dataset, built-in or the user's own, becomes a ``Table`` before splitting and preprocessing. A user brings a
CSV or Parquet file plus a small YAML spec, or a pandas DataFrame from Python:

    path: patients.csv          # relative to the YAML file
    label: outcome
    modalities:
      demographics: [age, sex]
      labs: [alb, bili, crea]
    categorical: [sex]          # optional
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from multimoe.config import DataConfig, load_yaml
from multimoe.errors import DataError
from multimoe.registry import DATASETS


@dataclass
class Table:
    name: str  # shown in results
    frame: pd.DataFrame  # one row per sample; holds the label and every modality column
    label: str  # label column
    modalities: dict[str, list[str]]  # modality name -> its columns, in order
    categorical: list[str] = field(default_factory=list)  # columns to one-hot encode (others must be numeric)
    source: str = ""  # where the data came from, for messages
    synthetic: bool = False  # generated data: always labelled as such in reports
    # modality -> a source of kind series, image, text or embedding (multimoe.data.kinds), one row per frame row;
    # these modalities come after the tabular ones
    sources: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.modalities = {str(k): [str(c) for c in v] for k, v in self.modalities.items()}
        self.sources = {str(k): v for k, v in self.sources.items()}
        self.categorical = [str(c) for c in self.categorical]
        self.validate()

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
        if self.label not in cols:
            raise DataError(
                f"label column '{self.label}' is not in the table{self.where}; columns are: {_preview(self.frame)}"
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
        modalities: dict[str, list[str]],
        categorical: list[str] | None = None,
        name: str = "table",
    ) -> Table:
        """A table from a pandas DataFrame (the Python route for users' own data)."""
        if not isinstance(frame, pd.DataFrame):
            raise DataError(f"expected a pandas DataFrame, got {type(frame).__name__}")
        frame = frame.copy()
        frame.columns = [str(c) for c in frame.columns]
        return cls(name=name, frame=frame, label=label, modalities=modalities, categorical=categorical or [])


def _preview(frame: pd.DataFrame, n: int = 20) -> str:
    cols = [str(c) for c in frame.columns]
    return ", ".join(cols[:n]) + (f", ... ({len(cols)} in all)" if len(cols) > n else "")


def read_frame(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet file with a clear error when it is absent or unreadable."""
    if not path.is_file():
        raise DataError(f"table file {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    if path.stat().st_size == 0:
        raise DataError(f"table file {path} is empty (0 bytes); expected a header line and data rows")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif suffix in (".csv", ".txt", ".tsv"):
            sep = "\t" if suffix == ".tsv" else ","
            frame = pd.read_csv(path, sep=sep)
            _check_unique_header(path, pd.read_csv(path, sep=sep, nrows=1, header=None, dtype=str).iloc[0])
        else:
            raise DataError(f"table file {path}: unknown format '{suffix}'; use .csv, .tsv or .parquet")
    except DataError:
        raise
    except ImportError as e:
        raise DataError(f"cannot read {path}: {e}; install pyarrow for Parquet files (pip install pyarrow)") from None
    except Exception as e:  # pandas and pyarrow raise many parser error types
        hint = "a Parquet file" if suffix in (".parquet", ".pq") else "UTF-8 text, one header line, comma-separated"
        reason = " ".join(str(e).split())
        raise DataError(
            f"cannot parse table file {path}: {type(e).__name__}: {reason} (expected {hint}"
            f"{'; .tsv for tab-separated' if suffix == '.csv' else ''})"
        ) from None
    if frame.shape[0] == 0:
        raise DataError(f"table file {path} has a header but no data rows")
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _check_unique_header(path: Path, header: pd.Series) -> None:
    """pandas renames a repeated CSV column name ('a', 'a.1') silently; a repeated name is almost always a mistake."""
    names = header.dropna().astype(str)
    dup = names[names.duplicated()]
    if len(dup):
        raise DataError(
            f"table file {path}: column name '{dup.iloc[0]}' appears {int((names == dup.iloc[0]).sum())} times in the "
            "header; give every column a unique name"
        )


TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq")
SPEC_KEYS = ("path", "label", "modalities", "categorical", "name")


def load_spec(spec_path: str | Path) -> Table:
    """A table described by a YAML spec file (keys: path, label, modalities, optional categorical and name)."""
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
    for key in ("path", "label", "modalities"):
        if key not in spec:
            raise DataError(f"table spec {spec_path} lacks the key '{key}'")
    mods = spec["modalities"]
    if not isinstance(mods, dict) or not all(isinstance(v, list) for v in mods.values()):
        raise DataError(f"table spec {spec_path}: 'modalities' must map each modality name to a list of columns")
    categorical = spec.get("categorical") or []
    if not isinstance(categorical, list):
        raise DataError(f"table spec {spec_path}: 'categorical' must be a list of columns")
    data_path = (spec_path.parent / str(spec["path"])).resolve()
    frame = read_frame(data_path)
    table = Table(
        name=str(spec.get("name") or spec_path.stem),
        frame=frame,
        label=str(spec["label"]),
        modalities=mods,
        categorical=categorical,
        source=str(data_path.name),
    )
    return table


def build_table(cfg: DataConfig) -> Table:
    """The Table a data config names: the user's spec when ``spec`` is set, else the built-in dataset ``name``."""
    if cfg.spec:
        return load_spec(cfg.spec)
    return DATASETS.get(cfg.name).load(cfg)
