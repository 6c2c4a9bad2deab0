"""Checkpoints that load without executing code: safetensors weights plus JSON metadata (config, schema, version).

Writes are atomic: a temporary file in the same folder, then a rename, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from multimoe import __version__

META_KEY = "multimoe"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: truncated, not a checkpoint, or from another configuration."""


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(path: str | Path, model: torch.nn.Module, meta: dict) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    header = {META_KEY: json.dumps({"version": __version__, **meta})}
    atomic_write(Path(path), lambda tmp: save_file(state, tmp, metadata=header))


def read_meta(path: str | Path) -> dict:
    from safetensors import safe_open

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
    return json.loads(header[META_KEY])


def load_checkpoint(path: str | Path, model: torch.nn.Module | None = None) -> tuple[dict, dict]:
    """Weights and metadata; with ``model``, loads the weights into it and checks they match its configuration."""
    meta = read_meta(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable multimoe checkpoint: {e}") from None
    if model is not None:
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
        model.load_state_dict(state)
    return state, meta
