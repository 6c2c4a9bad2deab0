import pytest
import torch
from threadpoolctl import threadpool_limits

from multimoe.config import Config, load_config
from multimoe.data import DATASETS

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
    info = DATASETS[name]
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
