"""A product of per-modality classifiers alone on the accuracy sweep's cells, against ``hgb`` and ``multimoe-blend``.

For each grid point and seed of configs/sweeps/accuracy.yaml the data, split and mask are rebuilt as the sweep's
cells had them. One classifier per modality is fit on the training rows that have it, and a sample's class
probabilities are their product over the modalities it has, divided by the training prior once per modality beyond
the first (naive Bayes over modalities: the views are taken to be independent given the class):
``product-svm`` is ``multimoe.blend.Product``, the third member of ``model.blend=hgb+svm`` (RBF machines, C = 10),
alone; ``product-logreg`` the same product of L2 logistic regressions (C = 0.1). Nothing is chosen on the test
split: the classifiers' settings are fixed.

The product's test metric (the sweep's primary one) is compared, seed by seed, with ``hgb`` refit here and with the
``multimoe-blend`` cells in results/cells.jsonl (paired 95 % t intervals, as the bench; ``multimoe-blend-svm``'s
cells are listed too). ``hgb`` refit here must equal its stored cell, which checks that the data are the cells'.

    python benchmarks/per_view.py --datasets mfeat --out results/per_view   # from the repository's root; ~10 min
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from multimoe.baselines import HGB
from multimoe.bench.stats import MARK, mean_ci, paired, primary_metric
from multimoe.bench.sweep import load_sweep, yaml_scalar
from multimoe.blend import Product
from multimoe.data.dataset import MultimodalData, Splits
from multimoe.data.prepare import prepare
from multimoe.data.table import build_table
from multimoe.evaluate import classification_metrics
from multimoe.registry import load_config

SWEEP = "configs/sweeps/accuracy.yaml"
METHODS = ("product-logreg", "product-svm")
STORED = ("multimoe-blend", "multimoe-blend-svm")  # read from the sweep's stored cells


def product_of_modalities(splits: Splits, make) -> dict[str, np.ndarray]:
    """Class probabilities of the val and test splits: the product over each sample's modalities of one classifier
    per modality (fit on the training rows that have it), over the training prior to the power (modalities - 1)."""
    train = splits.train
    C = train.schema.num_classes
    prior_C = np.bincount(train.labels_N.numpy(), minlength=C) / len(train)
    out = {name: np.tile(np.log(prior_C), (len(d), 1)) for name, d in (("val", splits.val), ("test", splits.test))}
    for m, modality in enumerate(train.schema.modalities):
        has = train.present_NM[:, m].numpy()
        clf = make().fit(features(train, modality)[has], train.labels_N.numpy()[has])
        for name, data in (("val", splits.val), ("test", splits.test)):
            probs = np.full((len(data), C), 1e-6)
            probs[:, clf.classes_] = np.clip(clf.predict_proba(features(data, modality)), 1e-6, None)
            here = data.present_NM[:, m].numpy()
            out[name][here] += (np.log(probs) - np.log(prior_C))[here]
    for name, logp in out.items():
        p = np.exp(logp - logp.max(axis=1, keepdims=True))
        out[name] = p / p.sum(axis=1, keepdims=True)
    return out


def features(data: MultimodalData, modality: str) -> np.ndarray:
    """A modality's standardised columns, 0 (the training mean) in missing cells (the logreg preset's inputs)."""
    x = data.values[modality].numpy().astype(np.float64, copy=True)
    x[data.cell_missing[modality].numpy()] = 0.0
    return x


def stored_cells(path: Path, sweep) -> dict[tuple[str, str, int], float]:
    """(method, point label, seed) -> the test metric of the accuracy sweep's stored cells (matched by cell key)."""
    planned = {c["key"]: c for c in sweep.cells() if c["method"] in ("hgb", *STORED)}
    cells = {}
    for line in path.read_text().splitlines():
        c = json.loads(line)
        if c.get("status") == "ok" and c["key"] in planned:
            cell = planned[c["key"]]
            cells[(cell["method"], label(cell["point"]), cell["seed"])] = c["test"][primary_metric(c["classes"])]
    return cells


def label(point: dict) -> str:
    return f"{point['data.name']} {point['data.missing']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/per_view")
    parser.add_argument("--cells", default="results/cells.jsonl")
    parser.add_argument("--datasets", nargs="+", help="only these datasets' points (default: all)")
    args = parser.parse_args(argv)
    sweep = load_sweep(SWEEP)
    stored = stored_cells(Path(args.cells), sweep)
    rows, scores = [], {}
    for point in [p for p in sweep.grid if not args.datasets or p["data.name"] in args.datasets]:
        where = label(point)
        for seed in sweep.seeds:
            preset, over = sweep.cell_overrides({"method": "hgb", "point": point, "seed": seed})
            cfg = load_config(preset, [f"{k}={yaml_scalar(v)}" for k, v in over.items()])
            splits = prepare(build_table(cfg.data), cfg.data, seed)
            metric = primary_metric(splits.schema.num_classes)
            labels = splits.test.labels_N.numpy()
            hgb = HGB(cfg.model, seed).fit(splits.train).predict(splits.test).probs_NC
            scores[("hgb", where, seed)] = classification_metrics(labels, hgb)[metric]
            if ("hgb", where, seed) in stored and not math.isclose(
                scores[("hgb", where, seed)], stored[("hgb", where, seed)], abs_tol=1e-9
            ):
                raise SystemExit(f"{where} seed {seed}: hgb refit here differs from its stored cell: not the same data")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # convergence notes of a few logistic fits on 1-sample classes
                logreg = product_of_modalities(splits, lambda: LogisticRegression(C=0.1, max_iter=5000))["test"]
                scores[("product-logreg", where, seed)] = classification_metrics(labels, logreg)[metric]
                machines = Product(splits.schema).fit(splits.train, seed)
                with torch.no_grad():
                    svm = torch.cat([machines(b) for b in splits.test.batches(512)]).numpy()
                scores[("product-svm", where, seed)] = classification_metrics(labels, svm)[metric]
            print(f"{where} seed {seed}: " + ", ".join(f"{k[0]} {v:.3f}" for k, v in scores.items()
                                                        if k[1:] == (where, seed)), flush=True)  # fmt: skip
        for method in ("hgb", *METHODS, *STORED):
            source = stored if method in STORED else scores
            by_seed = {s: source[(method, where, s)] for s in sweep.seeds if (method, where, s) in source}
            if not by_seed:  # no stored cells of that method (yet)
                continue
            row = {"point": where, "metric": metric, "method": method, **mean_ci(by_seed.values())}
            for ref in ("hgb", "multimoe-blend"):
                if method != ref:
                    ref_source = stored if ref in STORED else scores
                    ref_seeds = {s: ref_source[(ref, where, s)] for s in sweep.seeds if (ref, where, s) in ref_source}
                    row[f"vs {ref}"] = paired(by_seed, ref_seeds)
            rows.append(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "README.md").write_text(table(rows))
    print(table(rows))
    return 0


def table(rows: list[dict]) -> str:
    def vs(row: dict, ref: str) -> str:
        p = row.get(f"vs {ref}")
        if not p or p["diff"] is None:
            return ""
        return f"{p['diff']:+.3f} [{p['diff_low']:+.3f}, {p['diff_high']:+.3f}] {MARK[p['verdict']]}"

    lines = [
        "# A product of per-modality classifiers on the accuracy sweep's cells",
        "",
        "`python benchmarks/per_view.py --out results/per_view` (the script's docstring says what it fits). Test",
        "metric (accuracy; AUC on support2), mean over 5 seeds, and the paired difference from `hgb` and from",
        "`multimoe-blend` (its stored cells) with 95 % t intervals.",
        "",
        "| point | method | mean | vs `hgb` | vs `multimoe-blend` |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['point']} | {r['method']} | {r['mean']:.3f} | {vs(r, 'hgb')} | {vs(r, 'multimoe-blend')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
