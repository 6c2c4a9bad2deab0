"""The open registries: the names a config may give for encoders, fills, routers, model architectures and datasets.

Each registry maps a config key's value to ``module:attribute``, imported only when built, so that listing and
checking names (``multimoe list``, ``load_config``) loads no torch (timm's ``list_models`` style). Add your own
component with ``ROUTERS.register("mine", MyRouter, "what it does")``: it is then valid in configs and buildable.
Closed choices (router layouts, optimizers, ...) are ``Literal`` types in ``config.py`` instead.

``load_config`` reads a config (``config.read_config``: keys, types, closed choices, ranges) and checks every
open-registry name right after loading (``check``). Imports only ``config``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multimoe.config import Config, ConfigError, read_config


@dataclass
class Entry:
    target: Any  # "module:attribute", or the object itself (registered from Python)
    summary: str  # one line for `multimoe list`
    kind: str = ""  # for architectures: "neural" (a torch module) or "baseline" (a scikit-learn model)

    def load(self) -> Any:
        if isinstance(self.target, str):
            module, _, attr = self.target.partition(":")
            self.target = getattr(importlib.import_module(module), attr)
        return self.target


@dataclass
class Registry:
    key: str  # the config key whose value names an entry
    what: str  # plural noun for messages
    entries: dict[str, Entry] = field(default_factory=dict)

    def names(self) -> list[str]:
        return list(self.entries)

    def check(self, name: str, kind: str | None = None, key: str | None = None) -> Entry:
        """The entry of ``name``, or a ConfigError listing the valid names (those of ``kind`` when given) under the
        config key ``key`` (default: the registry's)."""
        valid = [n for n, e in self.entries.items() if kind is None or e.kind == kind]
        if name not in valid:
            other = f" ({name!r} is for {self.entries[name].kind} inputs)" if name in self.entries else ""
            raise ConfigError(f"{key or self.key}={name!r} is not valid{other}; choose one of: {', '.join(valid)}")
        return self.entries[name]

    def get(self, name: str) -> Any:
        return self.check(name).load()

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """The entry of ``name`` called with the arguments (a class: an instance)."""
        return self.get(name)(*args, **kwargs)

    def register(self, name: str, target: Any, summary: str = "", kind: str = "") -> None:
        if name in self.entries:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self.entries[name] = Entry(target, summary, kind)

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)


ENCODERS = Registry("model.encoder.kind", "encoders", {  # kind: the modality kind read (embeddings: table encoders)
    "patch_linear": Entry("multimoe.encoders:PatchLinear", "Flex-MoE's tabular encoder: P chunks, one linear map",
                          "table"),
    "mlp": Entry("multimoe.encoders:MLPEncoder", "two-layer MLP from the whole feature vector to P tokens", "table"),
    "periodic_mlp": Entry("multimoe.encoders:PeriodicMLPEncoder",
                          "the mlp on per-feature periodic embeddings (PLR, Gorishniy et al. 2022)", "table"),
    "mtand": Entry("multimoe.series_encoders:MTAND", "multi-time attention from P reference times (mTAND, FuseMoE)",
                   "series"),
    "series_conv": Entry("multimoe.series_encoders:SeriesConv",
                         "1D CNN over values, masks and step times, plus each segment's statistics", "series"),
    "cnn": Entry("multimoe.image_encoders:ImageCNN", "small CNN trained here, 2D or 3D, pooled to P cells", "image"),
    "timm": Entry("multimoe.image_encoders:TimmBackbone", "a timm model with local weights (multimoe[vision])",
                  "image"),
    "hashed_bag": Entry("multimoe.text_encoders:HashedBag", "bag of hashed word n-grams (fastText), MLP to P tokens",
                        "text"),
    "hf": Entry("multimoe.text_encoders:HFText", "a local Hugging Face model (multimoe[text]; not in this build)",
                "text"),
})  # fmt: skip
FILLS = Registry("model.fill", "missing-modality fills", {
    "bank": Entry("multimoe.missing:BankFill", "Flex-MoE's bank: one learned block per (combination, modality)"),
    "token": Entry("multimoe.missing:TokenFill", "one learned block per modality (a missing indicator)"),
    "zero": Entry("multimoe.missing:ZeroFill", "zeros (FuseMoE's public code)"),
    "additive": Entry("multimoe.missing:AdditiveFill", "a bank that scales as M^2: token + embeddings of the observed"),
})  # fmt: skip
ROUTERS = Registry("model.moe.router.kind", "routers", {
    "softmax_topk": Entry("multimoe.routers:SoftmaxTopK", "linear scores, top-k, softmax over the k chosen"),
    "noisy_topk": Entry("multimoe.routers:NoisyTopK", "noisy top-k gating (Shazeer 2017; Flex-MoE's gate)"),
    "laplace": Entry("multimoe.routers:LaplaceTopK", "FuseMoE's Laplace gate: score -||x - w_e||"),
    "gaussian": Entry("multimoe.routers:GaussianTopK", "FuseMoE's Gaussian gate: score -||x - w_e||^2"),
})  # fmt: skip
ARCHS = Registry("model.arch", "model architectures", {
    "fusion": Entry("multimoe.model:MultimodalMoE", "encoders, fill, attention + MoE or dense fusion, head", "neural"),
    "late_fusion": Entry("multimoe.model:LateFusion", "one classifier per modality, probabilities averaged", "neural"),
    "i2moe": Entry("multimoe.i2moe:I2MoE", "I2MoE: M + 2 interaction experts, reweighting MLP, interaction losses",
                   "neural"),
    "confsmoe": Entry("multimoe.confsmoe:ConfSMoE", "Conf-SMoE: confidence-weighted top-k experts, 2-stage imputation",
                      "neural"),
    "moe_retriever": Entry("multimoe.retriever:MoERetriever", "MoE-Retriever: missing modalities retrieved by a sparse "
                           "MoE from training samples", "neural"),
    "logreg": Entry("multimoe.baselines:LogReg", "mean-imputed standardised logistic regression", "baseline"),
    "hgb": Entry("multimoe.baselines:HGB", "histogram gradient boosting, NaN for missing values", "baseline"),
})  # fmt: skip
DATASETS = Registry("data.name", "datasets", {
    "mfeat": Entry("multimoe.data.mfeat:DATASET", "UCI handwritten digits, 6 feature views"),
    "support2": Entry("multimoe.data.support2:DATASET", "SUPPORT2 hospital mortality, 5 medical modalities"),
    "landsat": Entry("multimoe.data.landsat:DATASET", "Statlog Landsat, 4 spectral bands"),
    "synthetic": Entry("multimoe.data.synthetic:DATASET", "generated; labels need several modalities (synthetic)"),
    "hapt": Entry("multimoe.data.hapt:DATASET", "UCI HAPT smartphone signals: accelerometer, gyroscope (series)"),
    "mfeat-image": Entry("multimoe.data.mfeat_image:DATASET", "UCI handwritten digits: pix as a 16x15 image + 5 views"),
})  # fmt: skip

REGISTRIES = {"encoders": ENCODERS, "fills": FILLS, "routers": ROUTERS, "archs": ARCHS, "datasets": DATASETS}


def is_baseline(arch: str) -> bool:
    """Whether ``model.arch`` names a scikit-learn baseline (no torch module, no checkpoint)."""
    return ARCHS.check(arch).kind == "baseline"


def check(cfg: Config) -> Config:
    """Check every open-registry name in ``cfg`` (ConfigError listing the valid names); returns ``cfg``."""
    if cfg.data.spec is None:
        DATASETS.check(cfg.data.name)
    ARCHS.check(cfg.model.arch)
    ENCODERS.check(cfg.model.encoder.kind, "table")
    for kind in ("series", "image", "text"):  # model.encoder.series / .image / .text: encoders of that kind only
        ENCODERS.check(getattr(cfg.model.encoder, kind), kind, key=f"model.encoder.{kind}")
    FILLS.check(cfg.model.fill)
    ROUTERS.check(cfg.model.moe.router.kind)
    if cfg.model.members > 1 and is_baseline(cfg.model.arch):
        raise ConfigError(
            f"model.members={cfg.model.members} makes an ensemble of a neural model; model.arch={cfg.model.arch} is "
            "a scikit-learn baseline (set model.members=1)"
        )
    if cfg.model.blend != "none" and is_baseline(cfg.model.arch):
        raise ConfigError(
            f"model.blend={cfg.model.blend} blends a neural model with gradient boosting; model.arch={cfg.model.arch} "
            "is a scikit-learn baseline (set model.blend=none)"
        )
    if cfg.model.blend_pool != "linear" and cfg.model.blend == "none":
        raise ConfigError(
            f"model.blend_pool={cfg.model.blend_pool} pools a blend's members; this model has none (set model.blend)"
        )
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Load a YAML preset (or the defaults when ``path`` is None), apply overrides, check everything."""
    return check(read_config(path, overrides))


def presets_dir() -> Path | None:
    """The presets folder: ``configs/`` in the working directory, else the one beside the package's source."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (root / "configs").is_dir():
            return root / "configs"
    return None


def presets() -> dict[str, str]:
    """Preset name -> the first line of its header comment."""
    folder = presets_dir()
    out = {}
    for path in sorted(folder.glob("*.yaml")) if folder else []:
        first = next((line for line in path.read_text().splitlines() if line.startswith("#")), "#")
        out[path.stem] = first.lstrip("# ").strip()
    return out
