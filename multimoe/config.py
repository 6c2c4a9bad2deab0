"""Configuration: nested dataclasses whose defaults run, YAML presets, dotted overrides, strict loading.

A preset (``configs/*.yaml``) names only what differs from the defaults. Command-line overrides are ``key=value``
pairs with dotted keys (``model.moe.router.top_k=2``); values are parsed as YAML scalars. Unknown keys, wrong types
and values outside a closed choice (a ``Literal``) fail here, at load, with the valid choices listed. The open
registries (encoders, fills, routers, model architectures, datasets: users may add their own) are checked right
after loading by ``multimoe.registry``, which is what ``multimoe.load_config`` does.

This module is the bottom of the package: it imports nothing from multimoe.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration that cannot run: the message says which key and what is valid."""


@dataclass
class SyntheticConfig:
    modalities: int = 4  # number of generated modalities
    features: int = 16  # features per modality
    samples: int = 1200  # rows
    classes: int = 4  # label classes
    noise: float = 1.0  # observation noise; higher makes every single modality less informative


@dataclass
class DataConfig:
    name: str = "synthetic"  # built-in dataset (registry; `multimoe list datasets`); ignored when `spec` is set
    spec: str | None = None  # YAML file describing the user's own table (path, label, modalities, categorical)
    missing: str = "natural"  # missingness protocol: natural | mcar:R | cpm:R (R in [0, 1)); see parse_missing
    label: str | None = None  # label column for datasets that offer several (support2: hospdead | death | dzclass)
    scaler: Literal["standard", "quantile"] = "standard"  # numeric scaling fit on the training split
    # train/validation/test split: stratified (rows, by class) | group (whole groups of the table's group column,
    # e.g. hapt's users: no person on both sides) | auto (group when the table names a group column, else stratified)
    split: Literal["auto", "stratified", "group"] = "auto"
    val_fraction: float = 0.15  # stratified validation share
    test_fraction: float = 0.15  # stratified test share
    # keep only the samples with every modality present, in train, validation and test, after the protocol (I2MoE's
    # published complete-case protocol, its scripts' --use_common_ids True): test metrics are then on that subset
    complete_cases: bool = False
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # generator settings (data.name=synthetic)


@dataclass
class PeriodicConfig:
    """The periodic numerical embedding of the ``periodic_mlp`` encoder (Gorishniy et al. 2022, PLR)."""

    frequencies: int = 16  # k: cosines and sines per feature
    scale: float = 0.1  # sigma: the trained frequencies start from N(0, sigma^2) (features are standardised)
    width: int = 16  # d: each feature's embedding width (its own linear map 2k -> d, then ReLU)


@dataclass
class EncoderConfig:
    kind: str = "patch_linear"  # encoder of table and embedding modalities (registry): patch_linear (Flex-MoE) | mlp
    # | periodic_mlp (the mlp on per-feature periodic embeddings)
    hidden: int = 256  # hidden width of the mlp encoder (and of the hashed-bag text encoder's MLP)
    cell_mask: bool = False  # append the within-modality missing-cell mask to the encoder input
    series: str = "mtand"  # encoder of series modalities (registry, kind series): mtand | series_conv
    image: str = "cnn"  # encoder of image modalities (registry, kind image): cnn | timm
    text: str = "hashed_bag"  # encoder of text modalities (registry, kind text): hashed_bag
    periodic: PeriodicConfig = field(default_factory=PeriodicConfig)  # the periodic_mlp encoder's embedding


@dataclass
class RouterConfig:
    kind: str = "noisy_topk"  # scorer (registry): softmax_topk | noisy_topk (Shazeer 2017) | laplace | gaussian
    layout: Literal["joint", "per_modality", "disjoint"] = "joint"  # one router | one per modality | + a pool each
    top_k: int = 4  # experts per token (1 <= top_k <= experts in a pool; checked once the expert count is resolved)


@dataclass
class GateLossConfig:
    supervision: Literal["combination", "balance", "entropy", "none"] = "combination"  # Flex-MoE | cv² | FuseMoE
    balance_exclude: Literal["own", "expert0"] = "own"  # S-router balance excludes: own (paper) | expert0 (code)
    combination_map: Literal["identity", "modulo"] = "identity"  # combination -> expert; identity needs 2^M-1 experts


@dataclass
class MoEConfig:
    num_experts: int = 16  # experts (per modality with layout=disjoint); see multimoe.model.resolve
    hidden: int = 256  # expert hidden width
    router: RouterConfig = field(default_factory=RouterConfig)
    gate_loss: GateLossConfig = field(default_factory=GateLossConfig)  # router losses (weight: train.gate_loss_weight)
    capacity_factor: float = 0.0  # cap each expert at ceil(factor*T*top_k/E) (token, slot) pairs; 0: dropless
    # when Flex-MoE's identity map needs more experts than num_experts: 2^M-1 | 2^M (the count the public code was
    # run with here; below 2^M-1 its cross-entropy target overflows: moe_module.py AddtionalNoisyGate.forward)
    grow_experts: Literal["combinations", "power_of_two"] = "combinations"
    # expert and gate init: torch (nn.Linear's) | fastmoe (the public code's library: FMoELinear.reset_parameters
    # U(+-1/sqrt(in*out)) with zero biases, NoisyGate.reset_parameters U(+-1/sqrt(E)))
    init: Literal["torch", "fastmoe"] = "torch"
    # under torchrun: shard the experts across the processes, tokens exchanged by all_to_all
    # (multimoe/expert_parallel.py); outputs and gradients equal the one-process layer's; ignored in one process
    expert_parallel: bool = False


@dataclass
class I2MoEConfig:  # model.arch=i2moe (multimoe/i2moe.py); the interaction loss weight is train.gate_loss_weight
    temperature: float = 1.0  # T_rw: interaction weights = softmax(reweighting logits / T_rw)
    reweight_hidden: int = 256  # hidden width of the reweighting MLP
    reweight_layers: int = 3  # linear layers of the reweighting MLP (ReLU and dropout 0.5 between them)
    perturbed: int = 0  # modalities perturbed per training step: 0 all (the method) | k drawn per step (its ablation)


@dataclass
class ConfSMoEConfig:  # model.arch=confsmoe (multimoe/confsmoe.py); experts and router: model.moe
    router: Literal["trained", "frozen"] = "trained"  # trained (the paper's intent) | frozen (its code: no gradient)
    confidence: Literal["token", "expert_mean"] = "token"  # per token | mean per expert and modality in the batch
    pre_impute: int = 10  # training rows whose inputs are averaged to pre-impute a missing (sample, modality)


@dataclass
class RetrieverConfig:  # model.arch=moe_retriever (multimoe/retriever.py)
    candidates: int = 8  # retriever experts per modality
    shared: int = 4  # retriever experts shared by all modalities
    top_k: int = 4  # retriever experts per token (noisy top-k among the target modality's and the shared ones)
    hidden: int = 256  # hidden width of a retriever expert
    output: Literal["retrieved", "input_mean"] = "retrieved"  # the retriever's output | its code's mean of inputs
    inter_weight: float = 0.5  # share of the sample's own (inter-modal) inputs in the retrieved embedding
    warmup_epochs: int = 5  # first epochs with zeros for missing modalities and the retriever off
    short_support: Literal["replace", "relax"] = (
        "replace"  # fewer than |O| support rows: draw with replacement | relax O
    )


@dataclass
class ModelConfig:
    arch: str = "fusion"  # registry: fusion | late_fusion | i2moe | confsmoe | moe_retriever (neural) | logreg | hgb
    dim: int = 128  # token width D
    tokens: int = 16  # tokens per modality P
    heads: int = 4  # attention heads
    layers: int = 1  # fusion layers
    dropout: float = 0.5  # dropout on attention probabilities and on both residual branches
    # x + attn(LN(x)) | false: a + dropout(a), a = attn(LN(x)) (public code: models.py TransformerEncoderLayer.forward)
    attn_residual: bool = True
    attn_out_dropout: bool = False  # dropout on the attention's output projection too (models.py Attention proj_drop)
    ffn: Literal["moe", "dense"] = "moe"  # fusion feed-forward
    dense_hidden: int = 1024  # hidden width of the dense feed-forward (1024: Flex-MoE's active top-4 x 256)
    fill: str = "bank"  # missing-modality fill (registry): bank (Flex-MoE) | token | zero | additive
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    i2moe: I2MoEConfig = field(default_factory=I2MoEConfig)
    confsmoe: ConfSMoEConfig = field(default_factory=ConfSMoEConfig)
    retriever: RetrieverConfig = field(default_factory=RetrieverConfig)
    pool_rows: int = 0  # training rows a model keeps to draw from (confsmoe, moe_retriever): set from the data
    # independently initialised copies of the architecture trained side by side on the same batches, each on its own
    # cross-entropy; the model predicts their mean class probabilities (a deep ensemble in one model: multimoe/model.py
    # Ensemble). 1: the architecture alone
    members: int = 1
    # none | hgb: blend the trained network's class probabilities with histogram gradient boosting's, fit on the
    # training split, with the network's weight chosen on validation log loss (multimoe/blend.py) | hgb+svm: and with
    # a product of per-modality RBF support-vector machines, the three weights chosen on validation log loss
    blend: Literal["none", "hgb", "hgb+svm"] = "none"
    # how the blend's members are pooled with the weights chosen on validation: linear (the weighted mean of their
    # class probabilities) | geometric (the normalised weighted geometric mean: a weighted product of experts)
    blend_pool: Literal["linear", "geometric"] = "linear"
    logreg_c: float = 0.1  # logreg: inverse L2 strength (DATASETS.md's baseline uses 0.1)
    hgb_max_iter: int = 100  # hgb: boosting rounds
    # what logreg and hgb read of a series modality: none (refused: they take no raw signals) | summary (per-channel
    # statistics of each window: multimoe.baselines.SUMMARY) | flatten (every channel's value at every step)
    baseline_series: Literal["none", "summary", "flatten"] = "none"
    baseline_image: Literal["none", "flatten"] = "none"  # ... of an image modality: none (refused) | flatten (pixels)


@dataclass
class TrainConfig:
    epochs: int = 50  # training epochs
    warmup_epochs: int = 5  # curriculum epochs with a sorted, unshuffled training set
    order: Literal["descending", "ascending", "random"] = "descending"  # warm-up sort by observed modalities
    # warm-up order among equal counts: stable | seeded (a seeded stand-in for the public code's string-hash order:
    # data.py load_and_preprocess_data's list(set(ids)), then MultiModalDataset's stable sorted())
    order_ties: Literal["stable", "seeded"] = "stable"
    batch_size: int = 8  # training batch size
    eval_batch_size: int = 64  # batch size for validation and test (result-neutral: evaluate.EVAL_BATCH_SIZE)
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-4  # learning rate
    weight_decay: float = 0.0  # weight decay
    gate_loss_weight: float = 0.01  # weight of the router losses in the total loss
    # cross-entropy class weights: none | code ([0.25, 0.75] on binary tasks: main.py train_and_evaluate's criterion
    # for every dataset but ADNI; plain with more classes, where the code's two weights cannot apply)
    class_weights: Literal["none", "code"] = "none"
    # add the validation pass's summed gate loss to the next epoch's first training loss, as the public code's gate
    # keeps it (AddtionalNoisyGate.set_loss accumulates, FlexMoE.gate_loss clears); a constant: no gradient
    carry_val_gate_loss: bool = False
    modality_dropout: float = 0.0  # hide each present modality of a training sample with this probability (keeps one)
    grad_clip: float = 0.0  # gradient norm clip (0: off)
    select: Literal["accuracy", "f1", "auc", "loss"] = "accuracy"  # validation metric of the best checkpoint
    patience: int = 0  # early stopping after this many epochs without improvement (0: off)
    device: str = "cpu"  # cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads (0: torch's default)
    # data-loader worker processes that build batches of series, image, text and embedding modalities (images are
    # decoded there, from disk); 0: in the training process. Tabular data always batches in-process.
    workers: int = 0
    compile: bool = False  # torch.compile the model's forward (training and evaluation); the MoE engine stays eager
    progress: bool = True  # show a progress bar on stderr
    dist_timeout: float = 300.0  # under torchrun: seconds a collective may wait for the other processes, then fail
    resume: str | None = None  # run folder to continue from its last completed epoch (same config; runs/resume.py)


@dataclass
class Config:
    seed: int = 0  # one seed drives the split, the missingness masks, initialisation and batch order
    name: str = ""  # run name (default: method-dataset-protocol-seed)
    method: str = "custom"  # label of the preset this config came from, carried into results
    out_dir: str = "runs"  # where run folders are written
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------------------------------------------------------
# Loading


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int, float, bool, str, Literal, X | None, a dataclass)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(choices)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {sorted(_field_types(tp))}, got {value!r}")
        return _build(tp, value, key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-3" (no dot) as text
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    else:  # pragma: no cover - only the annotations above are used
        raise ConfigError(f"{key}: unsupported annotation {tp}")
    raise ConfigError(f"{key}: expected {getattr(tp, '__name__', tp)}, got {value!r} ({type(value).__name__})")


def all_keys(cls: type | None = None, prefix: str = "") -> list[str]:
    """Every dotted key of the config tree, sections included (``model``, ``model.moe``, ``model.moe.hidden``)."""
    out = []
    for name, tp in _field_types(cls or Config).items():
        out.append(prefix + name)
        if dataclasses.is_dataclass(tp):
            out.extend(all_keys(tp, prefix + name + "."))
    return out


def _suggest(key: str) -> str:
    """' (did you mean model.moe.router.top_k?)' for a key that sits elsewhere in the tree or is misspelt."""
    keys = all_keys()
    section, _, last = key.rpartition(".")
    names = {k.rsplit(".", 1)[-1] for k in keys}
    close = difflib.get_close_matches(last, names, n=1, cutoff=0.75)
    if not close:
        return ""
    found = [k for k in keys if k.rsplit(".", 1)[-1] == close[0]]
    found.sort(key=lambda k: (not k.startswith(section), len(k)))  # prefer the key's own section
    return f" (did you mean {found[0]}?)"


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    types_ = _field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise ConfigError(
            f"unknown config key {key}{_suggest(key)}; valid keys under '{prefix or '<top>'}': {', '.join(types_)}"
        )
    kwargs = {k: _coerce(v, types_[k], prefix + k) for k, v in values.items()}
    return cls(**kwargs)


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: '{p}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> dict:
    """``["a.b=1", "c=mcar:0.3"]`` -> nested dict with YAML-parsed scalar values."""
    tree: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value (e.g. model.moe.router.top_k=2)")
        key, raw = item.split("=", 1)
        try:
            value = load_yaml(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, key.strip(), value)
    return tree


def merge(base: dict, over: dict) -> dict:
    """``over`` laid over ``base``, section by section."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_from_dict(values: dict) -> Config:
    """Build and validate a Config from a nested dict (unknown keys and bad values raise ConfigError)."""
    cfg = _build(Config, values or {})
    validate(cfg)
    return cfg


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key repeated in one mapping is an error (PyYAML keeps the last one
    silently: a spec listing a modality twice would lose the first list of columns)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in seen:
                line = key_node.start_mark.line + 1
                raise yaml.constructor.ConstructorError(problem=f"duplicate key {key!r} (line {line}); keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """Parse YAML safely, refusing duplicate keys (raises ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=_StrictLoader)


def read_preset(path: str | Path, _seen: tuple = ()) -> dict:
    """A preset's values; a top-level ``base: other.yaml`` (relative to the file) is loaded first and overlaid."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (presets live in configs/)")
    if path.resolve() in _seen:
        raise ConfigError(f"config file {path} inherits from itself through 'base'")
    try:
        values = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    base = values.pop("base", None)
    if base is not None:
        values = merge(read_preset(path.parent / str(base), (*_seen, path.resolve())), values)
    return values


def read_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
    """A YAML preset (or the defaults when ``path`` is None) with overrides, checked for keys, types, closed
    choices and ranges. ``multimoe.load_config`` also checks the names of the open registries."""
    values: dict = read_preset(path) if path is not None else {}
    if overrides:
        over = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        values = merge(values, over)
    return config_from_dict(values)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


# Keys added after run folders and benchmark cells were written, each defaulting to the behaviour from before it
# existed (the public code's switches, configs/flexmoe-code.yaml; the data option and model sections of the methods
# added later, whole sections compared at once): a stored config that lacks one ran its default.
# Checkpoints and training states written before compare equal to today's config (``with_added_defaults``), and the
# benchmark's cell digest leaves them out while at their default (``multimoe.bench.sweep.config_digest``).
ADDED_KEYS = (
    "model.attn_residual",
    "model.attn_out_dropout",
    "model.moe.grow_experts",
    "model.moe.init",
    "train.order_ties",
    "train.class_weights",
    "train.carry_val_gate_loss",
    "data.split",
    "model.encoder.series",
    "model.encoder.image",
    "model.encoder.text",
    "model.baseline_series",
    "model.baseline_image",
    "model.moe.expert_parallel",
    "data.complete_cases",
    "model.i2moe",
    "model.confsmoe",
    "model.retriever",
    "model.pool_rows",
    "model.members",
    "model.blend",
    "model.blend_pool",
    "model.encoder.periodic",
)


def with_added_defaults(values: dict | None, section: str = "") -> dict | None:
    """A stored config dict (the whole config, or its ``section``, e.g. ``"model"``) with the added keys it lacks
    set to their defaults; other keys are left as they are."""
    if not isinstance(values, dict):
        return values
    out = copy.deepcopy(values)
    root = to_dict(Config())
    for key in ADDED_KEYS:
        path = key.split(".")
        if section:
            if path[0] != section:
                continue
            path = path[1:]
        node, default = out, root[section] if section else root
        for part in path[:-1]:
            node, default = node.get(part), default[part]
            if not isinstance(node, dict):
                break
        else:
            node.setdefault(path[-1], default[path[-1]])
    return out


def replace(cfg: Config, overrides: list[str] | dict) -> Config:
    """A copy of ``cfg`` with dotted overrides applied (validated)."""
    over = parse_overrides(overrides) if isinstance(overrides, list) else overrides
    return config_from_dict(merge(to_dict(cfg), over))


# ---------------------------------------------------------------------------------------------------------------
# Values that the types above cannot express: protocols, ranges, device names, combinations of settings

MISSING_HELP = "natural, mcar:R or cpm:R with R in [0, 1), e.g. mcar:0.3"


def parse_missing(spec: str) -> tuple[str, float]:
    """A missingness protocol (DATASETS.md, data/protocols.py): ``"natural"`` -> ("natural", 0.0); ``"mcar:0.3"`` ->
    ("mcar", 0.3); ``"cpm:0.5"`` -> ("cpm", 0.5)."""
    if spec == "natural":
        return "natural", 0.0
    kind, _, rate = spec.partition(":")
    if kind in ("mcar", "cpm") and rate:
        try:
            r = float(rate)
        except ValueError:
            r = -1.0
        if 0.0 <= r < 1.0:
            return kind, r
    raise ConfigError(f"data.missing={spec!r} is not valid; choose {MISSING_HELP}")


def check_device_name(spec: str) -> str:
    if not (spec == "cpu" or spec == "cuda" or spec.startswith("cuda:") and spec[5:].isdigit()):
        raise ConfigError(f"train.device={spec!r} is not valid; choose cpu, cuda or cuda:N")
    return spec


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}={value} must be {'>= 0' if allow_zero else '> 0'}")


def _fraction(key: str, value: float, low: float, high: float) -> None:
    if not low <= value < high:
        raise ConfigError(f"{key}={value} must be in [{low:g}, {high:g})")


MAX_SEED = 2**32 - 2  # scikit-learn takes seeds in [0, 2^32 - 1], and the split uses seed + 1


def validate(cfg: Config) -> None:
    """Ranges and combinations of settings (types and closed choices were checked while building)."""
    if not 0 <= cfg.seed <= MAX_SEED:
        raise ConfigError(f"seed={cfg.seed} must be in [0, {MAX_SEED}]")
    if any(sep in cfg.name for sep in ("/", "\\")) or cfg.name in (".", ".."):
        raise ConfigError(
            f"name={cfg.name!r} names a run folder inside out_dir: no '/' or '\\'; use out_dir for the path"
        )
    parse_missing(cfg.data.missing)
    for k in ("val_fraction", "test_fraction"):
        v = getattr(cfg.data, k)
        if not 0 < v < 0.5:
            raise ConfigError(f"data.{k}={v} must be in (0, 0.5)")
    m = cfg.model
    if m.moe.gate_loss.supervision == "combination" and m.moe.router.layout == "disjoint":
        raise ConfigError(
            "model.moe.gate_loss.supervision=combination maps combinations to experts of one shared pool; "
            "use model.moe.router.layout joint or per_modality, or another supervision with layout disjoint"
        )
    for k in ("dim", "tokens", "heads", "layers", "dense_hidden"):
        _positive(f"model.{k}", getattr(m, k))
    if m.dim % m.heads:
        raise ConfigError(f"model.dim={m.dim} must be divisible by model.heads={m.heads}")
    _fraction("model.dropout", m.dropout, 0, 1)
    _positive("model.moe.num_experts", m.moe.num_experts)
    _positive("model.moe.hidden", m.moe.hidden)
    for k in ("frequencies", "scale", "width"):
        _positive(f"model.encoder.periodic.{k}", getattr(m.encoder.periodic, k))
    _positive("model.moe.capacity_factor", m.moe.capacity_factor, allow_zero=True)
    for k in ("temperature", "reweight_hidden", "reweight_layers"):
        _positive(f"model.i2moe.{k}", getattr(m.i2moe, k))
    _positive("model.i2moe.perturbed", m.i2moe.perturbed, allow_zero=True)
    _positive("model.confsmoe.pre_impute", m.confsmoe.pre_impute)
    for k in ("candidates", "top_k", "hidden"):
        _positive(f"model.retriever.{k}", getattr(m.retriever, k))
    _positive("model.retriever.shared", m.retriever.shared, allow_zero=True)
    _positive("model.retriever.warmup_epochs", m.retriever.warmup_epochs, allow_zero=True)
    _fraction("model.retriever.inter_weight", m.retriever.inter_weight, 0, 1)
    _positive("model.pool_rows", m.pool_rows, allow_zero=True)
    _positive("model.members", m.members)
    t = cfg.train
    for k in ("epochs", "batch_size", "eval_batch_size", "lr"):
        _positive(f"train.{k}", getattr(t, k))
    for k in ("warmup_epochs", "weight_decay", "gate_loss_weight", "grad_clip", "patience", "threads", "workers"):
        _positive(f"train.{k}", getattr(t, k), allow_zero=True)
    _positive("train.dist_timeout", t.dist_timeout)
    _fraction("train.modality_dropout", t.modality_dropout, 0, 1)
    check_device_name(t.device)
