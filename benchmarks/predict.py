"""Prediction: onnxruntime against PyTorch on the same encoded rows, and `multimoe predict` on a large generated CSV.

1. A run (``--run``, or configs/multimoe.yaml trained for ``--epochs`` on ``--dataset``) is exported to ONNX; the
   same rows (mixed missing patterns) go through the PyTorch model (``multimoe.evaluate.predict``, the sorted engine,
   as ``multimoe predict`` runs it) and through onnxruntime, batch by batch at the run's evaluation batch size, the
   two alternating for ``--reps`` rounds on ``--threads`` threads each. Printed: the exported file's size, the
   largest probability difference, and onnxruntime's rows/s over PyTorch's (median times; lowest and highest ratio
   within one round: the machine's noise).
2. A CSV of ``--rows`` rows of the dataset's schema is generated (rows drawn from the dataset, each modality blanked
   with probability 0.3, one kept), then ``multimoe predict RUN big.csv --out preds.csv`` runs in a child process:
   its peak resident memory (VmHWM, Linux) and rows per second end to end (reading, encoding, predicting,
   writing), also as a ratio of the model-only PyTorch rows/s of part 1 measured in the same run.

    python benchmarks/predict.py                         # mfeat, 1,000,000 rows (a ~4 GB CSV in a temporary folder)
    python benchmarks/predict.py --rows 100000 --reps 9 --threads 2

Extra arguments are config overrides for the training run. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

PRESET = Path(__file__).resolve().parents[1] / "configs" / "multimoe.yaml"
# `python -m multimoe` that reports its peak resident memory last on stderr: VmHWM of its own address space (the
# parent's rusage of children would count the pages of the forked parent before the exec)
LAUNCH = """import runpy, sys
sys.argv = ["multimoe", *sys.argv[1:]]
try:
    runpy.run_module("multimoe", run_name="__main__")
finally:
    print("peak_kib", next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1], file=sys.stderr)
"""


def new_rows(frame: pd.DataFrame, modalities: dict[str, list[str]], n: int, seed: int) -> pd.DataFrame:
    """``n`` rows drawn from ``frame`` (feature columns only), each modality blanked with probability 0.3 (one kept)."""
    rng = np.random.default_rng(seed)
    rows = frame.iloc[rng.integers(0, len(frame), n)].reset_index(drop=True)
    drop = rng.random((n, len(modalities))) < 0.3
    drop[drop.all(axis=1), rng.integers(0, len(modalities))] = False
    for m, columns in enumerate(modalities.values()):
        rows.loc[drop[:, m], columns] = np.nan
    return rows[[c for cols in modalities.values() for c in cols]]


def onnx_against_torch(predictor, onnx_path: Path, rows: pd.DataFrame, reps: int, threads: int) -> dict:
    import onnxruntime as ort
    import torch

    from multimoe.export import feed

    torch.set_num_threads(threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    data, _ = predictor.encode(rows)
    bs, n = predictor.batch_size, len(data)
    feeds = []
    for start in range(0, n, bs):
        sl = slice(start, start + bs)
        feeds.append(feed({m: v[sl].numpy() for m, v in data.values.items()},
                          {m: v[sl].numpy() for m, v in data.cell_missing.items()},
                          data.present_NM[sl].numpy(), data.schema.modalities))  # fmt: skip

    def run_torch():
        return predictor.run(data)[0]  # as `multimoe predict` runs the model

    def run_ort():
        return np.concatenate([session.run(["proba"], f)[0] for f in feeds])

    diff = float(np.abs(run_torch() - run_ort()).max())  # also the warm-up of both
    times = {"torch": [], "onnxruntime": []}
    for _ in range(reps):
        for name, fn in (("torch", run_torch), ("onnxruntime", run_ort)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    per_round = [t / o for t, o in zip(times["torch"], times["onnxruntime"])]
    return {
        "rows": n,
        "max_abs_diff": diff,
        "onnxruntime_over_torch": statistics.median(times["torch"]) / statistics.median(times["onnxruntime"]),
        "onnxruntime_over_torch_per_round": {"min": min(per_round), "max": max(per_round)},
        "torch_rows_per_second": n / statistics.median(times["torch"]),
    }


def big_csv(path: Path, frame: pd.DataFrame, modalities: dict, rows: int, chunk: int = 50_000) -> None:
    with open(path, "w", newline="") as f:
        for i, start in enumerate(range(0, rows, chunk)):
            new_rows(frame, modalities, min(chunk, rows - start), seed=1000 + i).to_csv(f, header=i == 0, index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="an existing run folder (default: train configs/multimoe.yaml)")
    parser.add_argument("--dataset", default="mfeat", help="dataset of the training run and the generated rows")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs when no --run is given")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the generated CSV")
    parser.add_argument("--compare-rows", type=int, default=4096, help="rows of the onnxruntime/PyTorch comparison")
    parser.add_argument("--reps", type=int, default=9, help="rounds of the comparison (>= 5)")
    parser.add_argument("--threads", type=int, default=2, help="threads of PyTorch and onnxruntime")
    parser.add_argument("--workdir", default=None, help="folder for the run, the model and the CSV files")
    args, overrides = parser.parse_known_args()
    if args.reps < 5:
        parser.error("--reps: at least 5 repetitions, for a median")
    from multimoe.data.table import build_table  # after the arguments: a wrong one answers at once
    from multimoe.export import export_onnx
    from multimoe.predict import load_predictor
    from multimoe.registry import load_config
    from multimoe.train import train

    with tempfile.TemporaryDirectory(prefix="multimoe-predict-bench-", dir=args.workdir) as tmp:
        tmp = Path(tmp)
        run = args.run
        if run is None:
            base = [f"data.name={args.dataset}", "data.missing=mcar:0.3", f"train.epochs={args.epochs}",
                    f"out_dir={tmp / 'runs'}", "train.progress=false"]  # fmt: skip
            cfg = load_config(PRESET, [*base, *overrides])
            run = str(train(cfg).run_dir)
        predictor = load_predictor(run)
        cfg = load_config(Path(run) / "config.yaml")
        table = build_table(cfg.data)
        onnx_path = export_onnx(run, tmp / "model.onnx")
        rows = new_rows(table.frame, table.modalities, args.compare_rows, 0)
        compare = onnx_against_torch(predictor, onnx_path, rows, args.reps, args.threads)
        csv = tmp / "big.csv"
        big_csv(csv, table.frame, table.modalities, args.rows)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", LAUNCH, "predict", run, str(csv), "--out", str(tmp / "p.csv")],
                              capture_output=True, text=True)  # fmt: skip
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"multimoe predict failed: {proc.stderr[-2000:]}")
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        peak_mb = int(proc.stderr.strip().splitlines()[-1].split()[-1]) / 1024
        rate = summary["rows"] / seconds
        result = {
            "run": run if args.run else f"configs/multimoe.yaml on {args.dataset}, {args.epochs} epochs",
            "onnx_bytes": onnx_path.stat().st_size,
            **compare,
            "predict_rows": summary["rows"],
            "csv_bytes": csv.stat().st_size,
            "predict_peak_rss_mb": round(peak_mb, 1),
            "predict_rows_per_second": rate,
            "predict_over_model_only": rate / compare["torch_rows_per_second"],
        }
    print(
        f"ONNX file {result['onnx_bytes'] / 1e6:.2f} MB; largest probability difference {compare['max_abs_diff']:.1e}"
    )
    print(f"onnxruntime / PyTorch rows per second: {compare['onnxruntime_over_torch']:.2f} (median of {args.reps}; "
          f"per round {compare['onnxruntime_over_torch_per_round']['min']:.2f}-"
          f"{compare['onnxruntime_over_torch_per_round']['max']:.2f}), {args.threads} threads each")  # fmt: skip
    print(
        f"multimoe predict on {summary['rows']:,} rows ({result['csv_bytes'] / 1e9:.2f} GB CSV): peak RSS "
        f"{peak_mb:.0f} MB, {rate:,.0f} rows/s end to end = {result['predict_over_model_only']:.2f} x the model-only "
        "PyTorch rate"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
