"""A neural model blended with gradient boosting: ``model.blend=hgb``.

The network trains as it would alone (early stopping on validation). Then histogram gradient boosting (``hgb``:
the same trees the ``hgb`` preset fits, ``model.hgb_max_iter`` rounds, the run's seed) is fit on the training split,
and the model predicts

    p = w * p_network + (1 - w) * p_trees

with w the value in {0, 0.1, ..., 1} of lowest log loss on the validation split (the first of equal ones; the
validation split the network's early stopping read, and nothing else). The two err on different rows where the
trees are strong: ``multimoe-blend`` (5 members blended) is above gradient boosting beyond noise at 9 of the accuracy
sweep's 11 points and below it at none (the README's results section).

The blend is one torch module (``Blend``): the trees are walked in torch, all of them at once, on the batch's
inputs with NaN in missing cells and absent modalities, as the ``hgb`` preset reads them, in float64 with
scikit-learn's arithmetic (``Trees``, equal to its ``predict_proba`` to 1e-12). So evaluation, the routing report,
``predict``, the estimator and ONNX export read a blended run as any other, and its checkpoint holds the trees'
node arrays beside the network's weights (no pickle). The trees read table and embedding modalities only.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from multimoe.baselines import HGB
from multimoe.batch import Batch
from multimoe.config import ConfigError, ModelConfig
from multimoe.data.dataset import DataSchema, MultimodalData
from multimoe.evaluate import predict
from multimoe.model import ModelOutput, build_model

WEIGHTS = tuple(i / 10 for i in range(11))  # the network's weights w tried on validation
TREE_KINDS = ("table", "embedding")  # the modality kinds the trees read (their columns)
_ARRAYS = ("baseline", "tree_start", "feature", "threshold", "missing_left", "left", "right", "is_leaf", "value")


class Trees(nn.Module):
    """Gradient boosting's fitted trees (``HGB.arrays``) as buffers; ``forward(batch)`` gives its class
    probabilities (B x C, float64). Every tree is walked for every row at once, one level a step, ``depth`` steps
    (a leaf stays where it is): a fixed loop of gathers, which ONNX export traces."""

    def __init__(self, schema: DataSchema) -> None:
        super().__init__()
        self.modalities, self.num_classes = schema.modalities, schema.num_classes
        self.depth = 0
        kinds = [s.kind for s in schema.inputs]
        if any(k not in TREE_KINDS for k in kinds):
            other = [f"{m} ({k})" for m, k in zip(schema.modalities, kinds) if k not in TREE_KINDS]
            raise ConfigError(f"model.blend=hgb: the trees read table and embedding modalities only, not {other}")
        for name in (*_ARRAYS, "classes"):
            self.register_buffer(name, torch.zeros(0))
        self.register_load_state_dict_post_hook(_depth_after_loading)

    def set_arrays(self, arrays: dict[str, np.ndarray]) -> Trees:
        """Take a fitted ``HGB``'s arrays (``state_dict``)."""
        for name in (*_ARRAYS, "classes"):
            setattr(self, name, torch.from_numpy(np.ascontiguousarray(arrays[name])))
        self._set_depth()
        return self

    def size_from(self, state: dict[str, Tensor], prefix: str) -> None:
        """Buffers of the sizes and types a checkpoint's ``state`` holds (before loading it: their sizes are the
        fitted trees', not known when the module is built)."""
        for name in (*_ARRAYS, "classes"):
            if prefix + name in state:
                saved = state[prefix + name]
                setattr(self, name, torch.zeros(saved.shape, dtype=saved.dtype))

    def _set_depth(self) -> None:
        """The longest path from a root to a leaf (the levels ``forward`` walks)."""
        depth, nodes, starts = 0, self.tree_start, self.tree_start  # the nodes of one level, their trees' starts
        while True:
            inner = ~self.is_leaf[nodes]
            if not inner.any():
                break
            depth += 1
            nodes, starts = nodes[inner], starts[inner]
            children = torch.cat([starts + self.left[nodes], starts + self.right[nodes]])
            nodes, starts = children, torch.cat([starts, starts])
        self.depth = depth

    def design(self, batch: Batch) -> Tensor:
        """B x ΣF float64 inputs with NaN in missing cells and absent modalities (``baselines.design_matrix``)."""
        blocks = []
        for m, name in enumerate(self.modalities):
            x = batch.inputs[name].double()
            gone = batch.cell_missing[name] | ~batch.present_BM[:, m : m + 1]
            blocks.append(torch.where(gone, torch.full_like(x, float("nan")), x))
        return torch.cat(blocks, dim=1)

    def forward(self, batch: Batch) -> Tensor:
        X_BF = self.design(batch)
        per_iteration = self.baseline.shape[0]
        trees = self.tree_start.shape[0]
        node_BT = self.tree_start.expand(X_BF.shape[0], trees)
        for _ in range(self.depth):
            x_BT = X_BF.gather(1, self.feature[node_BT])
            nan_BT = torch.isnan(x_BT)  # (not a where on booleans: onnxruntime has no kernel for it)
            go_left = (nan_BT & self.missing_left[node_BT]) | (~nan_BT & (x_BT <= self.threshold[node_BT]))
            child = self.tree_start + torch.where(go_left, self.left[node_BT], self.right[node_BT])
            node_BT = torch.where(self.is_leaf[node_BT], node_BT, child)
        group_TK = nn.functional.one_hot(torch.arange(trees, device=X_BF.device) % per_iteration, per_iteration)
        raw_BK = self.baseline + self.value[node_BT] @ group_TK.double()
        if per_iteration == 1:
            p1 = torch.sigmoid(raw_BK[:, 0])
            probs_BK = torch.stack([1 - p1, p1], dim=1)
        else:
            probs_BK = raw_BK.softmax(dim=1)
        return probs_BK @ nn.functional.one_hot(self.classes, self.num_classes).double()  # classes seen in training


def _depth_after_loading(module: Trees, keys) -> None:
    module._set_depth()


class Blend(nn.Module):
    """``weight`` * the network's class probabilities + (1 - ``weight``) * the trees'; logits are their logarithm.
    The network's router outputs pass through (routing statistics and the report read the network)."""

    def __init__(self, network: nn.Module, trees: Trees, weight: float = 0.0) -> None:
        super().__init__()
        self.network, self.trees = network, trees
        self.cfg, self.schema = network.cfg, network.schema
        self.register_buffer("weight", torch.tensor(float(weight), dtype=torch.float64))

    def forward(self, batch: Batch) -> ModelOutput:
        out = self.network(batch)
        probs_BC = self.weight * out.logits_BC.double().softmax(dim=1) + (1 - self.weight) * self.trees(batch)
        logits_BC = probs_BC.clamp(min=1e-12).log().to(out.logits_BC.dtype)
        return ModelOutput(logits_BC, out.aux_loss, out.moe, out.info)


def build_trained(cfg: ModelConfig, schema: DataSchema) -> nn.Module:
    """The model a finished run saved, unfitted, for its checkpoint to load into: the network, or with
    ``model.blend=hgb`` the network blended with empty trees (the checkpoint gives their sizes)."""
    network = build_model(cfg, schema)
    return Blend(network, Trees(schema)) if cfg.blend == "hgb" else network


def fit_blend(network: nn.Module, cfg: ModelConfig, seed: int, train: MultimodalData, val: MultimodalData,
              batch_size: int, device) -> tuple[Blend, dict]:  # fmt: skip
    """Fit the trees on ``train`` and choose the network's weight on ``val`` (lowest log loss over ``WEIGHTS``);
    returns the blend and what was chosen (weight, validation log loss of each weight)."""
    trees = Trees(train.schema)  # refuses modalities of other kinds before anything is fit
    if len(val) == 0:
        raise ConfigError("model.blend=hgb chooses its weight on the validation split, which is empty")
    hgb = HGB(cfg, seed).fit(train)
    arrays = {k: v.numpy() for k, v in hgb.state_dict().items()}
    blend = Blend(network, trees.set_arrays(arrays).to(device))
    labels_N = val.labels_N.numpy()
    p_net = predict(network, val, batch_size, device).probs_NC.astype(np.float64)
    p_trees = hgb.predict(val).probs_NC  # what the torch trees compute (to 1e-12), without a second network pass
    losses = {}
    for w in WEIGHTS:
        p = w * p_net + (1 - w) * p_trees
        losses[w] = float(-np.log(np.clip(p[np.arange(len(labels_N)), labels_N], 1e-12, None)).mean())
    best = min(WEIGHTS, key=lambda w: losses[w])
    blend.weight.fill_(best)
    return blend, {"weight": best, "val_log_loss": losses}
