"""Every bad input a user can give `multimoe train` ends in exit status 2 and one `error: ...` line that names the
file, row or column and says what to do, never a traceback from inside pandas, scikit-learn or torch.

Run this file as a script (`python tests/test_bad_input.py`) to print each case with the first line the user sees.
"""

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from multimoe.cli import main
from multimoe.config import DataConfig
from multimoe.data.prepare import prepare
from multimoe.data.table import Table
from multimoe.errors import DataError

BASE = ["train.progress=false", "model.dim=8", "model.tokens=2", "model.heads=2", "model.moe.hidden=8",
        "model.moe.router.top_k=2", "train.epochs=1"]  # fmt: skip
SPEC = "path: t.csv\nlabel: y\nmodalities:\n  a: [a1, a2]\n  b: [b1]\n"


def good_frame(n: int = 120) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)
    return pd.DataFrame({"a1": y + rng.normal(size=n), "a2": rng.normal(size=n), "b1": rng.normal(size=n), "y": y})


def table(tmp: Path, data=None, spec: str = SPEC, name: str = "t.csv") -> list[str]:
    """Write ``data`` (a DataFrame, text or bytes) as ``name`` next to a YAML spec; the override naming the spec."""
    if isinstance(data, pd.DataFrame):
        data.to_csv(tmp / name, index=False)
    elif data is not None:
        (tmp / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    (tmp / "spec.yaml").write_text(spec)
    return [f"data.spec={tmp / 'spec.yaml'}"]


def edit(**changes):
    """A good frame with cells changed: ``edit(a1={7: np.inf})``; a column given as a scalar is set in every row."""
    df = good_frame()
    for col, cells in changes.items():
        if isinstance(cells, dict):
            df[col] = df[col].astype(object) if any(isinstance(v, str) for v in cells.values()) else df[col]
            for row, value in cells.items():
                df.loc[row, col] = value
        else:
            df[col] = cells
    return df


def no_modality_row():
    df = good_frame()
    df.loc[:1, "y"] = np.nan  # two unlabelled rows are dropped first: the message still names the file's row
    df.loc[3, ["a1", "a2", "b1"]] = np.nan
    return df


def few_labels():
    df = good_frame()
    df["y"] = [0, 1, 0, 1] + [np.nan] * (len(df) - 4)
    return df


# id -> (arguments after `multimoe train configs/flexmoe.yaml`, built in a temporary folder; words the message has)
CASES = {
    "unknown config key": (lambda t: ["model.moe.topk=3"], ["model.moe.topk", "model.moe.router.top_k"]),
    "key in the wrong section": (lambda t: ["model.moe.top_k=2"], ["did you mean model.moe.router.top_k"]),
    "unknown choice": (lambda t: ["model.fill=banks"], ["model.fill", "bank, token, zero"]),
    "wrong type": (lambda t: ["train.epochs=ten"], ["train.epochs", "expected int"]),
    "value out of range": (lambda t: ["data.missing=mcar:1.5"], ["data.missing", "mcar:R"]),
    "negative seed": (lambda t: ["seed=-1"], ["seed=-1", "must be in"]),
    "run name with a slash": (lambda t: ["name=a/b"], ["name=", "out_dir"]),
    "top_k above the experts": (
        lambda t: ["model.moe.router.top_k=9", "model.moe.num_experts=4", "model.moe.gate_loss.supervision=balance"],
        ["model.moe.router.top_k=9", "num_experts=4"],
    ),
    "override without =": (lambda t: ["epochs"], ["'epochs' is not key=value"]),
    "unknown dataset": (lambda t: ["data.name=mnist"], ["data.name='mnist'", "synthetic"]),
    "config file missing": (lambda t: ["--config-file", str(t / "nope.yaml")], ["nope.yaml", "does not exist"]),
    "config file not YAML": (lambda t: ["--config-file", "bad.yaml", "a: [1"], ["bad.yaml", "not valid YAML"]),
    "spec file missing": (lambda t: [f"data.spec={t / 'nope.yaml'}"], ["nope.yaml", "does not exist"]),
    "spec names a CSV": (lambda t: table(t, good_frame())[:0] + [f"data.spec={t / 't.csv'}"], ["t.csv", "YAML spec"]),
    "spec with an unknown key": (lambda t: table(t, good_frame(), SPEC + "lable: y\n"), ["'lable'", "valid keys"]),
    "spec without a label": (lambda t: table(t, good_frame(), "path: t.csv\nmodalities: {a: [a1]}\n"), ["'label'"]),
    "spec naming a modality twice": (
        lambda t: table(t, good_frame(), SPEC + "  a: [b1]\n"),
        ["spec.yaml", "duplicate key 'a'", "line 6"],
    ),
    "config file with a key twice": (
        lambda t: ["--config-file", "twice.yaml", "seed: 1\nseed: 2\n"],
        ["twice.yaml", "duplicate key 'seed'"],
    ),
    "table file missing": (lambda t: table(t), ["t.csv", "does not exist"]),
    "table file empty": (lambda t: table(t, ""), ["t.csv", "empty"]),
    "header but no rows": (lambda t: table(t, "a1,a2,b1,y\n"), ["t.csv", "no data rows"]),
    "ragged CSV": (lambda t: table(t, "a1,a2,b1,y\n1,2,3,0\n1,2,3,4,5,6\n"), ["t.csv", "line 3"]),
    "binary garbage": (lambda t: table(t, bytes(range(256)) * 8), ["t.csv", "cannot parse"]),
    "Parquet file that is not one": (
        lambda t: table(t, "hello", SPEC.replace("t.csv", "t.parquet"), "t.parquet"),
        ["t.parquet"],
    ),
    "unknown file format": (lambda t: table(t, "x", SPEC.replace("t.csv", "t.xlsx"), "t.xlsx"), ["t.xlsx", ".csv"]),
    "duplicate column names": (
        lambda t: table(t, "a1,a1,a2,b1,y\n" + "".join(f"{i},{i},{i},{i},{i % 2}\n" for i in range(60))),
        ["t.csv", "'a1' appears 2 times"],
    ),
    "label column not in the table": (
        lambda t: table(t, good_frame(), SPEC.replace("label: y", "label: outcome")),
        ["'outcome'", "t.csv", "columns are"],
    ),  # fmt: skip
    "modality names a missing column": (
        lambda t: table(t, good_frame(), SPEC.replace("[b1]", "[b1, b2]")),
        ["'b'", "'b2'", "t.csv"],
    ),  # fmt: skip
    "column in two modalities": (
        lambda t: table(t, good_frame(), SPEC.replace("[b1]", "[b1, a2]")),
        ["'a2'", "'a' and 'b'", "t.csv"],
    ),  # fmt: skip
    "column twice in a modality": (
        lambda t: table(t, good_frame(), SPEC.replace("[b1]", "[b1, b1]")),
        ["'b1'", "twice", "t.csv"],
    ),  # fmt: skip
    "label inside a modality": (
        lambda t: table(t, good_frame(), SPEC.replace("[b1]", "[b1, y]")),
        ["label column 'y'", "'b'", "t.csv"],
    ),  # fmt: skip
    "modality with no columns": (lambda t: table(t, good_frame(), SPEC.replace("[b1]", "[]")), ["'b'", "no columns"]),
    "no modalities": (lambda t: table(t, good_frame(), "path: t.csv\nlabel: y\nmodalities: {}\n"), ["no modalities"]),
    "categorical column in no modality": (
        lambda t: table(t, good_frame(), SPEC + "categorical: [y]\n"),
        ["'y'", "not in any modality"],
    ),  # fmt: skip
    "label empty in every row": (lambda t: table(t, edit(y=np.nan)), ["t.csv", "'y'", "no labelled rows"]),
    "label with one class": (lambda t: table(t, edit(y=1)), ["t.csv", "'y'", "single class"]),
    "class with one row (test class unseen in training)": (
        lambda t: table(t, edit(y={5: 7})),
        ["class '7'", "t.csv", "single row"],
    ),  # fmt: skip
    "empty split after dropping unlabelled rows": (
        lambda t: table(t, few_labels()),
        ["t.csv", "4 labelled rows", "116 rows without a label"],
    ),  # fmt: skip
    "row with no present modality": (lambda t: table(t, no_modality_row()), ["row 3", "t.csv", "no present modality"]),
    "infinite value": (lambda t: table(t, edit(a1={7: np.inf})), ["'a1'", "row 7", "t.csv", "infinite"]),
    "text in a numeric column": (lambda t: table(t, edit(a1={7: "n/a?"})), ["'a1'", "row 7", "'n/a?'", "categorical"]),
    "values too large to scale": (lambda t: table(t, edit(a1={7: 1e308, 8: -1e308})), ["'a1'", "row", "t.csv"]),
    "modality never observed": (lambda t: table(t, edit(b1=np.nan)), ["'b'", "t.csv", "never present"]),
}


def kinds(tmp: Path, change) -> list[str]:
    """The table with a modality of every kind (``conftest.write_kinds_table``), with ``change(folder)`` applied."""
    from conftest import write_kinds_table

    spec = write_kinds_table(tmp / "data")
    change(spec.parent)
    return [f"data.spec={spec}"]


def set_cell(folder: Path, column: str, row: int, value) -> None:
    frame = pd.read_csv(folder / "table.csv", dtype={"scan": str, "note": str})
    frame.loc[row, column] = value
    frame.to_csv(folder / "table.csv", index=False)


def latin1_note(folder: Path) -> None:
    text = (folder / "table.csv").read_bytes()
    (folder / "table.csv").write_bytes(text.replace(b"seen today", "vu \u00e0 midi".encode("latin-1"), 1))


def only_hr(folder: Path) -> None:
    spec = (folder / "spec.yaml").read_text()
    (folder / "spec.yaml").write_text(spec.replace("value: v}", "value: v, channels: [hr]}"))


CASES |= {
    "image path to no file": (
        lambda t: kinds(t, lambda f: set_cell(f, "scan", 4, "nope.png")),
        ["row 4", "'scan'", "nope.png", "does not exist", "missing_file: absent"],
    ),
    "image that does not decode": (
        lambda t: kinds(
            t, lambda f: [(f / "images" / f"im{k}.png").write_bytes(b"no png") for k in range(60) if k % 5 != 1]
        ),
        ["im0.png", "Pillow can decode"],
    ),  # fmt: skip
    "embedding file with the wrong row count": (
        lambda t: kinds(t, lambda f: np.save(f / "emb.npy", np.zeros((59, 4), np.float32))),
        ["emb.npy", "59 rows", "60"],
    ),
    "series channel absent from the spec": (lambda t: kinds(t, only_hr), ["'sbp'", "(hr)", "vitals"]),
    "text not in UTF-8": (lambda t: kinds(t, latin1_note), ["table.csv", "not UTF-8", "row 0", "iconv"]),
}
if not torch.cuda.is_available():
    CASES["train.device=cuda without a GPU"] = (lambda t: ["train.device=cuda"], ["train.device=cuda", "cpu"])


def run_case(name: str, tmp: Path) -> tuple[int, str]:
    """Exit status and stderr of `multimoe train` on the case's input (config presets are read from configs/)."""
    make, _ = CASES[name]
    args = make(tmp)
    config = "configs/flexmoe.yaml"
    if args[:1] == ["--config-file"]:
        config = args[1]
        if len(args) > 2:
            (tmp / config).write_text(args[2])
            config = str(tmp / config)
        args = []
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["train", config, f"out_dir={tmp / 'runs'}", *BASE, *args])
    return code, err.getvalue()


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_a_message_naming_it(name, tmp_path):
    code, err = run_case(name, tmp_path)
    lines = [line for line in err.splitlines() if not line.startswith("note:")]
    assert code == 2, err
    assert lines and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for word in CASES[name][1]:
        assert word in err, f"{word!r} not in {err!r}"
    assert not list((tmp_path / "runs").glob("*")), "a failed start must not leave a run folder"


def test_category_unseen_in_training_is_counted_not_fatal(tmp_path, capsys):
    df = good_frame(200)
    df["color"] = np.where(np.arange(200) % 2, "red", "blue")
    modalities = {"a": ["a1", "a2"], "b": ["b1", "color"]}
    row = prepare(Table.from_frame(df, "y", modalities), DataConfig(), seed=0).split_rows["test"][-1]
    df.loc[row, "color"] = "ultraviolet"
    args = table(tmp_path, df, SPEC.replace("[b1]", "[b1, color]"))
    assert main(["train", "configs/flexmoe.yaml", f"out_dir={tmp_path / 'runs'}", *BASE, *args]) == 0
    run_dir = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_dir"]
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    assert summary["data"]["unknown_categories"] == {"test": {"color": 1}}


def test_class_in_test_never_seen_in_training_names_it(monkeypatch):
    """A stratified split puts every class of two rows or more into training (a class of one row is refused first),
    so this guard is reached only if the split changes; it still names the class."""
    df = good_frame()
    df.loc[[3, 4], "y"] = 5
    prepare_mod = sys.modules["multimoe.data.prepare"]  # the package exports the function under the same name
    real = prepare_mod.split_rows

    def leaky(labels, *args, **kw):
        rows = real(np.where(labels == "5", "0", labels), *args, **kw)
        rows = {k: v[~np.isin(v, [3, 4])] for k, v in rows.items()}
        rows["test"] = np.union1d(rows["test"], [3, 4])
        return rows

    monkeypatch.setattr(prepare_mod, "split_rows", leaky)
    with pytest.raises(DataError, match="class '5' of the label 'y'.* test split but never in training"):
        prepare(Table.from_frame(df, "y", {"a": ["a1", "a2"], "b": ["b1"]}), DataConfig(), seed=0)


if __name__ == "__main__":  # the closing note's list: each bad input and the first line the user sees
    import tempfile

    for case in CASES:
        with tempfile.TemporaryDirectory() as d:
            _, err = run_case(case, Path(d))
        first = next(line for line in err.splitlines() if line.startswith("error: "))
        print(f"| {case} | `{first.replace(d, '…')}` |")
    sys.exit(0)
