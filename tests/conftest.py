import numpy as np
import pandas as pd
import pytest
import torch
from threadpoolctl import threadpool_limits

from multimoe.config import Config
from multimoe.data.table import Table
from multimoe.registry import DATASETS, load_config

# one thread for torch and for the BLAS/OpenMP pools: the tests' tensors are tiny, and on a shared 2-core machine
# extra threads spin against other jobs (a 3-run determinism test: 57 s with two threads under load, 2.6 s with one;
# scikit-learn's gradient boosting: 127 s vs 1.2 s)
torch.set_num_threads(1)
threadpool_limits(1)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def needs_package(name: str):
    """Skip (saying why and how to install) when a built-in dataset's package is absent."""
    info = DATASETS.get(name)
    return pytest.mark.skipif(
        not info.installed, reason=f"dataset {name} needs {info.package}=={info.version}: {info.install}"
    )


def tiny_config(tmp_path, *overrides: str) -> Config:
    """A fast synthetic config for end-to-end tests."""
    base = [
        f"out_dir={tmp_path}",
        "data.synthetic.modalities=3",
        "data.synthetic.features=8",
        "data.synthetic.samples=240",
        "data.synthetic.classes=4",
        "data.missing=mcar:0.3",
        "model.dim=16",
        "model.tokens=2",
        "model.heads=2",
        "model.dropout=0.0",
        "model.moe.hidden=16",
        "model.moe.router.top_k=2",
        "train.epochs=3",
        "train.warmup_epochs=1",
        "train.batch_size=32",
        "train.lr=3e-3",
        "train.progress=false",
    ]
    return load_config(None, base + list(overrides))


TINY_SWEEP = """
name: tiny
seeds: [0, 1]
reference: flexmoe
budget: tiny models, 2 epochs
common: {data.synthetic.samples: 200, data.synthetic.modalities: 2, data.synthetic.features: 6, model.dim: 8,
         model.tokens: 2, model.heads: 2, model.moe.hidden: 8, model.moe.router.top_k: 2, train.epochs: 2,
         train.batch_size: 32, train.lr: 3.0e-3}
methods:
  flexmoe: {preset: PRESETS/flexmoe.yaml}
  logreg: PRESETS/logreg.yaml
grid:
  - {data.name: synthetic, data.missing: "mcar:0.3"}
per_combination: true
"""


@pytest.fixture
def sweep_file(tmp_path, request):
    presets = request.config.rootpath / "configs"
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SWEEP.replace("PRESETS", str(presets)))
    return path


def frame_table(n=200, seed=0) -> Table:
    """A small user table: modality a (numeric, with missing cells), modality b (numeric + categorical, absent in
    10 rows), a binary label."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "a1": rng.normal(5, 2, n),
            "a2": rng.normal(size=n),
            "b1": rng.normal(size=n),
            "color": rng.choice(["red", "green", "blue"], n),
            "y": rng.integers(0, 2, n),
        }
    )
    df.loc[:9, ["b1", "color"]] = np.nan  # modality b absent in 10 rows
    df.loc[10:19, "a2"] = np.nan  # missing cells inside observed modality a
    return Table.from_frame(df, label="y", modalities={"a": ["a1", "a2"], "b": ["b1", "color"]}, categorical=["color"])


@pytest.fixture(params=["numpy", "torch"])
def plans(request, monkeypatch):
    """Dispatch plans computed with numpy (CPU's default) or with torch (other devices' code, here on CPU)."""
    from multimoe import dispatch

    monkeypatch.setattr(dispatch, "_HOST_PLANS", request.param == "numpy")
    return request.param


KINDS_SPEC = """path: table.csv
label: y
modalities:
  lab: [a1]
  scan: {kind: image, column: scan, root: images}
  notes: {kind: text, column: note, buckets: 64}
  emb: {kind: embedding, file: emb.npy}
  vitals: {kind: series, table: vitals.csv, id: pid, time: t, channel: ch, value: v}
"""
KIND_OF = {"lab": "table", "scan": "image", "notes": "text", "emb": "embedding", "vitals": "series"}


def lab_absent(i: np.ndarray) -> np.ndarray:
    """Rows of ``write_kinds_table`` whose ``lab`` column is empty: i % 3 == 0 where every other kind is present."""
    return (i % 3 == 0) & (i % 5 != 1) & (i % 7 != 2) & (i % 4 != 3) & (i % 6 != 4)


def write_kinds_table(folder, n: int = 60, seed: int = 0, spec: str = KINDS_SPEC):
    """A table with a modality of every kind, each missing in some rows, from generated files: ``lab`` (a column),
    ``scan`` (8 x 8 grey PNG files in images/; an empty path in rows i % 5 == 1), ``notes`` (text; empty in rows
    i % 7 == 2), ``emb`` (emb.npy, 4 features; all NaN in rows i % 4 == 3, one NaN cell in row 0), ``vitals`` (a
    long table with irregular times, channels hr and sbp, 2-6 observations; none for rows i % 6 == 4), ``lab``
    empty in rows i % 3 == 0 that have every other kind (``lab_absent``: ``lab`` and any one kind is never empty).
    Labels 0-2 shift every kind's values. Returns the spec's path."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    i = np.arange(n)
    y = i % 3
    paths = []
    for k in range(n):
        if k % 5 == 1:
            paths.append("")
            continue
        pixels = np.clip(60 * y[k] + rng.normal(60, 20, (8, 8)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / "images" / f"im{k}.png")
        paths.append(f"im{k}.png")
    words = np.array(["calm", "fever", "cough"])
    notes = ["" if k % 7 == 2 else f"patient {words[y[k]]} {words[rng.integers(3)]} seen today" for k in range(n)]
    frame = pd.DataFrame({"pid": [f"p{k:03d}" for k in i], "a1": y + rng.normal(0, 0.5, n), "scan": paths,
                          "note": notes, "y": y})  # fmt: skip
    frame.loc[lab_absent(i), "a1"] = np.nan
    frame.to_csv(folder / "table.csv", index=False)
    emb = (y[:, None] + rng.normal(size=(n, 4))).astype(np.float32)
    emb[i % 4 == 3] = np.nan
    emb[0, 1] = np.nan
    np.save(folder / "emb.npy", emb)
    lines = []
    for k in range(n):
        if k % 6 == 4:
            continue
        times = np.sort(rng.choice(np.arange(0.0, 20.0, 0.5), size=rng.integers(2, 7), replace=False))
        for t in times:
            lines.append((f"p{k:03d}", t, "hr", 70 + 10 * y[k] + rng.normal()))
            if rng.random() < 0.6:  # sbp is observed at some of the times only
                lines.append((f"p{k:03d}", t, "sbp", 120 - 5 * y[k] + rng.normal()))
    pd.DataFrame(lines, columns=["pid", "t", "ch", "v"]).to_csv(folder / "vitals.csv", index=False)
    (folder / "spec.yaml").write_text(spec)
    return folder / "spec.yaml"


KINDS_TINY = ["model.dim=8", "model.tokens=2", "model.heads=2", "model.moe.hidden=8", "model.moe.router.top_k=2",
              "model.encoder.hidden=8", "model.dense_hidden=16", "train.epochs=1", "train.batch_size=16",
              "train.progress=false", "data.missing=mcar:0.2"]  # fmt: skip
