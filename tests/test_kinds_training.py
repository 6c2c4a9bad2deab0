"""Training, evaluation and prediction with modalities of every kind (series, image, text, embedding beside table
columns), from generated files: every neural preset trains on them, the data path hands each kind to its encoder,
loader workers give the same batches, and what the run keeps reads new rows as the training rows were."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import KIND_OF, KINDS_SPEC, KINDS_TINY, lab_absent, write_kinds_table

from multimoe.config import DataConfig
from multimoe.data.kinds import rebuild_source
from multimoe.data.prepare import natural_presence, prepare
from multimoe.data.table import load_spec
from multimoe.encoders import MLPEncoder, PatchLinear
from multimoe.errors import DataError
from multimoe.image_encoders import ImageCNN
from multimoe.registry import load_config
from multimoe.series_encoders import MTAND, SeriesConv
from multimoe.text_encoders import HashedBag
from multimoe.train import train

NEURAL_PRESETS = ["flexmoe", "smoe", "fusemoe", "dense", "late_fusion", "multimoe", "flexmoe-cpu", "flexmoe-code"]
ENCODER_OF = {"table": (PatchLinear, MLPEncoder), "embedding": (PatchLinear, MLPEncoder), "image": (ImageCNN,),
              "text": (HashedBag,), "series": (MTAND,)}  # fmt: skip


@pytest.fixture(scope="module")
def kinds_spec(tmp_path_factory):
    return write_kinds_table(tmp_path_factory.mktemp("kinds"))


def test_a_spec_with_every_kind_keeps_its_order_and_natural_presence(kinds_spec):
    table = load_spec(kinds_spec)
    assert table.order == ["lab", "scan", "notes", "emb", "vitals"]
    assert {m: table.kind(m) for m in table.order} == KIND_OF
    present_NM = natural_presence(table)
    i = np.arange(60)
    expected = np.stack([~lab_absent(i), i % 5 != 1, i % 7 != 2, i % 4 != 3, i % 6 != 4], axis=1)
    assert (~expected).sum(axis=0).tolist() == [10, 12, 9, 15, 10]  # every kind is missing in some rows
    np.testing.assert_array_equal(present_NM, expected)


def test_prepare_fits_sources_on_training_rows_and_the_schema_names_kinds_and_shapes(kinds_spec):
    table = load_spec(kinds_spec)
    splits = prepare(table, DataConfig(missing="mcar:0.2"), seed=0)
    inputs = {m: (s.kind, s.shape) for m, s in zip(splits.schema.modalities, splits.schema.inputs)}
    assert inputs["lab"] == ("table", (1,)) and inputs["emb"] == ("embedding", (4,))
    assert inputs["scan"] == ("image", (1, 8, 8)) and inputs["vitals"][0] == "series"
    assert inputs["vitals"][1][0] == 2 and inputs["notes"][0] == "text"
    assert splits.schema.features[2] == math.prod(inputs["notes"][1])
    assert table.sources["emb"].mean_F.tolist() == [0.0] * 4, "prepare fits a copy; the table's source stays as it was"
    emb = splits.train.sources["emb"]
    train_rows = splits.split_rows["train"]
    keep = splits.train.present_NM[:, 3].numpy()
    values = np.load(kinds_spec.parent / "emb.npy")[train_rows[keep]]
    np.testing.assert_allclose(emb.mean_F, np.nanmean(values, axis=0), rtol=1e-5)
    assert json.loads(json.dumps(splits.preprocessing))["sources"]["vitals"]["channels"] == ["hr", "sbp"]


def test_a_batch_holds_each_source_batch_with_absent_rows_zero_and_unmasked(kinds_spec):
    splits = prepare(load_spec(kinds_spec), DataConfig(missing="mcar:0.2"), seed=0)
    data = splits.train
    idx = np.arange(10)
    batch = data.batch(idx)
    rows = data.rows_N[idx]
    for m, name in enumerate(data.schema.modalities):
        present = data.present_NM[idx, m]
        if name not in data.sources:
            continue
        x, missing = data.sources[name].batch(rows, present.numpy())
        got = batch.inputs[name]
        pairs = zip(got, x) if isinstance(x, tuple) else [(got, x)]
        for a, b in pairs:
            torch.testing.assert_close(a, b)
        assert not batch.cell_missing[name][~present].any()  # masks are of present modalities only
        torch.testing.assert_close(batch.cell_missing[name][present], missing[present])


def test_modality_dropout_hides_series_and_images_of_any_rank(kinds_spec):
    splits = prepare(load_spec(kinds_spec), DataConfig(), seed=0)
    batch = splits.train.batch(np.arange(12))
    hidden = batch.present_BM.clone()
    hidden[:, 1:] = False
    hidden[:, 0] = True
    out = batch.with_presence(hidden)
    assert out.inputs["scan"].abs().sum() == 0 and not out.cell_missing["scan"].any()
    assert out.inputs["vitals"].values_BVU.abs().sum() == 0 and out.inputs["vitals"].times_BU.abs().sum() == 0
    assert out.inputs["notes"].sum() == 0 and out.inputs["notes"].dtype == torch.int64
    torch.testing.assert_close(out.inputs["lab"], batch.inputs["lab"] * batch.present_BM[:, :1])
    moved = out.to("cpu")
    assert type(moved.inputs["vitals"]).__name__ == "SeriesInput"


@pytest.mark.parametrize("preset", NEURAL_PRESETS)
def test_every_neural_preset_trains_on_every_kind_and_reads_each(preset, kinds_spec, tmp_path):
    cfg = load_config(f"configs/{preset}.yaml", [f"data.spec={kinds_spec}", f"out_dir={tmp_path}", *KINDS_TINY])
    result = train(cfg)
    assert result.summary["epochs_run"] == 1 and result.test["overall"]["n"] == 9
    assert math.isfinite(result.summary["val"]["loss"]) and result.summary["flops_per_sample"] > 0
    model = result.model
    for name, kind in KIND_OF.items():
        assert isinstance(model.encoders[name], ENCODER_OF[kind]), (name, type(model.encoders[name]))
    # the trained model reads every kind: blanking one modality's input (still present) changes the probabilities
    model.eval()
    data = result.splits.test
    batch = data.batch(np.arange(len(data)))
    with torch.no_grad():
        base = model(batch).logits_BC
        for m, name in enumerate(data.schema.modalities):
            blank = dict(batch.inputs)
            x = batch.inputs[name]
            blank[name] = type(x)(*(t * 0 for t in x)) if isinstance(x, tuple) else x * 0
            changed = model(type(batch)(blank, batch.cell_missing, batch.present_BM, batch.labels_B, batch.combo_B))
            rows = batch.present_BM[:, m]
            assert not torch.allclose(changed.logits_BC[rows], base[rows]), name


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["scan", "notes", "emb", "vitals"])
@pytest.mark.parametrize("preset", NEURAL_PRESETS)
def test_every_neural_preset_trains_on_each_kind_alone_beside_a_column(preset, kind, tmp_path):
    lines = [line for line in KINDS_SPEC.splitlines() if not line.startswith("  ") or line.split(":")[0].strip()
             in ("lab", kind)]  # fmt: skip
    spec = write_kinds_table(tmp_path / "data", spec="\n".join(lines) + "\n")
    cfg = load_config(f"configs/{preset}.yaml", [f"data.spec={spec}", f"out_dir={tmp_path}", *KINDS_TINY])
    result = train(cfg)
    assert list(result.model.schema.modalities) == ["lab", kind] and result.test["overall"]["n"] == 9


def test_encoders_per_kind_come_from_their_config_keys(kinds_spec, tmp_path):
    cfg = load_config("configs/multimoe.yaml", [f"data.spec={kinds_spec}", f"out_dir={tmp_path}", *KINDS_TINY,
                                                "model.encoder.series=series_conv"])  # fmt: skip
    result = train(cfg)
    assert isinstance(result.model.encoders["vitals"], SeriesConv)
    assert isinstance(result.model.encoders["lab"], MLPEncoder) and isinstance(result.model.encoders["emb"], MLPEncoder)


@pytest.mark.parametrize("override, words", [
    ("model.encoder.series=cnn", ["model.encoder.series='cnn'", "is for image inputs", "mtand, series_conv"]),
    ("model.encoder.image=mlp", ["model.encoder.image='mlp'", "cnn, timm"]),
    ("model.encoder.text=nope", ["model.encoder.text='nope'", "hashed_bag"]),
])  # fmt: skip
def test_encoder_keys_of_each_kind_take_encoders_of_that_kind_only(override, words):
    with pytest.raises(Exception) as e:
        load_config("configs/flexmoe.yaml", [override])
    for word in words:
        assert word in str(e.value)


def test_loader_workers_give_the_batches_of_the_training_process(kinds_spec):
    splits = prepare(load_spec(kinds_spec), DataConfig(missing="mcar:0.2"), seed=0)
    order = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(1))
    here = list(splits.train.batches(8, order))
    splits.set_workers(2)
    there = list(splits.train.batches(8, order))
    assert len(here) == len(there) == math.ceil(len(splits.train) / 8)
    for a, b in zip(here, there):
        for name in a.inputs:
            x, y = a.inputs[name], b.inputs[name]
            for s, t in zip(x, y) if isinstance(x, tuple) else [(x, y)]:
                assert torch.equal(s, t), name
            assert torch.equal(a.cell_missing[name], b.cell_missing[name])
        assert torch.equal(a.labels_B, b.labels_B) and torch.equal(a.present_BM, b.present_BM)


def test_a_workers_data_error_comes_back_as_its_one_line_message(kinds_spec, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(kinds_spec.parent, folder)
    splits = prepare(load_spec(folder / "spec.yaml"), DataConfig(), seed=0)
    splits.set_workers(1)
    row = int(splits.split_rows["train"][splits.train.present_NM[:, 1].numpy()][0])  # a training row with its image
    (folder / "images" / f"im{row}.png").write_bytes(b"not a png")
    with pytest.raises(DataError) as e:
        list(splits.train.batches(64))
    message = str(e.value)
    assert "\n" not in message and f"row {row} of column 'scan'" in message and "Pillow can decode" in message


def test_the_run_keeps_each_sources_state_and_new_rows_read_the_same(kinds_spec):
    table = load_spec(kinds_spec)
    splits = prepare(table, DataConfig(missing="mcar:0.2"), seed=0)
    state = json.loads(json.dumps(splits.preprocessing))["sources"]
    rows = splits.split_rows["test"]
    for name, fitted in splits.train.sources.items():
        again = rebuild_source(name, state[name], state[name]["entry"], table.frame, kinds_spec.parent)
        x, missing = fitted.batch(rows)
        y, missing2 = again.batch(rows)
        for s, t in zip(x, y) if isinstance(x, tuple) else [(x, y)]:
            assert torch.equal(s, t), name
        assert torch.equal(missing, missing2)


def test_group_split_keeps_groups_whole_and_auto_follows_the_table(kinds_spec, tmp_path):
    import shutil

    folder = tmp_path / "grouped"
    shutil.copytree(kinds_spec.parent, folder)
    load_spec(kinds_spec).frame.assign(site=np.arange(60) % 10).to_csv(folder / "table.csv", index=False)
    (folder / "spec.yaml").write_text(KINDS_SPEC + "group: site\n")
    table = load_spec(folder / "spec.yaml")
    rows = prepare(table, DataConfig(), seed=0).split_rows
    sites = {k: set(table.frame["site"].to_numpy()[v]) for k, v in rows.items()}
    assert not sites["train"] & sites["val"] and not sites["train"] & sites["test"] and sites["val"]
    assert not sites["val"] & sites["test"] and len(sites["train"]) + len(sites["val"]) + len(sites["test"]) == 10
    stratified = prepare(table, DataConfig(split="stratified"), seed=0).split_rows
    assert len(stratified["test"]) == 9 and set(stratified["test"]) != set(rows["test"])
    with pytest.raises(DataError, match="data.split=group needs a group column"):
        prepare(load_spec(kinds_spec), DataConfig(split="group"), seed=0)


ADDED = {"data.split": "group", "model.encoder.series": "series_conv", "model.encoder.image": "timm",
         "model.encoder.text": "hf", "model.baseline_series": "summary", "model.baseline_image": "flatten"}  # fmt: skip


def test_the_new_keys_leave_stored_digests_alone_at_their_defaults_and_change_them_otherwise():
    from multimoe.bench.sweep import config_digest
    from multimoe.config import ADDED_KEYS, with_added_defaults
    from multimoe.runs.folder import RESULT_NEUTRAL

    assert set(ADDED) <= set(ADDED_KEYS) and "train.workers" in RESULT_NEUTRAL
    base = load_config("configs/flexmoe.yaml")
    for key, value in ADDED.items():
        assert config_digest(load_config("configs/flexmoe.yaml", [f"{key}={value}"])) != config_digest(base), key
    assert config_digest(load_config("configs/flexmoe.yaml", ["train.workers=3"])) == config_digest(base)
    old = {"encoder": {"kind": "mlp", "hidden": 8, "cell_mask": True}}  # a model section written before the keys
    assert with_added_defaults(old, "model")["encoder"] == {**old["encoder"], "series": "mtand", "image": "cnn",
                                                            "text": "hashed_bag", "periodic": {"frequencies": 16,
                                                            "scale": 0.1, "width": 16}}  # fmt: skip


# ---- what a run keeps: predict, baselines, export -------------------------------------------------------------


def cli(*args: str) -> tuple[int, str, str]:
    import contextlib
    import io

    from multimoe.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def train_cli(spec, out_dir, preset: str, *overrides: str) -> str:
    code, out, err = cli("train", f"configs/{preset}.yaml", f"data.spec={spec}", f"out_dir={out_dir}", *KINDS_TINY,
                         *overrides)  # fmt: skip
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])["run_dir"]


@pytest.fixture(scope="module")
def kinds_run(kinds_spec, tmp_path_factory):
    """A multimoe-preset run on the table with every kind (one epoch, mcar:0.2)."""
    return train_cli(kinds_spec, tmp_path_factory.mktemp("runs"), "multimoe")


def natural_test(run_dir, spec, hide: tuple[str, ...] = ()):
    """The run's model, and its test rows with their natural presence (modalities in ``hide`` absent)."""
    from multimoe.runs.reopen import open_run

    opened = open_run(run_dir)
    test = opened.splits.test
    present = natural_presence(load_spec(spec))[test.rows_N]
    for name in hide:
        present[:, test.schema.modalities.index(name)] = False
    return opened.model, test.with_presence(present)


def test_predict_from_a_spec_of_new_rows_reads_every_kind_as_evaluation_does(kinds_run, kinds_spec, tmp_path):
    from multimoe.evaluate import predict

    model, test = natural_test(kinds_run, kinds_spec)
    expected = predict(model, test).probs_NC
    code, out, err = cli("predict", kinds_run, str(kinds_spec), "--out", str(tmp_path / "p.csv"))
    assert code == 0, err
    got = pd.read_csv(tmp_path / "p.csv")
    assert len(got) == 60 and json.loads(out.splitlines()[-1])["absent_modalities"] == []
    np.testing.assert_allclose(got.filter(like="proba_").to_numpy()[test.rows_N], expected, atol=1e-5, rtol=0)
    i = test.rows_N
    assert got["observed"][i].str.contains("vitals").tolist() == (i % 6 != 4).tolist()


def test_predict_from_a_table_file_gives_its_column_kinds_and_says_which_it_cannot(kinds_run, kinds_spec, tmp_path):
    from multimoe.evaluate import predict

    model, test = natural_test(kinds_run, kinds_spec, hide=("emb", "vitals"))
    expected = predict(model, test).probs_NC
    code, out, err = cli("predict", kinds_run, str(kinds_spec.parent / "table.csv"), "--out", str(tmp_path / "p.csv"))
    assert code == 0, err
    got = pd.read_csv(tmp_path / "p.csv")
    np.testing.assert_allclose(got.filter(like="proba_").to_numpy()[test.rows_N], expected, atol=1e-5, rtol=0)
    assert json.loads(out.splitlines()[-1])["absent_modalities"] == ["emb", "vitals"]
    assert "modality 'vitals' (series) reads the file vitals.csv" in err and "from a YAML spec" in err
    assert not got["observed"].str.contains("emb|vitals").any() and got["observed"].str.contains("scan").any()


def test_baselines_train_and_predict_on_summaries_and_pixels_and_refuse_text_in_one_line(kinds_spec, tmp_path):
    from multimoe.evaluate import predict

    code, _, err = cli("train", "configs/logreg.yaml", f"data.spec={kinds_spec}", f"out_dir={tmp_path}",
                       "model.baseline_series=summary", "model.baseline_image=flatten")  # fmt: skip
    assert code == 2 and err.strip().splitlines() == [err.strip()] and err.startswith("error: ")
    assert "modality 'notes' is text" in err
    spec = kinds_spec.parent / "no_notes.yaml"
    spec.write_text("".join(line + "\n" for line in KINDS_SPEC.splitlines() if "notes" not in line))
    run = train_cli(spec, tmp_path, "hgb", "model.baseline_series=summary", "model.baseline_image=flatten")
    model, test = natural_test(run, spec)
    code, _, err = cli("predict", run, str(spec), "--out", str(tmp_path / "p.csv"))
    assert code == 0, err
    got = pd.read_csv(tmp_path / "p.csv").filter(like="proba_").to_numpy()[test.rows_N]
    np.testing.assert_allclose(got, predict(model, test).probs_NC, atol=1e-9, rtol=0)


def test_onnx_export_refuses_a_model_with_other_kinds_and_names_them(kinds_run):
    pytest.importorskip("onnx")
    code, _, err = cli("export", kinds_run)
    assert code == 2 and "ONNX export takes models of table modalities only" in err
    assert "scan (image), notes (text), emb (embedding), vitals (series)" in err and "multimoe predict" in err


def test_table_from_frame_takes_spec_mappings_and_sources_built_on_arrays(tmp_path):
    from multimoe.data.kinds import EmbeddingSource, ImageSource, SeriesSource
    from multimoe.data.table import Table

    rng = np.random.default_rng(0)
    n = 60
    y = np.arange(n) % 3
    frame = pd.DataFrame({"note": [f"word{k} seen" if k % 7 else "" for k in y], "y": y}, index=np.arange(n) + 100)
    signal = (y[:, None, None] + rng.normal(size=(n, 2, 16))).astype(np.float32)
    signal[::5] = np.nan  # rows without the series
    pixels = (y[:, None, None] + rng.normal(size=(n, 6, 5))).astype(np.float32)
    acc = SeriesSource.from_array("whatever", signal, rate=8)
    modalities = {"notes": {"kind": "text", "column": "note"}, "acc": acc, "pix": ImageSource("p", array=pixels),
                  "emb": EmbeddingSource("e", rng.normal(size=(n, 3)))}  # fmt: skip
    table = Table.from_frame(frame, "y", modalities)
    assert table.order == ["notes", "acc", "pix", "emb"] and table.sources["acc"].name == "acc"
    assert table.sources["acc"].row_name(1) == "row 101" and acc.name == "whatever"  # the caller's stays as it was
    cfg = load_config("configs/dense.yaml", [f"out_dir={tmp_path}", *KINDS_TINY])
    result = train(cfg, table=table)
    assert result.test["overall"]["n"] == 9 and isinstance(result.model.encoders["acc"], MTAND)
    assert (~result.splits.train.present_NM[:, 1]).sum() >= (result.splits.train.rows_N % 5 == 0).sum()
    with pytest.raises(DataError, match=r"modality 'emb' \(embedding\) has 59 rows but the table has 60"):
        Table.from_frame(frame, "y", {**modalities, "emb": EmbeddingSource("e", np.zeros((59, 3)))})
    with pytest.raises(DataError, match="modality 'pix': expected a list of columns, a mapping with 'kind'"):
        Table.from_frame(frame, "y", {**modalities, "pix": pixels})


def test_the_kinds_sweep_runs_every_method_on_hapt_and_mfeat_image_with_baselines_on_features():
    from multimoe.bench.sweep import load_sweep
    from multimoe.registry import load_config as load

    sweep = load_sweep("configs/sweeps/kinds.yaml")
    assert [(p["data.name"], p["data.missing"]) for p in sweep.grid] == [
        ("hapt", "mcar:0.3"), ("hapt", "mcar:0.6"), ("mfeat-image", "mcar:0.3")]  # fmt: skip
    assert set(sweep.methods) == {"flexmoe", "smoe", "fusemoe", "dense", "late_fusion", "multimoe", "logreg", "hgb"}
    assert sweep.seeds == [0, 1, 2, 3, 4] and len(sweep.cells()) == 8 * 3 * 5
    for method in ("logreg", "hgb"):
        preset, over = sweep.cell_overrides({"method": method, "point": sweep.grid[0], "seed": 0})
        cfg = load(preset, [f"{k}={v}" for k, v in over.items()])
        assert (cfg.model.baseline_series, cfg.model.baseline_image) == ("summary", "flatten")
