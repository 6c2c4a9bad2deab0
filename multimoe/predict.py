"""Putting a trained model to work: class probabilities for new rows, from a run folder or from memory.

``load_predictor(RUN_DIR)`` rebuilds a run's best model (weights, or a scikit-learn baseline's saved arrays) and the
preprocessing fit at training time (``preprocess.json``: scaling, categories, classes). ``Predictor.predict_proba``
and ``predict`` take a pandas DataFrame with the training table's columns; ``predict_file`` streams a CSV, TSV or
Parquet file of any size in chunks (bounded memory) into an output table, which appears whole or not at all.

New rows are read as training rows were: a modality whose cells are all empty in a row is missing for that row; a
modality whose columns are absent from the data is missing in every row (said once, in the notes); a category
training never saw encodes as in evaluation (all zeros) and is counted; a row with no modality, or text in a
numeric column, is an error naming the row (rows count from 0 after the header).

Modalities of other kinds (``multimoe.data.kinds``) are rebuilt from their spec entry (kept in preprocess.json) with
the training sizes, channels, steps and statistics: from a table file, those whose entry reads a column of it (image
paths, relative to the file's folder and the entry's ``root``; text; an embedding list column); from a YAML spec
of the new rows (``predict_file("new.yaml")``, the training spec's format, label optional), every kind, each from the
new spec's entry of the same name (its files: the new rows' series table or array, embedding file, images). A
modality the data cannot give (an entry reading another file when the data is a table file; a modality a built-in
dataset's loader made in Python) is missing in every row, and a note says why.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from multimoe.baselines import SklearnBaseline
from multimoe.batch import combination_name, combinations, num_combinations
from multimoe.config import ConfigError
from multimoe.data.dataset import DataSchema, MultimodalData
from multimoe.data.frames import TABLE_SUFFIXES, check_unique_header
from multimoe.data.kinds import AbsentSource, ModalitySource, rebuild_source
from multimoe.data.preprocess import PREPROCESS_FORMAT_SOURCES, Encoded, Preprocessor, label_text
from multimoe.data.table import read_spec
from multimoe.device import check_device
from multimoe.errors import CheckpointError, DataError
from multimoe.evaluate import Predictions, format_results, metrics_from_predictions, predict
from multimoe.files import atomic_write
from multimoe.moe import MoE
from multimoe.process import release_freed_memory
from multimoe.runs.folder import RunFolder
from multimoe.runs.reopen import load_model

CHUNK_CELLS = 6_500_000  # cells read, encoded and predicted at a time by predict_file: bounds its memory (mfeat's 649
# columns: 10,000 rows a chunk, a peak of about 0.7 GB resident, torch included)
EXPLAIN_TOP = 3  # experts listed per modality by explain
PARQUET_SUFFIXES = (".parquet", ".pq")
SPEC_SUFFIXES = (".yaml", ".yml")


@dataclass
class Predictor:
    """A trained model with the preprocessing fit at training time: ``predict_proba(df)``, ``predict(df)`` and
    ``classes_`` (the class names: integers when the label was, else text), scikit-learn style."""

    model: torch.nn.Module | SklearnBaseline
    schema: DataSchema
    preprocessor: Preprocessor
    label: str  # the training label column (used for metrics when new data has it)
    classes_: np.ndarray
    batch_size: int = 512
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    name: str = ""  # the run folder, for messages
    preprocessing: dict = field(default_factory=dict, repr=False)  # the JSON form ``preprocessor`` was built from

    @classmethod
    def create(
        cls,
        model: torch.nn.Module | SklearnBaseline,
        schema: DataSchema,
        preprocessing: dict,
        batch_size: int = 512,
        device: torch.device | str = "cpu",
        name: str = "",
    ) -> Predictor:
        """A predictor from a model, its data schema and the preprocessing's JSON form (``Splits.preprocessing``);
        checks that they belong together."""
        if int(preprocessing.get("format", 0)) > PREPROCESS_FORMAT_SOURCES:
            raise CheckpointError(
                f"the preprocessing of {name or 'this model'} has format {preprocessing['format']}, newer than this "
                f"multimoe reads ({PREPROCESS_FORMAT_SOURCES}); upgrade multimoe"
            )
        pre = Preprocessor.from_dict(preprocessing)
        order = list(preprocessing.get("order", list(pre.coders)))  # every modality (the tables' only before kinds)
        sources = preprocessing.get("sources", {})
        widths = [len(pre.feature_names()[m]) if m in pre.coders else math.prod(sources[m]["shape"]["shape"])
                  for m in order if m in pre.coders or m in sources]  # fmt: skip
        if tuple(order) != schema.modalities or tuple(widths) != schema.features:
            raise CheckpointError(
                f"the preprocessing of {name or 'this model'} does not match its model: modalities "
                f"{order} with {widths} features vs {list(schema.modalities)} with {list(schema.features)}"
            )
        if tuple(preprocessing["classes"]) != schema.classes:
            raise CheckpointError(f"the classes of {name or 'this model'} differ between its model and preprocessing")
        classes = list(schema.classes)
        typed = np.array([int(c) for c in classes]) if preprocessing["label_kind"] == "integer" else np.array(classes)
        label = preprocessing["label"]
        return cls(model, schema, pre, label, typed, batch_size, torch.device(device), name, preprocessing)

    @property
    def modalities(self) -> dict[str, list[str]]:
        """Modality -> its columns, as in training."""
        return self.preprocessor.modalities

    @property
    def source_states(self) -> dict[str, dict]:
        """Modality -> the training state of a modality of another kind (kind, spec entry, shape, statistics)."""
        return self.preprocessing.get("sources", {})

    @property
    def routes(self) -> bool:
        """Whether the model has MoE layers (what ``explain`` shows)."""
        return isinstance(self.model, torch.nn.Module) and any(isinstance(m, MoE) for m in self.model.modules())

    def encode(self, frame: pd.DataFrame, where: str = "", base_dir: str | Path | None = None,
               sources: dict[str, ModalitySource] | None = None) -> tuple[MultimodalData, Encoded]:  # fmt: skip
        """The rows of ``frame`` preprocessed as in training, as the model's input (labels when ``frame`` has the
        label column and a row's class is known, else -1). Modalities of other kinds: ``sources`` when given (built
        for these rows), else those whose spec entry reads a column of ``frame`` (paths relative to ``base_dir``,
        default the working folder); the others are missing in every row."""
        if not isinstance(frame, pd.DataFrame):
            raise DataError(f"expected a pandas DataFrame with the training columns, got {type(frame).__name__}")
        if not all(isinstance(c, str) for c in frame.columns):
            frame = frame.rename(columns=str)
        n = len(frame)
        built = dict(self.column_sources(frame, where, base_dir) if sources is None else sources)
        for m, state in self.source_states.items():  # not given by these rows: absent in every row
            built.setdefault(m, AbsentSource(m, state, n, where))
        present = {m: s.presence() for m, s in built.items()}
        elsewhere = np.zeros(n, dtype=bool)
        for p in present.values():
            elsewhere |= p
        enc = self.preprocessor.transform_frame(frame, where, elsewhere if self.source_states else None)
        table = {m: j for j, m in enumerate(self.preprocessor.coders)}
        present_NM = np.stack(
            [enc.present_NM[:, table[m]] if m in table else present.get(m, np.zeros(n, dtype=bool))
             for m in self.schema.modalities], axis=1)  # fmt: skip
        data = MultimodalData(
            schema=self.schema,
            values={m: torch.from_numpy(enc.values[m]) for m in table},
            cell_missing={m: torch.from_numpy(enc.missing[m]) for m in table},
            present_NM=torch.from_numpy(present_NM),
            labels_N=torch.from_numpy(self._labels(frame)),
            rows_N=np.arange(n),
            sources=built,
        )
        return data, enc

    def column_sources(self, frame: pd.DataFrame, where: str = "", base_dir: str | Path | None = None) -> dict:
        """The modalities of other kinds whose spec entry reads a column of ``frame`` that has a value: image paths
        (relative to ``base_dir``), text, embedding lists; rebuilt with the training sizes and statistics."""
        out = {}
        for m, state in self.source_states.items():
            column = (state.get("entry") or {}).get("column")
            if column is not None and str(column) in frame.columns and frame[str(column)].notna().any():
                base = None if base_dir is None else Path(base_dir)
                out[m] = rebuild_source(m, state, state["entry"], frame, base, where)
        return out

    def _labels(self, frame: pd.DataFrame) -> np.ndarray:
        labels_N = np.full(len(frame), -1, dtype=np.int64)
        if self.label in frame.columns:
            given = frame[self.label].notna().to_numpy()
            if given.any():
                index = {c: i for i, c in enumerate(self.schema.classes)}
                text = label_text(frame[self.label][given])
                labels_N[given] = [index.get(t, -1) for t in text]
        return labels_N

    def run(self, data: MultimodalData, explain: bool = False) -> tuple[np.ndarray, dict[str, list[str]]]:
        """Class probabilities (N x C) of encoded rows and, with ``explain``, the explanation columns."""
        if len(data) == 0:
            return np.zeros((0, self.schema.num_classes), dtype=np.float32), {}
        if explain and not self.routes:
            what = type(self.model).__name__
            raise ConfigError(f"explain lists the experts a MoE model routes to; the model of {self.name} ({what}) has "
                              "no MoE layer")  # fmt: skip
        tally = _ExpertTally(self.schema) if explain else None
        safe = dataclasses.replace(data, labels_N=data.labels_N.clamp(min=0))  # unknown: any class (loss unused)
        probs_NC = predict(self.model, safe, self.batch_size, self.device, on_output=tally).probs_NC
        return probs_NC, tally.columns(data.present_NM.numpy()) if tally else {}

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """N x C class probabilities of the rows of ``frame``, columns in the order of ``classes_``."""
        return self.run(self.encode(frame)[0])[0]

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """The most probable class of every row of ``frame`` (values of ``classes_``)."""
        return self.classes_[self.predict_proba(frame).argmax(axis=1)]

    def predict_table(self, frame: pd.DataFrame, id_column: str | None = None, explain: bool = False, where: str = "",
                      base_dir: str | Path | None = None, sources: dict[str, ModalitySource] | None = None
                      ) -> tuple[pd.DataFrame, MultimodalData, Encoded, np.ndarray]:  # fmt: skip
        """The output table of ``frame``'s rows (in order): the id column passed through, ``prediction`` (the class
        name), ``proba_<class>`` per class, ``observed`` (the observed modalities, e.g. ``a+b``) and with
        ``explain`` ``experts_<modality>`` (``expert:weight`` pairs, heaviest first, for observed modalities).
        Also the encoded rows and their probabilities (``base_dir``, ``sources``: as ``encode``)."""
        data, enc = self.encode(frame, where, base_dir, sources)
        probs_NC, explained = self.run(data, explain)
        modalities = list(self.schema.modalities)
        names = np.array([combination_name(c, modalities) for c in combinations(len(modalities))])
        columns: dict[str, object] = {}
        if id_column is not None:
            columns[id_column] = frame[id_column].to_numpy()
        columns["prediction"] = self.classes_[probs_NC.argmax(axis=1)] if len(probs_NC) else self.classes_[:0]
        for j, c in enumerate(self.schema.classes):
            columns[f"proba_{c}"] = probs_NC[:, j]
        columns["observed"] = names[data.combo_N.numpy()]
        columns.update(explained)
        return pd.DataFrame(columns), data, enc, probs_NC

    def predict_file(
        self,
        data: str | Path,
        out: str | Path | None = None,
        id_column: str | None = None,
        explain: bool = False,
        chunk_rows: int | None = None,
    ) -> dict:
        """Predict every row of a CSV, TSV or Parquet file in chunks of ``chunk_rows`` (default: ``CHUNK_CELLS``
        cells, from 1,000 to 100,000 rows) and write the output table
        (``predict_table``) to ``out`` (CSV, TSV by extension, or Parquet; written whole or not at all), or only
        summarise when ``out`` is None. Returns the summary: rows, rows per observed combination, modalities absent
        from the file, unseen categories per column, notes, and metrics when the file has the label column.

        ``data`` may also be a YAML spec of the new rows (the training spec's format, the label optional): its table
        is read whole and every modality of another kind is built from the spec's entry of the same name."""
        path = Path(data)
        if path.suffix.lower() in SPEC_SUFFIXES:
            spec, whole, table_path = read_spec(path, need_label=False)
            header = list(whole.columns)
        else:
            source, table_path = _TableFile(path), path
            header = source.columns()
        where = f" in {table_path}"
        if id_column is not None and id_column not in header:
            raise DataError(f"id column '{id_column}' is not in {table_path}; columns are: {_preview(header)}")
        if out is not None and Path(out).resolve() in (path.resolve(), table_path.resolve()):
            raise ConfigError(f"--out {out} is the input file; write the predictions elsewhere")
        notes, absent = self._column_notes(header, table_path)
        wanted = [c for cols in self.modalities.values() for c in cols if c in header]
        labelled = self.label in header
        if path.suffix.lower() in SPEC_SUFFIXES:
            built, more_notes, more_absent = self._spec_sources(spec, whole, path)
            if not wanted and not built:
                raise DataError(f"{path} gives none of the training modalities ({', '.join(self.schema.modalities)})")

            def frames() -> Iterator[tuple[pd.DataFrame, dict | None, Path | None]]:
                yield whole, built, None

        else:
            more_notes, more_absent, source_columns = self._source_notes(header, path)
            wanted += [c for c in source_columns if c not in wanted]
            if not wanted:
                training = _flat(self.modalities) + [str(s["entry"]["column"]) for s in self.source_states.values()
                                                     if "column" in (s.get("entry") or {})]  # fmt: skip
                raise DataError(f"{path} has none of the training columns ({_preview(training)})")
            wanted += [c for c in (self.label if labelled else None, id_column) if c is not None and c not in wanted]
            text_columns = [id_column] if id_column else []
            text_columns += [c.column for cs in self.preprocessor.coders.values() for c in cs if c.kind != "numeric"]
            text_columns += source_columns  # paths, text, embedding lists
            chunk_rows = chunk_rows or min(100_000, max(1_000, CHUNK_CELLS // len(wanted)))

            def frames() -> Iterator[tuple[pd.DataFrame, dict | None, Path | None]]:
                for frame in source.chunks(wanted, [c for c in text_columns if c in header], chunk_rows):
                    yield frame, None, path.parent

        notes += more_notes
        absent += [m for m in more_absent if m not in absent]
        S = num_combinations(self.schema.num_modalities)
        tally = {"rows": 0, "combos": np.zeros(S, dtype=np.int64), "unknown": {}, "probs": [], "labels": [], "cs": []}

        def stream(write_chunk: Callable[[pd.DataFrame], None] | None) -> None:
            for frame, built, base_dir in frames():
                table, encoded, enc, probs_NC = self.predict_table(frame, id_column, explain, where, base_dir, built)
                self._tally(tally, encoded, enc, probs_NC, labelled)
                if write_chunk is not None:
                    write_chunk(table)
                del frame, table, encoded, enc, probs_NC
                release_freed_memory()  # else the heap of every chunk stays resident: memory bounded by one chunk

        if out is None:
            stream(None)
        else:
            atomic_write(Path(out), lambda tmp: _write_table(Path(out), tmp, stream))
        names = [combination_name(c, list(self.schema.modalities)) for c in combinations(self.schema.num_modalities)]
        summary = {
            "predictions": None if out is None else str(out),
            "rows": tally["rows"],
            "by_combination": {names[s]: int(n) for s, n in enumerate(tally["combos"]) if n},
            "absent_modalities": absent,
            "unknown_categories": {c: n for c, n in tally["unknown"].items() if n},
            "notes": notes,
        }
        if labelled:
            summary["metrics"] = self._metrics(tally)
        return summary

    def _column_notes(self, header: list[str], path: Path) -> tuple[list[str], list[str]]:
        """Notes on training columns absent from the file, and the modalities absent altogether."""
        notes, absent = [], []
        for mod, columns in self.modalities.items():
            lacking = [c for c in columns if c not in header]
            if len(lacking) == len(columns):
                absent.append(mod)
                notes.append(f"modality '{mod}' ({_preview(columns, 5)}) is absent from {path}: missing in every row")
            elif lacking:
                what = f"column {lacking[0]}" if len(lacking) == 1 else f"columns {_preview(lacking, 5)}"
                notes.append(f"{what} of modality '{mod}' absent from {path}: empty cells in every row")
        return notes, absent

    def _source_notes(self, header: list[str], path: Path) -> tuple[list[str], list[str], list[str]]:
        """For a table file: notes on the modalities of other kinds it cannot give, those modalities, and the
        columns it gives the others from."""
        notes, absent, columns = [], [], []
        for m, state in self.source_states.items():
            entry, kind = state.get("entry"), state["kind"]
            if entry is None:
                notes.append(f"modality '{m}' ({kind}) was made by its dataset's loader, not from a spec entry: {path} "
                             "cannot give it; missing in every row")  # fmt: skip
            elif "column" not in entry:
                file = entry.get("file") or entry.get("table")
                notes.append(
                    f"modality '{m}' ({kind}) reads the file {file}, not a column of {path}: missing in every row; to "
                    f"give it, predict from a YAML spec of the new rows whose entry '{m}' names their file"
                )
            elif str(entry["column"]) not in header:
                notes.append(f"modality '{m}' ({kind}, column '{entry['column']}') is absent from {path}: missing in "
                             "every row")  # fmt: skip
            else:
                columns.append(str(entry["column"]))
                continue
            absent.append(m)
        return notes, absent, columns

    def _spec_sources(self, spec: dict, frame: pd.DataFrame, path: Path) -> tuple[dict, list[str], list[str]]:
        """For a YAML spec of new rows: the modalities of other kinds built from its entries (paths relative to the
        spec's folder), notes on those it lacks, and those."""
        built, notes, absent = {}, [], []
        for m, state in self.source_states.items():
            entry = spec["modalities"].get(m)
            if entry is None:
                notes.append(f"modality '{m}' ({state['kind']}) is not in {path}: missing in every row")
                absent.append(m)
                continue
            built[m] = rebuild_source(m, state, entry, frame, path.parent, f" in {path.name}")
        return built, notes, absent

    def _tally(self, tally: dict, data: MultimodalData, enc: Encoded, probs_NC: np.ndarray, labelled: bool) -> None:
        tally["rows"] += len(data)
        tally["combos"] += np.bincount(data.combo_N.numpy(), minlength=len(tally["combos"]))
        for column, rows in enc.unknown.items():
            tally["unknown"][column] = tally["unknown"].get(column, 0) + int(rows.sum())
        if labelled:
            known = data.labels_N.numpy() >= 0
            tally["probs"].append(probs_NC[known])
            tally["labels"].append(data.labels_N.numpy()[known])
            tally["cs"].append(data.combo_N.numpy()[known])

    def _metrics(self, tally: dict) -> dict:
        labels = np.concatenate(tally["labels"]) if tally["labels"] else np.zeros(0, dtype=np.int64)
        probs = np.concatenate(tally["probs"]) if tally["probs"] else np.zeros((0, self.schema.num_classes))
        combos = np.concatenate(tally["cs"]) if tally["cs"] else np.zeros(0, dtype=np.int64)
        picked = probs[np.arange(len(labels)), labels].astype(np.float64)
        loss = float(-np.log(np.clip(picked, 1e-12, None)).mean()) if len(labels) else math.nan
        result = metrics_from_predictions(Predictions(probs, labels, combos, loss, []), self.schema.modalities)
        result.pop("routing")
        result["unlabelled_rows"] = tally["rows"] - len(labels)  # empty label, or a class training never saw
        return result


def load_predictor(run_dir: str | Path, device: str = "cpu", batch_size: int | None = None) -> Predictor:
    """A run's best model with the preprocessing fit at training time, ready for new rows (see ``Predictor``).
    Every preset works, the scikit-learn baselines included; runs written before runs kept their preprocessing
    are refused with a message (``multimoe eval`` still evaluates them)."""
    folder = RunFolder.open(run_dir)
    preprocessing = folder.read_preprocess()
    if preprocessing is None:
        raise ConfigError(
            f"{folder.path} has no {RunFolder.PREPROCESS}: it was written before runs kept their preprocessing (or "
            "was trained on splits given in Python), so new rows cannot be encoded as its training rows were; "
            "retrain it to predict (`multimoe eval` still evaluates it on its own data)"
        )
    cfg, model = load_model(folder)
    dev = check_device(device)
    if isinstance(model, torch.nn.Module):
        model.to(dev)
    size = batch_size or cfg.train.eval_batch_size
    return Predictor.create(model, model.schema, preprocessing, size, dev, str(folder.path))


class _ExpertTally:
    """Per row and modality: the experts with the largest mean gate weight over the modality's tokens."""

    def __init__(self, schema: DataSchema) -> None:
        self.schema = schema
        self.layers: list[list[tuple[np.ndarray, np.ndarray]]] = []  # per MoE layer: (ids, weights) per batch

    def __call__(self, out, batch) -> None:
        B, M = len(batch), self.schema.num_modalities
        for i, moe_out in enumerate(out.moe):
            w_TE = moe_out.routing.dense_weights().float()
            w_BME = w_TE.view(B, M, -1, w_TE.shape[1]).mean(dim=2)
            top = w_BME.topk(min(EXPLAIN_TOP, w_TE.shape[1]), dim=2)
            if len(self.layers) <= i:
                self.layers.append([])
            self.layers[i].append((top.indices.cpu().numpy(), top.values.cpu().numpy()))

    def columns(self, present_NM: np.ndarray) -> dict[str, list[str]]:
        out = {}
        for i, parts in enumerate(self.layers):
            ids_NMK = np.concatenate([p[0] for p in parts])
            weights_NMK = np.concatenate([p[1] for p in parts])
            for m, mod in enumerate(self.schema.modalities):
                name = f"experts_{mod}" + (f"_layer{i + 1}" if len(self.layers) > 1 else "")
                out[name] = [
                    ";".join(f"{e}:{w:.3f}" for e, w in zip(ids_NMK[n, m], weights_NMK[n, m]) if w > 0)
                    if present_NM[n, m]
                    else ""
                    for n in range(len(present_NM))
                ]
        return out


class _TableFile:
    """A CSV, TSV or Parquet file read in chunks of chosen columns; rows keep their number in the file (from 0
    after the header)."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise DataError(f"data file {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
        if path.stat().st_size == 0:
            raise DataError(f"data file {path} is empty (0 bytes); expected a header line and data rows")
        self.path, self.suffix = path, path.suffix.lower()
        if self.suffix not in TABLE_SUFFIXES:
            raise DataError(f"data file {path}: unknown format '{self.suffix}'; use .csv, .tsv or .parquet")
        self.sep = "\t" if self.suffix == ".tsv" else ","

    def columns(self) -> list[str]:
        with self._errors():
            if self.suffix in PARQUET_SUFFIXES:
                return [str(c) for c in _parquet().ParquetFile(self.path).schema_arrow.names]
            header = pd.read_csv(self.path, sep=self.sep, nrows=0).columns
            check_unique_header(
                self.path, pd.read_csv(self.path, sep=self.sep, nrows=1, header=None, dtype=str).iloc[0]
            )
            return [str(c) for c in header]

    def chunks(self, columns: list[str], text: list[str], rows: int) -> Iterator[pd.DataFrame]:
        """Frames of at most ``rows`` rows holding ``columns``; ``text`` columns read as text (ids keep their
        leading zeros; categories their spelling)."""
        start = 0
        with self._errors():
            if self.suffix in PARQUET_SUFFIXES:
                batches = _parquet().ParquetFile(self.path).iter_batches(batch_size=rows, columns=columns)
                frames = (b.to_pandas() for b in batches)
            else:
                frames = pd.read_csv(self.path, sep=self.sep, usecols=columns, dtype=dict.fromkeys(text, str),
                                     chunksize=rows)  # fmt: skip
            for frame in frames:
                frame.index = pd.RangeIndex(start, start + len(frame))
                start += len(frame)
                yield frame
        if start == 0:
            raise DataError(f"data file {self.path} has a header but no data rows")

    def _errors(self):
        return _ReadErrors(self.path, self.suffix)


class _ReadErrors:
    """Parser errors of pandas and pyarrow as one DataError naming the file."""

    def __init__(self, path: Path, suffix: str) -> None:
        self.path, self.suffix = path, suffix

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb) -> bool:
        if error is None or isinstance(error, (DataError, ConfigError, GeneratorExit)):
            return False
        if isinstance(error, ImportError):
            raise DataError(
                f"cannot read {self.path}: {error}; install pyarrow for Parquet files (pip install pyarrow)"
            ) from None
        if not isinstance(error, Exception):
            return False
        hint = "a Parquet file" if self.suffix in PARQUET_SUFFIXES else "UTF-8 text, one header line"
        reason = " ".join(str(error).split())
        raise DataError(
            f"cannot parse data file {self.path}: {type(error).__name__}: {reason} (expected {hint})"
        ) from None


def _parquet():
    import pyarrow.parquet

    return pyarrow.parquet


def _write_table(out: Path, tmp: str, stream: Callable[[Callable[[pd.DataFrame], None] | None], None]) -> None:
    """Write the chunks ``stream`` produces to ``tmp``: Parquet for a .parquet/.pq ``out``, else CSV (TSV for
    .tsv)."""
    if out.suffix.lower() in PARQUET_SUFFIXES:
        import pyarrow as pa

        state: dict = {}

        def write_parquet(table: pd.DataFrame) -> None:
            if "writer" not in state:
                arrow = pa.Table.from_pandas(table, preserve_index=False)
                state["schema"] = arrow.schema
                state["writer"] = _parquet().ParquetWriter(tmp, arrow.schema)
            else:
                arrow = pa.Table.from_pandas(table, schema=state["schema"], preserve_index=False)
            state["writer"].write_table(arrow)

        try:
            stream(write_parquet)
        finally:
            if "writer" in state:
                state["writer"].close()
        return
    sep = "\t" if out.suffix.lower() == ".tsv" else ","
    with open(tmp, "w", newline="") as f:
        first = [True]

        def write_csv(table: pd.DataFrame) -> None:
            table.to_csv(f, sep=sep, header=first[0], index=False)
            first[0] = False

        stream(write_csv)


def format_summary(summary: dict) -> str:
    """Readable lines of ``predict_file``'s summary (rows, combinations, unseen categories, metrics)."""
    lines = [f"{summary['rows']} rows predicted" + (f" -> {summary['predictions']}" if summary["predictions"] else "")]
    width = max((len(k) for k in summary["by_combination"]), default=0)
    lines += [f"  {name:<{width}}  {n:>8} rows" for name, n in summary["by_combination"].items()]
    for column, n in summary["unknown_categories"].items():
        lines.append(f"column '{column}': {n} cells hold a category unseen in training (encoded as all zeros)")
    if "metrics" in summary:
        m = summary["metrics"]
        lines.append(format_results(m, f"metrics on the {m['overall']['n']} labelled rows"))
        if m["unlabelled_rows"]:
            lines.append(f"{m['unlabelled_rows']} rows without a known label are left out of the metrics")
    return "\n".join(lines)


def final_line(summary: dict) -> str:
    """The one JSON object ``multimoe predict`` prints last."""
    keys = ("predictions", "rows", "by_combination", "absent_modalities", "unknown_categories")
    line = {k: summary[k] for k in keys}
    if "metrics" in summary:
        o = summary["metrics"]["overall"]
        line["metrics"] = {k: o[k] for k in ("accuracy", "f1", "auc", "n")}
    return json.dumps(line)


def _preview(columns: list[str], n: int = 20) -> str:
    return ", ".join(columns[:n]) + (f", ... ({len(columns)} in all)" if len(columns) > n else "")


def _flat(modalities: dict[str, list[str]]) -> list[str]:
    return [c for cols in modalities.values() for c in cols]
