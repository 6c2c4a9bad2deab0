"""Checkpoints that load without executing code: safetensors weights plus JSON metadata (config, schema, version).

Two kinds: the model checkpoint (``best.safetensors``: weights) and the training state (``state.safetensors``:
weights, optimizer state and RNG state, for resuming). Writes are atomic: a temporary file in the same folder, then a
rename, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from multimoe.config import with_added_defaults
from multimoe.errors import CheckpointError
from multimoe.files import atomic_write
from multimoe.version import __version__

META_KEY = "multimoe"


def save_checkpoint(path: str | Path, model: torch.nn.Module, meta: dict) -> None:
    """The model's weights; ``meta`` (JSON: config, schema, epoch, ...) goes into the safetensors header."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    header = {META_KEY: json.dumps({"version": __version__, "kind": "model", **meta})}
    atomic_write(Path(path), lambda tmp: save_file(state, tmp, metadata=header))


def read_meta(path: str | Path) -> dict:
    """The JSON metadata of a checkpoint (reads the header only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path} is not a readable multimoe checkpoint (truncated or another format): {e}"
        ) from None
    if META_KEY not in header:
        raise CheckpointError(f"{path} is a safetensors file but not a multimoe checkpoint (no '{META_KEY}' metadata)")
    try:
        meta = json.loads(header[META_KEY])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: the multimoe metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: the multimoe metadata is not a JSON object")
    return meta


def _check_matches(path: Path, state: dict, model: torch.nn.Module) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or extra or shapes:
        what = (
            f"missing {missing[:3]}"
            if missing
            else f"unexpected {extra[:3]}"
            if extra
            else f"shape of {shapes[0]}: {tuple(state[shapes[0]].shape)} vs {tuple(expected[shapes[0]].shape)}"
        )
        raise CheckpointError(f"checkpoint {path} was written for another model configuration ({what})")


def first_difference(a: object, b: object, prefix: str = "") -> str | None:
    """The first dotted key where two nested dicts differ, as ``key: a vs b`` (None when equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if k not in a or k not in b:
                return f"{prefix}{k}: {a.get(k, '<absent>')!r} vs {b.get(k, '<absent>')!r}"
            diff = first_difference(a[k], b[k], f"{prefix}{k}.")
            if diff:
                return diff
        return None
    return None if a == b else f"{prefix.rstrip('.')}: {a!r} vs {b!r}"


def _load_tensors(path: Path) -> dict:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable multimoe checkpoint (truncated or damaged): {e}") from None


def load_checkpoint(
    path: str | Path, model: torch.nn.Module | None = None, expect_model_config: dict | None = None
) -> tuple[dict, dict]:
    """Weights and metadata; with ``model``, loads the weights into it and checks they match its configuration.

    ``expect_model_config`` (a resolved ``model`` config as a dict) must equal the one the checkpoint was written
    with: weights of the same shapes from another configuration (another router, fill or dropout) are refused."""
    path = Path(path)
    meta = read_meta(path)
    if meta.get("kind", "model") != "model":
        raise CheckpointError(f"{path} is a multimoe {meta['kind']} checkpoint, not a model checkpoint")
    if expect_model_config is not None:  # a checkpoint from before a key was added ran that key's default
        stored = with_added_defaults(meta.get("config", {}).get("model"), "model")
        diff = first_difference(stored, expect_model_config, "model.")
        if diff:
            raise CheckpointError(f"checkpoint {path} was written for another model configuration ({diff})")
    state = _load_tensors(path)
    if model is not None:
        modules = model.named_modules() if isinstance(model, torch.nn.Module) else ()  # not a distributed state view
        for name, module in modules:
            if hasattr(module, "size_from"):  # buffers sized by the data they were fit on (multimoe.blend.Trees)
                module.size_from(state, f"{name}." if name else "")
        _check_matches(path, state, model)
        model.load_state_dict(state)
    return state, meta


# ---------------------------------------------------------------------------------------------------------------
# Training state: everything a resumed run needs to continue bit for bit on CPU


def save_training_state(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, meta: dict) -> None:
    """Model, optimizer and torch RNG states as tensors; ``meta`` (JSON) carries epoch and bookkeeping."""
    tensors = {f"model/{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    scalars = {}
    for idx, param_state in opt["state"].items():
        for name, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"optim/{idx}/{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}/{name}"] = value
    tensors["rng/cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, rng in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda{i}"] = rng
    info = {"version": __version__, "kind": "training_state", **meta}
    info["optimizer"] = {"param_groups": opt["param_groups"], "scalars": scalars}
    header = {META_KEY: json.dumps(info)}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=header))


def load_training_state(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model, optimizer and RNG states written by ``save_training_state``; returns its metadata."""
    path = Path(path)
    meta = read_meta(path)
    if meta.get("kind") != "training_state":
        raise CheckpointError(f"{path} is a multimoe checkpoint but not a training state (no optimizer, no RNG)")
    tensors = _load_tensors(path)
    weights = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    _check_matches(path, weights, model)
    model.load_state_dict(weights)
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta["optimizer"]["scalars"].items():
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"the optimizer state in {path} does not fit this model and optimizer: {e}") from None
    torch.set_rng_state(tensors["rng/cpu"])
    cuda = [tensors[f"rng/cuda{i}"] for i in range(torch.cuda.device_count()) if f"rng/cuda{i}" in tensors]
    if cuda and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    return meta
