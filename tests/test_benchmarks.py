"""The benchmark scripts run end to end on tiny inputs and end with the JSON line the engine issue specifies.
Structure only: timings are never asserted (they belong to the benchmark runs, on a quiet machine)."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from benchmarks.reference_paths import PATHS

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=600
    )


def last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_moe_layer_benchmark_prints_every_case_and_the_json_line():
    proc = run(
        "moe_layer.py",
        "--only",
        "flexmoe-batch",
        "--shape",
        "4,2,16,32,40,skewed",
        "--shape",
        "4,2,16,32,40,balanced",
        "--reps",
        "5",
        "--warmup",
        "1",
    )
    cases = last_json(proc)["cases"]
    assert [c["name"] for c in cases] == ["flexmoe-batch", "E4-k2-D16-H32-T40-skewed", "E4-k2-D16-H32-T40-balanced"]
    assert cases[2]["rows_per_expert_max_over_mean"] == 1.0  # balanced: 20 rows per expert
    for c in cases:
        assert c["path"] in PATHS
        for key in ("fraction_of_limit", "speedup_vs_eager_loop", "speedup_vs_sorted", "peak_mem_over_limit"):
            assert c[key] > 0, key
    assert (cases[0]["E"], cases[0]["k"], cases[0]["D"], cases[0]["H"], cases[0]["T"]) == (16, 4, 128, 256, 512)
    assert "summary" in proc.stdout


def test_train_throughput_benchmark_ends_with_the_ratio():
    proc = run("train_throughput.py", "--epochs", "5", "data.synthetic.samples=120")
    result = last_json(proc)
    rate = result["samples_per_second"]
    assert set(rate) == {"flexmoe", "dense"} and min(rate.values()) > 0
    assert result["flexmoe_over_dense"] == pytest.approx(rate["flexmoe"] / rate["dense"], abs=1e-3)
    spread = result["flexmoe_over_dense_per_round"]
    assert 0 < spread["min"] <= spread["max"]


@pytest.mark.slow  # two spawned processes, five variants: ~1 min on 2 shared cores
def test_scaling_benchmark_ends_with_the_efficiencies():
    tiny = ["data.name=synthetic", "data.synthetic.samples=200", "model.dim=16", "model.tokens=2"]
    result = last_json(run("scaling.py", "--steps", "2", "--rounds", "3", *tiny))
    rate = result["samples_per_second"]
    assert set(rate) == {"1 process", "DP, global B", "DP, global 2B", "DP without all-reduce", "EP, global B"}
    assert min(rate.values()) > 0 and set(result["efficiency"]) == {"DP, global B", "DP, global 2B", "EP, global B"}
    one = rate["1 process"]
    assert result["efficiency"]["DP, global B"] == pytest.approx(rate["DP, global B"] / (2 * one), abs=1e-3)
    low, high = result["efficiency_per_round"]["DP, global B"]
    assert 0 < low <= high
    assert 0 <= result["communication_share"]["ep_all_to_all"] <= 1


@pytest.mark.slow
def test_published_recipe_benchmark_ends_with_the_fraction_of_mm():
    tiny = ["data.name=synthetic", "data.synthetic.samples=60", "data.synthetic.modalities=2"]
    result = last_json(run("train_throughput.py", "--recipe", "published", "--epochs", "5", *tiny))
    assert result["threads"] == 1 and result["recipe"] == "published" and result["peak_rss_mb"] > 0
    assert result["fraction_of_mm"] == pytest.approx(
        result["train_gflops_per_second"] / result["mm_gflops_per_second"], rel=0.02
    )
    spread = result["fraction_of_mm_per_epoch"]
    assert 0 < spread["min"] <= result["fraction_of_mm"] <= spread["max"]
    # the same epoch's FLOPs over the seconds inside matrix products alone (the profiled epoch)
    epoch_gflop = result["train_gflops_per_second"] * result["epoch_seconds"]
    only_products = epoch_gflop / result["matrix_product_seconds"] / result["mm_gflops_per_second"]
    assert result["fraction_of_mm_if_only_products"] == pytest.approx(only_products, rel=0.05)


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("moe_layer.py", ["--reps", "3"], "at least 5 repetitions"),
        ("moe_layer.py", ["--only", "flexmoe-btach"], "unknown case flexmoe-btach"),
        ("moe_layer.py", ["--shape", "4,8,16,32,40"], "1 <= k <= E"),
        ("moe_layer.py", ["--shape", "4,2,16,32"], "E,k,D,H,T"),
        ("train_throughput.py", ["--epochs", "2"], "at least 5 epochs"),
        ("train_throughput.py", ["--recipe", "published", "--compile"], "--compile applies to --recipe compare"),
        ("predict.py", ["--reps", "3"], "at least 5 repetitions"),
        ("scaling.py", ["--rounds", "2"], "at least 1 step and 3 rounds"),
    ],
)
def test_benchmarks_reject_bad_arguments(script, args, message):
    proc = run(script, *args)
    assert proc.returncode == 2 and message in proc.stderr


@pytest.mark.slow
def test_predict_benchmark_ends_with_the_ratio_and_the_memory(tmp_path):
    pytest.importorskip("onnxruntime", reason="the benchmark exports to ONNX: pip install 'multimoe[onnx]'")
    args = ["--dataset", "synthetic", "--epochs", "1", "--rows", "3000", "--compare-rows", "600", "--reps", "5"]
    result = last_json(run("predict.py", *args, "--workdir", str(tmp_path), "model.dim=16", "model.tokens=2"))
    assert result["predict_rows"] == 3000 and result["max_abs_diff"] < 1e-4
    assert result["onnxruntime_over_torch"] > 0 and result["predict_peak_rss_mb"] > 0
    assert result["predict_over_model_only"] == pytest.approx(
        result["predict_rows_per_second"] / result["torch_rows_per_second"]
    )


class FixedClassifier:
    """A stand-in per-modality classifier: the same class probabilities for every row; remembers its training rows."""

    def __init__(self, probs: list[float]) -> None:
        self.probs, self.classes_ = np.array(probs), np.arange(len(probs))

    def fit(self, X, y):
        self.rows = len(X)
        return self

    def predict_proba(self, X):
        return np.tile(self.probs, (len(X), 1))


def test_the_product_of_per_modality_classifiers_by_hand():
    """Training labels 0, 0, 0, 1 (prior 3/4, 1/4); modality a's classifier says (0.6, 0.4), b's (0.2, 0.8). Both
    present: (0.6 x 0.2 / 0.75, 0.4 x 0.8 / 0.25) = (0.16, 1.28), normalised (1/9, 8/9); one present: its own."""
    from benchmarks.per_view import product_of_modalities

    class Data(SimpleNamespace):
        def __len__(self):
            return len(self.present_NM)

    def make(present):
        n = len(present)
        return Data(present_NM=torch.tensor(present), labels_N=torch.tensor([0, 0, 0, 1][:n]),
                    values={m: torch.zeros(n, 2) for m in "ab"},
                    cell_missing={m: torch.zeros(n, 2, dtype=torch.bool) for m in "ab"},
                    schema=SimpleNamespace(num_classes=2, modalities=("a", "b")))  # fmt: skip

    train = make([[True, True], [True, False], [True, True], [False, True]])
    test = make([[True, True], [True, False], [False, True]])
    made = iter([FixedClassifier([0.6, 0.4]), FixedClassifier([0.2, 0.8])])
    fitted = []
    probs = product_of_modalities(SimpleNamespace(train=train, val=test, test=test),
                                  lambda: fitted.append(next(made)) or fitted[-1])  # fmt: skip
    np.testing.assert_allclose(probs["test"], [[1 / 9, 8 / 9], [0.6, 0.4], [0.2, 0.8]], rtol=1e-12)
    assert [c.rows for c in fitted] == [3, 3]  # each fit on the training rows that have its modality


RECOUNT_SWEEP = """
name: recount
seeds: [0]
reference: hgb
budget: tiny models, 2 epochs
common: {data.synthetic.samples: 200, data.synthetic.modalities: 2, data.synthetic.features: 6, model.dim: 8,
         model.tokens: 2, model.heads: 2, model.moe.hidden: 8, model.moe.router.top_k: 2, model.hgb_max_iter: 5,
         train.epochs: 2, train.batch_size: 32}
methods:
  hgb: PRESETS/hgb.yaml
  multimoe-blend-svm: {preset: PRESETS/multimoe-blend-svm.yaml, overrides: {model.members: 2}}
grid:
  - {data.name: synthetic, data.missing: "mcar:0.3"}
"""


def test_recounted_costs_are_a_fresh_runs_and_a_mismatch_stops_the_script(tmp_path, request):
    from benchmarks.recount_costs import FIGURES, main
    from multimoe.bench import load_sweep, read_cells, run_sweep
    from multimoe.cost import model_costs
    from multimoe.runs.reopen import open_run

    sweep = tmp_path / "recount.yaml"
    sweep.write_text(RECOUNT_SWEEP.replace("PRESETS", str(request.config.rootpath / "configs")))
    store = run_sweep(load_sweep(sweep), tmp_path / "out", jobs=1, progress=False)
    fresh = {c["method"]: {k: c[k] for k in FIGURES} for c in read_cells(store)}
    assert fresh["hgb"]["flops_per_sample"] > 0  # written by today's code: the figures to give back
    main([str(sweep), "--cells", str(store)])
    assert not store.with_name("cells.jsonl.bak").exists()  # nothing to recount: the store is not touched

    blend = next(c for c in read_cells(store) if c["method"] == "multimoe-blend-svm")
    run = open_run(tmp_path / "out" / "runs" / blend["run"])
    network = model_costs(run.model.network, run.cfg.model, run.splits.schema)
    assert fresh["multimoe-blend-svm"]["parameters"] > network["parameters"]
    old = []  # the cells as the code before the count stored them: hgb without FLOPs, the blend as its network
    for c in read_cells(store):
        old.append({**c, "flops_per_sample": None} if c["method"] == "hgb" else {**c, **network})
    store.write_text("".join(json.dumps(c) + "\n" for c in old))
    main([str(sweep), "--cells", str(store)])
    assert {c["method"]: {k: c[k] for k in FIGURES} for c in read_cells(store)} == fresh
    assert read_cells(store.with_name("cells.jsonl.bak")) == old
    text = store.read_text()
    main([str(sweep), "--cells", str(store)])
    assert store.read_text() == text

    store.write_text("".join(json.dumps({**c, "parameters": c["parameters"] + 1}) + "\n" for c in old))
    with pytest.raises(SystemExit, match="nodes stored|neither the network's"):
        main([str(sweep), "--cells", str(store)])
